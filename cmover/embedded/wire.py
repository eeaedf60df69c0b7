"""What crosses the hub's manager connections: JSON, with bytes as ``{"\\u0000": base64}``.

:mod:`multiprocessing.managers` offers two serializers: pickle, which runs code on load (never here), and
xmlrpclib, which the hub used until it was measured: importing ``xmlrpc.client`` cost every command 42 modules
(``http.client``, ``email``, ``ssl``...), 10 ms of CPU and 420 syscalls before the first entry was looked at,
and its pure-Python marshalling 56 us per hub call (request and reply of a ``take``; 7 us here). This module
registers a third one, :data:`SERIALIZER`, in the table the managers look serializers up in: the same
authenticated connections (:mod:`multiprocessing.connection`'s challenge with the run's key), each message
one JSON document.

What the hub's calls carry is what JSON holds (strings, integers of any size, lists, dicts with string keys,
None) plus bytes (a queued message, packed by :mod:`cmover.embedded.packing`): a bytes value travels as a
one-key dict whose key no other dict of the hub uses, and comes back as bytes. Tuples come back as lists, as
they did through xmlrpclib. An error a hub method raises comes back as the RemoteError the caller's proxy
raises, naming it; any other value JSON cannot hold is a TypeError where it is sent.
"""

from __future__ import annotations

import base64
import json
from multiprocessing import connection, managers
from typing import Any

#: The serializer name to give :class:`multiprocessing.managers.BaseManager` and its proxies.
SERIALIZER = "cmover-json"

# The keys of an encoded bytes value and of an exception: a NUL starts no key of the hub's own dicts.
_BYTES = "\0"
_ERROR = "\0e"


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {_BYTES: base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, BaseException):  # a hub method's error, sent back to its caller by the manager
        return {_ERROR: f"{type(obj).__name__}: {obj}"}
    raise TypeError(f"{type(obj).__name__} cannot cross the hub's connection")


def _hook(d: dict[str, Any]) -> Any:
    if len(d) == 1:
        if _BYTES in d:
            return base64.b64decode(d[_BYTES])
        if _ERROR in d:
            return managers.RemoteError(d[_ERROR])  # what the proxy raises
    return d


_encode = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False).encode
_decode = json.JSONDecoder(object_hook=_hook).decode


def dumps(obj: Any) -> bytes:
    """``obj`` as one message; TypeError for a value the hub's calls never carry (see the module doc)."""
    return _encode(obj).encode("utf-8", "surrogatepass")


def loads(data: bytes) -> Any:
    """The value :func:`dumps` made; ValueError when ``data`` is not such a message."""
    return _decode(data.decode("utf-8", "surrogatepass"))


class Connection:
    """An authenticated connection of :mod:`multiprocessing.connection` whose ``send``/``recv`` speak
    :func:`dumps`/:func:`loads`; the rest (bytes, poll, close, fileno) is the connection's own."""

    def __init__(self, conn: connection.Connection) -> None:
        self._conn = conn
        self.fileno = conn.fileno
        self.close = conn.close
        self.poll = conn.poll
        self.send_bytes = conn.send_bytes
        self.recv_bytes = conn.recv_bytes

    def send(self, obj: Any) -> None:
        self._conn.send_bytes(dumps(obj))

    def recv(self) -> Any:
        return loads(self._conn.recv_bytes())


class _Listener(connection.Listener):
    def accept(self) -> Connection:  # type: ignore[override]
        return Connection(super().accept())


def _client(*args: Any, **kwds: Any) -> Connection:
    return Connection(connection.Client(*args, **kwds))


# The managers look a serializer's (Listener, Client) pair up in this table by name, in the process that
# makes the manager or a proxy and in the manager's forked server alike: registered on import, before either.
managers.listener_client[SERIALIZER] = (_Listener, _client)  # type: ignore[attr-defined]

__all__ = ["SERIALIZER", "Connection", "dumps", "loads"]
