"""The directory walk every pass engine shares: listings, batches, the inline budget, directory pairs.

A pass task handles one directory (or one batch of a big one) and may walk small subtrees inline. What
every pass does the same way is here, in a :class:`Walker` that each task builds; the pass engine
keeps only what it does with a directory, a non-directory entry and a subdirectory.

* **Listing** (:meth:`Walker.scan`): ``os.scandir`` on the directory's descriptor, streamed.
  Subdirectories are returned by name; non-directory entries are held until there are more than
  ``spec.batch`` of them, and then each full batch goes to the ``on_batch`` callback while reading goes
  on (the copy and delete passes publish it as a batch job, a purge removes it at once). The batches of
  one listing grow: twice as big every :data:`GROW_EVERY` batches, up to :data:`GROW_MAX` times
  ``spec.batch``, so that a directory of millions of entries costs hundreds of tasks, not thousands (a
  task's dispatch is milliseconds, a batch of unchanged entries not much more); a batch whose entries
  prove slow spreads again (:meth:`cmover.engine.copypass.CopyPass.run_files`). Whatever the directory's
  size, a task holds at most one batch of entries; the rest (up to one batch) is returned and handled
  inline by the caller.
* **Inline budget** (:meth:`Walker.start`, :meth:`Walker.charge`, :meth:`Walker.inline`): dispatching a
  task costs more than a small directory's work (design §8), so a task walks subdirectories inline
  while its budget lasts, ``spec.inline_entries`` entries charged by the engine and
  ``spec.inline_seconds`` seconds from the start of the task. Past it, every further subdirectory is
  handed out, so large trees still spread over all workers: in jobs of several sibling directories where
  the engine can group them (``group`` of :meth:`Walker.subdirs`: a directory job's ``also``), each about a
  budget of entries by the size of the subdirectories the task walked, so that a tree of many small
  directories costs a task per share of work, not one per directory.
* **Sharing with waiting peers** (:meth:`Walker.subdirs`, :func:`share_with`): where a process knows that
  another process of its machine's pool waits for work (the embedded pool, a distributed worker's prefork
  pool: :mod:`cmover.core.idle`), a task hands a subdirectory out as a job even within its budget: the one
  waiting at the shallowest level of its walk (the biggest share it has to give), so that a big subtree found
  by one task spreads over the idle processes at once instead of after ``spec.inline_entries`` entries walked
  alone, and in shares worth a job. Processes of other machines are not seen: the budget alone spreads work
  to them.
* **Directory pairs** (:meth:`Walker.pair`, :meth:`Walker.open_dir`): the source and target directory
  of one relative path, opened from the pass roots without following a symlink in any component.
  A directory that cannot be opened is reported as a failure of that path ("open directory" on the
  source, "open target directory" on the target), except a missing one (``FileNotFoundError``), for
  which the engine says what it means: ``missing=walker.vanished`` (gone since its parent was listed:
  counted as vanished), ``walker.ignore``, its own callback, or None (a failure like any other).
* **Per-item errors** (:meth:`Walker.guard`, :meth:`Walker.lstat_error`, :meth:`Walker.fail`): see
  :mod:`cmover.engine.jobs`; transient errnos are retried there, everything else is reported under
  the pass's logger and the walk goes on.

Not thread-safe: one walker per task, like the engines.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Literal, TypeVar

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.errors import ItemError, SourceChangedError
from cmover.core.failure import Failure
from cmover.core.frozen import NamedTuple
from cmover.core.logformat import at
from cmover.core.passes import PassSpec
from cmover.core.paths import display, join
from cmover.engine.jobs import report_failure, retry_transient

Entries = list[os.DirEntry[str]]
T = TypeVar("T")

#: Whether another process of this run waits for work now, asked before each subdirectory a task could walk
#: inline with the entries the task has walked so far (see :func:`share_with`); None: nothing is known of other
#: processes.
_peer_waits: Callable[[int], bool] | None = None
#: Whether a process waits, without claiming it; and the seconds a subdirectory known to hold no subdirectory (a
#: leaf) must be estimated to take for a waiting process to get it (see :func:`share_with`); 0: any subdirectory.
_anyone_waits: Callable[[], bool] | None = None
_least_leaf = 0.0

#: A listing's batches double in size every GROW_EVERY batches, up to GROW_MAX times ``spec.batch`` (see the
#: module doc). Measured: 200,000 unchanged files in one directory, BATCH 1000, 2 worker processes, distributed
#: no-change pass 1.30-1.44 s with batches of 1,000 (a worker process waits for the broker's next delivery
#: after each), 0.91-0.94 s growing to 8,000; embedded 0.82-0.83 s and 0.80-0.81 s.
GROW_EVERY = 2
GROW_MAX = 8


def share_with(peer_waits: Callable[[int], bool] | None, *, anyone_waits: Callable[[], bool] | None = None,
               least_leaf: float = 0.0) -> None:
    """Set, for every walk of this process, what says whether another process of the run waits for work (None:
    nothing is known; the budget alone decides); it is given the entries the asking task has walked so far.
    Each time it says True, a task hands one subdirectory out as a job (:meth:`Walker.subdirs`): ``peer_waits``
    should count that one as given to the waiting process, so that one process waiting gets one job. Advisory
    only: a subdirectory walked inline or handed out is copied the same way.

    ``least_leaf`` (seconds, with ``anyone_waits``, which says whether a process waits without counting it as
    given): where a job costs more than a small directory's walk (a distributed worker's: a broker round trip,
    its ledger and its counters, about 4 ms of CPU), a subdirectory that its engine knows to hold no
    subdirectory is handed out only when the task's directories have taken that long each on average; one
    with subdirectories, or of unknown kind, is handed out as before. The engine is asked (``leaf`` of
    :meth:`Walker.subdirs`, one ``lstat``) only while a process waits, once per subdirectory."""
    global _peer_waits, _anyone_waits, _least_leaf
    _peer_waits = peer_waits
    _anyone_waits = anyone_waits if least_leaf > 0 else None
    _least_leaf = least_leaf if anyone_waits is not None else 0.0


class Listing(NamedTuple):
    """One directory as read by :meth:`Walker.scan`."""

    entries: Entries  # non-directories not handed to ``on_batch`` (at most one batch), in listing order
    subdirs: list[bytes]  # names of the subdirectories, in listing order
    complete: bool  # False when reading failed part-way (reported) or ``on_batch`` stopped it


class _Level(Generic[T]):
    """The subdirectories of one directory left to walk (see :meth:`Walker.subdirs`), how they are handed out,
    and what the ones walked inline held: ``walked`` of them, ``entries`` charged while they were walked."""

    __slots__ = ("items", "hand_out", "group", "leaf", "walked", "entries", "small")

    def __init__(self, items: deque[T], hand_out: Callable[[T], object],
                 group: Callable[[list[T]], object] | None, leaf: Callable[[T], bool] | None = None) -> None:
        self.items = items
        self.hand_out = hand_out
        self.group = group
        self.leaf = leaf
        self.walked = 0
        self.entries = 0
        self.small = 0  # items at the front found leaves too small to hand out (see Walker._worth_a_job)

    def per_job(self, spec: PassSpec, walked: int, entries: int) -> int:
        """How many of the subdirectories left make a job worth a task: about ``spec.inline_entries`` entries
        by the average of the ones walked at this level, else of all the task walked (``walked`` subdirectories
        holding ``entries``: past the budget, where a directory's listing alone can spend it), at most
        ``spec.batch``; 1 with no ``group`` or nothing walked yet, sizes unknown (a subdirectory may hold a big
        subtree). A share that proves bigger than its estimate costs one more hand-out: the task that walks it
        hands out what it does not reach."""
        if self.walked:
            walked, entries = self.walked, self.entries
        if self.group is None or not walked:
            return 1
        per_dir = max(1, entries // walked)
        return max(1, min(spec.batch, spec.inline_entries // per_dir))

    def give(self, count: int, spec: PassSpec, sizes: tuple[int, int]) -> None:
        """Hand out the last ``count`` subdirectories left, in order, in jobs of :meth:`per_job` (``sizes``: the
        task's walked subdirectories and their entries)."""
        size = self.per_job(spec, *sizes)
        taken = [self.items.pop() for _ in range(count)]
        taken.reverse()
        for i in range(0, len(taken), size):
            share = taken[i:i + size]
            if len(share) == 1 or self.group is None:
                for one in share:
                    self.hand_out(one)
            else:
                self.group(share)


class Walker:
    """The walk of one pass task over ``spec``'s roots; counts into ``tally``, reports through ``on_failure``."""

    __slots__ = ("spec", "tally", "on_failure", "log", "_budget", "_deadline", "_levels", "_sizes", "_began")

    def __init__(self, spec: PassSpec, tally: Counter[str], on_failure: Callable[[Failure], None],
                 logger: logging.Logger) -> None:
        """``logger`` is the pass engine's: its failures are logged under its name."""
        self.spec = spec
        self.tally = tally
        self.on_failure = on_failure
        self.log = logger
        self._budget = 0
        self._deadline = 0.0
        # The subdirectories not yet walked at each level of the walk inline, shallowest first, each with how
        # they are handed out (see subdirs).
        self._levels: list[_Level[Any]] = []
        # The subdirectories this task walked inline (at any level) and the entries charged while they were.
        self._sizes = (0, 0)
        self._began = 0.0

    # -- the inline budget -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the task's budget: ``spec.inline_entries`` entries and ``spec.inline_seconds`` from now."""
        self._budget = self.spec.inline_entries
        self._began = time.monotonic()
        self._deadline = self._began + self.spec.inline_seconds

    def charge(self, entries: int) -> None:
        """Count ``entries`` handled (or about to be) by this task against its budget."""
        self._budget -= entries

    def inline(self) -> bool:
        """Whether the next subdirectory is walked by this task (else: published as a job of its own): while the
        budget lasts, unless another process of the run waits for work and no subdirectory of a level of
        :meth:`subdirs` is left to give it instead (:func:`share_with`)."""
        if self._over():
            return False
        return not self._share()

    def _over(self) -> bool:
        return self._budget <= 0 or time.monotonic() >= self._deadline

    def subdirs(self, items: Iterable[T], hand_out: Callable[[T], object],
                group: Callable[[list[T]], object] | None = None, leaf: Callable[[T], bool] | None = None
                ) -> Iterator[T]:
        """The subdirectories ``items`` of a directory that this task walks inline, in order; each of the others
        goes to ``hand_out`` (which publishes it as a job of its own), or with others of them to ``group`` (which
        publishes them as one job), exactly once.

        Past the budget every remaining one is handed out: with ``group``, in jobs of about a task's budget of
        entries each, as estimated from the ones this task walked at this level, else anywhere (one per job
        while it walked none, and where each holds a budget or more). Within the budget, each time another
        process of the run waits for work (:func:`share_with`), one is handed out: the last one left at the
        shallowest level of the walk (this directory's, or an ancestor's still being walked), the farthest from
        where the walk is, whose subtree is likely the biggest share left to give. ``leaf``: whether an item is
        known to hold no subdirectory (see :func:`share_with`'s ``least_leaf``).
        """
        level = _Level(deque(items), hand_out, group, leaf)
        self._levels.append(level)
        left = level.items
        try:
            while left:
                item = left.popleft()
                judged = level.small > 0  # found a small leaf before (see _worth_a_job)
                if judged:
                    level.small -= 1
                if self._over():
                    left.appendleft(item)
                    level.give(len(left), self.spec, self._sizes)  # the rest, in as many jobs as they are worth
                elif self._share(item, judged):
                    hand_out(item)  # a process waits and nothing is left above: it gets this one
                else:
                    before = self._budget
                    yield item
                    spent = before - self._budget
                    level.walked += 1
                    level.entries += spent
                    walked, entries = self._sizes
                    self._sizes = (walked + 1, entries + spent)
        finally:
            # By identity: a loop left by an exception may close its generator after a deeper level's.
            self._levels[:] = [lv for lv in self._levels if lv is not level]

    def members(self, items: list[T], hand_out: Callable[[T], object],
                group: Callable[[list[T]], object] | None = None) -> Iterator[T]:
        """The directories of one directory job (:attr:`cmover.engine.jobs.DirJob.also`) that this task walks,
        in order, starting its budget: :meth:`subdirs` over them, so that those it does not reach are handed out
        again; a job of one directory is walked whatever the budget, since handing it out would publish the
        job's own task id again."""
        self.start()
        if len(items) == 1:
            yield items[0]
            return
        yield from self.subdirs(items, hand_out, group)

    def _share(self, current: Any = None, judged: bool = False) -> bool:
        """Give every process of the run waiting for work (:func:`share_with`) the last subdirectory left at the
        shallowest level of :meth:`subdirs` that has one; True when one waits and none is left: the caller hands
        out the subdirectory it is about to walk (``current``; ``judged``: it was found a leaf before). With a least
        leaf, a small leaf is passed over, and nothing is handed out when no subdirectory left is worth a job
        (:meth:`_worth_a_job`)."""
        peer_waits = _peer_waits
        if peer_waits is None:
            return False
        anyone_waits = _anyone_waits
        while True:
            if anyone_waits is None:
                level = next((lv for lv in self._levels if lv.items), None)
            elif not anyone_waits():
                return False
            else:
                found = self._worth_a_job(current, judged)  # a level whose last is worth a job, or `current` (None)
                if found is False:
                    return False
                level = found
            if not peer_waits(self.spec.inline_entries - self._budget):
                return False
            if level is None:
                return True
            # One subdirectory, whatever the sizes: half of a level of small ones as one job made the no-change
            # pass over 10^5 directories of 10 files 8% slower (the tail of big shares), for 3% on the full copy
            # of such a tree.
            level.hand_out(level.items.pop())

    def _worth_a_job(self, current: Any, judged: bool) -> _Level[Any] | None | Literal[False]:
        """With a least leaf (:func:`share_with`), what :meth:`_share` hands out next: the level whose last
        subdirectory is worth a job, the shallowest first; None for ``current``, the one about to be walked;
        False when none is. A leaf (its level's ``leaf`` says so) is not worth a job while this task's directories
        have taken less than the least leaf on average (the ones walked inline and the one being walked): it holds
        what its listing holds, no subtree, and handed out, costs more than its walk. A leaf found so moves to the
        front of its level, to be walked inline next; each subdirectory is asked about once."""
        per_dir = (time.monotonic() - self._began) / (self._sizes[0] + 1)
        small = per_dir < _least_leaf
        for level in self._levels:
            items, leaf = level.items, level.leaf
            if leaf is None:
                if items:
                    return level
                continue
            while level.small < len(items):
                if not (small and leaf(items[-1])):
                    return level
                items.rotate(1)
                level.small += 1
        if current is None or not self._levels:
            return None
        leaf = self._levels[-1].leaf
        if leaf is not None and small and (judged or leaf(current)):
            return False
        return None

    # -- listing ---------------------------------------------------------------------------------------

    def scan(self, rel: bytes, fd: int, *, side: str = "source",
             on_batch: Callable[[Entries, int], object] | None = None,
             excluded: Callable[[bytes], bool] | None = None, grow: bool = True) -> Listing:
        """Read directory ``rel``, open as ``fd`` on ``side``, streaming (see the module doc).

        ``on_batch(entries, index)`` receives each full batch of non-directory entries (``index`` 0, 1,
        ...; ``spec.batch`` entries, twice as many every :data:`GROW_EVERY` batches up to :data:`GROW_MAX`
        times as many, or always ``spec.batch`` when not ``grow``) while the listing is read; when it returns
        False reading stops (the listing is incomplete). Without ``on_batch`` non-directories are skipped: only
        subdirectories are listed. ``excluded`` (a relative path -> True to leave it out) drops entries, counted
        as excluded. A listing that
        fails part-way is reported ("list directory" on ``side``) and what was read is returned; what
        ``on_batch`` raises is not a listing failure and propagates (e.g. broker trouble while
        publishing: the task is then delivered again). Entries whose type cannot be told from the
        listing count as non-directories: the engine decides again from a fresh ``lstat`` when it
        handles them.
        """
        subdirs: list[bytes] = []
        pending: Entries = []
        complete = True
        handing_on = False
        try:
            with os.scandir(fd) as it:
                if on_batch is None:
                    for entry in it:
                        if fsio.entry_is_dir(entry) and (excluded is None or not self._excluded(excluded, rel, entry)):
                            subdirs.append(os.fsencode(entry.name))
                    return Listing(pending, subdirs, True)
                batch = self.spec.batch
                index = 0
                # The loop every pass runs once per entry: keep it lean.
                for entry in it:
                    if excluded is not None and self._excluded(excluded, rel, entry):
                        continue
                    if fsio.entry_is_dir(entry):
                        subdirs.append(os.fsencode(entry.name))
                        continue
                    pending.append(entry)
                    if len(pending) > batch:
                        # More than one batch: a big directory; full batches go on while reading.
                        handing_on = True
                        if on_batch(pending[:batch], index) is False:
                            del pending[:]
                            return Listing(pending, subdirs, False)
                        handing_on = False
                        index += 1
                        del pending[:batch]
                        if grow and index % GROW_EVERY == 0 and batch < self.spec.batch * GROW_MAX:
                            batch *= 2
        except OSError as exc:
            if handing_on:
                raise
            # Entries already read are returned: the engine handles them, each on its own.
            self.fail(rel, "list directory", exc, side=side)
            complete = False
        return Listing(pending, subdirs, complete)

    def _excluded(self, excluded: Callable[[bytes], bool], rel: bytes, entry: os.DirEntry[str]) -> bool:
        if excluded(join(rel, os.fsencode(entry.name))):
            self.tally[C.EXCLUDED] += 1
            return True
        return False

    # -- opening directories ---------------------------------------------------------------------------

    def open_dir(self, rel: bytes, *, source: bool, missing: Callable[[bytes], None] | None,
                 on_open: Callable[[int], object] | None = None) -> int | None:
        """Open directory ``rel`` on the source or target side; None (reported, see the module doc) if it
        cannot be. The caller closes the descriptor. ``on_open``: see :func:`cmover.core.fsio.open_dir`."""
        try:
            root = self.spec.src_root if source else self.spec.dst_root
            if on_open is None:
                return fsio.open_dir(root, rel, source=source)
            return fsio.open_dir(root, rel, source=source, on_open=on_open)
        except OSError as exc:
            if missing is not None and isinstance(exc, FileNotFoundError):
                missing(rel)
            else:
                self.fail(rel, "open directory" if source else "open target directory", exc,
                          side="source" if source else "target")
            return None

    @contextmanager
    def pair(self, rel: bytes, *, src_missing: Callable[[bytes], None] | None,
             dst_missing: Callable[[bytes], None] | None,
             check_source: Callable[[bytes, int], bool] | None = None,
             on_open: Callable[[int], object] | None = None) -> Iterator[tuple[int, int] | None]:
        """The source and target directory ``rel`` as ``(src_fd, dst_fd)``, closed on exit; None when either
        cannot be opened (reported as :meth:`open_dir` says). ``check_source(rel, src_fd)`` may refuse the
        source (it reports why) before the target is opened. ``on_open`` sees each source directory opened
        on the way (:func:`cmover.core.fsio.open_dir`)."""
        src_fd = self.open_dir(rel, source=True, missing=src_missing, on_open=on_open)
        if src_fd is None:
            yield None
            return
        try:
            if check_source is not None and not check_source(rel, src_fd):
                yield None
                return
            dst_fd = self.open_dir(rel, source=False, missing=dst_missing)
            if dst_fd is None:
                yield None
                return
            try:
                yield src_fd, dst_fd
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def open_child(self, parent_fd: int, rel: bytes, *, source: bool = True) -> int | None:
        """Open subdirectory ``rel`` (its last component) inside ``parent_fd``; None when it vanished
        (counted) or cannot be opened (reported)."""
        try:
            return fsio.open_subdir(parent_fd, rel.rpartition(b"/")[2], source=source)
        except FileNotFoundError:
            self.vanished(rel)
        except OSError as exc:
            self.fail(rel, "open directory" if source else "open target directory", exc,
                      side="source" if source else "target")
        return None

    def vanished(self, rel: bytes) -> None:
        """Count an entry that was listed and is gone now (a race with a live source, not a failure)."""
        self.tally[C.VANISHED] += 1

    @staticmethod
    def ignore(rel: bytes) -> None:
        """A missing directory that means nothing to report (``missing=walker.ignore``)."""

    # -- per-item errors -------------------------------------------------------------------------------

    def guard(self, path: bytes, src_fd: int, name: str, work: Callable[[], None], op: str = "copy") -> None:
        """Run ``work`` on entry ``name`` (path ``path``) of source directory ``src_fd``: the per-entry guard.

        A transient errno is retried (:func:`cmover.engine.jobs.retry_transient`); then a source that
        changed meanwhile is counted (``changed``: left for the next pass), a ``FileNotFoundError`` is a
        vanished entry when the source entry is gone and a failure (target side) otherwise, and any other
        OSError or ItemError is a failure of ``op``. Only those are caught.
        """
        try:
            try:
                work()
            except OSError as exc:
                retry_transient(work, exc, path)
        except SourceChangedError as exc:
            self.tally[C.CHANGED] += 1
            self.log.info("%s: %s; left for the next pass", display(path), exc, extra=at(path))
        except FileNotFoundError as exc:
            if fsio.lstat_at(src_fd, name) is None:
                self.vanished(path)  # deleted on the source while we worked on it
            else:
                self.fail(path, op, exc, side="target")
        except (OSError, ItemError) as exc:
            self.fail(path, op, exc, side=_side_of(exc) if isinstance(exc, OSError) else exc.side)

    def lstat_error(self, path: bytes, exc: OSError, again: Callable[[], os.stat_result]) -> os.stat_result | None:
        """After ``exc`` from the ``lstat`` of a listed source entry: retry a transient one with ``again``;
        None when the entry vanished (counted) or cannot be read (reported as an "lstat" failure)."""
        try:
            return retry_transient(again, exc, path)
        except FileNotFoundError:
            self.vanished(path)
        except OSError as last:
            self.fail(path, "lstat", last)
        return None

    def fail(self, rel: bytes, op: str, exc: BaseException, side: str = "source") -> None:
        """Report one per-item failure of ``rel`` (see :func:`cmover.engine.jobs.report_failure`)."""
        report_failure(self.tally, self.on_failure, rel, op, exc, side, self.log)


def _side_of(exc: OSError) -> str:
    # ENOSPC/EDQUOT/EROFS can only come from writing the target.
    return "target" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "source/target"
