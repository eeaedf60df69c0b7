"""Lustre HSM in the copy pass: what to do with a regular file of an HSM source, decided before any
byte of it is read.

Only when the source is on Lustre and liblustreapi has the HSM functions (:func:`cmover.lustre.get_hsm`);
elsewhere the copier never calls this module. :func:`decide` is the pure decision, from the policy
(HSM_POLICY / ``--hsm``), the source's HSM state, and whether the target already holds the same data
(same size and mtime) and with which state:

======================================  ==========  ==========================================
source                                  policy      action
======================================  ==========  ==========================================
never archived, or only partly (EXISTS)  any         ordinary copy
lost                                    any         failure naming the state, nothing read
released                                import      IMPORT a released stub bound to the same archive id
                                                    (target already a stub with that id: KEEP)
released, target holds the same data    import      MARK the target archived (KEEP if it is)
released                                recall      RECALL: ordinary copy, counted
released                                skip        SKIP: listed, left out, target untouched
archived, clean                         import      COPY_MARK: ordinary copy, then marked archived
                                                    (same data on the target: MARK or KEEP)
archived, dirty                         any         ordinary copy, not marked (the archive is stale)
archived, clean                         recall/skip ordinary copy
======================================  ==========  ==========================================

KEEP and MARK leave the data as it is (the ordinary path may still fix owner, mode, xattrs and times,
which reads nothing). Marking sets ``EXISTS|ARCHIVED`` and the archive id, with NORELEASE/NOARCHIVE
carried over. Every import, marking and KEEP is recorded as a rebind pair (source FID, target FID) on
the run's HSM list: the last run's list names every file of its tree to rebind.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from cmover.core import fsio, projid, xattrs
from cmover.core.counters import C
from cmover.core.errors import SourceChangedError, SourceStateError
from cmover.core.hsmrecord import HsmRecord
from cmover.core.idmap import NO_MAP, IdMap
from cmover.core.paths import display
from cmover.core.privileges import Privileges
from cmover.core.record import Record
from cmover.engine import metadata
from cmover.lustre.base import FsApi
from cmover.lustre.hsmstate import CARRIED, HS_ARCHIVED, HS_EXISTS, NONE, HsmState

if TYPE_CHECKING:  # the binding itself (ctypes): its caller has it
    from cmover.lustre.hsm import Hsm

log = logging.getLogger(__name__)

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # an open restores nothing


class Act(enum.Enum):
    COPY = "copy"  # not HSM's business: the ordinary copy
    KEEP = "keep"  # target already right: the ordinary path, which moves no data when size and mtime agree
    MARK = "mark"  # target holds the archived data: mark it archived, then as KEEP
    COPY_MARK = "copy-mark"  # ordinary copy (never chunked), then mark the new target archived
    IMPORT = "import"  # released stub on the target, no data read
    RECALL = "recall"  # ordinary copy of a released file (the copytool restores it), counted
    SKIP = "skip"  # left out and listed
    LOST = "lost"  # failure, nothing read


def decide(policy: str, src: HsmState, same_data: bool, dst: HsmState | None) -> Act:
    """The HSM action for a regular source file (see the module's table). ``same_data``: the target is a
    regular file with the source's size and mtime; ``dst``: its HSM state (None when not asked)."""
    if not src.states or not (src.archived or src.lost):
        return Act.COPY
    if src.lost:
        return Act.LOST
    marked = dst is not None and dst.archived and not dst.dirty and dst.archive_id == src.archive_id
    if src.released:
        if policy == "skip":
            return Act.SKIP
        if policy == "recall":
            return Act.COPY if same_data else Act.RECALL
        if same_data:
            return Act.KEEP if marked else Act.MARK
        return Act.IMPORT
    if src.dirty or policy != "import":
        return Act.COPY
    if same_data:
        return Act.KEEP if marked else Act.MARK
    return Act.COPY_MARK


def target_state_ok(src: HsmState, dst: HsmState) -> bool:
    """Whether a target file's HSM state is what the copy gives a source in state ``src`` (for verify):
    marked archived in the same archive, flags carried, exactly when the source's archive copy is complete
    and current; a released target (no data) only for a released source. A lost source is not judged."""
    if src.lost:
        return True
    if dst.released and not src.released:
        return False
    if not src.clean_archive:
        return not dst.archived
    return dst.archived and not dst.dirty and dst.archive_id == src.archive_id \
        and dst.states & CARRIED == src.states & CARRIED


class HsmCopier:
    """The HSM side of one copy task: reads states, imports stubs, marks targets, records rebind pairs.

    ``hsm``: the source's HSM functions; ``fs``: how the target creates entries (stub striping); ``policy``: the
    pass's HSM policy (import, recall or skip); ``tally``: the task's counters; ``record``: where rebind pairs and
    skipped files go (the run's HSM list); ``can``: what this process may set on the target; ``target_lustre``:
    whether the target is Lustre too (only then can a file be marked or imported); ``idmap``: owners and ACL ids of
    stubs as their copies should be.
    """

    __slots__ = ("hsm", "fs", "policy", "tally", "record", "can", "target_lustre", "idmap")

    def __init__(self, hsm: Hsm, fs: FsApi, policy: str, tally: Counter[str], record: Callable[[HsmRecord], None],
                 can: Privileges, target_lustre: bool, idmap: IdMap = NO_MAP) -> None:
        self.hsm = hsm
        self.fs = fs
        self.policy = policy
        self.tally = tally
        self.record = record
        self.can = can
        self.target_lustre = target_lustre
        self.idmap = idmap  # owners and ACL ids of stubs as their copies should be

    def plan(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
             dst_st: os.stat_result | None) -> tuple[Act, HsmState]:
        """The action for regular source file ``name`` (fresh ``lstat`` ``st``; target ``dst_st``)."""
        src = self.hsm.state_at(src_dir_fd, name)
        if not src.states:
            return Act.COPY, src
        same = dst_st is not None and stat.S_ISREG(dst_st.st_mode) and dst_st.st_size == st.st_size \
            and dst_st.st_mtime_ns == st.st_mtime_ns
        dst = None
        if same and self.target_lustre:
            try:
                dst = self.hsm.state_at(dst_dir_fd, name)
            except OSError:
                dst = NONE
        act = decide(self.policy, src, same, dst)
        if not self.target_lustre and act in (Act.MARK, Act.COPY_MARK, Act.KEEP):
            act = Act.COPY  # nothing to mark on another filesystem: an archived file is copied as any file
        return act, src

    def skips_group(self, src_dir_fd: int, name: str, st: os.stat_result, rel: bytes) -> bool:
        """For a name of a hard-link group, before any leader is chosen: under ``skip``, a released group's
        every name is left out (and listed); True when this one was."""
        if self.policy != "skip":
            return False
        state = self.hsm.state_at(src_dir_fd, name)
        if not state.released or state.lost:
            return False
        return self.act(Act.SKIP, state, src_dir_fd, -1, name, st, rel, False)

    def act(self, act: Act, state: HsmState, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
            rel: bytes, dst_exists: bool) -> bool:
        """Carry out ``act`` for ``name``; True when the file is done, False when the ordinary path goes on."""
        if act is Act.LOST:
            self.tally[C.HSM_LOST] += 1
            raise SourceStateError(f"HSM state {state.describe()}: the archive copy is lost, the file was not "
                                   "read (restore it from another copy, or clear the flag: lfs hsm_clear --lost)",
                                   op="hsm state", err=errno.ENODATA)
        if act is Act.SKIP:
            self.tally[C.HSM_SKIPPED] += 1
            self.record(HsmRecord.now(rel, "skipped", archive_id=state.archive_id))
            log.info("%s: HSM-released, left out (HSM_POLICY skip)", display(rel))
            return True
        if act is Act.IMPORT:
            self._import(state, src_dir_fd, dst_dir_fd, name, st, rel, dst_exists)
            return True
        if act is Act.MARK:
            self.mark(state, src_dir_fd, dst_dir_fd, name, rel)
        elif act is Act.KEEP:
            self._record_kept(state, src_dir_fd, dst_dir_fd, name, rel)
        return False

    def _source_fid(self, src_dir_fd: int, name: str) -> str:
        """The FID of source ``name`` (an open restores nothing; its atime is left alone)."""
        fin = fsio.open_noatime(name, _OPEN, dir_fd=src_dir_fd)
        try:
            return self.hsm.fid(fin)
        finally:
            os.close(fin)

    def mark(self, state: HsmState, src_dir_fd: int, dst_dir_fd: int, name: str, rel: bytes) -> None:
        """Mark target ``name`` archived in the source's archive, flags carried; record the rebind pair."""
        if not self.target_lustre:
            raise SourceStateError("archived file: the target is not Lustre, so it cannot be marked archived "
                                   "(copy with --hsm recall)", op="hsm mark", err=errno.ENOTTY)
        src_fid = self._source_fid(src_dir_fd, name)
        fd = os.open(name, _OPEN, dir_fd=dst_dir_fd)
        try:
            want = HS_EXISTS | HS_ARCHIVED | (state.states & CARRIED)
            now = self.hsm.state(fd)
            if now.states & want != want or now.archive_id != state.archive_id:
                self.hsm.set_state(fd, want, 0, state.archive_id)
            dst_fid = self.hsm.fid(fd)
        finally:
            os.close(fd)
        self.tally[C.HSM_ARCHIVED_KEPT] += 1
        self.record(HsmRecord.now(rel, "archived", src_fid, dst_fid, state.archive_id))

    def _record_kept(self, state: HsmState, src_dir_fd: int, dst_dir_fd: int, name: str, rel: bytes) -> None:
        """A stub or marked file already right: its pair goes on this run's list too, so that the last
        run's list alone names every file to rebind (nothing is written to either file)."""
        src_fid = self._source_fid(src_dir_fd, name)
        fd = os.open(name, _OPEN, dir_fd=dst_dir_fd)
        try:
            dst_fid, stub = self.hsm.fid(fd), self.hsm.state(fd).released
        finally:
            os.close(fd)
        self.record(HsmRecord.now(rel, "imported" if stub else "archived", src_fid, dst_fid, state.archive_id))

    def _import(self, state: HsmState, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
                rel: bytes, dst_exists: bool) -> None:
        if not self.target_lustre:
            raise SourceStateError("HSM-released file: the target is not Lustre, so it cannot be imported as a "
                                   "stub (copy with --hsm recall, or --hsm skip)", op="hsm import", err=errno.ENOTTY)
        fin = fsio.open_noatime(name, _OPEN, dir_fd=src_dir_fd)
        try:
            before = os.fstat(fin)
            if not stat.S_ISREG(before.st_mode) or (before.st_ino, before.st_dev) != (st.st_ino, st.st_dev):
                raise SourceChangedError("source replaced between listing and import", op="open")
            src = self.idmap.record(Record.from_stat(before))
            src_x = self.idmap.xattrs(xattrs.read_all(fin, self.can))
            src_fid = self.hsm.fid(fin)
            size, count, pool = self.fs.import_striping(fin)
            into = fsio.temp_name() if dst_exists else name
            try:
                dst_fid = self.hsm.import_stub(dst_dir_fd, into, fin, state.archive_id, size, count, pool)
            except FileExistsError:
                if into != name:
                    raise
                into = fsio.temp_name()  # created meanwhile: replace it
                dst_fid = self.hsm.import_stub(dst_dir_fd, into, fin, state.archive_id, size, count, pool)
            try:
                fd = os.open(into, _OPEN, dir_fd=dst_dir_fd)
                try:
                    if state.states & CARRIED:
                        self.hsm.set_state(fd, state.states & CARRIED, 0, 0)
                    # Owner, set-id bits (the import drops them), xattrs and ACLs, project id; the times last.
                    projid.count(self.tally, projid.sync(fin, fd, False), into)
                    metadata.apply_fd(fd, src, xattrs=src_x, can=self.can)
                finally:
                    os.close(fd)
                after = os.fstat(fin)
                if (after.st_mtime_ns, after.st_size, after.st_ctime_ns) != (src.mtime_ns, src.size, src.ctime_ns):
                    raise SourceChangedError("source changed during import", op="hsm import")
                if into != name:
                    os.rename(into, name, src_dir_fd=dst_dir_fd, dst_dir_fd=dst_dir_fd)
            except BaseException:
                try:
                    os.unlink(into, dir_fd=dst_dir_fd)
                except OSError:
                    pass
                raise
        finally:
            os.close(fin)
        self.tally[C.HSM_IMPORTED] += 1
        if self.can.loses(src.uid, src.gid):
            self.tally[C.NOT_PRESERVED] += 1
        self.record(HsmRecord.now(rel, "imported", src_fid, dst_fid, state.archive_id))
