"""The Celery base class of every pass task (:mod:`cmover.tasks_copy` and its siblings)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject

from cmover.worker.taskbase import signature

log = logging.getLogger(__name__)


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
            signature(self.run).bind(*args, **kwargs)
        except TypeError as exc:
            log.error("rejected message %s of %s: wrong arguments (%s)", self.request.id, self.name, exc)
            raise Reject(f"wrong arguments: {exc}", requeue=False) from None
        return super().__call__(*args, **kwargs)
