"""One entry of a delete pass's deletion list: what was deleted (or, in a dry run, would be), where and when.

The list is kept like the error list (one per run, see :mod:`cmover.state.errorlist`) and printed by
``cmover delete`` and ``cmover deleted``. Its wire form is a JSON object::

    {"path": <wire path>, "what": "file" | "tree", "dry_run": bool, "worker": "host:pid", "time": <Unix s>}

Lists written before deletions had a record of their own hold error-list records instead
(``{"path": "dir/", "op": "delete tree", "errno": 0, ...}``); :meth:`Deletion.from_dict` reads both.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from cmover.core.frozen import NamedTuple
from cmover.core.origin import by_item, origin
from cmover.core.paths import display, from_wire, to_wire

What = Literal["file", "tree"]


@by_item
class Deletion(NamedTuple):
    """A deleted target entry: ``path`` (relative to the pass root, bytes) is a non-directory (``what``
    ``"file"``: a file, symlink, FIFO or device node) or the root of a removed directory tree (``"tree"``).

    ``dry_run`` says it was only counted. ``worker`` (``host:pid``) and ``at`` (Unix seconds) say who
    deleted it and when; two records of the same deletion compare equal whoever made them.
    """

    path: bytes
    what: What
    dry_run: bool = False
    worker: str = ""
    at: float = 0.0

    @classmethod
    def now(cls, path: bytes, what: What, dry_run: bool) -> Deletion:
        """The record of a deletion made by this process, now."""
        return cls(path, what, dry_run, origin(), time.time())

    def line(self) -> str:
        """The path as listed for the operator, ``/`` after a tree (escaped as a whole when not printable UTF-8)."""
        return display(self.path + b"/" if self.what == "tree" else self.path)

    def as_dict(self) -> dict[str, Any]:
        return {"path": to_wire(self.path), "what": self.what, "dry_run": self.dry_run, "worker": self.worker,
                "time": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deletion:
        """Read a record of the deletion list, also one written as an error-list record by an older cmover."""
        path = from_wire(d["path"])
        if "what" in d:
            what: What = "tree" if d["what"] == "tree" else "file"
        else:  # the older form: op "delete tree" and a trailing "/" for a tree, op "delete" for the rest
            what = "tree" if d.get("op") == "delete tree" else "file"
            if what == "tree":
                path = path.rstrip(b"/")
        return cls(path, what, bool(d.get("dry_run", False)), str(d.get("worker", "")), float(d.get("time", 0.0)))

