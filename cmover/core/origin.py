"""Who made a record: ``host:pid`` of this process, as every list record and counter sink names its writer.

Worked out once per process (a forked child works it out again), not once per record: a delete pass of 10^6
entries wrote 10^6 deletion records, each with its own ``getpid()`` call.
"""

from __future__ import annotations

import os
import socket

_origin: str | None = None


def origin() -> str:
    """``host:pid`` of this process (the host as ``socket.gethostname()`` says it)."""
    global _origin
    if _origin is None:
        _origin = f"{socket.gethostname()}:{os.getpid()}"
    return _origin


def _forget() -> None:
    global _origin
    _origin = None


os.register_at_fork(after_in_child=_forget)
