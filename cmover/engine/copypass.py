"""The copy pass engine: one directory (and small subtrees inline) or one batch of entries.

Plain Python, no Celery: the task layer calls :meth:`CopyPass.run_dir` / :meth:`CopyPass.run_files` /
:meth:`CopyPass.run_chunk` and publishes the jobs handed to ``emit`` (:mod:`cmover.engine.jobs`; chunk
jobs are :class:`cmover.engine.chunks.ChunkJob`).

The walk is the shared one (:mod:`cmover.engine.walker`): the source is listed, a directory task handles
its own entries when they fit in one batch and walks subdirectories inline while its budget lasts; a
bigger directory is streamed into batch jobs as it is read. What is the copy pass's own: each source
directory gets its target directory (created or repaired, see :meth:`CopyPass._ensure_target_dir`), each
non-directory entry goes to the :class:`~cmover.engine.copier.Copier`, and first-level directories
are placed round-robin on ``spec.mdt_list`` when the target's metadata is striped.

Failures are per item: a directory or file that cannot be read or written is reported through
``on_failure`` and the walk goes on with the rest. A target directory whose owner, mode or attributes
cannot be set is reported too, and its entries are still copied.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial

from cmover.core import cleanpass, fsio, projid, xattrs
from cmover.core.counters import C
from cmover.core.errors import ConfinementError
from cmover.core.failure import Failure
from cmover.core.passes import PassSpec
from cmover.core.paths import components, display, join
from cmover.core.privileges import current
from cmover.core.record import Record
from cmover.engine import metadata
from cmover.engine.chunks import Chunker, ChunkJob, ChunkSpec
from cmover.engine.claims import Claims
from cmover.engine.copier import Copier, Seen
from cmover.engine.filters import Filter
from cmover.engine.hardlinks import HardLinker
from cmover.engine.hsmcopy import HsmCopier
from cmover.engine.jobs import DirJob, FilesJob, Job, run_groups
from cmover.engine.walker import Entries, Walker
from cmover.lustre.base import FsApi

log = logging.getLogger(__name__)

#: Seconds after which a batch of more than ``spec.batch`` names hands all but its next ``spec.batch`` out
#: again (:meth:`CopyPass.run_files`): a grown batch of unchanged entries is done long before (8,000 in about
#: 40 ms here), one of files to copy is not, and other processes may be idle.
SPREAD_SECONDS = 1.0


class CopyPass:
    """Copy-pass work of one task. Not thread-safe: build one per task."""

    def __init__(self, spec: PassSpec, fs: FsApi, tally: Counter[str],
                 on_failure: Callable[[Failure], None], emit: Callable[[Job], None],
                 claims: Claims | None = None, hsm: HsmCopier | None = None) -> None:
        """``claims`` (the run's, see :mod:`cmover.engine.claims`) enables hard-link groups and chunked
        copies of huge files; ``hsm`` (a Lustre HSM source) has each regular file's HSM state decide first."""
        self.spec = spec
        self.fs = fs
        self.tally = tally
        self.emit = emit
        self.walk = Walker(spec, tally, on_failure, log)
        self.filt = Filter.from_spec(spec)
        links = HardLinker(claims.claim, spec.dst_root) if claims is not None else None
        self.chunker = None
        if claims is not None:
            self.chunker = Chunker(spec.generation, fs, tally, self.emit, claims, spec.chunk_size, spec.idmap)
        self.can = current()
        self.idmap = spec.idmap
        self.copier = Copier(fs, self.filt, tally, links, self.chunker, spec.chunk_threshold, self.can, spec.idmap,
                             hsm=hsm)
        # The clean-pass proof this task may use (cmover.core.cleanpass); handed to the copier per directory,
        # for the entries of a proven one only.
        self.proof = cleanpass.proof_of(spec, self.can)

    # -- entry points -------------------------------------------------------------------------------

    def run_dir(self, rel: bytes, mdt: int | None = None, made: bool = False) -> None:
        """Process directory ``rel``: create it on the target, handle its entries, fan out or inline subdirs.
        ``made``: its target has just been created empty by the pass's command (:attr:`DirJob.made`)."""
        self.walk.start()
        self._run_dir(rel, mdt, made)

    def run_dirs(self, job: DirJob) -> None:
        """Process each directory of ``job`` (:attr:`DirJob.also`) as :meth:`run_dir` does, within one budget: the
        ones it does not reach are handed out again (:meth:`Walker.members`)."""
        for one in self.walk.members(job.members(), self.emit, self._group):
            self._run_dir(one.rel, one.mdt, one.made)

    def _group(self, jobs: list[DirJob]) -> None:
        self.emit(DirJob.group(jobs))

    def _run_dir(self, rel: bytes, mdt: int | None, made: bool) -> None:
        chain = _Chain(self.proof)
        src_fd = self.walk.open_dir(rel, source=True, missing=self._src_missing(rel), on_open=chain.hook)
        if src_fd is None:
            return
        dst_parent = None
        try:
            try:
                if rel:
                    dst_parent = self._open_target_parent(rel)
            except OSError as exc:
                self.walk.fail(rel, "open target parent", exc, side="target")
                return
            self._dir(rel, src_fd, dst_parent, mdt, chain.proven, made)
        finally:
            os.close(src_fd)
            if dst_parent is not None:
                os.close(dst_parent)

    def run_files(self, rel: bytes, names: Iterable[bytes], made: bool = False) -> None:
        """Copy the listed entries of directory ``rel`` (a batch published by its directory task).

        In a journal-driven pass (``spec.changes``) an entry that is a directory is handled shallowly
        (:meth:`_shallow_dir`), and a batch with no names is the directory ``rel`` itself. ``made``: the
        directory task created the target directory, and these names are not looked up there first (see
        :meth:`_entries`)."""
        chain = _Chain(self.proof)
        with self.walk.pair(rel, src_missing=self._src_missing(rel), dst_missing=None, on_open=chain.hook) as fds:
            if fds is None:
                return
            src_fd, dst_fd = fds
            self.copier.proof = self.proof if chain.proven else None
            self.copier.projects = _has_project(src_fd, dst_fd)
            todo = list(names)
            if not todo and self.spec.changes:
                self._repair_itself(rel, src_fd, dst_fd)
                return
            try_skip = self.copier.absent if made else self.copier.try_skip
            # A new plain file of a new directory takes the short way (Copier.copy_new), after its lstat: a
            # batch's names carry no type, and nothing that is not a regular file is ever opened.
            plain = self.copier.plain_new if made and self.copier.opens_first else None
            now = time.monotonic()
            deadline = now + self.spec.batch_seconds
            # A batch grown past spec.batch (walker.GROW_EVERY) whose entries prove slow (data to copy, a slow
            # server) gives what lies beyond its next spec.batch names to other tasks, in batches of spec.batch.
            batch = self.spec.batch
            spread_at = now + SPREAD_SECONDS if len(todo) > batch else None
            end = len(todo)
            for pos, bname in enumerate(todo):
                if pos == end:
                    break
                if pos:
                    now = time.monotonic()  # once per entry, for both limits
                    if spread_at is not None and now > spread_at:
                        spread_at, end = None, pos + batch
                        for i in range(end, len(todo), batch):
                            self.emit(FilesJob(rel, tuple(todo[i:i + batch]), made=made))
                    if now > deadline:
                        # Long enough for one task (consumer timeout): the rest becomes a batch of its own.
                        self.emit(FilesJob(rel, tuple(todo[pos:end]), made=made))
                        break
                name = os.fsdecode(bname)
                try:
                    st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
                except OSError as exc:
                    found = self.walk.lstat_error(join(rel, bname), exc,
                                                  partial(os.stat, name, dir_fd=src_fd, follow_symlinks=False))
                    if found is None:
                        continue
                    st = found
                if stat.S_ISDIR(st.st_mode):
                    if self.spec.changes:
                        self._shallow_dir(join(rel, bname), src_fd, dst_fd)
                    continue  # became a directory since listing; its parent's next pass walks it
                self.tally[C.SCANNED] += 1
                if plain is not None and plain(st):
                    self._new_file(rel, src_fd, dst_fd, name, st)
                    continue
                seen = try_skip(dst_fd, name, st)
                if seen is not Seen.SKIPPED:
                    self._entry(rel, src_fd, dst_fd, name, st, seen)

    def run_groups(self, groups: list[tuple[bytes, list[bytes]]]) -> None:
        """:meth:`run_files` for each (directory, names) pair of a batch job (:func:`cmover.engine.jobs.run_groups`)."""
        run_groups(groups, self.spec.batch_seconds, self.emit, self.run_files)

    def _shallow_dir(self, rel: bytes, src_parent: int, dst_parent: int) -> None:
        """A directory named by a change journal: its target gets its metadata, not its contents; a target
        missing (or not a directory) means the journal did not see it arrive, so it is walked in full."""
        st = fsio.lstat_at(dst_parent, components(rel)[-1])
        if st is None or not stat.S_ISDIR(st.st_mode):
            self.emit(DirJob(rel))
            return
        src_fd = self.walk.open_child(src_parent, rel)
        if src_fd is None:
            return
        try:
            dst_fd, _made = self._ensure_target_dir(rel, dst_parent, Record.from_stat(os.fstat(src_fd)), None,
                                                    src_fd=src_fd)
            os.close(dst_fd)
            self.tally[C.DIRS] += 1
        except OSError as exc:
            self.walk.fail(rel, "set directory metadata", exc, side="target")
        finally:
            os.close(src_fd)

    def _repair_itself(self, rel: bytes, src_fd: int, dst_fd: int) -> None:
        """Directory ``rel`` itself, shallowly (a journal-driven batch with no names; the planner makes one
        only for the root, any other directory is an entry of its parent's batch): owner, mode, xattrs."""
        if rel:
            raise ConfinementError(f"a batch with no names for {display(rel)}, not the root")
        try:
            os.close(self._ensure_target_dir(rel, None, Record.from_stat(os.fstat(src_fd)), None, src_fd=src_fd)[0])
            self.tally[C.DIRS] += 1
        except OSError as exc:
            self.walk.fail(rel, "set directory metadata", exc, side="target")

    def run_chunk(self, rel: bytes, index: int, cs: ChunkSpec, task_id: str) -> None:
        """Copy chunk ``index`` of file ``rel`` split as ``cs`` (see :mod:`cmover.engine.chunks`)."""
        chunker = self.chunker
        if chunker is None:
            raise AssertionError("run_chunk needs the run's claims")
        parts = components(rel)
        if not parts or index < 0 or index >= cs.count:
            raise ConfinementError(f"chunk {index} of {display(rel)} is outside the file's {cs.count} chunks")
        parent, name = b"/".join(parts[:-1]), os.fsdecode(parts[-1])
        with self.walk.pair(parent, src_missing=self._src_missing(parent), dst_missing=None) as fds:
            if fds is None:
                return
            src_fd, dst_fd = fds
            job = ChunkJob(rel, index, cs)
            self.walk.guard(rel, src_fd, name, lambda: chunker.run_chunk(src_fd, dst_fd, name, job, task_id))

    def _src_missing(self, rel: bytes) -> Callable[[bytes], None] | None:
        # A directory listed by its parent, then removed or renamed before its task ran: a race on a live
        # source, counted like a vanished file (the next pass copies it under its new name). A missing
        # source root is a failure.
        return self.walk.vanished if rel else None

    # -- walking ------------------------------------------------------------------------------------

    def _dir(self, rel: bytes, src_fd: int, dst_parent: int | None, mdt: int | None, proven: bool,
             made: bool = False, in_new: bool = False) -> None:
        """Handle directory ``rel`` whose source is open as ``src_fd``; ``dst_parent`` is its target parent.
        ``proven``: the source directories above it and (as far as known) this one are proven unchanged
        since the last clean pass (:func:`cmover.core.cleanpass.dir_proven`). ``made``: its target was created
        empty by the pass's command (:attr:`DirJob.made`); one that this call creates is known made too, and so
        is the pass's start directory when its target is found empty.
        ``in_new``: its target parent is such a directory (see :meth:`_ensure_target_dir`)."""
        try:
            src_rec = self.idmap.record(Record.from_stat(os.fstat(src_fd)))
            proven = cleanpass.dir_proven(self.proof, proven, src_rec.ctime_ns)
            dst_fd, created = self._ensure_target_dir(rel, dst_parent, src_rec, mdt, src_fd=src_fd, proven=proven,
                                                      in_new=in_new)
        except OSError as exc:
            self.walk.fail(rel, "create target directory", exc, side="target")
            return
        try:
            self.copier.projects = self._dir_project(rel, src_fd, dst_fd)
            self.tally[C.DIRS] += 1
            self.copier.proof = self.proof if proven else None
            new = made or created
            if not new and rel == self.spec.start:
                # The pass's own target root, there before it (a distributed pass needs it; an operator makes it
                # for a first copy): empty, it holds no name either. One listing call per pass.
                new = fsio.empty_dir(dst_fd)
            subdirs = self._entries(rel, src_fd, dst_fd, new)
            self.tally[C.DIRS_FOUND] += len(subdirs)
            mdts = self.spec.mdt_list if not rel and self.spec.mds_striped else ()  # first level: placed on MDTs
            children = [DirJob(join(rel, bname), mdts[i % len(mdts)] if mdts else None)
                        for i, bname in enumerate(subdirs)]
            leaf = partial(_leaf, src_fd) if children else None
            for job in self.walk.subdirs(children, self.emit, self._group, leaf):
                child, child_mdt = job.rel, job.mdt
                child_fd = self.walk.open_child(src_fd, child)
                if child_fd is not None:
                    try:
                        self._dir(child, child_fd, dst_fd, child_mdt, proven, in_new=new)
                    finally:
                        os.close(child_fd)
        finally:
            os.close(dst_fd)

    def _entries(self, rel: bytes, src_fd: int, dst_fd: int, made: bool) -> list[bytes]:
        """List directory ``rel``, copy its entries (beyond one batch: as batch jobs), return its subdirectories.

        ``made``: this task has just created the target directory ``dst_fd`` (its ``mkdir`` succeeded), so it
        held no name then and each name in it is this pass's to create: its entries are not looked up on the
        target first, here or in the batches published for them (:attr:`FilesJob.made`), but for those
        :meth:`~cmover.engine.copier.Copier.absent` names. Creation is exclusive all the same (``O_EXCL``,
        ``symlink``, ``mknod``): a name made meanwhile -- by the first delivery of a batch delivered again, or
        by someone else -- is rebuilt under a temporary name and renamed over, as after any lookup that found
        a stale entry.
        """

        def publish(batch: Entries, index: int) -> None:
            self.emit(FilesJob(rel, tuple(os.fsencode(e.name) for e in batch), index, made=made))

        listing = self.walk.scan(rel, src_fd, on_batch=publish,
                                 excluded=self.filt.excluded if self.filt.excludes else None)
        subdirs = listing.subdirs
        self.walk.charge(len(listing.entries) + len(subdirs))
        # The loop a final pass runs once per entry: an unchanged entry costs its two lstats and no more (no
        # path, no guard, no call beyond try_skip); the target's lstat is not made twice whatever the outcome.
        # In a target directory just made there is nothing to look up: a first copy saves a lookup per entry
        # (a metadata server round trip on Lustre).
        # There, a file the listing calls regular is opened before any lstat (Copier.copy_new): one more lookup
        # saved per new file.
        try_skip, skipped, is_dir = (self.copier.absent if made else self.copier.try_skip), Seen.SKIPPED, stat.S_ISDIR
        opens_first = made and self.copier.opens_first
        scanned = 0
        try:
            for entry in listing.entries:
                if opens_first and entry.is_file(follow_symlinks=False):  # the listing's type: no syscall
                    left = self._new_file(rel, src_fd, dst_fd, entry.name)
                    if left is None:
                        scanned += 1
                        continue
                    st = left
                else:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        found = self.walk.lstat_error(join(rel, os.fsencode(entry.name)), exc,
                                                      partial(entry.stat, follow_symlinks=False))
                        if found is None:
                            continue
                        st = found
                if is_dir(st.st_mode):
                    subdirs.append(os.fsencode(entry.name))
                    continue
                scanned += 1
                seen = try_skip(dst_fd, entry.name, st)
                if seen is not skipped:
                    self._entry(rel, src_fd, dst_fd, entry.name, st, seen)
        finally:
            self.tally[C.SCANNED] += scanned
        return subdirs

    def _new_file(self, rel: bytes, src_fd: int, dst_fd: int, name: str,
                  st: os.stat_result | None = None) -> os.stat_result | None:
        """Copy new file ``name`` of a directory whose target is new (:meth:`~cmover.engine.copier.Copier.copy_new`:
        a regular file by its listing, or ``st``, its ``lstat``), under the per-entry guard. Returns its ``lstat``
        when it is to be handled as any listed entry (not a plain new file, or no longer a regular file); None
        when it is done: copied, or counted (vanished, changed, failed) by the guard."""
        left: list[os.stat_result] = []

        def work() -> None:
            left.clear()  # a retry after a transient errno starts again
            found = self.copier.copy_new(src_fd, dst_fd, name, st)
            if found is not None:
                left.append(found)

        self.walk.guard(join(rel, os.fsencode(name)), src_fd, name, work)
        return left[0] if left else None

    def _entry(self, rel: bytes, src_fd: int, dst_fd: int, name: str, st: os.stat_result,
               seen: os.stat_result | None | Seen) -> None:
        """Handle non-directory entry ``name`` (fresh source ``lstat`` ``st``) of directory ``rel``, whose target
        :meth:`~cmover.engine.copier.Copier.try_skip` found as ``seen`` (not skipped)."""
        path = join(rel, os.fsencode(name))

        def work() -> None:
            nonlocal seen
            # A retry (the guard's, after a transient errno) looks at the target again: the first attempt may
            # have changed it.
            target, seen = seen, Seen.UNSEEN
            self.copier.copy_entry(src_fd, dst_fd, name, st, path, target)

        self.walk.guard(path, src_fd, name, work)

    # -- target directories -------------------------------------------------------------------------

    def _dir_project(self, rel: bytes, src_fd: int, dst_fd: int) -> bool:
        """Give target directory ``rel`` its source's project (id and inheritance, :mod:`cmover.core.projid`);
        True when the files in it must have their project ids compared (the source has a project and the
        target can store it). A failure to set it is the directory's, reported; its entries are copied."""
        try:
            src = projid.read(src_fd)
            if src is None or not src.present:
                return False
            action = projid.decide(src, projid.read(dst_fd))
            if action == projid.SET and not projid.write(dst_fd, src, True):
                action = projid.UNSUPPORTED
        except OSError as exc:
            self.walk.fail(rel, "set project id", exc, side="target")
            return False
        projid.count(self.tally, action, display(rel))
        return action != projid.UNSUPPORTED

    def _open_target_parent(self, rel: bytes) -> int:
        """Open the target directory that will hold ``rel``, creating missing ancestors from the source.

        Ancestors are missing only when a pass starts at a sub-path on a fresh target; they get the
        owner and mode of their source counterparts.
        """
        fd = fsio.open_root(self.spec.dst_root, source=False)
        src_path = self.spec.src_root
        parts = components(rel)
        try:
            for i, part in enumerate(parts[:-1]):
                src_path = src_path + b"/" + part
                name = os.fsdecode(part)
                try:
                    nfd = fsio.open_subdir(fd, name, source=False)
                except FileNotFoundError:
                    src_rec = self.idmap.record(Record.from_stat(os.lstat(src_path)))
                    nfd = self._ensure_target_dir(b"/".join(parts[:i + 1]), fd, src_rec, None)[0]
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _ensure_target_dir(self, rel: bytes, dst_parent: int | None, src: Record, mdt: int | None,
                           src_fd: int | None = None, proven: bool = False, in_new: bool = False) -> tuple[int, bool]:
        """Return an open descriptor of the target directory for ``rel``, creating or repairing it, and whether
        this call created it (its ``mkdir`` succeeded: it held nothing then).

        ``in_new``: the target parent was created by this task (or, for the root, by the command): the name is
        not looked up before its ``mkdir``, which says whether it is taken (by an earlier delivery of this task,
        or by another writer); only then is it looked at, as below.

        A non-directory in its place is removed first: the source holds a directory under that name
        right now, which is the positive proof that the target entry is stale. Owner and mode are
        set from the source (as far as the process may; without CAP_DAC_OVERRIDE the owner keeps
        ``rwx`` until the dirtime pass), and with ``src_fd`` its default layout (on Lustre); directory
        times are left to the dirtime pass. Metadata that cannot be set is reported as a failure of
        the directory, whose descriptor is still returned: its entries are copied all the same.

        Nothing is written to a directory that is already right (a no-change pass changes no ctime). With
        ``src_fd`` its attributes are compared too, unless the directory is ``proven`` and its target was not
        changed since the clean pass (:meth:`cmover.core.cleanpass.Proof.covers`).
        """
        made = False
        if dst_parent is None:
            fd = fsio.open_root(self.spec.dst_root, source=False)
        else:
            name = os.fsdecode(components(rel)[-1])
            st = None if in_new else fsio.lstat_at(dst_parent, name)
            made = st is None and self._mkdir(dst_parent, name, src, mdt)
            if not made:
                # The name was there (looked up), or mkdir found it taken (another delivery, another writer).
                st = st if st is not None else fsio.lstat_at(dst_parent, name)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=dst_parent)
                    made = self._mkdir(dst_parent, name, src, mdt)
            fd = fsio.open_subdir(dst_parent, name, source=False)  # a directory, or ENOTDIR
        try:
            if src_fd is not None:
                self.fs.sync_dir_layout(src_fd, fd)
            try:
                dst_st = os.fstat(fd)
                covered = proven and self.proof is not None and self.proof.covers(src.ctime_ns, dst_st.st_ctime_ns)
                src_xattrs = self.idmap.xattrs(xattrs.read_all(src_fd, self.can)) \
                    if src_fd is not None and not covered else None
                metadata.apply_fd(fd, src, xattrs=src_xattrs, times=False, can=self.can, writable_dir=True,
                                  st=dst_st)
            except OSError as exc:
                self.walk.fail(rel, "set directory metadata", exc, side="target")
        except BaseException:
            os.close(fd)
            raise
        return fd, made

    def _mkdir(self, dst_parent: int, name: str, src: Record, mdt: int | None) -> bool:
        """Create target directory ``name`` (counted); False when the name is taken."""
        try:
            self.fs.mkdir(dst_parent, name, mdt)
        except FileExistsError:
            return False
        self.tally[C.DIRS_CREATED] += 1
        if self.can.loses(src.uid, src.gid):
            self.tally[C.NOT_PRESERVED] += 1
        return True


class _Chain:
    """``on_open`` callback of a source directory opened from the root: whether every directory on the way
    is proven (:func:`cmover.core.cleanpass.dir_proven`); one ``fstat`` each while they are."""

    __slots__ = ("proof", "proven")

    def __init__(self, proof: cleanpass.Proof | None) -> None:
        self.proof = proof
        self.proven = proof is not None

    @property
    def hook(self) -> _Chain | None:
        """The callback to hand to the opener; None without a proof (nothing to check, no ``fstat``)."""
        return self if self.proven else None

    def __call__(self, fd: int) -> None:
        if self.proven:
            self.proven = cleanpass.dir_proven(self.proof, True, os.fstat(fd).st_ctime_ns)


def _leaf(src_fd: int, job: DirJob) -> bool:
    """Whether subdirectory job ``job`` of the source directory open as ``src_fd`` holds no subdirectory (for
    :meth:`~cmover.engine.walker.Walker.subdirs`: asked only while another process waits for work)."""
    return fsio.leaf_dir(src_fd, job.rel.rpartition(b"/")[2])


def _has_project(src_fd: int, dst_fd: int) -> bool:
    """Whether source directory ``src_fd`` has a project that target directory ``dst_fd`` holds too (its
    directory task gave it; a target that cannot store it does not): then the project ids of the files in it
    are compared on every pass. A directory that cannot be asked says no (its own task reports it)."""
    try:
        src = projid.read(src_fd)
        return src is not None and src.present and projid.read(dst_fd) == src
    except OSError:
        return False


__all__ = ["CopyPass", "ConfinementError"]
