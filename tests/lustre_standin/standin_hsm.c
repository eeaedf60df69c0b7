/*
 * FIDs and HSM for the liblustreapi stand-in (included at the end of
 * standin.c, so it shares its fake filesystems, call log and xattr helpers).
 *
 * Every fact about the real library used here is from
 * /work/shared/docs/lustre-hsm-changelog.md (sections 1.1-1.7); what differs
 * is listed in README.md.
 *
 * FIDs. A fake file's FID is derived from its inode number and generation
 * (FS_IOC_GETVERSION), so it is stable for the life of the inode, unique on
 * one filesystem and never reused by a later inode with the same number:
 *
 *     f_seq = FID_SEQ_NORMAL (0x200000400) + ((ino >> 32) << 32 | generation)
 *     f_oid = ino & 0xffffffff
 *     f_ver = 0
 *
 * The generation is 0 where the filesystem has none (tmpfs) and for
 * anything that is neither a regular file nor a directory. standin_fid_ino()
 * and standin_fid_gen() invert the mapping (for fid2path).
 *
 * HSM state is the real 24-byte little-endian struct hsm_attrs in the
 * trusted.hsm xattr of the ordinary file; no xattr means state 0 (never
 * archived), as on the MDT.
 */
#include <linux/fs.h>
#include <sys/ioctl.h>

#define FID_SEQ_NORMAL		0x200000400ULL
#define XATTR_HSM		"trusted.hsm"

#define HS_EXISTS		0x00000001u
#define HS_DIRTY		0x00000002u
#define HS_RELEASED		0x00000004u
#define HS_ARCHIVED		0x00000008u
#define HS_NORELEASE		0x00000010u
#define HS_NOARCHIVE		0x00000020u
#define HS_LOST			0x00000040u
#define HSM_USER_MASK		(HS_NORELEASE | HS_NOARCHIVE | HS_DIRTY)
#define HSM_FLAGS_MASK		0x7Fu		/* a 2.11 level server: no PCC bits */
#define LOV_PATTERN_F_RELEASED	0x80000000u
#define CAP_SYS_ADMIN_BIT	21

struct lu_fid {
	uint64_t f_seq;
	uint32_t f_oid;
	uint32_t f_ver;
} __attribute__((packed));

struct hsm_extent {
	uint64_t offset;
	uint64_t length;
} __attribute__((packed));

struct hsm_user_state {
	uint32_t hus_states;
	uint32_t hus_archive_id;
	uint32_t hus_in_progress_state;
	uint32_t hus_in_progress_action;
	struct hsm_extent hus_in_progress_location;
	char hus_extended_info[];
};

struct hsm_attrs {
	uint32_t hsm_compat;
	uint32_t hsm_flags;
	uint64_t hsm_arch_id;
	uint64_t hsm_arch_ver;
};

_Static_assert(sizeof(struct lu_fid) == 16, "lu_fid is 16 bytes");
_Static_assert(sizeof(struct hsm_user_state) == 32, "hsm_user_state is 32 bytes");
_Static_assert(sizeof(struct hsm_attrs) == 24, "hsm_attrs is 24 bytes");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "trusted.hsm is stored little-endian");

/* ---- FIDs ---- */

static uint32_t inode_generation(int fd, const struct stat *st)
{
	char proc[64];
	long gen = 0;
	int rfd, rc;

	if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode))
		return 0;
	if (ioctl(fd, FS_IOC_GETVERSION, &gen) == 0)
		return (uint32_t)gen;
	if (errno != EBADF)
		return 0;		/* ENOTTY: the filesystem keeps no generation */
	/* An O_PATH descriptor takes no ioctl: ask a real one for the same inode. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	rfd = open(proc, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (rfd < 0)
		return 0;
	rc = ioctl(rfd, FS_IOC_GETVERSION, &gen);
	close(rfd);
	return rc == 0 ? (uint32_t)gen : 0;
}

static void standin_fid(const struct stat *st, uint32_t gen, struct lu_fid *fid)
{
	uint64_t ino = (uint64_t)st->st_ino;

	fid->f_seq = FID_SEQ_NORMAL + (((ino >> 32) << 32) | gen);
	fid->f_oid = (uint32_t)ino;
	fid->f_ver = 0;
}

/* The inverse, for fid2path: 0 or -EINVAL when seq is not one the stand-in hands out. */
static __attribute__((unused)) int standin_fid_ino(const struct lu_fid *fid, uint64_t *ino, uint32_t *gen)
{
	uint64_t rest;

	if (fid->f_seq < FID_SEQ_NORMAL || fid->f_ver != 0)
		return -EINVAL;
	rest = fid->f_seq - FID_SEQ_NORMAL;
	*ino = (rest & 0xffffffff00000000ULL) | fid->f_oid;
	*gen = (uint32_t)rest;
	return 0;
}

/* FID of an open descriptor on a fake fs: 0, -ENOTTY off Lustre, -EBADF. */
static int fid_of_fd(int fd, struct lu_fid *fid)
{
	char fpath[PATH_MAX];
	struct fsent fs;
	struct stat st;
	int rc;

	rc = fd_fs(fd, fpath, &fs);
	if (rc != 0)
		return rc == -ENODEV ? -ENOTTY : rc;
	if (fstat(fd, &st) != 0)
		return -errno;
	standin_fid(&st, inode_generation(fd, &st), fid);
	return 0;
}

int llapi_fd2fid(int fd, struct lu_fid *fid)
{
	log_call(__func__, "fd=%d", fd);
	if (fid == NULL)
		return -EINVAL;
	memset(fid, 0, sizeof(*fid));
	return fid_of_fd(fd, fid);
}

int llapi_path2fid(const char *path, struct lu_fid *fid)
{
	int fd, rc;

	log_call_str(__func__, "path", path, "%s", "");
	if (path == NULL || fid == NULL)
		return -EINVAL;
	memset(fid, 0, sizeof(*fid));
	/* As at HEAD: a symlink's own FID, never its target's. */
	fd = open(path, O_RDONLY | O_PATH | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	rc = fid_of_fd(fd, fid);
	close(fd);
	return rc;
}

/* ---- HSM state ---- */

static bool has_cap_sys_admin(void)
{
	char line[256];
	unsigned long long eff = 0;
	bool found = false;
	FILE *f = fopen("/proc/self/status", "re");

	if (f == NULL)
		return geteuid() == 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "CapEff: %llx", &eff) == 1) {
			found = true;
			break;
		}
	}
	fclose(f);
	return found ? (eff >> CAP_SYS_ADMIN_BIT) & 1 : geteuid() == 0;
}

/* A regular file on a fake fs, through a descriptor the ioctl accepts: 0 or negative errno. */
static int hsm_fd_check(int fd)
{
	char fpath[PATH_MAX];
	struct fsent fs;
	struct stat st;
	int fl, rc;

	fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if (fl & O_PATH)
		return -EBADF;		/* no ioctl through an O_PATH descriptor */
	rc = fd_fs(fd, fpath, &fs);
	if (rc != 0)
		return rc == -ENODEV ? -ENOTTY : rc;
	if (fstat(fd, &st) != 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -ENOTTY;		/* handled by the regular-file ioctl only */
	return 0;
}

static int hsm_read(int fd, struct hsm_attrs *ha)
{
	ssize_t n;

	memset(ha, 0, sizeof(*ha));
	n = fgetxattr(fd, XATTR_HSM, ha, sizeof(*ha));
	if (n < 0) {
		if (errno == ENODATA || errno == EOPNOTSUPP)
			return 0;	/* no HSM attributes: state 0 */
		return errno == ERANGE ? -EPROTO : -errno;
	}
	if (n == 0) {
		memset(ha, 0, sizeof(*ha));
		return 0;
	}
	return (size_t)n == sizeof(*ha) ? 0 : -EPROTO;
}

int llapi_hsm_state_get_fd(int fd, struct hsm_user_state *hus)
{
	struct hsm_attrs ha;
	int rc;

	log_call(__func__, "fd=%d", fd);
	if (hus == NULL)
		return -EFAULT;
	rc = hsm_fd_check(fd);
	if (rc == 0)
		rc = hsm_read(fd, &ha);
	if (rc != 0)
		return rc;
	memset(hus, 0, sizeof(*hus));
	hus->hus_states = ha.hsm_flags;
	hus->hus_archive_id = (uint32_t)ha.hsm_arch_id;
	return 0;
}

int llapi_hsm_state_get(const char *path, struct hsm_user_state *hus)
{
	int fd, rc;

	log_call_str(__func__, "path", path, "%s", "");
	if (path == NULL)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = llapi_hsm_state_get_fd(fd, hus);
	close(fd);
	return rc;
}

/* The MDT's rules (mdt_hsm_state_set): 0 or negative errno; nothing saved on failure. */
static int hsm_apply(int fd, uint64_t setmask, uint64_t clearmask, uint32_t archive_id, bool set_id)
{
	struct hsm_attrs ha;
	uint32_t flags;
	int rc;

	if ((setmask | clearmask) & ~(uint64_t)HSM_FLAGS_MASK)
		return -EINVAL;
	if (((setmask | clearmask) & ~(uint64_t)HSM_USER_MASK) && !has_cap_sys_admin())
		return -EPERM;
	rc = hsm_read(fd, &ha);
	if (rc != 0)
		return rc;
	flags = (ha.hsm_flags | (uint32_t)setmask) & ~(uint32_t)clearmask;
	if ((flags & HS_DIRTY) && !(flags & HS_EXISTS))
		return -EINVAL;
	if ((flags & HS_RELEASED) && (flags & HS_DIRTY))
		return -EINVAL;
	if ((flags & HS_RELEASED) && !(flags & HS_ARCHIVED))
		return -EINVAL;
	if ((flags & HS_LOST) && !(flags & HS_ARCHIVED))
		return -EINVAL;
	if (!(flags & HS_EXISTS))
		return 0;		/* the MDT returns success and saves nothing */
	ha.hsm_flags = flags;
	if (set_id)
		ha.hsm_arch_id = archive_id;
	rc = set_xattr(fd, NULL, XATTR_HSM, &ha, sizeof(ha));
	return -rc;
}

int llapi_hsm_state_set_fd(int fd, uint64_t setmask, uint64_t clearmask, uint32_t archive_id)
{
	int rc;

	log_call(__func__, "fd=%d setmask=0x%llx clearmask=0x%llx archive_id=%u", fd,
		 (unsigned long long)setmask, (unsigned long long)clearmask, archive_id);
	rc = hsm_fd_check(fd);
	if (rc != 0)
		return rc;
	/* archive_id 0 means "no change" (HSS_ARCHIVE_ID only when > 0). */
	return hsm_apply(fd, setmask, clearmask, archive_id, archive_id > 0);
}

int llapi_hsm_state_set(const char *path, uint64_t setmask, uint64_t clearmask, uint32_t archive_id)
{
	int fd, rc;

	log_call_str(__func__, "path", path, "setmask=0x%llx clearmask=0x%llx archive_id=%u",
		     (unsigned long long)setmask, (unsigned long long)clearmask, archive_id);
	if (path == NULL)
		return -EINVAL;
	fd = open(path, O_WRONLY | O_LOV_DELAY_CREATE | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = hsm_fd_check(fd);
	if (rc == 0)
		rc = hsm_apply(fd, setmask, clearmask, archive_id, archive_id > 0);
	close(fd);
	return rc;
}

/* ---- Import ---- */

/* The released layout the create stores: V1 (V3 with a pool), RELEASED pattern, no objects. */
static int store_released_layout(int fd, unsigned long long stripe_size, int stripe_count,
				 uint32_t pattern, const char *pool)
{
	struct disk_comp d;
	unsigned char *blob;
	size_t len;
	int rc;

	memset(&d, 0, sizeof(d));
	d.pattern = pattern | LOV_PATTERN_F_RELEASED;
	d.stripe_size = (uint32_t)stripe_size;
	d.stripe_count = stripe_count < 0 ? (uint16_t)(LOV_ALL_STRIPES + 1 + stripe_count) : (uint16_t)stripe_count;
	d.end = LUSTRE_EOF;
	d.pool = pool != NULL && pool[0] != '\0' ? pool : NULL;
	blob = pack(&d, 1, false, NULL, 0, &len);
	if (blob == NULL)
		return errno;
	rc = set_xattr(fd, NULL, XATTR_LOV, blob, len);
	free(blob);
	return rc;
}

int llapi_hsm_import(const char *dst, int archive, const struct stat *st, unsigned long long stripe_size,
		     int stripe_offset, int stripe_count, int stripe_pattern, char *pool_name,
		     struct lu_fid *newfid)
{
	char rpath[PATH_MAX];
	struct fsent fs;
	struct hsm_attrs ha;
	struct timespec times[2];
	int fd, rc;

	{
		struct calllog lg;

		log_begin(&lg, __func__);
		log_str(&lg, "dst", dst);
		log_fmt(&lg, "archive=%d stripe_size=%llu stripe_offset=%d stripe_count=%d pattern=0x%x pool=",
			archive, stripe_size, stripe_offset, stripe_count, (unsigned)stripe_pattern);
		if (lg.f != NULL)
			log_escaped(lg.f, pool_name ? pool_name : "");
		if (st != NULL)
			log_fmt(&lg, " size=%lld uid=%u gid=%u mode=%04o atime=%lld.%09ld mtime=%lld.%09ld",
				(long long)st->st_size, st->st_uid, st->st_gid, st->st_mode & 07777,
				(long long)st->st_atim.tv_sec, st->st_atim.tv_nsec,
				(long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
		log_end(&lg);
	}
	if (dst == NULL || st == NULL || newfid == NULL)
		return -EINVAL;
	if (stripe_pattern == 0)
		stripe_pattern = LOV_PATTERN_RAID0;
	if (stripe_size % LOV_MIN_STRIPE_SIZE != 0 || stripe_size >= (1ULL << 32) ||
	    stripe_count < -1 || stripe_count > LOV_MAX_STRIPE_COUNT ||
	    (pool_name != NULL && strlen(pool_name) > LOV_MAXPOOLNAME))
		return -EINVAL;
	/* Step 1, llapi_file_open_pool: the file is created before anything is checked on Lustre. */
	fd = open(dst, O_CREAT | O_WRONLY | O_CLOEXEC | O_LOV_DELAY_CREATE, st->st_mode & 07777);
	if (fd < 0)
		return -errno;
	rc = path_fs(dst, rpath, &fs);
	if (rc != 0) {
		close(fd);		/* off Lustre: the setstripe ioctl fails, the file stays */
		return -ENOTTY;
	}
	if (fgetxattr(fd, XATTR_LOV, NULL, 0) >= 0) {
		close(fd);
		return -EEXIST;		/* already has a layout */
	}
	if (pool_name != NULL && pool_name[0] != '\0' && !fs_has_pool(&fs, pool_name)) {
		close(fd);
		return -EINVAL;
	}
	rc = -store_released_layout(fd, stripe_size, stripe_count, (uint32_t)stripe_pattern, pool_name);
	if (rc != 0) {
		close(fd);
		return rc;
	}
	/* Step 2: the new FID. */
	rc = fid_of_fd(fd, newfid);
	if (rc != 0)
		goto undo;
	/* Step 4, LL_IOC_HSM_IMPORT: the state (any archive id, even 0), then an MDT-only setattr. */
	if (!S_ISREG(st->st_mode) && (st->st_mode & S_IFMT) != 0) {
		rc = -EINVAL;
		goto undo;
	}
	if (!has_cap_sys_admin()) {
		rc = -EPERM;
		goto undo;
	}
	memset(&ha, 0, sizeof(ha));
	ha.hsm_flags = HS_ARCHIVED | HS_EXISTS | HS_RELEASED;
	ha.hsm_arch_id = (uint32_t)archive;
	rc = -set_xattr(fd, NULL, XATTR_HSM, &ha, sizeof(ha));
	if (rc != 0)
		goto undo;
	times[0] = st->st_atim;
	times[1] = st->st_mtim;
	if (fchown(fd, st->st_uid, st->st_gid) != 0 || fchmod(fd, st->st_mode & 0777) != 0 ||
	    ftruncate(fd, st->st_size) != 0 || futimens(fd, times) != 0) {
		rc = -errno;
		goto undo;
	}
	close(fd);
	return 0;
undo:
	close(fd);
	unlink(dst);
	return rc;
}

#include "standin_changelog.c"	/* changelogs and fid2path */
