/*
 * Changelogs and fid2path for the liblustreapi stand-in (included at the end
 * of standin_hsm.c: it shares the fake filesystems, the call log and the FID
 * rule).
 *
 * Every fact about the real library used here is from
 * /work/shared/docs/lustre-hsm-changelog.md section 2 (and 1.5 for
 * fid2path); what differs is listed in README.md.
 *
 * The MDT side is files in $STANDIN_CHANGELOG_DIR, written by the tests
 * (tests/support/changelog.py plays the MDS: it registers users and appends
 * the records of the changes a test makes):
 *
 *   <FSNAME>-MDTxxxx.log    the stored records, back to back, each a struct
 *                           changelog_rec, its extensions as its flags place
 *                           them, then its name (the device stream's format)
 *   <FSNAME>-MDTxxxx.users  "index N" (the last index handed out), "next N"
 *                           (the next user id), then one "clN ENDREC" line per
 *                           registered user
 *   <FSNAME>-MDTxxxx.lock   flock()ed by both sides around every access
 *
 * The device of an MDT exists when FSNAME is a fake fs (STANDIN_FS) with more
 * than xxxx MDTs; reading one with no .log file yet reads no record.
 */
#include <ftw.h>
#include <sys/file.h>

#define CL_MARK			0
#define CL_RENAME		8
#define CLF_VERSION		0x1000u
#define CLF_RENAME		0x2000u
#define CLF_JOBID		0x4000u
#define CLF_EXTRA_FLAGS		0x8000u
#define CLF_FLAGMASK		0x0FFFu
#define CLFE_UIDGID		0x0001u
#define CLFE_NID		0x0002u
#define CLFE_OPEN		0x0004u
#define CLFE_XATTR		0x0008u
#define CLFE_SUPPORTED		(CLFE_UIDGID | CLFE_NID | CLFE_OPEN | CLFE_XATTR)
#define CHANGELOG_FLAG_FOLLOW	0x01u
#define CHANGELOG_FLAG_BLOCK	0x02u
#define CHANGELOG_FLAG_JOBID	0x04u
#define CHANGELOG_FLAG_EXTRA_FLAGS 0x08u
#define CHANGELOG_FLAG_NID_BE	0x10u
#define CR_MAXSIZE		952
#define CL_NAME_MAX		255
#define FID_SEQ_ROOT		0x200000007ULL
#define CHLG_PRIV_MAGIC		0xCA6E0001u
#define CHLG_MAX_READERS	256

struct changelog_rec {
	uint16_t cr_namelen;
	uint16_t cr_flags;
	uint32_t cr_type;
	uint64_t cr_index;
	uint64_t cr_prev;
	uint64_t cr_time;
	union {
		struct lu_fid cr_tfid;
		uint32_t cr_markerflags;
	};
	struct lu_fid cr_pfid;
} __attribute__((packed));

_Static_assert(sizeof(struct changelog_rec) == 64, "changelog_rec is 64 bytes");

/* Sizes of the extensions, in the order they follow the record. */
#define EXT_RENAME	32
#define EXT_JOBID	32
#define EXT_EXTRA	8
#define EXT_UIDGID	16
#define EXT_NID		24
#define EXT_OPEN	4
#define EXT_XATTR	256

struct chlg_priv {
	uint32_t magic;
	int fd;			/* the MDT's .log, or -1: no record stored yet */
	unsigned flags;
	unsigned xflags;
	long long startrec;
	char mdt[64];
};

static struct chlg_priv *chlg_live[CHLG_MAX_READERS];

static bool chlg_register(struct chlg_priv *p)
{
	int i;

	pthread_mutex_lock(&state_lock);
	for (i = 0; i < CHLG_MAX_READERS; i++) {
		if (chlg_live[i] == NULL) {
			chlg_live[i] = p;
			pthread_mutex_unlock(&state_lock);
			return true;
		}
	}
	pthread_mutex_unlock(&state_lock);
	return false;
}

/* A live reader (the real library checks a magic in priv): true and, with drop, forgotten. */
static bool chlg_known(const void *p, bool drop)
{
	int i;

	if (p == NULL)
		return false;
	pthread_mutex_lock(&state_lock);
	for (i = 0; i < CHLG_MAX_READERS; i++) {
		if (chlg_live[i] == p) {
			if (drop)
				chlg_live[i] = NULL;
			pthread_mutex_unlock(&state_lock);
			return ((const struct chlg_priv *)p)->magic == CHLG_PRIV_MAGIC;
		}
	}
	pthread_mutex_unlock(&state_lock);
	return false;
}

/* "FSNAME-MDTxxxx" of a fake fs with more than xxxx MDTs: 0, -EOVERFLOW, -ENOENT. */
static int chlg_device(const char *mdtname)
{
	const char *cursor = getenv("STANDIN_FS"), *dir = getenv("STANDIN_CHANGELOG_DIR");
	const char *dash;
	struct fsent fs;
	unsigned idx;
	char tail;

	if (mdtname == NULL)
		return -EINVAL;
	if (strlen(mdtname) >= sizeof(((struct chlg_priv *)0)->mdt))
		return -EOVERFLOW;
	if (dir == NULL || dir[0] == '\0')
		return -ENOENT;
	dash = strrchr(mdtname, '-');
	if (dash == NULL || strlen(dash) != 8 || sscanf(dash, "-MDT%4x%c", &idx, &tail) != 1)
		return -ENOENT;
	while (fs_next(&cursor, &fs)) {
		if (strlen(fs.name) == (size_t)(dash - mdtname) && strncmp(fs.name, mdtname, dash - mdtname) == 0 &&
		    idx < (unsigned)fs.mdts)
			return 0;
	}
	return -ENOENT;
}

static void chlg_file(char out[PATH_MAX], const char *mdtname, const char *ext)
{
	snprintf(out, PATH_MAX, "%s/%s.%s", getenv("STANDIN_CHANGELOG_DIR"), mdtname, ext);
}

/* The MDT's lock, taken (LOCK_SH or LOCK_EX): an fd, or a negative errno. */
static int chlg_lock(const char *mdtname, int how)
{
	char path[PATH_MAX];
	int fd;

	chlg_file(path, mdtname, "lock");
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (flock(fd, how) != 0) {
		int err = errno;

		close(fd);
		return -err;
	}
	return fd;
}

struct chlg_user {
	unsigned id;
	unsigned long long endrec;
};

struct chlg_users {
	unsigned long long index;
	unsigned next;
	int n;
	struct chlg_user u[64];
};

static int chlg_users_read(const char *mdtname, struct chlg_users *us)
{
	char path[PATH_MAX], line[128];
	struct chlg_user u;
	FILE *f;

	memset(us, 0, sizeof(*us));
	us->next = 1;
	chlg_file(path, mdtname, "users");
	f = fopen(path, "re");
	if (f == NULL)
		return errno == ENOENT ? 0 : -errno;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "index %llu", &us->index) == 1 || sscanf(line, "next %u", &us->next) == 1)
			continue;
		if (sscanf(line, "cl%u %llu", &u.id, &u.endrec) == 2 && us->n < 64)
			us->u[us->n++] = u;
	}
	fclose(f);
	return 0;
}

/* Replace a file of the MDT by len bytes of data (a temporary name, then rename). */
static int chlg_replace(const char *mdtname, const char *ext, const void *data, size_t len)
{
	char path[PATH_MAX], tmp[PATH_MAX + 16];
	int fd, err = 0;

	chlg_file(path, mdtname, ext);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (len > 0 && write(fd, data, len) != (ssize_t)len)
		err = errno ? errno : EIO;
	if (close(fd) != 0 && err == 0)
		err = errno;
	if (err == 0 && rename(tmp, path) != 0)
		err = errno;
	if (err != 0)
		unlink(tmp);
	return -err;
}

static int chlg_users_write(const char *mdtname, const struct chlg_users *us)
{
	char buf[4096];
	size_t n;
	int i;

	n = (size_t)snprintf(buf, sizeof(buf), "index %llu\nnext %u\n", us->index, us->next);
	for (i = 0; i < us->n; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "cl%u %llu\n", us->u[i].id, us->u[i].endrec);
	return chlg_replace(mdtname, "users", buf, n);
}

/* Bytes from the record's start to its name, from its own flags (changelog_rec_offset). */
static size_t chlg_offset(unsigned flags, uint64_t extra)
{
	size_t off = sizeof(struct changelog_rec);

	if (flags & CLF_RENAME)
		off += EXT_RENAME;
	if (flags & CLF_JOBID)
		off += EXT_JOBID;
	if (flags & CLF_EXTRA_FLAGS) {
		off += EXT_EXTRA;
		if (extra & CLFE_UIDGID)
			off += EXT_UIDGID;
		if (extra & CLFE_NID)
			off += EXT_NID;
		if (extra & CLFE_OPEN)
			off += EXT_OPEN;
		if (extra & CLFE_XATTR)
			off += EXT_XATTR;
	}
	return off;
}

static size_t full_read(int fd, void *buf, size_t len)
{
	size_t got = 0;
	ssize_t n;

	while (got < len) {
		n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

/*
 * The next stored record from fd into buf (CR_MAXSIZE bytes): its length,
 * 0 at the end, -EPROTO for a damaged record.
 */
static ssize_t chlg_next(int fd, unsigned char *buf)
{
	struct changelog_rec rec;
	uint64_t extra = 0;
	size_t got, off, pre;

	got = full_read(fd, &rec, sizeof(rec));
	if (got == 0)
		return 0;
	if (got < sizeof(rec) || (rec.cr_flags & ~(CLF_FLAGMASK | CLF_VERSION | CLF_RENAME | CLF_JOBID |
						   CLF_EXTRA_FLAGS)))
		return -EPROTO;
	memcpy(buf, &rec, sizeof(rec));
	pre = sizeof(rec);
	if (rec.cr_flags & CLF_EXTRA_FLAGS) {
		size_t upto = chlg_offset(rec.cr_flags & ~CLF_EXTRA_FLAGS, 0) + EXT_EXTRA;

		if (full_read(fd, buf + pre, upto - pre) != upto - pre)
			return -EPROTO;
		memcpy(&extra, buf + upto - EXT_EXTRA, sizeof(extra));
		if (extra & ~(uint64_t)CLFE_SUPPORTED)
			return -EPROTO;
		pre = upto;
	}
	off = chlg_offset(rec.cr_flags, extra);
	if (off + rec.cr_namelen > CR_MAXSIZE)
		return -EPROTO;
	if (full_read(fd, buf + pre, off + rec.cr_namelen - pre) != off + rec.cr_namelen - pre)
		return -EPROTO;
	return (ssize_t)(off + rec.cr_namelen);
}

int llapi_changelog_start(void **priv, unsigned flags, const char *mdtname, long long startrec)
{
	struct chlg_priv *p;
	char path[PATH_MAX];
	int rc;

	log_call_str(__func__, "mdtname", mdtname, "flags=%#x startrec=%lld", flags, startrec);
	if (priv == NULL)
		return -EINVAL;
	rc = chlg_device(mdtname);
	if (rc != 0)
		return rc;
	if (geteuid() != 0)
		return -EACCES;		/* the device is root-only */
	if (startrec < 0)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	p->magic = CHLG_PRIV_MAGIC;
	p->flags = flags;
	p->startrec = startrec;
	strcpy(p->mdt, mdtname);
	chlg_file(path, mdtname, "log");
	p->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (p->fd < 0 && errno != ENOENT) {
		rc = -errno;
		free(p);
		return rc;
	}
	if (!chlg_register(p)) {
		if (p->fd >= 0)
			close(p->fd);
		free(p);
		return -EMFILE;
	}
	*priv = p;
	return 0;
}

int llapi_changelog_set_xflags(void *priv, unsigned extra_flags)
{
	log_call(__func__, "priv=%p extra_flags=%#x", priv, extra_flags);
	if (!chlg_known(priv, false))
		return -EINVAL;
	((struct chlg_priv *)priv)->xflags = extra_flags;
	return 0;
}

/*
 * As the 2.16+ library repacks: CLF_VERSION, the rename extension on the
 * records that have it, jobid and extra flags only when present and asked
 * for (the extra flags cut to what set_xflags asked for).
 */
static void chlg_repack(const unsigned char *in, const struct chlg_priv *p, unsigned char *out)
{
	const struct changelog_rec *r = (const struct changelog_rec *)in;
	struct changelog_rec *o = (struct changelog_rec *)out;
	uint64_t extra = 0, want = 0;
	size_t src = sizeof(*r), dst = sizeof(*o);
	unsigned flags = (r->cr_flags & CLF_FLAGMASK) | CLF_VERSION;

	memcpy(o, r, sizeof(*r));
	if (r->cr_flags & CLF_EXTRA_FLAGS)
		memcpy(&extra, in + chlg_offset(r->cr_flags & ~CLF_EXTRA_FLAGS, 0), sizeof(extra));
	if (r->cr_flags & CLF_RENAME) {
		memcpy(out + dst, in + src, EXT_RENAME);
		dst += EXT_RENAME;
		src += EXT_RENAME;
		flags |= CLF_RENAME;
	}
	if (r->cr_flags & CLF_JOBID) {
		if (p->flags & CHANGELOG_FLAG_JOBID) {
			memcpy(out + dst, in + src, EXT_JOBID);
			dst += EXT_JOBID;
			flags |= CLF_JOBID;
		}
		src += EXT_JOBID;
	}
	if (r->cr_flags & CLF_EXTRA_FLAGS) {
		static const struct { unsigned bit; size_t size; } ext[] = {
			{ CLFE_UIDGID, EXT_UIDGID }, { CLFE_NID, EXT_NID }, { CLFE_OPEN, EXT_OPEN },
			{ CLFE_XATTR, EXT_XATTR },
		};
		size_t i, at;

		src += EXT_EXTRA;
		if (p->flags & CHANGELOG_FLAG_EXTRA_FLAGS) {
			want = extra & p->xflags & CLFE_SUPPORTED;
			memcpy(out + dst, &want, sizeof(want));
			dst += EXT_EXTRA;
			flags |= CLF_EXTRA_FLAGS;
		}
		for (i = 0, at = src; i < sizeof(ext) / sizeof(ext[0]); i++) {
			if (!(extra & ext[i].bit))
				continue;
			if (want & ext[i].bit) {
				memcpy(out + dst, in + at, ext[i].size);
				dst += ext[i].size;
			}
			at += ext[i].size;
		}
		src = at;
	}
	memcpy(out + dst, in + src, r->cr_namelen);
	o->cr_flags = (uint16_t)flags;
}

int llapi_changelog_recv(void *priv, struct changelog_rec **rech)
{
	struct chlg_priv *p = priv;
	unsigned char raw[CR_MAXSIZE];
	unsigned char *out;
	ssize_t n;
	int lk;

	if (rech == NULL || !chlg_known(priv, false))
		return -EINVAL;
	*rech = NULL;
	if (p->fd < 0)
		return 1;
	for (;;) {
		/* Shared: the tests append whole records under the exclusive lock. */
		lk = chlg_lock(p->mdt, LOCK_SH);
		if (lk < 0)
			return lk;
		n = chlg_next(p->fd, raw);
		close(lk);
		if (n == 0)
			return 1;
		if (n < 0)
			return (int)n;
		if ((long long)((struct changelog_rec *)raw)->cr_index >= p->startrec)
			break;
	}
	out = calloc(1, CR_MAXSIZE);
	if (out == NULL)
		return 0;	/* as at HEAD: 0 with *rech == NULL */
	chlg_repack(raw, p, out);
	*rech = (struct changelog_rec *)out;
	return 0;
}

int llapi_changelog_free(struct changelog_rec **rech)
{
	if (rech != NULL) {
		free(*rech);
		*rech = NULL;
	}
	return 0;
}

int llapi_changelog_fini(void **priv)
{
	struct chlg_priv *p;

	log_call(__func__, "priv=%p", priv ? *priv : NULL);
	if (priv == NULL || !chlg_known(*priv, true))
		return -EINVAL;
	p = *priv;
	if (p->fd >= 0)
		close(p->fd);
	memset(p, 0x5a, sizeof(*p));
	free(p);
	*priv = NULL;
	return 0;
}

/* Keep only the records above index 'upto' in the MDT's .log. */
static int chlg_purge(const char *mdtname, unsigned long long upto)
{
	unsigned char raw[CR_MAXSIZE];
	char path[PATH_MAX];
	char *keep = NULL;
	size_t len = 0, dropped = 0;
	FILE *mem;
	ssize_t n;
	int fd, rc;

	chlg_file(path, mdtname, "log");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	mem = open_memstream(&keep, &len);
	if (mem == NULL) {
		close(fd);
		return -ENOMEM;
	}
	while ((n = chlg_next(fd, raw)) > 0) {
		if (((struct changelog_rec *)raw)->cr_index > upto)
			fwrite(raw, 1, (size_t)n, mem);
		else
			dropped++;
	}
	close(fd);
	fclose(mem);
	rc = n < 0 ? (int)n : dropped ? chlg_replace(mdtname, "log", keep, len) : 0;
	free(keep);
	return rc;
}

int llapi_changelog_clear(const char *mdtname, const char *idstr, long long endrec)
{
	struct chlg_users us;
	unsigned long long lowest;
	unsigned id;
	int rc, lk, i, at = -1, used = 0;

	log_call_str(__func__, "mdtname", mdtname, "idstr=%s endrec=%lld", idstr ? idstr : "(null)", endrec);
	if (endrec < 0 || idstr == NULL)
		return -EINVAL;
	rc = chlg_device(mdtname);
	if (rc != 0)
		return rc;
	/* The kernel takes only "clear:cl%u:%llu"; since 2.15 a "clN-name" is cut at the '-'. */
	if (sscanf(idstr, "cl%u%n", &id, &used) != 1 || (idstr[used] != '\0' && idstr[used] != '-'))
		return -EINVAL;
	lk = chlg_lock(mdtname, LOCK_EX);
	if (lk < 0)
		return lk;
	rc = chlg_users_read(mdtname, &us);
	if (rc != 0)
		goto out;
	for (i = 0; i < us.n; i++)
		if (us.u[i].id == id)
			at = i;
	if (endrec == 0)
		endrec = (long long)us.index;	/* 0: up to the current last record */
	if (at < 0 || (unsigned long long)endrec < us.u[at].endrec) {
		rc = -ENOENT;		/* no such user, or below its cleared point */
		goto out;
	}
	if ((unsigned long long)endrec > us.index) {
		rc = -EINVAL;
		goto out;
	}
	us.u[at].endrec = (unsigned long long)endrec;
	rc = chlg_users_write(mdtname, &us);
	if (rc != 0)
		goto out;
	lowest = us.u[0].endrec;
	for (i = 1; i < us.n; i++)
		if (us.u[i].endrec < lowest)
			lowest = us.u[i].endrec;
	rc = chlg_purge(mdtname, lowest);
out:
	close(lk);
	return rc;
}

/* ---- fid2path ---- */

/* llapi_fid_parse: blanks and '[' skipped, three strtoull(.., 0) fields split by ':'. */
static int fid_parse(const char *s, struct lu_fid *fid)
{
	unsigned long long v[3];
	char *end;
	int i;

	while (*s == ' ' || *s == '\t' || *s == '[')
		s++;
	for (i = 0; i < 3; i++) {
		errno = 0;
		v[i] = strtoull(s, &end, 0);
		if (end == s || errno != 0 || (i > 0 && v[i] > UINT32_MAX))
			return -EINVAL;
		s = end;
		if (i < 2) {
			if (*s != ':')
				return -EINVAL;
			s++;
		}
	}
	fid->f_seq = v[0];
	fid->f_oid = (uint32_t)v[1];
	fid->f_ver = (uint32_t)v[2];
	return 0;
}

static __thread struct {
	uint64_t ino;
	uint32_t gen;
	int want, seen;		/* the link asked for; links found so far */
	char found[PATH_MAX];
	bool more;		/* a further link exists */
} f2p;

static bool same_object(const char *path, const struct stat *st)
{
	uint32_t gen = 0;
	int fd;

	if ((uint64_t)st->st_ino != f2p.ino)
		return false;
	if (S_ISREG(st->st_mode) || S_ISDIR(st->st_mode)) {
		fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
		if (fd < 0)
			return false;
		gen = inode_generation(fd, st);
		close(fd);
	}
	return gen == f2p.gen;
}

static int f2p_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)type;
	(void)ftw;
	if (!same_object(path, st))
		return 0;
	if (f2p.seen++ == f2p.want) {
		snprintf(f2p.found, sizeof(f2p.found), "%s", path);
		return 0;
	}
	if (f2p.seen > f2p.want + 1) {
		f2p.more = true;
		return 1;	/* stop: the next link is known to exist */
	}
	return 0;
}

int llapi_fid2path(const char *device, const char *fidstr, char *path, int pathlen, long long *recno,
		   int *linkno)
{
	char rpath[PATH_MAX];
	const char *cursor, *rel;
	struct fsent fs;
	struct lu_fid fid;
	struct stat st;
	bool found = false;
	int rc;

	log_call_str(__func__, "device", device, "fid=%s linkno=%d", fidstr ? fidstr : "(null)",
		     linkno ? *linkno : 0);
	(void)recno;		/* passed through and ignored by the MDT */
	if (device == NULL || fidstr == NULL || path == NULL || pathlen <= 0)
		return -EINVAL;
	if (device[0] == '/') {
		rc = path_fs(device, rpath, &fs);
		if (rc != 0)
			return rc == -ENODEV ? -ENODEV : rc;
	} else {
		cursor = getenv("STANDIN_FS");
		while (fs_next(&cursor, &fs))
			if (strcmp(fs.name, device) == 0) {
				found = true;
				break;
			}
		if (!found)
			return -ENODEV;
	}
	rc = fid_parse(fidstr, &fid);
	if (rc != 0)
		return rc;
	if (stat(fs.root, &st) != 0)
		return -errno;
	memset(&f2p, 0, sizeof(f2p));
	f2p.want = linkno ? *linkno : 0;
	if (f2p.want < 0)
		return -EINVAL;
	if (fid.f_seq == FID_SEQ_ROOT && fid.f_oid == 1 && fid.f_ver == 0) {
		rel = "/";
	} else {
		if (standin_fid_ino(&fid, &f2p.ino, &f2p.gen) != 0)
			return -ENOENT;
		if (nftw(fs.root, f2p_visit, 32, FTW_PHYS | FTW_MOUNT) < 0)
			return -errno;
		if (f2p.seen <= f2p.want)
			return -ENOENT;
		rel = f2p.found + strlen(fs.root);
		if (*rel == '/')
			rel++;
		if (*rel == '\0')
			rel = "/";	/* the root gives "/" at HEAD */
	}
	if (strlen(rel) + 1 > (size_t)pathlen)
		return -ERANGE;
	strcpy(path, rel);
	if (linkno != NULL && f2p.more)
		*linkno = f2p.want + 1;
	return 0;
}
