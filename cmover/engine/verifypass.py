"""The verify pass engine: prove that the target holds what the source holds, reading both, writing neither.

It walks the source and the target together with the shared walker (:mod:`cmover.engine.walker`), one
directory per task (small subtrees inline, big directories in batch jobs, as the copy pass does), and
reports every difference it finds as a :class:`~cmover.core.difference.Difference` through
``on_difference`` (the task layer keeps them in the run's differences list), each counted under its
category:

* presence: a source name absent on the target (``missing``; a missing directory once, its subtree not
  walked) or a target name absent on the source (``extra``), found from both listings;
* ``type``, then for entries of the same type the table of :mod:`cmover.engine.verifycmp` (size, mode,
  owner, times, xattrs, ACLs, symlink target, device numbers, holes, Lustre layout);
* ``hardlink``: the same partition of names into hard-link groups on both sides. Names of one group may
  be verified by different workers at the same moment, so each name claims, in the run's claims (the
  ledger's first-writer-wins, as the copy pass elects its leaders), ``vhl:<source dev>:<ino>`` with its
  target's inode and, when its target has other links, ``vhlt:<target dev>:<ino>`` with its source's
  inode. A name whose claim finds another inode is in a group split (or merged) on the target; it is
  reported when it is the first name of its part to be seen (one more claim), so a group split in two
  is found once, whichever worker saw which name first. The other names of a group whose target is the
  leader's inode are not compared again (what the inode holds is reported once, on the leader).
* ``content`` (``--content``) and the manifest: :mod:`cmover.engine.verifydata`.

Strictly read-only: directories and files of both trees are opened with ``O_NOATIME`` where the process
may (see :mod:`cmover.engine.verifycmp` for the one exception, symlink atimes).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.difference import Difference, counter
from cmover.core.failure import Failure
from cmover.core.logformat import at
from cmover.core.passes import PassSpec, VerifyOptions
from cmover.core.paths import display, join, to_wire
from cmover.core.privileges import current
from cmover.core.record import Kind
from cmover.engine.chunks import ChunkSpec
from cmover.engine.claims import Claims
from cmover.engine.filters import Filter
from cmover.engine.hsmcopy import target_state_ok
from cmover.engine.jobs import FilesJob, Job, dir_hand_outs
from cmover.engine.verifycmp import Side, Table, checks_for, compare, has_project
from cmover.engine.verifydata import DataCheck
from cmover.engine.walker import Entries, Walker
from cmover.lustre.base import FsApi
from cmover.lustre.hsmstate import NONE, HsmState

if TYPE_CHECKING:  # the HSM binding (ctypes) is imported where a source is Lustre
    from cmover.lustre.hsm import Hsm

log = logging.getLogger(__name__)

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _kind(st: os.stat_result) -> str:
    return Kind.of_mode(st.st_mode).value


class VerifyPass:
    """Verify work of one task. Not thread-safe: build one per task, :meth:`close` it at the end."""

    def __init__(self, spec: PassSpec, tally: Counter[str], on_failure: Callable[[Failure], None],
                 emit: Callable[[Job], None], claims: Claims, on_difference: Callable[[Difference], None],
                 fs: FsApi | None = None, hsm: Hsm | None = None) -> None:
        """``hsm`` (a Lustre source whose library has the HSM functions): HSM state and archive id are
        compared, and a released file's data (and holes) are never read, even with ``--content``."""
        self.spec = spec
        self.opts = VerifyOptions.of(spec)
        self.tally = tally
        self.emit = emit
        self._hand_out, self._group = dir_hand_outs(emit)
        self.claims = claims
        self.on_difference = on_difference
        self.can = current()
        self.plain_checks = checks_for(self.opts, self.can, fs, spec.idmap)
        self.project_checks = checks_for(self.opts, self.can, fs, spec.idmap, file_projects=True)
        self.checks = self.plain_checks  # those of the directory whose entries are compared
        self.hsm = hsm
        self.walk = Walker(spec, tally, on_failure, log)
        filt = Filter.from_spec(spec)
        self.excluded = filt.excluded if filt.excludes else None
        self.data = DataCheck(spec, tally, emit, claims, self.walk, self._diff, self._open)

    def close(self) -> None:
        """Write this task's manifest lines (one append to the process's shard)."""
        self.data.close()

    def run_chunk(self, rel: bytes, index: int, cs: ChunkSpec) -> None:
        """Compare chunk ``index`` of file ``rel`` on both sides (:meth:`DataCheck.run_chunk`)."""
        self.data.run_chunk(rel, index, cs)

    # -- reporting -------------------------------------------------------------------------------------

    def _diff(self, path: bytes, category: str, source: object, target: object) -> None:
        self.tally[C.DIFFERENCES] += 1
        self.tally[counter(category)] += 1
        d = Difference.now(path, category, source, target)
        log.info("%s", d.line(), extra=at(path))
        self.on_difference(d)

    # -- directories -----------------------------------------------------------------------------------

    def _open(self, root: bytes, rel: bytes, side: str) -> int | None:
        """Directory ``rel`` of one side, with O_NOATIME on both sides (a verify reads the target too);
        None when it is missing (the caller decides) or cannot be opened (reported)."""
        try:
            return fsio.open_dir(root, rel, source=True)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.walk.fail(rel, "open directory" if side == "source" else "open target directory", exc, side=side)
            return -1

    def run_dir(self, rel: bytes) -> None:
        """Verify directory ``rel`` and its subtree (inline or as new jobs)."""
        self.walk.start()
        self._dir(rel)

    def run_dirs(self, rels: list[bytes]) -> None:
        """Verify each directory of ``rels`` as :meth:`run_dir` does, within one budget: the ones it does not
        reach are handed out again (:meth:`Walker.members`)."""
        for rel in self.walk.members(rels, self._hand_out, self._group):
            self._dir(rel)

    def _dir(self, rel: bytes) -> None:
        src_fd = self._open(self.spec.src_root, rel, "source")
        if src_fd is None:
            self.walk.vanished(rel)
            return
        if src_fd < 0:
            return
        try:
            dst_fd = self._open(self.spec.dst_root, rel, "target")
            if dst_fd is None:
                self._diff(rel, "missing", "dir", "-")
                return
            if dst_fd < 0:
                return
            try:
                self._dir_pair(rel, src_fd, dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _dir_pair(self, rel: bytes, src_fd: int, dst_fd: int) -> None:
        self.tally[C.DIRS] += 1
        self.checks = self.plain_checks
        self._same_kind(rel, Side(src_fd, None, os.fstat(src_fd), self.can, fd=src_fd),
                        Side(dst_fd, None, os.fstat(dst_fd), self.can, fd=dst_fd))
        self._entry_checks(src_fd)
        batched = False

        def on_batch(entries: Entries, index: int) -> None:
            nonlocal batched
            batched = True
            self.emit(FilesJob(rel, tuple(os.fsencode(e.name) for e in entries), index))

        # Batches of spec.batch, not growing: a verify batch that reads data (--content) does not hand its names
        # out again when slow, as a copy batch does (CopyPass.run_files).
        src = self.walk.scan(rel, src_fd, on_batch=on_batch, excluded=self.excluded, grow=False)
        if not batched:
            self.data.load_dir(rel)
        for entry in src.entries:
            self._entry(rel, src_fd, dst_fd, entry.name)
        self.data.prev_dir = None
        src_dirs = set(src.subdirs)
        known = None if batched or not src.complete else {os.fsencode(e.name) for e in src.entries} | src_dirs
        excluded = self.tally[C.EXCLUDED]
        dst = self.walk.scan(rel, dst_fd, side="target", excluded=self.excluded,
                             on_batch=lambda entries, _i: self._extras(rel, src_fd, entries, known))
        self.tally[C.EXCLUDED] = excluded  # counted on the source side only
        self._extras(rel, src_fd, dst.entries, known)
        for name in sorted(set(dst.subdirs) - src_dirs):
            if not self._on_source(src_fd, name, known):
                self._diff(join(rel, name), "extra", "-", "dir")
        children = []
        for name in sorted(src_dirs):
            dst_st = fsio.lstat_at(dst_fd, name)
            if dst_st is None:
                self._diff(join(rel, name), "missing", "dir", "-")
            elif not stat.S_ISDIR(dst_st.st_mode):
                self._diff(join(rel, name), "type", "dir", _kind(dst_st))
            else:
                children.append(join(rel, name))
        self.walk.charge(len(children))
        # broker trouble handing one out propagates: the task runs again
        for child in self.walk.subdirs(children, self._hand_out, self._group):
            self._dir(child)

    def _entry_checks(self, src_fd: int) -> None:
        """The checks of the entries of source directory ``src_fd``: with their project ids when it has one."""
        self.checks = self.project_checks if has_project(src_fd) else self.plain_checks

    @staticmethod
    def _on_source(src_fd: int, name: bytes, known: set[bytes] | None) -> bool:
        return name in known if known is not None else fsio.lstat_at(src_fd, name) is not None

    def _extras(self, rel: bytes, src_fd: int, entries: Entries, known: set[bytes] | None) -> bool:
        for entry in entries:
            name = os.fsencode(entry.name)
            if not self._on_source(src_fd, name, known):
                try:
                    what = _kind(entry.stat(follow_symlinks=False))
                except OSError:
                    what = "entry"
                self._diff(join(rel, name), "extra", "-", what)
        return True

    def run_files(self, rel: bytes, names: list[bytes]) -> None:
        """Verify the entries ``names`` of directory ``rel`` (one batch of a big directory)."""
        src_fd = self._open(self.spec.src_root, rel, "source")
        if src_fd is None or src_fd < 0:
            if src_fd is None:
                self.walk.vanished(rel)
            return
        try:
            dst_fd = self._open(self.spec.dst_root, rel, "target")
            if dst_fd is None or dst_fd < 0:
                if dst_fd is None:
                    self.walk.fail(rel, "verify", FileNotFoundError(2, "directory gone from the target"), "target")
                return
            try:
                self._entry_checks(src_fd)
                for name in names:
                    self._entry(rel, src_fd, dst_fd, os.fsdecode(name))
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    # -- one entry -------------------------------------------------------------------------------------

    def _entry(self, rel: bytes, src_fd: int, dst_fd: int, name: str) -> None:
        path = join(rel, os.fsencode(name))
        self.walk.guard(path, src_fd, name, lambda: self._entry_work(path, src_fd, dst_fd, name), op="verify")

    def _entry_work(self, path: bytes, src_fd: int, dst_fd: int, name: str) -> None:
        self.tally[C.SCANNED] += 1
        st = fsio.lstat_at(src_fd, name)
        if st is None:
            self.walk.vanished(path)
            return
        if stat.S_ISDIR(st.st_mode):
            return  # became a directory since it was listed: the next verify walks it
        dst_st = fsio.lstat_at(dst_fd, name)
        if dst_st is None or stat.S_IFMT(st.st_mode) != stat.S_IFMT(dst_st.st_mode):
            if dst_st is None:
                self._diff(path, "missing", _kind(st), "-")
            else:
                self._diff(path, "type", _kind(st), _kind(dst_st))
            if self.data.shard is not None and stat.S_ISREG(st.st_mode) \
                    and not self._hsm_state(src_fd, name, "source").released:
                self.data.source_only(path, Side(src_fd, name, st, self.can))
            return
        self._same_kind(path, Side(src_fd, name, st, self.can), Side(dst_fd, name, dst_st, self.can))

    def _same_kind(self, path: bytes, src: Side, dst: Side) -> None:
        """Compare two entries of the same type (the table, hard-link groups, data); close both."""
        try:
            # The other names of a hard-link group share its leader's inode on both sides: what the
            # inode holds is compared (and reported) once, on the leader.
            lead = self._links(path, src.st, dst.st) if src.fmt == stat.S_IFREG else True
            checks, unread = self.checks, False
            if self.hsm is not None and src.fmt == stat.S_IFREG and src.name is not None and dst.name is not None:
                s, d = self._hsm_state(src.dir_fd, src.name, "source"), self._hsm_state(dst.dir_fd, dst.name, "target")
                if lead and not target_state_ok(s, d):
                    self._diff(path, "hsm", s.describe(), d.describe())
                if s.released or d.released:
                    # Its data is in the archive only: reading it (or probing its holes) would restore it.
                    checks, unread = Table(tuple(c for c in checks.checks if c.category != "holes")), True
                    self.tally[C.HSM_NOT_READ] += 1
                    log.info("%s: HSM-released (source %s, target %s): data not read, content and holes not "
                             "compared", display(path), s.describe(), d.describe(), extra=at(path))
            if self.opts.content and not unread and src.fmt == stat.S_IFREG and src.st.st_size == dst.st.st_size \
                    and (lead or self.data.shard is not None):
                src.fd()  # read anyway: open first, so that the attributes are read through the descriptors
                dst.fd()
            if lead:
                for category, sv, dv in compare(src, dst, checks):
                    self._diff(path, category, sv, dv)
            if src.fmt == stat.S_IFREG and self.opts.content and not unread:
                if src.st.st_size == dst.st.st_size:
                    self.data.content(path, src, dst, lead)
                elif self.data.shard is not None:
                    self.data.source_only(path, src)
            self.tally[C.VERIFIED] += 1
        finally:
            src.close()
            dst.close()

    def _hsm_state(self, dir_fd: int, name: str, side: str) -> HsmState:
        """The HSM state of regular file ``name``; none when the HSM functions are absent, or on a side that
        is not Lustre (the library says ENOTTY there)."""
        if self.hsm is None:
            return NONE
        try:
            return self.hsm.state_at(dir_fd, name)
        except OSError as exc:
            if side == "target" and exc.errno == errno.ENOTTY:
                return NONE
            raise

    def _links(self, path: bytes, st: os.stat_result, dst: os.stat_result) -> bool:
        """Check the name's place in its hard-link groups; False when another name of its source group
        leads it (that name's data is compared: the same data is never reported twice)."""
        lead = True
        if st.st_nlink > 1:
            key = f"vhl:{st.st_dev}:{st.st_ino}"
            mine = json.dumps([dst.st_dev, dst.st_ino, to_wire(path)])
            won = self.claims.claim(key, mine)
            first = json.loads(won)
            if first[:2] != [dst.st_dev, dst.st_ino]:
                # Once per part the group was split into, whichever of its names comes first.
                if self._first_of(f"vhlx:{st.st_dev}:{st.st_ino}:{dst.st_dev}:{dst.st_ino}", path):
                    self._diff(path, "hardlink", f"same file as {_shown(first[2])}", "a different file")
                return True  # a data of its own: compared on its own
            lead = won == mine
        if dst.st_nlink > 1:
            key = f"vhlt:{dst.st_dev}:{dst.st_ino}"
            first = json.loads(self.claims.claim(key, json.dumps([st.st_dev, st.st_ino, to_wire(path)])))
            if first[:2] != [st.st_dev, st.st_ino] and \
                    self._first_of(f"vhltx:{dst.st_dev}:{dst.st_ino}:{st.st_dev}:{st.st_ino}", path):
                self._diff(path, "hardlink", f"a different file from {_shown(first[2])}",
                           f"same file as {_shown(first[2])}")
        return lead

    def _first_of(self, key: str, path: bytes) -> bool:
        mine = json.dumps(to_wire(path))
        return self.claims.claim(key, mine) == mine

def _shown(wire: Any) -> str:
    from cmover.core.paths import from_wire

    return display(from_wire(wire))


__all__ = ["VerifyPass"]
