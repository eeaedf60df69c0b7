"""One entry of a copy run's HSM list: a file imported as a released stub or marked archived on the
target (a rebind pair: source FID, new target FID), or a released file left out by HSM_POLICY skip.

The list is kept per run like the error list (distributed: the durable queue of list
:func:`hsm_list`, see :mod:`cmover.state.errorlist`; embedded: a JSON-lines file, see
:mod:`cmover.state.hsmfile`) and printed by ``cmover hsm-rebind-list``. Wire form::

    {"path": <wire path>, "what": "imported" | "archived" | "skipped", "src_fid": "0x..:0x..:0x..",
     "dst_fid": "...", "archive_id": N, "worker": "host:pid", "time": <Unix s>}
"""

from __future__ import annotations

import time
from typing import Any, Literal

from cmover.core.frozen import NamedTuple
from cmover.core.origin import by_item, origin
from cmover.core.paths import display, from_wire, to_wire

What = Literal["imported", "archived", "skipped"]
_WHATS = ("imported", "archived", "skipped")


def hsm_list(run_id: str) -> str:
    """Name of a copy run's HSM list, kept like its error list."""
    return run_id + ".hsm"


@by_item
class HsmRecord(NamedTuple):
    """A file of the HSM list (see module doc); FIDs in ``SFID`` form, empty for a skipped file."""

    path: bytes
    what: What
    src_fid: str = ""
    dst_fid: str = ""
    archive_id: int = 0
    worker: str = ""
    at: float = 0.0

    @classmethod
    def now(cls, path: bytes, what: What, src_fid: str = "", dst_fid: str = "", archive_id: int = 0) -> HsmRecord:
        return cls(path, what, src_fid, dst_fid, archive_id, origin(), time.time())

    @property
    def rebinds(self) -> bool:
        """Whether this file's archive object is to be rebound to its new FID."""
        return self.what != "skipped" and bool(self.src_fid and self.dst_fid)

    def rebind_line(self) -> str:
        """``<old FID> <new FID>``: one line of the list ``lhsmtool_posix --rebind`` reads."""
        return f"{self.src_fid} {self.dst_fid}"

    def line(self) -> str:
        return display(self.path)

    def as_dict(self) -> dict[str, Any]:
        return {"path": to_wire(self.path), "what": self.what, "src_fid": self.src_fid, "dst_fid": self.dst_fid,
                "archive_id": self.archive_id, "worker": self.worker, "time": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HsmRecord:
        what = d.get("what")
        if what not in _WHATS:
            raise ValueError(f"not an HSM list record: what={what!r}")
        return cls(from_wire(d["path"]), what, str(d.get("src_fid", "")), str(d.get("dst_fid", "")),
                   int(d.get("archive_id", 0)), str(d.get("worker", "")), float(d.get("time", 0.0)))
