"""A tree for verify tests with one entry per difference category, and the injection of every difference at once.

:func:`build` makes, under ``root``, one directory per category holding the entry that category's difference
is made on (so that all of them can be injected together and each is still found exactly once, on its own
path), plus a hard-link group across two directories and a sparse file. :func:`copy` copies it with
rsync -aHAXS and gives the target the source's atimes and mtimes (rsync keeps no directory atimes).
:func:`inject_all` makes one difference of each category on the target, keeping every other field (times of
parent directories included), and returns what a verify must report: ``{(path, category)}``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

T = 1_600_000_000_123_456_789


def build(root: str) -> None:
    def mk(rel: str, data: bytes = b"data\n") -> str:
        path = f"{root}/{rel}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path

    for c in ("missing", "size", "mode", "uid", "gid", "mtime", "atime", "content"):
        mk(f"{c}/f", f"the {c} file\n".encode() * 50)
    os.makedirs(f"{root}/extra")
    os.makedirs(f"{root}/type")
    os.mkfifo(f"{root}/type/node")
    os.setxattr(mk("xattr/f"), "user.tag", b"v1")
    subprocess.run(["setfacl", "-m", "u:12345:r", mk("acl/f")], check=True)
    os.makedirs(f"{root}/symlink")
    os.symlink("target-a", f"{root}/symlink/l")
    os.makedirs(f"{root}/rdev")
    os.mknod(f"{root}/rdev/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.makedirs(f"{root}/hardlink/y")
    os.link(mk("hardlink/x/a", b"linked\n"), f"{root}/hardlink/y/b")  # a group across directories
    with open(mk("holes/sparse", b""), "r+b") as f:
        f.truncate(1 << 20)
        f.seek(400_000)
        f.write(b"island")
    mk("big/f", os.urandom(3 << 20))  # three chunks of 1 MiB
    os.makedirs(f"{root}/dirtime/sub")
    os.chown(f"{root}/uid/f", 1234, 5678)
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for n in files + dirs:
            os.utime(os.path.join(dirpath, n), ns=(T, T), follow_symlinks=False)
    os.utime(root, ns=(T, T))


def copy(src: str, dst: str) -> None:
    subprocess.run(["rsync", "-aHAXS", "--delete", src + "/", dst], check=True)
    for dirpath, dirs, files in os.walk(src, topdown=False):
        for n in [*files, *dirs, ""]:
            s = os.path.join(dirpath, n) if n else dirpath
            st = os.lstat(s)
            os.utime(dst + s[len(src):], ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def keep_times(path: str):
    """Restore the atime and mtime of ``path`` (not followed) afterwards: ``back = keep_times(p); ...; back()``."""
    st = os.lstat(path)
    return lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _in(d: str, rel: str, change, times: bool) -> None:
    """``change(path)`` on ``d/rel``, keeping its directory's times and (unless ``times``: the change is
    of times) its own."""
    path = f"{d}/{rel}"
    parent = keep_times(os.path.dirname(path))
    mine = keep_times(path) if os.path.lexists(path) and not times else None
    change(path)
    if mine is not None and os.path.lexists(path):
        mine()
    parent()


def _rewrite(path: str, data: bytes, at: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def _replace(path: str, make) -> None:
    st = os.lstat(path)
    os.unlink(path)
    make(path, st)
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _file(path: str, st: os.stat_result) -> None:
    with open(path, "wb"):
        pass


def _split(path: str) -> None:
    """Give this name a copy of its own (read with O_NOATIME: the group's other names keep their atime)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    shutil.copystat(path, path + ".tmp")
    st = os.stat(path)
    os.chown(path + ".tmp", st.st_uid, st.st_gid)
    os.rename(path + ".tmp", path)


def _fill(path: str) -> None:
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _shift(path: str, atime: int, mtime: int) -> None:
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns + atime, st.st_mtime_ns + mtime), follow_symlinks=False)


#: category -> (entry, change): each keeps every other field of the entry and of its directory.
INJECT = {
    "missing": ("missing/f", os.unlink),
    "extra": ("extra/new", lambda p: open(p, "wb").close()),
    "type": ("type/node", lambda p: _replace(p, _file)),
    "size": ("size/f", lambda p: os.truncate(p, 3)),
    "mode": ("mode/f", lambda p: os.chmod(p, 0o600)),
    "uid": ("uid/f", lambda p: os.chown(p, 4321, -1)),
    "gid": ("gid/f", lambda p: os.chown(p, -1, 8765)),
    "mtime": ("mtime/f", lambda p: _shift(p, 0, 1)),
    "atime": ("atime/f", lambda p: _shift(p, 1, 0)),
    "xattr": ("xattr/f", lambda p: os.setxattr(p, "user.tag", b"v2")),
    "acl": ("acl/f", lambda p: subprocess.run(["setfacl", "-n", "-m", "u:12345:rw", p], check=True)),
    "symlink": ("symlink/l", lambda p: _replace(p, lambda q, st: os.symlink("target-b", q))),
    "rdev": ("rdev/null", lambda p: _replace(p, lambda q, st: os.mknod(q, st.st_mode, os.makedev(1, 5)))),
    "hardlink": ("hardlink/y/b", _split),
    "holes": ("holes/sparse", _fill),
    "content": ("content/f", lambda p: _rewrite(p, b"THE")),
    "mtime ": ("dirtime/sub", lambda p: _shift(p, 0, 7)),  # a directory's mtime
}


def inject_all(dst: str) -> set[tuple[bytes, str]]:
    """Make every difference of :data:`INJECT` on target root ``dst``; return ``{(path, category)}``."""
    for category, (rel, change) in INJECT.items():
        _in(dst, rel, change, times=category.strip() in ("mtime", "atime"))
    return {(rel.encode(), category.strip()) for category, (rel, _) in INJECT.items()}


def times(root: str) -> dict[str, tuple[int, int, int]]:
    """``{path: (atime, mtime, ctime)}`` of every entry of ``root`` and of the root itself, read without moving
    any (directories listed through O_NOATIME descriptors); a symlink's atime is left out (no reader can read
    a link without moving it on a strictatime mount)."""
    out = {}
    pending = [root]
    while pending:
        d = pending.pop()
        st = os.lstat(d)
        out[d] = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
        try:
            for e in os.scandir(fd):
                p = os.path.join(d, e.name)
                if e.is_dir(follow_symlinks=False):
                    pending.append(p)
                    continue
                st = os.lstat(p)
                out[p] = (0 if stat.S_ISLNK(st.st_mode) else st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
        finally:
            os.close(fd)
    return out
