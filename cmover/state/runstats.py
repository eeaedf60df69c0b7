"""The counters of distributed runs in memcached: per run and per worker process, written and read.

Written by :class:`MemcacheStats` (behind :class:`cmover.state.stats.BatchedStats` in each worker process),
read by the same class for `cmover status`, the Graphite sender and the Prometheus exporter, as run
totals (:func:`merge_totals`) and per-process records (:class:`WorkerStats`). Key names:
:mod:`cmover.state.keys`.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import Counter, deque
from typing import Any

from cmover.core.counters import C
from cmover.core.frozen import NamedTuple
from cmover.core.origin import origin
from cmover.state import keys

log = logging.getLogger(__name__)

#: Seconds over which `cmover status` reports rates ("over the last minute").
RATE_WINDOW = 60.0


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

    TTL = keys.TTL
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
        self.worker = worker or origin() + (f".{n}" if n else "")

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
        mc.set(keys.worker_record(run_id, self.worker), json.dumps(record, separators=(",", ":")), expire=self.TTL,
               noreply=False)
        if lost and not self._loss_logged:
            log.warning("counters of run %s were lost from memcached (restarted, or evicting: run it with -M); "
                        "totals are made up from the worker records from now on", run_id)
            self._loss_logged = True
        if not mine.registered or lost:
            reg = keys.run_key(run_id, "workers")
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
            key = keys.counter(run_id, name)
            # Missing key: create it; if another process won the race to create it, incr again.
            if mc.incr(key, n) is None:
                if mc.add(key, str(n), expire=self.TTL, noreply=False):
                    created.add(name)
                else:
                    mc.incr(key, n)
        return created

    def flush(self) -> None:
        pass  # every add is reported at once

    def add_to_run(self, run_id: str, tally: Counter[str]) -> None:
        """Add to the run's counters only, as an operator command does (it is no worker). May raise."""
        self._add_to_run(self._mc(), run_id, tally)

    def run_counters(self, run_id: str) -> dict[str, int] | None:
        """The run's counters alone (``add``/``incr`` keys), or None when memcached cannot be read."""
        try:
            got = self._mc().get_many([keys.counter(run_id, c) for c in C.ALL])
        except Exception:
            return None
        prefix = len(keys.counter_prefix(run_id))
        return {k[prefix:]: int(v) for k, v in got.items()}

    def workers(self, run_id: str) -> list[WorkerStats] | None:
        """Every process that reported for the run, or None when memcached cannot be read."""
        try:
            mc = self._mc()
            reg = mc.get(keys.run_key(run_id, "workers"))
            names = sorted(set(reg.decode().split())) if reg else []
            out: list[WorkerStats] = []
            for i in range(0, len(names), 200):
                got = mc.get_many([keys.worker_record(run_id, w) for w in names[i:i + 200]])
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


class WorkerStats(NamedTuple):
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
