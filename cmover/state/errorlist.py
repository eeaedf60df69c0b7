"""The error list of a pass: every per-item failure, kept where the operator can read it afterwards.

Embedded passes keep the list in memory (printed at the end). Distributed passes publish each task's
failures as one persistent JSON message to the durable queue ``cmover.errors.<run_id>``; reading the
list consumes without acknowledging, so the messages return to the queue and the list survives
readers, worker deaths and broker restarts.

A delete pass's deletion list (:func:`deleted_list`) is kept the same way, with
:class:`~cmover.core.deletion.Deletion` records instead of failures (read with ``read_deleted``), and a
verify pass's differences list (:func:`differences_list`) with :class:`~cmover.core.difference.Difference`
records (read with ``read_differences``).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cmover.core.deletion import Deletion
from cmover.core.difference import Difference
from cmover.core.failure import Failure
from cmover.core.hsmrecord import HsmRecord, hsm_list

if TYPE_CHECKING:
    from kombu import Queue

R = TypeVar("R", Failure, Deletion, Difference, HsmRecord)
Records = Sequence[Failure] | Sequence[Deletion] | Sequence[Difference] | Sequence[HsmRecord]

log = logging.getLogger(__name__)

MEMORY_LIMIT = 100_000  # failures kept in memory by the embedded mode; beyond it only counted


class ErrorSink(Protocol):
    """Where a run's lists are kept: its per-item failures, and a delete pass's deletions (:func:`deleted_list`).

    Implemented by :class:`BrokerErrors` (distributed), :class:`MemoryErrors` (tests) and the embedded
    hub's ``HubErrors``.
    """

    def record(self, run_id: str, failures: Records) -> None:
        """Add records to list ``run_id``. May raise (the caller logs: the records are in the log)."""
        ...

    def read(self, run_id: str, limit: int = 1000) -> tuple[list[Failure], int]:
        """Up to ``limit`` failures of list ``run_id`` and how many it holds; nothing is removed."""
        ...

    def read_deleted(self, run_id: str, limit: int = 1000) -> tuple[list[Deletion], int]:
        """Up to ``limit`` records of the deletion list of delete pass ``run_id``, and how many it holds."""
        ...

    def read_differences(self, run_id: str, limit: int = 1000) -> tuple[list[Difference], int]:
        """Up to ``limit`` records of the differences list of verify pass ``run_id``, and how many it holds."""
        ...


def deleted_list(run_id: str) -> str:
    """Name of the list of what a delete pass removed (or would remove), kept like an error list."""
    return run_id + ".deleted"


def differences_list(run_id: str) -> str:
    """Name of the list of what a verify pass found different, kept like an error list."""
    return run_id + ".differences"


def errors_queue_name(run_id: str) -> str:
    """The durable queue that holds list ``run_id``."""
    return f"cmover.errors.{run_id}"


def errors_queue(run_id: str) -> Queue:
    """The queue of list ``run_id`` as a worker records into it (through its Celery app's kombu producers)."""
    from kombu import Exchange, Queue  # only a process that writes a broker's list needs kombu

    name = errors_queue_name(run_id)
    return Queue(name, Exchange("", type="direct"), routing_key=name, durable=True, auto_delete=False)


class MemoryErrors:
    """Lists kept in memory, per run id (a pass's failures; ``<run>.deleted``: what a delete pass removed).

    Records are kept as given (the embedded hub keeps their wire form, see :meth:`items`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, list[Any]] = {}
        self._dropped: dict[str, int] = {}

    def record(self, run_id: str, failures: Sequence[Any]) -> None:
        with self._lock:
            items = self._items.setdefault(run_id, [])
            room = MEMORY_LIMIT - len(items)
            items.extend(failures[:room])
            self._dropped[run_id] = self._dropped.get(run_id, 0) + max(0, len(failures) - room)

    def items(self, run_id: str, limit: int = 1000) -> tuple[list[Any], int]:
        """Up to ``limit`` records of list ``run_id`` as recorded, and how many were recorded."""
        with self._lock:
            items = self._items.get(run_id, [])
            return list(items[:limit]), len(items) + self._dropped.get(run_id, 0)

    def read(self, run_id: str, limit: int = 1000) -> tuple[list[Failure], int]:
        return self.items(run_id, limit)

    def read_deleted(self, run_id: str, limit: int = 1000) -> tuple[list[Deletion], int]:
        """The deletion list of delete pass ``run_id``."""
        return self.items(deleted_list(run_id), limit)

    def read_hsm(self, run_id: str) -> list[HsmRecord]:
        """The HSM list of copy run ``run_id``."""
        return self.items(hsm_list(run_id), MEMORY_LIMIT)[0]

    def read_differences(self, run_id: str, limit: int = 1000) -> tuple[list[Difference], int]:
        """The differences list of verify pass ``run_id``."""
        return self.items(differences_list(run_id), limit)


class BrokerErrors:
    """Failures as persistent messages on the durable queue ``cmover.errors.<run_id>``.

    ``app``: the Celery app that records through its producers (a worker); None for a reader that has its own
    ``connect``. ``connect``: a context manager giving the connection the lists are read through (a command's
    one connection, :func:`cmover.ops.broker.link`); default a new connection of the app per reading.
    """

    def __init__(self, app: Any, connect: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        if app is None and connect is None:
            raise TypeError("BrokerErrors needs the Celery app or a connection to read through")
        self.app = app
        self._connect = connect or app.connection_for_read

    def record(self, run_id: str, failures: Records) -> None:
        # Deletions, differences and HSM records travel in the same envelope ("failures" names the records of any list).
        body = {"run_id": run_id, "failures": [f.as_dict() for f in failures]}
        q = errors_queue(run_id)
        with self.app.producer_or_acquire() as producer:
            producer.publish(body, exchange="", routing_key=q.name, declare=[q], serializer="json",
                             delivery_mode=2, retry=True, retry_policy={"max_retries": 5})

    def read(self, run_id: str, limit: int = 1000) -> tuple[list[Failure], int]:
        """Up to ``limit`` failures and the total count, without removing anything from the queue."""
        return self._read(run_id, limit, Failure.from_dict)

    def read_deleted(self, run_id: str, limit: int = 1000) -> tuple[list[Deletion], int]:
        """The deletion list of delete pass ``run_id``, read like :meth:`read`."""
        return self._read(deleted_list(run_id), limit, Deletion.from_dict)

    def read_hsm(self, run_id: str) -> list[HsmRecord]:
        """Every record of copy run ``run_id``'s HSM list (:mod:`cmover.state.hsmlist`), read like :meth:`read`."""
        return self._read(hsm_list(run_id), 1 << 62, HsmRecord.from_dict)[0]

    def read_differences(self, run_id: str, limit: int = 1000) -> tuple[list[Difference], int]:
        """The differences list of verify pass ``run_id``, read like :meth:`read`."""
        return self._read(differences_list(run_id), limit, Difference.from_dict)

    def _read(self, name: str, limit: int, decode: Callable[[dict[str, Any]], R]) -> tuple[list[R], int]:
        out: list[R] = []
        total = 0
        with self._records(name, decode) as records:
            for _, failures in records:
                total += len(failures)
                out.extend(failures[:max(0, limit - len(out))])
        return out, total

    @contextmanager
    def _records(self, run_id: str, decode: Callable[[dict[str, Any]], R]) -> Iterator[Iterator[tuple[Any, list[R]]]]:
        """The list's messages, each as (an ``ack()`` of it, its records), read without acknowledging: whatever
        the caller does not ``ack()`` returns to the queue when the channel closes (no queue: nothing recorded).
        Read with the AMQP channel's own ``basic_get``, on a command's py-amqp connection or a Celery app's."""
        name = errors_queue_name(run_id)
        with self._connect() as conn:
            channel = conn.channel()
            try:
                try:
                    _, messages, _ = channel.queue_declare(name, passive=True)
                except Exception:
                    messages = 0
                yield self._each(channel, name, messages, decode)
            finally:
                channel.close()

    @staticmethod
    def _each(channel: Any, name: str, messages: int,
              decode: Callable[[dict[str, Any]], R]) -> Iterator[tuple[Callable[[], None], list[R]]]:
        for _ in range(messages):
            msg = channel.basic_get(name, no_ack=False)
            if msg is None:
                return
            if getattr(msg, "content_type", None) != "application/json":
                log.warning("list %s: a message of content type %r left alone", name,
                            getattr(msg, "content_type", None))
                continue
            body = json.loads(msg.body)
            yield functools.partial(channel.basic_ack, msg.delivery_tag), [decode(d) for d in body.get("failures", [])]

    @contextmanager
    def take(self, run_id: str) -> Iterator[tuple[list[Failure], Callable[[], None]]]:
        """Every failure of the list and a ``commit`` that removes exactly those records from the queue.

        Without ``commit`` (or when the caller raises or dies) every record stays on the list.
        """
        with self._records(run_id, Failure.from_dict) as records:
            taken = list(records)

            def commit() -> None:
                for ack, _ in taken:
                    ack()

            yield [f for _, failures in taken for f in failures], commit
