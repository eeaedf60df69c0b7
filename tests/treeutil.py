"""Build deterministic test trees, snapshot them and compare two trees.

Used by the integration tests and by the benchmark (bench/). Everything works on bytes paths so that names
which are not valid UTF-8 survive unchanged.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PathLike = str | bytes | os.PathLike

# Fixed reference instant (2025-01-01T00:00:00Z): timestamps are "within the year before" this rather than
# before now, so that the same seed gives the same tree whatever day it is built on.
REFERENCE_NS = 1_735_689_600 * 10**9
_DAY_NS = 86_400 * 10**9
_YEAR_NS = 365 * _DAY_NS

MAX_DEPTH = 4
_POOL_SIZE = 1 << 20
_FILE_MODES = (0o644, 0o600, 0o755, 0o640)
_FILE_MODE_WEIGHTS = (60, 15, 15, 10)
_DIR_MODES = (0o755, 0o750, 0o700, 0o775)
_DIR_MODE_WEIGHTS = (70, 15, 5, 10)
_EXTENSIONS = (b"", b".dat", b".txt", b".bin", b".log")
_OWNER_IDS = (1000, 1005)
_OWNED_FRACTION = 0.3
_EMPTY_FRACTION = 0.05
# Absolute symlink targets outside the tree; one of them never exists.
_OUTSIDE_TARGETS = (b"/etc/passwd", b"/usr", b"/nonexistent/cmover-outside-target")

# kind -> (file name, directory name, symlink name); every name is created in the tree root when weird_names.
WEIRD_NAMES: dict[str, tuple[bytes, bytes, bytes]] = {
    "non-utf8": (b"caf\xe9", b"dir-\xff\xfe", b"link-caf\xe9"),
    "newline": (b"new\nline", b"dir\nnl", b"link\nnl"),
    "trailing-space": (b"trailing ", b"dir ", b"link "),
    "max-length": (b"F" * 255, b"D" * 255, b"L" * 255),
    "leading-dash": (b"-rf", b"--dir", b"-link"),
}

_O_NOATIME = getattr(os, "O_NOATIME", 0)


def _times(rng: random.Random) -> tuple[int, int]:
    """Return (atime_ns, mtime_ns) in the year before REFERENCE_NS, both with non-zero nanoseconds."""
    mtime = REFERENCE_NS - rng.randrange(_YEAR_NS)
    atime = mtime + rng.randrange(30 * _DAY_NS)
    # A whole second would hide a tool that drops the sub-second part.
    if mtime % 10**9 == 0:
        mtime += 1
    if atime % 10**9 == 0:
        atime += 1
    return atime, mtime


def _owner(rng: random.Random) -> tuple[int, int] | None:
    # Always draw all three numbers so that the random stream (and so the rest of the tree) does not depend
    # on whether ownership is applied.
    pick = rng.random()
    uid = rng.randint(*_OWNER_IDS)
    gid = rng.randint(*_OWNER_IDS)
    return (uid, gid) if pick < _OWNED_FRACTION else None


def _write_all(fd: int, pool: memoryview, offset: int, size: int) -> None:
    """Write size bytes taken cyclically from pool starting at offset."""
    while size:
        written = os.write(fd, pool[offset : offset + size])
        size -= written
        offset = (offset + written) % len(pool)


def make_tree(
    root: PathLike,
    *,
    seed: int,
    n_files: int,
    n_dirs: int,
    weird_names: bool = True,
    max_size: int = 16384,
    owners: bool = True,
) -> dict[str, int]:
    """Create a deterministic tree under root and return its counts.

    root is created if missing (its own attributes are not touched) and should be empty. For a given seed
    and arguments the tree is identical on every run: names, contents, modes, owners and timestamps.

    Contents: n_dirs directories nested at most MAX_DEPTH deep with several at the first level; n_files
    regular files of 0..max_size random bytes (a few empty) spread over the root and those directories;
    about n_files/100 (at least 4) symlinks: relative to a file, relative to a directory, absolute to a path
    outside the tree, and dangling. File modes are 0o644/0o600/0o755/0o640, the first file is 0o4755; dir
    modes are 0o755/0o750/0o700/0o775, the first directory is 0o2775. With weird_names, for each kind in
    WEIRD_NAMES a file, a directory (holding a file with the same name as that file) and a symlink to the
    file are added in the root, on top of n_files/n_dirs. With owners and when running as root, about 30%
    of entries get a uid and gid in 1000..1005 (lchown for symlinks). Every entry but the root gets an mtime
    in the year before REFERENCE_NS and an atime up to 30 days later, both with non-zero nanoseconds.

    Returns {'files', 'dirs', 'symlinks', 'entries'}: what was actually created, root excluded.
    """
    root_b = os.fsencode(root)
    os.makedirs(root_b, exist_ok=True)
    rng = random.Random(seed)
    apply_owner = owners and os.geteuid() == 0
    pool = memoryview(rng.randbytes(_POOL_SIZE))

    # Directory attributes are applied at the very end, deepest first: creating entries inside a
    # directory changes its mtime, and a setgid bit set early would be inherited by the subdirectories.
    dir_attrs: list[tuple[bytes, int, tuple[int, int] | None, tuple[int, int]]] = []
    counts = {"files": 0, "dirs": 0, "symlinks": 0}

    def add_dir(rel: bytes, mode: int) -> None:
        os.mkdir(root_b + b"/" + rel, 0o700)
        dir_attrs.append((rel, mode, _owner(rng), _times(rng)))
        counts["dirs"] += 1

    create_flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

    def add_file(rel: bytes, mode: int, size: int) -> None:
        offset = rng.randrange(_POOL_SIZE)
        owner = _owner(rng)
        atime, mtime = _times(rng)
        fd = os.open(root_b + b"/" + rel, create_flags, 0o600)
        try:
            _write_all(fd, pool, offset, size)
            if owner and apply_owner:
                os.fchown(fd, *owner)
            # After fchown, which clears set-id bits on regular files.
            os.fchmod(fd, mode)
            # Last, since writing updates mtime.
            os.utime(fd, ns=(atime, mtime))
        finally:
            os.close(fd)
        counts["files"] += 1

    def add_symlink(rel: bytes, target: bytes) -> None:
        path = root_b + b"/" + rel
        owner = _owner(rng)
        atime, mtime = _times(rng)
        os.symlink(target, path)
        if owner and apply_owner:
            os.chown(path, *owner, follow_symlinks=False)
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        counts["symlinks"] += 1

    def file_size() -> int:
        empty = rng.random() < _EMPTY_FRACTION
        size = rng.randint(0, max_size)
        return 0 if empty else size

    # Directories: (relative path, depth); the root is b"" and only ever holds files directly.
    dirs: list[tuple[bytes, int]] = [(b"", 0)]
    parents: list[tuple[bytes, int]] = []  # directories that may still receive subdirectories
    n_top = min(n_dirs, max(4, round(n_dirs**0.5 / 2)))
    for i in range(n_dirs):
        parent, depth = (b"", 0) if i < n_top else rng.choice(parents)
        name = b"d%04d" % i
        rel = parent + b"/" + name if parent else name
        mode = 0o2775 if i == 0 else rng.choices(_DIR_MODES, _DIR_MODE_WEIGHTS)[0]
        add_dir(rel, mode)
        dirs.append((rel, depth + 1))
        if depth + 1 < MAX_DEPTH:
            parents.append((rel, depth + 1))

    files: list[bytes] = []
    for i in range(n_files):
        parent = dirs[rng.randrange(len(dirs))][0]
        name = b"f%06d%s" % (i, rng.choice(_EXTENSIONS))
        rel = parent + b"/" + name if parent else name
        mode = 0o4755 if i == 0 else rng.choices(_FILE_MODES, _FILE_MODE_WEIGHTS)[0]
        add_file(rel, mode, file_size())
        files.append(rel)

    if weird_names:
        for file_name, dir_name, link_name in WEIRD_NAMES.values():
            add_file(file_name, rng.choices(_FILE_MODES, _FILE_MODE_WEIGHTS)[0], file_size())
            add_dir(dir_name, rng.choices(_DIR_MODES, _DIR_MODE_WEIGHTS)[0])
            add_file(dir_name + b"/" + file_name, 0o644, file_size())
            # Relative target that itself carries the odd bytes.
            add_symlink(link_name, file_name)

    n_links = max(4, n_files // 100)
    for i in range(n_links):
        parent = dirs[rng.randrange(len(dirs))][0]
        start = parent or b"."
        kind = i % 4
        if kind == 0 and files:
            target = os.path.relpath(files[rng.randrange(len(files))], start)
        elif kind == 1 and len(dirs) > 1:
            target = os.path.relpath(dirs[rng.randrange(1, len(dirs))][0], start)
        elif kind == 2:
            target = _OUTSIDE_TARGETS[rng.randrange(len(_OUTSIDE_TARGETS))]
        else:
            target = b"missing-%05d" % i
        name = b"l%05d" % i
        add_symlink(parent + b"/" + name if parent else name, target)

    for rel, mode, owner, (atime, mtime) in reversed(dir_attrs):
        path = root_b + b"/" + rel
        if owner and apply_owner:
            os.chown(path, *owner)
        os.chmod(path, mode)
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)

    counts["entries"] = counts["files"] + counts["dirs"] + counts["symlinks"]
    return counts


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "chr"
    if stat.S_ISBLK(mode):
        return "blk"
    return "other"


def _digest(path: bytes, st: os.stat_result) -> str:
    """blake2b hex digest of a regular file, read without following a symlink and without touching atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | _O_NOATIME)
    except PermissionError:
        # O_NOATIME is refused on files we neither own nor have CAP_FOWNER over.
        fd = os.open(path, flags)
    h = hashlib.blake2b()
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


ALL_KINDS = frozenset({"file", "dir", "symlink", "fifo", "socket", "chr", "blk", "other"})
NON_DIR_KINDS = ALL_KINDS - {"dir"}


_LUSTRE_XATTRS = {"trusted.lov", "trusted.lma", "trusted.lmv", "trusted.link", "trusted.fid", "trusted.som",
                  "trusted.hsm", "trusted.dmv", "trusted.pfid", "trusted.version"}


def _xattrs(path: bytes, st: os.stat_result) -> dict[str, bytes]:
    """Every extended attribute (POSIX ACLs included) except Lustre-internal ones, not following symlinks."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith("lustre.") or n in _LUSTRE_XATTRS:
            continue
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            pass
    return out


@dataclass(frozen=True)
class Field:
    """One recorded attribute of an entry.

    extract(path, lstat_result) gives the value for entries whose type is in kinds; compare(kind, options)
    says whether compare_trees checks it for that type under the given keyword options; show formats a
    value for a difference report.
    """

    name: str
    kinds: frozenset[str]
    extract: Callable[[bytes, os.stat_result], Any]
    compare: Callable[[str, Mapping[str, bool]], bool] = lambda kind, options: True
    show: Callable[[Any], str] = repr


# The single place that defines what snapshot records and compare_trees checks: add a Field (and, if it
# must be optional, a keyword to compare_trees) to cover another attribute.
FIELDS: tuple[Field, ...] = (
    Field("mode", ALL_KINDS, lambda p, st: st.st_mode, show=lambda v: oct(v)),
    Field("uid", ALL_KINDS, lambda p, st: st.st_uid),
    Field("gid", ALL_KINDS, lambda p, st: st.st_gid),
    Field("size", frozenset({"file"}), lambda p, st: st.st_size),
    Field("rdev", frozenset({"chr", "blk"}), lambda p, st: st.st_rdev),
    Field("target", frozenset({"symlink"}), lambda p, st: os.readlink(p)),
    Field(
        "mtime_ns",
        ALL_KINDS,
        lambda p, st: st.st_mtime_ns,
        # A directory's mtime changes whenever an entry is added in it, so it is only stable once a copy
        # has finished and set it last.
        compare=lambda kind, options: kind != "dir" or options["dir_times"],
    ),
    Field(
        "atime_ns",
        ALL_KINDS,
        lambda p, st: st.st_atime_ns,
        # Listing a directory or reading a symlink (readlink, which has no O_NOATIME) updates its atime, so
        # only the atimes of other entries can survive a copy and be compared.
        compare=lambda kind, options: kind not in ("dir", "symlink") and options["atimes"],
    ),
    Field("xattrs", ALL_KINDS, _xattrs, compare=lambda kind, options: options["xattrs"]),
    # Not compared as such: used for hard-link groups and sparse allocation in diff_snapshots.
    Field("inode", frozenset({"file"}), lambda p, st: (st.st_dev, st.st_ino), compare=lambda k, o: False),
    Field("blocks", frozenset({"file"}), lambda p, st: st.st_blocks, compare=lambda k, o: False),
    # Read last: stat values above come from the lstat taken before the content is read.
    Field("digest", frozenset({"file"}), _digest),
)


def _link_groups(snap: Mapping[bytes, Mapping[str, Any]]) -> dict[bytes, frozenset[bytes]]:
    """For every regular file, the set of names that share its inode."""
    by_inode: dict[Any, set[bytes]] = {}
    for rel, rec in snap.items():
        if rec["type"] == "file":
            by_inode.setdefault(rec["inode"], set()).add(rel)
    return {rel: frozenset(names) for names in by_inode.values() for rel in names}


def snapshot(root: PathLike) -> dict[bytes, dict[str, Any]]:
    """Record every entry under root, root itself excluded, without following symlinks.

    Keys are paths relative to root as bytes (b"a/b"). Each value holds 'type' ('file', 'dir', 'symlink',
    'fifo', 'socket', 'chr', 'blk' or 'other'), 'mode' (full st_mode: type bits and permission bits) and
    every Field in FIELDS that applies to that type: uid, gid, mtime_ns, atime_ns, size and a blake2b
    'digest' for regular files, 'target' (bytes) for symlinks. Timestamps are those seen by lstat before
    anything in the entry is read; file contents are read with O_NOATIME where permitted.
    """
    root_b = os.fsencode(root)
    result: dict[bytes, dict[str, Any]] = {}
    pending: list[tuple[bytes, bytes]] = [(root_b, b"")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as it:
            for entry in it:
                rel = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                kind = _kind(st.st_mode)
                record: dict[str, Any] = {"type": kind}
                for field in FIELDS:
                    if kind in field.kinds:
                        record[field.name] = field.extract(entry.path, st)
                result[rel] = record
                if kind == "dir":
                    pending.append((entry.path, rel + b"/"))
    return result


def diff_snapshots(
    src: Mapping[bytes, Mapping[str, Any]],
    dst: Mapping[bytes, Mapping[str, Any]],
    *,
    dir_times: bool = False,
    atimes: bool = False,
    xattrs: bool = True,
) -> list[str]:
    """Differences between two snapshot() results, as described for compare_trees."""
    options = {"dir_times": dir_times, "atimes": atimes, "xattrs": xattrs}
    problems: list[str] = []
    src_groups, dst_groups = _link_groups(src), _link_groups(dst)
    for rel in sorted(src.keys() | dst.keys()):
        if rel not in dst:
            problems.append(f"{rel!r}: missing on target ({src[rel]['type']})")
            continue
        if rel not in src:
            problems.append(f"{rel!r}: extra on target ({dst[rel]['type']})")
            continue
        a = src[rel]
        b = dst[rel]
        kind = a["type"]
        if kind != b["type"]:
            problems.append(f"{rel!r}: type differs: source={kind} target={b['type']}")
            continue
        for field in FIELDS:
            if kind not in field.kinds or not field.compare(kind, options):
                continue
            va = a.get(field.name)
            vb = b.get(field.name)
            if va != vb:
                problems.append(f"{rel!r}: {field.name} differs: source={field.show(va)} target={field.show(vb)}")
        if kind == "file":
            if src_groups.get(rel) != dst_groups.get(rel):
                problems.append(f"{rel!r}: hard-link group differs: source={sorted(src_groups.get(rel, ()))} "
                                f"target={sorted(dst_groups.get(rel, ()))}")
            # Holes kept: the copy may not allocate much more than the source (64 blocks of slack).
            if b.get("blocks", 0) > a.get("blocks", 0) + 64:
                problems.append(f"{rel!r}: allocation differs (holes not kept): source={a.get('blocks')} "
                                f"target={b.get('blocks')} blocks")
    return problems


def compare_trees(src: PathLike, dst: PathLike, *, dir_times: bool = False, atimes: bool = False,
                  xattrs: bool = True) -> list[str]:
    """Compare the trees under src and dst entry by entry and describe every difference.

    Reports entries missing on the target, extra on the target, a different type, and for entries of the
    same type each differing field of FIELDS (mode, owner, size, content digest, symlink target, mtime,
    xattrs including POSIX ACLs), a regular file whose hard-link group (the names sharing its inode)
    differs, and a file that allocates clearly more blocks than its source (holes not kept).
    Directory mtimes are checked only with dir_times=True; atimes only with atimes=True, and never for
    directories or symlinks. The roots themselves are not compared. Names are shown as repr() of the
    relative bytes path. Returns one line per difference, sorted by path; an empty list means identical.
    """
    return diff_snapshots(snapshot(src), snapshot(dst), dir_times=dir_times, atimes=atimes, xattrs=xattrs)


def add_fidelity(root: PathLike, *, seed: int = 7, groups: int = 5) -> dict[str, int]:
    """Add to the tree under ``root`` one of everything an exact copy must keep (design §5).

    Creates under ``root/fidelity``: hard-link groups within one directory and across directories,
    a sparse file (a hole at the start and at the end), files with ``user.*`` and ``trusted.*``
    attributes, an access ACL on a file and a default ACL on a directory (``setfacl``), a FIFO, a
    character device (as root), setuid/setgid/sticky modes, odd owners (as root) and nanosecond times.
    Returns counts per category.
    """
    rng = random.Random(seed)
    base = os.path.join(os.fsencode(root), b"fidelity")
    dirs = [os.path.join(base, d) for d in (b"links-a", b"links-b", b"links-c", b"attrs", b"special")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    counts = {"link_groups": 0, "links": 0}
    for g in range(groups):
        first = os.path.join(dirs[0], b"g%d" % g)
        with open(first, "wb") as fh:
            fh.write(rng.randbytes(rng.randint(0, 5000)))
        os.link(first, os.path.join(dirs[0], b"g%d-same-dir" % g))
        os.link(first, os.path.join(dirs[1], b"g%d-other-dir" % g))
        os.link(first, os.path.join(dirs[2], b"g%d-third" % g))
        counts["link_groups"] += 1
        counts["links"] += 4
    sparse = os.path.join(dirs[3], b"sparse")
    with open(sparse, "wb") as fh:
        fh.seek(8 << 20)
        fh.write(b"middle")
        fh.truncate(24 << 20)
    for i in range(3):
        p = os.path.join(dirs[3], b"x%d" % i)
        with open(p, "wb") as fh:
            fh.write(b"attrs")
        os.setxattr(p, b"user.cmover.k%d" % i, rng.randbytes(8))
        if os.geteuid() == 0:
            os.setxattr(p, b"trusted.cmover", b"t%d" % i)
    subprocess.run(["setfacl", "-m", "u:4242:rw-,g:4343:r--", os.fsdecode(os.path.join(dirs[3], b"x0"))],
                   check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:4242:rwx", os.fsdecode(dirs[3])], check=True)
    os.mkfifo(os.path.join(dirs[4], b"fifo"), 0o640)
    if os.geteuid() == 0:
        os.mknod(os.path.join(dirs[4], b"null-like"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    modes = {b"suid": 0o4755, b"sgid": 0o2750, b"sticky-dir": 0o1777}
    for name, mode in modes.items():
        p = os.path.join(dirs[4], name)
        if name.endswith(b"dir"):
            os.mkdir(p)
        else:
            with open(p, "wb") as fh:
                fh.write(b"#!/bin/sh\n")
        if os.geteuid() == 0:
            os.chown(p, 1001, 1002)  # chown first: it clears set-id bits
        os.chmod(p, mode)
    for d, _, names in os.walk(base):
        for n in names:
            p = os.path.join(d, n)
            a, m = _times(rng)
            os.utime(p, ns=(a, m), follow_symlinks=False)
    counts["entries"] = sum(len(files) + len(ds) for _, ds, files in os.walk(base)) + 1
    return counts
