"""The syscall chokepoint: opening directories and files without following symlinks or touching atimes.

Every directory, from ``/`` down to a pass root and below it, is opened component by component with
``O_NOFOLLOW``, relative to its parent's descriptor. A symlink planted anywhere on the way (for
example a target directory swapped for a link between listing and copying, or a forged message naming
a root through a link) makes the open fail with ``ELOOP``/``ENOTDIR`` instead of leading cmover
outside its root. Source files and directories are opened with ``O_NOATIME`` when the
process may (owner or CAP_FOWNER), so a copy pass does not change the atimes the OLDEST_DATE filter
depends on; without the permission the open is retried plainly.

Inside :func:`keeping_roots` (the embedded command's own root task) or after :func:`keep_roots_while_busy`
(pool processes, embedded and distributed, which close a root unused for :data:`IDLE_ROOT_SECONDS`), a process opens
each pass root that way once: it keeps a descriptor of it (at most :data:`KEPT_ROOTS`), and later opens
below the root are made relative to that descriptor after one ``lstat`` of the root's path shows the same
directory (device and inode) still there. Anything else -- the path gone, replaced, or a link -- opens the
root from ``/`` again, as the first time. The kept descriptor is only ever a ``dir_fd``, never listed (a
listing gets a descriptor of its own, with its own offset), and never used by another process (the key
holds the pid, and a forked child starts with none). Outside those scopes nothing is kept, and a pool
process closes what it kept once unused for :data:`IDLE_ROOT_SECONDS`: a distributed worker lives on between
passes, and a descriptor kept for good would hold the source and target mounts busy (``umount`` fails with
EBUSY) after the migration; it holds them that long after its last task at most.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from cmover.core.errors import ConfinementError
from cmover.core.origin import pid
from cmover.core.paths import check_rel, components

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


#: Pass roots a process keeps open (see the module doc); the least recently used is closed beyond this.
KEPT_ROOTS = 4
_kept: OrderedDict[tuple[int, bytes, bool], tuple[int, int, int]] = OrderedDict()  # -> (fd, st_dev, st_ino)
_kept_lock = threading.Lock()
_keeping = 0  # depth of keeping_roots() in this process
_shared = threading.local()  # .chains: this thread's sharing_dirs() scope (its chains), None outside one
_busy = False  # keep_roots_while_busy() was called in this process (a forked child starts without)


def _release_kept() -> None:
    """Close every kept descriptor (under the lock: none is in use meanwhile)."""
    with _kept_lock:
        for fd, _dev, _ino in _kept.values():
            try:
                os.close(fd)
            except OSError:
                pass
        _kept.clear()
        _last_use.clear()


def _forget_kept() -> None:
    """In a forked child: a lock of its own, nothing kept and nothing to keep until it asks."""
    global _kept_lock, _keeping, _busy
    _kept_lock = threading.Lock()
    _keeping = 0
    _busy = False
    _release_kept()
    _shared.chains = None  # the parent's scope stays the parent's


os.register_at_fork(after_in_child=_forget_kept)


@contextlib.contextmanager
def keeping_roots() -> Iterator[None]:
    """Keep the pass roots this process opens until the outermost scope ends (module doc)."""
    global _keeping
    _keeping += 1
    try:
        yield
    finally:
        _keeping -= 1
        if not _keeping:
            _release_kept()


#: Seconds a root may stay kept without use in a process that keeps them while busy (:func:`keep_roots_while_busy`).
IDLE_ROOT_SECONDS = 2.0
_last_use: dict[tuple[int, bytes, bool], float] = {}


def keep_roots_while_busy() -> None:
    """Keep pass roots from now on in this process, each closed once unused for :data:`IDLE_ROOT_SECONDS`
    (a daemon thread looks every half of that): for the pool processes of the embedded command and of the
    distributed workers, which serve pass after pass; an idle process holds no mount busy for longer than
    that (module doc). A second call in the same process changes nothing."""
    global _keeping, _busy
    if _busy:
        return
    _busy = True
    _keeping += 1
    threading.Thread(target=_close_idle, name="cmover-idle-roots", daemon=True).start()


def _close_idle() -> None:
    while True:
        time.sleep(IDLE_ROOT_SECONDS / 2)
        cutoff = time.monotonic() - IDLE_ROOT_SECONDS
        with _kept_lock:
            for key in [k for k in _kept if _last_use.get(k, 0.0) < cutoff]:
                fd, _dev, _ino = _kept.pop(key)
                _last_use.pop(key, None)
                try:
                    os.close(fd)
                except OSError:
                    pass


def _root_parts(root: bytes) -> list[bytes]:
    parts = [p for p in root.split(b"/") if p]
    if not root.startswith(b"/") or any(p in (b".", b"..") for p in parts):
        raise ConfinementError(f"pass root {root!r} is not a normalised absolute path")
    return parts


def _open_kept(root: bytes, name: bytes, *, source: bool) -> int | None:
    """``name`` (a component, or ``.`` for the root itself) opened inside the kept descriptor of ``root``, or
    None when none is kept or the root's path no longer names that directory. Under the lock: no other
    thread of the process closes the kept descriptor meanwhile."""
    key = (pid(), root, source)
    with _kept_lock:
        kept = _kept.get(key)
        if kept is None:
            return None
        fd, dev, ino = kept
        try:
            st = os.lstat(root)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
            del _kept[key]
            os.close(fd)
            return None
        _kept.move_to_end(key)
        _last_use[key] = time.monotonic()
        if name == b".":
            flags = _DIR_FLAGS | (_NOATIME if source else 0)
            try:
                return os.open(b".", flags, dir_fd=fd)
            except PermissionError as exc:
                if exc.errno != errno.EPERM or not source:
                    raise
                return os.open(b".", _DIR_FLAGS, dir_fd=fd)
        return open_subdir(fd, name, source=source)


def _keep(root: bytes, source: bool, fd: int) -> None:
    """Keep a descriptor of root ``fd`` (just opened from ``/``) for this process's later opens, inside
    :func:`keeping_roots` only."""
    if not _keeping:
        return
    st = os.fstat(fd)
    key = (pid(), root, source)
    with _kept_lock:
        if key in _kept:
            return
        _kept[key] = (os.dup(fd), st.st_dev, st.st_ino)
        _last_use[key] = time.monotonic()
        while len(_kept) > KEPT_ROOTS:
            _key, (old, _dev, _ino) = _kept.popitem(last=False)
            os.close(old)


def open_root(root: bytes, *, source: bool, on_open: Callable[[int], object] | None = None) -> int:
    """Open a pass root directory (absolute) without following a symlink in any of its components.

    The planner resolves both roots (``realpath``), so a root holds no symlink. One that does came with
    a forged message or was swapped meanwhile, e.g. a symlink copied onto the target and named as the
    pass's target root: following it would lead outside the configured mounts, so the open fails
    (``ELOOP``/``ENOTDIR``) instead. A root this process opened before is reopened through its kept
    descriptor when its path still names the same directory (module doc). Returns a new descriptor with
    an offset of its own, which the caller closes.
    """
    parts = _root_parts(root)
    fd = _open_kept(root, b".", source=source)
    if fd is None:
        # Only the root itself is listed: its ancestors are opened plainly (an open moves no atime).
        fd = _descend(os.open(b"/", _DIR_FLAGS), parts, source=source, only_last=True)
        try:
            _keep(root, source, fd)
        except BaseException:
            os.close(fd)
            raise
    if on_open is not None:
        try:
            on_open(fd)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _descend(fd: int, parts: list[bytes], *, source: bool, only_last: bool = False,
             on_open: Callable[[int], object] | None = None) -> int:
    """Open ``parts`` each inside the previous one, from ``fd`` (taken over: closed whatever happens),
    without following a symlink; return the last. ``source`` asks for O_NOATIME (on the last only).
    ``on_open(fd)`` is called with each directory opened (not with ``fd`` itself)."""
    try:
        for i, part in enumerate(parts):
            nfd = open_subdir(fd, part, source=source and (not only_last or i == len(parts) - 1))
            os.close(fd)
            fd = nfd
            if on_open is not None:
                on_open(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_subdir(parent_fd: int, name: str | bytes, *, source: bool) -> int:
    """Open directory ``name`` inside ``parent_fd`` without following a symlink."""
    return open_noatime(name, _DIR_FLAGS, dir_fd=parent_fd) if source else os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def open_dir(root: bytes, rel: bytes, *, source: bool, on_open: Callable[[int], object] | None = None) -> int:
    """Open ``root/rel`` as a directory, refusing symlinks in every component of ``rel``.

    ``rel`` is checked again with :func:`cmover.core.paths.check_rel` (ConfinementError): no ``..`` walks up
    from here whoever the caller is. Returns a new descriptor the caller closes. ``on_open(fd)`` sees the
    root and each directory below it as it is opened (e.g. to ``fstat`` the chain). Inside
    :func:`sharing_dirs`, the directories on the way are shared with the scope's other opens.
    """
    check_rel(rel)
    parts = components(rel)
    chains = getattr(_shared, "chains", None)
    if chains is not None:
        return _open_shared(chains, root, parts, source, on_open)
    if parts and on_open is None:
        # Below a kept root: its first component opened from the kept descriptor (no root descriptor to
        # open and close). With on_open, the root itself must be seen, so it is opened as usual.
        _root_parts(root)
        fd = _open_kept(root, parts[0], source=source)
        if fd is not None:
            return _descend(fd, parts[1:], source=source)
    return _descend(open_root(root, source=source, on_open=on_open), parts, source=source, on_open=on_open)


@contextlib.contextmanager
def sharing_dirs() -> Iterator[None]:
    """Within this scope, this thread's :func:`open_dir` calls share the directories on their way.

    For a task that handles the entries of many directories (the batch jobs of a journal-driven pass, in
    sorted order): each tree keeps the chain of directories from its root down to the last one opened, and
    the next open starts from the deepest directory the two paths share, so sorted directories cost about
    one ``openat`` each per tree instead of one per component (on Lustre, each an MDS request). The root is
    opened (and, when kept, its path checked) once per scope and tree. Every descriptor returned is still a
    new one of the caller's, opened by name with ``O_NOFOLLOW`` from its parent, with an offset of its own:
    the scope keeps a duplicate of it, used only as a ``dir_fd``, never listed. What the scope keeps refers
    to the directories it opened: a directory renamed meanwhile is still reached by its old path until the
    scope ends, as a task's open descriptor of it would be. Nested scopes share the outermost one; its end
    closes everything kept.
    """
    if getattr(_shared, "chains", None) is not None:
        yield
        return
    chains: dict[tuple[bytes, bool], _DirChain] = {}
    _shared.chains = chains
    try:
        yield
    finally:
        _shared.chains = None
        for chain in chains.values():
            chain.close()


class _DirChain:
    """One tree's directories from its root down (see :func:`sharing_dirs`): ``fds[i]`` is ``parts[:i]``, so
    there is always one descriptor more than components (the root's)."""

    __slots__ = ("fds", "parts")

    def __init__(self, root_fd: int) -> None:
        self.fds = [root_fd]
        self.parts: list[bytes] = []

    def truncate(self, depth: int) -> None:
        """Keep the root and the first ``depth`` components."""
        while len(self.parts) > depth:
            os.close(self.fds.pop())
            self.parts.pop()

    def close(self) -> None:
        self.truncate(0)
        os.close(self.fds.pop())


def _open_shared(chains: dict[tuple[bytes, bool], _DirChain], root: bytes, parts: list[bytes], source: bool,
                 on_open: Callable[[int], object] | None) -> int:
    chain = chains.get((root, source))
    if chain is None:
        chain = chains[(root, source)] = _DirChain(open_root(root, source=source))
    shared = 0
    while shared < min(len(chain.parts), len(parts) - 1) and chain.parts[shared] == parts[shared]:
        shared += 1  # the last component is always opened anew: the caller gets a descriptor of its own
    chain.truncate(shared)
    for part in parts[shared:-1]:
        chain.fds.append(open_subdir(chain.fds[-1], part, source=source))
        chain.parts.append(part)
    fd = open_subdir(chain.fds[-1], parts[-1], source=source) if parts else open_root(root, source=source)
    try:
        if on_open is not None:
            for kept in chain.fds:
                on_open(kept)
            if parts:
                on_open(fd)
        if parts:
            chain.fds.append(os.dup(fd))
            chain.parts.append(parts[-1])
    except BaseException:
        os.close(fd)
        raise
    return fd


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


def leaf_dir(dir_fd: int, name: str | bytes) -> bool:
    """Whether directory ``name`` in ``dir_fd`` is known to hold no subdirectory: its link count is 2 (its name
    and its own ``.``; each subdirectory's ``..`` adds one). False when that cannot be told: a link count of 1
    (filesystems that do not count, a directory past their count's limit), or an ``lstat`` that fails."""
    try:
        st = lstat_at(dir_fd, name)
    except OSError:
        return False
    return st is not None and st.st_nlink == 2


def empty_dir(fd: int) -> bool:
    """Whether open directory ``fd`` holds no entry, read as far as its first one (one or two ``getdents``).
    ``fd`` keeps its place: the listing reads a duplicate, rewound when it is closed."""
    with os.scandir(fd) as it:
        return next(it, None) is None


def temp_name() -> str:
    """A new name for a file built beside its target and renamed over it: ``.cmover.<16 hex digits>.tmp``, fixed
    length, so that a 255-byte name still gets a valid temporary name."""
    return ".cmover." + os.urandom(8).hex() + ".tmp"


def remove_tree(name: str, dir_fd: int) -> None:
    """Remove directory ``name`` of ``dir_fd`` and all it holds, through descriptors: no symlink is followed
    (``shutil.rmtree`` with ``dir_fd``). shutil is imported when a pass first needs it: its import (with bz2 and
    lzma) was 2 ms of every command's start, for a directory a pass rarely removes."""
    import shutil

    shutil.rmtree(name, dir_fd=dir_fd)


_cfr_ok = hasattr(os, "copy_file_range")
#: (source, target) ``st_dev`` pairs on which ``copy_file_range`` failed with EXDEV: between two filesystems that
#: cannot copy in the server it fails so for every file, and an attempt costs a syscall and an exception each.
_cross: set[tuple[int, int]] = set()


def copy_data(src_fd: int, dst_fd: int, size: int, *, sparse: bool = False,
              devices: tuple[int, int] | None = None) -> int:
    """Copy the first ``size`` bytes of ``src_fd`` to ``dst_fd`` in the kernel; return the bytes copied.

    With ``sparse``, only the data ranges (``SEEK_DATA``/``SEEK_HOLE``) are copied and the file is
    extended to ``size`` at the end, so holes stay holes on the target. The return value then counts
    the size (data plus holes) when the whole file was covered.

    Uses ``copy_file_range`` (server-side copy on filesystems that offer it, no user-space buffer), then
    ``sendfile``, then a read/write loop, each only when the previous one is unsupported for this pair
    of files. Stops at ``size`` (one syscall per small file) or at an early EOF; a file that grew or
    shrank meanwhile is caught by the caller's re-stat. ``devices``: the ``st_dev`` of both files, so that
    ``copy_file_range`` is not tried again between two filesystems where it failed with EXDEV.
    """
    if sparse:
        return _copy_sparse(src_fd, dst_fd, size, devices)
    return _copy_range(src_fd, dst_fd, 0, size, devices)


def _copy_sparse(src_fd: int, dst_fd: int, size: int, devices: tuple[int, int] | None) -> int:
    got = copy_extent(src_fd, dst_fd, 0, size, sparse=True, devices=devices)
    if got == size:
        os.ftruncate(dst_fd, size)
    return got


def copy_extent(src_fd: int, dst_fd: int, offset: int, length: int, *, sparse: bool,
                devices: tuple[int, int] | None = None) -> int:
    """Copy bytes ``[offset, offset + length)`` to the same offsets of ``dst_fd``; return the bytes covered.

    With ``sparse``, holes inside the range are skipped (not written), so the caller must make the target
    long enough itself (``ftruncate``). A return value below ``length`` means the source ended early.
    ``devices``: as for :func:`copy_data`.
    """
    if not sparse:
        return _copy_range(src_fd, dst_fd, offset, length, devices)
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
        got = _copy_range(src_fd, dst_fd, start, end - start, devices)
        if got != end - start:
            return start + got - offset  # shrank meanwhile: the caller's re-stat reports it
        pos = end
    return length


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int, devices: tuple[int, int] | None = None) -> int:
    """Copy ``length`` bytes at ``offset`` (same offset on both sides); return the bytes copied."""
    global _cfr_ok
    size = offset + length
    total = offset
    if _cfr_ok and devices not in _cross:
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
            elif exc.errno == errno.EXDEV and devices is not None:
                _cross.add(devices)
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
