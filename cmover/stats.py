"""Counters: the single list of metric names and the sinks that total them.

Engine code adds to a plain :class:`Tally` (a dict of ints, no I/O); the task wrapper hands the tally
to a :class:`StatsSink` once per task. Distributed workers sum tallies in memory and report them to
memcached at most once per REPORT_INTERVAL while busy (:class:`BatchedStats` over
:class:`MemcacheStats`): per run and per worker process, cumulative totals that only go up. A sink
failure never stops copying: it is logged once and the totals are marked as incomplete.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Seconds over which `cmover status` reports rates ("over the last minute").
RATE_WINDOW = 60.0


class C:
    """Counter names (also the metric names sent to Graphite).

    Plain string constants, not an Enum: they are hashed several times per file on the hot path and an
    Enum member's hash is a Python-level call.
    """

    DIRS = "dirs"  # directories processed
    DIRS_FOUND = "dirs_discovered"  # subdirectories found in listings (the pass's start dir not included)
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
    RETRIED = "failures_retried"  # error-list records taken by `cmover retry-failed` (retried or gone)
    TASKS = "tasks"
    DEAD = "dead_lettered"

    ALL: tuple[str, ...] = ()


C.ALL = tuple(v for k, v in vars(C).items() if k.isupper() and k != "ALL" and isinstance(v, str))


Tally = Counter  # Counter[str]: what one task adds, keyed by C values


class StatsSink(Protocol):
    def add(self, run_id: str, tally: Counter[str], node: str = "", began: float = 0.0) -> None:
        """Add one task's counts to the run's totals. Never raises.

        ``node``: the Celery node of the worker; ``began``: Unix time the counted work started (0: now).
        """
        ...

    def totals(self, run_id: str) -> dict[str, int] | None:
        """The run's totals, or None when they cannot be read."""
        ...


class MemoryStats:
    """In-process totals (embedded mode, tests); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, Counter[str]] = {}

    def add(self, run_id: str, tally: Counter[str], node: str = "", began: float = 0.0) -> None:
        with self._lock:
            self._totals.setdefault(run_id, Counter()).update(tally)

    def totals(self, run_id: str) -> dict[str, int] | None:
        with self._lock:
            return dict(self._totals.get(run_id, Counter()))


class MemcacheStats:
    """Counters of distributed runs in memcached, per run and per worker process.

    Per run: ``cm:<run>:c:<name>``, cumulative, created with ``add`` then ``incr`` (never get+set or
    get+delete: no update is lost between racing processes). Per worker process: ``cm:<run>:w:<worker>``,
    a JSON record of that process's own cumulative totals, written whole with ``set`` by its only writer
    (so a record lost to a memcached restart comes back complete at the process's next report), with
    the totals of about a minute earlier for rates. Workers are discovered, not configured: each
    process appends its name to ``cm:<run>:workers`` the first time it reports for a run (and again
    after noticing a loss).

    A lost run counter (memcached restarted or evicting) is noticed when ``incr`` misses a key this
    process created before; it is logged once and :meth:`totals` makes up for it from the worker
    records (each counter is the larger of the run counter and the sum over the workers).

    ``client_factory`` builds the pymemcache client lazily, once per process (after fork). Calls never
    raise: an unreachable memcached is logged once and copying goes on.
    """

    TTL = 29 * 24 * 3600  # memcached reads an expiry above 30 days as an absolute time
    RUNS_KEPT = 8  # runs whose per-process totals one process keeps in memory
    _instances = itertools.count()

    def __init__(self, client_factory, *, worker: str | None = None) -> None:
        self._factory = client_factory
        self._client = None
        self._warned = False
        self._loss_logged = False
        self._lock = threading.Lock()
        self._runs: dict[str, _ProcessTotals] = {}
        n = next(self._instances)
        # One record per sink; a process normally holds one sink (tests may build several).
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}" + (f".{n}" if n else "")

    def _mc(self):
        if self._client is None:
            self._client = self._factory()
        return self._client

    def add(self, run_id: str, tally: Counter[str], node: str = "", began: float = 0.0) -> None:
        """Add ``tally`` to the run's counters and to this process's record (one report). Never raises.

        ``began`` (Unix time the counted work started) opens the process's rate window for a new run.
        """
        with self._lock:
            try:
                self._report(run_id, tally, node, began)
            except Exception as exc:  # a stats outage must never stop the copy
                if not self._warned:
                    log.warning("counters not recorded (memcached: %s); copying goes on", exc)
                    self._warned = True

    def _report(self, run_id: str, tally: Counter[str], node: str, began: float) -> None:
        mc = self._mc()
        mine = self._runs.get(run_id)
        if mine is None:
            now = time.time()
            mine = self._runs[run_id] = _ProcessTotals(min(began, now) if began > 0 else now)
            while len(self._runs) > self.RUNS_KEPT:
                del self._runs[next(iter(self._runs))]
        created = self._add_to_run(mc, run_id, tally)
        lost = bool(created & mine.written)
        for name, n in tally.items():
            if n > 0:
                mine.written.add(name)
                mine.totals[name] += n
        mine.node = node or mine.node
        now = time.time()
        mine.snapshot(now)
        since, then = mine.window[0]
        record = {"worker": self.worker, "node": mine.node, "at": now, "started": mine.started,
                  "totals": dict(mine.totals), "since": since, "then": then}
        mc.set(f"cm:{run_id}:w:{self.worker}", json.dumps(record, separators=(",", ":")), expire=self.TTL,
               noreply=False)
        if lost and not self._loss_logged:
            log.warning("counters of run %s were lost from memcached (restarted, or evicting: run it with -M); "
                        "totals are made up from the worker records from now on", run_id)
            self._loss_logged = True
        if not mine.registered or lost:
            reg = f"cm:{run_id}:workers"
            item = self.worker + " "
            if not mc.append(reg, item, noreply=False) and not mc.add(reg, item, expire=self.TTL, noreply=False):
                mc.append(reg, item, noreply=False)
            mine.registered = True

    def _add_to_run(self, mc: Any, run_id: str, tally: Counter[str]) -> set[str]:
        """Add to the run counters; return the names whose key was missing (and has been created)."""
        created = set()
        for name, n in tally.items():
            if n <= 0:
                continue
            key = f"cm:{run_id}:c:{name}"
            # Missing key: create it; if another process won the race to create it, incr again.
            if mc.incr(key, n) is None:
                if mc.add(key, str(n), expire=self.TTL, noreply=False):
                    created.add(name)
                else:
                    mc.incr(key, n)
        return created

    def add_to_run(self, run_id: str, tally: Counter[str]) -> None:
        """Add to the run's counters only, as an operator command does (it is no worker). May raise."""
        self._add_to_run(self._mc(), run_id, tally)

    def run_counters(self, run_id: str) -> dict[str, int] | None:
        """The run's counters alone (``add``/``incr`` keys), or None when memcached cannot be read."""
        try:
            got = self._mc().get_many([f"cm:{run_id}:c:{c}" for c in C.ALL])
        except Exception:
            return None
        prefix = len(f"cm:{run_id}:c:")
        return {k[prefix:]: int(v) for k, v in got.items()}

    def workers(self, run_id: str) -> list[WorkerStats] | None:
        """Every process that reported for the run, or None when memcached cannot be read."""
        try:
            mc = self._mc()
            reg = mc.get(f"cm:{run_id}:workers")
            names = sorted(set(reg.decode().split())) if reg else []
            out: list[WorkerStats] = []
            for i in range(0, len(names), 200):
                got = mc.get_many([f"cm:{run_id}:w:{w}" for w in names[i:i + 200]])
                for raw in got.values():
                    ws = WorkerStats.from_json(raw)
                    if ws is not None:
                        out.append(ws)
        except Exception:
            return None
        return sorted(out, key=lambda w: (w.host, w.pid, w.worker))

    def totals(self, run_id: str) -> dict[str, int] | None:
        """The run's totals: per counter the larger of the run counter and the sum of the worker records.

        Both only go up; the run counter is exact unless memcached lost it, the worker records are
        exact for every process that reported and whose record was not lost. None when unreadable.
        """
        counters = self.run_counters(run_id)
        if counters is None:
            return None
        return merge_totals(counters, self.workers(run_id) or [])


def merge_totals(counters: dict[str, int], workers: list[WorkerStats]) -> dict[str, int]:
    """Per counter, the larger of the run counter and the sum over ``workers`` (see MemcacheStats)."""
    summed: Counter[str] = Counter()
    for w in workers:
        summed.update(w.totals)
    out = dict(counters)
    for name, n in summed.items():
        if n > out.get(name, 0):
            out[name] = n
    return out


class _ProcessTotals:
    """One process's cumulative counts for one run, with the snapshots its rate window is taken from."""

    __slots__ = ("started", "totals", "written", "registered", "node", "window")

    def __init__(self, started: float) -> None:
        self.started = started
        self.totals: Counter[str] = Counter()
        self.written: set[str] = set()  # run counters this process created or incremented
        self.registered = False
        self.node = ""
        self.window: deque[tuple[float, dict[str, int]]] = deque([(started, {})])

    def snapshot(self, now: float) -> None:
        """Remember the totals at ``now``; keep the newest snapshot at least RATE_WINDOW old as the first."""
        self.window.append((now, dict(self.totals)))
        while len(self.window) > 1 and self.window[1][0] <= now - RATE_WINDOW:
            self.window.popleft()


@dataclass(frozen=True)
class WorkerStats:
    """What one worker process reported for a run: its own cumulative totals, and those of ``since``.

    ``worker`` is ``host:pid``; ``node`` the Celery node name of the worker the process belongs to
    (e.g. ``copy_f@host``), empty when unknown; times are Unix seconds.
    """

    worker: str
    node: str
    at: float
    started: float
    totals: dict[str, int]
    since: float
    then: dict[str, int]

    @property
    def host(self) -> str:
        return self.worker.rsplit(":", 1)[0]

    @property
    def pid(self) -> int:
        try:
            return int(self.worker.rsplit(":", 1)[1].split(".")[0])
        except (IndexError, ValueError):
            return 0

    def rate(self, name: str) -> float:
        """Per second over the process's last minute of reports (0 when it has one report only)."""
        span = self.at - self.since
        if span <= 0:
            return 0.0
        return max(0, self.totals.get(name, 0) - self.then.get(name, 0)) / span

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerStats | None:
        """Parse a record; None for anything malformed (a record is display data, never trusted)."""
        try:
            d = json.loads(raw)
            return cls(worker=str(d["worker"]), node=str(d.get("node", "")), at=float(d["at"]),
                       started=float(d.get("started", d["at"])),
                       totals={str(k): int(v) for k, v in d["totals"].items()},
                       since=float(d.get("since", d["at"])),
                       then={str(k): int(v) for k, v in d.get("then", {}).items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class BatchedStats:
    """Reports a process's counts at most once per ``interval`` while it is busy (REPORT_INTERVAL).

    Tallies are summed in memory; a report goes out when a task ends and ``interval`` has passed since
    the last one, and a background thread sends what is pending once the process has been idle for
    ``idle`` seconds (so the totals are complete moments after the last task of a pass) and at
    :meth:`flush` (process shutdown). A process killed with SIGKILL loses what it had not reported:
    at most ``interval`` seconds of its counts (display counters; completion never depends on them).
    """

    def __init__(self, sink: MemcacheStats, interval: float, idle: float = 0.25) -> None:
        self.sink = sink
        self.interval = interval
        self.idle = idle
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[tuple[str, str], Counter[str]] = {}
        self._began: dict[tuple[str, str], float] = {}  # earliest start of the pending work
        self._last_report = time.monotonic()
        self._last_add = 0.0
        self._thread: threading.Thread | None = None

    def add(self, run_id: str, tally: Counter[str], node: str = "", began: float = 0.0) -> None:
        now = time.monotonic()
        with self._lock:
            self._pending.setdefault((run_id, node), Counter()).update(tally)
            if began > 0:
                self._began[(run_id, node)] = min(began, self._began.get((run_id, node), began))
            self._last_add = now
            due = now - self._last_report >= self.interval
            if not due:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._idle_reporter, name="cmover-stats", daemon=True)
                    self._thread.start()
                self._wake.notify()
                return
        self.flush()

    def flush(self) -> None:
        """Report everything pending now (in this thread)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            began, self._began = self._began, {}
            self._last_report = time.monotonic()
        for key, tally in pending.items():
            self.sink.add(key[0], tally, key[1], began.get(key, 0.0))

    def _idle_reporter(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._wake.wait()
                quiet = time.monotonic() - self._last_add
                if quiet < self.idle:
                    self._wake.wait(self.idle - quiet)
                    continue
            self.flush()

    def totals(self, run_id: str) -> dict[str, int] | None:
        return self.sink.totals(run_id)

    def workers(self, run_id: str) -> list[WorkerStats] | None:
        return self.sink.workers(run_id)


class NullStats:
    """STATS_ENABLED = False: nothing is counted in memcached; totals are unknown."""

    def add(self, run_id: str, tally: Counter[str], node: str = "", began: float = 0.0) -> None:
        pass

    def totals(self, run_id: str) -> dict[str, int] | None:
        return None
