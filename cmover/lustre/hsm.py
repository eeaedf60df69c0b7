"""Lustre HSM and FIDs through liblustreapi: state, marking, import of released stubs, FIDs.

Bound only when the loaded library has the symbols (:func:`bind` returns None otherwise), with the
real prototypes (lustreapi.h): every function returns 0 or a negative errno, which becomes an
:class:`OSError` naming the path. Nothing here reads a byte of file data: the state is read with
``llapi_hsm_state_get_fd`` (an ioctl) on a descriptor opened ``O_RDONLY|O_NONBLOCK``, and neither
``open`` nor ``stat`` restores a released file. (What does -- ``read``, ``lseek(SEEK_DATA/SEEK_HOLE)``,
``mmap``, truncate, ``fallocate`` -- is for the caller to avoid on a released file.)

FIDs are written in the form ``lhsmtool_posix --rebind`` reads from every Lustre release that has it:
``0x<seq>:0x<oid>:0x<ver>`` without brackets (``SFID``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from ctypes import POINTER, Structure, byref, c_char_p, c_int, c_uint, c_uint32, c_uint64, c_ulonglong, c_void_p
from typing import Any

from cmover.lustre import llapi
from cmover.lustre.hsmstate import (  # noqa: F401 (re-exported: the state as the HSM binding reads it)
    CARRIED,
    HS_ARCHIVED,
    HS_DIRTY,
    HS_EXISTS,
    HS_LOST,
    HS_NOARCHIVE,
    HS_NORELEASE,
    HS_RELEASED,
    NONE,
    HsmState,
)
from cmover.lustre.llapi import Library, fd_path

_OPEN_STATE = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC  # what llapi_hsm_state_get opens with
_STAT_BUF = 256  # struct stat is 144 bytes on x86_64 and 128 on arm64


class LuFid(Structure):
    _pack_ = 1
    _fields_ = [("f_seq", c_uint64), ("f_oid", c_uint32), ("f_ver", c_uint32)]


class HsmUserState(Structure):
    """``struct hsm_user_state`` (32 bytes, not packed); the library fills states and archive id."""

    _fields_ = [("hus_states", c_uint32), ("hus_archive_id", c_uint32), ("hus_in_progress_state", c_uint32),
                ("hus_in_progress_action", c_uint32), ("hus_location_offset", c_uint64),
                ("hus_location_length", c_uint64)]


assert ctypes.sizeof(LuFid) == 16 and ctypes.sizeof(HsmUserState) == 32

_FUNCS: dict[str, tuple[Any, list[Any]]] = {
    "llapi_hsm_state_get_fd": (c_int, [c_int, POINTER(HsmUserState)]),  # 2.5
    "llapi_hsm_state_set_fd": (c_int, [c_int, c_uint64, c_uint64, c_uint32]),  # 2.5
    "llapi_hsm_import": (c_int, [c_char_p, c_int, c_void_p, c_ulonglong, c_int, c_int, c_uint, c_char_p,
                                 POINTER(LuFid)]),  # 2.4; the pattern is an enum (int-sized)
    "llapi_fd2fid": (c_int, [c_int, POINTER(LuFid)]),  # 2.4
}


def fid_text(fid: LuFid) -> str:
    """``SFID``: ``0x%llx:0x%x:0x%x`` (no brackets), what every ``lhsmtool_posix --rebind`` parses."""
    return f"{fid.f_seq:#x}:{fid.f_oid:#x}:{fid.f_ver:#x}"


def _check(rc: int, path: str | bytes, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}", os.fsdecode(path))


class Hsm:
    """The HSM functions of a loaded library. Construct with :func:`bind`."""

    def __init__(self, lib: Library) -> None:
        self.lib = lib
        self._fn: Any = lib._lib  # the CDLL, already loaded by Library
        for name, (restype, argtypes) in _FUNCS.items():
            fn = getattr(self._fn, name)
            fn.restype, fn.argtypes = restype, argtypes
        libc = ctypes.CDLL(None, use_errno=True)
        self._fstat = libc.fstat  # glibc 2.33+: the platform's own struct stat for llapi_hsm_import
        self._fstat.argtypes, self._fstat.restype = [c_int, c_void_p], c_int

    def state(self, fd: int, path: str | bytes = "") -> HsmState:
        """HSM state of open regular file ``fd``. ``ENODATA`` (no HSM attributes) reads as never archived."""
        hus = HsmUserState()
        with llapi.lock():
            rc = self._fn.llapi_hsm_state_get_fd(fd, byref(hus))
        if rc == -errno.ENODATA:
            return NONE
        _check(rc, path or fd_path(fd), "llapi_hsm_state_get_fd")
        return HsmState(hus.hus_states, hus.hus_archive_id) if hus.hus_states else NONE

    def state_at(self, dir_fd: int, name: str) -> HsmState:
        """HSM state of regular file ``name`` in ``dir_fd``: opened without following a symlink,
        ``O_NONBLOCK`` as the library's own getter does (no restore at open)."""
        fd = os.open(name, _OPEN_STATE, dir_fd=dir_fd)
        try:
            return self.state(fd, fd_path(dir_fd, name))
        finally:
            os.close(fd)

    def set_state(self, fd: int, setmask: int, clearmask: int, archive_id: int) -> None:
        """Set and clear HSM flags of open file ``fd`` (archive id 0: unchanged). Needs CAP_SYS_ADMIN for
        any flag but NORELEASE/NOARCHIVE/DIRTY (``EPERM``)."""
        with llapi.lock():
            rc = self._fn.llapi_hsm_state_set_fd(fd, setmask, clearmask, archive_id)
        _check(rc, fd_path(fd), "llapi_hsm_state_set_fd")

    def fid(self, fd: int) -> str:
        """The FID of open ``fd`` in ``SFID`` form (see :func:`fid_text`)."""
        fid = LuFid()
        with llapi.lock():
            rc = self._fn.llapi_fd2fid(fd, byref(fid))
        _check(rc, fd_path(fd), "llapi_fd2fid")
        return fid_text(fid)

    def import_stub(self, dir_fd: int, name: str, src_fd: int, archive_id: int, stripe_size: int,
                    stripe_count: int, pool: str | None) -> str:
        """Create ``name`` in ``dir_fd`` as a released stub of open source ``src_fd`` bound to archive
        ``archive_id`` (``llapi_hsm_import``): the source's size, owner, mode and atime/mtime in ns, no
        data, the given striping; return its new FID. The source's ``struct stat`` is read with the
        platform's ``fstat`` (no data is read). On failure the library removes what it created;
        ``EEXIST`` when ``name`` exists.
        """
        st = ctypes.create_string_buffer(_STAT_BUF)
        if self._fstat(src_fd, st) != 0:
            code = ctypes.get_errno() or errno.EIO
            raise OSError(code, os.strerror(code), os.fsdecode(fd_path(src_fd)))
        path = fd_path(dir_fd, name)
        fid = LuFid()
        with llapi.lock():
            rc = self._fn.llapi_hsm_import(path, archive_id, st, stripe_size, -1, stripe_count, 0,
                                           pool.encode() if pool else None, byref(fid))
        _check(rc, path, "llapi_hsm_import")
        return fid_text(fid)


_bound: weakref.WeakKeyDictionary[Library, Hsm | None] = weakref.WeakKeyDictionary()


def bind(lib: Library) -> Hsm | None:
    """The HSM functions of ``lib`` (bound once per library), or None when it lacks any of them (nothing
    HSM is done then)."""
    with llapi.lock():
        if lib not in _bound:
            _bound[lib] = Hsm(lib) if all(hasattr(lib._lib, n) for n in _FUNCS) else None
        return _bound[lib]
