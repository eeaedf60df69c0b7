"""What every cmover task does around its engine call: the one place tasks handle errors.

:func:`run_pass_task` decodes and checks the pass spec, consults the completion ledger (duplicate
deliveries become no-ops; a message delivered more than ``max_deliveries`` times is dead-lettered),
runs the engine with a tally, an error collector and an emitter, then records counters and failures
and marks the task done. Error classes (see :mod:`cmover.errors`):

* malformed or out-of-root message -> rejected (not requeued), logged;
* broker trouble while publishing children -> the message is requeued, the task runs again later;
* per-item failures -> collected by the engine, the rest goes on;
* anything unexpected -> logged with its traceback, recorded as a failure of the directory or batch,
  and the task completes: the pass finishes and lists it instead of hanging.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Reject
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from cmover.app import TASK_NAMES, WorkerContext, app, get_context, queue_name
from cmover.copypass import Job
from cmover.errors import ConfigError, ConfinementError, Failure, PreflightError
from cmover.ledger import task_id
from cmover.passes import PassSpec
from cmover.paths import display, to_wire
from cmover.stats import C

log = logging.getLogger(__name__)

Body = Callable[[PassSpec, WorkerContext, Counter[str], Callable[[Failure], None], Callable[[Job], None]], None]


class PassTask(Task):
    """Base of every pass task: late ack, redelivered when the worker process dies, results ignored."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = False  # arguments are checked by run_pass_task, with clear messages

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A message with the wrong number of arguments would fail in the call itself, with a TypeError
        # and a traceback, before run_pass_task could look at it: reject it here, like any malformed one.
        try:
            _signature(self.run).bind(*args, **kwargs)
        except TypeError as exc:
            log.error("rejected message %s of %s: wrong arguments (%s)", self.request.id, self.name, exc)
            raise Reject(f"wrong arguments: {exc}", requeue=False) from None
        return super().__call__(*args, **kwargs)


@functools.lru_cache(maxsize=32)
def _signature(run: Callable[..., Any]) -> inspect.Signature:
    """A task's call signature, computed once per task (every delivery is checked against it)."""
    return inspect.signature(run)


class _LedgerGuard:
    """Ledger calls that never break the copy: a failing ledger is logged once and reported as lost."""

    warned = False

    @classmethod
    def call(cls, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            if not cls.warned:
                log.error("completion ledger unavailable (%s): copying goes on, `status` will say unknown", exc)
                cls.warned = True
            return default


class Emitter:
    """Publishes child jobs: counted in the ledger first, then sent with a deterministic task id."""

    def __init__(self, spec_d: dict[str, Any], spec: PassSpec, ctx: WorkerContext) -> None:
        self.spec_d = spec_d
        self.spec = spec
        self.ctx = ctx

    def __call__(self, job: Job) -> None:
        name = TASK_NAMES[(self.spec.kind.value, job.kind)]
        tid = job_task_id(self.spec, job)
        _LedgerGuard.call(self.ctx.ledger.enqueue, self.spec.run_id, tid)
        app.send_task(name, args=[self.spec_d, *job.wire_args()], task_id=tid)


def job_task_id(spec: PassSpec, job: Job) -> str:
    """The deterministic id of ``job`` of pass ``spec``; a retry attempt's jobs get ids of their own, so
    that the tasks of `retry-failed` (and their children) are never taken for ones already done."""
    kind = f"retry{spec.attempt}.{job.kind}" if spec.attempt else job.kind
    return task_id(spec.run_id, kind, job.rel, job.index, job.ident())


def seed(app: Any, spec: PassSpec, ctx: WorkerContext) -> str:
    """Open the run in the ledger and publish the pass's root directory task; return its task id."""
    ctx.ledger.open_run(spec.run_id)
    tid = task_id(spec.run_id, "dir", spec.start, 0)
    ctx.ledger.enqueue(spec.run_id, tid)
    name = TASK_NAMES[(spec.kind.value, "dir")]
    app.send_task(name, args=[spec.as_dict(), to_wire(spec.start), None], task_id=tid)
    return tid


def run_pass_task(task: Task, spec_d: Any, rel_wire: Any, body: Body) -> None:
    """Run ``body`` for one delivery of ``task`` (see module doc for the error handling)."""
    ctx = get_context()
    tid = task.request.id
    try:
        spec = PassSpec.from_dict(spec_d)
        if not task.name.startswith(f"cmover.{spec.kind.value}."):
            raise ConfinementError(f"a {spec.kind.value} pass spec in a {task.name} message")
        ctx.check_spec(spec)
    except (ConfinementError, ConfigError) as exc:
        log.error("rejected message %s of %s: %s", tid, task.name, exc)
        raise Reject(str(exc), requeue=False) from None
    run_id = spec.run_id
    delivery = _LedgerGuard.call(ctx.ledger.begin, run_id, tid, default=1)
    if delivery is None:
        log.debug("task %s already done; duplicate delivery ignored", tid)
        return
    began = time.time()
    tally: Counter[str] = Counter({C.TASKS: 1})
    failures: list[Failure] = []
    where = _describe(rel_wire)
    if delivery > spec.max_deliveries:
        _dead_letter(task, spec, spec_d, rel_wire, delivery)
        tally[C.DEAD] += 1
        tally[C.FAILED] += 1
        failures.append(Failure(where, task.name, 0,
                                f"gave up after {delivery - 1} deliveries (it kept killing its worker); "
                                f"message kept in {queue_name(spec.kind.value, 'dead')}"))
    else:
        try:
            body(spec, ctx, tally, failures.append, Emitter(spec_d, spec, ctx))
        except (OperationalError, ConnectionError) as exc:
            # Children may be unpublished: do not mark done; the broker hands the message out again.
            log.warning("broker trouble in %s (%s); requeued", tid, exc)
            raise Reject(str(exc), requeue=True) from None
        except PreflightError as exc:
            # A safety check inside the task failed (e.g. the source root vanished): loud, no traceback.
            log.error("%s (%s): %s", task.name, display(where), exc)
            tally[C.FAILED] += 1
            failures.append(Failure(where, task.name, 0, str(exc)))
        except ConfinementError as exc:
            log.error("rejected message %s of %s: %s", tid, task.name, exc)
            tally[C.FAILED] += 1
            failures.append(Failure(where, task.name, 0, f"rejected: {exc}"))
        except Exception as exc:
            log.exception("unexpected error in %s (%s)", task.name, display(where))
            tally[C.FAILED] += 1
            failures.append(Failure(where, task.name, 0, f"internal error: {type(exc).__name__}: {exc}"))
    ctx.stats.add(run_id, tally, str(getattr(task.request, "hostname", "") or ""), began)
    if failures:
        try:
            ctx.errors.record(run_id, failures)
        except Exception as exc:  # the failures are in the log in any case
            log.error("could not record %d failure(s) in the error list: %s", len(failures), exc)
    _LedgerGuard.call(ctx.ledger.done, run_id, tid)


def _describe(rel_wire: Any) -> bytes:
    try:
        from cmover.paths import from_wire

        return from_wire(rel_wire)
    except ConfinementError:
        return repr(rel_wire).encode()[:200]


def _dead_letter(task: Task, spec: PassSpec, spec_d: Any, rel_wire: Any, delivery: int) -> None:
    name = queue_name(spec.kind.value, "dead")
    q = Queue(name, Exchange("", type="direct"), routing_key=name, durable=True, auto_delete=False)
    body = {"task": task.name, "id": task.request.id, "args": list(task.request.args or []),
            "deliveries": delivery - 1, "run_id": spec.run_id}
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(body, exchange="", routing_key=name, declare=[q], serializer="json",
                             delivery_mode=2, retry=True, retry_policy={"max_retries": 5})
    except Exception as exc:
        log.error("could not dead-letter %s: %s", task.request.id, exc)
    log.error("task %s (%s) dead-lettered after %d deliveries", task.request.id, task.name, delivery - 1)
