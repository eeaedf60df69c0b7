"""The copy pass engine: one directory (and small subtrees inline) or one batch of entries.

Plain Python, no Celery: the task layer calls :meth:`CopyPass.run_dir` / :meth:`CopyPass.run_files`
and publishes the :class:`Job` objects handed to ``emit``.

Work sharing (design §8): dispatching a task costs more than a small directory's work, so a directory
task handles its own entries when they fit in one batch and walks subdirectories inline while its
budget (``inline_entries`` entries, ``inline_seconds`` seconds) lasts. Past the budget, every further
subdirectory becomes a task of its own, so large trees still spread over all workers. A directory
with more than ``batch`` entries is streamed into batch jobs as it is read: memory stays bounded by
one batch, whatever the directory size.

Failures are per item: a directory or file that cannot be read or written is reported through
``on_failure`` and the walk goes on with the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cmover import fsio, metadata, xattrs
from cmover.chunks import Chunker, ChunkJob, ChunkSpec
from cmover.copier import Copier
from cmover.errors import ConfinementError, Failure, ItemError, SourceChangedError, item_failure
from cmover.filters import Filter
from cmover.hardlinks import HardLinker
from cmover.ledger import RunClaims
from cmover.lustre.base import FsApi
from cmover.passes import PassSpec
from cmover.paths import components, display, join, to_wire
from cmover.record import Record
from cmover.stats import C

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    """Work handed to another task: a directory, a batch of entries of ``rel``, or chunk ``index`` of file ``rel``."""

    kind: str  # "dir", "files", "chunk" or "purge"
    rel: bytes
    names: tuple[bytes, ...] = ()
    index: int = 0
    mdt: int | None = None
    chunk: ChunkSpec | None = None
    root: bytes = b""  # kind "purge": the deleted tree ``rel`` belongs to

    def ident(self) -> tuple[bytes, ...]:
        """What the job's task id covers besides kind, path and index (see :func:`cmover.ledger.task_id`)."""
        if self.chunk is not None:
            return (self.chunk.key(),)
        return (self.root,) if self.kind == "purge" else self.names

    def wire_args(self) -> list[Any]:
        """The task's message arguments after the pass spec (JSON)."""
        if self.kind == "files":
            return [to_wire(self.rel), [to_wire(n) for n in self.names]]
        if self.chunk is not None:
            return [to_wire(self.rel), self.index, self.chunk.as_wire()]
        if self.kind == "purge":
            return [to_wire(self.rel), to_wire(self.root)]
        return [to_wire(self.rel), self.mdt]


class CopyPass:
    """Copy-pass work of one task. Not thread-safe: build one per task."""

    def __init__(self, spec: PassSpec, fs: FsApi, tally: Counter[str],
                 on_failure: Callable[[Failure], None], emit: Callable[[Job], None],
                 claims: RunClaims | None = None) -> None:
        """``claims`` (the run's ledger claims) enables hard-link groups and chunked copies of huge files."""
        self.spec = spec
        self.fs = fs
        self.tally = tally
        self.on_failure = on_failure
        self.emit = emit
        self.filt = Filter.from_spec(spec)
        links = HardLinker(claims.claim, spec.dst_root) if claims is not None else None
        self.chunker = None
        if claims is not None:
            self.chunker = Chunker(spec.generation, fs, tally, self._emit_chunk, claims, spec.chunk_size)
        self.copier = Copier(fs, self.filt, tally, links, self.chunker, spec.chunk_threshold)
        self._budget = 0
        self._deadline = 0.0

    # -- entry points -------------------------------------------------------------------------------

    def run_dir(self, rel: bytes, mdt: int | None = None) -> None:
        """Process directory ``rel``: create it on the target, handle its entries, fan out or inline subdirs."""
        self._budget = self.spec.inline_entries
        self._deadline = time.monotonic() + self.spec.inline_seconds
        src_fd = self._open_or_fail(rel, source=True)
        if src_fd is None:
            return
        dst_parent = None
        try:
            try:
                if rel:
                    dst_parent = self._open_target_parent(rel)
            except OSError as exc:
                self._fail(rel, "open target parent", exc, side="target")
                return
            self._walk(rel, src_fd, dst_parent, mdt)
        finally:
            os.close(src_fd)
            if dst_parent is not None:
                os.close(dst_parent)

    def run_files(self, rel: bytes, names: Iterable[bytes]) -> None:
        """Copy the listed entries of directory ``rel`` (a batch published by its directory task)."""
        src_fd = self._open_or_fail(rel, source=True)
        if src_fd is None:
            return
        try:
            dst_fd = self._open_or_fail(rel, source=False)
            if dst_fd is None:
                return
            try:
                todo = list(names)
                deadline = time.monotonic() + self.spec.batch_seconds
                for pos, bname in enumerate(todo):
                    if pos and time.monotonic() > deadline:
                        # Long enough for one task (consumer timeout): the rest becomes a batch of its own.
                        self.emit(Job("files", rel, tuple(todo[pos:])))
                        break
                    name = os.fsdecode(bname)
                    try:
                        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        self.tally[C.VANISHED] += 1
                        continue
                    except OSError as exc:
                        self._fail(join(rel, bname), "lstat", exc)
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        continue  # became a directory since listing; its parent's next pass walks it
                    self._entry(rel, src_fd, dst_fd, name, st)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def run_chunk(self, rel: bytes, index: int, cs: ChunkSpec, task_id: str) -> None:
        """Copy chunk ``index`` of file ``rel`` split as ``cs`` (see :mod:`cmover.chunks`)."""
        chunker = self.chunker
        if chunker is None:
            raise AssertionError("run_chunk needs the run's claims")
        parts = components(rel)
        if not parts or index < 0 or index >= cs.count:
            raise ConfinementError(f"chunk {index} of {display(rel)} is outside the file's {cs.count} chunks")
        parent, name = b"/".join(parts[:-1]), os.fsdecode(parts[-1])
        src_fd = self._open_or_fail(parent, source=True)
        if src_fd is None:
            return
        try:
            dst_fd = self._open_or_fail(parent, source=False)
            if dst_fd is None:
                return
            try:
                job = ChunkJob(rel, index, cs)
                self._guarded(rel, src_fd, name, lambda: chunker.run_chunk(src_fd, dst_fd, name, job, task_id))
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _emit_chunk(self, job: ChunkJob) -> None:
        self.emit(Job("chunk", job.rel, index=job.index, chunk=job.cs))

    def _open_or_fail(self, rel: bytes, *, source: bool) -> int | None:
        """Open directory ``rel`` on the source or target side; report a failure and return None if it can't."""
        try:
            return fsio.open_dir(self.spec.src_root if source else self.spec.dst_root, rel, source=source)
        except FileNotFoundError as exc:
            if source and rel:
                # Listed by its parent, then removed or renamed before its task ran: a race on a live
                # source, counted like a vanished file (the next pass copies it under its new name).
                self.tally[C.VANISHED] += 1
                return None
            self._fail(rel, "open directory" if source else "open target directory", exc,
                       side="source" if source else "target")
            return None
        except OSError as exc:
            self._fail(rel, "open directory" if source else "open target directory", exc,
                       side="source" if source else "target")
            return None

    # -- walking ------------------------------------------------------------------------------------

    def _walk(self, rel: bytes, src_fd: int, dst_parent: int | None, mdt: int | None) -> None:
        """Handle directory ``rel`` whose source is open as ``src_fd``; ``dst_parent`` is its target parent."""
        try:
            src_rec = Record.from_stat(os.fstat(src_fd))
            dst_fd = self._ensure_target_dir(rel, dst_parent, src_rec, mdt, src_xattrs=xattrs.read_all(src_fd),
                                             src_fd=src_fd)
        except OSError as exc:
            self._fail(rel, "create target directory", exc, side="target")
            return
        try:
            self.tally[C.DIRS] += 1
            subdirs = self._list(rel, src_fd, dst_fd)
            if subdirs is None:
                return
            self.tally[C.DIRS_FOUND] += len(subdirs)
            first_level = not rel and self.spec.mds_striped and bool(self.spec.mdt_list)
            for i, bname in enumerate(subdirs):
                child = join(rel, bname)
                child_mdt = self.spec.mdt_list[i % len(self.spec.mdt_list)] if first_level else None
                if self._budget > 0 and time.monotonic() < self._deadline:
                    try:
                        child_fd = fsio.open_subdir(src_fd, os.fsdecode(bname), source=True)
                    except FileNotFoundError:
                        self.tally[C.VANISHED] += 1
                        continue
                    except OSError as exc:
                        self._fail(child, "open directory", exc)
                        continue
                    try:
                        self._walk(child, child_fd, dst_fd, child_mdt)
                    finally:
                        os.close(child_fd)
                else:
                    self.emit(Job("dir", child, mdt=child_mdt))
        finally:
            os.close(dst_fd)

    def _list(self, rel: bytes, src_fd: int, dst_fd: int) -> list[bytes] | None:
        """Read directory ``rel``: handle or batch its entries, return its subdirectories (names).

        Entries are handled inline when the directory holds at most one batch; otherwise full batches
        are emitted while reading and the remainder is handled inline. Returns None when the listing
        failed (already reported).
        """
        batch = self.spec.batch
        subdirs: list[bytes] = []
        pending: list[os.DirEntry[str]] = []
        index = 0
        try:
            excluded = self.filt.excluded if self.filt.excludes else None
            with os.scandir(src_fd) as it:
                for entry in it:
                    if excluded is not None and excluded(join(rel, os.fsencode(entry.name))):
                        self.tally[C.EXCLUDED] += 1
                        continue
                    if fsio.entry_is_dir(entry):
                        subdirs.append(os.fsencode(entry.name))
                        continue
                    pending.append(entry)
                    if len(pending) > batch:
                        # More than one batch: this directory is big; hand full batches to other workers.
                        self.emit(Job("files", rel, tuple(os.fsencode(e.name) for e in pending[:batch]), index))
                        index += 1
                        del pending[:batch]
        except OSError as exc:
            self._fail(rel, "list directory", exc)
            # Entries already read are still handled; the rest of the listing is reported as failed.
        self._budget -= len(pending) + len(subdirs)
        for entry in pending:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                self.tally[C.VANISHED] += 1
                continue
            except OSError as exc:
                self._fail(join(rel, os.fsencode(entry.name)), "lstat", exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(os.fsencode(entry.name))
                continue
            self._entry(rel, src_fd, dst_fd, entry.name, st)
        return subdirs

    def _entry(self, rel: bytes, src_fd: int, dst_fd: int, name: str, st: os.stat_result) -> None:
        self.tally[C.SCANNED] += 1
        path = join(rel, os.fsencode(name))
        self._guarded(path, src_fd, name, lambda: self.copier.copy_entry(src_fd, dst_fd, name, st, path))

    def _guarded(self, path: bytes, src_fd: int, name: str, work: Callable[[], None]) -> None:
        """Run the work on one entry; turn its per-item errors into counters and failures."""
        try:
            work()
        except SourceChangedError as exc:
            self.tally[C.CHANGED] += 1
            log.info("%s: %s; left for the next pass", display(path), exc)
        except FileNotFoundError as exc:
            if fsio.lstat_at(src_fd, name) is None:
                self.tally[C.VANISHED] += 1  # deleted on the source while we worked on it
            else:
                self._fail(path, "copy", exc, side="target")
        except (OSError, ItemError) as exc:
            self._fail(path, "copy", exc, side=_side_of(exc) if isinstance(exc, OSError) else "target")

    # -- target directories -------------------------------------------------------------------------

    def _open_target_parent(self, rel: bytes) -> int:
        """Open the target directory that will hold ``rel``, creating missing ancestors from the source.

        Ancestors are missing only when a pass starts at a sub-path on a fresh target; they get the
        owner and mode of their source counterparts.
        """
        fd = fsio.open_root(self.spec.dst_root, source=False)
        src_path = self.spec.src_root
        try:
            for part in components(rel)[:-1]:
                src_path = src_path + b"/" + part
                name = os.fsdecode(part)
                try:
                    nfd = fsio.open_subdir(fd, name, source=False)
                except FileNotFoundError:
                    src_rec = Record.from_stat(os.lstat(src_path))
                    nfd = self._ensure_target_dir(b"", fd, src_rec, None, name=name)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _ensure_target_dir(self, rel: bytes, dst_parent: int | None, src: Record, mdt: int | None,
                           name: str | None = None, src_xattrs: dict[str, bytes] | None = None,
                           src_fd: int | None = None) -> int:
        """Return an open descriptor of the target directory for ``rel``, creating or repairing it.

        A non-directory in its place is removed first: the source holds a directory under that name
        right now, which is the positive proof that the target entry is stale. Owner and mode are
        set from the source, and with ``src_fd`` its default layout (on Lustre); directory times are
        left to the dirtime pass.
        """
        if dst_parent is None:
            fd = fsio.open_root(self.spec.dst_root, source=False)
        else:
            if name is None:
                name = os.fsdecode(components(rel)[-1])
            st = fsio.lstat_at(dst_parent, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dst_parent)
                st = None
            if st is None:
                try:
                    self.fs.mkdir(dst_parent, name, mdt)
                    self.tally[C.DIRS_CREATED] += 1
                except FileExistsError:
                    pass  # a concurrent delivery created it; opening below checks it is a directory
            fd = fsio.open_subdir(dst_parent, name, source=False)
        try:
            if src_fd is not None:
                self.fs.sync_dir_layout(src_fd, fd)
            metadata.apply_fd(fd, src, xattrs=src_xattrs, times=False)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _fail(self, rel: bytes, op: str, exc: BaseException, side: str = "source") -> None:
        report_failure(self.tally, self.on_failure, rel, op, exc, side)


def report_failure(tally: Counter[str], on_failure: Callable[[Failure], None], rel: bytes, op: str,
                   exc: BaseException, side: str = "source") -> None:
    """Count, log and hand on one per-item failure (every pass engine reports this way)."""
    tally[C.FAILED] += 1
    failure = item_failure(rel, op, exc, side)
    log.warning("%s", failure.line())
    on_failure(failure)


def _side_of(exc: OSError) -> str:
    # ENOSPC/EDQUOT/EROFS can only come from writing the target.
    return "target" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "source/target"


__all__ = ["CopyPass", "Job", "ConfinementError"]
