"""The kernel's proof that no HSM-released file is read: a fanotify permission listener (tests only).

:class:`ReadGuard` bind-mounts a directory on itself and marks that mount with ``FAN_ACCESS_PERM``
(``FAN_CLASS_CONTENT``): every ``read``-class access by any process (``read``, ``pread``,
``copy_file_range``, ``sendfile``, ``splice``) to a file under it waits for the listener's answer. A file
whose ``trusted.hsm`` says released (the stand-in's HSM state, the real ``hsm_attrs`` layout) is
refused (``EPERM`` to the reader) and recorded; with ``deny=False`` it is allowed and recorded (what a
recall reads). Opening, ``stat`` and xattrs generate no permission event: metadata stays readable.
Every other read is allowed and counted per path, so a test can also prove that a pass read nothing.

Needs CAP_SYS_ADMIN (the test suite runs as root). Leaving the block unmarks and unmounts; events still
pending when the group closes are allowed by the kernel, so nothing can stay blocked.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import subprocess
import threading
from collections import Counter
from pathlib import Path
from types import TracebackType

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT = 0x01, 0x02, 0x04
FAN_MARK_ADD, FAN_MARK_MOUNT = 0x01, 0x10
FAN_ACCESS_PERM = 0x00020000
FAN_ALLOW, FAN_DENY = 0x01, 0x02
AT_FDCWD = -100
HS_RELEASED = 0x04
_META = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata (24 bytes)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def released(fd: int) -> bool:
    try:
        raw = os.getxattr(fd, "trusted.hsm")
    except OSError:
        return False
    return len(raw) == 24 and bool(struct.unpack_from("<I", raw, 4)[0] & HS_RELEASED)


class ReadGuard:
    """See the module doc. ``released_reads``: (path, pid) of every read of a released file;
    ``reads``: reads per path of the other files."""

    def __init__(self, root: Path, deny: bool = True) -> None:
        self.root = root
        self.deny = deny
        self.released_reads: list[tuple[str, int]] = []
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._mounted = False

    def __enter__(self) -> ReadGuard:
        subprocess.run(["mount", "--bind", str(self.root), str(self.root)], check=True)
        self._mounted = True
        try:
            fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | os.O_LARGEFILE)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "fanotify_init")
            self._fd = fd
            if _libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_ACCESS_PERM, AT_FDCWD,
                                   os.fsencode(self.root)) != 0:
                raise OSError(ctypes.get_errno(), "fanotify_mark")
            self._thread = threading.Thread(target=self._listen, name="hsm-read-guard", daemon=True)
            self._thread.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._fd >= 0:
            os.close(self._fd)  # pending permission events are allowed by the kernel
            self._fd = -1
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=True)
            self._mounted = False

    def reset(self) -> None:
        with self._lock:
            self.released_reads.clear()
            self.reads.clear()

    def _listen(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            off = 0
            while off + _META.size <= len(buf):
                length, _vers, _res, _mlen, mask, efd, pid = _META.unpack_from(buf, off)
                off += length
                if efd < 0:
                    continue
                answer = FAN_ALLOW
                try:
                    if mask & FAN_ACCESS_PERM:
                        path = os.readlink(f"/proc/self/fd/{efd}")
                        with self._lock:
                            if released(efd):
                                self.released_reads.append((path, pid))
                                if self.deny:
                                    answer = FAN_DENY
                            else:
                                self.reads[path] += 1
                finally:
                    try:
                        os.write(self._fd, struct.pack("=iI", efd, answer))
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:  # the reader went away meanwhile
                            raise
                    os.close(efd)
