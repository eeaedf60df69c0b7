"""Clean-pass proofs: when may a copy pass skip comparing an entry's extended attributes and ACLs?

A copy pass compares every attribute cmover copies. The target's ``lstat`` (type, size, mtime, owner,
mode) is cheap; extended attributes and POSIX ACLs cost two ``listxattr`` calls per entry -- on Lustre
two metadata RPCs, the larger part of a no-change pass. This module says when that comparison may be
skipped without losing exactness.

**The record.** When a copy pass completes with no failure, no interruption and no filter that leaves
entries out (:func:`may_record`), the time it was planned (``start_ns``) and the time it ended
(``end_ns``) are recorded for its (source root, target root, start sub-path) triple together with the
:func:`fingerprint` of what shapes the copy (:data:`SHAPING`, the privileges of the copying process).
The record is written durably (``fsync`` and an atomic rename) under STATE_DIR by :class:`Store`.

**The claim.** After such a pass, every source entry whose ctime is below ``start_ns`` had, when the
pass ended, a target counterpart identical in every attribute cmover copies: the pass compared it (or
used an earlier proof of the same claim), and a source entry whose attributes changed while or after
the pass looked at it has a later ctime (the kernel moves ctime on every change of data, owner, mode,
xattrs or ACLs, and on rename; it cannot be set by a program).

**The rule** (:meth:`Proof.covers`, :func:`dir_proven`). A later pass with the same fingerprint skips the
attribute comparison of an entry when all of these hold:

* its source ctime is below ``start_ns - CLOCK_SKEW`` (the margin covers clocks of the source's servers
  that differ from the planning node's);
* its target ``lstat`` matches the source as a full compare requires (the caller checks this first;
  the target ``lstat`` is never skipped);
* its target ctime is below ``end_ns - CLOCK_SKEW``: nothing changed the target entry after the recorded
  pass. The margin is needed on this side too: a target change made just after the end is stamped by the
  clock of whoever made it (another node, the target's servers), which may trail the planning node's; and
  even on one node a file's timestamp can trail a time read before the change (the kernel stamps files
  from a clock it advances once a tick: seen here, an xattr set on the target after a pass had recorded its
  end, on the same node, got a ctime below that end). An entry the pass wrote in its last CLOCK_SKEW is
  merely compared in full by the next pass;
* its parent directory and every directory above it up to the mount root are proven too (source ctime
  below the cut): an entry moved into place by renaming one of its ancestors keeps its own ctime, but
  the renamed directory's ctime moves (verified on ext4 and tmpfs: ``rename`` updates the ctime of
  the moved inode), so nothing below it uses the proof.

What it assumes (README, "The final pass"): clocks within CLOCK_SKEW; nothing writes attributes on the
target during a pass. ``--full-compare`` ignores the record; the pass still records a new one.

Public API for other features (e.g. change journals that need "the start of the last pass that
completed with no failure for that tree"): :class:`Store` and its :meth:`Store.last`, :class:`CleanPass`.
Pure functions otherwise; only :class:`Store` touches the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from cmover.core import statefile
from cmover.core.counters import C
from cmover.core.frozen import NamedTuple
from cmover.core.passes import PassKind, PassSpec
from cmover.core.paths import components, from_wire, to_wire
from cmover.core.privileges import Privileges

#: What shapes the attributes a copy pass writes: config.py setting name -> the PassSpec field carrying it.
#: A pass whose values differ from the recorded pass's has another fingerprint and uses no proof. Extend it
#: when a setting changes what a copy's attributes are (an owner map, an HSM policy, ...).
SHAPING: dict[str, str] = {
    "LUSTRE_LAYOUT": "layout",
    "LUSTRE_RESTRIPE": "restripe",
    "UID_MAP": "idmap",  # both maps travel in one field
    "GID_MAP": "idmap",
    "HSM_POLICY": "hsm",
}

#: Bumped when the rule or what a pass compares changes: records of older versions are then ignored.
RULE_VERSION = 1

#: Counters of a finished pass that mean work was left undone or entries left out (HSM-released files skipped
#: by HSM_POLICY skip, archive copies lost): such a pass is never recorded.
UNDONE = (C.FAILED, C.LINK_DEFERRED, C.DEAD, C.HSM_SKIPPED, C.HSM_LOST)


def fingerprint(spec: PassSpec, can: Privileges) -> str:
    """A digest of the :data:`SHAPING` values of ``spec`` and of what the copying process may set (``can``).

    Two passes with the same fingerprint write the same attributes for the same source entry.
    """
    doc: dict[str, Any] = {name: _plain(getattr(spec, attr)) for name, attr in sorted(SHAPING.items())}
    doc["_privileges"] = [can.uid, sorted(can.groups), can.chown, can.fsetid, can.mknod, can.dac, can.sys_admin,
                          can.setfcap]
    doc["_rule"] = RULE_VERSION
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _plain(v: Any) -> Any:
    if hasattr(v, "as_dict"):
        return v.as_dict()
    if isinstance(v, bytes):
        return to_wire(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def may_record(spec: PassSpec, state: str, failure_count: int, totals: Mapping[str, int]) -> bool:
    """Whether a finished pass may be recorded as clean: a copy pass, ``complete`` (not interrupted, not
    unknown), with no failure listed or counted, nothing deferred or dead-lettered, and no filter that
    leaves entries out (:attr:`PassSpec.leaves_entries_out`)."""
    return (spec.kind is PassKind.COPY and state == "complete" and failure_count == 0
            and not any(totals.get(name, 0) for name in UNDONE) and not spec.leaves_entries_out
            and spec.planned_ns > 0)


class CleanPass(NamedTuple):
    """One recorded clean pass of a (source root, target root, start) triple.

    ``start_ns``: wall-clock time (ns) the pass was planned, before any task looked at an entry;
    ``end_ns``: when it was seen complete. ``fingerprint``: see :func:`fingerprint`.
    """

    src_root: bytes
    dst_root: bytes
    start: bytes
    start_ns: int
    end_ns: int
    fingerprint: str
    run_id: str

    def as_dict(self) -> dict[str, Any]:
        return {"src_root": to_wire(self.src_root), "dst_root": to_wire(self.dst_root), "start": to_wire(self.start),
                "start_ns": self.start_ns, "end_ns": self.end_ns, "fingerprint": self.fingerprint,
                "run_id": self.run_id, "rule": RULE_VERSION}

    @classmethod
    def from_dict(cls, d: Any) -> CleanPass | None:
        """The record of ``d``, or None when it is malformed or of another rule version (never used)."""
        try:
            if d["rule"] != RULE_VERSION:
                return None
            rec = cls(from_wire(d["src_root"]), from_wire(d["dst_root"]), from_wire(d["start"]), int(d["start_ns"]),
                      int(d["end_ns"]), str(d["fingerprint"]), str(d["run_id"]))
        except (KeyError, TypeError, ValueError):
            return None
        return rec if 0 < rec.start_ns <= rec.end_ns else None


class Proof(NamedTuple):
    """The cut a pass applies (carried by its spec): source ctime below ``src_before_ns``, target ctime
    below ``dst_before_ns``. Built by :func:`proof_of` in the worker."""

    src_before_ns: int
    dst_before_ns: int

    def covers(self, src_ctime_ns: int, dst_ctime_ns: int) -> bool:
        """Whether an entry in a proven directory whose target ``lstat`` matched may skip its attribute
        comparison."""
        return src_ctime_ns < self.src_before_ns and dst_ctime_ns < self.dst_before_ns


def proof_of(spec: PassSpec, can: Privileges) -> Proof | None:
    """The proof a task of ``spec`` may use, or None: none in the spec, or the spec's fingerprint is not
    this process's (a worker with other privileges than the planner's compares in full)."""
    if not spec.proof_ns or spec.proof_fp != fingerprint(spec, can):
        return None
    return Proof(spec.proof_ns, spec.proof_end_ns)


def dir_proven(proof: Proof | None, parent_proven: bool, src_ctime_ns: int) -> bool:
    """Whether a source directory is proven: its parent is (the mount root's parent counts as proven) and its
    own ctime is below the cut. Only the entries of a proven directory may use the proof."""
    return proof is not None and parent_proven and src_ctime_ns < proof.src_before_ns


#: The least margin of a cut, whatever CLOCK_SKEW says (it may be 0): a file's timestamps can trail the time a
#: program read before changing it by up to a kernel tick, 10 ms at the coarsest (HZ=100).
MIN_MARGIN_NS = 10_000_000


def cut(record: CleanPass, skew_ns: int) -> tuple[int, int]:
    """``(proof_ns, proof_end_ns)`` for a spec from ``record``: its start and its end, each less the clock skew
    margin (``skew_ns``, at least :data:`MIN_MARGIN_NS`; see the module doc)."""
    margin = max(skew_ns, MIN_MARGIN_NS)
    return max(record.start_ns - margin, 0), max(record.end_ns - margin, 0)


def _key(src_root: bytes, dst_root: bytes, start: bytes) -> str:
    return hashlib.sha256(b"\0".join((src_root, dst_root, start))).hexdigest()


class Store:
    """Clean-pass records under ``state_dir`` (``<state_dir>/clean/<digest of the triple>.json``).

    Writes are durable: the record is written to a temporary file, ``fsync``-ed, renamed over the old
    one and the directory ``fsync``-ed, so a crash leaves the old record or the new one, never a torn
    one. An unreadable or malformed record counts as none (a full compare).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = os.path.join(os.fspath(state_dir), "clean")

    def record(self, rec: CleanPass) -> None:
        """Store ``rec`` as the last clean pass of its triple (OSError when the state directory cannot be
        written: the caller says so; the pass itself is not affected)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.dir, _key(rec.src_root, rec.dst_root, rec.start) + ".json")
        statefile.replace(path, json.dumps(rec.as_dict(), sort_keys=True).encode() + b"\n")

    def read(self, src_root: bytes, dst_root: bytes, start: bytes) -> CleanPass | None:
        """The record of exactly this triple, whatever its fingerprint; None when there is none."""
        path = os.path.join(self.dir, _key(src_root, dst_root, start) + ".json")
        try:
            with open(path, "rb") as f:
                rec = CleanPass.from_dict(json.loads(f.read()))
        except (OSError, ValueError):
            return None
        if rec is None or (rec.src_root, rec.dst_root, rec.start) != (src_root, dst_root, start):
            return None
        return rec

    def last(self, src_root: bytes, dst_root: bytes, start: bytes = b"",
             fingerprint: str | None = None) -> CleanPass | None:
        """The last clean pass that covers the tree at ``start``: recorded for that sub-path or for one above
        it (a clean pass over a tree is one over each of its subtrees), with ``fingerprint`` when given;
        the latest by ``start_ns``; None when there is none.

        ``start_ns`` of the result is "the start of the last pass that completed with no failure for that
        tree": every source entry with an earlier ctime was identical on the target when it ended.
        """
        parts = components(start)
        best: CleanPass | None = None
        for depth in range(len(parts) + 1):
            rec = self.read(src_root, dst_root, b"/".join(parts[:depth]))
            if rec is None or (fingerprint is not None and rec.fingerprint != fingerprint):
                continue
            if best is None or rec.start_ns > best.start_ns:
                best = rec
        return best

