"""The Linux fanotify binding: a filesystem-wide mark reporting directory handles and names.

Only what the watcher needs, through ctypes on the C library (``fanotify_init``, ``fanotify_mark``,
``open_by_handle_at``; glibc exports them since 2.14); constant values and struct layouts from
``<linux/fanotify.h>`` and ``<fcntl.h>``. Events are read from the group's descriptor with ``os.read`` and
parsed by :func:`parse_events` with unaligned reads (info records are 4-byte aligned only).

A group made here reports, for each event, the directory's file handle and the entry name
(``FAN_REPORT_DFID_NAME``), the object's own handle (``FAN_REPORT_FID``, ``FAN_REPORT_TARGET_FID``:
also for the child of a directory-entry event), never an open descriptor. Needs CAP_SYS_ADMIN (the
filesystem mark) and, to turn handles back into paths, CAP_DAC_READ_SEARCH.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

FAN_CLOEXEC = 0x001
FAN_NONBLOCK = 0x002
FAN_UNLIMITED_QUEUE = 0x010
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_TARGET_FID = 0x1000
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

FAN_MARK_ADD = 0x01
FAN_MARK_FILESYSTEM = 0x100

FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_DELETE_SELF = 0x400
FAN_MOVE_SELF = 0x800
FAN_Q_OVERFLOW = 0x4000
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000

#: What the watcher asks for: every change of a name, of data or of attributes, directories included.
WATCH_MASK = (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_ATTRIB
              | FAN_CLOSE_WRITE | FAN_ONDIR)
#: The same with a rename as one event naming both the old and the new directory and name (Linux 5.17+),
#: instead of a departure and an arrival.
WATCH_MASK_RENAME = (WATCH_MASK & ~(FAN_MOVED_FROM | FAN_MOVED_TO)) | FAN_RENAME

INFO_FID = 1
INFO_DFID_NAME = 2
INFO_DFID = 3
INFO_OLD_DFID_NAME = 10
INFO_NEW_DFID_NAME = 12

_META = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HDR = struct.Struct("=BBH")  # info_type, pad, len
_FH_HDR = struct.Struct("=Ii")  # handle_bytes, handle_type
METADATA_VERSION = 3


@dataclass(frozen=True, slots=True)
class Handle:
    """A kernel file handle: ``(fsid, type, bytes)``, comparable and hashable."""

    fsid: bytes
    type: int
    data: bytes

    def hex(self) -> str:
        return f"{self.fsid.hex()}:{self.type}:{self.data.hex()}"

    @classmethod
    def from_hex(cls, text: str) -> Handle:
        fsid, typ, data = text.split(":")
        return cls(bytes.fromhex(fsid), int(typ), bytes.fromhex(data))


@dataclass(frozen=True, slots=True)
class Event:
    """One event as read: its mask, the directory handle and entry name (None without one), the object's
    handle (None without one). ``name`` is ``b"."`` for an event on a directory itself. A FAN_RENAME event
    names the new directory and name in ``dir``/``name`` and the old ones in ``old_dir``/``old_name``."""

    mask: int
    dir: Handle | None
    name: bytes | None
    obj: Handle | None
    old_dir: Handle | None = None
    old_name: bytes | None = None


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # The C library is already loaded in this process: its symbols, without looking for its file
        # (ctypes.util.find_library runs ldconfig, and importing it costs 5 ms of every command's start).
        lib = ctypes.CDLL(None, use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        lib.fanotify_mark.restype = ctypes.c_int
        lib.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        lib.open_by_handle_at.restype = ctypes.c_int
        _libc = lib
    return _libc


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def open_group(path: bytes, *, unlimited: bool = False, rename: bool = True) -> tuple[int, int]:
    """A non-blocking fanotify descriptor with a filesystem mark on the filesystem holding ``path``, and the
    mask of the mark.

    ``unlimited`` lifts the queue limit (FAN_UNLIMITED_QUEUE); otherwise a full queue drops events and
    reports FAN_Q_OVERFLOW. ``rename``: ask for FAN_RENAME events (:data:`WATCH_MASK_RENAME`) when the kernel
    has them, else departures and arrivals (:data:`WATCH_MASK`). OSError (EPERM without CAP_SYS_ADMIN, EINVAL
    on a kernel older than 5.9, ENODEV/EOPNOTSUPP/EXDEV on a filesystem that cannot report handles) when it
    cannot be made.
    """
    lib = _lib()
    flags = (FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID
             | (FAN_UNLIMITED_QUEUE if unlimited else 0))
    fd = _check(lib.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE), "fanotify_init")
    try:
        for mask in (WATCH_MASK_RENAME, WATCH_MASK) if rename else (WATCH_MASK,):
            rc = lib.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, -100, path)
            # EINVAL with FAN_RENAME: a kernel before 5.17 (the mark is then tried without it).
            if rc < 0 and mask == WATCH_MASK_RENAME and ctypes.get_errno() == errno.EINVAL:
                continue
            _check(rc, "fanotify_mark")
            return fd, mask
        raise OSError(errno.EINVAL, "fanotify_mark: no mask accepted")
    except BaseException:
        os.close(fd)
        raise


def read_events(fd: int, size: int = 1 << 16) -> list[Event]:
    """Every event that fits in one read of ``size`` bytes; [] when none is queued (EAGAIN)."""
    try:
        buf = os.read(fd, size)
    except BlockingIOError:
        return []
    return parse_events(buf)


def parse_events(buf: bytes) -> list[Event]:
    """Parse the bytes of one ``read`` of a fanotify descriptor (see the module doc)."""
    out: list[Event] = []
    pos = 0
    end = len(buf)
    while pos + _META.size <= end:
        event_len, vers, _, meta_len, mask, fd, _pid = _META.unpack_from(buf, pos)
        if vers != METADATA_VERSION or event_len < meta_len:
            raise OSError(errno.EPROTO, f"fanotify metadata version {vers}, expected {METADATA_VERSION}")
        if fd >= 0:
            os.close(fd)  # never asked for, but never leaked
        dir_h: Handle | None = None
        name: bytes | None = None
        obj: Handle | None = None
        old_h: Handle | None = None
        old_name: bytes | None = None
        ipos = pos + meta_len
        stop = pos + event_len
        while ipos + _INFO_HDR.size <= stop:
            itype, _, ilen = _INFO_HDR.unpack_from(buf, ipos)
            if ilen < _INFO_HDR.size:
                break
            if itype in (INFO_FID, INFO_DFID_NAME, INFO_DFID, INFO_OLD_DFID_NAME, INFO_NEW_DFID_NAME):
                fsid = buf[ipos + 4:ipos + 12]
                hbytes, htype = _FH_HDR.unpack_from(buf, ipos + 12)
                hstart = ipos + 20
                handle = Handle(fsid, htype, buf[hstart:hstart + hbytes])
                entry = buf[hstart + hbytes:ipos + ilen].split(b"\0", 1)[0]
                if itype == INFO_FID:
                    obj = handle
                elif itype == INFO_OLD_DFID_NAME:
                    old_h, old_name = handle, entry
                else:
                    dir_h = handle
                    if itype != INFO_DFID:
                        name = entry
            ipos += ilen
        out.append(Event(mask, dir_h, name, obj, old_h, old_name))
        pos += event_len
    return out


class _FileHandle(ctypes.Structure):
    # Bytes, not c_char: a c_char array is filled like a C string and would stop at the handle's first NUL.
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


def open_handle(mount_fd: int, handle: Handle, flags: int = os.O_RDONLY | os.O_DIRECTORY) -> int:
    """``open_by_handle_at`` of ``handle`` on the filesystem of ``mount_fd``; OSError (ESTALE: the object is
    gone) otherwise."""
    if len(handle.data) > 128:
        raise OSError(errno.EOVERFLOW, f"file handle of {len(handle.data)} bytes")
    fh = _FileHandle(len(handle.data), handle.type)
    ctypes.memmove(fh.f_handle, handle.data, len(handle.data))
    return _check(_lib().open_by_handle_at(mount_fd, ctypes.byref(fh), flags | os.O_CLOEXEC), "open_by_handle_at")


def handle_of(path: bytes) -> Handle:
    """The file handle of ``path`` (``name_to_handle_at``, the symlink itself when it is one), as fanotify
    reports it."""
    lib = _lib()
    lib.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    fh = _FileHandle(128, 0)
    mount_id = ctypes.c_int()
    _check(lib.name_to_handle_at(-100, path, ctypes.byref(fh), ctypes.byref(mount_id), 0), "name_to_handle_at")
    return Handle(fsid_of(path), fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]))


def fsid_of(path: bytes) -> bytes:
    """The filesystem id fanotify reports for ``path``'s filesystem (``statfs().f_fsid``, 8 bytes)."""

    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_ulong),
                    ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                    ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
                    ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]

    lib = _lib()
    lib.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    buf = _Statfs()
    _check(lib.statfs(path, ctypes.byref(buf)), "statfs")
    return bytes(buf.f_fsid)
