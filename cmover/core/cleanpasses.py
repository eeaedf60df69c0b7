"""Durable records of the passes that completed with no failure, per tree and pass kind.

A change journal may replace the walk of a pass only when it covers the whole interval since the start
of the last pass of that kind that completed with no failure for the same source root, target root and
start sub-path (:mod:`cmover.journal`). That start instant is recorded here, in
``CHANGES_DIR/clean-passes.json`` (a JSON object, replaced atomically under an exclusive lock), when a pass
completes with no failure, nothing left for a next pass and no filter that left entries out. A pass that
failed, was interrupted or left anything out leaves the previous record in place: the next journal
reading then reaches back to it.

The start of the last copy or delete pass that *walked* is recorded too (:func:`record_walk`), whatever its
outcome: such a pass may change target directories the journal never names (hard links re-linked, target
drift repaired), so directory times can only be taken from a journal when none walked since the last
clean dirtime pass began.

A pass over a Lustre source also records, per MDT (``FSNAME-MDTxxxx``), the last changelog record index it
had read when it began (``marks``): the next journal reading starts after them, and records are cleared
only up to the lowest mark of the tree's last clean passes (:func:`lowest_marks`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator

from cmover.core import statefile
from cmover.core.errors import ConfinementError
from cmover.core.frozen import NamedTuple
from cmover.core.paths import from_wire, to_wire

FILE = "clean-passes.json"


class CleanPass(NamedTuple):
    """A recorded pass: its run id, when it started (ns), and per MDT the last changelog index it read at
    its start (empty for a source with no changelogs)."""

    run_id: str
    start_ns: int
    marks: dict[str, int]


def _key(kind: str, src_root: bytes, dst_root: bytes, start: bytes) -> str:
    return json.dumps([kind, to_wire(src_root), to_wire(dst_root), to_wire(start)])


def last_clean(changes_dir: str, kind: str, src_root: bytes, dst_root: bytes, start: bytes) -> CleanPass | None:
    """The last pass of ``kind`` over this tree that completed with no failure, or None."""
    return _read(changes_dir, _key(kind, src_root, dst_root, start))


def last_walk(changes_dir: str, kind: str, src_root: bytes, dst_root: bytes, start: bytes) -> CleanPass | None:
    """The last pass of ``kind`` over this tree that walked (see the module doc), or None."""
    return _read(changes_dir, _key("walk:" + kind, src_root, dst_root, start))


def record_walk(changes_dir: str, kind: str, src_root: bytes, dst_root: bytes, start: bytes, run_id: str,
                start_ns: int) -> None:
    """Record that pass ``run_id`` of ``kind`` walks this tree from ``start_ns`` on."""
    record_clean(changes_dir, "walk:" + kind, src_root, dst_root, start, run_id, start_ns)


def _records(changes_dir: str) -> Iterator[tuple[str, bytes, bytes, bytes, CleanPass]]:
    """Every readable record: (kind, source root, target root, start path, pass); damaged keys are skipped."""
    try:
        with open(os.path.join(changes_dir, FILE)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return
    for key in doc if isinstance(doc, dict) else {}:
        try:
            k, src, dst, start = json.loads(key)
            parts = (str(k), from_wire(src), from_wire(dst), from_wire(start))
        except (ValueError, TypeError, ConfinementError):
            continue
        rec = _read(changes_dir, key, doc)
        if rec is not None:
            yield (*parts, rec)


def clean_starts(changes_dir: str, kind: str, src_root: bytes, dst_root: bytes) -> list[tuple[bytes, CleanPass]]:
    """Every start path of this source and target root with a last clean pass of ``kind``, and that pass."""
    return [(start, rec) for k, src, dst, start, rec in _records(changes_dir)
            if k == kind and src == src_root and dst == dst_root]


def clean_of_source(changes_dir: str, kinds: tuple[str, ...], src_root: bytes) -> list[CleanPass]:
    """The last clean pass of each of ``kinds`` of every tree (any target root, any start path) of ``src_root``."""
    return [rec for k, src, _dst, _start, rec in _records(changes_dir) if k in kinds and src == src_root]


def _read(changes_dir: str, key: str, doc: object = None) -> CleanPass | None:
    if doc is None:
        try:
            with open(os.path.join(changes_dir, FILE)) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return None
    rec = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(rec, dict):
        return None
    marks = rec.get("marks")
    return CleanPass(str(rec["run_id"]), int(rec["start_ns"]),
                     {str(k): int(v) for k, v in marks.items()} if isinstance(marks, dict) else {})


def lowest_marks(changes_dir: str, kinds: tuple[str, ...], src_root: bytes, dst_root: bytes,
                 start: bytes, *, highest: bool = False) -> dict[str, int]:
    """Per MDT, the lowest mark of the last clean passes of ``kinds`` over this tree that have one: how far
    every such pass's next journal reading is past (what may be cleared). A kind with no clean pass
    recorded does not count (its next pass walks). ``highest``: the highest mark instead (a position known
    to exist, from which a walking pass finds the current end)."""
    pick = max if highest else min
    out: dict[str, int] = {}
    for kind in kinds:
        rec = last_clean(changes_dir, kind, src_root, dst_root, start)
        if rec is None or not rec.marks:
            continue
        for mdt, idx in rec.marks.items():
            out[mdt] = pick(out.get(mdt, idx), idx)
    return out


def record_clean(changes_dir: str, kind: str, src_root: bytes, dst_root: bytes, start: bytes, run_id: str,
                 start_ns: int, marks: dict[str, int] | None = None) -> None:
    """Record pass ``run_id`` of ``kind``, started at ``start_ns`` (having read the changelogs up to ``marks``),
    as the last clean one of this tree."""
    os.makedirs(changes_dir, exist_ok=True)
    path = os.path.join(changes_dir, FILE)
    with open(os.path.join(changes_dir, ".clean-passes.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            doc = {}
        key = _key(kind, src_root, dst_root, start)
        old = doc.get(key)
        if isinstance(old, dict) and int(old.get("start_ns", 0)) > start_ns:
            return  # a later pass was recorded meanwhile
        doc[key] = {"run_id": run_id, "start_ns": start_ns, **({"marks": marks} if marks else {})}
        statefile.replace(path, json.dumps(doc).encode())
