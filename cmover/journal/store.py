"""The durable store of a local change journal: segment files of JSON lines and the watcher's state.

Layout of a journal directory (one per watched source root, under CHANGES_DIR):

* ``seg-<start_ns>-<generation>.jsonl``: one segment per run of the watcher. Its first line is the start
  record ``{"i": 0, "ev": "start", "t": ns, "gen": ..., "src": ..., "fsid": ...}`` written once the
  filesystem mark is in place; then one line per event ``{"i": n, "t": ns, "m": mask, "d": handle,
  "n": name, "o": handle}`` (``t``: when the watcher read it, never before the event happened; names as
  on the wire, :mod:`cmover.core.paths`; a FAN_RENAME event also ``"od"``/``"on"``, the old directory and
  name, ``d``/``n`` being the new ones), ``{"ev": "overflow"}`` when the kernel dropped events, and
  ``{"ev": "stop"}`` when the watcher stopped cleanly. ``i`` counts from 0 without gaps. Segments of earlier
  runs are removed by :func:`prune` once every tree's last clean pass began after they were last written.
* ``state.json``: the running watcher's pid, generation, segment, start time, last heartbeat, the last
  index made durable and the last drain (see :mod:`cmover.journal.watch`), replaced atomically.

Appends are batched: a batch of lines is written and ``fdatasync``-ed before its last index is
published in the state as durable (acknowledged). A watcher killed mid-write leaves at most a torn last
line, which :func:`read_segment` drops: it had not been acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from cmover.core import statefile

STATE = "state.json"


def journal_dir(changes_dir: str, src_root: bytes) -> str:
    """The journal directory of source root ``src_root`` under CHANGES_DIR."""
    return os.path.join(changes_dir, f"fanotify-{hashlib.sha256(src_root).hexdigest()[:16]}")


def write_json_atomic(path: str, doc: dict[str, Any]) -> None:
    """Replace ``path`` by ``doc`` (JSON) atomically and durably."""
    statefile.replace(path, json.dumps(doc).encode())


def has_journal(changes_dir: str, src_root: bytes) -> bool:
    """Whether source root ``src_root`` has a change journal under CHANGES_DIR (``cmover watch`` ran on it)."""
    return read_state(journal_dir(changes_dir, src_root)) is not None


def read_state(directory: str) -> dict[str, Any] | None:
    """The watcher state of a journal directory, or None when there is none (never watched)."""
    try:
        with open(os.path.join(directory, STATE)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    return doc if isinstance(doc, dict) else None


class SegmentWriter:
    """Appends records to a new segment of ``directory``; one per watcher run."""

    def __init__(self, directory: str, header: dict[str, Any]) -> None:
        os.makedirs(directory, exist_ok=True)
        self.generation = os.urandom(8).hex()
        self.started_ns = time.time_ns()
        self.name = f"seg-{self.started_ns}-{self.generation}.jsonl"
        self.path = os.path.join(directory, self.name)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        statefile.fsync_dir(directory)
        self.next_index = 0
        self.durable = -1
        self.append([{"ev": "start", "t": self.started_ns, "gen": self.generation, **header}])

    def append(self, records: list[dict[str, Any]]) -> int:
        """Write ``records`` (their indices are assigned here) and make them durable; return the last index."""
        if not records:
            return self.durable
        lines = []
        for rec in records:
            rec = {"i": self.next_index, **rec}
            self.next_index += 1
            lines.append(json.dumps(rec, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fdatasync(self._fd)
        self.durable = self.next_index - 1
        return self.durable

    def close(self) -> None:
        os.close(self._fd)


def segments(directory: str) -> list[str]:
    """The names of the segment files of a journal directory, oldest first."""
    return sorted(statefile.names(directory, "seg-", ".jsonl"), key=lambda n: int(n.split("-")[1]))


def prune(directory: str, before_ns: int) -> list[str]:
    """Remove the segments of earlier runs of the watcher last written before ``before_ns``; return them.

    The segment the state names (the running or last watcher's) is always kept. A reading only ever reads
    that one (a restarted watcher is not trusted until a clean pass of each kind began after the restart),
    so an earlier segment is dead; it is removed only once every tree's last clean pass began after its
    last write (``before_ns``: the earliest of those starts; the file's mtime is never before its last
    record's time), so that no reading could reach back into it whatever the trust rule becomes.
    """
    state = read_state(directory)
    if state is None:
        return []
    removed = []
    for name in segments(directory):
        if name == state.get("segment"):
            continue
        seg = os.path.join(directory, name)
        try:
            if os.stat(seg).st_mtime_ns >= before_ns:
                continue
            os.unlink(seg)
        except FileNotFoundError:
            continue
        removed.append(name)
    if removed:
        statefile.fsync_dir(directory)
    return removed


def read_segment(path: str) -> Iterator[dict[str, Any]]:
    """The records of a segment, in order; a torn last line (no newline) is dropped. A line that is not a
    JSON object raises ValueError (a damaged journal is never read past)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n")
    for line in data[:end + 1].splitlines():
        rec = json.loads(line)
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: a record is not an object")
        yield rec
