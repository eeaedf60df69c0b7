"""The platform layer for Lustre: layouts and MDT placement.

Public API is documented in :mod:`cmover.lustre.base`. :func:`get_fs` returns the implementation to use;
everywhere Lustre is absent it is :class:`~cmover.lustre.base.PosixFs`, which creates files and
directories with plain POSIX calls and leaves layouts and MDT placement to the filesystem.
"""

from __future__ import annotations

from cmover.lustre.base import FsApi, PosixFs

__all__ = ["FsApi", "PosixFs", "get_fs"]


def get_fs() -> FsApi:
    """The filesystem API for this process: the POSIX implementation (no layout handling)."""
    return PosixFs()
