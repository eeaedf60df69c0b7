"""The embedded mode: a pass run on one machine with no server to install.

The same Celery app, tasks and engine as the distributed mode. The broker, ledger, counters and error
list are the run's hub (:mod:`cmover.localbroker`), a helper process; the Celery worker runs in a
background thread of this process with a prefork pool of ``jobs`` processes, so every core copies.
:func:`run_embedded` seeds the root task, reports progress through ``on_progress`` while the ledger
has outstanding tasks, then stops the worker and the hub.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cmover.errorlist import MEMORY_LIMIT, deleted_list
from cmover.errors import Failure, FatalError
from cmover.passes import PassKind, PassSpec

log = logging.getLogger(__name__)


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


def run_embedded(spec: PassSpec, jobs: int,
                 on_progress: Callable[[dict[str, int], float], None] | None = None,
                 stop_event: threading.Event | None = None) -> RunResult:
    """Run one pass in this process and return its result once every task is done.

    ``stop_event`` set by the caller (Ctrl-C) stops the worker after the running tasks finish; the
    result's state is then "interrupted".
    """
    from billiard.process import active_children
    from celery.worker import state as worker_state

    from cmover import app as appmod
    from cmover.localbroker import start_hub, stop_hub
    from cmover.taskbase import seed

    os.umask(0)  # every entry cmover creates gets an explicit mode; pool children inherit this
    manager = start_hub()
    appmod.use_embedded(jobs)
    app = appmod.app
    ctx = appmod.get_context()
    app.finalize()
    # The shutdown command below is ours; Celery would log it as a warning.
    logging.getLogger("celery.worker.control").setLevel(logging.ERROR)
    queues = ",".join(appmod.pass_queues(spec.kind.value))
    hostname = f"cmover-embedded-{spec.run_id}@localhost"
    worker = app.WorkController(
        pool="prefork", concurrency=jobs, hostname=hostname,
        without_heartbeat=True, without_mingle=True, without_gossip=True, queues=queues,
        loglevel=logging.WARNING, ready_callback=None,
    )
    thread = threading.Thread(target=worker.start, name="cmover-worker", daemon=True)
    t0 = time.monotonic()
    # Seed before the worker thread forks its pool: a fork while this thread holds one of Celery's
    # internal locks (send_task takes a class-wide one) would leave that lock held forever in the child.
    seed(app, spec, ctx)
    thread.start()
    state = "complete"
    try:
        while True:
            out = ctx.ledger.outstanding(spec.run_id)
            if on_progress:
                on_progress(ctx.stats.totals(spec.run_id) or {}, time.monotonic() - t0)
            if out == 0:
                break
            if stop_event is not None and stop_event.is_set():
                state = "interrupted"
                break
            if not thread.is_alive():
                # The worker died (its error is in the log): waiting on would never end.
                raise FatalError("the embedded worker stopped before the pass was complete; see the error above")
            time.sleep(0.05)
    finally:
        # Every task is done (or the user interrupted), so nothing needs a graceful stop: a warm shutdown
        # costs the consumer's 2-second drain plus the pool's ~1 s join, longer than a whole no-change
        # pass over 100,000 files. The consumer thread ends by itself at its next loop; the idle pool
        # processes are terminated now.
        worker_state.should_terminate = 0
        for child in active_children():
            child.terminate()
    seconds = time.monotonic() - t0
    extra: dict[str, object] = {}
    try:
        failures, count = ctx.errors.read(spec.run_id, limit=10_000)
        totals = ctx.stats.totals(spec.run_id) or {}
        if spec.kind is PassKind.DELETE:
            extra["deleted"] = ctx.errors.read(deleted_list(spec.run_id), limit=MEMORY_LIMIT)
    finally:
        stop_hub(manager)
    return RunResult(spec, totals, failures, count, seconds, state, extra)
