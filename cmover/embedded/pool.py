"""The embedded run's pool: processes forked from the runner's own, each taking task messages from the run's hub
and running them with :func:`cmover.worker.taskbase.run_message`, the task bodies, argument checks, ledger
accounting and error handling of a Celery worker's tasks, without Celery.

Why not a Celery worker, as distributed nodes run: on one machine Celery only carried messages between
processes of the same run, and that cost more than a no-change pass over tens of thousands of files (measured
on 2 cores, a no-change pass over 100,000 files: importing Celery 0.11 s, starting its worker and prefork pool
0.16 s, ~2 ms of CPU per task in the worker's consumer and the pool's pipes; the pool walked no faster than the
runner's own process alone). A process forked here has everything imported already and takes its first message
a millisecond after it is forked.

A message handed to a process stays the hub's until the process acknowledges it (with its next request): one
that dies (OOM killer, SIGKILL) loses no task. The runner looks for dead processes (:meth:`Pool.lost`), the
hub puts back what each was handed, and a new process takes its place. A task that keeps killing its process
is given up after the pass's ``max_deliveries`` (the ledger counts deliveries), as in a distributed worker.

Pool processes ignore SIGINT and SIGHUP: a Ctrl-C or a hangup reaches the terminal's whole process group, and
only the runner decides when they end. SIGTERM ends the task a process runs with SystemExit (so a file being
written is removed), then the process. A process whose runner is gone (killed) ends at its next idle moment.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from cmover.core import fsio
from cmover.core.errors import FatalError
from cmover.core.idle import IdleBoard
from cmover.core.passes import PassKind, PassSpec
from cmover.core.tasknames import ROUTES, pass_queues, queue_name
from cmover.embedded.forked import Forked
from cmover.embedded.hub import CONSUMER_WAIT, hub
from cmover.embedded.packing import pack, unpack
from cmover.engine import walker
from cmover.worker.taskbase import Message, Rejected, run_message

log = logging.getLogger(__name__)

#: The node name the pool's tasks report their counters under.
HOSTNAME = "cmover-embedded@localhost"

#: Every pass queue, directory tasks first (they fan out: the sooner they run, the sooner every process has
#: work), as a pool process asks the hub for its next message.
QUEUES = [q for kind in PassKind for q in pass_queues(kind.value)]


#: A process that dies sooner than this after its start, holding no message, died starting; :data:`_EARLY_DEATHS`
#: such deaths in a row mean that no process can work (a bug at start): the pass stops with an error.
_EARLY = 1.0
_EARLY_DEATHS = 3

#: Bound on each wait of the teardown (a process stuck in I/O after SIGTERM); not reached in a normal run.
_STOP_SECONDS = 10.0


def send(messages: Sequence[Message]) -> None:
    """Queue task messages (each counted in the ledger already) in the run's hub."""
    h = hub()
    for message in messages:
        h.put(ROUTES[message[0]], pack(message))  # only cmover's own tasks are sent: KeyError is a bug


class Pool:
    """``jobs`` pool processes of one embedded session, started with the first message sent (:meth:`send`):
    a pass whose root task the runner's process completes by itself forks none."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        # pid -> (process, its name in the hub, its start, its slot in the idle board)
        self.procs: dict[int, tuple[Forked, str, float, int]] = {}
        self.idle = IdleBoard(jobs)  # which processes wait for work (cmover.core.idle)
        self._spawned = 0
        self._early = 0  # processes in a row that died as they started

    def send(self, messages: Sequence[Message]) -> None:
        """:func:`send`, then start the pool's processes if they are not running yet."""
        send(messages)
        if not self.procs:
            self.start()

    def start(self) -> None:
        """Fork processes until the pool has ``jobs``."""
        free = sorted(set(range(self.jobs)) - {slot for _, _, _, slot in self.procs.values()})
        for slot in free:
            self._spawned += 1
            owner = f"{os.getpid()}.{self._spawned}"  # never reused within the run, unlike a pid
            self.idle.busy(slot)  # a process that died waiting left its byte set
            # Its hub client is its own (hub._after_fork_in_child); the runner waits on it through a pidfd.
            proc = Forked(_serve, (owner, os.getpid(), self.idle, slot), f"cmover-pool-{self._spawned}")
            proc.start()
            self.procs[proc.pid] = (proc, owner, time.monotonic(), slot)

    def lost(self) -> list[int]:
        """The pool processes that died since the last look: what the hub had handed each goes back to its
        queue (those tasks run again) and a new process takes each one's place. FatalError when processes keep
        dying as they start."""
        dead = [pid for pid, (proc, _, _, _) in self.procs.items() if proc.exitcode is not None]
        if not dead:
            return []
        now = time.monotonic()
        for pid in dead:
            _, owner, started, _ = self.procs.pop(pid)
            held = hub().requeue_owner(owner)
            # One that died with a message died of its task (given up after max_deliveries, as anywhere).
            self._early = self._early + 1 if now - started < _EARLY and not held else 0
        log.warning("pool process(es) %s of the embedded run died; their tasks run again",
                    ", ".join(map(str, sorted(dead))))
        if self._early >= _EARLY_DEATHS:
            raise FatalError("the embedded pool's processes die as they start; see the errors above")
        self.start()
        return dead

    def stop(self, *, idle: bool) -> None:
        """End every pool process; they are gone (and reaped) on return.

        ``idle``: every task is done (each reports its counters and failures to the hub before the ledger
        counts it done), so nothing is left to lose: SIGKILL. Otherwise SIGTERM first, so that a task cut short
        unwinds (its temporary file removed), and SIGKILL for a process still there after the grace time.
        """
        procs = [proc for proc, _, _, _ in self.procs.values()]
        self.procs.clear()
        for sig in (signal.SIGKILL,) if idle else (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + _STOP_SECONDS
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))  # wakes as it ends (its pidfd), and reaps it
            procs = [proc for proc in procs if proc.exitcode is None]
            if not procs:
                return
            log.warning("pool process(es) %s still running %.0f s after %s", [p.pid for p in procs],
                        _STOP_SECONDS, sig.name)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds the task it interrupts; the process then ends with code 0 (forked)


def _serve(owner: str, parent: int, idle: IdleBoard, slot: int) -> None:
    """A pool process's life: take a message, run it, acknowledge it with the next take; until the hub is gone
    or the runner (``parent``) is. ``owner``: this process's name in the hub; ``slot``: its byte in ``idle``,
    set while it waits for a message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)
    fsio.keep_roots_while_busy()  # each pass root opened once, not per task; let go once unused for a moment
    walker.share_with(lambda _walked: idle.claim())  # a subdirectory goes to a waiting process rather than inline
    h = hub()
    # Nothing is held in this process between tasks (a task's counters and failures go with its done), so
    # however it ends, it loses at most the acknowledgement of its last task (a redelivery the ledger ignores).
    while True:
        idle.waiting(slot)
        try:
            got = h.take(QUEUES, CONSUMER_WAIT, owner)
        except (EOFError, OSError):
            return  # the hub is gone: the run is over
        finally:
            idle.busy(slot)
        if got is None:
            if os.getppid() != parent:
                return
            continue
        tag, payload = got
        try:
            message = unpack(payload)
        except ValueError as exc:
            log.error("rejected a message of the embedded hub: %s", exc)
            h.hold("ack", tag)
            continue
        try:
            run_message(message, HOSTNAME, send, _dead_letter(payload))
        except Rejected as exc:
            h.hold("requeue" if exc.requeue else "ack", tag)
        else:
            h.hold("ack", tag)


def _dead_letter(payload: Any) -> Any:
    """How the message ``payload`` is kept when it is given up (it kept killing its process): in the pass's
    dead-letter queue of the hub, as a distributed worker keeps it in the broker's."""
    def keep(spec: PassSpec, delivery: int) -> None:
        hub().put(queue_name(spec.kind.value, "dead"), payload)
    return keep
