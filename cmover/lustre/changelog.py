"""Lustre changelogs and ``fid2path`` through liblustreapi: reading, clearing, parsing records.

Bound only when the loaded library has the symbols (:func:`bind` returns None otherwise), with the real
prototypes (lustreapi.h, ``docs`` §2.1/§2.8): ``llapi_changelog_start`` opens a reader of one MDT
(``FSNAME-MDTxxxx``) from record ``startrec`` on (0: the oldest stored), ``llapi_changelog_recv`` hands back
one record at a time (0: a record, 1: the end, a negative errno: a failure), each freed with
``llapi_changelog_free``; ``llapi_changelog_fini`` closes the reader; ``llapi_changelog_clear`` lets the
MDT purge a user's records up to an index; ``llapi_fid2path`` gives the names of a FID relative to the
mount. Every failure becomes an :class:`OSError`.

A record is parsed from its own flags (:func:`parse`): the rename extension, the jobid and the extra flags
(uid/gid, NID, open mode, xattr name) are placed back to back after the 64-byte ``struct changelog_rec`` as
``cr_flags`` and ``cr_extra_flags`` say, the name last (for a rename ``new NUL old``). Libraries 2.7-2.15
give every record a rename extension (zero-filled when it is no rename): only ``CL_RENAME`` records are
read as renames.

The readers of different MDTs run in parallel threads: each reader's state is its own ``priv`` and
``fid2path`` keeps none, so these calls are not serialised by the library lock (which guards the layout
API's shared cursor and message level).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from ctypes import POINTER, byref, c_char_p, c_int, c_longlong, c_uint, c_void_p, create_string_buffer
from dataclasses import dataclass
from typing import Any

from cmover.lustre import llapi
from cmover.lustre.llapi import Library

# enum changelog_rec_type
CL_MARK, CL_CREATE, CL_MKDIR, CL_HARDLINK, CL_SOFTLINK, CL_MKNOD, CL_UNLINK, CL_RMDIR, CL_RENAME, CL_EXT = range(10)
CL_OPEN, CL_CLOSE, CL_LAYOUT, CL_TRUNC, CL_SETATTR, CL_XATTR, CL_HSM, CL_MTIME, CL_CTIME, CL_ATIME = range(10, 20)
CL_MIGRATE, CL_FLRW, CL_RESYNC, CL_GETXATTR, CL_DN_OPEN = range(20, 25)
TYPE_NAMES = ("MARK", "CREAT", "MKDIR", "HLINK", "SLINK", "MKNOD", "UNLNK", "RMDIR", "RENME", "RNMTO", "OPEN",
              "CLOSE", "LYOUT", "TRUNC", "SATTR", "XATTR", "HSM", "MTIME", "CTIME", "ATIME", "MIGRT", "FLRW",
              "RESYNC", "GXATR", "NOPEN")
# enum changelog_rec_flags (cr_flags)
CLF_VERSION, CLF_RENAME, CLF_JOBID, CLF_EXTRA_FLAGS = 0x1000, 0x2000, 0x4000, 0x8000
CLF_FLAGMASK = 0x0FFF
CLF_UNLINK_LAST = 0x0001
# enum changelog_rec_extra_flags (cr_extra_flags) = enum changelog_send_extra_flag
CLFE_UIDGID, CLFE_NID, CLFE_OPEN, CLFE_XATTR = 0x1, 0x2, 0x4, 0x8
# enum changelog_send_flag
CHANGELOG_FLAG_JOBID, CHANGELOG_FLAG_EXTRA_FLAGS = 0x04, 0x08
CR_MAXSIZE = 952
REC_SIZE = 64
_EXTRA = ((CLFE_UIDGID, 16), (CLFE_NID, 24), (CLFE_OPEN, 4), (CLFE_XATTR, 256))
ZERO_FID = "0:0x0:0x0"  # DFID of a zero FID, without brackets

_FUNCS: dict[str, tuple[Any, list[Any]]] = {
    "llapi_changelog_start": (c_int, [POINTER(c_void_p), c_uint, c_char_p, c_longlong]),
    "llapi_changelog_recv": (c_int, [c_void_p, POINTER(c_void_p)]),
    "llapi_changelog_free": (c_int, [POINTER(c_void_p)]),
    "llapi_changelog_fini": (c_int, [POINTER(c_void_p)]),
    "llapi_changelog_clear": (c_int, [c_char_p, c_char_p, c_longlong]),
    "llapi_fid2path": (c_int, [c_char_p, c_char_p, c_char_p, c_int, POINTER(c_longlong), POINTER(c_int)]),
}
_SET_XFLAGS = ("llapi_changelog_set_xflags", c_int, [c_void_p, c_uint])  # 2.11


@dataclass(frozen=True, slots=True)
class Record:
    """One changelog record. FIDs in ``SFID`` form without brackets (``0x200000400:0x2:0x0``; zero:
    :data:`ZERO_FID`); ``sfid``/``spfid``/``sname`` only for a rename; ``time_ns`` from ``cr_time``."""

    index: int
    type: int
    flags: int  # the per-type low bits (CLF_UNLINK_LAST, CLF_RENAME_LAST, ...)
    time_ns: int
    tfid: str
    pfid: str
    name: bytes
    sfid: str = ZERO_FID
    spfid: str = ZERO_FID
    sname: bytes = b""
    jobid: bytes = b""
    uid: int | None = None
    gid: int | None = None
    xattr: bytes = b""

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type] if 0 <= self.type < len(TYPE_NAMES) else f"type{self.type}"


def fid_str(seq: int, oid: int, ver: int) -> str:
    """``DFID`` without brackets: ``%#llx:0x%x:0x%x`` (a zero sequence prints as ``0``)."""
    return f"{seq:#x}:{oid:#x}:{ver:#x}" if seq else f"0:{oid:#x}:{ver:#x}"


def _fid_at(buf: bytes, off: int) -> str:
    return fid_str(*struct.unpack_from("<QII", buf, off))


def record_size(buf: bytes) -> int:
    """``changelog_rec_size(rec) + cr_namelen``: the bytes the record occupies."""
    namelen, crf = struct.unpack_from("<HH", buf, 0)
    return _name_offset(buf, crf) + namelen


def _name_offset(buf: bytes, crf: int) -> int:
    off = REC_SIZE + (32 if crf & CLF_RENAME else 0) + (32 if crf & CLF_JOBID else 0)
    if crf & CLF_EXTRA_FLAGS:
        extra = struct.unpack_from("<Q", buf, off)[0]
        off += 8 + sum(size for bit, size in _EXTRA if extra & bit)
    return off


def parse(buf: bytes) -> Record:
    """The record in ``buf`` (at least :func:`record_size` bytes), read from its own ``cr_flags`` and
    ``cr_extra_flags`` (``docs`` §2.3). ValueError when the flags place the name beyond CR_MAXSIZE."""
    if len(buf) < REC_SIZE:
        raise ValueError(f"a changelog record of {len(buf)} bytes (< {REC_SIZE})")
    namelen, crf, rtype, index, _prev, cr_time = struct.unpack_from("<HHIQQQ", buf, 0)
    at = REC_SIZE
    sfid = spfid = ZERO_FID
    jobid = b""
    uid = gid = None
    xattr = b""
    if crf & CLF_RENAME:
        sfid, spfid = _fid_at(buf, at), _fid_at(buf, at + 16)
        at += 32
    if crf & CLF_JOBID:
        jobid = buf[at:at + 32].split(b"\0", 1)[0]
        at += 32
    if crf & CLF_EXTRA_FLAGS:
        extra = struct.unpack_from("<Q", buf, at)[0]
        at += 8
        for bit, size in _EXTRA:
            if not extra & bit:
                continue
            if bit == CLFE_UIDGID:
                uid, gid = struct.unpack_from("<QQ", buf, at)
            elif bit == CLFE_XATTR:
                xattr = buf[at:at + size].split(b"\0", 1)[0]
            at += size
    if at + namelen > min(len(buf), CR_MAXSIZE):
        raise ValueError(f"changelog record {index}: name of {namelen} bytes at {at} past the record")
    name = bytes(buf[at:at + namelen])
    sname = b""
    if rtype == CL_RENAME and crf & CLF_RENAME:
        new, sep, old = name.partition(b"\0")
        name, sname = new, old if sep else b""
    else:
        name = name.split(b"\0", 1)[0]
    tfid = "" if rtype == CL_MARK else _fid_at(buf, 32)
    return Record(index, rtype, crf & CLF_FLAGMASK, (cr_time >> 30) * 10**9 + (cr_time & 0x3FFFFFFF), tfid,
                  _fid_at(buf, 48), name, sfid, spfid, sname, jobid, uid, gid, xattr)


def _check(rc: int, what: str, where: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}", where)


class Changelog:
    """The changelog functions of a loaded library. Construct with :func:`bind`."""

    def __init__(self, lib: Library) -> None:
        self.lib = lib
        self._fn: Any = lib._lib
        for name, (restype, argtypes) in _FUNCS.items():
            fn = getattr(self._fn, name)
            fn.restype, fn.argtypes = restype, argtypes
        self._xflags = hasattr(self._fn, _SET_XFLAGS[0])
        if self._xflags:
            fn = getattr(self._fn, _SET_XFLAGS[0])
            fn.restype, fn.argtypes = _SET_XFLAGS[1], _SET_XFLAGS[2]

    def records(self, mdt: str, startrec: int = 0) -> Iterator[Record]:
        """The records of MDT ``mdt`` (``FSNAME-MDTxxxx``) from index ``startrec`` on, to the current end (no
        FOLLOW). With jobid and extra flags asked for (uid/gid and xattr names): parsing handles any mix."""
        priv = c_void_p()
        rc = self._fn.llapi_changelog_start(byref(priv), CHANGELOG_FLAG_JOBID | CHANGELOG_FLAG_EXTRA_FLAGS,
                                            mdt.encode(), startrec)
        _check(rc, "llapi_changelog_start", mdt)
        try:
            if self._xflags:
                _check(self._fn.llapi_changelog_set_xflags(priv, CLFE_UIDGID | CLFE_XATTR),
                       "llapi_changelog_set_xflags", mdt)
            rec = c_void_p()
            while True:
                rc = self._fn.llapi_changelog_recv(priv, byref(rec))
                if rc == 1:
                    return
                _check(rc, "llapi_changelog_recv", mdt)
                if not rec.value:
                    raise OSError(errno.ENOMEM, "llapi_changelog_recv: no memory for a record", mdt)
                try:
                    # The library allocates CR_MAXSIZE bytes for every record (docs §2.8).
                    buf = ctypes.string_at(rec.value, CR_MAXSIZE)
                    buf = buf[:record_size(buf)]
                finally:
                    self._fn.llapi_changelog_free(byref(rec))
                try:
                    yield parse(buf)
                except ValueError as exc:
                    raise OSError(errno.EPROTO, str(exc), mdt) from None
        finally:
            self._fn.llapi_changelog_fini(byref(priv))

    def clear(self, mdt: str, user: str, endrec: int) -> None:
        """Let MDT ``mdt`` purge the records of ``user`` (``clN``) up to ``endrec`` (> 0: 0 would mean "all",
        never wanted). ENOENT: no such user, or ``endrec`` below what it already cleared."""
        if endrec <= 0:
            raise ValueError("a changelog clear up to index 0 would clear every record")
        _check(self._fn.llapi_changelog_clear(mdt.encode(), user.encode(), endrec), "llapi_changelog_clear",
               f"{mdt} {user}")

    def fid2path(self, device: bytes, fid: str) -> list[bytes]:
        """Every name of ``fid`` relative to the mount (``b""``: the root) of the filesystem ``device`` (a
        path in the mount, or the fsname); [] when the object no longer exists (ENOENT, ESTALE)."""
        names: list[bytes] = []
        linkno = c_int(0)
        recno = c_longlong(-1)
        size = 4096
        while True:
            buf = create_string_buffer(size)
            asked = linkno.value
            rc = self._fn.llapi_fid2path(device, f"[{fid}]".encode(), buf, size, byref(recno), byref(linkno))
            if rc == -errno.ERANGE and size < (1 << 20):
                size *= 2
                linkno.value = asked
                continue
            if rc in (-errno.ENOENT, -errno.ESTALE):
                return names
            _check(rc, "llapi_fid2path", fid)
            path = buf.value
            names.append(b"" if path == b"/" else path.lstrip(b"/"))
            if linkno.value == asked or len(names) >= 4096:  # unchanged: no further link
                return names


def bind(lib: Library) -> Changelog | None:
    """The changelog functions of ``lib``, or None when it lacks any of them."""
    with llapi.lock():
        if not all(hasattr(lib._lib, n) for n in _FUNCS):
            return None
        return Changelog(lib)


def mdt_devices(fsname: str, count: int) -> list[str]:
    """The changelog device names of the ``count`` MDTs of ``fsname``: ``FSNAME-MDT0000``..."""
    return [f"{fsname}-MDT{i:04x}" for i in range(count)]
