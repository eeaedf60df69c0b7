"""Is a path on Lustre? The kernel's answer (statfs magic), without needing liblustreapi.

Python's ``os.statvfs`` has no filesystem type, so ``statfs(2)`` is called through libc: its first
field, ``f_type``, is ``LL_SUPER_MAGIC`` on a Lustre client mount. A path that does not exist yet is
answered for its nearest existing parent (a target root is often created by the copy).
"""

from __future__ import annotations

import ctypes
import os

LL_SUPER_MAGIC = 0x0BD00BD0

_libc = ctypes.CDLL(None, use_errno=True)
_statfs = _libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_statfs.restype = ctypes.c_int
_STATFS_BUF = 256  # struct statfs is 120 bytes on 64-bit Linux; room to spare


def fs_type(path: bytes) -> int | None:
    """``f_type`` of the filesystem holding ``path`` or its nearest existing parent; None if unknown."""
    buf = ctypes.create_string_buffer(_STATFS_BUF)
    p = os.path.abspath(path)
    while True:
        if _statfs(p, buf) == 0:
            return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF
        if ctypes.get_errno() != 2 or p == b"/":  # only a missing path is retried on its parent
            return None
        p = os.path.dirname(p)


def is_lustre_mount(path: bytes) -> bool:
    return fs_type(path) == LL_SUPER_MAGIC
