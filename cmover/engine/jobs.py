"""What a pass task hands on besides its counters: jobs for other tasks, and per-item failures.

Jobs. A pass engine publishes more work through its ``emit`` callback as :class:`Job` objects; the
task layer turns each into one task message. A job tells it four things: its ``kind`` (with the pass
kind, the task name), the inputs of its deterministic task id (``rel``, ``index`` and :meth:`Job.ident`,
see :func:`cmover.state.ledger.task_id`; the ledger relies on the same work getting the same id) and its
message arguments after the pass spec (:meth:`Job.wire_args`, JSON). Every pass has :class:`DirJob` and
:class:`FilesJob`; a pass with work of another shape declares its own job next to its engine
(:class:`cmover.engine.chunks.ChunkJob`, :class:`cmover.engine.deletepass.PurgeJob`). Every job class derives
from :class:`~cmover.core.frozen.Frozen`: immutable, equal to a job of its class with the same fields, never to
anything else (not a named tuple: a job would equal a plain tuple, and a tuple already has an ``index``).

Failures. One entry that cannot be handled is a per-item failure: :func:`report_failure` counts it,
logs it under the pass's logger and hands the :class:`~cmover.core.failure.Failure` record on; the rest
of the task goes on. Before that, an operation that failed with an errno saying "try again"
(:data:`~cmover.core.errors.TRANSIENT_ERRNOS`: ESTALE and ETIMEDOUT are real on Lustre and NFS) is
run again a few times by :func:`retry_transient`, the one place those errors are handled.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.errors import TRANSIENT_ERRNOS
from cmover.core.failure import Failure, item_failure
from cmover.core.frozen import Frozen
from cmover.core.logformat import at
from cmover.core.paths import display, to_wire

log = logging.getLogger(__name__)

T = TypeVar("T")


class Job(Protocol):
    """Work handed to another task of the same pass (see the module doc)."""

    kind: ClassVar[str]  # the task's kind within its pass: cmover.<pass>.<kind>

    @property
    def rel(self) -> bytes:
        """The directory (or file) the job is about, relative to the pass roots."""
        ...

    @property
    def index(self) -> int:
        """Position among the jobs of the same kind and path (batch or chunk number; 0 otherwise)."""
        ...

    def ident(self) -> tuple[bytes, ...]:
        """What the task id covers besides pass, kind, path and index."""
        ...

    def wire_args(self) -> list[Any]:
        """The task's message arguments after the pass spec (JSON)."""
        ...


#: Further (directory, MDT) pairs of a directory job (see :class:`DirJob`).
Dirs = tuple[tuple[bytes, int | None], ...]


class DirJob(Frozen):
    """Walk directory ``rel`` (``mdt``: the MDT a new target directory is created on; None: its parent's).

    ``also``: further directories, each with its MDT, walked by the same task after ``rel``, in this order
    (sibling directories handed out together: :meth:`cmover.engine.walker.Walker.subdirs`), so that a tree of
    many small directories costs a task per share of work, not per directory. Its task id covers them.

    ``made``: the pass's command has just created the target of ``rel`` (the root directory task of a copy
    into a new target root, :func:`cmover.engine.planner.create_target_root`), so its names are created there
    without a lookup first, as in a directory the walk creates (:meth:`cmover.engine.copypass.CopyPass._entries`);
    only with no ``also``.
    """

    __slots__ = ("rel", "mdt", "also", "made")
    kind: ClassVar[str] = "dir"
    rel: bytes
    mdt: int | None
    also: Dirs
    made: bool

    def __init__(self, rel: bytes, mdt: int | None = None, also: Dirs = (), made: bool = False) -> None:
        if made and also:
            raise ValueError("a directory job for a target just made names no further directories")
        object.__setattr__(self, "rel", rel)
        object.__setattr__(self, "mdt", mdt)
        object.__setattr__(self, "also", also)
        object.__setattr__(self, "made", made)

    @classmethod
    def group(cls, jobs: Sequence[DirJob]) -> DirJob:
        """One job walking the directories of ``jobs`` (single-directory jobs), in order."""
        first, *rest = jobs
        return cls(first.rel, first.mdt, tuple((j.rel, j.mdt) for j in rest))

    def members(self) -> list[DirJob]:
        """The single-directory jobs this one walks, in order (itself when it has no ``also``)."""
        if not self.also:
            return [self]
        return [DirJob(self.rel, self.mdt), *(DirJob(rel, mdt) for rel, mdt in self.also)]

    @property
    def index(self) -> int:
        return 0

    def ident(self) -> tuple[bytes, ...]:
        # A directory's path is set apart by the separator a name cannot hold (as FilesJob's further ones).
        return tuple(b"/" + rel for rel, _ in self.also)

    def wire_args(self) -> list[Any]:
        args: list[Any] = [to_wire(self.rel), self.mdt]
        if self.also:
            args.append([[to_wire(rel), mdt] for rel, mdt in self.also])
        elif self.made:
            args += [None, True]
        return args


def dir_hand_outs(emit: Callable[[Job], None]) -> tuple[Callable[[bytes], None], Callable[[list[bytes]], None]]:
    """How a walk that knows its subdirectories by path alone hands them out through ``emit``: one as a
    :class:`DirJob`, several as one (``hand_out`` and ``group`` of :meth:`cmover.engine.walker.Walker.subdirs`)."""

    def one(rel: bytes) -> None:
        emit(DirJob(rel))

    def several(rels: list[bytes]) -> None:
        emit(DirJob.group([DirJob(rel) for rel in rels]))

    return one, several


#: Further (directory, names) pairs of a batch job (see :class:`FilesJob`).
Groups = tuple[tuple[bytes, tuple[bytes, ...]], ...]


class FilesJob(Frozen):
    """Handle the entries ``names`` of directory ``rel``: batch ``index`` of a big directory's listing.

    ``also``: the entries of further directories, handled by the same task after ``rel``'s, in this order
    (sorted, so that they share the directories on their way: :func:`cmover.core.fsio.sharing_dirs`). Only a
    journal-driven pass gathers the few changed names of many directories that way
    (:func:`cmover.engine.changeplan.gather`); the walk's batches name one directory.

    A batch's task id covers its names, not only its position (see :func:`cmover.state.ledger.task_id`).

    ``made``: a copy pass's directory task created the target directory ``rel`` (empty then), so this batch's
    names are created there without a lookup first (:meth:`cmover.engine.copypass.CopyPass.run_files`); only
    with no ``also``.
    """

    __slots__ = ("rel", "names", "index", "also", "made")
    kind: ClassVar[str] = "files"
    rel: bytes
    names: tuple[bytes, ...]
    index: int
    also: Groups
    made: bool

    def __init__(self, rel: bytes, names: tuple[bytes, ...], index: int = 0, also: Groups = (),
                 made: bool = False) -> None:
        if made and also:
            raise ValueError("a batch of a directory just made names no further directories")
        object.__setattr__(self, "rel", rel)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "also", also)
        object.__setattr__(self, "made", made)

    def ident(self) -> tuple[bytes, ...]:
        if not self.also:
            return self.names
        # A directory's path is set apart from names by the separator a name cannot hold.
        return self.names + tuple(x for rel, names in self.also for x in (b"/" + rel, *names))

    def wire_args(self) -> list[Any]:
        args: list[Any] = [to_wire(self.rel), [to_wire(n) for n in self.names]]
        if self.also:
            args.append([[to_wire(rel), [to_wire(n) for n in names]] for rel, names in self.also])
        elif self.made:
            args += [None, True]
        return args


def run_groups(groups: list[tuple[bytes, list[bytes]]], batch_seconds: float, emit: Callable[[Job], None],
               one: Callable[[bytes, list[bytes]], None]) -> None:
    """Run ``one(rel, names)`` for each (directory, names) pair of a batch job (:class:`FilesJob`: its own
    pair, then ``also``), sharing the directories on their way (:func:`cmover.core.fsio.sharing_dirs`). Once
    ``batch_seconds`` have passed (the consumer timeout's budget), the pairs not begun become one job."""
    if len(groups) == 1:
        one(*groups[0])
        return
    deadline = time.monotonic() + batch_seconds
    with fsio.sharing_dirs():
        for i, (rel, names) in enumerate(groups):
            if i and time.monotonic() > deadline:
                emit(FilesJob(rel, tuple(names), 0, tuple((r, tuple(n)) for r, n in groups[i + 1:])))
                return
            one(rel, names)


def report_failure(tally: Counter[str], on_failure: Callable[[Failure], None], rel: bytes, op: str,
                   exc: BaseException, side: str = "source", logger: logging.Logger = log) -> None:
    """Count, log (under ``logger``: the pass's) and hand on one per-item failure of entry ``rel``."""
    tally[C.FAILED] += 1
    failure = item_failure(rel, op, exc, side)
    logger.warning("%s", failure.line(), extra=at(rel))
    on_failure(failure)


#: Pauses (seconds) before the retries of an operation that failed with a transient errno: at most
#: len(TRANSIENT_PAUSES) retries, then the last error is reported like any other.
TRANSIENT_PAUSES = (0.05, 0.2, 0.5)


def retry_transient(work: Callable[[], T], first: OSError, path: bytes) -> T:
    """Run ``work`` again after it failed with ``first`` on entry ``path``, if that error is transient.

    Called from the ``except`` clause of an operation's first attempt, so that the common case costs
    nothing. ``first`` is re-raised at once unless its errno is in TRANSIENT_ERRNOS; otherwise ``work``
    (which must be safe to repeat: every per-item operation decides from a fresh ``lstat``) is run
    again after each pause of TRANSIENT_PAUSES while it keeps failing with a transient errno. Returns
    what a successful attempt returned; raises the error of the last attempt (or a non-transient one).
    """
    if first.errno not in TRANSIENT_ERRNOS:
        raise first
    err = first
    for pause in TRANSIENT_PAUSES:
        log.info("%s: %s (%s); trying again in %.2f s", display(path), err.strerror,
                 errno.errorcode.get(err.errno or 0, err.errno), pause, extra=at(path))
        time.sleep(pause)
        try:
            return work()
        except OSError as exc:
            if exc.errno not in TRANSIENT_ERRNOS:
                raise
            err = exc
    raise err


def retrying(work: Callable[[], T], path: bytes) -> T:
    """``work()``, with :func:`retry_transient` when it fails with a transient errno."""
    try:
        return work()
    except OSError as exc:
        return retry_transient(work, exc, path)

