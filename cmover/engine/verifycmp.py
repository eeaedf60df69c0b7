"""What a verify pass compares per entry: one table of checks, one entry per category. Pure but for reads.

A :class:`Side` is one entry as seen on one side (its ``lstat`` and, read lazily and at most once, its
extended attributes, ACLs, symlink target and hole map). A :class:`Check` names a category
(:data:`cmover.core.difference.CATEGORIES`), the entry kinds it applies to, how to read its value from a
side, and what the target should hold given the source's value (``expect``: the identity, or what a
process that cannot set everything could set, or :data:`SKIP` when nothing is to be compared). Adding
a category is one :class:`Check` in :func:`checks_for`.

Presence, type, hard-link groups and data are not in the table: they need both listings, the run's
claims or reading the files (:mod:`cmover.engine.verifypass`).

Reading is strictly read-only: an entry is opened (for its hole map, its data and a Lustre layout) with
``O_NOATIME`` where the process may. A symlink's target is read with ``readlink``, which Linux cannot do
without touching the link's atime on a filesystem mounted ``strictatime`` (there is no ``O_NOATIME``
for it): symlink atimes are therefore never compared, and are the one thing a verify may move.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmover.core import fsio, projid, xattrs
from cmover.core.idmap import NO_MAP, IdMap
from cmover.core.passes import VerifyOptions
from cmover.core.privileges import ALL, Privileges
from cmover.core.record import Kind
from cmover.lustre.base import FsApi

#: ``expect`` returns it when the category is not compared for this entry.
SKIP: Any = object()

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_ACL_PREFIX = "system.posix_acl_"


class Side:
    """One entry on one side: ``name`` in directory ``dir_fd`` (or, for a directory compared from its own
    descriptor, ``fd`` and no name), with its ``lstat`` ``st``. Not thread-safe; :meth:`close` when done."""

    __slots__ = ("dir_fd", "name", "st", "fmt", "can", "_fd", "_own_fd", "_xattrs")

    def __init__(self, dir_fd: int, name: str | None, st: os.stat_result, can: Privileges = ALL,
                 fd: int | None = None) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.st = st
        self.fmt = stat.S_IFMT(st.st_mode)  # the file type, as an int (an Enum costs a call per hash)
        self.can = can
        self._fd = fd
        self._own_fd = False
        self._xattrs: dict[str, bytes] | None = None

    def fd(self) -> int:
        """A read-only descriptor of a regular file or directory (opened once, ``O_NOATIME`` where allowed)."""
        if self._fd is None:
            assert self.name is not None
            self._fd = fsio.open_noatime(self.name, _READ_FLAGS, dir_fd=self.dir_fd)
            self._own_fd = True
        return self._fd

    def close(self) -> None:
        if self._own_fd and self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._own_fd = False

    def all_xattrs(self) -> dict[str, bytes]:
        """The copyable extended attributes, ACLs included (read once)."""
        if self._xattrs is None:
            if self._fd is not None:  # open already: through the descriptor, no path lookup
                self._xattrs = xattrs.read_all(self._fd, self.can)
            else:
                assert self.name is not None  # a directory compared from its own descriptor has one
                self._xattrs = xattrs.read_all(xattrs.at(self.dir_fd, self.name), self.can)
        return self._xattrs

    def link(self) -> bytes:
        assert self.name is not None
        return os.readlink(os.fsencode(self.name), dir_fd=self.dir_fd)

    def has_holes(self) -> bool:
        """Whether the file has a hole before its end (``SEEK_HOLE`` from 0 stops short of the size)."""
        size = self.st.st_size
        if size == 0:
            return False
        try:
            return os.lseek(self.fd(), 0, os.SEEK_HOLE) < size
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENXIO, errno.EOPNOTSUPP):
                return False  # no hole map: a filesystem that cannot say has none to compare
            raise


@dataclass(frozen=True, slots=True)
class Check:
    """One category compared on the entries of ``kinds``: ``read(side)`` on each side, the source's value
    passed through ``expect(value, source_side)`` (:data:`SKIP`: not compared), shown with ``show``."""

    category: str
    kinds: frozenset[Kind]
    read: Callable[[Side], Any]
    expect: Callable[[Any, Side], Any] = field(default=lambda v, s: v)
    show: Callable[[Any], str] = str
    #: For a category only the two sides together can tell: ``(source, target)`` shown, or None when equal
    #: (``read``, ``expect`` and ``show`` are then unused).
    pair: Callable[[Side, Side], tuple[str, str] | None] | None = None


_ALL = frozenset(Kind)
_NOT_LINK = _ALL - {Kind.LNK}
_TIMED = _ALL - {Kind.DIR}
_DEVICES = frozenset({Kind.CHR, Kind.BLK})
_FMT = {stat.S_IFREG: Kind.REG, stat.S_IFDIR: Kind.DIR, stat.S_IFLNK: Kind.LNK, stat.S_IFIFO: Kind.FIFO,
        stat.S_IFCHR: Kind.CHR, stat.S_IFBLK: Kind.BLK, stat.S_IFSOCK: Kind.SOCK}


#: The categories :meth:`Table.same_file` knows how to prove equal for a regular file: a table whose regular-file
#: checks are all among them may take that shortcut.
_FAST = frozenset({"size", "mode", "uid", "gid", "mtime", "atime", "xattr", "acl", "holes"})


class Table:
    """The checks of a pass, and for each file type (``S_IFMT``) those that apply, in order.

    ``fast``: regular files may first go through :meth:`same_file` (the process may set everything, no
    identity maps, and every check of a regular file is one it covers).
    """

    __slots__ = ("checks", "by_fmt", "fast", "atime")

    def __init__(self, checks: tuple[Check, ...], exact: bool = False) -> None:
        self.checks = checks
        self.by_fmt = {fmt: tuple(c for c in checks if kind in c.kinds) for fmt, kind in _FMT.items()}
        reg = {c.category for c in self.by_fmt[stat.S_IFREG]}
        self.fast = exact and reg <= _FAST
        self.atime = "atime" in reg

    def same_file(self, src: Side, dst: Side) -> bool:
        """True when regular files ``src`` and ``dst`` are equal in every check of the table (False: maybe
        not, :func:`compare` tells). Only for a ``fast`` table: the one test most entries of a pass take,
        on ``lstat`` fields and one ``listxattr`` per side."""
        s, d = src.st, dst.st
        return (s.st_mode == d.st_mode and s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns
                and s.st_uid == d.st_uid and s.st_gid == d.st_gid
                and (not self.atime or s.st_atime_ns == d.st_atime_ns)
                and not _sparse_hint(src) and src.all_xattrs() == dst.all_xattrs())

    def categories(self) -> tuple[str, ...]:
        return tuple(c.category for c in self.checks)


def _mode(v: int) -> str:
    return f"{v:04o}"


def _dev(v: int) -> str:
    return f"{os.major(v)}:{os.minor(v)}"


def _attrs(v: dict[str, bytes]) -> str:
    return ", ".join(f"{k}={val!r}" for k, val in sorted(v.items())) or "none"


_ACL_TAGS = {0x01: "user::", 0x02: "user:{}:", 0x04: "group::", 0x08: "group:{}:", 0x10: "mask::", 0x20: "other::"}


def _acl_text(value: bytes) -> str:
    """A ``system.posix_acl_*`` value (version 2: 4-byte header, then tag u16, perm u16, id u32 entries) as
    ``getfacl`` writes it, e.g. ``user::rw-,user:1000:r--,mask::r--``."""
    import struct

    out = []
    for off in range(4, len(value) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, off)
        who = _ACL_TAGS.get(tag, f"tag{tag}:{{}}:").format(ident)
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        out.append(f"{who}{bits}")
    return ",".join(out)


def _acls(v: dict[str, bytes]) -> str:
    return "; ".join(f"{k[len(_ACL_PREFIX):]} {_acl_text(val)}" for k, val in sorted(v.items())) or "none"


def _holes_show(v: bool) -> str:
    return "sparse" if v else "fully allocated"


def checks_for(opts: VerifyOptions, can: Privileges = ALL, fs: FsApi | None = None,
               idmap: IdMap = NO_MAP, file_projects: bool = False) -> Table:
    """The checks of a verify pass with options ``opts``, for a process that may set ``can`` (what it could
    not have set is not compared, as in :func:`cmover.engine.compare.decide_copy`) over filesystems ``fs``,
    with the identity maps ``idmap`` (a mapped owner, group or ACL id is identical).

    Project ids are compared as the copy pass copies them (:func:`cmover.core.projid.decide`): on every
    directory, and on the regular files of a directory whose source has a project (``file_projects``;
    it costs an open and an ioctl per file on each side)."""
    timed = _ALL if not opts.skip_dir_times else _TIMED
    uid, gid = idmap.uid, idmap.gid
    checks = [
        Check("size", frozenset({Kind.REG}), lambda s: s.st.st_size),
        Check("mode", _NOT_LINK, lambda s: stat.S_IMODE(s.st.st_mode),
              expect=lambda v, s: can.perm(v, uid(s.st.st_uid), gid(s.st.st_gid)), show=_mode),
        Check("uid", _ALL, lambda s: s.st.st_uid, expect=lambda v, s: _kept(can.owner(uid(v), gid(s.st.st_gid))[0])),
        Check("gid", _ALL, lambda s: s.st.st_gid, expect=lambda v, s: _kept(can.owner(uid(s.st.st_uid), gid(v))[1])),
        Check("mtime", timed, lambda s: s.st.st_mtime_ns),
    ]
    if opts.atime:
        checks.append(Check("atime", timed - {Kind.LNK}, lambda s: s.st.st_atime_ns))
    checks += [
        Check("xattr", _ALL, lambda s: {k: v for k, v in s.all_xattrs().items() if not k.startswith(_ACL_PREFIX)},
              show=_attrs),
        Check("acl", _NOT_LINK, lambda s: {k: v for k, v in s.all_xattrs().items() if k.startswith(_ACL_PREFIX)},
              expect=lambda v, s: idmap.xattrs(v), show=_acls),
        Check("symlink", frozenset({Kind.LNK}), Side.link, show=lambda v: repr(v)[1:]),
        Check("rdev", _DEVICES, lambda s: s.st.st_rdev, show=_dev),
        # A sparse source must not be fully allocated on the target; how much each side allocates is not
        # compared (block sizes differ between filesystems, XFS preallocates speculatively).
        Check("holes", frozenset({Kind.REG}), lambda s: _sparse_hint(s) and s.has_holes(),
              expect=lambda v, s: True if v else SKIP, show=_holes_show),
        Check("project", frozenset({Kind.DIR, Kind.REG}) if file_projects else frozenset({Kind.DIR}), _none,
              pair=_project),
    ]
    if fs is not None and fs.compares_layouts:
        # Under the copy's layout policy: what a new copy would be given (cmover.lustre).
        checks.append(Check("layout", frozenset({Kind.REG}), _none, pair=lambda s, d: _layout(fs, s, d)))
    return Table(tuple(checks), exact=can.everything and not idmap)


def _none(side: Side) -> None:
    return None


def _project_show(p: projid.Project | None) -> str:
    if p is None:
        return "not supported"
    return f"{p.id}" + (" inherited" if p.inherit else "")


def _project(src: Side, dst: Side) -> tuple[str, str] | None:
    s = projid.read(src.fd())
    if s is None or not s.present:
        return None  # the source has none: the copy leaves the target's as it is
    d = projid.read(dst.fd())
    return None if projid.decide(s, d) == projid.SAME else (_project_show(s), _project_show(d))


def has_project(fd: int) -> bool:
    """Whether directory ``fd`` has a project (then its files' project ids are compared)."""
    p = projid.read(fd)
    return p is not None and p.present


def _layout(fs: FsApi, src: Side, dst: Side) -> tuple[str, str] | None:
    return ("as the layout policy gives", "another layout") if fs.layout_differs(src.fd(), dst.fd()) else None


def _kept(v: int) -> Any:
    return SKIP if v < 0 else v


def _sparse_hint(side: Side) -> bool:
    """Cheap test first: a file whose allocation covers its size has no hole worth a ``SEEK_HOLE``."""
    return side.st.st_blocks * 512 < side.st.st_size


def compare(src: Side, dst: Side, table: Table) -> list[tuple[str, str, str]]:
    """The categories in which ``dst`` differs from ``src`` (same type), as ``(category, source, target)``
    values shown for the operator, in table order. On every entry of a pass: kept lean."""
    out: list[tuple[str, str, str]] = []
    if table.fast and src.fmt == stat.S_IFREG and table.same_file(src, dst):
        return out
    for check in table.by_fmt[src.fmt]:
        if check.pair is not None:
            shown = check.pair(src, dst)
            if shown is not None:
                out.append((check.category, *shown))
            continue
        want = check.expect(check.read(src), src)
        if want is SKIP:
            continue
        have = check.read(dst)
        if want != have:
            out.append((check.category, check.show(want), check.show(have)))
    return out
