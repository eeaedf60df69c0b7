"""The embedded mode: passes run on one machine with no server to install.

The same tasks and engine as the distributed mode. The broker, ledger, counters and error list are the run's
hub (:mod:`cmover.embedded.hub`), a helper process; the tasks run in this process and in a pool of ``jobs``
processes forked from it (:mod:`cmover.embedded.pool`), so every core copies. An :class:`EmbeddedSession`
starts the hub once and runs passes one after another (``cmover sync``); :func:`run_embedded` is a session of
one pass. A pass runs its root task here, reports progress through ``on_progress`` while the ledger has
outstanding tasks, and returns its result.

A pool process that dies (OOM killer, SIGKILL) loses no task: the session notices, the hub puts back the
messages it was handed, and a new process takes its place.

Lifetime: the session owns the hub and the pool; whatever happens (success, Ctrl-C, an exception) they are
gone when it ends, so nothing is left for the interpreter's exit handlers to wait on. Pool processes and the
hub ignore SIGINT and SIGHUP: a signal sent to the terminal's process group reaches them too, and only the
session decides when they end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from cmover.core import fsio
from cmover.core.errors import FatalError
from cmover.core.failure import Failure
from cmover.core.frozen import NamedTuple
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import Settings
from cmover.embedded.hub import HubLedger, embedded_context, start_hub, stop_hub
from cmover.embedded.pool import HOSTNAME, Pool
from cmover.engine import walker
from cmover.engine.jobs import Job
from cmover.state.errorlist import MEMORY_LIMIT
from cmover.worker import bodies  # noqa: F401  what run_message runs, imported with the rest (see cmover.cli)
from cmover.worker.context import contexts
from cmover.worker.taskbase import Message, Rejected, run_message, seed

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, int], float], None]


class RunResult(NamedTuple):
    """Outcome of a pass: totals by counter name, the failures (up to a limit) and their count, how long it
    took, how it ended ("complete", "interrupted"), and what its kind adds (``deleted``, ``differences``)."""

    spec: PassSpec
    totals: dict[str, int]
    failures: list[Failure]
    failure_count: int
    seconds: float
    state: str
    extra: dict[str, object]


def run_embedded(spec: PassSpec, jobs: int, on_progress: Progress | None = None,
                 stop_event: threading.Event | None = None, settings: Settings | None = None) -> RunResult:
    """Run one pass in this process and return its result once every task is done (see :meth:`EmbeddedSession.run`).

    ``settings``: the site (its LUSTREAPI); None: the defaults. On return or exception the pool processes
    and the hub are gone (see the module doc).
    """
    with EmbeddedSession(jobs, settings) as session:
        return session.run(spec, on_progress, stop_event)


class EmbeddedSession:
    """One hub and one pool of ``jobs`` processes, for passes run one after another.

    Use as a context manager: the hub starts on entry; the pool with the first task a pass sends it (see
    :meth:`run`); both are gone on exit. Passes of any kind may follow each other; each has its own run id, so
    its ledger, counters and lists are its own.
    """

    def __init__(self, jobs: int, settings: Settings | None = None) -> None:
        self.jobs = jobs
        self.settings = settings
        self._hub: Any = None
        self._building: Any = None
        self.pool: Any = None

    def __enter__(self) -> EmbeddedSession:
        os.umask(0)  # every entry cmover creates gets an explicit mode; pool processes inherit this
        self._hub = start_hub(self.settings.state_path() if self.settings is not None else None)
        settings = self.settings
        self._building = contexts.building(lambda: embedded_context(settings))
        self._building.__enter__()
        self.pool = Pool(self.jobs)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.pool.stop(idle=et is None)
        finally:
            self._building.__exit__(None, None, None)
            stop_hub(self._hub)

    def run(self, spec: PassSpec, on_progress: Progress | None = None,
            stop_event: threading.Event | None = None, jobs: Sequence[Job] | None = None,
            made: bool = False) -> RunResult:
        """Run pass ``spec`` and return its result once every task is done (``jobs``: a journal-driven
        pass's, seeded instead of the root directory task; ``made``: the command has just created the target
        root, :attr:`cmover.engine.jobs.DirJob.made`).

        ``stop_event`` set by the caller (Ctrl-C) ends the pass early: the pool processes are ended (a task cut
        short leaves at most a file without its final mtime, which the next pass copies again); the result's
        state is then "interrupted", and a later pass of the session starts new ones. Raises FatalError when
        the pass cannot go on (its root task rejected, pool processes dying as they start).
        """
        ctx = contexts.get()
        t0 = time.monotonic()
        pool = self.pool

        def run_here(messages: Sequence[Message]) -> None:
            # This process runs the root directory task itself, as a pool process would: a small tree is done
            # with no pool at all; a larger one's tasks go to the pool, forked with the first of them, while
            # this process finishes its own share.
            fork_at = time.monotonic() + POOL_AFTER_SECONDS

            def peer_waits(walked: int) -> bool:
                # POOL_AFTER_ENTRIES walked alone, or POOL_AFTER_SECONDS, mean a tree worth a pool: the next
                # subdirectory goes out as a job, which forks it; then one per process waiting, as in the pool.
                if pool.procs:
                    return pool.idle.claim()
                return walked >= POOL_AFTER_ENTRIES or time.monotonic() >= fork_at

            walker.share_with(peer_waits)
            try:
                with fsio.keeping_roots():  # released at the end of the task: this process lives on
                    for message in messages:
                        try:
                            run_message(message, HOSTNAME, pool.send)
                        except Rejected as exc:
                            if not exc.requeue:
                                raise FatalError(f"the pass's root task was rejected: {exc.reason}") from None
                            pool.send([message])  # its children could not all be sent: a pool process runs it
            finally:
                walker.share_with(None)

        here = jobs is None and _root_is_small(spec)
        seed(run_here if here else pool.send, spec, ctx.ledger, jobs, made)
        if here and stop_event is not None and stop_event.is_set():
            # Ctrl-C while this process walked: the pass ends here, whatever the pool has done meanwhile.
            pool.stop(idle=False)
            return self._result(spec, ctx, time.monotonic() - t0, "interrupted")
        state = "complete"
        try:
            while True:
                out = _wait_outstanding(ctx.ledger, spec.run_id)
                if on_progress:
                    on_progress(ctx.stats.totals(spec.run_id) or {}, time.monotonic() - t0)
                if out == 0:
                    break
                if stop_event is not None and stop_event.is_set():
                    state = "interrupted"
                    break
                pool.lost()
        except BaseException:
            pool.stop(idle=False)
            raise
        if state == "interrupted":
            pool.stop(idle=False)
        return self._result(spec, ctx, time.monotonic() - t0, state)

    @staticmethod
    def _result(spec: PassSpec, ctx: Any, seconds: float, state: str) -> RunResult:
        """The result of pass ``spec`` as the hub holds it."""
        extra: dict[str, object] = {}
        failures, count = ctx.errors.read(spec.run_id, limit=10_000)
        totals = ctx.stats.totals(spec.run_id) or {}
        if spec.kind is PassKind.DELETE:
            extra["deleted"] = ctx.errors.read_deleted(spec.run_id, limit=MEMORY_LIMIT)
        if spec.kind is PassKind.VERIFY:
            extra["differences"] = ctx.errors.read_differences(spec.run_id, limit=MEMORY_LIMIT)
        return RunResult(spec, totals, failures, count, seconds, state, extra)


#: How much of the root task this process walks alone before the pool is forked (with the next subdirectory it
#: hands out): this many entries, or this long (a copy of big files). A tree walked in less needs no pool
#: (forking and ending one costs several milliseconds); in a larger one, the pool's processes share the rest
#: with this one from then on (cmover.core.idle). Measured on 2 cores, no-change passes, the whole command,
#: rounds alternated: 1,000 entries before, 300 now. A tree of 20,000 files: 2-7% faster (3 runs of 15-30
#: rounds; against `rsync -a`, 0.96-1.01x then, 1.03-1.07x now); of 100,000: 3%; of 2,000: 0-3%; of 1,000:
#: the same; of 500, which no longer finishes before the pool starts: 9 ms (12%) slower. A final pass is over
#: trees far bigger than a thousand entries.
POOL_AFTER_ENTRIES = 300
POOL_AFTER_SECONDS = 0.1

#: A root directory whose size (``st_size``) is at most this is listed in a moment (thousands of entries on
#: ext4, xfs or Lustre): this process runs its task. A larger one (10^6 entries in one directory) takes a
#: while to list and hand out in batches: a pool process does, so that this one stays free to watch the pass
#: (progress, Ctrl-C, dead pool processes).
SMALL_ROOT = 1 << 20


def _root_is_small(spec: PassSpec) -> bool:
    """Whether the root directory of pass ``spec`` is small enough to be run by the runner's own process."""
    for root in (spec.src_root, spec.dst_root):  # a copy lists the source, a delete pass the target
        try:
            if os.lstat(os.path.join(root, spec.start) if spec.start else root).st_size > SMALL_ROOT:
                return False
        except OSError:
            if root == spec.src_root:
                return False  # its task says what is wrong, in a pool process as always
    return True


#: How often the run loop looks at progress, Ctrl-C and the pool's processes while the pass runs.
_TICK = 0.1


def _wait_outstanding(ledger: Any, run_id: str) -> int | None:
    """The run's outstanding tasks, after waiting in the hub until there are none or :data:`_TICK` passed
    (no polling round trips; a pass ends as soon as its last task is done)."""
    if isinstance(ledger, HubLedger):
        return ledger.outstanding(run_id, _TICK)
    out = ledger.outstanding(run_id)
    if out:
        time.sleep(_TICK)
    return out
