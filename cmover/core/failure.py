"""One per-item failure of a pass, as its error list records it (see :mod:`cmover.state.errorlist`).

A record, not an exception: the exceptions are in :mod:`cmover.core.errors`; :func:`item_failure` turns one
met while handling an entry into this record. Its wire form is a JSON object::

    {"path": <wire path>, "op": str, "errno": int, "message": str, "side": "source" | "target",
     "worker": "host:pid", "time": <Unix s>}
"""

from __future__ import annotations

import errno as _errno
import time

from cmover.core.errors import ItemError
from cmover.core.frozen import NamedTuple
from cmover.core.origin import by_item, origin
from cmover.core.paths import display, from_wire, to_wire


@by_item
class Failure(NamedTuple):
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
    worker: str = ""
    at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"path": to_wire(self.path), "op": self.op, "errno": self.errno, "message": self.message,
                "side": self.side, "worker": self.worker, "time": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Failure:
        return cls(path=from_wire(d["path"]), op=str(d.get("op", "")), errno=int(d.get("errno", 0)),  # type: ignore[call-overload]
                   message=str(d.get("message", "")), side=str(d.get("side", "source")),
                   worker=str(d.get("worker", "")), at=float(d.get("time", 0.0)))  # type: ignore[arg-type]

    def line(self) -> str:
        """One human-readable line: path (escaped when not printable UTF-8), operation, errno name."""
        code = _errno.errorcode.get(self.errno, str(self.errno)) if self.errno else "-"
        return f"{display(self.path)}: {self.op} failed on {self.side} ({code}): {self.message}"


def item_failure(path: bytes, op: str, exc: BaseException, side: str = "source") -> Failure:
    """Turn an exception met while handling one entry into a :class:`Failure` record (this process, now)."""
    made = {"worker": origin(), "at": time.time()}
    if isinstance(exc, OSError):
        return Failure(path, op, exc.errno or 0, exc.strerror or str(exc), side, **made)  # type: ignore[arg-type]
    if isinstance(exc, ItemError):
        return Failure(path, exc.op or op, exc.errno, str(exc), side, **made)  # type: ignore[arg-type]
    return Failure(path, op, 0, f"{type(exc).__name__}: {exc}", side, **made)  # type: ignore[arg-type]

