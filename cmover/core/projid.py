"""Project ids (what ``lsattr -p`` / ``chattr -p`` and ``xfs_io -c chproj`` show and set; project quotas on
XFS, ext4 and Lustre depend on them): read and written with ``FS_IOC_FSGETXATTR`` / ``FS_IOC_FSSETXATTR``
(``struct fsxattr``) on an open file or directory. Lustre clients answer the same ioctls.

A directory's project comes with its *inherit* flag (``FS_XFLAG_PROJINHERIT``, ``chattr +P``): new entries
created in it get its project id, which is how a project quota follows a tree; both are copied together.

The rule (:func:`decide`): the source's project is copied when it has one (a nonzero id, or a directory
with inheritance). Id 0 without inheritance means "no project" -- a filesystem without project ids
(ext4 without the ``project`` feature) reads as 0 too -- and leaves the target's as it is. A target that
cannot store project ids (``ENOTTY``, ``EOPNOTSUPP``) is :data:`UNSUPPORTED`: counted by the caller, never
an error of the entry.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import struct
from collections import Counter

from cmover.core.counters import C
from cmover.core.frozen import NamedTuple

log = logging.getLogger(__name__)

# linux/fs.h: struct fsxattr { u32 xflags, extsize, nextents, projid, cowextsize; u8 pad[8]; }
_FSXATTR = struct.Struct("=5I8x")
_BLANK = bytes(_FSXATTR.size)  # the ioctl's argument: immutable, so fcntl.ioctl copies it and returns the result
FS_IOC_FSGETXATTR = 0x801C581F  # _IOR('X', 31, struct fsxattr)
FS_IOC_FSSETXATTR = 0x401C5820  # _IOW('X', 32, struct fsxattr)
FS_XFLAG_PROJINHERIT = 0x00000200
_PROJID = 3  # index of fsx_projid in the struct
_NO_SUPPORT = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

SAME, SET, UNSUPPORTED = "same", "set", "unsupported"


class Project(NamedTuple):
    """The project of one inode: its id and, for a directory, whether new entries inherit it."""

    id: int
    inherit: bool = False

    @property
    def present(self) -> bool:
        """Whether there is a project to copy (id 0 without inheritance is none)."""
        return self.id != 0 or self.inherit


NONE = Project(0)


def read(fd: int) -> Project | None:
    """The project of open file or directory ``fd``; None when its filesystem has no project ids.

    Other errors (EBADF, EIO, ...) raise OSError.
    """
    try:
        raw = fcntl.ioctl(fd, FS_IOC_FSGETXATTR, _BLANK)
    except OSError as exc:
        if exc.errno in _NO_SUPPORT:
            return None
        raise
    fields = _FSXATTR.unpack(raw)
    if not fields[_PROJID] and not fields[0] & FS_XFLAG_PROJINHERIT:
        return NONE  # most inodes: no project, and no new tuple for it
    return Project(fields[_PROJID], bool(fields[0] & FS_XFLAG_PROJINHERIT))


def write(fd: int, want: Project, is_dir: bool) -> bool:
    """Give open file or directory ``fd`` project ``want`` (the inherit flag on a directory only), keeping its
    other attributes; False when its filesystem cannot store project ids. Other errors raise OSError
    (EPERM: the process may not change it)."""
    try:
        fields = list(_FSXATTR.unpack(fcntl.ioctl(fd, FS_IOC_FSGETXATTR, _BLANK)))
        fields[_PROJID] = want.id
        if is_dir:
            fields[0] = fields[0] | FS_XFLAG_PROJINHERIT if want.inherit else fields[0] & ~FS_XFLAG_PROJINHERIT
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, _FSXATTR.pack(*fields))
    except OSError as exc:
        if exc.errno in _NO_SUPPORT:
            return False
        raise
    return True


def decide(src: Project | None, dst: Project | None) -> str:
    """What to do with the target's project given the source's (None: that filesystem has none). Pure.

    :data:`SAME` when there is nothing to do (the source has no project, or the target has the same one),
    :data:`SET` when the target must be given the source's, :data:`UNSUPPORTED` when the source has one
    and the target's filesystem cannot store it.
    """
    if src is None or not src.present:
        return SAME
    if dst is None:
        return UNSUPPORTED
    return SAME if src == dst else SET


def sync(src_fd: int, dst_fd: int, is_dir: bool) -> str:
    """Bring the project of target ``dst_fd`` in line with source ``src_fd`` (:func:`decide`); returns
    what was done: :data:`SAME`, :data:`SET` or :data:`UNSUPPORTED`."""
    src = read(src_fd)
    if src is None or src is NONE or not src.present:
        return SAME
    action = decide(src, read(dst_fd))
    if action == SET and not write(dst_fd, src, is_dir):
        return UNSUPPORTED
    return action


_warned = False


def count(tally: Counter[str], action: str, where: str) -> None:
    """Count what :func:`sync` did in a pass's ``tally``; the first entry of a process whose project id the
    target cannot store is also logged as a warning (the summary counts them all)."""
    global _warned
    if action == SET:
        tally[C.PROJECTS_SET] += 1
    elif action == UNSUPPORTED:
        tally[C.PROJECTS_UNSUPPORTED] += 1
        if not _warned:
            _warned = True
            log.warning("%s has a project id that the target filesystem cannot store: project ids are not copied "
                        "there (counted as %s); give the target project ids (XFS, ext4 with the project "
                        "feature, Lustre) to keep project quotas", where, C.PROJECTS_UNSUPPORTED)
