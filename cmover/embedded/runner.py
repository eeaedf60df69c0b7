"""The embedded mode: passes run on one machine with no server to install.

The same Celery app, tasks and engine as the distributed mode. The broker, ledger, counters and error
list are the run's hub (:mod:`cmover.embedded.hub`), a helper process; the Celery worker runs in a
background thread of this process with a prefork pool of ``jobs`` processes, so every core copies.
An :class:`EmbeddedSession` starts the hub and the worker once and runs passes in them one after another
(``cmover sync``); :func:`run_embedded` is a session of one pass. A pass seeds its root task, reports
progress through ``on_progress`` while the ledger has outstanding tasks, and returns its result.

A pool process that dies (OOM killer, SIGKILL) loses no task: the session notices, lets the tasks still
running in the other processes end, and replaces the worker; every message the old one had received and
not acknowledged returns to the hub once its channel is closed, and runs again.
Billiard's pool alone could not recover: its processes read tasks from one pipe under one lock, and a
process killed while it waited there holds that lock for ever.

Lifetime: the session owns the hub and the pool; whatever happens (success, Ctrl-C, an exception, a worker
death) they are gone when it ends, so nothing is left for the interpreter's exit handlers to wait on.
Pool processes and the hub ignore SIGINT and SIGHUP: a signal sent to the terminal's process group
reaches them too, and only the session decides when they end.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from cmover.core import fsio
from cmover.core.errors import FatalError
from cmover.core.failure import Failure
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import Settings
from cmover.engine.jobs import Job
from cmover.state.errorlist import MEMORY_LIMIT

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, int], float], None]


@dataclass
class RunResult:
    """Outcome of a pass: totals by counter name, the failures (up to a limit) and their count."""

    spec: PassSpec
    totals: dict[str, int]
    failures: list[Failure]
    failure_count: int
    seconds: float
    state: str = "complete"
    extra: dict[str, object] = field(default_factory=dict)


def run_embedded(spec: PassSpec, jobs: int, on_progress: Progress | None = None,
                 stop_event: threading.Event | None = None, settings: Settings | None = None) -> RunResult:
    """Run one pass in this process and return its result once every task is done (see :meth:`EmbeddedSession.run`).

    ``settings``: the site (its LUSTREAPI); None: the defaults. On return or exception the pool processes
    and the hub are gone (see the module doc).
    """
    with EmbeddedSession(jobs, settings) as session:
        return session.run(spec, on_progress, stop_event)


class EmbeddedSession:
    """One hub and one in-process worker of ``jobs`` pool processes, for passes run one after another.

    Use as a context manager: the hub starts on entry; the worker starts with the first pass (after its
    root task is published: see :meth:`run`); both are gone on exit. Passes of any kind may follow each
    other; each has its own run id, so its ledger, counters and lists are its own.
    """

    def __init__(self, jobs: int, settings: Settings | None = None) -> None:
        self.jobs = jobs
        self.settings = settings
        self._manager: Any = None
        self._building: Any = None
        self._worker: _Worker | None = None
        self._app_ready = False

    def __enter__(self) -> EmbeddedSession:
        from cmover.embedded.hub import embedded_context, start_hub
        from cmover.worker.context import contexts

        os.umask(0)  # every entry cmover creates gets an explicit mode; pool children inherit this
        self._manager = start_hub(self.settings.state_path() if self.settings is not None else None)
        settings = self.settings
        self._building = contexts.building(lambda: embedded_context(settings))
        self._building.__enter__()
        return self

    def _app(self) -> Any:
        """The Celery app, set up for this session's hub on first use: a pass that this process completes by
        itself (:meth:`run`) imports no Celery at all, a tenth of a second of a small pass."""
        from cmover import app as appmod

        if not self._app_ready:
            from celery.signals import worker_process_init

            from cmover.embedded import transport  # noqa: F401 (registers cmover-local://)

            # Celery resets SIGHUP to the default in each pool process; the run's processes must outlive a hangup.
            worker_process_init.connect(_ignore_hangup, weak=False, dispatch_uid="cmover-embedded-sighup")
            appmod.use_embedded(self.jobs)
            appmod.app.finalize()
            # The shutdown command below is ours; Celery would log it as a warning.
            logging.getLogger("celery.worker.control").setLevel(logging.ERROR)
            self._app_ready = True
        return appmod.app

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        from cmover.embedded.hub import stop_hub

        try:
            if self._worker is not None:
                self._worker.stop(idle=et is None)
                self._worker = None
        finally:
            self._building.__exit__(None, None, None)
            stop_hub(self._manager)

    def run(self, spec: PassSpec, on_progress: Progress | None = None,
            stop_event: threading.Event | None = None, jobs: Sequence[Job] | None = None) -> RunResult:
        """Run pass ``spec`` and return its result once every task is done (``jobs``: a journal-driven
        pass's, seeded instead of the root directory task).

        ``stop_event`` set by the caller (Ctrl-C) ends the pass early: the worker stops taking tasks and
        the pool processes are ended (a task cut short leaves at most a file without its final mtime,
        which the next pass copies again); the result's state is then "interrupted", and a later pass
        of the session starts a new worker. Raises FatalError when the worker stops by itself.
        """
        from cmover.worker.context import contexts
        from cmover.worker.taskbase import publish, run_root_here, seed

        ctx = contexts.get()
        t0 = time.monotonic()
        # Seed before the worker thread forks its pool: a fork while this thread holds one of Celery's
        # internal locks (send_task takes a class-wide one on first use) would leave it held in the child.
        if jobs is None and self._worker is None and _root_is_small(spec):
            # Before any worker exists, this process runs the root directory task itself, with a larger entry
            # budget (root_budget): a small tree is then done without a worker, its pool and their start and
            # teardown (most of a small pass's time); a larger one loses little, at most ROOT_SECONDS of one
            # process walking where the pool would have been starting.
            # The tasks it published are counted in the ledger already; they are sent once it is done.
            with fsio.keeping_roots():  # released at the end of the task: this process lives on
                held = run_root_here(spec, ctx, root_budget(spec))
            if held and stop_event is not None and stop_event.is_set():
                # Ctrl-C while this process walked: the pass ends here, with no pool started only to be
                # stopped (half a second). Its remaining tasks, counted but never sent, leave it incomplete.
                return self._result(spec, ctx, time.monotonic() - t0, "interrupted")
            if held:
                publish(self._app(), held)
        else:
            seed(self._app(), spec, ctx, jobs)
        if jobs is not None and not jobs or ctx.ledger.outstanding(spec.run_id) == 0:
            # Nothing (left) to do: no worker is started for the pass (a worker forking its pool while a
            # later pass publishes its first tasks is what seeding first avoids).
            return self._result(spec, ctx, time.monotonic() - t0, "complete")
        if self._worker is None:
            self._worker = _Worker(self._app(), self.jobs, f"cmover-embedded-{spec.run_id}@localhost")
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
                if not self._worker.thread.is_alive():
                    # The worker died (its error is in the log): waiting on would never end.
                    raise FatalError("the embedded worker stopped before the pass was complete; see the error above")
                if self._worker.lost_process():
                    self._worker = self._worker.replaced(stop_event)
        except BaseException:
            self._worker.stop(idle=False)
            self._worker = None
            raise
        if state == "interrupted":
            self._worker.stop(idle=False)
            self._worker = None
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


#: A root directory whose size (``st_size``) is at most this is listed in a moment (thousands of entries on
#: ext4, xfs or Lustre): its task may run before the pool exists. A larger one (10^6 entries in one
#: directory) hands batches to the pool while it is being listed, which only a running pool can take.
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


#: The inline budget of the root task the runner's process runs (:func:`root_budget`): this many times the
#: pass's ``inline_entries``, for at most :data:`ROOT_SECONDS`. Starting the pool and handing tasks to it
#: costs about what one process spends on 20,000-30,000 unchanged entries (a no-change pass over 20,000
#: files: 0.30 s walked here whole, 0.46 s with the pool; over 100,000 files 0.93-1.00 s against
#: 0.88-0.94 s, measured on a 2-core machine): a tree that small is done sooner without one.
ROOT_ENTRIES_FACTOR = 50
ROOT_SECONDS = 0.25


def root_budget(spec: PassSpec) -> tuple[int, float]:
    """(entries, seconds) the root task walks inline when the runner's process runs it: the pass's budget
    scaled by :data:`ROOT_ENTRIES_FACTOR`, its seconds capped at :data:`ROOT_SECONDS`. A pass with no inline
    walking (``INLINE_ENTRIES = 0`` or ``INLINE_SECONDS = 0``) has none here either."""
    return spec.inline_entries * ROOT_ENTRIES_FACTOR, min(spec.inline_seconds, ROOT_SECONDS)


#: How often the run loop looks at progress, Ctrl-C and the worker's health while the pass runs.
_TICK = 0.1


def _wait_outstanding(ledger: Any, run_id: str) -> int | None:
    """The run's outstanding tasks, after waiting in the hub until there are none or :data:`_TICK` passed
    (no polling round trips; a pass ends as soon as its last task is done)."""
    from cmover.embedded.hub import HubLedger

    if isinstance(ledger, HubLedger):
        return ledger.outstanding(run_id, _TICK)
    out = ledger.outstanding(run_id)
    if out:
        time.sleep(_TICK)
    return out


def _ignore_hangup(**_: object) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class _Worker:
    """The session's in-process Celery worker: a WorkController in a thread, consuming every pass queue."""

    def __init__(self, app: Any, jobs: int, hostname: str) -> None:
        from celery.worker import state as worker_state

        from cmover import app as appmod

        self.app, self.jobs, self.hostname = app, jobs, hostname
        self.queues = [q for kind in PassKind for q in appmod.pass_queues(kind.value)]
        worker_state.should_terminate = None  # a worker stopped before set it
        self.controller = app.WorkController(
            pool="prefork", concurrency=jobs, hostname=hostname,
            without_heartbeat=True, without_mingle=True, without_gossip=True, queues=",".join(self.queues),
            loglevel=logging.WARNING, ready_callback=None,
            # The consumer hands reserved tasks to the pool without waiting for a free process: waiting, it
            # could not stop (nor give its messages back) once a dead process left the pool stuck.
            pool_putlocks=False,
        )
        self.thread = threading.Thread(target=self.controller.start, name="cmover-worker", daemon=True)
        self._pids: set[int] = set()
        self._down: list[int] = []  # pool processes billiard cleaned up (appended by its supervisor thread)
        self.thread.start()

    def lost_process(self) -> bool:
        """True when a pool process has died since the last look (the pool replaces it; its task is not)."""
        pool = _billiard_pool(self.controller)
        if pool is None:
            return False
        if pool.on_process_down is None:
            # Billiard's supervisor reports each process it cleans up: a death between two looks is not missed.
            pool.on_process_down = lambda proc: self._down.append(proc.pid)
        alive = {p.pid for p in list(pool._pool) if p.pid and p.exitcode is None}
        lost = (self._pids - alive) | set(self._down)
        self._pids = alive
        self._down.clear()
        if lost:
            log.warning("pool process(es) %s of the embedded run died; their tasks run again",
                        ", ".join(map(str, sorted(lost))))
        return bool(lost)

    def replaced(self, stop_event: threading.Event | None) -> _Worker:
        """Stop this worker once the tasks running in its live processes are done; return a new one.

        It stops taking messages first; the messages it received and did not acknowledge (the dead
        process's task, tasks it had reserved) return to the hub once its channel is closed.
        """
        consumer = self.controller.consumer
        task_consumer = getattr(consumer, "task_consumer", None)
        if task_consumer is None:  # not consuming yet: nothing received, nothing to give back
            self.stop(idle=False)
            return _Worker(self.app, self.jobs, self.hostname)
        qos = task_consumer.channel.qos
        for q in self.queues:
            consumer.call_soon(consumer.cancel_task_queue, q)
        while self._live_running() and not (stop_event is not None and stop_event.is_set()):
            time.sleep(0.05)
        self.stop(idle=False)
        # The consumer closes its channel as the worker thread stops (before it tears down the pool, which
        # may block for ever on the dead process's lock); from then on nothing else touches its messages.
        channel = task_consumer.channel
        deadline = time.monotonic() + _STOP_SECONDS
        while not channel.closed and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        qos.restore_unacked()  # back to their queues in the hub: the new worker runs them
        return _Worker(self.app, self.jobs, self.hostname)

    def _live_running(self) -> bool:
        """Whether a task runs in a pool process that is alive."""
        from celery.worker import state as worker_state

        pool = _billiard_pool(self.controller)
        if pool is None:
            return False
        alive = {p.pid for p in list(pool._pool) if p.pid and p.exitcode is None}
        return any(getattr(r, "worker_pid", None) in alive for r in list(worker_state.active_requests))

    def stop(self, *, idle: bool) -> None:
        """End the worker: its pool processes are gone on return; its thread ends by itself."""
        _stop_worker(self.controller, self.thread, idle=idle)


#: Bound on each wait of the teardown (a worker thread still starting, billiard's finalizer, a process
#: stuck in I/O after SIGTERM); none of them is reached in a normal run.
_STOP_SECONDS = 10.0


def _stop_worker(worker: Any, thread: threading.Thread, *, idle: bool) -> None:
    """End the in-process worker: its consumer stops taking tasks and every pool process is gone on return.

    The pool processes are ended by signal (see :func:`_end_processes`), as fast as a pass needs. A
    process killed while it waited for a task may hold the pool's shared queue lock, though, and
    billiard's pool finalizer takes that lock: run at interpreter exit it would wait for ever (the hang at
    exit seen when a write failed before the command's final ``os._exit``). So the finalizer is retired
    first: billiard's own ``terminate()`` runs in a helper thread, which takes the finalizer off the exit
    list at once and stops the pool from replacing processes (the thread may then block on that lock;
    nothing waits for it). Not calling it synchronously spares the second it spends joining billiard's
    supervisor threads, longer than a whole no-change pass over 100,000 files.
    """
    from billiard.process import active_children
    from celery.worker import state as worker_state

    worker_state.should_terminate = 0  # the consumer leaves its loop at its next turn
    pool = _billiard_pool(worker)
    if pool is None and thread.is_alive():
        # The worker thread has not started its pool yet: it stops at the consumer's first turn and
        # terminates the pool it has just made; waiting keeps that pool from outliving this function.
        thread.join(_STOP_SECONDS)
        pool = _billiard_pool(worker)
    if pool is not None:
        threading.Thread(target=pool.terminate, name="cmover-pool-stop", daemon=True).start()
        deadline = time.monotonic() + _STOP_SECONDS
        while pool._terminate.still_active() and time.monotonic() < deadline:
            time.sleep(0.001)
    _end_processes([p for p in active_children() if p.pid], idle=idle)


def _billiard_pool(worker: Any) -> Any:
    """The worker's billiard pool once its thread has started it (None before, and after it ended it)."""
    return getattr(getattr(worker, "pool", None), "_pool", None)


def _end_processes(procs: list[Any], *, idle: bool) -> None:
    """End the pool processes ``procs`` (billiard processes, children of this one) and reap them.

    ``idle``: every task is done (each reports its counters and failures to the hub before the ledger
    counts it done), so nothing is left to lose: SIGKILL. Otherwise SIGTERM first, as a controlled
    termination (billiard does not report it as a crash), which billiard turns into SystemExit so a task
    cut short unwinds (its temporary file removed); its process then lingers a second in billiard's exit
    path before it ends, and is killed if it is still there after the grace time.
    """
    pids = [p.pid for p in procs]
    for step in ("kill",) if idle else ("terminate", "kill"):
        for p in procs:
            if p.pid not in pids:
                continue
            try:
                if step == "terminate":
                    p.terminate_controlled()
                else:
                    os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + _STOP_SECONDS
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if not _exited(pid)]
            if pids:
                time.sleep(0.002)
        if not pids:
            return
        log.warning("pool process(es) %s still running %.0f s after %s", pids, _STOP_SECONDS,
                    "SIGTERM" if step == "terminate" else "SIGKILL")


def _exited(pid: int) -> bool:
    """True when child ``pid`` has ended; reaps it (no zombie outlives the run: not every init reaps)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True  # reaped already (billiard's terminate() joins its processes too)
