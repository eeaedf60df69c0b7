"""Interface between the engine and filesystem-specific creation of files and directories.

The engine never calls ``os.mkdir`` or ``os.open(..., O_CREAT)`` on the target itself: it asks an
:class:`FsApi`, so that the Lustre implementation (:class:`cmover.lustre.fs.LustreFs`) can create a
file with its layout before any data is written, copy directory default layouts and put a directory on
a chosen MDT. :class:`PosixFs` is the plain-POSIX implementation used wherever Lustre or liblustreapi
is absent; it is also the contract every other implementation must keep.

All names are ``str`` (file-system encoded with surrogateescape, so any byte sequence) relative to an
open directory descriptor; nothing follows a symlink.
"""

from __future__ import annotations

import os
from typing import Protocol

from cmover.core.frozen import NamedTuple
from cmover.lustre.layout import Layout

CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class FsApi(Protocol):
    """What the engine needs from the target filesystem."""

    name: str
    compares_layouts: bool  # whether :meth:`layout_differs` can ever be true (worth calling)

    def create_file(self, dir_fd: int, name: str, src_fd: int, mode: int = 0o600) -> int:
        """Create ``name`` in ``dir_fd`` exclusively (``O_EXCL``, with ``mode``, as the umask and a default ACL
        of ``dir_fd`` leave it) and return a write descriptor.

        ``src_fd`` is the open source file, whose layout an implementation may reproduce before any data
        is written. Raises ``FileExistsError`` when the name exists (the caller decides what to do).
        A layout that cannot be had is not an error: the file is created with the target's default.
        """
        ...

    def mkdir(self, dir_fd: int, name: str, mdt: int | None) -> None:
        """Create directory ``name`` in ``dir_fd`` with mode 0700 (the caller sets owner and mode).

        ``mdt`` asks for placement on that MDT index, ``-1`` for the filesystem's own balancing and
        ``None`` for inheriting the parent's. Raises ``FileExistsError`` when the name exists.
        """
        ...

    def sync_dir_layout(self, src_fd: int, dst_fd: int) -> None:
        """Give target directory ``dst_fd`` the default layout its source ``src_fd`` implies (idempotent)."""
        ...

    def layout_differs(self, src_fd: int, dst_fd: int) -> bool:
        """Whether existing target file ``dst_fd`` has a layout the policy would not give a new copy."""
        ...

    def stripe_size(self, fd: int) -> int:
        """Bytes to align parallel writes of open target file ``fd`` to (its stripe size), 0 when none.

        Chunks of a file copied in parallel are aligned to it, so that no two writers share a stripe.
        """
        ...

    def import_striping(self, src_fd: int) -> tuple[int, int, str | None]:
        """``(stripe size, stripe count, pool)`` for ``llapi_hsm_import`` of a stub of open source ``src_fd``:
        what the layout policy gives (0, 0, None: the target's defaults). Import takes one plain layout."""
        ...


class FsInfo(NamedTuple):
    """What cmover knows of the filesystem holding a path (see :func:`cmover.lustre.probe`)."""

    path: bytes
    lustre: bool  # the kernel (statfs magic) or liblustreapi says it is Lustre
    handled: bool  # Lustre and the library is usable: layouts and placement are handled
    fsname: str | None = None
    ost_count: int = 0
    mdt_count: int = 0
    mount: bytes | None = None
    root_default: Layout | None = None  # the filesystem root's default layout (what "inherited" reads as)
    note: str = ""  # the library used, or why layouts are not handled


class PosixFs:
    """Plain POSIX creation: no layouts, no MDT placement."""

    name = "posix"
    compares_layouts = False

    def create_file(self, dir_fd: int, name: str, src_fd: int, mode: int = 0o600) -> int:
        return os.open(name, CREATE_FLAGS, mode, dir_fd=dir_fd)

    def mkdir(self, dir_fd: int, name: str, mdt: int | None) -> None:
        os.mkdir(name, 0o700, dir_fd=dir_fd)

    def sync_dir_layout(self, src_fd: int, dst_fd: int) -> None:
        return None

    def layout_differs(self, src_fd: int, dst_fd: int) -> bool:
        return False

    def stripe_size(self, fd: int) -> int:
        return 0

    def import_striping(self, src_fd: int) -> tuple[int, int, str | None]:
        return 0, 0, None
