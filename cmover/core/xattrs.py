"""Extended attributes (including POSIX ACLs, which Linux exposes as ``system.posix_acl_*``).

Every namespace the process may read and write is copied (``user``, ``trusted`` and ``security`` as
root; a regular user's copy leaves out the ``trusted`` and ``security`` names it may not set, see
:meth:`cmover.core.privileges.Privileges.xattr`, and compares without them); Lustre-internal attributes are never
copied raw: they carry OST indices and FIDs of the source
filesystem, and layouts are rebuilt by the Lustre layer instead. Entries are addressed through
``/proc/self/fd/<dirfd>/<name>`` with ``follow_symlinks=False``, so the directory descriptor confines
the lookup and a symlink's own attributes are read, never its target's.
"""

from __future__ import annotations

import errno
import os

from cmover.core.idmap import NO_MAP, IdMap
from cmover.core.privileges import ALL, Privileges

# Exact names and prefixes that belong to Lustre itself (layout, FIDs, links, HSM, SOM).
_LUSTRE_NAMES = frozenset({
    "trusted.lov", "trusted.lma", "trusted.lmv", "trusted.link", "trusted.fid", "trusted.som",
    "trusted.hsm", "trusted.dmv", "trusted.pfid", "trusted.version",
})
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def copyable(name: str, can: Privileges = ALL) -> bool:
    """True for an attribute cmover copies: everything but Lustre-internal names and names ``can`` may not set."""
    return not name.startswith("lustre.") and name not in _LUSTRE_NAMES and can.xattr(name)


def at(dir_fd: int, name: str) -> str:
    """A path that names entry ``name`` of the open directory ``dir_fd`` (use with follow_symlinks=False)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def _names(path: str, can: Privileges) -> list[str]:
    try:
        return [n for n in os.listxattr(path, follow_symlinks=False) if copyable(n, can)]
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return []
        raise


def same(src_path: str, dst_path: str, can: Privileges = ALL, idmap: IdMap = NO_MAP) -> bool:
    """True when two entries (``/proc/self/fd`` paths, not followed) carry the same copyable attributes,
    the source's POSIX ACLs taken with their ids mapped by ``idmap``.

    On the no-change path of every file, so the common case (no attributes on either side) costs two
    ``listxattr`` calls and nothing else.
    """
    src_names = _names(src_path, can)
    dst_names = _names(dst_path, can)
    if not src_names and not dst_names:
        return True
    if sorted(src_names) != sorted(dst_names):
        return False
    return idmap.xattrs(read_all(src_path, can)) == read_all(dst_path, can)


def read_all(target: int | str, can: Privileges = ALL) -> dict[str, bytes]:
    """The copyable attributes (for ``can``) of an open descriptor or of a ``/proc/self/fd`` path (not followed)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return {}
        raise
    out: dict[str, bytes] = {}
    for n in names:
        if not copyable(n, can):
            continue
        try:
            out[n] = os.getxattr(target, n, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed between list and get
                raise
    return out


def apply(target: int | str, wanted: dict[str, bytes], can: Privileges = ALL) -> None:
    """Make the copyable attributes (for ``can``) of ``target`` exactly ``wanted`` (set changed ones, remove
    extra ones); ``wanted`` holds only such names (read with the same ``can``)."""
    follow = isinstance(target, int)
    have = read_all(target, can)
    if not have and not wanted:
        return  # the common case (a new file with no attributes): no set to build
    for n, v in wanted.items():
        if have.get(n) != v:
            os.setxattr(target, n, v, follow_symlinks=follow)
    for n in have.keys() - wanted.keys():
        try:
            os.removexattr(target, n, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
