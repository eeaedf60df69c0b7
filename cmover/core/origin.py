"""This process's identity as records name it: its host, its pid and ``host:pid``, each worked out once per
process.

A forked child (a pool process) works out its pid and ``host:pid`` again; the host is its parent's. Every list
record (deletions, differences, failures, HSM files) and counter sink names its writer as ``host:pid``, and
per-process state (kept roots, the worker context, memcached clients) is keyed by the pid: asked per record or
per task, ``getpid()`` was a syscall each time (a delete pass of 10^6 entries made 10^6 of them).
"""

from __future__ import annotations

import os
import socket
from typing import TypeVar

_pid = os.getpid()
_host: str | None = None
_origin: str | None = None


def pid() -> int:
    """This process's pid (the child's own after a fork)."""
    return _pid


def host() -> str:
    """This host's name as ``socket.gethostname()`` says it (a ``uname`` syscall), asked once per process."""
    global _host
    if _host is None:
        _host = socket.gethostname()
    return _host


def origin() -> str:
    """``host:pid`` of this process."""
    global _origin
    if _origin is None:
        _origin = f"{host()}:{_pid}"
    return _origin


def _after_fork() -> None:
    global _pid, _origin
    _pid = os.getpid()
    _origin = None  # the host is the parent's: kept


os.register_at_fork(after_in_child=_after_fork)


_R = TypeVar("_R", bound=type)


def by_item(cls: _R) -> _R:
    """Class decorator of a list record (failure, deletion, difference, HSM file): a NamedTuple whose last two
    fields, ``worker`` and ``at``, say who recorded it and when, not what. Its equality and hash leave them
    out, so that two records of the same item are equal whoever met it (a tuple's would compare every field)."""
    cls.__eq__ = _same_item  # type: ignore[assignment]
    cls.__ne__ = _other_item  # type: ignore[assignment]
    cls.__hash__ = _item_hash  # type: ignore[assignment]
    return cls


def _same_item(self: tuple[object, ...], other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return self[:-2] == other[:-2]


def _other_item(self: tuple[object, ...], other: object) -> bool:
    same = _same_item(self, other)
    return same if same is NotImplemented else not same


def _item_hash(self: tuple[object, ...]) -> int:
    return hash(self[:-2])
