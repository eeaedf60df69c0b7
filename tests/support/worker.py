"""Run cmover's Celery tasks in this process, as a worker runs them, for hostile-message and fuzz tests.

:class:`InProcessWorker` installs a :class:`cmover.worker.context.WorkerContext` with in-memory ledger, counters
and error list and the configured mounts (so ``check_spec`` confines as on a real worker), replaces
the worker's publisher (:func:`cmover.worker.taskbase.publisher`) by a recorder (children are listed, never
published) and calls a task's ``run`` inside
a pushed request, exactly what Celery's tracer does around it. (Engine-level runs of whole passes:
:mod:`support.runner`. Proving that nothing outside a root was written: :func:`support.snap.unchanged`.)

Importing this module loads the Celery configuration without a site broker (see the end of the module).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.exceptions import Reject

import cmover.app as appmod
from cmover.core.failure import Failure
from cmover.state.errorlist import MemoryErrors
from cmover.state.ledger import MemoryLedger
from cmover.state.stats import MemoryStats
from cmover.worker import taskbase
from cmover.worker.context import WorkerContext, contexts


def configure_app_without_broker() -> None:
    """Load the Celery configuration once without a site's broker: nothing in these tests publishes."""
    if not appmod.app.configured:
        appmod.use_broker("memory://")


class _Tracebacks(logging.Handler):
    """Collects every log record that carries a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text or record.stack_info:
            self.records.append(record)


class InProcessWorker:
    """One worker process's context and a way to deliver messages to its tasks."""

    def __init__(self, src_mount: bytes | None, dst_mount: bytes | None) -> None:
        self.ctx = WorkerContext(ledger=MemoryLedger(), stats=MemoryStats(), errors=MemoryErrors(),
                                 src_mount=src_mount, dst_mount=dst_mount)
        self.sent: list[tuple[str, list[Any], str]] = []
        self.tracebacks = _Tracebacks()
        self._building = contexts.building(lambda: self.ctx)

    def install(self, mp: Any) -> None:
        """Use this worker's context in this process (``mp``: a pytest MonkeyPatch, undone by the caller)."""
        configure_app_without_broker()
        self._building.__enter__()
        mp.setattr(taskbase, "publisher", lambda: self)
        root = logging.getLogger()
        root.addHandler(self.tracebacks)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self.tracebacks)
        self._building.__exit__(None, None, None)

    def send(self, messages: list[tuple[str, list[Any], str]]) -> None:
        """What the worker's publisher is asked to send (``taskbase.publisher``): kept, in order."""
        self.sent += [(name, list(args), tid) for name, args, tid in messages]

    def settle(self) -> None:
        """Every message "sent" is taken: nothing to wait for."""

    def deliver(self, task: Any, *args: Any) -> Reject | None:
        """Run ``task`` on message arguments ``args``; the Reject it raised, or None when it completed.

        Any other exception propagates: a worker would log it with its traceback.
        """
        task.push_request(id=f"t-{uuid.uuid4()}", args=list(args), kwargs={}, delivery_info={}, retries=0,
                          hostname="in-process@test", is_eager=False)
        try:
            task.run(*args)
        except Reject as exc:
            return exc
        finally:
            task.pop_request()
        return None

    def failures(self, run_id: str) -> list[Failure]:
        return self.ctx.errors.read(run_id)[0]


# Test modules put task objects into parametrize lists: pytest's look at them finalizes the Celery app,
# which loads its configuration. Do it here, before any collection, without a site broker.
configure_app_without_broker()
