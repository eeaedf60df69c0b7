"""The error list of a pass: every per-item failure, kept where the operator can read it afterwards.

Embedded passes keep the list in memory (printed at the end). Distributed passes publish each task's
failures as one persistent JSON message to the durable queue ``cmover.errors.<run_id>``; reading the
list consumes without acknowledging, so the messages return to the queue and the list survives
readers, worker deaths and broker restarts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Exchange, Queue

from cmover.errors import Failure

log = logging.getLogger(__name__)

MEMORY_LIMIT = 100_000  # failures kept in memory by the embedded mode; beyond it only counted


def deleted_list(run_id: str) -> str:
    """Name of the list of what a delete pass removed (or would remove), kept like an error list."""
    return run_id + ".deleted"


def errors_queue(run_id: str) -> Queue:
    name = f"cmover.errors.{run_id}"
    return Queue(name, Exchange("", type="direct"), routing_key=name, durable=True, auto_delete=False)


class MemoryErrors:
    """Lists kept in memory, per run id (a pass's failures; ``<run>.deleted``: what a delete pass removed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, list[Failure]] = {}
        self._dropped: dict[str, int] = {}

    def record(self, run_id: str, failures: list[Failure]) -> None:
        with self._lock:
            items = self._items.setdefault(run_id, [])
            room = MEMORY_LIMIT - len(items)
            items.extend(failures[:room])
            self._dropped[run_id] = self._dropped.get(run_id, 0) + max(0, len(failures) - room)

    def read(self, run_id: str, limit: int = 1000) -> tuple[list[Failure], int]:
        with self._lock:
            items = self._items.get(run_id, [])
            return list(items[:limit]), len(items) + self._dropped.get(run_id, 0)


class BrokerErrors:
    """Failures as persistent messages on the durable queue ``cmover.errors.<run_id>``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def record(self, run_id: str, failures: list[Failure]) -> None:
        body = {"run_id": run_id, "failures": [f.as_dict() for f in failures]}
        q = errors_queue(run_id)
        with self.app.producer_or_acquire() as producer:
            producer.publish(body, exchange="", routing_key=q.name, declare=[q], serializer="json",
                             delivery_mode=2, retry=True, retry_policy={"max_retries": 5})

    def read(self, run_id: str, limit: int = 1000) -> tuple[list[Failure], int]:
        """Up to ``limit`` failures and the total count, without removing anything from the queue."""
        out: list[Failure] = []
        total = 0
        with self._records(run_id) as records:
            for _, failures in records:
                total += len(failures)
                out.extend(failures[:max(0, limit - len(out))])
        return out, total

    @contextmanager
    def _records(self, run_id: str) -> Iterator[Iterator[tuple[Any, list[Failure]]]]:
        """The list's messages, each with its failures, read without acknowledging: whatever the caller
        does not ``ack()`` returns to the queue when the channel closes (no queue: nothing recorded)."""
        q = errors_queue(run_id)
        with self.app.connection_for_read() as conn:
            channel = conn.channel()
            try:
                try:
                    _, messages, _ = channel.queue_declare(q.name, passive=True)
                except Exception:
                    messages = 0
                yield self._each(q(channel), messages)
            finally:
                channel.close()

    @staticmethod
    def _each(bound: Any, messages: int) -> Iterator[tuple[Any, list[Failure]]]:
        for _ in range(messages):
            msg = bound.get(no_ack=False, accept=["json"])
            if msg is None:
                return
            body = msg.payload if isinstance(msg.payload, dict) else json.loads(msg.body)
            yield msg, [Failure.from_dict(d) for d in body.get("failures", [])]

    @contextmanager
    def take(self, run_id: str) -> Iterator[tuple[list[Failure], Callable[[], None]]]:
        """Every failure of the list and a ``commit`` that removes exactly those records from the queue.

        Without ``commit`` (or when the caller raises or dies) every record stays on the list.
        """
        with self._records(run_id) as records:
            taken = list(records)

            def commit() -> None:
                for msg, _ in taken:
                    msg.ack()

            yield [f for _, failures in taken for f in failures], commit
