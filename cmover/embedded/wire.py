"""The hub's connections: a Unix stream socket, each message one frame of JSON.

A frame is its length (4 bytes, big-endian) and that many bytes of one JSON document (UTF-8; a name that is not
UTF-8 travels surrogate-escaped, as :func:`os.fsdecode` gives it). A client sends ``[name, args]``, the hub
answers ``[0, value]``, or ``[1, "ErrorType: message"]`` when the call raised there (:class:`HubError` on the
caller's side; the connection goes on). Nothing is ever unpickled: a value is what JSON holds (strings,
integers of any size, floats, lists, dicts with string keys, None) plus bytes (a queued message, packed by
:mod:`cmover.embedded.packing`), which travel as a one-key dict whose key no other dict of the hub uses and come
back as bytes. Tuples come back as lists. A value JSON cannot hold is a TypeError where it is sent.

Who may connect: the socket is in a directory of mode 0700 made for the run, and the hub answers only a peer of
its own user (``SO_PEERCRED``, :func:`same_user`), so no key has to be shared.

Why not :mod:`multiprocessing.managers`, which carried these calls before: importing it (with its connections'
HMAC challenge, its pool and shared-memory modules) cost every embedded command about 15 ms of a 110 ms no-change
pass over 10 files, before the first entry was looked at; and its connections read a message in two syscalls
(the length, then the rest) where a buffered reader takes a reply in one.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any, BinaryIO

# The key of an encoded bytes value: a NUL starts no key of the hub's own dicts.
_BYTES = "\0"

#: A frame's header: the length of the JSON document that follows.
_HEADER = struct.Struct("!I")


class HubError(Exception):
    """A hub call that raised in the hub (a wrong call, a bad argument): its error as ``"Type: message"``."""


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {_BYTES: base64.b64encode(obj).decode("ascii")}
    raise TypeError(f"{type(obj).__name__} cannot cross the hub's connection")


def _hook(d: dict[str, Any]) -> Any:
    if len(d) == 1 and _BYTES in d:
        return base64.b64decode(d[_BYTES])
    return d


_encode = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False).encode
_decode = json.JSONDecoder(object_hook=_hook).decode


def dumps(obj: Any) -> bytes:
    """``obj`` as one message; TypeError for a value the hub's calls never carry (see the module doc)."""
    return _encode(obj).encode("utf-8", "surrogatepass")


def loads(data: bytes) -> Any:
    """The value :func:`dumps` made; ValueError when ``data`` is not such a message."""
    return _decode(data.decode("utf-8", "surrogatepass"))


def send_frame(sock: socket.socket, data: bytes) -> None:
    """Send one frame: header and document in one write (one syscall for a message of the usual size)."""
    sock.sendall(_HEADER.pack(len(data)) + data)


def read_frame(rfile: BinaryIO) -> bytes:
    """The document of the next frame on ``rfile`` (the socket's buffered reader); EOFError when the peer closed
    the connection, before or within a frame."""
    header = rfile.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the hub's connection was closed")
    (size,) = _HEADER.unpack(header)
    data = rfile.read(size)
    if len(data) < size:
        raise EOFError("the hub's connection was closed within a message")
    return data


def same_user(sock: socket.socket) -> bool:
    """Whether the process at the other end of the connected Unix socket ``sock`` runs as this process's user."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


class Connection:
    """A client's connection to the hub listening at ``address``, used by one thread at a time.

    :meth:`call` raises :class:`HubError` for a call that raised in the hub, EOFError or OSError when the hub
    is gone (the run is over).
    """

    def __init__(self, address: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(address)
        except OSError:
            self._sock.close()
            raise
        # Buffered: a reply's header and document come in one recv, however they were split.
        self._rfile = self._sock.makefile("rb")

    def call(self, name: str, args: list[Any]) -> Any:
        send_frame(self._sock, dumps([name, args]))
        failed, value = loads(read_frame(self._rfile))
        if failed:
            raise HubError(value)
        return value

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()


__all__ = ["Connection", "HubError", "dumps", "loads", "read_frame", "same_user", "send_frame"]
