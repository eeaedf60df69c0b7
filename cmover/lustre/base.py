"""Interface between the engine and filesystem-specific creation of files and directories.

The engine never calls ``os.mkdir`` or ``os.open(..., O_CREAT)`` on the target itself: it asks an
:class:`FsApi`, so that a Lustre implementation can create a file with its layout before any data is
written and put a directory on a chosen MDT. :class:`PosixFs` is the plain-POSIX implementation used
wherever Lustre is absent; it is also the contract every other implementation must keep.

All names are ``str`` (file-system encoded with surrogateescape, so any byte sequence) relative to an
open directory descriptor; nothing follows a symlink.
"""

from __future__ import annotations

import os
from typing import Protocol

CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class FsApi(Protocol):
    """What the engine needs from the target filesystem."""

    name: str

    def create_file(self, dir_fd: int, name: str, src_dir_fd: int, src_name: str) -> int:
        """Create ``name`` in ``dir_fd`` exclusively (``O_EXCL``, mode 0600) and return a write descriptor.

        ``src_dir_fd``/``src_name`` identify the source file, whose layout an implementation may copy.
        Raises ``FileExistsError`` when the name exists (the caller decides what to do).
        """
        ...

    def mkdir(self, dir_fd: int, name: str, mdt: int | None) -> None:
        """Create directory ``name`` in ``dir_fd`` with mode 0700 (the caller sets owner and mode).

        ``mdt`` asks for placement on that MDT index; ``None`` or ``-1`` leaves it to the filesystem.
        Raises ``FileExistsError`` when the name exists.
        """
        ...

    def stripe_size(self, fd: int) -> int:
        """Stripe size in bytes of the open target file ``fd``, or 0 when it has none.

        Chunks of a file copied in parallel are aligned to it, so that no two writers share a stripe.
        """
        ...


class PosixFs:
    """Plain POSIX creation: no layouts, no MDT placement."""

    name = "posix"

    def create_file(self, dir_fd: int, name: str, src_dir_fd: int, src_name: str) -> int:
        return os.open(name, CREATE_FLAGS, 0o600, dir_fd=dir_fd)

    def mkdir(self, dir_fd: int, name: str, mdt: int | None) -> None:
        os.mkdir(name, 0o700, dir_fd=dir_fd)

    def stripe_size(self, fd: int) -> int:
        return 0
