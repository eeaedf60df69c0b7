"""The embedded mode's broker: queues, ledger, counters and error list shared by local processes.

``cmover copy`` without a broker runs a Celery worker with a *prefork* pool in this process, so that
the copy uses every core (a thread pool is capped by the GIL: measured, one thread was faster than
four). Pool children publish the tasks they fan out, so the queues must be shared between processes;
``memory://`` keeps them per process and would lose those tasks. This module provides the shared state:

* :class:`Hub` lives in a helper process started with :class:`multiprocessing.managers.BaseManager`
  and holds the queues, the completion ledger, the counters and the error list of the run;
* :class:`Transport` is a kombu virtual transport (``cmover-local://``) whose queue operations are calls
  to the hub, so Celery's message path (serialisation, routing, worker requests, acks) is the real one.

The manager uses the ``xmlrpclib`` serializer, not pickle, and only strings and small integers cross
it: messages travel as their JSON text. It listens on a Unix socket in a private directory with a
random key, and lives only as long as the run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import threading

# multiprocessing imports xmlrpc.client lazily; importing it in a pool child forked while another
# thread of the parent held the import lock deadlocks the child. Import it before any fork.
import xmlrpc.client  # noqa: F401
from collections import Counter, deque
from multiprocessing.managers import BaseManager
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport.virtual.base import BrokerState

from cmover.errorlist import MemoryErrors
from cmover.errors import Failure
from cmover.ledger import MemoryLedger
from cmover.stats import MemoryStats

TRANSPORT_ALIASES.setdefault("cmover-local", "cmover.localbroker:Transport")



class Hub:
    """Shared state of one embedded run; every method is called through a manager proxy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[str]] = {}
        # The embedded run's state is the in-memory ledger, counters and error list, shared here.
        self._ledger = MemoryLedger()
        self._stats = MemoryStats()
        self._errors = MemoryErrors()

    # queues
    def put(self, queue: str, payload: str) -> None:
        with self._lock:
            self._queues.setdefault(queue, deque()).append(payload)

    def get_first(self, queues: list[str]) -> list[str] | None:
        """The first message of the first non-empty queue as ``[queue, payload]``, or None."""
        with self._lock:
            for name in queues:
                q = self._queues.get(name)
                if q:
                    return [name, q.popleft()]
            return None

    def size(self, queue: str) -> int:
        with self._lock:
            return len(self._queues.get(queue, ()))

    def purge(self, queue: str) -> int:
        with self._lock:
            q = self._queues.get(queue)
            n = len(q) if q else 0
            if q:
                q.clear()
            return n

    # ledger (see cmover.ledger)
    def open_run(self, run_id: str) -> None:
        self._ledger.open_run(run_id)

    def enqueue(self, run_id: str, tid: str) -> None:
        self._ledger.enqueue(run_id, tid)

    def begin(self, run_id: str, tid: str) -> int | None:
        return self._ledger.begin(run_id, tid)

    def done(self, run_id: str, tid: str) -> None:
        self._ledger.done(run_id, tid)

    def outstanding(self, run_id: str) -> int | None:
        return self._ledger.outstanding(run_id)

    def claim(self, run_id: str, key: str, value: str) -> str:
        return self._ledger.claim(run_id, key, value)

    def claimed(self, run_id: str, keys: list[str]) -> int:
        return self._ledger.claimed(run_id, keys)

    def incr(self, run_id: str, key: str, n: int) -> int:
        return self._ledger.incr(run_id, key, n)

    # counters and errors, as JSON text (XML-RPC integers stop at 2**31)
    def stats_add(self, run_id: str, tally_json: str) -> None:
        self._stats.add(run_id, Counter(json.loads(tally_json)))

    def stats_totals(self, run_id: str) -> str:
        return json.dumps(self._stats.totals(run_id))

    def errors_record(self, run_id: str, failures_json: str) -> None:
        self._errors.record(run_id, [Failure.from_dict(d) for d in json.loads(failures_json)])

    def errors_read(self, run_id: str, limit: int) -> str:
        items, count = self._errors.read(run_id, limit)
        return json.dumps({"items": [f.as_dict() for f in items], "count": count})


class _HubManager(BaseManager):
    pass


_hub_instance: Hub | None = None


def _the_hub() -> Hub:
    global _hub_instance
    if _hub_instance is None:
        _hub_instance = Hub()
    return _hub_instance


_HubManager.register("hub", callable=_the_hub)

# Address and key of the running hub: set by start_hub() before the worker forks, so pool children
# inherit them; each process connects on first use.
_address: str | None = None
_authkey: bytes | None = None
_proxy: Any = None
_proxy_pid = 0
_proxy_lock = threading.Lock()
_closing = False  # set when the run is over: consumers stop polling the hub before it goes away


def _after_fork_in_child() -> None:
    # The pool forks while other threads of the parent may hold this lock or use the proxy's socket.
    global _proxy_lock, _proxy
    _proxy_lock = threading.Lock()
    _proxy = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def start_hub() -> BaseManager:
    """Start the hub process for this run; the caller shuts the returned manager down at the end."""
    global _address, _authkey
    sockdir = tempfile.mkdtemp(prefix="cmover-")  # mode 0700: only this user can reach the socket
    _address = os.path.join(sockdir, "hub")
    _authkey = secrets.token_bytes(32)
    manager = _HubManager(address=_address, authkey=_authkey, serializer="xmlrpclib")
    manager.start()
    return manager


def stop_hub(manager: BaseManager) -> None:
    """End the run's hub; consumers still polling see empty queues from now on."""
    global _closing
    _closing = True
    manager.shutdown()
    if _address is not None:
        shutil.rmtree(os.path.dirname(_address), ignore_errors=True)


def hub() -> Any:
    """A proxy of the run's hub for this process (and thread-safe within it)."""
    global _proxy, _proxy_pid
    with _proxy_lock:
        if _proxy is None or _proxy_pid != os.getpid():
            if _address is None:
                raise RuntimeError("embedded hub not started")
            m = _HubManager(address=_address, authkey=_authkey, serializer="xmlrpclib")
            m.connect()
            _proxy = m.hub()  # type: ignore[attr-defined]
            _proxy_pid = os.getpid()
        return _proxy


class HubStats:
    """StatsSink over the hub."""

    def add(self, run_id: str, tally: Counter[str], node: str = "", began: float = 0.0) -> None:
        hub().stats_add(run_id, json.dumps(dict(tally)))

    def totals(self, run_id: str) -> dict[str, int] | None:
        return {str(k): int(v) for k, v in json.loads(hub().stats_totals(run_id)).items()}


class HubErrors:
    """Error list over the hub."""

    def record(self, run_id: str, failures: list[Failure]) -> None:
        hub().errors_record(run_id, json.dumps([f.as_dict() for f in failures]))

    def read(self, run_id: str, limit: int = 1000) -> tuple[list[Failure], int]:
        data = json.loads(hub().errors_read(run_id, limit))
        return [Failure.from_dict(d) for d in data["items"]], int(data["count"])


class HubLedger:
    """Completion ledger over the hub (same protocol as :mod:`cmover.ledger`)."""

    def open_run(self, run_id: str) -> None:
        hub().open_run(run_id)

    def enqueue(self, run_id: str, tid: str) -> None:
        hub().enqueue(run_id, tid)

    def begin(self, run_id: str, tid: str) -> int | None:
        r = hub().begin(run_id, tid)
        return None if r is None else int(r)

    def done(self, run_id: str, tid: str) -> None:
        hub().done(run_id, tid)

    def outstanding(self, run_id: str) -> int | None:
        r = hub().outstanding(run_id)
        return None if r is None else int(r)

    def claim(self, run_id: str, key: str, value: str) -> str:
        return str(hub().claim(run_id, key, value))

    def claimed(self, run_id: str, keys: list[str]) -> int:
        return int(hub().claimed(run_id, keys))

    def incr(self, run_id: str, key: str, n: int) -> int:
        return int(hub().incr(run_id, key, n))


class Channel(virtual.Channel):
    """kombu channel whose queues live in the hub. Fanout (remote control) stays in-process."""

    do_restore = False
    supports_fanout = True

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        pass

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        if _closing:
            raise Empty()
        payload = hub().get(queue)
        if payload is None:
            raise Empty()
        return json.loads(payload)

    def _get_many(self, queues: Any, timeout: float | None = None) -> None:
        # One call for all consumed queues instead of one per queue (kombu uses this when defined). It
        # does not block: a consumer waiting inside the hub would hold up its own acks (measured 10x slower).
        if _closing:
            raise Empty()
        got = hub().get_first(list(queues))
        if got is None:
            raise Empty()
        name, payload = got
        self.connection._deliver(json.loads(payload), name)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        hub().put(queue, json.dumps(message))

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        for queue in self._lookup(exchange, routing_key):
            self._put(queue, message)

    def _size(self, queue: str) -> int:
        return int(hub().size(queue))

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        hub().purge(queue)

    def _purge(self, queue: str) -> int:
        return int(hub().purge(queue))

    def _queue_bind(self, *args: Any) -> None:
        pass


class Transport(virtual.Transport):
    """``cmover-local://``: the embedded mode's transport (see module doc)."""

    Channel = Channel
    #: Exchange bindings (remote-control fanout) are per process and shared by all its connections.
    global_state = BrokerState()
    driver_type = "cmover-local"
    driver_name = "cmover-local"
    implements = virtual.Transport.implements.extend(exchange_type=frozenset(["direct", "topic", "fanout"]))

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.state = self.global_state
