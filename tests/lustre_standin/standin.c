/*
 * A stand-in for liblustreapi, for tests only (see README.md in this directory).
 *
 * It exports a subset of the real library's symbols with the real prototypes
 * and return conventions, and keeps layouts as the real binary blobs in
 * ordinary trusted.* xattrs, so that a ctypes binding is exercised for real:
 * pointer widths, struct layouts, sentinel values and errno handling.
 *
 * Built without -DSTANDIN_LEGACY it looks like Lustre >= 2.11 (composite
 * layouts, llapi_dir_create); with it, like a 2.7 library where those symbols
 * do not exist and a composite blob is an unknown format.
 *
 * Every fact about the real library used here is from
 * /work/shared/docs/lustre-api.md and lustre-release's liblustreapi_layout.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

/* ---- Lustre constants (lustre_user.h / lustreapi.h values) ---- */

#define LOV_USER_MAGIC_V1		0x0BD10BD0u
#define LOV_USER_MAGIC_V3		0x0BD30BD0u
#define LOV_USER_MAGIC_COMP_V1		0x0BD60BD0u
#define LMV_USER_MAGIC			0x0CD30CD0u

#define LOV_PATTERN_RAID0		0x001u
#define LOV_PATTERN_MDT			0x100u
#define LOV_PATTERN_OVERSTRIPING	0x200u

#define LOV_MAXPOOLNAME			15
#define LOV_MIN_STRIPE_SIZE		65536ULL
#define LOV_MAX_STRIPE_COUNT		2000
#define LOV_ALL_STRIPES			0xffffu
#define LOV_ALL_STRIPES_WIDE		0xffe0u
#define LOV_OFFSET_DEFAULT		0xffffu
#define LCME_FL_INIT			0x10u
#define LUSTRE_EOF			UINT64_MAX
#define LUSTRE_MAXFSNAME		8
#define LMV_HASH_TYPE_FNV_1A_64		2
#define LMV_HASH_TYPE_MAX		4	/* CRUSH2 */
#define LMV_MAX_STRIPE_COUNT		2000

#define LLAPI_LAYOUT_INVALID		0x1000000000000001ULL
#define LLAPI_LAYOUT_DEFAULT		(LLAPI_LAYOUT_INVALID + 1)
#define LLAPI_LAYOUT_WIDE_MIN		(LLAPI_LAYOUT_INVALID + 2)
#define LLAPI_LAYOUT_WIDE_MAX		(LLAPI_LAYOUT_DEFAULT + 32)
#define LLAPI_LAYOUT_RAID0		0ULL
#define LLAPI_LAYOUT_MDT		2ULL
#define LLAPI_LAYOUT_OVERSTRIPING	4ULL
#define LLAPI_LAYOUT_GET_FLAGS_ALL	7u	/* EXPECTED | COPY | CHECK */

#define LLAPI_LAYOUT_COMP_USE_FIRST	1
#define LLAPI_LAYOUT_COMP_USE_LAST	2
#define LLAPI_LAYOUT_COMP_USE_NEXT	3
#define LLAPI_LAYOUT_COMP_USE_PREV	4

#define LLAPI_MSG_ERROR			2
#define LLAPI_MSG_MAX			7

#define O_LOV_DELAY_CREATE		(O_NOCTTY | FASYNC)

/*
 * Where the stand-in keeps a layout and a directory's MDT: the names under which a Lustre client
 * shows them to root (trusted.lov is the same data as lustre.lov). Generic xattr copies in cmover
 * skip these names exactly as they must on Lustre, so a raw copy cannot mask a layout bug. Writing
 * trusted.* needs CAP_SYS_ADMIN: the tests run as root.
 */
#define XATTR_LOV			"trusted.lov"
#define XATTR_LMV			"trusted.lmv"
#define XATTR_SIZE_MAX			65536

#define STANDIN_DEFAULT_STRIPE_SIZE	1048576u
#define STANDIN_MAX_POOLS		32
#define STANDIN_FAKE_FID_SEQ		0x200000400ULL

#if defined(__x86_64__) || defined(__aarch64__)
_Static_assert(O_LOV_DELAY_CREATE == 0x2100, "O_LOV_DELAY_CREATE is O_NOCTTY|FASYNC = 0x2100");
#endif

/* ---- On-disk / user-space structs (lustre_user.h field lists, our own definitions) ---- */

struct ost_id {
	uint64_t oi_id;
	uint64_t oi_seq;
} __attribute__((packed));

struct lov_user_ost_data_v1 {
	struct ost_id l_ost_oi;
	uint32_t l_ost_gen;
	uint32_t l_ost_idx;
} __attribute__((packed));

struct lov_user_md_v1 {
	uint32_t lmm_magic;
	uint32_t lmm_pattern;
	struct ost_id lmm_oi;
	uint32_t lmm_stripe_size;
	uint16_t lmm_stripe_count;
	union {
		uint16_t lmm_stripe_offset;	/* meaning when set */
		uint16_t lmm_layout_gen;	/* meaning when read */
	};
	struct lov_user_ost_data_v1 lmm_objects[];
} __attribute__((packed));

struct lov_user_md_v3 {
	uint32_t lmm_magic;
	uint32_t lmm_pattern;
	struct ost_id lmm_oi;
	uint32_t lmm_stripe_size;
	uint16_t lmm_stripe_count;
	union {
		uint16_t lmm_stripe_offset;
		uint16_t lmm_layout_gen;
	};
	char lmm_pool_name[LOV_MAXPOOLNAME + 1];
	struct lov_user_ost_data_v1 lmm_objects[];
} __attribute__((packed));

struct lu_extent {
	uint64_t e_start;
	uint64_t e_end;
} __attribute__((packed));

struct lov_comp_md_entry_v1 {
	uint32_t lcme_id;
	uint32_t lcme_flags;
	struct lu_extent lcme_extent;
	uint32_t lcme_offset;		/* from the start of the lov_comp_md_v1 header */
	uint32_t lcme_size;
	uint32_t lcme_layout_gen;
	uint64_t lcme_timestamp;
	uint8_t lcme_padding[4];
} __attribute__((packed));

struct lov_comp_md_v1 {
	uint32_t lcm_magic;
	uint32_t lcm_size;		/* whole blob, header included */
	uint32_t lcm_layout_gen;
	uint16_t lcm_flags;
	uint16_t lcm_entry_count;
	uint16_t lcm_mirror_count;	/* mirrors - 1 */
	uint8_t lcm_ec_count;
	uint8_t lcm_padding[13];
	struct lov_comp_md_entry_v1 lcm_entries[];
} __attribute__((packed));

struct lmv_user_md_v1 {
	uint32_t lum_magic;
	int32_t lum_stripe_count;
	uint32_t lum_stripe_offset;
	uint32_t lum_hash_type;
	uint32_t lum_type;
	uint8_t lum_max_inherit;
	uint8_t lum_max_inherit_rr;
	uint16_t lum_padding1;
	uint32_t lum_padding2;
	uint32_t lum_padding3;
	char lum_pool_name[LOV_MAXPOOLNAME + 1];
} __attribute__((packed));

/* Not packed in lustreapi.h: natural LP64 alignment. */
struct llapi_stripe_param {
	unsigned long long lsp_stripe_size;
	char *lsp_pool;
	int lsp_stripe_offset;
	union {
		int lsp_stripe_pattern;
		int lsp_hash_type;
	};
	int lsp_stripe_count;
	bool lsp_is_specific;
	bool lsp_is_create;
	uint8_t lsp_max_inherit;
	uint8_t lsp_max_inherit_rr;
	uint32_t lsp_osts[];
};

_Static_assert(sizeof(struct ost_id) == 16, "ost_id");
_Static_assert(sizeof(struct lov_user_ost_data_v1) == 24, "lov_user_ost_data_v1");
_Static_assert(offsetof(struct lov_user_ost_data_v1, l_ost_gen) == 16, "l_ost_gen");
_Static_assert(offsetof(struct lov_user_ost_data_v1, l_ost_idx) == 20, "l_ost_idx");
_Static_assert(sizeof(struct lov_user_md_v1) == 32, "lov_user_md_v1");
_Static_assert(offsetof(struct lov_user_md_v1, lmm_pattern) == 4, "lmm_pattern");
_Static_assert(offsetof(struct lov_user_md_v1, lmm_oi) == 8, "lmm_oi");
_Static_assert(offsetof(struct lov_user_md_v1, lmm_stripe_size) == 24, "lmm_stripe_size");
_Static_assert(offsetof(struct lov_user_md_v1, lmm_stripe_count) == 28, "lmm_stripe_count");
_Static_assert(offsetof(struct lov_user_md_v1, lmm_stripe_offset) == 30, "lmm_stripe_offset");
_Static_assert(offsetof(struct lov_user_md_v1, lmm_layout_gen) == 30, "lmm_layout_gen");
_Static_assert(offsetof(struct lov_user_md_v1, lmm_objects) == 32, "v1 lmm_objects");
_Static_assert(sizeof(struct lov_user_md_v3) == 48, "lov_user_md_v3");
_Static_assert(offsetof(struct lov_user_md_v3, lmm_stripe_offset) == 30, "v3 lmm_stripe_offset");
_Static_assert(offsetof(struct lov_user_md_v3, lmm_pool_name) == 32, "lmm_pool_name");
_Static_assert(offsetof(struct lov_user_md_v3, lmm_objects) == 48, "v3 lmm_objects");
_Static_assert(sizeof(struct lov_comp_md_entry_v1) == 48, "lov_comp_md_entry_v1");
_Static_assert(offsetof(struct lov_comp_md_entry_v1, lcme_extent) == 8, "lcme_extent");
_Static_assert(offsetof(struct lov_comp_md_entry_v1, lcme_offset) == 24, "lcme_offset");
_Static_assert(offsetof(struct lov_comp_md_entry_v1, lcme_size) == 28, "lcme_size");
_Static_assert(offsetof(struct lov_comp_md_entry_v1, lcme_layout_gen) == 32, "lcme_layout_gen");
_Static_assert(offsetof(struct lov_comp_md_entry_v1, lcme_timestamp) == 36, "lcme_timestamp");
_Static_assert(offsetof(struct lov_comp_md_entry_v1, lcme_padding) == 44, "lcme_padding");
_Static_assert(sizeof(struct lov_comp_md_v1) == 32, "lov_comp_md_v1");
_Static_assert(offsetof(struct lov_comp_md_v1, lcm_size) == 4, "lcm_size");
_Static_assert(offsetof(struct lov_comp_md_v1, lcm_layout_gen) == 8, "lcm_layout_gen");
_Static_assert(offsetof(struct lov_comp_md_v1, lcm_flags) == 12, "lcm_flags");
_Static_assert(offsetof(struct lov_comp_md_v1, lcm_entry_count) == 14, "lcm_entry_count");
_Static_assert(offsetof(struct lov_comp_md_v1, lcm_mirror_count) == 16, "lcm_mirror_count");
_Static_assert(offsetof(struct lov_comp_md_v1, lcm_ec_count) == 18, "lcm_ec_count");
_Static_assert(offsetof(struct lov_comp_md_v1, lcm_entries) == 32, "lcm_entries");
_Static_assert(sizeof(struct lmv_user_md_v1) == 48, "lmv_user_md_v1");
_Static_assert(offsetof(struct lmv_user_md_v1, lum_stripe_offset) == 8, "lum_stripe_offset");
_Static_assert(offsetof(struct lmv_user_md_v1, lum_hash_type) == 12, "lum_hash_type");
_Static_assert(offsetof(struct lmv_user_md_v1, lum_type) == 16, "lum_type");
_Static_assert(offsetof(struct lmv_user_md_v1, lum_max_inherit) == 20, "lum_max_inherit");
_Static_assert(offsetof(struct lmv_user_md_v1, lum_pool_name) == 32, "lum_pool_name");
#if defined(__LP64__)
_Static_assert(sizeof(struct llapi_stripe_param) == 32, "llapi_stripe_param fixed part");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_pool) == 8, "lsp_pool");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_stripe_offset) == 16, "lsp_stripe_offset");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_stripe_pattern) == 20, "lsp_stripe_pattern");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_hash_type) == 20, "lsp_hash_type");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_stripe_count) == 24, "lsp_stripe_count");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_is_specific) == 28, "lsp_is_specific");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_is_create) == 29, "lsp_is_create");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_max_inherit) == 30, "lsp_max_inherit");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_max_inherit_rr) == 31, "lsp_max_inherit_rr");
_Static_assert(offsetof(struct llapi_stripe_param, lsp_osts) == 32, "lsp_osts");
#endif

static size_t lum_size(uint32_t nobj, bool v3)
{
	return (v3 ? sizeof(struct lov_user_md_v3) : sizeof(struct lov_user_md_v1)) +
	       (size_t)nobj * sizeof(struct lov_user_ost_data_v1);
}

/* ---- Process-wide state ---- */

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int msg_level = LLAPI_MSG_MAX;	/* the real default prints everything */
static uint64_t next_ost;		/* rotating first OST of each instantiated component */
static uint64_t next_objid = 0x1000;	/* fake OST object ids */
static uint64_t next_mdt;		/* round-robin MDT for llapi_dir_create(offset -1) */

static uint64_t counter_next(uint64_t *c)
{
	return __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

static bool env_flag(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

/* The -1/errno convention of the llapi_layout_* family. */
static int fail(int err)
{
	errno = err;
	return -1;
}

/* The llapi logger: suppressed by llapi_msg_set_level(0), like the real one. */
static void __attribute__((format(printf, 3, 4)))
llapi_msg(int level, int err, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	if (level > __atomic_load_n(&msg_level, __ATOMIC_RELAXED))
		return;
	va_start(ap, fmt);
	fputs("liblustreapi-standin: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err)
		fprintf(stderr, ": %s", strerror(err));
	fputc('\n', stderr);
	errno = saved;
}

/* ---- Call log (STANDIN_CALL_LOG): one line per exported call, errno untouched ---- */

struct calllog {
	FILE *f;
	char *buf;
	size_t len;
};

/* lg must outlive the stream: open_memstream() writes buf/len back into it. */
static void log_begin(struct calllog *lg, const char *fn)
{
	const char *path = getenv("STANDIN_CALL_LOG");
	int saved = errno;

	lg->f = NULL;
	lg->buf = NULL;
	lg->len = 0;
	if (path != NULL && path[0] != '\0') {
		lg->f = open_memstream(&lg->buf, &lg->len);
		if (lg->f != NULL)
			fputs(fn, lg->f);
	}
	errno = saved;
}

static void __attribute__((format(printf, 2, 3)))
log_fmt(struct calllog *lg, const char *fmt, ...)
{
	va_list ap;

	if (lg->f == NULL)
		return;
	fputc(' ', lg->f);
	va_start(ap, fmt);
	vfprintf(lg->f, fmt, ap);
	va_end(ap);
}

/* Strings are escaped (\xHH for blanks, controls and backslash) so a line stays one line. */
static void log_escaped(FILE *f, const char *s)
{
	if (s == NULL) {
		fputs("(null)", f);
		return;
	}
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c <= ' ' || c == 0x7f || c == '\\')
			fprintf(f, "\\x%02x", c);
		else
			fputc(c, f);
	}
}

static void log_str(struct calllog *lg, const char *key, const char *s)
{
	if (lg->f == NULL)
		return;
	fprintf(lg->f, " %s=", key);
	log_escaped(lg->f, s);
}

static void log_end(struct calllog *lg)
{
	const char *path = getenv("STANDIN_CALL_LOG");
	int saved = errno;
	int fd;

	if (lg->f == NULL)
		return;
	fputc('\n', lg->f);
	if (fclose(lg->f) == 0 && path != NULL && path[0] != '\0') {
		fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0) {
			/* One write() per line keeps lines whole across threads and processes. */
			if (write(fd, lg->buf, lg->len) < 0)
				perror("liblustreapi-standin: STANDIN_CALL_LOG");
			close(fd);
		}
	}
	free(lg->buf);
	errno = saved;
}

static void __attribute__((format(printf, 2, 3)))
log_call(const char *fn, const char *fmt, ...)
{
	struct calllog lg;
	va_list ap;

	log_begin(&lg, fn);
	if (lg.f != NULL && fmt[0] != '\0') {
		fputc(' ', lg.f);
		va_start(ap, fmt);
		vfprintf(lg.f, fmt, ap);
		va_end(ap);
	}
	log_end(&lg);
}

/* A call whose first argument is a string (usually a path). */
static void __attribute__((format(printf, 4, 5)))
log_call_str(const char *fn, const char *key, const char *str, const char *fmt, ...)
{
	struct calllog lg;
	va_list ap;

	log_begin(&lg, fn);
	log_str(&lg, key, str);
	if (lg.f != NULL && fmt[0] != '\0') {
		fputc(' ', lg.f);
		va_start(ap, fmt);
		vfprintf(lg.f, fmt, ap);
		va_end(ap);
	}
	log_end(&lg);
}

/* Sentinels by name, so that logs read like the API: DEFAULT, WIDE, WIDE+n, EOF. */
static const char *val_str(uint64_t v, char buf[32])
{
	if (v == LLAPI_LAYOUT_DEFAULT)
		return "DEFAULT";
	if (v == LLAPI_LAYOUT_INVALID)
		return "INVALID";
	if (v == LUSTRE_EOF)
		return "EOF";
	if (v == LLAPI_LAYOUT_WIDE_MIN)
		return "WIDE";
	if (v > LLAPI_LAYOUT_WIDE_MIN && v <= LLAPI_LAYOUT_WIDE_MAX)
		snprintf(buf, 32, "WIDE+%llu", (unsigned long long)(v - LLAPI_LAYOUT_WIDE_MIN));
	else
		snprintf(buf, 32, "%llu", (unsigned long long)v);
	return buf;
}

/* ---- Layout handles: above 4 GiB, registered, poisoned when freed ---- */

struct comp {
	uint64_t pattern;		/* LLAPI_LAYOUT_* (or a raw LOV pattern read from disk) */
	uint64_t stripe_size;
	uint64_t stripe_count;
	uint64_t stripe_offset;
	uint64_t start, end;
	uint32_t id, flags;
	uint32_t nobj;
	uint32_t *objs;			/* OST index of each object, when instantiated */
	char pool[LOV_MAXPOOLNAME + 1];
};

#define STANDIN_HANDLE_MAGIC	0x314e49444e415453ULL	/* "STANDIN1" */
#define STANDIN_POISON		0xdb
/* Low 32 bits have the top bit set: a truncated pointer even turns negative. */
#define STANDIN_HANDLE_BASE	0x7e5a80000000ULL
#define STANDIN_QUARANTINE	256

struct llapi_layout {
	uint64_t magic;
	bool composite;
	uint32_t ncomp;
	uint32_t cur;			/* the "current component" cursor */
	struct comp *comps;
};

static struct llapi_layout **live_handles;
static size_t live_count, live_cap;
static uint64_t next_handle_slot;
static void *quarantine[STANDIN_QUARANTINE];	/* freed pages kept poisoned for a while */
static size_t quarantine_pos;

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static bool handle_is_live(const void *p)
{
	bool found = false;
	size_t i;

	pthread_mutex_lock(&state_lock);
	for (i = 0; i < live_count && !found; i++)
		found = live_handles[i] == p;
	pthread_mutex_unlock(&state_lock);
	return found;
}

static void __attribute__((noreturn)) die_bad_handle(const char *fn, const void *p)
{
	uint64_t hi = (uint64_t)(uintptr_t)p >> 32;

	fprintf(stderr, "liblustreapi-standin: %s(): %p is not a live struct llapi_layout handle (%s); aborting\n",
		fn, p, hi == 0 || hi == 0xffffffffu ?
		"it fits in 32 bits: was the pointer truncated, e.g. a ctypes restype/argtype left as int?" :
		"already freed, or never returned by this library");
	abort();
}

/* Every handle argument goes through here: a bogus pointer must fail loudly, not quietly. */
static struct llapi_layout *check_handle(const char *fn, const struct llapi_layout *l)
{
	if (!handle_is_live(l) || l->magic != STANDIN_HANDLE_MAGIC)
		die_bad_handle(fn, l);
	return (struct llapi_layout *)l;
}

static void comp_default(struct comp *c)
{
	memset(c, 0, sizeof(*c));
	c->pattern = LLAPI_LAYOUT_DEFAULT;
	c->stripe_size = LLAPI_LAYOUT_DEFAULT;
	c->stripe_count = LLAPI_LAYOUT_DEFAULT;
	c->stripe_offset = LLAPI_LAYOUT_DEFAULT;
	c->start = 0;
	c->end = LUSTRE_EOF;
}

/* A registered handle with ncomp zeroed components (caller fills them). */
static struct llapi_layout *handle_new(uint32_t ncomp)
{
	size_t pg = page_size();
	uintptr_t hint = (uintptr_t)(STANDIN_HANDLE_BASE + counter_next(&next_handle_slot) * pg);
	struct llapi_layout *l, **grown;
	void *p;

	_Static_assert(sizeof(struct llapi_layout) <= 4096, "handle fits in a page");
	p = mmap((void *)hint, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		errno = ENOMEM;
		return NULL;
	}
	if ((uintptr_t)p >> 32 == 0) {
		fprintf(stderr, "liblustreapi-standin: mmap gave %p, below 4 GiB; the handle trap would not work\n", p);
		abort();
	}
	l = p;
	l->magic = STANDIN_HANDLE_MAGIC;
	l->comps = calloc(ncomp ? ncomp : 1, sizeof(*l->comps));
	l->ncomp = ncomp;
	if (l->comps == NULL) {
		munmap(p, pg);
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_lock(&state_lock);
	if (live_count == live_cap) {
		grown = realloc(live_handles, (live_cap ? live_cap * 2 : 16) * sizeof(*grown));
		if (grown == NULL) {
			pthread_mutex_unlock(&state_lock);
			free(l->comps);
			munmap(p, pg);
			errno = ENOMEM;
			return NULL;
		}
		live_handles = grown;
		live_cap = live_cap ? live_cap * 2 : 16;
	}
	live_handles[live_count++] = l;
	pthread_mutex_unlock(&state_lock);
	return l;
}

static struct llapi_layout *handle_new_default(void)
{
	struct llapi_layout *l = handle_new(1);

	if (l != NULL)
		comp_default(&l->comps[0]);
	return l;
}

/* Unregisters, poisons and quarantines; false if p was not a live handle. */
static bool handle_release(struct llapi_layout *l)
{
	size_t pg = page_size(), i;
	bool found = false;
	void *evict;

	pthread_mutex_lock(&state_lock);
	for (i = 0; i < live_count; i++) {
		if (live_handles[i] == l) {
			live_handles[i] = live_handles[--live_count];
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&state_lock);
	if (!found)
		return false;
	for (i = 0; i < l->ncomp; i++)
		free(l->comps[i].objs);
	free(l->comps);
	memset(l, STANDIN_POISON, pg);
	mprotect(l, pg, PROT_READ);
	/* Keep recently freed pages mapped so a stale pointer reads poison, not someone else's data. */
	pthread_mutex_lock(&state_lock);
	evict = quarantine[quarantine_pos];
	quarantine[quarantine_pos] = l;
	quarantine_pos = (quarantine_pos + 1) % STANDIN_QUARANTINE;
	pthread_mutex_unlock(&state_lock);
	if (evict != NULL)
		munmap(evict, pg);
	return true;
}

/* The current component; NULL handle → EINVAL like the real library, bogus handle → abort. */
static struct comp *cur_comp(const char *fn, const struct llapi_layout *layout)
{
	struct llapi_layout *l;

	if (layout == NULL) {
		errno = EINVAL;
		return NULL;
	}
	l = check_handle(fn, layout);
	return &l->comps[l->cur];
}

/* ---- Fake filesystems: STANDIN_FS, re-read on every call ---- */

struct fsent {
	char root[PATH_MAX];
	char name[LUSTRE_MAXFSNAME + 1];
	int osts, mdts, npools;
	char pools[STANDIN_MAX_POOLS][LOV_MAXPOOLNAME + 1];
};

/*
 * realpath(), except that a missing last component is resolved through its
 * parent (the target of a create does not exist yet). 0 or negative errno.
 */
static int resolve(const char *path, char out[PATH_MAX])
{
	char tmp[PATH_MAX], parent[PATH_MAX];
	const char *base;
	char *slash;
	size_t n;

	if (path == NULL || path[0] == '\0')
		return -ENOENT;
	if (realpath(path, out) != NULL)
		return 0;
	if (errno != ENOENT)
		return -errno;
	if (strlen(path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	strcpy(tmp, path);
	for (n = strlen(tmp); n > 1 && tmp[n - 1] == '/'; n--)
		tmp[n - 1] = '\0';
	slash = strrchr(tmp, '/');
	if (slash == NULL) {
		base = tmp;
		strcpy(parent, ".");
	} else {
		base = slash + 1;
		if (slash == tmp)
			strcpy(parent, "/");
		else {
			*slash = '\0';
			strcpy(parent, tmp);
		}
	}
	if (realpath(parent, out) == NULL)
		return -errno;
	n = strlen(out);
	if (n + 1 + strlen(base) >= PATH_MAX)
		return -ENAMETOOLONG;
	if (strcmp(out, "/") != 0)
		out[n++] = '/';
	strcpy(out + n, base);
	return 0;
}

static bool path_under(const char *path, const char *root)
{
	size_t n = strlen(root);

	if (strcmp(root, "/") == 0)
		return path[0] == '/';
	return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static bool parse_int(const char *s, int lo, int hi, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		return false;
	*out = (int)v;
	return true;
}

/* One "ROOT,FSNAME,OSTS,MDTS[,POOL+POOL...]" entry; false if malformed. */
static bool fs_parse(const char *entry, size_t len, struct fsent *fs)
{
	char buf[PATH_MAX + 1024], *field[5], *p, *pool, *save = NULL;
	int nfield = 0;

	if (len >= sizeof(buf))
		return false;
	memcpy(buf, entry, len);
	buf[len] = '\0';
	for (p = buf; nfield < 5; nfield++) {
		field[nfield] = p;
		p = strchr(p, ',');
		if (p == NULL) {
			nfield++;
			break;
		}
		*p++ = '\0';
	}
	if (p != NULL || nfield < 4 || field[0][0] != '/')
		return false;
	memset(fs, 0, sizeof(*fs));
	if (resolve(field[0], fs->root) != 0)
		return false;
	if (strlen(field[1]) < 1 || strlen(field[1]) > LUSTRE_MAXFSNAME)
		return false;
	strcpy(fs->name, field[1]);
	if (!parse_int(field[2], 1, 65503, &fs->osts) || !parse_int(field[3], 1, 65535, &fs->mdts))
		return false;
	if (nfield == 5) {
		for (pool = strtok_r(field[4], "+", &save); pool != NULL; pool = strtok_r(NULL, "+", &save)) {
			if (strlen(pool) > LOV_MAXPOOLNAME || fs->npools == STANDIN_MAX_POOLS)
				return false;
			strcpy(fs->pools[fs->npools++], pool);
		}
	}
	return true;
}

/* Report a malformed entry once, not on every call (the variable is re-read each time). */
static void fs_warn(const char *entry, size_t len)
{
	static uint64_t seen[8];
	static unsigned next;
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i;

	for (i = 0; i < len; i++)
		h = (h ^ (unsigned char)entry[i]) * 0x100000001b3ULL;
	pthread_mutex_lock(&state_lock);
	for (i = 0; i < 8; i++) {
		if (seen[i] == h) {
			pthread_mutex_unlock(&state_lock);
			return;
		}
	}
	seen[next++ % 8] = h;
	pthread_mutex_unlock(&state_lock);
	fprintf(stderr, "liblustreapi-standin: ignoring malformed STANDIN_FS entry '%.*s'\n", (int)len, entry);
}

/* Next well-formed entry after *cursor; malformed ones are reported and skipped. */
static bool fs_next(const char **cursor, struct fsent *fs)
{
	const char *s = *cursor, *end;
	size_t len;
	int saved = errno;

	while (s != NULL && *s != '\0') {
		end = strchr(s, ';');
		len = end ? (size_t)(end - s) : strlen(s);
		*cursor = end ? end + 1 : NULL;
		if (len > 0 && fs_parse(s, len, fs)) {
			errno = saved;
			return true;
		}
		if (len > 0)
			fs_warn(s, len);
		s = *cursor;
	}
	errno = saved;
	return false;
}

/* The fake fs holding an already-resolved path (longest ROOT wins); 0 or -ENODEV. */
static int fs_find(const char *rpath, struct fsent *fs)
{
	const char *cursor = getenv("STANDIN_FS");
	struct fsent cand;
	bool found = false;

	while (fs_next(&cursor, &cand)) {
		if (path_under(rpath, cand.root) && (!found || strlen(cand.root) > strlen(fs->root))) {
			*fs = cand;
			found = true;
		}
	}
	return found ? 0 : -ENODEV;
}

static int path_fs(const char *path, char rpath[PATH_MAX], struct fsent *fs)
{
	int rc = resolve(path, rpath);

	return rc != 0 ? rc : fs_find(rpath, fs);
}

/* What an fd refers to, via /proc/self/fd; -EBADF, -ENOTTY (not a path), -ENODEV. */
static int fd_fs(int fd, char fpath[PATH_MAX], struct fsent *fs)
{
	char link[64];
	ssize_t n;

	if (fd < 0)
		return -EBADF;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, fpath, PATH_MAX - 1);
	if (n < 0)
		return errno == ENOENT ? -EBADF : -errno;
	fpath[n] = '\0';
	if (fpath[0] != '/')
		return -ENOTTY;		/* pipe:[..], socket:[..], anon_inode:... */
	if (n > 10 && strcmp(fpath + n - 10, " (deleted)") == 0)
		fpath[n - 10] = '\0';
	return fs_find(fpath, fs);
}

static bool fs_has_pool(const struct fsent *fs, const char *pool)
{
	int i;

	for (i = 0; i < fs->npools; i++)
		if (strcmp(fs->pools[i], pool) == 0)
			return true;
	return false;
}

/*
 * Writing an xattr needs inode write permission, a Lustre layout does not:
 * as the owner, lend ourselves u+w for the duration. 0 or an errno.
 */
static int set_xattr(int fd, const char *path, const char *name, const void *val, size_t len)
{
	struct stat st;
	int rc, err;

	rc = fd >= 0 ? fsetxattr(fd, name, val, len, 0) : setxattr(path, name, val, len, 0);
	if (rc == 0)
		return 0;
	err = errno;
	if (err != EACCES)
		return err;
	rc = fd >= 0 ? fstat(fd, &st) : stat(path, &st);
	if (rc != 0 || st.st_uid != geteuid())
		return err;
	rc = fd >= 0 ? fchmod(fd, st.st_mode | S_IWUSR) : chmod(path, st.st_mode | S_IWUSR);
	if (rc != 0)
		return err;
	rc = fd >= 0 ? fsetxattr(fd, name, val, len, 0) : setxattr(path, name, val, len, 0);
	err = rc == 0 ? 0 : errno;
	if (fd >= 0)
		(void)fchmod(fd, st.st_mode & 07777);
	else
		(void)chmod(path, st.st_mode & 07777);
	return err;
}

/* ---- Binary layout blobs ---- */

/* One component as it will be packed. */
struct disk_comp {
	uint32_t pattern, stripe_size, flags, nobj;
	uint16_t stripe_count;
	uint64_t start, end;
	const char *pool;		/* NULL → V1, else V3 */
};

static int lov_pattern_of(uint64_t pattern, uint32_t *out)
{
	switch (pattern) {
	case LLAPI_LAYOUT_DEFAULT:
	case LLAPI_LAYOUT_RAID0:
		*out = LOV_PATTERN_RAID0;
		return 0;
	case LLAPI_LAYOUT_MDT:
		*out = LOV_PATTERN_MDT;
		return 0;
	case LLAPI_LAYOUT_OVERSTRIPING:
		*out = LOV_PATTERN_RAID0 | LOV_PATTERN_OVERSTRIPING;
		return 0;
	default:
		return EINVAL;
	}
}

/* Requested values, as a directory default or a not-yet-instantiated component stores them. */
static void disk_requested(const struct comp *c, struct disk_comp *d)
{
	if (c->stripe_count == LLAPI_LAYOUT_DEFAULT)
		d->stripe_count = 0;
	else if (c->stripe_count >= LLAPI_LAYOUT_WIDE_MIN && c->stripe_count <= LLAPI_LAYOUT_WIDE_MAX)
		d->stripe_count = (uint16_t)(LOV_ALL_STRIPES - (c->stripe_count - LLAPI_LAYOUT_WIDE_MIN));
	else
		d->stripe_count = (uint16_t)c->stripe_count;
	d->stripe_size = c->stripe_size == LLAPI_LAYOUT_DEFAULT ? 0 : (uint32_t)c->stripe_size;
	d->nobj = 0;
}

/* What the MDS would allocate for a component of a new file. */
static void disk_instantiate(const struct comp *c, const struct fsent *fs, struct disk_comp *d)
{
	uint64_t n;

	d->flags |= LCME_FL_INIT;
	if (d->pattern & LOV_PATTERN_MDT) {
		/* DoM: data lives on the MDT, the "stripe size" is the component size. */
		d->stripe_count = 0;
		d->nobj = 0;
		d->stripe_size = (uint32_t)c->end;
		return;
	}
	if (c->stripe_count == LLAPI_LAYOUT_DEFAULT)
		n = 1;
	else if (c->stripe_count >= LLAPI_LAYOUT_WIDE_MIN && c->stripe_count <= LLAPI_LAYOUT_WIDE_MAX)
		n = (uint64_t)fs->osts * (c->stripe_count - LLAPI_LAYOUT_WIDE_MIN + 1);
	else
		n = c->stripe_count;
	if (!(d->pattern & LOV_PATTERN_OVERSTRIPING) && n > (uint64_t)fs->osts)
		n = fs->osts;			/* raid0 cannot use an OST twice */
	if (n > LOV_MAX_STRIPE_COUNT)
		n = LOV_MAX_STRIPE_COUNT;
	d->stripe_count = (uint16_t)n;
	d->nobj = (uint32_t)n;
	d->stripe_size = c->stripe_size == LLAPI_LAYOUT_DEFAULT ?
			 STANDIN_DEFAULT_STRIPE_SIZE : (uint32_t)c->stripe_size;
}

static void pack_lum(unsigned char *dst, const struct disk_comp *d, const struct fsent *fs, uint64_t ino)
{
	struct lov_user_md_v1 *v1 = (struct lov_user_md_v1 *)dst;
	struct lov_user_ost_data_v1 *objs;
	uint32_t first, i;

	v1->lmm_magic = d->pool ? LOV_USER_MAGIC_V3 : LOV_USER_MAGIC_V1;
	v1->lmm_pattern = d->pattern;
	if (ino != 0) {
		v1->lmm_oi.oi_id = ino;
		v1->lmm_oi.oi_seq = STANDIN_FAKE_FID_SEQ;
	}
	v1->lmm_stripe_size = d->stripe_size;
	v1->lmm_stripe_count = d->stripe_count;
	v1->lmm_stripe_offset = LOV_OFFSET_DEFAULT;
	if (d->pool) {
		struct lov_user_md_v3 *v3 = (struct lov_user_md_v3 *)dst;

		memcpy(v3->lmm_pool_name, d->pool, strlen(d->pool));
		objs = v3->lmm_objects;
	} else {
		objs = v1->lmm_objects;
	}
	if (d->nobj == 0)
		return;
	first = (uint32_t)(counter_next(&next_ost) % (uint64_t)fs->osts);
	for (i = 0; i < d->nobj; i++) {
		objs[i].l_ost_oi.oi_id = counter_next(&next_objid);
		objs[i].l_ost_idx = (first + i) % (uint32_t)fs->osts;
	}
}

/* Plain V1/V3 for one non-composite component, else COMP_V1. NULL+errno on failure. */
static unsigned char *pack(const struct disk_comp *dc, uint32_t n, bool composite,
			   const struct fsent *fs, uint64_t ino, size_t *lenp)
{
	size_t total = composite ? sizeof(struct lov_comp_md_v1) + n * sizeof(struct lov_comp_md_entry_v1) : 0;
	struct lov_comp_md_v1 *hdr;
	unsigned char *buf;
	size_t off;
	uint32_t i;

	for (i = 0; i < n; i++)
		total += lum_size(dc[i].nobj, dc[i].pool != NULL);
	if (total > XATTR_SIZE_MAX) {
		errno = ENOSPC;
		return NULL;
	}
	buf = calloc(1, total);
	if (buf == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	*lenp = total;
	if (!composite) {
		pack_lum(buf, &dc[0], fs, ino);
		return buf;
	}
	hdr = (struct lov_comp_md_v1 *)buf;
	hdr->lcm_magic = LOV_USER_MAGIC_COMP_V1;
	hdr->lcm_size = (uint32_t)total;
	hdr->lcm_entry_count = (uint16_t)n;
	off = sizeof(*hdr) + n * sizeof(struct lov_comp_md_entry_v1);
	for (i = 0; i < n; i++) {
		struct lov_comp_md_entry_v1 *e = &hdr->lcm_entries[i];

		e->lcme_id = i + 1;
		e->lcme_flags = dc[i].flags;
		e->lcme_extent.e_start = dc[i].start;
		e->lcme_extent.e_end = dc[i].end;
		e->lcme_offset = (uint32_t)off;
		e->lcme_size = (uint32_t)lum_size(dc[i].nobj, dc[i].pool != NULL);
		pack_lum(buf + off, &dc[i], fs, ino);
		off += e->lcme_size;
	}
	return buf;
}

/* Blob for a layout: a directory default as given, or a new file's instantiated layout. */
static unsigned char *encode(const struct llapi_layout *l, const struct fsent *fs, bool instantiate,
			     uint64_t ino, size_t *lenp)
{
	struct disk_comp *dc = calloc(l->ncomp, sizeof(*dc));
	unsigned char *buf;
	uint32_t i;

	if (dc == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	for (i = 0; i < l->ncomp; i++) {
		const struct comp *c = &l->comps[i];

		if (lov_pattern_of(c->pattern, &dc[i].pattern) != 0) {
			free(dc);
			errno = EINVAL;
			return NULL;
		}
		dc[i].start = c->start;
		dc[i].end = c->end;
		dc[i].pool = c->pool[0] ? c->pool : NULL;
		dc[i].flags = c->flags & ~LCME_FL_INIT;
		/* Only what covers offset 0 is allocated at create time. */
		if (instantiate && c->start == 0)
			disk_instantiate(c, fs, &dc[i]);
		else
			disk_requested(c, &dc[i]);
	}
	buf = pack(dc, l->ncomp, l->composite || l->ncomp > 1, fs, ino, lenp);
	free(dc);
	return buf;
}

/* One V1/V3 blob into c; 0 or an errno. *raw_count is lmm_stripe_count as stored. */
static int decode_lum(const unsigned char *p, size_t len, struct comp *c, uint16_t *raw_count)
{
	const struct lov_user_md_v1 *v1 = (const struct lov_user_md_v1 *)p;
	const struct lov_user_ost_data_v1 *objs;
	uint32_t i, pattern;
	size_t base;

	if (len < sizeof(*v1))
		return ERANGE;
	if (v1->lmm_magic == LOV_USER_MAGIC_V1)
		base = sizeof(struct lov_user_md_v1);
	else if (v1->lmm_magic == LOV_USER_MAGIC_V3)
		base = sizeof(struct lov_user_md_v3);
	else
		return EPROTO;
	if (len < base || (len - base) % sizeof(*objs) != 0 ||
	    (len - base) / sizeof(*objs) > LOV_MAX_STRIPE_COUNT)
		return ERANGE;
	comp_default(c);
	c->nobj = (uint32_t)((len - base) / sizeof(*objs));
	/* An HSM-released layout keeps its pattern and count but has no objects. */
	pattern = v1->lmm_pattern & ~0x80000000u;	/* LOV_PATTERN_F_RELEASED */
	if (pattern != v1->lmm_pattern)
		*raw_count = 0;
	if (pattern == LOV_PATTERN_RAID0)
		c->pattern = LLAPI_LAYOUT_RAID0;
	else if (pattern == (LOV_PATTERN_RAID0 | LOV_PATTERN_OVERSTRIPING))
		c->pattern = LLAPI_LAYOUT_OVERSTRIPING;
	else if (pattern & LOV_PATTERN_MDT)
		c->pattern = LLAPI_LAYOUT_MDT;
	else
		c->pattern = pattern;
	c->stripe_size = v1->lmm_stripe_size ? v1->lmm_stripe_size : LLAPI_LAYOUT_DEFAULT;
	if (v1->lmm_stripe_count >= LOV_ALL_STRIPES_WIDE)
		c->stripe_count = LLAPI_LAYOUT_WIDE_MIN + (LOV_ALL_STRIPES - v1->lmm_stripe_count);
	else if (v1->lmm_stripe_count == 0)
		c->stripe_count = LLAPI_LAYOUT_DEFAULT;
	else
		c->stripe_count = v1->lmm_stripe_count;
	c->stripe_offset = v1->lmm_stripe_offset == LOV_OFFSET_DEFAULT ?
			   LLAPI_LAYOUT_DEFAULT : v1->lmm_stripe_offset;
	if (pattern == v1->lmm_pattern)
		*raw_count = v1->lmm_stripe_count;
	if (v1->lmm_magic == LOV_USER_MAGIC_V3) {
		const struct lov_user_md_v3 *v3 = (const struct lov_user_md_v3 *)p;

		memcpy(c->pool, v3->lmm_pool_name, LOV_MAXPOOLNAME);
		c->pool[LOV_MAXPOOLNAME] = '\0';
		objs = v3->lmm_objects;
	} else {
		objs = v1->lmm_objects;
	}
	if (c->nobj == 0)
		return 0;
	c->objs = calloc(c->nobj, sizeof(*c->objs));
	if (c->objs == NULL)
		return ENOMEM;
	for (i = 0; i < c->nobj; i++)
		c->objs[i] = objs[i].l_ost_idx;
	c->stripe_offset = c->objs[0];
	return 0;
}

/* A handle from an xattr blob, cursor on the last component. NULL+errno on failure. */
static struct llapi_layout *decode(const unsigned char *buf, size_t len, bool regular)
{
	const struct lov_comp_md_v1 *hdr = (const struct lov_comp_md_v1 *)buf;
	struct llapi_layout *l;
	uint16_t raw_count;
	uint32_t magic, n, i;
	size_t table;
	int err = 0;

	if (len < sizeof(magic)) {
		errno = ERANGE;
		return NULL;
	}
	memcpy(&magic, buf, sizeof(magic));
#ifdef STANDIN_LEGACY
	if (magic == LOV_USER_MAGIC_COMP_V1) {
		errno = EPROTO;		/* unknown to a 2.7 library */
		return NULL;
	}
#endif
	if (magic != LOV_USER_MAGIC_COMP_V1) {
		l = handle_new(1);
		if (l == NULL)
			return NULL;
		err = decode_lum(buf, len, &l->comps[0], &raw_count);
		if (err == 0 && regular && l->comps[0].nobj != raw_count)
			err = EBADSLT;
		goto out;
	}
	if (len < sizeof(*hdr) || hdr->lcm_size != len || hdr->lcm_entry_count == 0) {
		errno = ERANGE;
		return NULL;
	}
	n = hdr->lcm_entry_count;
	table = sizeof(*hdr) + (size_t)n * sizeof(struct lov_comp_md_entry_v1);
	if (table > len) {
		errno = ERANGE;
		return NULL;
	}
	l = handle_new(n);
	if (l == NULL)
		return NULL;
	l->composite = true;
	for (i = 0; i < n && err == 0; i++) {
		const struct lov_comp_md_entry_v1 *e = &hdr->lcm_entries[i];
		struct comp *c = &l->comps[i];

		if (e->lcme_offset < table || e->lcme_size > len || e->lcme_offset > len - e->lcme_size) {
			err = ERANGE;
			break;
		}
		err = decode_lum(buf + e->lcme_offset, e->lcme_size, c, &raw_count);
		c->start = e->lcme_extent.e_start;
		c->end = e->lcme_extent.e_end;
		c->id = e->lcme_id;
		c->flags = e->lcme_flags;
		/* The real library's check: objects only on instantiated components. */
		if (err == 0 && regular && !(c->flags & LCME_FL_INIT) && c->nobj != 0)
			err = EBADSLT;
	}
out:
	if (err != 0) {
		handle_release(l);
		errno = err;
		return NULL;
	}
	l->cur = l->ncomp - 1;		/* the loader leaves the cursor on the last component */
	return l;
}

/* The common head of the getters: the current component, and an out-pointer to fill. */
static struct comp *getter(const char *fn, const struct llapi_layout *layout, const void *out)
{
	struct comp *c = cur_comp(fn, layout);

	if (c != NULL && out == NULL) {
		errno = EINVAL;
		return NULL;
	}
	return c;
}

/* ---- Exported: logging and filesystem look-ups ---- */

void llapi_msg_set_level(int level)
{
	log_call(__func__, "level=%d", level);
	if (level < 0)
		level = 0;
	if (level > LLAPI_MSG_MAX)
		level = LLAPI_MSG_MAX;
	__atomic_store_n(&msg_level, level, __ATOMIC_RELAXED);
}

int llapi_search_fsname(const char *pathname, char *fsname)
{
	struct calllog lg;
	char rpath[PATH_MAX];
	struct fsent fs;
	int rc;

	log_begin(&lg, __func__);
	log_str(&lg, "path", pathname);
	log_end(&lg);
	if (pathname == NULL || fsname == NULL)
		return -EINVAL;
	rc = path_fs(pathname, rpath, &fs);
	if (rc != 0) {
		llapi_msg(LLAPI_MSG_ERROR, -rc, "'%s' is not on a Lustre filesystem", pathname);
		return rc;
	}
	strcpy(fsname, fs.name);
	return 0;
}

int llapi_search_mounts(const char *pathname, int index, char *mntdir, char *fsname)
{
	char rpath[PATH_MAX];
	struct fsent fs;
	const char *cursor;
	int rc, i;

	log_call_str(__func__, "path", pathname, "index=%d", index);
	if (mntdir == NULL)
		return -EINVAL;
	if (pathname != NULL && pathname[0] != '\0') {
		rc = path_fs(pathname, rpath, &fs);
		if (rc != 0)
			return rc;
	} else {
		if (index < 0)
			return -EINVAL;
		cursor = getenv("STANDIN_FS");
		for (i = 0;; i++) {
			if (!fs_next(&cursor, &fs))
				return -ENODEV;
			if (i == index)
				break;
		}
	}
	strcpy(mntdir, fs.root);
	if (fsname != NULL)
		strcpy(fsname, fs.name);
	return 0;
}

int llapi_get_obd_count(char *mnt, int *count, int is_mdt)
{
	char rpath[PATH_MAX];
	struct fsent fs;
	struct stat st;

	log_call_str(__func__, "mnt", mnt, "is_mdt=%d", is_mdt);
	if (mnt == NULL || count == NULL || (is_mdt != 0 && is_mdt != 1))
		return -EINVAL;
	if (stat(mnt, &st) != 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	if (path_fs(mnt, rpath, &fs) != 0)
		return -ENOTTY;
	*count = is_mdt ? fs.mdts : fs.osts;
	return 0;
}

/* ---- Exported: layout objects ---- */

struct llapi_layout *llapi_layout_get_by_fd(int fd, uint32_t flags)
{
	struct llapi_layout *l = NULL;
	char fpath[PATH_MAX];
	unsigned char *buf;
	struct fsent fs;
	struct stat st;
	ssize_t n;
	int rc;

	log_call(__func__, "fd=%d flags=0x%x", fd, flags);
	if (flags & ~LLAPI_LAYOUT_GET_FLAGS_ALL) {
		errno = EINVAL;
		return NULL;
	}
	rc = fd_fs(fd, fpath, &fs);
	if (rc != 0) {
		errno = rc == -ENODEV ? ENOTTY : -rc;
		return NULL;
	}
	buf = malloc(XATTR_SIZE_MAX);
	if (buf == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	n = fgetxattr(fd, XATTR_LOV, buf, XATTR_SIZE_MAX);
	if (n < 0) {
		/* No layout yet is not an error: the file will get the defaults. */
		if (errno == ENODATA)
			l = handle_new_default();
		else if (errno == EOPNOTSUPP)
			errno = ENOTTY;
	} else if (fstat(fd, &st) == 0) {
		l = decode(buf, (size_t)n, S_ISREG(st.st_mode));
	}
	free(buf);
	return l;
}

struct llapi_layout *llapi_layout_alloc(void)
{
	log_call(__func__, "%s", "");
	return handle_new_default();
}

void llapi_layout_free(struct llapi_layout *layout)
{
	log_call(__func__, "layout=%p", (void *)layout);
	if (layout != NULL && !handle_release(layout))
		die_bad_handle(__func__, layout);
}

int llapi_layout_stripe_count_get(const struct llapi_layout *layout, uint64_t *count)
{
	struct comp *c;

	log_call(__func__, "layout=%p", (const void *)layout);
	c = getter(__func__, layout, count);
	if (c == NULL)
		return -1;
	*count = c->stripe_count;
	return 0;
}

int llapi_layout_stripe_count_set(struct llapi_layout *layout, uint64_t count)
{
	struct comp *c;
	char vb[32];

	log_call(__func__, "layout=%p count=%s", (void *)layout, val_str(count, vb));
	c = cur_comp(__func__, layout);
	if (c == NULL)
		return -1;
	if (count != LLAPI_LAYOUT_DEFAULT &&
	    !(count >= LLAPI_LAYOUT_WIDE_MIN && count <= LLAPI_LAYOUT_WIDE_MAX) &&
	    !(count >= 1 && count <= LOV_MAX_STRIPE_COUNT))
		return fail(EINVAL);
	c->stripe_count = count;
	return 0;
}

int llapi_layout_stripe_size_get(const struct llapi_layout *layout, uint64_t *size)
{
	struct comp *c;

	log_call(__func__, "layout=%p", (const void *)layout);
	c = getter(__func__, layout, size);
	if (c == NULL)
		return -1;
	*size = c->stripe_size;
	return 0;
}

int llapi_layout_stripe_size_set(struct llapi_layout *layout, uint64_t size)
{
	struct comp *c;
	char vb[32];

	log_call(__func__, "layout=%p size=%s", (void *)layout, val_str(size, vb));
	c = cur_comp(__func__, layout);
	if (c == NULL)
		return -1;
	if (size != LLAPI_LAYOUT_DEFAULT &&
	    (size == 0 || size % LOV_MIN_STRIPE_SIZE != 0 || size >= (1ULL << 32)))
		return fail(EINVAL);
	c->stripe_size = size;
	return 0;
}

int llapi_layout_pattern_get(const struct llapi_layout *layout, uint64_t *pattern)
{
	struct comp *c;

	log_call(__func__, "layout=%p", (const void *)layout);
	c = getter(__func__, layout, pattern);
	if (c == NULL)
		return -1;
	*pattern = c->pattern;
	return 0;
}

int llapi_layout_pattern_set(struct llapi_layout *layout, uint64_t pattern)
{
	struct comp *c;
	char vb[32];

	log_call(__func__, "layout=%p pattern=%s", (void *)layout, val_str(pattern, vb));
	c = cur_comp(__func__, layout);
	if (c == NULL)
		return -1;
	if (pattern != LLAPI_LAYOUT_DEFAULT && pattern != LLAPI_LAYOUT_RAID0 &&
	    pattern != LLAPI_LAYOUT_MDT && pattern != LLAPI_LAYOUT_OVERSTRIPING)
		return fail(EINVAL);
	c->pattern = pattern;
	return 0;
}

int llapi_layout_pool_name_get(const struct llapi_layout *layout, char *buf, size_t len)
{
	struct comp *c;

	log_call(__func__, "layout=%p len=%zu", (const void *)layout, len);
	c = getter(__func__, layout, buf);
	if (c == NULL)
		return -1;
	snprintf(buf, len, "%s", c->pool);
	return 0;		/* the code returns 0, whatever the header comment says */
}

int llapi_layout_pool_name_set(struct llapi_layout *layout, const char *pool)
{
	struct calllog lg;
	const char *dot;
	struct comp *c;

	log_begin(&lg, __func__);
	log_fmt(&lg, "layout=%p", (void *)layout);
	log_str(&lg, "pool", pool);
	log_end(&lg);
	c = cur_comp(__func__, layout);
	if (c == NULL)
		return -1;
	if (pool == NULL)
		return fail(EINVAL);
	dot = strchr(pool, '.');	/* "fsname.pool" names the same pool */
	if (dot != NULL)
		pool = dot + 1;
	if (strlen(pool) > LOV_MAXPOOLNAME)
		return fail(EINVAL);
	snprintf(c->pool, sizeof(c->pool), "%s", pool);
	return 0;
}

int llapi_layout_ost_index_get(const struct llapi_layout *layout, uint64_t stripe_number, uint64_t *index)
{
	struct comp *c;

	log_call(__func__, "layout=%p stripe_number=%llu", (const void *)layout,
		 (unsigned long long)stripe_number);
	c = cur_comp(__func__, layout);
	if (c == NULL)
		return -1;
	if (index == NULL || stripe_number >= c->stripe_count || stripe_number >= c->nobj)
		return fail(EINVAL);
	*index = c->stripe_offset == LLAPI_LAYOUT_DEFAULT ? LLAPI_LAYOUT_DEFAULT : c->objs[stripe_number];
	return 0;
}

/* ---- Exported: creating files with a layout ---- */

static bool layout_has_mdt(const struct llapi_layout *l)
{
	uint32_t i;

	for (i = 0; i < l->ncomp; i++)
		if (l->comps[i].pattern == LLAPI_LAYOUT_MDT)
			return true;
	return false;
}

/* The subset of llapi_layout_v2_sanity() the stand-in enforces; 0 or EINVAL. */
static int layout_sanity(const struct llapi_layout *l)
{
	uint32_t i;

	for (i = 0; i < l->ncomp; i++) {
		const struct comp *c = &l->comps[i];

		if (c->start >= c->end)
			return EINVAL;
		if (c->start != (i == 0 ? 0 : l->comps[i - 1].end))
			return EINVAL;
		/* DoM must be the first, bounded component: its size is a 32-bit stripe size. */
		if (c->pattern == LLAPI_LAYOUT_MDT && (i != 0 || c->end == LUSTRE_EOF || c->end > UINT32_MAX))
			return EINVAL;
	}
	return l->comps[l->ncomp - 1].end == LUSTRE_EOF ? 0 : EINVAL;
}

/* What the client and MDS do with a layout xattr set on a just-opened fd; 0 or an errno. */
static int apply_layout(int fd, const struct llapi_layout *l)
{
	/* The filesystem default a dropped request leaves: one 1 MiB stripe. */
	const struct disk_comp dflt = {
		.pattern = LOV_PATTERN_RAID0, .stripe_size = STANDIN_DEFAULT_STRIPE_SIZE,
		.stripe_count = 1, .nobj = 1, .start = 0, .end = LUSTRE_EOF, .pool = NULL,
	};
	char fpath[PATH_MAX];
	unsigned char *blob;
	struct fsent fs;
	struct stat st;
	bool has_layout;
	size_t len;
	int rc;

	rc = fd_fs(fd, fpath, &fs);
	if (rc != 0)
		return rc == -ENODEV || rc == -ENOTTY ? ENOTTY : -rc;
	if (fstat(fd, &st) != 0)
		return errno;
	if (S_ISDIR(st.st_mode)) {
		if (env_flag("STANDIN_NO_DOM") && layout_has_mdt(l))
			return EINVAL;
		blob = encode(l, &fs, false, 0, &len);
	} else if (S_ISREG(st.st_mode)) {
		has_layout = fgetxattr(fd, XATTR_LOV, NULL, 0) >= 0 || st.st_size > 0;
		if (env_flag("STANDIN_IGNORE_SETSTRIPE")) {
			/* LU-17628: for a non-lfs process the request is dropped silently. */
			if (has_layout)
				return 0;
			blob = pack(&dflt, 1, false, &fs, st.st_ino, &len);
		} else if (has_layout) {
			return 0;	/* the kernel swallows EEXIST */
		} else if (env_flag("STANDIN_NO_DOM") && layout_has_mdt(l)) {
			return EINVAL;
		} else {
			blob = encode(l, &fs, true, st.st_ino, &len);
		}
	} else {
		return EINVAL;
	}
	if (blob == NULL)
		return errno;
	rc = set_xattr(fd, NULL, XATTR_LOV, blob, len);
	free(blob);
	return rc;
}

int llapi_layout_file_open(const char *path, int open_flags, mode_t mode, const struct llapi_layout *layout)
{
	bool live = layout != NULL && handle_is_live(layout);
	char rpath[PATH_MAX], vb[5][32];
	struct fsent fs;
	bool fs_known = false;
	uint32_t i;
	int fd, rc;

	{
		struct calllog lg;

		log_begin(&lg, __func__);
		log_str(&lg, "path", path);
		log_fmt(&lg, "flags=0x%x mode=%04o layout=%p", (unsigned)open_flags, (unsigned)mode,
			(const void *)layout);
		if (live && lg.f != NULL) {
			log_fmt(&lg, "composite=%d comps=", layout->composite);
			for (i = 0; i < layout->ncomp; i++) {
				const struct comp *c = &layout->comps[i];

				fprintf(lg.f, "%s[%s,%s):pattern=%s,count=%s,size=%s,pool=", i ? ";" : "",
					val_str(c->start, vb[0]), val_str(c->end, vb[1]),
					val_str(c->pattern, vb[2]), val_str(c->stripe_count, vb[3]),
					val_str(c->stripe_size, vb[4]));
				log_escaped(lg.f, c->pool);
			}
		}
		log_end(&lg);
	}
	if (path == NULL)
		return fail(EINVAL);
	if (layout == NULL)
		return open(path, open_flags, mode);
	check_handle(__func__, layout);
	if (layout_sanity(layout) != 0) {
		llapi_msg(LLAPI_MSG_ERROR, EINVAL, "invalid layout for '%s'", path);
		return fail(EINVAL);
	}
	for (i = 0; i < layout->ncomp; i++) {
		const char *pool = layout->comps[i].pool;

		if (pool[0] == '\0')
			continue;
		if (!fs_known && path_fs(path, rpath, &fs) != 0)
			return fail(ENOTTY);
		fs_known = true;
		if (!fs_has_pool(&fs, pool)) {
			llapi_msg(LLAPI_MSG_ERROR, EINVAL, "pool '%s' does not exist on '%s'", pool, fs.name);
			return fail(EINVAL);
		}
	}
	/* Objects must not be allocated before the layout is applied. */
	if (open_flags & O_CREAT)
		open_flags |= O_LOV_DELAY_CREATE;
	fd = open(path, open_flags, mode);
	if (fd < 0)
		return -1;
	rc = apply_layout(fd, layout);
	if (rc != 0) {
		close(fd);		/* a file created above stays, as with real Lustre */
		errno = rc;
		return -1;
	}
	return fd;
}

/* ---- Exported: MDT placement ---- */

/* 1 with *idx from path's (or fd's) lmv xattr, 0 when it has none, negative errno if corrupt. */
static int read_lmv(const char *path, int fd, int *idx)
{
	struct lmv_user_md_v1 lmv;
	ssize_t n;

	n = fd >= 0 ? fgetxattr(fd, XATTR_LMV, &lmv, sizeof(lmv)) : getxattr(path, XATTR_LMV, &lmv, sizeof(lmv));
	if (n < 0) {
		if (errno == ENODATA || errno == EACCES || errno == EOPNOTSUPP)
			return 0;
		return errno == ERANGE ? -EPROTO : -errno;
	}
	if ((size_t)n != sizeof(lmv) || lmv.lum_magic != LMV_USER_MAGIC)
		return -EPROTO;
	if (lmv.lum_stripe_offset == UINT32_MAX)
		return 0;
	*idx = (int)lmv.lum_stripe_offset;
	return 1;
}

static void strip_last(char *path)
{
	char *slash = strrchr(path, '/');

	if (slash == path)
		path[1] = '\0';
	else if (slash != NULL)
		*slash = '\0';
}

int llapi_file_fget_mdtidx(int fd, int *mdtidx)
{
	char cur[PATH_MAX];
	struct fsent fs;
	struct stat st;
	int rc, idx = 0;

	log_call(__func__, "fd=%d", fd);
	if (mdtidx == NULL)
		return -EINVAL;
	rc = fd_fs(fd, cur, &fs);
	if (rc != 0)
		return rc == -ENODEV ? -ENOTTY : rc;
	if (fstat(fd, &st) != 0)
		return -errno;
	if (S_ISDIR(st.st_mode)) {
		rc = read_lmv(NULL, fd, &idx);
		if (rc != 0)
			goto out;
		if (strcmp(cur, fs.root) == 0)
			goto out;	/* ROOT is on MDT 0 */
	}
	/* Not placed explicitly: the nearest placed ancestor decides. */
	for (;;) {
		strip_last(cur);
		if (strcmp(cur, fs.root) == 0 || !path_under(cur, fs.root)) {
			idx = 0;
			rc = 1;
			break;
		}
		rc = read_lmv(cur, -1, &idx);
		if (rc != 0)
			break;
	}
out:
	if (rc < 0)
		return rc;
	*mdtidx = idx;
	return 0;
}

static int dir_create(const char *name, mode_t mode, const struct llapi_stripe_param *p)
{
	struct lmv_user_md_v1 lmv;
	char rpath[PATH_MAX];
	const char *pool;
	struct fsent fs;
	int rc, count;

	if (name == NULL || p == NULL)
		return -EINVAL;
	rc = path_fs(name, rpath, &fs);
	if (rc != 0) {
		llapi_msg(LLAPI_MSG_ERROR, -rc, "'%s' is not on a Lustre filesystem", name);
		return rc;
	}
	if (p->lsp_stripe_offset < -1 || p->lsp_stripe_offset >= fs.mdts ||
	    p->lsp_stripe_count < -5 || p->lsp_stripe_count > LMV_MAX_STRIPE_COUNT ||
	    p->lsp_stripe_pattern < 0 || p->lsp_stripe_pattern > LMV_HASH_TYPE_MAX)
		return -EINVAL;
	pool = p->lsp_pool;
	if (pool != NULL) {
		const char *dot = strchr(pool, '.');

		if (dot != NULL) {
			if ((size_t)(dot - pool) != strlen(fs.name) || strncmp(pool, fs.name, strlen(fs.name)) != 0)
				return -EINVAL;
			pool = dot + 1;
		}
		if (!fs_has_pool(&fs, pool))
			return -EINVAL;
	}
	if (p->lsp_is_specific)
		return -EINVAL;		/* explicit MDT lists are not emulated */
	/* Remote directories need CAP_SYS_ADMIN (or enable_remote_dir_gid) on the MDS. */
	if (env_flag("STANDIN_MKDIR_EPERM") && p->lsp_stripe_offset != -1)
		return -EPERM;
	if (mkdir(name, mode) != 0)
		return -errno;
	memset(&lmv, 0, sizeof(lmv));
	count = p->lsp_stripe_count;
	lmv.lum_magic = LMV_USER_MAGIC;
	lmv.lum_stripe_count = count >= 0 && count <= 1 ? 1 : count < 0 || count > fs.mdts ? fs.mdts : count;
	lmv.lum_stripe_offset = p->lsp_stripe_offset >= 0 ? (uint32_t)p->lsp_stripe_offset :
				(uint32_t)(counter_next(&next_mdt) % (uint64_t)fs.mdts);
	lmv.lum_hash_type = p->lsp_stripe_pattern ? (uint32_t)p->lsp_stripe_pattern : LMV_HASH_TYPE_FNV_1A_64;
	if (pool != NULL)
		snprintf(lmv.lum_pool_name, sizeof(lmv.lum_pool_name), "%s", pool);
	rc = set_xattr(-1, name, XATTR_LMV, &lmv, sizeof(lmv));
	if (rc != 0) {
		rmdir(name);
		return -rc;
	}
	return 0;
}

int llapi_dir_create_pool(const char *name, int mode, int stripe_offset, int stripe_count,
			  int stripe_pattern, const char *poolname)
{
	struct llapi_stripe_param param;

	{
		struct calllog lg;

		log_begin(&lg, __func__);
		log_str(&lg, "path", name);
		log_fmt(&lg, "mode=%04o offset=%d count=%d pattern=%d", (unsigned)mode, stripe_offset,
			stripe_count, stripe_pattern);
		log_str(&lg, "pool", poolname);
		log_end(&lg);
	}
	memset(&param, 0, sizeof(param));
	param.lsp_stripe_offset = stripe_offset;
	param.lsp_stripe_count = stripe_count;
	param.lsp_stripe_pattern = stripe_pattern;
	param.lsp_pool = (char *)poolname;
	return dir_create(name, (mode_t)mode, &param);
}

/* ---- Exported only by the 2.10/2.11-level build ---- */

#ifndef STANDIN_LEGACY

int llapi_layout_comp_use(struct llapi_layout *layout, uint32_t pos)
{
	struct llapi_layout *l;

	log_call(__func__, "layout=%p pos=%u", (void *)layout, pos);
	if (cur_comp(__func__, layout) == NULL)
		return -1;
	l = layout;
	switch (pos) {
	case LLAPI_LAYOUT_COMP_USE_FIRST:
		l->cur = 0;
		return 0;
	case LLAPI_LAYOUT_COMP_USE_LAST:
		l->cur = l->ncomp - 1;
		return 0;
	case LLAPI_LAYOUT_COMP_USE_NEXT:
		if (l->cur + 1 >= l->ncomp) {
			errno = ENOENT;
			return 1;
		}
		l->cur++;
		return 0;
	case LLAPI_LAYOUT_COMP_USE_PREV:
		if (l->cur == 0) {
			errno = ENOENT;
			return 1;
		}
		l->cur--;
		return 0;
	default:
		return fail(EINVAL);
	}
}

int llapi_layout_comp_extent_get(const struct llapi_layout *layout, uint64_t *start, uint64_t *end)
{
	struct comp *c;

	log_call(__func__, "layout=%p", (const void *)layout);
	c = getter(__func__, layout, end);
	if (c == NULL || start == NULL)
		return c == NULL ? -1 : fail(EINVAL);
	*start = c->start;
	*end = c->end;
	return 0;
}

int llapi_layout_comp_extent_set(struct llapi_layout *layout, uint64_t start, uint64_t end)
{
	struct comp *c;
	char vb[2][32];

	log_call(__func__, "layout=%p start=%s end=%s", (void *)layout, val_str(start, vb[0]),
		 val_str(end, vb[1]));
	c = cur_comp(__func__, layout);
	if (c == NULL)
		return -1;
	if (start >= end)
		return fail(EINVAL);
	c->start = start;
	c->end = end;
	layout->composite = true;	/* setting any extent makes the layout composite */
	return 0;
}

int llapi_layout_comp_flags_get(const struct llapi_layout *layout, uint32_t *flags)
{
	struct comp *c;

	log_call(__func__, "layout=%p", (const void *)layout);
	c = getter(__func__, layout, flags);
	if (c == NULL)
		return -1;
	*flags = c->flags;
	return 0;
}

int llapi_layout_comp_id_get(const struct llapi_layout *layout, uint32_t *id)
{
	struct comp *c;

	log_call(__func__, "layout=%p", (const void *)layout);
	c = getter(__func__, layout, id);
	if (c == NULL)
		return -1;
	*id = c->id;
	return 0;
}

/* Like the real one: a fresh all-DEFAULT component after the LAST one (not the current). */
int llapi_layout_comp_add(struct llapi_layout *layout)
{
	struct comp *grown, *last;

	log_call(__func__, "layout=%p", (void *)layout);
	if (cur_comp(__func__, layout) == NULL)
		return -1;
	last = &layout->comps[layout->ncomp - 1];
	if (last->end == LUSTRE_EOF)
		return fail(EINVAL);
	grown = realloc(layout->comps, (layout->ncomp + 1) * sizeof(*grown));
	if (grown == NULL)
		return fail(ENOMEM);
	layout->comps = grown;
	last = &grown[layout->ncomp - 1];
	comp_default(&grown[layout->ncomp]);
	grown[layout->ncomp].start = last->end;
	layout->cur = layout->ncomp++;
	layout->composite = true;
	return 0;
}

bool llapi_layout_is_composite(struct llapi_layout *layout)
{
	log_call(__func__, "layout=%p", (void *)layout);
	if (layout == NULL)
		return false;
	return check_handle(__func__, layout)->composite;
}

int llapi_layout_mirror_count_get(struct llapi_layout *layout, uint16_t *count)
{
	log_call(__func__, "layout=%p", (void *)layout);
	if (getter(__func__, layout, count) == NULL)
		return -1;
	*count = 1;		/* mirrors (FLR) are not emulated */
	return 0;
}

int llapi_dir_create(const char *name, mode_t mode, const struct llapi_stripe_param *param)
{
	struct calllog lg;

	log_begin(&lg, __func__);
	log_str(&lg, "path", name);
	log_fmt(&lg, "mode=%04o", (unsigned)mode);
	if (param != NULL) {
		log_fmt(&lg, "offset=%d count=%d hash=%d", param->lsp_stripe_offset,
			param->lsp_stripe_count, param->lsp_stripe_pattern);
		log_str(&lg, "pool", param->lsp_pool);
		log_fmt(&lg, "is_specific=%d is_create=%d", param->lsp_is_specific, param->lsp_is_create);
	} else {
		log_fmt(&lg, "param=(null)");
	}
	log_end(&lg);
	return dir_create(name, mode, param);
}

#endif /* !STANDIN_LEGACY */

#ifndef STANDIN_LEGACY
#include "standin_hsm.c"	/* FIDs and HSM: absent from the legacy build */
#endif
