"""Building test trees: :func:`build` from a declarative spec, :func:`random_tree` at random (seeded).

A spec maps paths relative to the root (``str`` or ``bytes``; parents are created as plain 0o755
directories) to what the entry is::

    build(root, {
        "a/one": b"data",                                   # a regular file with this content
        "a/b": Dir(mode=0o750, mtime_ns=T),                 # a directory (a path ending in "/" also is one)
        "big": File(size=5 << 20),                          # random content of that size
        "sparse": File(size=24 << 20, data={8 << 20: b"x"}),  # holes everywhere but at the offsets given
        "attrs": File(b"x", xattrs={"user.k": b"v"}, acl="u:4242:rw-", uid=1001, gid=1002),
        "link": Link("a/one"), "hard": HardLink("a/one"),
        "fifo": Fifo(), "null": Device(1, 3), "sock": Socket(),
    })

Attributes not given are left as created (mode 0o644 / 0o755, owner of the caller, now); ``mtime_ns``
without ``atime_ns`` sets both. Directory attributes are applied last, deepest first, so that creating
their entries does not move their mtime. Everything works on bytes paths, so names that are not UTF-8
survive unchanged.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PathLike = str | bytes | os.PathLike


@dataclass(frozen=True, kw_only=True)
class _Attrs:
    """What any entry may be given (keyword-only); None: left as created."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    atime_ns: int | None = None
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    acl: str = ""  # setfacl -m syntax ("u:4242:rw-,g:4343:r--")


@dataclass(frozen=True)
class File(_Attrs):
    """A regular file: ``content``, or ``size`` random bytes (the same for the same ``seed`` when one is
    given), or (with ``data``) a sparse file of ``size`` bytes holding only the ``{offset: bytes}`` pieces
    of ``data``."""

    content: bytes = b""
    size: int | None = field(default=None, kw_only=True)
    data: Mapping[int, bytes] | None = field(default=None, kw_only=True)
    seed: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Dir(_Attrs):
    """A directory; ``default_acl`` (setfacl -d -m syntax) is inherited by what is created in it later."""

    default_acl: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class Link(_Attrs):
    """A symbolic link to ``target`` (never followed; ``mode`` does not apply)."""

    target: str | bytes


@dataclass(frozen=True)
class HardLink:
    """Another name of the file at ``to`` (relative to the root; listed earlier in the spec)."""

    to: str | bytes


@dataclass(frozen=True)
class Fifo(_Attrs):
    """A named pipe."""


@dataclass(frozen=True)
class Device(_Attrs):
    """A character (``block=False``) or block device node ``major:minor`` (needs root)."""

    major: int = 1
    minor: int = 3
    block: bool = False


@dataclass(frozen=True)
class Socket(_Attrs):
    """A bound, then closed, Unix socket (cmover cannot copy one: it is skipped and counted)."""


Spec = Mapping["str | bytes", "bytes | File | Dir | Link | HardLink | Fifo | Device | Socket"]


def _b(p: str | bytes) -> bytes:
    return os.fsencode(p)


def build(root: PathLike, spec: Spec) -> bytes:
    """Create every entry of ``spec`` under ``root`` (created when missing; see the module doc); return root
    as bytes. Entries are made in the spec's order; an existing directory is reused (given the attributes
    of its Dir), an existing regular file rewritten by a File; any other existing entry is an error."""
    root_b = _b(root)
    os.makedirs(root_b, exist_ok=True)
    dirs: list[tuple[bytes, Dir]] = []
    for rel, what in spec.items():
        rel_b = _b(rel)
        if rel_b.endswith(b"/"):
            rel_b, what = rel_b.rstrip(b"/"), (what if isinstance(what, Dir) else Dir())
        path = os.path.join(root_b, rel_b) if rel_b else root_b  # b"": the root itself (a Dir)
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        if isinstance(what, bytes):
            what = File(what)
        if isinstance(what, File):
            _make_file(path, what)
        elif isinstance(what, Dir):
            if not os.path.isdir(path):
                os.mkdir(path, 0o755)
            dirs.append((path, what))
            continue
        elif isinstance(what, Link):
            os.symlink(_b(what.target), path)
        elif isinstance(what, HardLink):
            os.link(os.path.join(root_b, _b(what.to)), path, follow_symlinks=False)
            continue
        elif isinstance(what, Fifo):
            os.mkfifo(path, 0o644)
        elif isinstance(what, Device):
            kind = stat.S_IFBLK if what.block else stat.S_IFCHR
            os.mknod(path, 0o600 | kind, os.makedev(what.major, what.minor))
        elif isinstance(what, Socket):
            _bind(path)
        else:
            raise TypeError(f"{rel!r}: not an entry spec: {what!r}")
        _apply(path, what, link=isinstance(what, Link))
    for path, d in sorted(dirs, key=lambda pd: -pd[0].count(b"/")):
        if d.default_acl:
            subprocess.run(["setfacl", "-d", "-m", d.default_acl, os.fsdecode(path)], check=True)
        _apply(path, d, link=False)
    return root_b


def _bind(path: bytes) -> None:
    """Bind a Unix socket at ``path`` through its directory's descriptor (a tmp path can exceed sun_path)."""
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(b"/proc/self/fd/%d/%s" % (dfd, os.path.basename(path)))
    finally:
        os.close(dfd)


def _make_file(path: bytes, f: File) -> None:
    with open(path, "wb") as fh:  # an existing file is rewritten (a test changing its source)
        if f.data is not None:
            for offset, piece in sorted(f.data.items()):
                fh.seek(offset)
                fh.write(piece)
            fh.truncate(f.size if f.size is not None else fh.tell())
        elif f.size is not None:
            rng = random.Random(f.seed) if f.seed is not None else None
            left = f.size
            while left:  # in pieces: a file of hundreds of MiB never sits in memory
                n = min(4 << 20, left)
                fh.write(rng.randbytes(n) if rng else os.urandom(n))
                left -= n
        else:
            fh.write(f.content)


def _apply(path: bytes, a: _Attrs, *, link: bool) -> None:
    """Owner first (chown clears set-id bits), the ACL before the mode (so that the mode is the one given:
    its group bits become the ACL's mask), then attributes and the times last."""
    if a.uid is not None or a.gid is not None:
        os.chown(path, -1 if a.uid is None else a.uid, -1 if a.gid is None else a.gid, follow_symlinks=False)
    if a.acl:
        subprocess.run(["setfacl", "-m", a.acl, os.fsdecode(path)], check=True)
    if a.mode is not None and not link:
        os.chmod(path, a.mode)
    for name, value in a.xattrs.items():
        os.setxattr(path, name, value, follow_symlinks=False)
    if a.mtime_ns is not None or a.atime_ns is not None:
        m = a.mtime_ns if a.mtime_ns is not None else os.lstat(path).st_mtime_ns
        os.utime(path, ns=(a.atime_ns if a.atime_ns is not None else m, m), follow_symlinks=False)


def put(root: PathLike, *rels: str | bytes, data: bytes = b"x") -> None:
    """Shorthand: regular files ``rels`` under ``root``, each holding ``data``."""
    build(root, {rel: data for rel in rels})


# -- random trees ------------------------------------------------------------------------------------------


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


def random_tree(
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



def add_fidelity(root: PathLike, *, seed: int = 7, groups: int = 5) -> dict[str, int]:
    """Add to the tree under ``root`` one of everything an exact copy must keep (design §5).

    Creates under ``root/fidelity``: hard-link groups within one directory and across directories,
    a sparse file (a hole at the start and at the end), files with ``user.*`` and ``trusted.*``
    attributes, an access ACL on a file and a default ACL on a directory (``setfacl``), a FIFO, a
    socket, a character device (as root), setuid/setgid/sticky modes, odd owners (as root) and nanosecond times.
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
    # A socket node (no process listens: copies of it are made with mknod, as rsync -D does).
    sock = os.path.join(dirs[4], b"sock")
    os.mknod(sock, 0o640 | stat.S_IFSOCK)
    if os.geteuid() == 0:
        os.chown(sock, 1003, 1004)
        os.setxattr(sock, b"trusted.cmover", b"sock")  # user.* attributes are for files and directories only
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


def mutate(root: PathLike) -> None:
    """Every everyday kind of change between two passes, made to a :func:`random_tree` tree (of at least three
    top-level directories and some 60 files below them): files added (in a new non-UTF-8 directory tree
    too), hard links added, files changed (data, mode only, owner only, times only), files and a directory
    tree removed, files renamed in place and moved, a directory moved and one renamed, a file turned into a
    directory and a directory into a file, a symlink retargeted and one added, and a directory whose times
    alone change. Deterministic: the same tree gets the same changes."""
    s = os.fsencode(root)
    t_ns = REFERENCE_NS - 123_456_789_123
    recs = {}
    for dirpath, dirnames, filenames in os.walk(s):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            recs[os.path.relpath(p, s)] = os.lstat(p).st_mode
    dirs = sorted(rel for rel, m in recs.items() if stat.S_ISDIR(m) and rel.startswith(b"d0"))
    top = sorted(rel for rel in dirs if b"/" not in rel)
    assert len(top) >= 3, top
    # Directories removed, moved or turned into a file below: distinct, none inside another one.
    nested = [rel for rel in dirs if rel.count(b"/") == 1 and not rel.startswith(top[-1] + b"/")][:3]
    assert len(nested) == 3, dirs
    touched = [top[-1], *nested]
    files = sorted(rel for rel, m in recs.items() if stat.S_ISREG(m) and b"/" in rel
                   and not any(rel.startswith(t + b"/") for t in touched))
    links = sorted(rel for rel, m in recs.items() if stat.S_ISLNK(m)
                   and not any(rel.startswith(t + b"/") for t in touched))
    assert len(files) > 51 and links, (len(files), links)
    spec: dict[bytes, Any] = {}
    # Added: files in existing directories, a new directory tree with a non-UTF-8 name, hard links.
    for i, rel in enumerate(dirs[:10]):
        spec[rel + b"/added-%d" % i] = File(os.urandom(100 * i), mtime_ns=t_ns + i)
    new = top[0] + b"/new-\xff\xe9 tree"
    for i in range(30):
        spec[new + (b"/inner/n%02d" if i % 2 else b"/n%02d") % i] = File(os.urandom(i * 11), mtime_ns=t_ns - i)
    spec[new + b"/inner/n00-hardlink"] = HardLink(new + b"/n00")
    spec[top[1] + b"/hardlink-to-old-file"] = HardLink(files[0])
    build(s, spec)
    # Changed: data (with the mtime writing gives it), mode only, owner only, times only.
    for rel in files[1:11]:
        with open(s + b"/" + rel, "ab") as f:
            f.write(b"appended")
    os.chmod(s + b"/" + files[11], 0o600)
    os.chown(s + b"/" + files[12], 1003, 1004)
    os.utime(s + b"/" + files[13], ns=(t_ns, t_ns))
    # Removed: files and a whole directory tree.
    for rel in files[20:40]:
        os.unlink(s + b"/" + rel)
    shutil.rmtree(s + b"/" + nested[0])
    # Renamed: files in place and into another directory.
    for rel in files[40:45]:
        os.rename(s + b"/" + rel, s + b"/" + rel + b".renamed")
    for i, rel in enumerate(files[45:50]):
        os.rename(s + b"/" + rel, s + b"/" + top[2] + b"/moved-file-%d" % i)
    # Moved directories: a subtree into another parent, a top-level directory renamed.
    into = next(t for t in top[:-1] if not nested[1].startswith(t + b"/"))
    os.rename(s + b"/" + nested[1], s + b"/" + into + b"/moved-dir \xe9")
    os.rename(s + b"/" + top[-1], s + b"/" + top[-1] + b"-renamed")
    # Type changes: a file becomes a directory, a directory (with content) becomes a file.
    os.unlink(s + b"/" + files[50])
    shutil.rmtree(s + b"/" + nested[2])
    build(s, {files[50] + b"/now-a-dir": File(b"inside", mtime_ns=t_ns), nested[2]: File(b"was a directory")})
    # Symlinks: one retargeted (same name, new target), one added.
    target = b"retargeted/" + os.readlink(s + b"/" + links[-1])
    os.unlink(s + b"/" + links[0])
    os.symlink(target, s + b"/" + links[0])
    os.symlink(b"/etc/hostname", s + b"/" + top[1] + b"/new-link")
    # A directory whose times alone change: only the dirtime pass brings them over.
    os.utime(s + b"/" + top[1], ns=(1_200_000_000_000_000_001, 1_300_000_000_000_000_003))
