"""Is a path on Lustre? The kernel's answer (statfs magic), without needing liblustreapi.

Python's ``os.statvfs`` has no filesystem type, so ``statfs(2)`` is called through libc: its first
field, ``f_type``, is ``LL_SUPER_MAGIC`` on a Lustre client mount. Callers ask about an existing path
(:func:`cmover.lustre.probe` walks up from a target root the copy has yet to create).
"""

from __future__ import annotations

import ctypes

LL_SUPER_MAGIC = 0x0BD00BD0

#: ``f_type`` of the network filesystems, by name: every metadata call there is a round trip to a server
#: (a pass runs more processes than cores to hide it), and changes made on other nodes reach no local
#: fanotify mark.
NETWORK_FS = {LL_SUPER_MAGIC: "Lustre", 0x6969: "NFS", 0xFF534D42: "CIFS", 0xFE534D42: "SMB2", 0x47504653: "GPFS",
              0x65735546: "FUSE", 0x73757245: "Coda", 0x564C: "NCP", 0x00C36400: "Ceph", 0x013111A8: "IBRIX"}

_libc = ctypes.CDLL(None, use_errno=True)
_statfs = _libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_statfs.restype = ctypes.c_int
_STATFS_BUF = 256  # struct statfs is 120 bytes on 64-bit Linux; room to spare


def fs_type(path: bytes) -> int | None:
    """``f_type`` of the filesystem holding existing ``path``; None if it cannot be asked."""
    buf = ctypes.create_string_buffer(_STATFS_BUF)
    if _statfs(path, buf) != 0:
        return None
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def network_fs(path: bytes) -> str | None:
    """The name of the network filesystem (:data:`NETWORK_FS`) holding existing ``path``; None when it is on any
    other filesystem or cannot be asked."""
    return NETWORK_FS.get(fs_type(path) or 0)


def is_lustre_mount(path: bytes) -> bool:
    return fs_type(path) == LL_SUPER_MAGIC
