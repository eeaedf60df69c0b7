"""Every memcached key cmover uses, their expiry, and the one memcached client factory.

The key strings are part of cmover's interface: the README names them for operators, and readers of a
run must find what its workers wrote. Change none.

Per run (``<run>`` is a run id such as ``copy-20260101-120000-ab12``)::

    cm:<run>:out           tasks published and not done (ledger)        cm:<run>:fin     deliveries finished
    cm:<run>:epoch         written once; gone = memcached lost the run   cm:<run>:lost    task list incomplete
    cm:<run>:e:<tid>       task enqueued (value: deliveries started)     cm:<run>:d:<tid> task done
    cm:<run>:l:<shard>     every task id, appended before publishing     cm:<run>:k:<key> first-writer-wins claim
    cm:<run>:n:<name>      a run counter of the ledger (--max-delete)    cm:<run>:x, :xlock  exact-scan cache, lock
    cm:<run>:c:<counter>   a counter's run total (stats)                 cm:<run>:w:<worker> one process's totals
    cm:<run>:workers       the processes that reported                   cm:<run>:spec    the pass spec (JSON)
    cm:<run>:complete_at   when a reader first saw the run complete

Per site (``<site>`` is USERNAME, the vhost: several migrations may share one memcached)::

    cm:<site>:current:<pass>   the current run of the pass (JSON: spec, started)
    cm:<site>:paused:<pass>    the pass's pause record (see cmover.state.pauses)
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from cmover.core.origin import pid
from cmover.core.settings import Settings

#: Expiry of every key that outlives a task. memcached reads an expiry of 30 days or more as an absolute
#: Unix time, so stay below it.
TTL = 29 * 24 * 3600


def run_key(run_id: str, name: str) -> str:
    """A run-wide key: ``name`` in out, fin, epoch, lost, x, xlock, workers, spec, complete_at."""
    return f"cm:{run_id}:{name}"


def enqueued(run_id: str, tid: str) -> str:
    return f"cm:{run_id}:e:{tid}"


def done(run_id: str, tid: str) -> str:
    return f"cm:{run_id}:d:{tid}"


def task_list(run_id: str, shard: int) -> str:
    return f"cm:{run_id}:l:{shard}"


def claim(run_id: str, key: str) -> str:
    return f"cm:{run_id}:k:{key}"


def ledger_counter(run_id: str, name: str) -> str:
    return f"cm:{run_id}:n:{name}"


def counter_prefix(run_id: str) -> str:
    """What precedes a counter name in its run-total key."""
    return f"cm:{run_id}:c:"


def counter(run_id: str, name: str) -> str:
    return counter_prefix(run_id) + name


def worker_record(run_id: str, worker: str) -> str:
    return f"cm:{run_id}:w:{worker}"


def current_run(site: str, kind: str) -> str:
    return f"cm:{site}:current:{kind}"


def paused(site: str, kind: str) -> str:
    return f"cm:{site}:paused:{kind}"


_clients: dict[tuple[str, int], Any] = {}

#: Seconds a memcached call may wait for the server (to connect, to send, for an answer) before it fails.
CONNECT_TIMEOUT = 3.0
TIMEOUT = 10.0


def memcache_client(settings: Settings) -> Any:
    """This process's client of the memcached at ``settings.memcached`` (one per server and process).

    A pymemcache ``PooledClient``: thread-safe, reconnecting by itself, with timeouts (an unresponsive
    server must not hang a worker or a command: a call fails with OSError after :data:`TIMEOUT`) and
    ``noreply`` off (answers matter: ``add`` decides who wins). Built on first use in each process, so a
    pool process never shares its parent's sockets.
    """
    key = (settings.memcached, pid())
    client = _clients.get(key)
    if client is None:
        from pymemcache.client.base import PooledClient

        host, _, port = settings.memcached.rpartition(":")
        client = _clients.setdefault(key, PooledClient((host or "127.0.0.1", int(port or 11211)),
                                                       connect_timeout=CONNECT_TIMEOUT, timeout=TIMEOUT,
                                                       default_noreply=False, max_pool_size=64,
                                                       socket_module=_SOCKETS))
    return client


class _KernelTimeoutSocket(socket.socket):
    """A client socket whose timeout, once it is connected, is the kernel's (``SO_RCVTIMEO``, ``SO_SNDTIMEO``
    on a blocking socket) rather than Python's: a Python timeout makes every send and every receive a ``poll``
    first, two syscalls more per memcached call (a final pass's workers make about one per 100 files, its
    command one per probe of the ledger). A call that times out fails with OSError (EAGAIN) as it would have
    with TimeoutError; connecting keeps Python's timeout, which the kernel's do not bound."""

    _connected = False

    def connect(self, address: Any) -> None:
        super().connect(address)
        self._connected = True

    def settimeout(self, value: float | None) -> None:
        if not self._connected or value is None:
            super().settimeout(value)
            return
        super().settimeout(None)
        tv = struct.pack("ll", int(value), int(value % 1 * 1_000_000))
        self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


class _SocketModule:
    """The socket module as pymemcache's clients use it (``socket_module``), with :class:`_KernelTimeoutSocket`
    for ``socket``."""

    socket = _KernelTimeoutSocket

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)


_SOCKETS = _SocketModule()
