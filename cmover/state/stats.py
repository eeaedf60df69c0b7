"""Counter sinks: where a task's counts go.

Engine code adds to a plain :class:`Tally` (a dict of ints, no I/O); the task wrapper hands the tally
to a :class:`StatsSink` once per task. Distributed workers sum tallies in memory and report them to
memcached at most once per REPORT_INTERVAL while busy (:class:`BatchedStats` over
:class:`cmover.state.runstats.MemcacheStats`): per run and per worker process, cumulative totals that
only go up. A sink failure never stops copying: it is logged once and the totals are marked as
incomplete. The embedded mode and tests total in memory (:class:`MemoryStats`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Protocol

from cmover.state.runstats import MemcacheStats, WorkerStats

log = logging.getLogger(__name__)

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

    def flush(self) -> None:
        """Report now whatever this process still holds (it is about to exit). Never raises."""
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

    def flush(self) -> None:
        pass  # nothing held back


#: Seconds a process stays without a new task before :class:`BatchedStats` reports what it holds. A pass is
#: complete for `status` and `--wait` only once every count has been reported, so this is a delay at the
#: end of every distributed pass: 0.25 s was most of a small pass (a 10-file pass: 0.50 s, its task 9 ms),
#: and 0.02 s was still a tenth of it (0.20 s). A busy process takes its next task within a millisecond or
#: two of the last, so a short wait still reports once per quiet spell, not per task (a report is a few
#: memcached operations).
REPORT_IDLE = 0.005


class BatchedStats:
    """Reports a process's counts at most once per ``interval`` while it is busy (REPORT_INTERVAL).

    Tallies are summed in memory; a report goes out when a task ends and ``interval`` has passed since
    the last one, and a background thread sends what is pending once the process has been idle for
    ``idle`` seconds (so the totals are complete moments after the last task of a pass) and at
    :meth:`flush` (process shutdown). A process killed with SIGKILL loses what it had not reported:
    at most ``interval`` seconds of its counts (display counters; completion never depends on them).
    """

    def __init__(self, sink: MemcacheStats, interval: float, idle: float = REPORT_IDLE) -> None:
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

    def flush(self) -> None:
        pass
