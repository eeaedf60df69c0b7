"""The state of a distributed run, as `cmover status` and `--wait` give it: running, paused, complete or unknown.

"complete" only when the ledger says nothing is outstanding *and* no pass queue holds a ready message,
and then with totals that include every worker's last report. "unknown" whenever that cannot be
vouched for: the ledger lost its count (memcached restarted or unreachable), a task was published that
the ledger could not count (the run is marked untrusted), or the broker could not be read. Each is a
reason to look, never a reason to call a pass complete.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from cmover.core.counters import C
from cmover.core.frozen import NamedTuple
from cmover.core.settings import Settings
from cmover.ops import runs
from cmover.ops.reading import NODE_COUNTED, RATED, RunReading, ledger_count, read_run, reread_counters
from cmover.state.runstats import MemcacheStats, WorkerStats

#: A worker process that has not reported for REPORT_INTERVAL plus this many seconds is idle (or gone).
ACTIVE_SLACK = 10.0

#: Longest wait, after a run is first seen complete, for the workers' last reports (they report pending
#: counts once idle for REPORT_IDLE, 0.005 s). `status` stops waiting as soon as the reports are proven complete
#: (:func:`reports_complete`), normally a fraction of a second; the limit is reached only when they
#: cannot be: a process killed with unreported counts (those are lost), counters failing, workers of an
#: older cmover. It is what a live worker on an overloaded node is given to report at the latest.
SETTLE = 5.0

#: Seconds between two looks at the worker records while `status` waits for the last reports (a few ms:
#: they come REPORT_IDLE after the last task).
REPORT_POLL = 0.005

#: Seconds between two reads of the ledger's outstanding count by `wait` (one memcached read each): from
#: PROBE_MIN at first, growing with the time waited to PROBE (see :func:`probe_after`).
PROBE = 0.02
PROBE_MIN = 0.002

#: A running pass whose ledger counts tasks outstanding while no pass queue holds a message and no worker process
#: has reported for this many seconds (nor was the run started more recently) is said to look stalled
#: (:func:`stalled_for`): a task hung in a system call, or a message lost with a worker killed between counting a
#: task and publishing it. Only said, never acted on: a Lustre server's recovery can hold a call for minutes.
STALLED_AFTER = 600.0

#: Longest time `wait` goes on reading while the broker cannot be read (restarted, unreachable, access
#: refused) before it gives that "unknown" reading back. The pass itself goes on regardless.
BROKER_PATIENCE = 60.0


class PassStatus(NamedTuple):
    """One pass run as `cmover status` shows it. Counts are cumulative; rates per second.

    ``note``: why the state is unknown, when that is more than the ledger's lost count, or why a running pass
    looks stalled (:func:`stalled_for`); ``why`` in :meth:`as_dict`, only then. ``broker_unreadable``: unknown
    because the broker could not be read, which may pass (`wait` reads again).
    """

    run_id: str
    kind: str
    state: str  # running | paused | complete | unknown | none
    outstanding: int | None
    queues: dict[str, int]
    totals: dict[str, int]
    seconds: float = 0.0
    spec: Mapping[str, Any] = MappingProxyType({})
    rates: Mapping[str, float] = MappingProxyType({})
    nodes: Sequence[dict[str, Any]] = ()
    dead_letters: int = 0  # messages in the pass's dead-letter queue (every run of the pass)
    estimate: dict[str, Any] | None = None
    note: str | None = None
    broker_unreadable: bool = False
    how: str = ""  # what drove a pass started with --changes (runs.RunRecord.how); "" otherwise
    stalled_s: float | None = None  # how long a running pass has looked stalled (stalled_for); None: it does not

    @property
    def open_errors(self) -> int:
        """Failures recorded and not yet taken by `cmover retry-failed` (what `cmover errors` lists)."""
        return max(0, int(self.totals.get(C.FAILED, 0)) - int(self.totals.get(C.RETRIED, 0)))

    def as_dict(self) -> dict[str, Any]:
        doc = {"run_id": self.run_id, "pass": self.kind, "state": self.state, "outstanding": self.outstanding,
               "queues": self.queues, "totals": self.totals, "seconds": round(self.seconds, 1),
               "rates": {k: round(v, 3) for k, v in self.rates.items()}, "nodes": self.nodes,
               "errors": self.open_errors, "dead_letters": self.dead_letters,
               "estimate": self.estimate, "stalled_s": None if self.stalled_s is None else round(self.stalled_s)}
        if self.note:
            doc["why"] = self.note
        if self.how:
            doc["changes"] = self.how
        return doc


def stalled_for(outstanding: int | None, queues: dict[str, int] | None, workers: list[WorkerStats],
                started: float | None, now: float) -> float | None:
    """Seconds a running pass has looked stalled (pure): tasks outstanding in the ledger, every pass queue empty
    (no message ready), and neither a worker report nor the run's start within the last STALLED_AFTER seconds.
    None when it does not look stalled, or cannot be told (a count or the queues unknown)."""
    if not outstanding or queues is None or any(queues.values()):
        return None
    last = max([w.at for w in workers] + ([started] if started is not None else []), default=None)
    if last is None or now - last < STALLED_AFTER:
        return None
    return now - last


def _stalled_note(kind: str, outstanding: int, silent: float) -> str:
    return (f"the pass looks stalled: {outstanding:,} task(s) outstanding, none queued, and no worker process has "
            f"reported for {silent / 60:.0f} min; a task may be hung in a system call (the worker logs name the "
            "tasks received and not finished), or its message was lost with a worker killed at the moment it "
            f"published it; if no worker is busy, `cmover start {kind}` runs the pass again (what is done is "
            "skipped)")


def activity(workers: list[WorkerStats], now: float, report_interval: float) -> tuple[dict[str, float],
                                                                                      list[dict[str, Any]]]:
    """Pass rates and per-node activity from the worker records of one run (pure).

    A process counts as active while it keeps reporting (last report at most REPORT_INTERVAL +
    ACTIVE_SLACK ago); the pass's rate of a counter is the sum of the active processes' rates over
    their last minute of reports. Nodes are hosts, with the Celery nodes of their processes.
    """
    rates = dict.fromkeys(RATED, 0.0)
    hosts: dict[str, dict[str, Any]] = {}
    for w in workers:
        active = now - w.at <= report_interval + ACTIVE_SLACK
        h = hosts.setdefault(w.host, {"host": w.host, "celery_nodes": set(), "processes": 0, "active": 0,
                                      "last_report_s": None, "totals": Counter(), "rates": dict.fromkeys(RATED, 0.0)})
        if w.node:
            h["celery_nodes"].add(w.node)
        h["processes"] += 1
        h["totals"].update({k: w.totals.get(k, 0) for k in NODE_COUNTED})
        age = max(0.0, now - w.at)
        h["last_report_s"] = age if h["last_report_s"] is None else min(h["last_report_s"], age)
        if active:
            h["active"] += 1
            for k in RATED:
                r = w.rate(k)
                h["rates"][k] += r
                rates[k] += r
    nodes = []
    for h in sorted(hosts.values(), key=lambda d: d["host"]):
        nodes.append({**h, "celery_nodes": sorted(h["celery_nodes"]), "totals": dict(h["totals"]),
                      "last_report_s": round(h["last_report_s"] or 0.0, 1),
                      "rates": {k: round(v, 3) for k, v in h["rates"].items()}})
    return rates, nodes


def estimate(totals: dict[str, int], rates: dict[str, float]) -> dict[str, Any] | None:
    """What is left of a running pass, from directories discovered vs processed (pure).

    Only directories already listed are known, so ``dirs_left`` is a lower bound and ``seconds_left``
    (at the current directory rate) an estimate; None when nothing has been counted yet.
    """
    done = int(totals.get(C.DIRS, 0))
    if not done:
        return None
    found = int(totals.get(C.DIRS_FOUND, 0)) + 1  # + the pass's start directory
    left = max(found - done, 0)
    rate = rates.get(C.DIRS, 0.0)
    return {"dirs_discovered": found, "dirs_processed": done, "dirs_left": left,
            "fraction_done": round(min(done / found, 1.0), 4),
            "seconds_left": round(left / rate, 1) if rate > 0 else None}


def reports_complete(finished: int | None, workers: list[WorkerStats] | None) -> bool:
    """Whether every count of a complete run has reached memcached (pure).

    ``finished``: the ledger's count of finished deliveries; ``workers``: the run's worker records. Each
    finished delivery is counted in the ledger first, then adds ``tasks`` = 1 with its other counts to
    its process's pending report, and a record holds everything its process reported, so the records'
    ``tasks`` add up to ``finished`` exactly when no process holds an unreported count. Fewer: a
    process has not reported yet, or died before it did (its counts are lost). More, or anything
    unknown: nothing can be proven.
    """
    if finished is None or workers is None:
        return False
    return sum(w.totals.get(C.TASKS, 0) for w in workers) == finished


def _unknown_because(r: RunReading) -> str | None:
    """Why reading ``r`` leaves the run's state unknown, beyond a lost ledger (which `status` shows as such)."""
    if r.broker_error is not None:
        return str(r.broker_error)
    if r.untrusted:
        return (f"{r.untrusted:,} task(s) were published while the completion ledger could not count them "
                "(memcached failed for a moment; the workers' logs say when), so its count cannot prove the run "
                f"complete; run the {r.kind} pass again to be sure that nothing was left out")
    return None


def status(settings: Settings, kind: str = "copy", run_id: str | None = None) -> PassStatus:
    """The state of the current (or given) run of pass ``kind``: counts, rates, nodes, estimate.

    "paused" is a running pass whose queues `cmover pause` stopped consuming. Totals given with
    "complete" include every worker's last report (see :func:`reports_complete` and SETTLE), and the
    ledger is read once more after them: lost meanwhile, the answer is "unknown". A broker that cannot
    be read makes a run's state "unknown" (``note`` says why); "none" (no run started) reads no broker.
    """
    settings.broker_login()  # no broker configured, no password file: ConfigError with the fix
    run = runs.resolve(settings, kind, run_id, detailed=True)  # FatalError: memcached down and no run named
    if run is None:
        return PassStatus("", kind, "none", None, {}, {})
    mc = runs.client(settings)
    ledger = runs.ledger(settings)
    r = read_run(run, mc)
    out = r.outstanding
    if out is None or r.queues is None:
        state = "unknown"
    elif any(r.queues.values()):
        state = "running"
    elif out == 0 or _settled(ledger, run.run_id, out):
        state = "complete"
        out = 0  # the exact count (a stale counter was settled by the scan)
    else:
        state = "running"
    if state == "complete":
        if not _reports_in(settings, ledger, r):
            _let_reports_settle(settings, ledger, run.run_id)
            r = reread_counters(r, mc)
        again, untrusted = ledger_count(mc, ledger, run.run_id)
        if again is None:
            # memcached lost the run (or a worker marked it) while the totals were read: they prove nothing
            state, out = "unknown", None
            r = r._replace(untrusted=untrusted)
    elif state == "running" and _paused(settings, kind):
        state = "paused"
    workers = r.workers or []
    totals = r.totals
    now = time.time()
    silent = stalled_for(out, r.queues, workers, run.started, now) if state == "running" else None
    rates, nodes = activity(workers, now, settings.report_interval)
    started = run.started if run.started is not None else now
    ended = now
    if state == "complete":
        # Nothing runs any more: no rates, and the pass lasted until its workers' last reports.
        rates = dict.fromkeys(rates, 0.0)
        for n in nodes:
            n["rates"] = dict.fromkeys(n["rates"], 0.0)
        ended = max((w.at for w in workers), default=now)
    return PassStatus(run.run_id, kind, state, out, r.queues or {}, totals, max(ended - started, 0.0), run.spec,
                      rates=rates, nodes=nodes, dead_letters=r.dead_letters or 0,
                      estimate=estimate(totals, rates) if state in ("running", "paused") else None,
                      note=_unknown_because(r) if state == "unknown" else
                      _stalled_note(kind, out or 0, silent) if silent is not None else None,
                      broker_unreadable=r.broker_error is not None, how=run.how, stalled_s=silent)


def _paused(settings: Settings, kind: str) -> bool:
    from cmover.state import pauses

    return pauses.is_paused(settings, kind)


def _reports_in(settings: Settings, ledger: Any, r: RunReading) -> bool:
    """Whether the worker records read with ``r`` already hold every count of its complete run: the ledger's
    finished count, read after them, is what they add up to (:func:`reports_complete`). Both only grow and each
    delivery is counted finished before it reports, so nothing can be missing from them: no wait, and nothing
    to read again (about 6 memcached round trips at the end of every distributed pass)."""
    return settings.stats_enabled and reports_complete(ledger.finished_count(r.run_id), r.workers)


def _let_reports_settle(settings: Settings, ledger: Any, run_id: str) -> None:
    """Wait for the last reports of a complete run: until :func:`reports_complete`, at most until SETTLE
    seconds after the run was first seen complete (by any reader)."""
    if not settings.stats_enabled:
        return  # nothing is reported
    mc = runs.client(settings)
    try:
        first = runs.first_seen_complete(settings, run_id)
    except Exception:
        return  # counters are display data: never fail a status on them
    sink = MemcacheStats(lambda: mc)
    while not reports_complete(ledger.finished_count(run_id), sink.workers(run_id)):
        left = first + SETTLE - time.time()
        if not 0 < left <= SETTLE:
            return
        time.sleep(min(REPORT_POLL, left))


def _settled(ledger: Any, run_id: str, out: int) -> bool:
    """A count stuck above 0 with empty queues, proven stale by the exact scan (see MemcacheLedger)."""
    exact = getattr(ledger, "exact_outstanding", None)
    if exact is None or out > 1000:
        return False
    try:
        return bool(exact(run_id, out) == 0)
    except Exception:
        return False


def probe_after(waited: float) -> float:
    """Seconds until `wait`'s next read of the ledger, ``waited`` seconds into the wait (pure): a hundredth of
    that, within PROBE_MIN..PROBE. A small pass is seen complete within a few ms of its end (it was 10 ms on
    average, with a fixed 20 ms: a tenth of a 10-file pass); a long one still costs memcached no more than 50
    reads a second."""
    return min(PROBE, max(PROBE_MIN, waited / 100))


def wait(settings: Settings, kind: str, run_id: str, poll: float = 1.0,
         on_progress: Callable[[PassStatus], None] | None = None, patience: float = BROKER_PATIENCE) -> PassStatus:
    """Block until the run is complete or its state is unknown; return that reading.

    A full reading (:func:`status`: ledger, queue depths, counters) every ``poll`` seconds, for the
    progress shown; in between the ledger's outstanding count alone every PROBE seconds, and a full
    reading as soon as that count drops to 0 or is lost. One "complete" reading is final: it is the
    ledger's exact count (or the exact scan of its task list) with every pass queue empty, and its
    totals include every worker's last report. A reading that is unknown only because the broker could
    not be read is not: the wait goes on reading every ``poll`` seconds, and gives such a reading back
    only once the broker has stayed unreadable for ``patience`` seconds.
    """
    ledger = runs.ledger(settings)
    began = time.monotonic()
    last = began  # the first full reading after `poll`, or as soon as the count drops to 0: a short pass needs one
    seen: int | None = -1
    unreadable_since: float | None = None
    while True:
        out = ledger.outstanding(run_id)
        if time.monotonic() - last >= poll or (not out and out != seen):
            st = status(settings, kind, run_id)
            last = time.monotonic()
            if on_progress:
                on_progress(st)
            if st.broker_unreadable:
                unreadable_since = last if unreadable_since is None else unreadable_since
                if last - unreadable_since >= patience:
                    return st
            else:
                unreadable_since = None
                if st.state in ("complete", "unknown"):
                    return st
        seen = out
        time.sleep(probe_after(time.monotonic() - began))


__all__ = ["PassStatus", "status", "wait", "probe_after", "activity", "estimate", "reports_complete", "SETTLE",
           "PROBE", "PROBE_MIN", "BROKER_PATIENCE", "ACTIVE_SLACK"]
