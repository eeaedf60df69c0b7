"""Applying owner, mode, extended attributes and times to a target entry, in the order that keeps them right.

Order: owner first (``chown`` may clear setuid/setgid bits and capabilities), then mode, then
extended attributes and ACLs (an ACL must come after chmod, which would rewrite its mask), then
atime/mtime last: a target file carries the source's mtime only when everything before it is
complete, which is what makes the mtime the commit marker of a copy (design invariant 4.1).
"""

from __future__ import annotations

import os
import stat

from cmover import xattrs as xattr_mod
from cmover.record import Kind, Record


def apply_fd(fd: int, src: Record, *, xattrs: dict[str, bytes] | None = None, times: bool = True) -> None:
    """Set owner, mode, extended attributes (when given) and (unless ``times`` is False) atime/mtime on an
    open file or directory."""
    st = os.fstat(fd)
    if st.st_uid != src.uid or st.st_gid != src.gid:
        os.fchown(fd, src.uid, src.gid)
    # Always chmod after chown: the kernel clears set-id bits on chown even when the mode looked right.
    os.fchmod(fd, src.perm)
    if xattrs is not None:
        xattr_mod.apply(fd, xattrs)
    if times:
        os.utime(fd, ns=(src.atime_ns, src.mtime_ns))


def apply_at(dir_fd: int, name: str, src: Record, *, xattrs: dict[str, bytes] | None = None) -> None:
    """Set owner, mode and times on a non-regular, non-directory entry without following symlinks.

    Symlinks get owner and times (Linux has no symlink mode). FIFOs and device nodes are not opened
    (opening a device can have side effects); their mode is set by name right after an ``lstat``
    proved the name is not a symlink.
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if st.st_uid != src.uid or st.st_gid != src.gid:
        os.chown(name, src.uid, src.gid, dir_fd=dir_fd, follow_symlinks=False)
    if src.kind is not Kind.LNK and not stat.S_ISLNK(st.st_mode):
        os.chmod(name, src.perm, dir_fd=dir_fd)
    if xattrs is not None:
        xattr_mod.apply(xattr_mod.at(dir_fd, name), xattrs)
    os.utime(name, ns=(src.atime_ns, src.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
