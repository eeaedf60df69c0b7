"""This process's identity as records name it: its pid and ``host:pid``, each worked out once per process.

A forked child (a pool process) works them out again. Every list record (deletions, differences, failures,
HSM files) and counter sink names its writer as ``host:pid``, and per-process state (kept roots, the worker
context, memcached clients) is keyed by the pid: asked per record or per task, ``getpid()`` was a syscall
each time (a delete pass of 10^6 entries made 10^6 of them).
"""

from __future__ import annotations

import os
import socket

_pid = os.getpid()
_origin: str | None = None


def pid() -> int:
    """This process's pid (the child's own after a fork)."""
    return _pid


def origin() -> str:
    """``host:pid`` of this process (the host as ``socket.gethostname()`` says it)."""
    global _origin
    if _origin is None:
        _origin = f"{socket.gethostname()}:{_pid}"
    return _origin


def _after_fork() -> None:
    global _pid, _origin
    _pid = os.getpid()
    _origin = None


os.register_at_fork(after_in_child=_after_fork)
