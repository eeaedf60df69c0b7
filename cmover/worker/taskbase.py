"""What every cmover task does around its engine call: the one place tasks handle errors.

:func:`run_pass_task` decodes and checks the pass spec, consults the completion ledger (duplicate
deliveries become no-ops; a message delivered more than ``max_deliveries`` times is dead-lettered),
runs the engine with a tally, an error collector and an emitter, then records counters and failures
and marks the task done. Error classes (see :mod:`cmover.core.errors`):

* malformed or out-of-root message -> rejected (not requeued), logged;
* broker trouble while publishing children -> the message is requeued, the task runs again later;
* per-item failures -> collected by the engine, the rest goes on;
* anything unexpected -> logged with its traceback, recorded as a failure of the directory or batch,
  and the task completes: the pass finishes and lists it instead of hanging.

Nothing here imports Celery or kombu until it publishes through Celery (or rejects, or dead-letters a Celery
message): the embedded runner and its pool run task messages with :func:`run_message` and never import either
(the Celery task class is :class:`cmover.worker.passtask.PassTask`).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cmover.core import logformat
from cmover.core.counters import C
from cmover.core.errors import ConfigError, ConfinementError, PreflightError
from cmover.core.failure import Failure
from cmover.core.origin import pid
from cmover.core.passes import PassSpec
from cmover.core.paths import display
from cmover.core.tasknames import TASK_NAMES, Message, argsrepr, queue_name
from cmover.engine.jobs import DirJob, Job
from cmover.state.ledger import Ledger, task_id
from cmover.worker.context import WorkerContext, get_context

if TYPE_CHECKING:
    import inspect

log = logging.getLogger(__name__)

Body = Callable[[PassSpec, WorkerContext, Counter[str], Callable[[Failure], None], Callable[[Job], None]], None]


#: The run counter (``Ledger.incr``) of tasks published while the ledger could not count them: the ledger's
#: count of such a run can reach 0 while one of them still runs, so `cmover status` reads a run that has it
#: as "unknown", never "complete" (:func:`cmover.ops.runs.untrusted_key`). It is written before the
#: uncounted task is published when memcached answers by then; otherwise at the publishing process's next
#: publication of the run, and at the latest before its task is marked done (which waits for it). Only in
#: between can the uncounted task, finishing first, bring the count to 0 unmarked.
UNTRUSTED = "untrusted"


#: A task that leaves fewer tasks than this outstanding in the ledger reports its process's counts at once (see
#: _run_task). Only the last task did: the others' processes reported once idle for REPORT_IDLE (5 ms), and a
#: distributed pass's command, finding the run complete, waited those 5 ms for them (a 20k-file no-change
#: pass: 5.5 ms of its 0.17 s). A few reports more per pass, each a handful of memcached calls.
REPORT_NOW_LEFT = 8


class _LedgerGuard:
    """Ledger calls that never break the copy: a failing ledger is logged once and reported as lost."""

    warned = False
    #: Runs for which this process published a task uncounted and could not yet write UNTRUSTED.
    unmarked: set[str] = set()

    @classmethod
    def call(cls, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            if not cls.warned:
                log.error("completion ledger unavailable (%s): copying goes on, `status` will say unknown", exc)
                cls.warned = True
            return default

    @classmethod
    def enqueue(cls, ledger: Any, run_id: str, tid: str) -> None:
        """``ledger.enqueue``, never raising. When it fails, the task is still published (the copy goes on)
        but uncounted, so the run is marked UNTRUSTED: a memcached that lost the run reads as unknown anyway,
        and one that failed for a moment keeps the mark for the run's lifetime."""
        if cls.call(ledger.enqueue, run_id, tid, default=False) is False:
            cls.unmarked.add(run_id)
        cls.mark(ledger, run_id)

    @classmethod
    def mark(cls, ledger: Any, run_id: str) -> bool:
        """Write the UNTRUSTED mark of ``run_id`` if this process owes it; False while it cannot be written."""
        if run_id not in cls.unmarked:
            return True
        try:
            ledger.incr(run_id, UNTRUSTED, 1)
        except Exception:
            return False
        cls.unmarked.discard(run_id)
        return True


#: Sends task messages (each counted in the ledger already) to wherever the pass's tasks are taken from: the
#: broker through Celery (:func:`publish`), or the embedded run's hub (:mod:`cmover.embedded.pool`).
Send = Callable[[Sequence[Message]], None]


class Emitter:
    """Publishes child jobs: counted in ``ledger`` (the run's completion ledger) first, then sent with a deterministic
    task id.

    ``send``: where the messages go (None: to the broker, on this process's :func:`publisher`, which does not
    wait for the broker's confirmation of each: :meth:`settle` does, before the task is counted done).
    """

    def __init__(self, spec_d: dict[str, Any], spec: PassSpec, ledger: Ledger, send: Send | None = None) -> None:
        self.spec_d = spec_d
        self.spec = spec
        self.ledger = ledger
        self.send = send
        self.sent = 0

    def __call__(self, job: Job) -> None:
        name = TASK_NAMES[(self.spec.kind.value, job.kind)]
        tid = job_task_id(self.spec, job)
        _LedgerGuard.enqueue(self.ledger, self.spec.run_id, tid)
        message = (name, [self.spec_d, *job.wire_args()], tid)
        if self.send is not None:
            self.send([message])
        else:
            publisher().send([message])
        self.sent += 1

    def settle(self) -> None:
        """Return once every job sent is the broker's (confirmed), and every one this process still holds from an
        earlier task (:attr:`cmover.state.taskmessages.Publisher.holding`); ConnectionError when that cannot be
        had."""
        if self.send is None and (self.sent or _holding()):
            publisher().settle()


#: This process's publisher of task messages, and the pid it belongs to (a forked pool process makes its own).
_publisher: tuple[int, Any] | None = None


def publisher() -> Any:
    """This process's :class:`cmover.state.taskmessages.Publisher`, to the broker the Celery app uses (made on
    first use in each process: a pool process never shares its parent's connection)."""
    global _publisher
    own = _own_publisher()
    if own is None:
        from cmover.state.taskmessages import Publisher

        own = Publisher(_app().conf.broker_url)
        _publisher = (pid(), own)
    return own


def _own_publisher() -> Any:
    """This process's publisher if it made one, else None (a forked pool process does not own its parent's)."""
    return _publisher[1] if _publisher is not None and _publisher[0] == pid() else None


def _holding() -> bool:
    """Whether this process's publisher holds task messages the broker has not confirmed (an earlier task's,
    given up on with the broker gone for longer than its outage allowance)."""
    own = _own_publisher()
    return own is not None and bool(own.holding)


def close_publisher() -> None:
    """Close this process's publisher, if it made one (a pool process that exits). Messages it still holds are
    said in the log: their run stays outstanding until a pass runs again."""
    global _publisher
    own = _own_publisher()
    if own is not None:
        if own.holding:
            log.error("a pool process exits with task messages the broker never confirmed: their run stays "
                      "outstanding; run the pass again once the broker is back")
        own.close()
    _publisher = None


def publish(app: Any, messages: Sequence[Message], connection: Any = None) -> None:
    """Send task messages (each counted in the ledger already) through the Celery ``app``: on ``connection``
    when given (a command's own, :func:`cmover.ops.broker.link`), else on one of the app's pool."""
    for name, args, tid in messages:
        # ignore_result: as every pass task says (PassTask); said here, Celery neither loads nor calls a result
        # backend to send the message.
        app.send_task(name, args=args, task_id=tid, argsrepr=argsrepr(args[1:]), connection=connection,
                      ignore_result=True)


def _app() -> Any:
    """The Celery app (imported on first use: the embedded runner and its pool run tasks without it)."""
    from cmover.app import app

    return app


def job_task_id(spec: PassSpec, job: Job) -> str:
    """The deterministic id of ``job`` of pass ``spec``; a retry attempt's jobs get ids of their own, so
    that the tasks of `retry-failed` (and their children) are never taken for ones already done."""
    kind = f"retry{spec.attempt}.{job.kind}" if spec.attempt else job.kind
    return task_id(spec.run_id, kind, job.rel, job.index, job.ident())


def seed(send: Send, spec: PassSpec, ledger: Ledger, jobs: Sequence[Job] | None = None, made: bool = False,
         announce: Callable[[], None] = lambda: None) -> str:
    """Open the run in ``ledger`` and send (``send``) the pass's root directory task; return its task id.

    With ``jobs`` (a journal-driven pass, :mod:`cmover.engine.changeplan`) those are sent instead,
    each counted in the ledger before it is sent, and "" is returned: a pass with no job is complete at once.
    ``made``: the command has just created the target root (:attr:`DirJob.made`).
    ``announce``: makes the run visible to its readers (`cmover status`, ``--wait``); called once the ledger
    counts at least one task of the run and before anything is sent, so that no reader ever finds the run
    without its ledger (read as "unknown") or with nothing counted yet (read as "complete"). A journal-driven
    pass holds a count of its own until every job is sent: a seeding cut short leaves the run stalled,
    never complete.
    """
    ledger.open_run(spec.run_id)
    if jobs is not None:
        hold = task_id(spec.run_id, "seed", spec.start, 0)
        ledger.enqueue(spec.run_id, hold)
        announce()
        emit = Emitter(spec.as_dict(), spec, ledger, send)
        for job in jobs:
            emit(job)
        ledger.done(spec.run_id, hold)
        return ""
    tid = task_id(spec.run_id, "dir", spec.start, 0)
    ledger.enqueue(spec.run_id, tid)
    announce()
    send([(TASK_NAMES[(spec.kind.value, "dir")], [spec.as_dict(), *DirJob(spec.start, made=made).wire_args()], tid)])
    return tid


def run_message(message: Message, hostname: str, send: Send,
                dead_letter: Callable[[PassSpec, int], None] | None = None) -> None:
    """Run one task message in this process without Celery: the same body (:data:`cmover.worker.bodies.TASKS`),
    argument checks, ledger accounting and error handling as a Celery worker's task; the tasks it publishes go
    to ``send``. Raises :class:`Rejected` for a message that is malformed, out of its roots or of an unknown
    task (not to be run again), or whose children could not all be sent (to be run again).
    For the embedded runner and its pool (:mod:`cmover.embedded.pool`).
    """
    from cmover.worker.bodies import TASKS

    name, args, tid = message
    factory = TASKS.get(name)
    if factory is None or not isinstance(args, list) or not args:
        log.error("rejected message %s of %s: not a cmover task message", tid, name)
        raise Rejected("not a cmover task message", requeue=False)
    try:
        body = factory(tid, *args[1:])  # a factory only binds its arguments into the body it returns
    except TypeError as exc:
        # Wrong arguments are refused by the call itself, before the factory's frame exists: a traceback
        # with a frame beyond this one is a TypeError raised inside the factory, a bug, not the message's.
        # (inspect.signature said the same, at the price of importing inspect, ast and dis into every pass.)
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None:
            raise
        log.error("rejected message %s of %s: wrong arguments (%s)", tid, name, exc)
        raise Rejected(f"wrong arguments: {exc}", requeue=False) from None
    spec_d = args[0]
    try:
        _run_task(name, tid, hostname, spec_d, args[1], body,
                  lambda spec_, ctx_: Emitter(spec_d, spec_, ctx_.ledger, send), dead_letter)
    finally:
        logformat.clear_task()  # this process's later log lines belong to no task


@functools.lru_cache(maxsize=32)
def signature(fn: Callable[..., Any]) -> inspect.Signature:
    """The call signature of a Celery task's ``run``, computed once (every message is checked against it).
    ``inspect`` is imported here: a Celery worker has it already, an embedded pass never needs it."""
    import inspect

    return inspect.signature(fn)


def run_pass_task(task: Any, spec_d: Any, rel_wire: Any, body: Body) -> None:
    """Run ``body`` for one delivery of Celery task ``task`` (see module doc for the error handling)."""
    from celery.exceptions import Reject

    try:
        _run_task(task.name, task.request.id, str(getattr(task.request, "hostname", "") or ""), spec_d, rel_wire,
                  body, lambda spec, ctx: Emitter(spec_d, spec, ctx.ledger),
                  lambda spec, delivery: _dead_letter(task, spec, delivery))
    except Rejected as exc:
        raise Reject(exc.reason, requeue=exc.requeue) from None


class Rejected(Exception):
    """The message is rejected: ``requeue`` it (the task runs again later) or drop it."""

    def __init__(self, reason: str, requeue: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


def _broker_errors() -> tuple[type[BaseException], ...]:
    """What publishing raises when the broker is in trouble (asked only when something was raised). kombu's
    error only where kombu is loaded: a process that never imported it (the embedded mode) cannot have
    raised it, and does not import it for a task that failed."""
    kombu_errors = sys.modules.get("kombu.exceptions")
    if kombu_errors is None:
        return (ConnectionError,)
    return kombu_errors.OperationalError, ConnectionError


def _requeued(tid: str, exc: BaseException) -> Rejected:
    """The rejection of task ``tid`` for broker trouble ``exc`` (said in the log): it runs again later."""
    log.warning("broker trouble in %s (%s); requeued", tid, exc)
    return Rejected(str(exc), requeue=True)


def _run_task(name: str, tid: str, hostname: str, spec_d: Any, rel_wire: Any, body: Body,
              emitter: Callable[[PassSpec, WorkerContext], Emitter],
              dead_letter: Callable[[PassSpec, int], None] | None = None) -> None:
    """Run ``body`` for one delivery of task ``tid`` named ``name``; raises :class:`Rejected`."""
    ctx = get_context()
    try:
        spec = PassSpec.from_dict(spec_d)
        if not name.startswith(f"cmover.{spec.kind.value}."):
            raise ConfinementError(f"a {spec.kind.value} pass spec in a {name} message")
        ctx.check_spec(spec)
    except (ConfinementError, ConfigError) as exc:
        log.error("rejected message %s of %s: %s", tid, name, exc)
        raise Rejected(str(exc), requeue=False) from None
    run_id = spec.run_id
    where = _describe(rel_wire)
    logformat.bind_task(spec.kind.value, run_id, where)  # cleared after the task (cmover.worker.hooks)
    delivery = _LedgerGuard.call(ctx.ledger.begin, run_id, tid, default=1)
    if delivery is None:
        log.debug("task %s already done; duplicate delivery ignored", tid)
        return
    began = time.time()
    tally: Counter[str] = Counter({C.TASKS: 1})
    failures: list[Failure] = []
    if delivery > spec.max_deliveries:
        if dead_letter is not None:
            dead_letter(spec, delivery)
        tally[C.DEAD] += 1
        tally[C.FAILED] += 1
        failures.append(Failure(where, name, 0,
                                f"gave up after {delivery - 1} deliveries (it kept killing its worker); "
                                f"message kept in {queue_name(spec.kind.value, 'dead')}"))
    else:
        emit = emitter(spec, ctx)
        try:
            body(spec, ctx, tally, failures.append, emit)
        except _broker_errors() as exc:
            # Children may be unpublished: do not mark done; the broker hands the message out again.
            raise _requeued(tid, exc) from None
        except PreflightError as exc:
            # A safety check inside the task failed (e.g. the source root vanished): loud, no traceback.
            log.error("%s (%s): %s", name, display(where), exc)
            tally[C.FAILED] += 1
            failures.append(Failure(where, name, 0, str(exc)))
        except ConfinementError as exc:
            log.error("rejected message %s of %s: %s", tid, name, exc)
            tally[C.FAILED] += 1
            failures.append(Failure(where, name, 0, f"rejected: {exc}"))
        except Exception as exc:
            log.exception("unexpected error in %s (%s)", name, display(where))
            tally[C.FAILED] += 1
            failures.append(Failure(where, name, 0, f"internal error: {type(exc).__name__}: {exc}"))
        try:
            emit.settle()  # whatever the body did, every child it sent is the broker's before the task is done
        except _broker_errors() as exc:
            raise _requeued(tid, exc) from None
    # Counted before the counters go out and before done: `status` waits until the workers' reported
    # tasks add up to it (every count has reached memcached), and the exact scan sees that it moved.
    _LedgerGuard.call(ctx.ledger.finished, run_id)
    ctx.stats.add(run_id, tally, hostname, began)
    if failures:
        try:
            ctx.errors.record(run_id, failures)
        except Exception as exc:  # the failures are in the log in any case
            log.error("could not record %d failure(s) in the error list: %s", len(failures), exc)
    if _LedgerGuard.mark(ctx.ledger, run_id):
        left = _LedgerGuard.call(ctx.ledger.done, run_id, tid)
        if left is not None and left < REPORT_NOW_LEFT:
            # One of the run's last tasks: `status` and `--wait` wait for every count to be reported once the
            # count reaches 0, so this process's go out at once rather than once it has been idle for REPORT_IDLE.
            ctx.stats.flush()
    else:  # left outstanding: the run must not look complete while its mark is missing
        log.error("task %s of run %s left not done in the ledger: a task it published is uncounted", tid, run_id)


def _describe(rel_wire: Any) -> bytes:
    try:
        from cmover.core.paths import from_wire

        return from_wire(rel_wire)
    except ConfinementError:
        return repr(rel_wire).encode()[:200]


def _dead_letter(task: Any, spec: PassSpec, delivery: int) -> None:
    from kombu import Exchange, Queue

    name = queue_name(spec.kind.value, "dead")
    q = Queue(name, Exchange("", type="direct"), routing_key=name, durable=True, auto_delete=False)
    body = {"task": task.name, "id": task.request.id, "args": list(task.request.args or []),
            "deliveries": delivery - 1, "run_id": spec.run_id}
    try:
        with _app().producer_or_acquire() as producer:
            producer.publish(body, exchange="", routing_key=name, declare=[q], serializer="json",
                             delivery_mode=2, retry=True, retry_policy={"max_retries": 5})
    except Exception as exc:
        log.error("could not dead-letter %s: %s", task.request.id, exc)
    log.error("task %s (%s) dead-lettered after %d deliveries", task.request.id, task.name, delivery - 1)
