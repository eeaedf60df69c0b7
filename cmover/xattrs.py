"""Extended attributes (including POSIX ACLs, which Linux exposes as ``system.posix_acl_*``).

Every namespace the process may read and write is copied (``user``, ``trusted`` and ``security`` as
root); Lustre-internal attributes are never copied raw: they carry OST indices and FIDs of the source
filesystem, and layouts are rebuilt by the Lustre layer instead. Entries are addressed through
``/proc/self/fd/<dirfd>/<name>`` with ``follow_symlinks=False``, so the directory descriptor confines
the lookup and a symlink's own attributes are read, never its target's.
"""

from __future__ import annotations

import errno
import os

# Exact names and prefixes that belong to Lustre itself (layout, FIDs, links, HSM, SOM).
_LUSTRE_NAMES = frozenset({
    "trusted.lov", "trusted.lma", "trusted.lmv", "trusted.link", "trusted.fid", "trusted.som",
    "trusted.hsm", "trusted.dmv", "trusted.pfid", "trusted.version",
})
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def copyable(name: str) -> bool:
    """True for an attribute cmover copies (everything but Lustre-internal names)."""
    return not name.startswith("lustre.") and name not in _LUSTRE_NAMES


def at(dir_fd: int, name: str) -> str:
    """A path that names entry ``name`` of the open directory ``dir_fd`` (use with follow_symlinks=False)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def _names(path: str) -> list[str]:
    try:
        return [n for n in os.listxattr(path, follow_symlinks=False) if copyable(n)]
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return []
        raise


def same(src_path: str, dst_path: str) -> bool:
    """True when two entries (``/proc/self/fd`` paths, not followed) carry the same copyable attributes.

    On the no-change path of every file, so the common case (no attributes on either side) costs two
    ``listxattr`` calls and nothing else.
    """
    src_names = _names(src_path)
    dst_names = _names(dst_path)
    if not src_names and not dst_names:
        return True
    if sorted(src_names) != sorted(dst_names):
        return False
    return read_all(src_path) == read_all(dst_path)


def read_all(target: int | str) -> dict[str, bytes]:
    """The copyable attributes of an open descriptor or of a ``/proc/self/fd`` path (not followed)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return {}
        raise
    out: dict[str, bytes] = {}
    for n in names:
        if not copyable(n):
            continue
        try:
            out[n] = os.getxattr(target, n, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed between list and get
                raise
    return out


def apply(target: int | str, wanted: dict[str, bytes]) -> None:
    """Make the copyable attributes of ``target`` exactly ``wanted`` (set changed ones, remove extra ones)."""
    follow = isinstance(target, int)
    have = read_all(target)
    for n, v in wanted.items():
        if have.get(n) != v:
            os.setxattr(target, n, v, follow_symlinks=follow)
    for n in have.keys() - wanted.keys():
        try:
            os.removexattr(target, n, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
