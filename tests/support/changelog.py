"""The MDS side of Lustre changelogs for the liblustreapi stand-in: users, and the records of the changes tests make.

The stand-in (tests/lustre_standin/standin_changelog.c) reads each MDT's stored records from
``$STANDIN_CHANGELOG_DIR/<FSNAME>-MDTxxxx.log`` and its users from ``<...>.users``. :class:`Mds` writes both
under the MDT's lock, as the MDS would: ``register``/``deregister`` (``lctl changelog_register`` /
``_deregister``: the first user turns the log on with a CL_MARK record, a new user starts at the current
index, the last one leaving turns it off and drops everything), and :meth:`Mds.emit` appends one record in
the real binary layout (struct changelog_rec, then the rename, jobid, extra-flags, uid/gid, NID, open-mode
and xattr extensions as its flags place them, then the name) with the next index of its MDT; nothing is
stored while an MDT has no user.

:class:`ChangingFs` makes changes on a fake-Lustre tree and emits the records Lustre would for each (see
``docs`` §2.5): CREAT/MKDIR/SLINK/MKNOD with the new object and parent + name; HLINK with the linked object
and the new name; UNLNK/RMDIR with CLF_UNLINK_LAST when the last link went; one RENME per rename (the
overwritten target as tfid, the new parent and name, the rename extension with the moved object, the old
parent and the old name); SATTR for chmod/chown, MTIME for a time change, XATTR (with the xattr extension)
for set/remove xattr and ACLs, TRUNC, CLOSE after a write. FIDs follow the stand-in's rule
(:func:`support.lustre.expected_fid`). A namespace record goes to the MDT of its parent directory, a data
record to the MDT of its object, an MDT being chosen by a hash of the directory's FID (as if every directory
were placed by its FID on a DNE filesystem), so records of one tree spread over every MDT.
"""

from __future__ import annotations

import fcntl
import os
import random
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import mutations
from support.lustre import expected_fid

CL_MARK, CL_CREATE, CL_MKDIR, CL_HARDLINK, CL_SOFTLINK, CL_MKNOD, CL_UNLINK, CL_RMDIR, CL_RENAME = range(9)
CL_OPEN, CL_CLOSE, CL_LAYOUT, CL_TRUNC, CL_SETATTR, CL_XATTR, CL_HSM, CL_MTIME, CL_CTIME, CL_ATIME = range(10, 20)
CLF_VERSION, CLF_RENAME, CLF_JOBID, CLF_EXTRA_FLAGS = 0x1000, 0x2000, 0x4000, 0x8000
CLF_UNLINK_LAST = CLF_RENAME_LAST = 0x0001
CLFE_UIDGID, CLFE_NID, CLFE_OPEN, CLFE_XATTR = 1, 2, 4, 8
CLM_START = 0x10000
ZERO_FID = (0, 0, 0)

Fid = tuple[int, int, int]


def fid_of(path: str | bytes | Path) -> Fid:
    seq, oid, ver = (int(x, 16) for x in expected_fid(Path(os.fsdecode(path))).split(":"))
    return seq, oid, ver


def _fid(f: Fid) -> bytes:
    return struct.pack("<QII", *f)


def pack_record(rtype: int, index: int, tfid: Fid = ZERO_FID, pfid: Fid = ZERO_FID, name: bytes = b"", *,
                flags: int = 0, sfid: Fid | None = None, spfid: Fid = ZERO_FID, sname: bytes = b"",
                jobid: bytes | None = b"cmover-test", extra: int | None = CLFE_UIDGID | CLFE_NID,
                uid: int = 0, gid: int = 0, openflags: int = 0, xattr: bytes = b"", time_ns: int | None = None,
                markerflags: int = 0) -> bytes:
    """One record in the device stream's layout (``docs`` §2.3): the 64-byte struct changelog_rec, the
    extensions in their order as ``flags``/``extra`` place them, then the name (``new NUL old`` for a rename)."""
    t = time.time_ns() if time_ns is None else time_ns
    crf = CLF_VERSION | (flags & 0x0FFF)
    ext = b""
    if sfid is not None:
        crf |= CLF_RENAME
        ext += _fid(sfid) + _fid(spfid)
        name = name + b"\0" + sname
    if jobid is not None:
        crf |= CLF_JOBID
        ext += jobid[:31].ljust(32, b"\0")
    if extra is not None:
        crf |= CLF_EXTRA_FLAGS
        if xattr:
            extra |= CLFE_XATTR
        if openflags:
            extra |= CLFE_OPEN
        ext += struct.pack("<Q", extra)
        if extra & CLFE_UIDGID:
            ext += struct.pack("<QQ", uid, gid)
        if extra & CLFE_NID:
            ext += struct.pack("<QQI4x", 0x2_0000_c0a8_0001, 0, 0)  # 192.168.0.1@tcp, padded to 24 bytes
        if extra & CLFE_OPEN:
            ext += struct.pack("<I", openflags)
        if extra & CLFE_XATTR:
            ext += xattr[:255].ljust(256, b"\0")
    cr_time = ((t // 10**9) << 30) + t % 10**9
    target = struct.pack("<I12x", markerflags) if rtype == CL_MARK else _fid(tfid)
    head = struct.pack("<HHIQQQ", len(name), crf, rtype, index, 0, cr_time) + target + _fid(pfid)
    assert len(head) == 64
    return head + ext + name


class Mds:
    """The changelogs of fake fs ``fsname`` (``mdts`` MDTs) kept in ``directory`` (``STANDIN_CHANGELOG_DIR``)."""

    def __init__(self, directory: Path, fsname: str, mdts: int) -> None:
        self.dir = directory
        self.fsname = fsname
        self.mdts = mdts
        directory.mkdir(parents=True, exist_ok=True)

    def device(self, mdt: int) -> str:
        return f"{self.fsname}-MDT{mdt:04x}"

    def _file(self, mdt: int, ext: str) -> Path:
        return self.dir / f"{self.device(mdt)}.{ext}"

    @contextmanager
    def _locked(self, mdt: int) -> Iterator[None]:
        with open(self._file(mdt, "lock"), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            yield

    def state(self, mdt: int) -> tuple[int, int, dict[int, int]]:
        """(last index, next user id, {user id: cleared up to}) of ``mdt``."""
        index, nxt, users = 0, 1, {}
        try:
            text = self._file(mdt, "users").read_text()
        except FileNotFoundError:
            return index, nxt, users
        for line in text.splitlines():
            key, _, val = line.partition(" ")
            if key == "index":
                index = int(val)
            elif key == "next":
                nxt = int(val)
            elif key.startswith("cl"):
                users[int(key[2:])] = int(val)
        return index, nxt, users

    def _write_state(self, mdt: int, index: int, nxt: int, users: dict[int, int]) -> None:
        text = f"index {index}\nnext {nxt}\n" + "".join(f"cl{u} {e}\n" for u, e in sorted(users.items()))
        tmp = self._file(mdt, "users.tmp")
        tmp.write_text(text)
        tmp.rename(self._file(mdt, "users"))

    def records(self, mdt: int) -> bytes:
        try:
            return self._file(mdt, "log").read_bytes()
        except FileNotFoundError:
            return b""

    def register(self, mdt: int) -> str:
        """``lctl --device FSNAME-MDTxxxx changelog_register``: the new user's id ``clN``."""
        with self._locked(mdt):
            index, nxt, users = self.state(mdt)
            if not users:  # turning the log on writes a CL_MARK (mdd_changelog_write_header)
                index += 1
                with open(self._file(mdt, "log"), "ab") as f:
                    f.write(pack_record(CL_MARK, index, name=self.device(mdt).encode(), markerflags=CLM_START,
                                        jobid=None, extra=None))
            users[nxt] = index
            self._write_state(mdt, index, nxt + 1, users)
            return f"cl{nxt}"

    def deregister(self, mdt: int, user: str) -> None:
        """``changelog_deregister clN`` (or the GC's force-deregistration): records nobody needs are purged."""
        with self._locked(mdt):
            index, nxt, users = self.state(mdt)
            del users[int(user[2:])]
            self._write_state(mdt, index, nxt, users)
            self._purge(mdt, min(users.values()) if users else index)

    def purge(self, mdt: int, upto: int) -> None:
        """Drop the stored records up to index ``upto`` whatever the users (what a lost log looks like)."""
        with self._locked(mdt):
            self._purge(mdt, upto)

    def _purge(self, mdt: int, upto: int) -> None:
        data = self.records(mdt)
        keep, at = [], 0
        while at < len(data):
            size = record_size(data, at)
            if struct.unpack_from("<Q", data, at + 8)[0] > upto:
                keep.append(data[at:at + size])
            at += size
        tmp = self._file(mdt, "log.tmp")
        tmp.write_bytes(b"".join(keep))
        tmp.rename(self._file(mdt, "log"))

    def emit(self, mdt: int, rtype: int, **fields) -> int | None:
        """Append one record to ``mdt`` with its next index (None: the MDT has no user, nothing is stored)."""
        with self._locked(mdt):
            index, nxt, users = self.state(mdt)
            if not users:
                return None
            index += 1
            with open(self._file(mdt, "log"), "ab") as f:
                f.write(pack_record(rtype, index, **fields))
            self._write_state(mdt, index, nxt, users)
            return index


def record_size(data: bytes, at: int = 0) -> int:
    """Bytes of the stored record at ``at`` (its header, extensions and name)."""
    namelen, crf = struct.unpack_from("<HH", data, at)
    off = 64 + (32 if crf & CLF_RENAME else 0) + (32 if crf & CLF_JOBID else 0)
    if crf & CLF_EXTRA_FLAGS:
        extra = struct.unpack_from("<Q", data, at + off)[0]
        off += 8 + sum(size for bit, size in ((CLFE_UIDGID, 16), (CLFE_NID, 24), (CLFE_OPEN, 4), (CLFE_XATTR, 256))
                       if extra & bit)
    return off + namelen


class ChangingFs(mutations.PlainFs):
    """Changes on the fake-Lustre tree ``root`` (a fake fs of ``mds``), each with the records Lustre would write."""

    def __init__(self, mds: Mds, root: bytes) -> None:
        self.mds = mds
        self.root = root

    def mdt_of(self, fid: Fid) -> int:
        return (fid[1] * 2654435761 + fid[0]) % self.mds.mdts

    def _ns(self, rtype: int, path: bytes, tfid: Fid, **kw) -> None:
        parent, name = os.path.split(path)
        pfid = fid_of(parent)
        st = os.lstat(path) if os.path.lexists(path) else None
        self.mds.emit(self.mdt_of(pfid), rtype, tfid=tfid, pfid=pfid, name=name, uid=st.st_uid if st else 0,
                      gid=st.st_gid if st else 0, **kw)

    def _data(self, rtype: int, path: bytes, **kw) -> None:
        tfid = fid_of(path)
        self.mds.emit(self.mdt_of(tfid), rtype, tfid=tfid, **kw)

    # -- namespace --

    def write(self, path: bytes, data: bytes) -> None:
        """Create ``path`` (CREAT) or rewrite it in place (truncating: TRUNC), then CLOSE."""
        new = not os.path.lexists(path)
        with open(path, "xb" if new else "r+b") as f:
            f.write(data)
            if not new and f.tell() < os.fstat(f.fileno()).st_size:
                f.truncate()
                self._data(CL_TRUNC, path)
        if new:
            self._ns(CL_CREATE, path, fid_of(path))
        self._data(CL_CLOSE, path, openflags=os.O_WRONLY)

    def mkdir(self, path: bytes) -> None:
        os.mkdir(path)
        self._ns(CL_MKDIR, path, fid_of(path))

    def symlink(self, target: bytes, path: bytes) -> None:
        os.symlink(target, path)
        self._ns(CL_SOFTLINK, path, fid_of(path))

    def mkfifo(self, path: bytes) -> None:
        os.mkfifo(path)
        self._ns(CL_MKNOD, path, fid_of(path))

    def link(self, src: bytes, path: bytes) -> None:
        os.link(src, path)
        self._ns(CL_HARDLINK, path, fid_of(path))

    def unlink(self, path: bytes) -> None:
        tfid, st = fid_of(path), os.lstat(path)
        parent, name = os.path.split(path)
        pfid = fid_of(parent)
        os.unlink(path)
        self.mds.emit(self.mdt_of(pfid), CL_UNLINK, tfid=tfid, pfid=pfid, name=name,
                      flags=CLF_UNLINK_LAST if st.st_nlink == 1 else 0)

    def rmdir(self, path: bytes) -> None:
        tfid = fid_of(path)
        parent, name = os.path.split(path)
        pfid = fid_of(parent)
        os.rmdir(path)
        self.mds.emit(self.mdt_of(pfid), CL_RMDIR, tfid=tfid, pfid=pfid, name=name, flags=CLF_UNLINK_LAST)

    def rename(self, old: bytes, new: bytes) -> None:
        """One RENME record on the new parent's MDT (the overwritten target, if any, as its tfid)."""
        sfid = fid_of(old)
        spfid = fid_of(os.path.dirname(old))
        over = os.lstat(new) if os.path.lexists(new) else None
        tfid = fid_of(new) if over else ZERO_FID
        last = over is not None and (over.st_nlink == 1 or stat.S_ISDIR(over.st_mode))
        os.rename(old, new)
        parent, name = os.path.split(new)
        pfid = fid_of(parent)
        self.mds.emit(self.mdt_of(pfid), CL_RENAME, tfid=tfid, pfid=pfid, name=name, sfid=sfid, spfid=spfid,
                      sname=os.path.basename(old), flags=CLF_RENAME_LAST if last else 0)

    # -- attributes and data --

    def chmod(self, path: bytes, mode: int) -> None:
        os.chmod(path, mode)
        self._data(CL_SETATTR, path)

    def chown(self, path: bytes, uid: int, gid: int) -> None:
        os.lchown(path, uid, gid)
        self._data(CL_SETATTR, path)

    def utime(self, path: bytes, ns: tuple[int, int]) -> None:
        os.utime(path, ns=ns, follow_symlinks=False)
        self._data(CL_MTIME, path)

    def setxattr(self, path: bytes, name: str, value: bytes) -> None:
        os.setxattr(path, name, value, follow_symlinks=False)
        self._data(CL_XATTR, path, xattr=name.encode())

    def removexattr(self, path: bytes, name: str) -> None:
        os.removexattr(path, name, follow_symlinks=False)
        self._data(CL_XATTR, path, xattr=name.encode())

    def setfacl(self, path: bytes, *args: str) -> None:
        subprocess.run(["setfacl", *args, os.fsdecode(path)], check=True)
        self._data(CL_XATTR, path, xattr=b"system.posix_acl_access")




def mutate(fs: ChangingFs, rng: random.Random, n: int) -> list[str]:
    """``n`` random changes of every kind (support.mutations), each through ``fs``, so with its records."""
    return mutations.mutate(fs, rng, n, prefix=b"c")
