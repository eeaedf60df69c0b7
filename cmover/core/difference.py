"""One entry of a verify pass's differences list: a path, the category that differs and both values.

The categories are the things cmover copies (:data:`CATEGORIES`, in the order the verify pass checks
them); a verify pass counts each under ``diff_<category>`` (:data:`cmover.core.counters.C`) and keeps
the records like the error list (one list per run, see :mod:`cmover.state.errorlist`). Values are short
human-readable strings (an octal mode, a uid, a time in ns, a hash); "-" stands for "absent". Its wire
form is a JSON object::

    {"path": <wire path>, "category": "mode", "source": "0644", "target": "0600",
     "worker": "host:pid", "time": <Unix s>}
"""

from __future__ import annotations

import time
from typing import Any

from cmover.core.frozen import NamedTuple
from cmover.core.origin import by_item, origin
from cmover.core.paths import display, from_wire, to_wire

#: Every category a verify pass reports, in the order it checks them.
CATEGORIES: tuple[str, ...] = (
    "missing", "extra", "type", "size", "mode", "uid", "gid", "mtime", "atime", "xattr", "acl", "symlink",
    "rdev", "hardlink", "holes", "project", "layout", "hsm", "content",
)


@by_item
class Difference(NamedTuple):
    """Entry ``path`` (relative to the pass roots) differs in ``category``: ``source`` vs ``target`` value."""

    path: bytes
    category: str
    source: str
    target: str
    worker: str = ""
    at: float = 0.0

    @classmethod
    def now(cls, path: bytes, category: str, source: object, target: object) -> Difference:
        """The record of a difference found by this process, now."""
        return cls(path, category, str(source), str(target), origin(), time.time())

    def line(self) -> str:
        """One line for the operator: path, category, source value -> target value."""
        return f"{display(self.path)}: {self.category}: source {self.source}, target {self.target}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": to_wire(self.path), "category": self.category, "source": self.source,
                "target": self.target, "worker": self.worker, "time": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Difference:
        return cls(from_wire(d["path"]), str(d.get("category", "")), str(d.get("source", "")),
                   str(d.get("target", "")), str(d.get("worker", "")), float(d.get("time", 0.0)))


def counter(category: str) -> str:
    """The counter of differences of ``category`` (``diff_<category>``)."""
    return "diff_" + category

