"""Counters: the single list of metric names and the sinks that total them.

Engine code adds to a plain :class:`Tally` (a dict of ints, no I/O); the task wrapper hands the tally
to a :class:`StatsSink` once per task, so there is at most one round trip per task on the hot path.
Counters only go up. A sink failure never stops copying: it is logged once and the totals are marked
as incomplete.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Protocol

log = logging.getLogger(__name__)


class C:
    """Counter names (also the metric names sent to Graphite).

    Plain string constants, not an Enum: they are hashed several times per file on the hot path and an
    Enum member's hash is a Python-level call.
    """

    DIRS = "dirs"  # directories processed
    DIRS_CREATED = "dirs_created"
    SCANNED = "files_scanned"  # non-directory entries looked at
    COPIED = "files_copied"  # data written (created or replaced)
    META = "files_meta_updated"  # owner/mode/times fixed, data kept
    SKIPPED = "files_skipped"  # identical on the target
    FILTERED = "files_filtered"  # left out by OLDEST_DATE / NEWEST_DATE
    EXCLUDED = "entries_excluded"  # left out by the exclusions file
    FAILED = "failed"  # per-item failures (files or directories)
    CHANGED = "changed_during_copy"  # source changed while copied; left for the next pass
    VANISHED = "vanished"  # listed, then gone before it was handled
    SOCKETS = "sockets_skipped"
    LINKED = "hardlinks_made"  # names linked to their group's first copied name
    LINK_DEFERRED = "hardlinks_deferred"  # names of a chunked group's file: linked by the next copy pass
    BYTES = "bytes_copied"
    CHUNKED = "files_chunked"  # huge files split into chunk tasks (each also counts as copied when finished)
    CHUNKS = "chunks_copied"
    # Lustre (counted by cmover.lustre.fs)
    LAYOUTS_SET = "layouts_set"  # files and directory defaults given their source's layout
    LAYOUT_MISMATCH = "layout_mismatches"  # layout asked but not obtained (target default kept)
    DIRS_PLACED = "dirs_placed"  # directories created on a chosen MDT
    MDT_MISMATCH = "mdt_mismatches"  # placement refused or not obtained
    RESTRIPED = "files_restriped"  # identical files rewritten for their layout (--restripe)
    # delete pass
    DELETED = "entries_deleted"  # files, symlinks, specials and directories removed
    DIRS_DELETED = "dirs_deleted"
    WOULD_DELETE = "entries_would_delete"  # --dry-run
    DIRS_WOULD_DELETE = "dirs_would_delete"
    DEL_LIMITED = "deletes_over_limit"  # not deleted because --max-delete was reached
    KEPT = "entries_kept"  # present on the source
    # dirtime pass
    DIRTIMES = "dir_times_set"
    DIRS_MISSING = "dirs_missing"  # on the source or on the target (listed)
    TASKS = "tasks"
    DEAD = "dead_lettered"

    ALL: tuple[str, ...] = ()


C.ALL = tuple(v for k, v in vars(C).items() if k.isupper() and k != "ALL" and isinstance(v, str))


Tally = Counter  # Counter[str]: what one task adds, keyed by C values


class StatsSink(Protocol):
    def add(self, run_id: str, tally: Counter[str]) -> None:
        """Add one task's counts to the run's totals. Never raises."""
        ...

    def totals(self, run_id: str) -> dict[str, int] | None:
        """The run's totals, or None when they cannot be read."""
        ...


class MemoryStats:
    """In-process totals (embedded mode, tests); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, Counter[str]] = {}

    def add(self, run_id: str, tally: Counter[str]) -> None:
        with self._lock:
            self._totals.setdefault(run_id, Counter()).update(tally)

    def totals(self, run_id: str) -> dict[str, int] | None:
        with self._lock:
            return dict(self._totals.get(run_id, Counter()))


class MemcacheStats:
    """Run totals in memcached: ``cm:<run>:c:<name>``, created with ``add`` then ``incr`` (no races).

    ``client_factory`` builds the pymemcache client lazily, once per process (after fork).
    """

    def __init__(self, client_factory) -> None:
        self._factory = client_factory
        self._client = None
        self._warned = False

    def _mc(self):
        if self._client is None:
            self._client = self._factory()
        return self._client

    def add(self, run_id: str, tally: Counter[str]) -> None:
        try:
            mc = self._mc()
            for name, n in tally.items():
                if n <= 0:
                    continue
                key = f"cm:{run_id}:c:{name}"
                # Missing key: create it; if another process won the race to create it, incr again.
                if mc.incr(key, n) is None and not mc.add(key, str(n), noreply=False):
                    mc.incr(key, n)
        except Exception as exc:  # a stats outage must never stop the copy
            if not self._warned:
                log.warning("counters not recorded (memcached: %s); copying goes on", exc)
                self._warned = True

    def totals(self, run_id: str) -> dict[str, int] | None:
        try:
            mc = self._mc()
            keys = [f"cm:{run_id}:c:{c}" for c in C.ALL]
            got = mc.get_many(keys)
        except Exception:
            return None
        prefix = len(f"cm:{run_id}:c:")
        return {k[prefix:]: int(v) for k, v in got.items()}
