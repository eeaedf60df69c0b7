"""Celery signal handlers of cmover's distributed workers (``celery worker``; the embedded mode runs no Celery).

Imported by every worker at start, before it sets up logging and forks its pool: the Celery app lists
this module in its ``include`` (:mod:`cmover.app`), and Celery imports those modules when a worker is
created (``WorkController.__init__`` -> ``loader.init_worker()``). A process that only publishes or reads
(the ``cmover`` commands) never imports it.

* a worker started with ``--logfile`` writes it through a multi-process rotating handler, and every worker
  writes its log lines as ``LOG_FORMAT`` says (:mod:`cmover.core.logformat`); a record logged after a task
  belongs to no task;
* a worker not running as root says once what its copies do not preserve;
* a pool process keeps the pass roots open while it works (:func:`cmover.core.fsio.keep_roots_while_busy`:
  each closed once unused for 2 s, so a worker idle after the migration holds no mount busy);
* a pool process that exits reports the counts it still holds;
* the worker's pool processes share one idle board (:mod:`cmover.core.idle`): a task walking inline hands a
  subdirectory out as a job whenever another process of the same worker has no task;
* a ``celery worker`` started while a pass is paused leaves that pass's queues out, and takes them back
  once the pass is resumed (:mod:`cmover.state.pauses`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from billiard.process import current_process
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from cmover import app as appmod
from cmover.core import fsio, logformat, privileges
from cmover.core.idle import IdleBoard
from cmover.core.passes import PassKind
from cmover.engine import walker
from cmover.state import keys, pauses
from cmover.state.pauses import State
from cmover.worker import logs, taskbase
from cmover.worker.context import contexts

log = logging.getLogger(__name__)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_setup(logger: logging.Logger, logfile: str | None = None, **_: Any) -> None:
    """A worker started with ``--logfile`` writes it through a multi-process rotating handler; every
    handler Celery set up (the worker's and its pool processes') writes as LOG_FORMAT says."""
    logs.use_rotating_file(logger, logfile)
    log_format = appmod.settings().log_format
    logformat.apply(log_format, logger)
    if log_format == "json":  # only then is a task's context written (a text line costs nothing per task)
        task_postrun.connect(_end_of_task, weak=False, dispatch_uid="cmover-log-end-of-task")


def _end_of_task(**_: Any) -> None:
    """Records logged after a task (Celery's "succeeded" line is logged before this) are about no task."""
    logformat.clear_task()


@worker_init.connect
def _say_privileges(**_: Any) -> None:
    """A worker not running as root says once, in its log, what its copies do not preserve (before its pool
    forks, so the pool processes inherit that it was said; the embedded mode says it on the command line)."""
    privileges.announce()


@worker_process_init.connect
def _keep_roots(**_: Any) -> None:
    """A pool process opens each pass root from ``/`` once, not once per task (8 opens per root 7 levels
    deep); it lets it go once unused for a moment (:data:`cmover.core.fsio.IDLE_ROOT_SECONDS`)."""
    fsio.keep_roots_while_busy()


@worker_process_shutdown.connect
def _report_counts_at_exit(**_: Any) -> None:
    """A pool process that exits (warm shutdown, pool shrink) reports the counts it still holds."""
    if _slot is not None and _idle is not None:
        _idle.busy(_slot)
    ctx = contexts.current()
    if ctx is not None:
        ctx.stats.flush()
    taskbase.close_publisher()  # the broker sees a client leave, not a connection lost


# -- the idle board of the worker's pool ---------------------------------------------------------------------

#: Bytes of the board: one per pool process index. A pool grown beyond it (`cmover pool grow`) shares bytes,
#: which only makes the advice coarser.
IDLE_SLOTS = 256

#: Seconds a subdirectory that holds no subdirectory must be estimated to take for a task to hand it to a waiting
#: pool process (:func:`cmover.engine.walker.share_with`). A task costs the run about 4 ms of CPU in the pool
#: process, the worker's consumer, the broker and memcached; a leaf of 100 unchanged files takes about 2.5 ms
#: to walk on a local disk. No-change pass over 100,000 files in 1,000 directories, the workers of
#: `scripts/run.sh` on 2 cores: 51-78 tasks, half of them under 7 ms, when every subdirectory went to a waiting
#: process; 37-48 with this, and the pass 0.76-0.79x of the embedded pass's speed instead of 0.72-0.75x (README,
#: "Work sharing"). 0.02 did no better. On a filesystem whose lookups are server round trips, directories take
#: longer each and their leaves go out as before.
LEAST_LEAF = 0.01

#: This worker's idle board, made in its main process before the pool forks (None: not a prefork worker yet).
_idle: IdleBoard | None = None
#: This pool process's byte in it (None: not a pool process; a solo worker's tasks share with nobody).
_slot: int | None = None


@worker_init.connect
def _make_idle_board(**_: Any) -> None:
    global _idle
    _idle = IdleBoard(IDLE_SLOTS)


@worker_process_init.connect
def _share_with_idle_processes(**_: Any) -> None:
    """A pool process has no task yet: it waits; its tasks hand subdirectories to the others that wait."""
    global _slot
    board = _idle
    if board is None:
        return
    index = getattr(current_process(), "index", None)  # billiard's slot number, reused by a replacement
    _slot = (index if isinstance(index, int) else os.getpid()) % board.size
    walker.share_with(lambda _walked: board.claim(), anyone_waits=board.anyone_waits, least_leaf=LEAST_LEAF)
    board.waiting(_slot)


@task_prerun.connect
def _has_a_task(**_: Any) -> None:
    if _slot is not None and _idle is not None:
        _idle.busy(_slot)


@task_postrun.connect
def _waits_for_a_task(**_: Any) -> None:
    if _slot is not None and _idle is not None:
        _idle.waiting(_slot)


# -- a worker started during a pause -----------------------------------------------------------------------
# celeryd_after_setup and worker_ready are sent by `celery worker` (celery.apps.worker); an embedded run has no
# pause records and no Celery worker.

#: Queues this worker process left out at start because their pass was paused (worker main process only).
_held: list[str] = []


@celeryd_after_setup.connect
def _hold_paused_queues(sender: str, instance: Any, **_: Any) -> None:
    """Before the consumer starts: leave out the queues of passes paused on this worker, and record them.

    memcached unreachable: logged once, every queue is consumed.
    """
    queues = instance.app.amqp.queues
    consumed = set(queues.consume_from)
    held: list[str] = []
    try:
        settings = appmod.settings()
        mc = keys.memcache_client(settings)
        for kind in PassKind:
            mine = [q for q in appmod.pass_queues(kind.value) if q in consumed]
            if not mine:
                continue

            def hold(cur: State | None, mine: list[str] = mine) -> State | None:
                if not pauses.paused_on(cur, sender):
                    return None
                assert cur is not None
                # This start decides what the worker consumes: its record replaces an earlier run's.
                cur["nodes"][sender] = mine
                return cur

            if pauses.paused_on(pauses.update(mc, pauses.record_key(settings, kind.value), hold), sender):
                held += mine
                log.warning("the %s pass is paused: not consuming %s until `cmover resume %s`",
                            kind.value, ", ".join(mine), kind.value)
    except Exception as exc:
        log.warning("cannot read the pause records in memcached (%s): consuming every queue given with -Q", exc)
        return
    for q in held:
        queues.deselect(q)
    _held[:] = held


@worker_ready.connect
def _release_if_resumed(sender: Any, **_: Any) -> None:
    """Once the worker listens to remote control: take back held queues of a pass resumed meanwhile.

    A resume that ran while this worker started may have broadcast before the worker listened.
    """
    if not _held:
        return
    node = sender.hostname
    try:
        settings = appmod.settings()
        for kind in PassKind:
            mine = [q for q in appmod.pass_queues(kind.value) if q in _held]
            if mine and not pauses.paused_on(pauses.read(settings, kind.value), node):
                for q in mine:
                    sender.call_soon(sender.add_task_queue, q)
                log.warning("the %s pass was resumed: consuming %s", kind.value, ", ".join(mine))
    except Exception as exc:
        log.warning("cannot read the pause records in memcached (%s): still not consuming %s; "
                    "`cmover resume` gives them back", exc, ", ".join(_held))
