"""``cmover-local://``: the kombu virtual transport of the embedded mode, whose queues live in the run's hub.

Celery's whole message path (serialisation, routing, worker requests, acknowledgements) is the real one; only
the queue operations are calls to :mod:`cmover.embedded.hub`. Messages wait there packed
(:mod:`cmover.embedded.packing`).
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport.virtual.base import BrokerState

from cmover.embedded import hub as _hub
from cmover.embedded.packing import pack, unpack

#: ``cmover-local://`` names this transport (registered when this module is imported: see
#: :meth:`cmover.embedded.runner.EmbeddedSession`, which imports it before the app connects).
TRANSPORT_ALIASES.setdefault("cmover-local", "cmover.embedded.transport:Transport")


class Channel(virtual.Channel):
    """kombu channel whose queues live in the hub. Fanout (remote control) stays in-process."""

    #: A channel closing at the end of a run gives nothing back (the run, and its hub, are over). A worker
    #: replaced mid-run after a pool process died hands its messages back explicitly (cmover.embedded.runner).
    do_restore = False
    supports_fanout = True

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        # A worker replaced after a pool process died has handed its unacknowledged messages back; its old
        # pool's late report of the lost task must not requeue that message a second time.
        if delivery_tag in self.qos._delivered:
            super().basic_reject(delivery_tag, requeue=requeue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        pass

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        # One queue: kombu's basic_get (``Queue.get``, ``SimpleQueue``), and polling when _get_many is unused.
        if _hub.closing():
            raise Empty()
        got = _hub.hub().get_first([queue])
        if got is None:
            raise Empty()
        return unpack(got[1])

    def _get_many(self, queues: Any, timeout: float | None = None) -> None:
        # One call for all consumed queues instead of one per queue (kombu uses this when defined). Called
        # only while the consumer has a free prefetch slot; it then waits in the hub for a message (a put
        # wakes it) instead of asking again every millisecond: the round trips were most of the syscalls
        # of a small pass.
        # Only the task consumer waits: kombu asks the consumers' channels in turn, and the remote-control
        # channel (pidbox) waiting too would hold up every task delivered after it.
        if _hub.closing():
            raise Empty()
        names = list(queues)
        try:
            got = _hub.hub().get_first(names, 0.0 if all(n.endswith(".pidbox") for n in names) else _hub.CONSUMER_WAIT)
        except (EOFError, OSError):
            if _hub.closing():  # the run ended while this call was on its way: the hub is gone, as it should be
                raise Empty() from None
            raise
        if got is None:
            raise Empty()
        name, payload = got
        self.connection._deliver(unpack(payload), name)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        _hub.hub().put(queue, pack(message))

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        for queue in self._lookup(exchange, routing_key):
            self._put(queue, message)

    def _size(self, queue: str) -> int:
        return int(_hub.hub().size(queue))

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        _hub.hub().purge(queue)

    def _purge(self, queue: str) -> int:
        return int(_hub.hub().purge(queue))

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
