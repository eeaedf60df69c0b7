"""The three error classes of cmover, each handled in exactly one place.

::

    CmoverError
    ├── FatalError            the pass cannot run: bad config, preflight failure, unreachable broker.
    │   ├── ConfigError       CLI: one-line message, exit code 2. Worker: the message is rejected.
    │   └── PreflightError
    ├── TransientError        retried with backoff by the task wrapper (cmover.app.cmover_task).
    └── ItemError             one entry failed: counted, recorded in the pass's error list, the
        ├── SourceChangedError    rest of the batch goes on (handled in cmover.engine).
        └── ConfinementError  a path that would leave its root: never acted on.

Plain ``OSError`` raised while handling one entry is an item error too; the engine converts it with
:func:`item_failure` so the record names the path, the operation and the errno.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import time
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_FATAL = 2
EXIT_INTERRUPTED = 130


class CmoverError(Exception):
    """Base class of every error cmover raises on purpose."""


class FatalError(CmoverError):
    """The pass cannot run at all. ``str(exc)`` is a one-line message naming the problem and the fix."""


class ConfigError(FatalError):
    """Invalid configuration or command-line input."""


class PreflightError(FatalError):
    """A safety check before (or during) a pass failed; nothing was written."""


class TransientError(CmoverError):
    """A condition expected to clear by itself (broker or filesystem hiccup); retry later."""


class ItemError(CmoverError):
    """One entry could not be handled; carries the errno when there is one."""

    def __init__(self, message: str, *, op: str = "", err: int = 0) -> None:
        super().__init__(message)
        self.op = op
        self.errno = err


class SourceChangedError(ItemError):
    """The source entry changed while it was being copied; the target was not given its mtime."""


class ConfinementError(ItemError):
    """A path or message would make cmover act outside its source or target root."""


# errnos that say "try again later" rather than "this item is broken".
TRANSIENT_ERRNOS = frozenset({_errno.EAGAIN, _errno.ETIMEDOUT, _errno.ESTALE, _errno.EINTR, _errno.EBUSY})


@dataclass(frozen=True, slots=True)
class Failure:
    """One per-item failure as recorded in a pass's error list.

    ``path`` is the entry's path relative to the pass root, as bytes; ``side`` tells whether the
    problem was met on the source or the target; ``worker`` (``host:pid``) and ``at`` (Unix seconds)
    say where and when. The pass is the error list's (one list per run). Two records of the same
    failure compare equal whoever met it.
    """

    path: bytes
    op: str
    errno: int
    message: str
    side: str = "source"
    worker: str = field(default="", compare=False)
    at: float = field(default=0.0, compare=False)

    def as_dict(self) -> dict[str, object]:
        from cmover.paths import to_wire

        return {"path": to_wire(self.path), "op": self.op, "errno": self.errno, "message": self.message,
                "side": self.side, "worker": self.worker, "time": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Failure:
        from cmover.paths import from_wire

        return cls(path=from_wire(d["path"]), op=str(d.get("op", "")), errno=int(d.get("errno", 0)),  # type: ignore[call-overload]
                   message=str(d.get("message", "")), side=str(d.get("side", "source")),
                   worker=str(d.get("worker", "")), at=float(d.get("time", 0.0)))  # type: ignore[arg-type]

    def line(self) -> str:
        """One human-readable line: path (escaped when not printable UTF-8), operation, errno name."""
        from cmover.paths import display

        code = _errno.errorcode.get(self.errno, str(self.errno)) if self.errno else "-"
        return f"{display(self.path)}: {self.op} failed on {self.side} ({code}): {self.message}"


def item_failure(path: bytes, op: str, exc: BaseException, side: str = "source") -> Failure:
    """Turn an exception met while handling one entry into a :class:`Failure` record (this process, now)."""
    origin = {"worker": f"{socket.gethostname()}:{os.getpid()}", "at": time.time()}
    if isinstance(exc, OSError):
        return Failure(path, op, exc.errno or 0, exc.strerror or str(exc), side, **origin)  # type: ignore[arg-type]
    if isinstance(exc, ItemError):
        return Failure(path, exc.op or op, exc.errno, str(exc), side, **origin)  # type: ignore[arg-type]
    return Failure(path, op, 0, f"{type(exc).__name__}: {exc}", side, **origin)  # type: ignore[arg-type]

