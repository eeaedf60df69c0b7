"""Applying owner, mode, extended attributes and times to a target entry, in the order that keeps them right.

Order: owner first (``chown`` may clear setuid/setgid bits and capabilities), then mode, then
extended attributes and ACLs (an ACL must come after chmod, which would rewrite its mask), then
atime/mtime last: a target file carries the source's mtime only when everything before it is
complete, which is what makes the mtime the commit marker of a copy (design invariant 4.1).

Owner, group and set-id bits are applied as far as the process may (``can``, see
:mod:`cmover.core.privileges`): what it cannot set is left as created, never attempted and failed per file.
"""

from __future__ import annotations

import os
import stat

from cmover.core import xattrs as xattr_mod
from cmover.core.idmap import NO_MAP, IdMap
from cmover.core.privileges import ALL, Privileges
from cmover.core.record import Kind, Record

_OWNER_RWX = stat.S_IRWXU
_SET_ID = stat.S_ISUID | stat.S_ISGID

#: The mode a new file is created with when its own would grant too much while it is written.
PRIVATE = 0o600


def create_mode(perm: int) -> int:
    """The mode to create a regular file with whose final permission bits are ``perm``: ``perm`` itself when
    holding it from the creation on grants nobody anything the finished copy does not, else :data:`PRIVATE`.

    While its data is written, the file belongs to this process's user and group (or a set-group-ID
    directory's group), and may carry the access ACL inherited from the directory's default ACL, whose named
    entries are limited by the group bits. ``perm`` is safe when its group bits equal its other bits (the
    group of the moment and the named entries get what everyone gets, which everyone keeps) and the other
    bits are within the owner's (the final owner, one of "everyone" until the chown, loses nothing). No write
    bit but the owner's: a write by anyone else before the copy's mtime is set would be hidden by it (the mtime
    is the commit marker); after it, it shows. No set-id or sticky bit: set-id bits are given after the chown,
    which clears them. Then the final :func:`apply_fd` finds the mode right and makes no ``chmod``: a file
    created 0644 or 0755 costs one metadata operation less (one server round trip on Lustre) than one created
    0600 and changed.
    """
    other = perm & stat.S_IRWXO
    if perm & ~0o777 or other & stat.S_IWOTH or (perm >> 3) & 0o7 != other or (perm >> 6) & other != other:
        return PRIVATE
    return perm


def apply_fd(fd: int, src: Record, *, xattrs: dict[str, bytes] | None = None, times: bool = True,
             can: Privileges = ALL, writable_dir: bool = False, st: os.stat_result | None = None) -> None:
    """Set owner, mode, extended attributes (when given) and (unless ``times`` is False) atime/mtime on an
    open file or directory. What is already right is not written (no chown, chmod or setxattr that would
    change nothing but the ctime); ``st``: the entry's fresh ``fstat`` when the caller has it.

    ``writable_dir``: a directory the pass is about to write into keeps owner ``rwx`` when the process has
    no CAP_DAC_OVERRIDE (its final mode is the dirtime pass's job, see :func:`final_dir_mode`).
    ``xattrs`` are applied after the mode (an ACL after chmod, which would rewrite its mask), under owner
    write when the process has no CAP_DAC_OVERRIDE.
    """
    if st is None:
        st = os.fstat(fd)
    uid, gid = can.owner(src.uid, src.gid)
    chowned = (uid >= 0 and st.st_uid != uid) or (gid >= 0 and st.st_gid != gid)
    if chowned:
        os.fchown(fd, uid, gid)
    # A chown clears the set-id bits (for a directory, the kernel keeps them, and the chmod changes nothing):
    # with such bits wanted, the mode is set again after it, even when it looked right before.
    perm = can.perm(src.perm, src.uid, src.gid)
    have = stat.S_IMODE(st.st_mode)
    cleared = chowned and bool(perm & _SET_ID)
    if can.dac:
        if cleared or have != perm:
            os.fchmod(fd, perm)
        if xattrs is not None:
            xattr_mod.apply(fd, xattrs, can)
    else:
        final = perm | _OWNER_RWX if writable_dir else perm
        # Without CAP_DAC_OVERRIDE, setting or removing user.* attributes needs write permission: the
        # owner holds it while they are set, then the final mode is set again. That chmod keeps an access
        # ACL as set: the source's mode bits are the ones its ACL implies.
        try:
            change_x = xattrs is not None and xattr_mod.read_all(fd, can) != xattrs
        except PermissionError:  # not readable with the mode it has now: set them as below, which reads again
            change_x = True
        first = final | stat.S_IWUSR if change_x else final
        if cleared or have != first:
            os.fchmod(fd, first)
        if change_x:
            assert xattrs is not None
            xattr_mod.apply(fd, xattrs, can)
        if first != final or (writable_dir and change_x):
            os.fchmod(fd, final)  # also after an access ACL, which rewrote the owner's bits
    if times:
        os.utime(fd, ns=(src.atime_ns, src.mtime_ns))


def apply_at(dir_fd: int, name: str, src: Record, *, xattrs: dict[str, bytes] | None = None,
             can: Privileges = ALL) -> None:
    """Set owner, mode and times on a non-regular, non-directory entry without following symlinks.

    Symlinks get owner and times (Linux has no symlink mode). FIFOs and device nodes are not opened
    (opening a device can have side effects); their mode is set by name right after an ``lstat``
    proved the name is not a symlink.
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    uid, gid = can.owner(src.uid, src.gid)
    if (uid >= 0 and st.st_uid != uid) or (gid >= 0 and st.st_gid != gid):
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    if src.kind is not Kind.LNK and not stat.S_ISLNK(st.st_mode):
        os.chmod(name, can.perm(src.perm, src.uid, src.gid), dir_fd=dir_fd)
    if xattrs is not None:
        xattr_mod.apply(xattr_mod.at(dir_fd, name), xattrs, can)
    os.utime(name, ns=(src.atime_ns, src.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def final_dir_mode(fd: int, src: os.stat_result, can: Privileges = ALL, idmap: IdMap = NO_MAP) -> bool:
    """Give target directory ``fd`` the mode of its source (as far as ``can`` allows); True when it changed.

    Called by the dirtime pass: without CAP_DAC_OVERRIDE the copy pass left owner ``rwx`` on directories
    whose source denies it, so that it could fill them. The set-id bits kept are those of the owner and
    group the copy has (``idmap``: the source's, mapped).
    """
    want = can.perm(stat.S_IMODE(src.st_mode), idmap.uid(src.st_uid), idmap.gid(src.st_gid))
    if stat.S_IMODE(os.fstat(fd).st_mode) == want:
        return False
    os.fchmod(fd, want)
    return True


def open_up_dir(fd: int, can: Privileges = ALL) -> bool:
    """Give the owner ``rwx`` on target directory ``fd`` when this process owns it, lacks CAP_DAC_OVERRIDE and
    the mode denies it (an entry inside is to be removed); True when the mode was changed."""
    if can.dac:
        return False
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != can.uid or mode & _OWNER_RWX == _OWNER_RWX:
        return False
    os.fchmod(fd, mode | _OWNER_RWX)
    return True
