"""The Lustre changelog backend of journal-driven passes: every MDT read in parallel, FIDs resolved to names.

:meth:`LustreJournal.read` returns every change since the last clean pass, as the normalized
:class:`~cmover.core.changes.Change` records the fanotify backend gives, or raises
:class:`~cmover.core.changes.Untrusted` with a one-line reason when any of these fails:

* every MDT of the source filesystem has a changelog user in CHANGELOG_USERS;
* the last clean pass recorded, for every MDT, the last record index it had read when it began (its
  *mark*; an MDT whose log was empty then has none);
* the user still exists and was cleared no further than cmover cleared it: ``llapi_changelog_clear`` up to
  the *floor* (the lowest mark of the tree's clean passes of every kind, what cmover clears to) succeeds
  (ENOENT means deregistered -- by an operator or the idle-user garbage collector -- or cleared further by
  someone else; clearing the same point again is harmless and refreshes the user's idle time);
* nothing was purged behind the mark: the first record the MDT still holds from the mark on has an index
  no higher than mark + 1.

One thread per MDT reads its records after the mark (``llapi_changelog_start`` from the mark) and hands them
out in ranges of :data:`RANGE` records to a shared pool of :data:`RESOLVERS` threads, which resolve the FIDs
they name with ``llapi_fid2path`` (each FID once per reading, the cache shared) and turn them into changes:

* CREAT, MKDIR, SLINK, MKNOD: the name entered its parent; HLINK: the new name entered, and every other name
  of the object is changed (so a hard-link group is always named whole);
* UNLNK, RMDIR: the name left its parent; RENME: the old name (rename extension: old parent, old name) left,
  the new one entered (an overwritten target is that same name, decided again from the source); both carry
  the moved object's FID (``obj``), which pairs them into a rename the target may replay;
* every other record (CLOSE, TRUNC, SATTR, XATTR, MTIME, CTIME, LYOUT, HSM, MIGRT, FLRW, RESYNC) changes its
  object: each of its names (``fid2path`` link by link), or the directory itself (``.``) for a directory;
  MARK, OPEN, ATIME, GXATR and NOPEN change nothing a pass copies.

A parent that no longer resolves is gone: its removal is a record of a surviving ancestor (counted as
unresolved). Records keep no order across MDTs, and need none: each name is decided from the current
state of both trees. The reading's ``marks`` (last index read per MDT) are recorded with the pass when it
completes with no failure; :meth:`LustreJournal.clear` then lets the MDTs purge up to them.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cmover.core.changes import Change, Reading, Untrusted, What
from cmover.lustre import changelog as cl
from cmover.lustre.changelog import Changelog, Record

_NOTHING = {cl.CL_MARK, cl.CL_OPEN, cl.CL_ATIME, cl.CL_GETXATTR, cl.CL_DN_OPEN}
_CREATED = {cl.CL_CREATE, cl.CL_MKDIR, cl.CL_SOFTLINK, cl.CL_MKNOD}
_REMOVED = {cl.CL_UNLINK, cl.CL_RMDIR}
GONE = "-"  # the key of a directory that no longer exists
#: Records per range handed to a resolver thread; resolver threads shared by the MDTs' readers.
RANGE = 2048
RESOLVERS = 8


def _key(path: bytes) -> str:
    return "p:" + path.hex()


def resolve_key(key: str) -> bytes | None:
    """A directory key of this backend -> its absolute path (None: gone). The FIDs are resolved while
    reading (in the MDTs' threads), so this only decodes."""
    return bytes.fromhex(key[2:]) if key.startswith("p:") else None


@dataclass(slots=True)
class _MdtReading:
    ranges: list[Future[list[Change]]] = field(default_factory=list)
    last: int = 0
    records: int = 0


class LustreJournal:
    """The changelogs of the Lustre filesystem ``fsname`` mounted at ``mount``, with ``mdts`` MDTs, read
    with the users of ``users`` (MDT device -> ``clN``)."""

    def __init__(self, chl: Changelog, fsname: str, mount: bytes, mdts: int, users: dict[str, str]) -> None:
        self.chl = chl
        self.fsname = fsname
        self.mount = mount.rstrip(b"/") or b"/"
        self.devices = cl.mdt_devices(fsname, mdts)
        self.users = {d: users[d] for d in self.devices if d in users}

    @property
    def configured(self) -> bool:
        """Whether any MDT of the filesystem has a user in CHANGELOG_USERS (cmover keeps marks for it)."""
        return bool(self.users)

    def _need_users(self) -> None:
        missing = [d for d in self.devices if d not in self.users]
        if missing:
            raise Untrusted(f"MDT {missing[0]} of {self.fsname} has no changelog user in CHANGELOG_USERS (register "
                            f"one: lctl --device {missing[0]} changelog_register)")

    def positions(self, since: dict[str, int]) -> dict[str, int]:
        """Per MDT, the index of the last record stored now (read from ``since``'s mark on, in parallel), for
        a pass that walks; Untrusted when an MDT has no user, OSError when a log cannot be read. An MDT
        whose log holds nothing from ``since`` on keeps that mark, or has none."""
        self._need_users()

        def last(dev: str) -> int:
            idx = since.get(dev, 0)
            for rec in self.chl.records(dev, idx):
                idx = max(idx, rec.index)
            return idx

        with ThreadPoolExecutor(max_workers=len(self.devices), thread_name_prefix="changelog") as pool:
            found = dict(zip(self.devices, pool.map(last, self.devices), strict=True))
        return {d: i for d, i in found.items() if i > 0}

    def read(self, marks: dict[str, int], floor: dict[str, int]) -> Reading:
        """Every change after ``marks``, the user checked at ``floor`` (see the module doc)."""
        self._need_users()
        for dev in self.devices:
            if marks.get(dev, 0) <= 0:
                raise Untrusted(f"the last clean pass recorded no changelog position for {dev} (its log was empty "
                                "or unread when that pass began): one more full pass records it")
        asked = time.time_ns()
        names = _Names(self.chl, self.mount)
        with ThreadPoolExecutor(max_workers=RESOLVERS, thread_name_prefix="fid2path") as resolvers, \
                ThreadPoolExecutor(max_workers=len(self.devices), thread_name_prefix="changelog") as readers:
            parts = list(readers.map(
                lambda d: self._read_mdt(d, marks[d], min(floor.get(d, marks[d]), marks[d]), names, resolvers),
                self.devices))
            changes = [c for p in parts for r in p.ranges for c in r.result()]
        return Reading(changes, resolve_key, asked, f"changelog:{self.fsname}",
                       {d: p.last for d, p in zip(self.devices, parts, strict=True)})

    def _read_mdt(self, dev: str, mark: int, floor: int, names: _Names,
                  resolvers: ThreadPoolExecutor) -> _MdtReading:
        user = self.users[dev]
        try:
            self.chl.clear(dev, user, floor)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise Untrusted(f"changelog user {user} of {dev} is gone (deregistered, or cleared past record "
                                f"{floor} by someone else): changes since the last clean pass may be lost") from None
            if exc.errno == errno.EINVAL:
                raise Untrusted(f"the changelog of {dev} ends before record {mark}, where the last clean pass "
                                "stopped reading: it was reset") from None
            raise Untrusted(f"the changelog of {dev} cannot be used ({exc.strerror})") from None
        out = _MdtReading(last=mark)
        batch: list[Record] = []
        try:
            for rec in self.chl.records(dev, mark):
                if out.records == 0 and rec.index > mark + 1:
                    raise Untrusted(f"records {mark + 1}..{rec.index - 1} of {dev} are gone (purged or cleared "
                                    "behind cmover): the changelog has a gap since the last clean pass")
                out.records += 1
                if rec.index <= mark:
                    continue
                out.last = max(out.last, rec.index)
                batch.append(rec)
                if len(batch) >= RANGE:
                    out.ranges.append(resolvers.submit(_range, batch, dev, names))
                    batch = []
        except OSError as exc:
            raise Untrusted(f"the changelog of {dev} cannot be read ({exc})") from None
        if batch:
            out.ranges.append(resolvers.submit(_range, batch, dev, names))
        return out

    def clear(self, upto: dict[str, int]) -> list[str]:
        """Let each MDT purge cmover's records up to ``upto`` (the lowest mark of the tree's clean passes);
        one line per failure (the next reading checks what it needs: a failed clear loses nothing)."""
        failed = []
        for dev, idx in sorted(upto.items()):
            user = self.users.get(dev)
            if user is None or idx <= 0:
                continue
            try:
                self.chl.clear(dev, user, idx)
            except OSError as exc:
                failed.append(f"changelog of {dev} not cleared up to {idx} for {user}: {exc.strerror}")
        return failed


def _range(recs: list[Record], dev: str, names: _Names) -> list[Change]:
    """The changes of a range of records of MDT ``dev`` (run by a resolver thread)."""
    out: list[Change] = []
    for rec in recs:
        out.extend(_changes(rec, dev, names))
    return out


class _Names:
    """FID -> the absolute paths of its names now (cached: one ``fid2path`` walk per FID and reading; shared by
    the resolver threads, where two may both resolve a FID first seen at the same time)."""

    def __init__(self, chl: Changelog, mount: bytes) -> None:
        self.chl = chl
        self.mount = mount
        self.cache: dict[str, list[bytes]] = {}

    def of(self, fid: str) -> list[bytes]:
        hit = self.cache.get(fid)
        if hit is None:
            rels = [] if fid == cl.ZERO_FID else self.chl.fid2path(self.mount, fid)
            hit = self.cache[fid] = [os.path.join(self.mount, r) if r else self.mount for r in rels]
        return hit

    def dir_key(self, fid: str) -> str:
        paths = self.of(fid)
        return _key(paths[0]) if paths else GONE


def _changes(rec: Record, dev: str, names: _Names) -> list[Change]:
    """The normalized changes of one record (see the module doc)."""
    def ch(what: What, d: str, name: bytes | None, is_dir: bool = False) -> Change:
        return Change(what, d, name, is_dir, rec.index, dev, rec.time_ns)

    t = rec.type
    if t in _NOTHING:
        return []
    entry = rec.name or None  # a namespace record without a name: its directory is re-checked
    if t in _CREATED or t == cl.CL_HARDLINK:
        out = [ch(What.CREATED, names.dir_key(rec.pfid), entry, t == cl.CL_MKDIR)]
        if t == cl.CL_HARDLINK:
            out += _object(rec, names, ch)
        return out
    if t in _REMOVED:
        return [ch(What.REMOVED, names.dir_key(rec.pfid), entry, t == cl.CL_RMDIR)]
    if t == cl.CL_RENAME:
        if rec.sfid == cl.ZERO_FID:
            raise Untrusted(f"a rename record ({dev} #{rec.index}) without its rename extension")
        # Both names of one record, of one object (its FID): the pair a target rename may replay.
        return [Change(What.RENAMED_FROM, names.dir_key(rec.spfid), rec.sname or None, False, rec.index, dev,
                       rec.time_ns, rec.sfid),
                Change(What.RENAMED_TO, names.dir_key(rec.pfid), entry, False, rec.index, dev, rec.time_ns, rec.sfid)]
    if t == cl.CL_EXT:
        raise Untrusted(f"a two-record rename ({dev} #{rec.index}, a server older than 2.3): not read")
    if rec.tfid == cl.ZERO_FID:
        return [ch(What.CHANGED, names.dir_key(rec.pfid), entry)] if rec.pfid != cl.ZERO_FID else []
    return _object(rec, names, ch)


def _object(rec: Record, names: _Names, ch: Callable[..., Change]) -> list[Change]:
    """The object ``rec.tfid`` changed: each of its names, or the directory itself."""
    paths = names.of(rec.tfid)
    if not paths:
        return [ch(What.CHANGED, GONE, None)]  # gone since: its removal is recorded too
    out = []
    for p in paths:
        try:
            is_dir = stat.S_ISDIR(os.lstat(p).st_mode)
        except OSError:
            is_dir = False
        if is_dir or p == names.mount:
            out.append(ch(What.CHANGED, _key(p), b".", True))
        else:
            parent, name = os.path.split(p)
            out.append(ch(What.CHANGED, _key(parent), name))
    return out
