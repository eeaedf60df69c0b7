"""The syscall chokepoint: opening directories and files without following symlinks or touching atimes.

Every directory, from ``/`` down to a pass root and below it, is opened component by component with
``O_NOFOLLOW``, relative to its parent's descriptor. A symlink planted anywhere on the way (for
example a target directory swapped for a link between listing and copying, or a forged message naming
a root through a link) makes the open fail with ``ELOOP``/``ENOTDIR`` instead of leading cmover
outside its root. Source files and directories are opened with ``O_NOATIME`` when the
process may (owner or CAP_FOWNER), so a copy pass does not change the atimes the OLDEST_DATE filter
depends on; without the permission the open is retried plainly.
"""

from __future__ import annotations

import errno
import os

from cmover.errors import ConfinementError
from cmover.paths import check_rel, components

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)


def open_noatime(name: str | bytes, flags: int, *, dir_fd: int | None = None) -> int:
    """``os.open`` with ``O_NOATIME`` added, retried without it on EPERM (not the file's owner)."""
    if _NOATIME:
        try:
            return os.open(name, flags | _NOATIME, dir_fd=dir_fd)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
    return os.open(name, flags, dir_fd=dir_fd)


def open_root(root: bytes, *, source: bool) -> int:
    """Open a pass root directory (absolute) without following a symlink in any of its components.

    The planner resolves both roots (``realpath``), so a root holds no symlink. One that does came with
    a forged message or was swapped meanwhile, e.g. a symlink copied onto the target and named as the
    pass's target root: following it would lead outside the configured mounts, so the open fails
    (``ELOOP``/``ENOTDIR``) instead.
    """
    parts = [p for p in root.split(b"/") if p]
    if not root.startswith(b"/") or any(p in (b".", b"..") for p in parts):
        raise ConfinementError(f"pass root {root!r} is not a normalised absolute path")
    # Only the root itself is listed: its ancestors are opened plainly (an open moves no atime).
    return _descend(os.open(b"/", _DIR_FLAGS), parts, source=source, only_last=True)


def _descend(fd: int, parts: list[bytes], *, source: bool, only_last: bool = False) -> int:
    """Open ``parts`` each inside the previous one, from ``fd`` (taken over: closed whatever happens),
    without following a symlink; return the last. ``source`` asks for O_NOATIME (on the last only)."""
    try:
        for i, part in enumerate(parts):
            nfd = open_subdir(fd, part, source=source and (not only_last or i == len(parts) - 1))
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_subdir(parent_fd: int, name: str | bytes, *, source: bool) -> int:
    """Open directory ``name`` inside ``parent_fd`` without following a symlink."""
    return open_noatime(name, _DIR_FLAGS, dir_fd=parent_fd) if source else os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def open_dir(root: bytes, rel: bytes, *, source: bool) -> int:
    """Open ``root/rel`` as a directory, refusing symlinks in every component of ``rel``.

    ``rel`` is checked again with :func:`cmover.paths.check_rel` (ConfinementError): no ``..`` walks up
    from here whoever the caller is. Returns a new descriptor the caller closes.
    """
    check_rel(rel)
    return _descend(open_root(root, source=source), components(rel), source=source)


def entry_is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether a listed entry is a directory (not following symlinks); False when that cannot be told,
    in which case the caller decides again from a fresh ``lstat`` when it handles the entry."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def lstat_at(dir_fd: int, name: str | bytes) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``, or None when it does not exist (ENOENT only)."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


_cfr_ok = hasattr(os, "copy_file_range")


def copy_data(src_fd: int, dst_fd: int, size: int, *, sparse: bool = False) -> int:
    """Copy the first ``size`` bytes of ``src_fd`` to ``dst_fd`` in the kernel; return the bytes copied.

    With ``sparse``, only the data ranges (``SEEK_DATA``/``SEEK_HOLE``) are copied and the file is
    extended to ``size`` at the end, so holes stay holes on the target. The return value then counts
    the size (data plus holes) when the whole file was covered.

    Uses ``copy_file_range`` (server-side copy on filesystems that offer it, no user-space buffer), then
    ``sendfile``, then a read/write loop, each only when the previous one is unsupported for this pair
    of files. Stops at ``size`` (one syscall per small file) or at an early EOF; a file that grew or
    shrank meanwhile is caught by the caller's re-stat.
    """
    if sparse:
        return _copy_sparse(src_fd, dst_fd, size)
    return _copy_range(src_fd, dst_fd, 0, size)


def _copy_sparse(src_fd: int, dst_fd: int, size: int) -> int:
    got = copy_extent(src_fd, dst_fd, 0, size, sparse=True)
    if got == size:
        os.ftruncate(dst_fd, size)
    return got


def copy_extent(src_fd: int, dst_fd: int, offset: int, length: int, *, sparse: bool) -> int:
    """Copy bytes ``[offset, offset + length)`` to the same offsets of ``dst_fd``; return the bytes covered.

    With ``sparse``, holes inside the range are skipped (not written), so the caller must make the target
    long enough itself (``ftruncate``). A return value below ``length`` means the source ended early.
    """
    if not sparse:
        return _copy_range(src_fd, dst_fd, offset, length)
    end_all = offset + length
    pos = offset
    while pos < end_all:
        try:
            start = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after pos, the rest is a hole
                raise
            break
        if start >= end_all:
            break
        end = min(os.lseek(src_fd, start, os.SEEK_HOLE), end_all)
        got = _copy_range(src_fd, dst_fd, start, end - start)
        if got != end - start:
            return start + got - offset  # shrank meanwhile: the caller's re-stat reports it
        pos = end
    return length


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
    """Copy ``length`` bytes at ``offset`` (same offset on both sides); return the bytes copied."""
    global _cfr_ok
    size = offset + length
    total = offset
    if _cfr_ok:
        try:
            while total < size:
                n = os.copy_file_range(src_fd, dst_fd, size - total, total, total)
                if n == 0:
                    return total - offset
                total += n
            return total - offset
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or total > offset:
                raise
            if exc.errno == errno.ENOSYS:
                _cfr_ok = False
    try:
        os.lseek(dst_fd, offset, os.SEEK_SET)  # sendfile writes at the target's file position
        while total < size:
            n = os.sendfile(dst_fd, src_fd, total, size - total)
            if n == 0:
                return total - offset
            total += n
        return total - offset
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS) or total > offset:
            raise
    while total < size:
        buf = os.pread(src_fd, min(1 << 20, size - total), total)
        if not buf:
            return total - offset
        view = memoryview(buf)
        while view:
            written = os.pwrite(dst_fd, view, total)
            total += written
            view = view[written:]
    return total - offset
