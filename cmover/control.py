"""Distributed passes seen from an operator's machine: start (seed), status, wait, stop, error list.

These functions talk to RabbitMQ (through the Celery app) and to memcached (ledger and counters).
The completion answer combines the exact ledger count with the broker's queue depths: "complete"
only when the ledger says nothing is outstanding *and* no pass queue holds a ready message; "unknown"
whenever the ledger cannot vouch for its count (memcached restarted or unreachable).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cmover import app as appmod
from cmover.errors import ConfigError, Failure, FatalError
from cmover.ledger import LedgerLost
from cmover.passes import PassKind, PassSpec
from cmover.settings import Settings
from cmover.stats import C, MemcacheStats, WorkerStats, merge_totals

log = logging.getLogger(__name__)

#: Counters whose rates `cmover status` shows (per second, over about the last minute).
RATED: tuple[str, ...] = (C.DIRS, C.SCANNED, C.COPIED, C.BYTES, C.DELETED, C.DIRTIMES, C.FAILED)

#: A worker process that has not reported for REPORT_INTERVAL plus this many seconds is idle (or gone).
ACTIVE_SLACK = 10.0

#: Seconds after a run is first seen complete during which `status` waits for the workers' last
#: reports (they report pending counts once idle for 0.25 s) before it gives the final totals.
SETTLE = 2.0


@dataclass
class PassStatus:
    """One pass run as `cmover status` shows it. Counts are cumulative; rates per second."""

    run_id: str
    kind: str
    state: str  # running | paused | complete | unknown | none
    outstanding: int | None
    queues: dict[str, int]
    totals: dict[str, int]
    seconds: float = 0.0
    spec: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: int = 0  # messages in the pass's dead-letter queue (every run of the pass)
    estimate: dict[str, Any] | None = None

    @property
    def open_errors(self) -> int:
        """Failures recorded and not yet taken by `cmover retry-failed` (what `cmover errors` lists)."""
        return max(0, int(self.totals.get(C.FAILED, 0)) - int(self.totals.get(C.RETRIED, 0)))

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "pass": self.kind, "state": self.state, "outstanding": self.outstanding,
                "queues": self.queues, "totals": self.totals, "seconds": round(self.seconds, 1),
                "rates": {k: round(v, 3) for k, v in self.rates.items()}, "nodes": self.nodes,
                "errors": self.open_errors, "dead_letters": self.dead_letters,
                "estimate": self.estimate}


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
        h["totals"].update({k: w.totals.get(k, 0) for k in RATED})
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


def check_broker(settings: Settings) -> None:
    """Connect once to the broker; ConfigError with the fix when it cannot be reached."""
    settings.broker_url()  # missing password file etc. -> ConfigError
    try:
        with appmod.app.connection() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except Exception as exc:
        raise ConfigError(
            f"cannot reach the broker at {settings.broker_host} ({exc}); start RabbitMQ there or fix "
            f"rabbitmq/rabbitmq.conf, and check the vhost/user with rabbitmq/rabbitmq_init.sh"
        ) from None


_clients: dict[tuple[str, int], Any] = {}


def _mc(settings: Settings):
    """One memcached client per server and process (thread-safe, reconnects by itself), not one per call:
    `status --watch` and the exporter read several times a second."""
    key = (settings.memcached, os.getpid())
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = appmod.memcache_client(settings)
    return client


def start(settings: Settings, spec: PassSpec) -> str:
    """Seed ``spec`` on the broker (after the caller's preflight); return the root task id."""
    from cmover.taskbase import seed

    check_broker(settings)
    ctx = appmod.get_context()
    try:
        mc = _mc(settings)
        mc.set(_current_key(settings, spec.kind.value), json.dumps({"spec": spec.as_dict(), "started": time.time()}),
               expire=29 * 24 * 3600)
        mc.set(_spec_key(spec.run_id), json.dumps(spec.as_dict()), expire=29 * 24 * 3600)
        tid = seed(appmod.app, spec, ctx)
    except (TimeoutError, OSError, LedgerLost) as exc:
        raise FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) "
                         "or fix MEMCACHED in config.py: passes cannot be tracked without it") from None
    return tid


def _spec_key(run_id: str) -> str:
    return f"cm:{run_id}:spec"


def run_spec(settings: Settings, run_id: str | None, kind: str) -> PassSpec:
    """The spec of run ``run_id`` (default: the current run of pass ``kind``); ConfigError when unknown."""
    if run_id is None:
        info = current_run(settings, kind)
        if info is None:
            raise ConfigError(f"no {kind} pass has been started; start one with `cmover start {kind}`")
        spec_d = info["spec"]
    else:
        try:
            raw = _mc(settings).get(_spec_key(run_id))
        except Exception as exc:
            raise FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) or "
                             "fix MEMCACHED in config.py") from None
        if raw is None:
            raise ConfigError(f"run {run_id} is not known to memcached at {settings.memcached}; check the id "
                              f"with `cmover status {kind}`")
        spec_d = json.loads(raw)
    return PassSpec.from_dict(spec_d)


def retry_failed(settings: Settings, kind: str, run_id: str | None = None) -> tuple[PassSpec, Any]:
    """Publish the failed items of the run again (see :mod:`cmover.retry`); return the spec and the plan."""
    from cmover.errorlist import BrokerErrors
    from cmover.retry import plan_retry
    from cmover.taskbase import job_task_id

    check_broker(settings)
    spec = run_spec(settings, run_id, kind)
    ctx = appmod.get_context()
    errors_ = BrokerErrors(appmod.app)
    with errors_.take(spec.run_id) as (failures, commit):
        plan = plan_retry(spec, failures)
        if plan.jobs:
            try:
                attempt = ctx.ledger.incr(spec.run_id, "retries", 1)
                _mc(settings).delete(f"cm:{spec.run_id}:complete_at", noreply=False)
            except (TimeoutError, OSError, LedgerLost) as exc:
                raise FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it "
                                 "(memcached -M): a retry cannot be tracked without it") from None
            retry = dataclasses.replace(spec, attempt=attempt)
            spec_d = retry.as_dict()
            for job in plan.jobs:
                tid = job_task_id(retry, job)
                ctx.ledger.enqueue(spec.run_id, tid)
                appmod.app.send_task(appmod.TASK_NAMES[(spec.kind.value, job.kind)],
                                     args=[spec_d, *job.wire_args()], task_id=tid)
        if plan.unusable:
            errors_.record(spec.run_id, plan.unusable)  # kept on the list as they were
        commit()
    resolved = plan.retried + len(plan.gone)
    if resolved:
        try:
            MemcacheStats(lambda: _mc(settings)).add_to_run(spec.run_id, Counter({C.RETRIED: resolved}))
        except Exception as exc:  # the retry is published: only the display of what it settled is off
            log.warning("could not count %d retried failure(s) in memcached: %s", resolved, exc)
    return spec, plan


def _current_key(settings: Settings, kind: str) -> str:
    # Per site (USERNAME is the vhost): several migrations may share one memcached.
    return f"cm:{settings.username}:current:{kind}"


def current_run(settings: Settings, kind: str) -> dict[str, Any] | None:
    try:
        raw = _mc(settings).get(_current_key(settings, kind))
    except Exception as exc:
        raise FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) or fix "
                         "MEMCACHED in config.py") from None
    return json.loads(raw) if raw else None


def queue_depths(kind: str) -> dict[str, int]:
    """Ready messages per pass queue, read directly from the broker (not the sampled management stats)."""
    depths: dict[str, int] = {}
    with appmod.app.connection_for_read() as conn:
        for q in appmod.pass_queues(kind):
            ch = conn.channel()
            try:
                _, n, _ = ch.queue_declare(q, passive=True)
                depths[q] = int(n)
            except Exception:
                depths[q] = 0  # never declared: no worker has ever consumed it, nothing published
            finally:
                try:
                    ch.close()
                except Exception:
                    pass
    return depths


def status(settings: Settings, kind: str = "copy", run_id: str | None = None) -> PassStatus:
    """The state of the current (or given) run of pass ``kind``: counts, rates, nodes, estimate.

    "paused" is a running pass whose queues `cmover pause` stopped consuming. Totals given with
    "complete" include every worker's last report (see SETTLE).
    """
    check_broker(settings)
    try:
        info = current_run(settings, kind)
    except FatalError:
        if run_id is None:
            raise  # memcached unreachable and no run named: nothing to report on
        info = None  # the named run's ledger is unreachable: its state is "unknown" below, never "complete"
    if run_id is None:
        if info is None:
            return PassStatus("", kind, "none", None, {}, {})
        run_id = info["spec"]["run_id"]
    assert run_id is not None
    ctx = appmod.get_context()
    out = ctx.ledger.outstanding(run_id)
    depths = queue_depths(kind)
    if out is None:
        state = "unknown"
    elif any(depths.values()):
        state = "running"
    elif out == 0 or _settled(ctx.ledger, run_id, out):
        state = "complete"
        out = 0  # the exact count (a stale counter was settled by the scan)
    else:
        state = "running"
    if state == "complete":
        _let_reports_settle(settings, run_id)
    elif state == "running" and _paused(settings, kind):
        state = "paused"
    sink = MemcacheStats(lambda: _mc(settings))
    counters = sink.run_counters(run_id) or {}
    workers = sink.workers(run_id) or []
    totals = merge_totals(counters, workers)
    now = time.time()
    rates, nodes = activity(workers, now, settings.report_interval)
    started = info.get("started", now) if info and info["spec"]["run_id"] == run_id else now
    ended = now
    if state == "complete":
        # Nothing runs any more: no rates, and the pass lasted until its workers' last reports.
        rates = dict.fromkeys(rates, 0.0)
        for n in nodes:
            n["rates"] = dict.fromkeys(n["rates"], 0.0)
        ended = max((w.at for w in workers), default=now)
    return PassStatus(run_id, kind, state, out, depths, totals, max(ended - started, 0.0),
                      info["spec"] if info else {},
                      rates=rates, nodes=nodes, dead_letters=dead_letter_depth(kind),
                      estimate=estimate(totals, rates) if state in ("running", "paused") else None)


def _paused(settings: Settings, kind: str) -> bool:
    from cmover import steer

    return steer.is_paused(settings, kind)


def _let_reports_settle(settings: Settings, run_id: str) -> None:
    """Wait until SETTLE seconds have passed since the run was first seen complete (by any reader)."""
    try:
        mc = _mc(settings)
        key = f"cm:{run_id}:complete_at"
        mc.add(key, repr(time.time()), expire=29 * 24 * 3600, noreply=False)
        first = float(mc.get(key) or 0)
    except Exception:
        return  # counters are display data: never fail a status on them
    left = first + SETTLE - time.time()
    if 0 < left <= SETTLE:
        time.sleep(left)


def dead_letter_depth(kind: str) -> int:
    """Messages in ``cmover.<kind>.dead`` (0 when the queue was never declared)."""
    with appmod.app.connection_for_read() as conn:
        ch = conn.channel()
        try:
            _, n, _ = ch.queue_declare(appmod.queue_name(kind, "dead"), passive=True)
            return int(n)
        except Exception:
            return 0
        finally:
            try:
                ch.close()
            except Exception:
                pass


def _settled(ledger: Any, run_id: str, out: int) -> bool:
    """A count stuck above 0 with empty queues, proven stale by the exact scan (see MemcacheLedger)."""
    exact = getattr(ledger, "exact_outstanding", None)
    if exact is None or out > 1000:
        return False
    try:
        return bool(exact(run_id, out) == 0)
    except Exception:
        return False


def wait(settings: Settings, kind: str, run_id: str, poll: float = 1.0, on_progress=None) -> PassStatus:
    """Block until the run is complete (two consecutive complete readings) or its state is unknown."""
    confirmed = 0
    while True:
        st = status(settings, kind, run_id)
        if on_progress:
            on_progress(st)
        if st.state == "complete":
            confirmed += 1
            if confirmed >= 2:
                return st
        else:
            confirmed = 0
            if st.state == "unknown":
                return st
        time.sleep(poll)


def errors(settings: Settings, run_id: str, limit: int = 10_000) -> tuple[list[Failure], int]:
    from cmover.errorlist import BrokerErrors

    return BrokerErrors(appmod.app).read(run_id, limit)


def stop() -> None:
    """Warm shutdown of every worker of this vhost: running tasks finish, queued ones stay queued."""
    appmod.app.control.broadcast("shutdown")


def failed_count(totals: dict[str, int]) -> int:
    return int(totals.get(C.FAILED, 0))


__all__ = ["PassKind", "start", "status", "wait", "stop", "errors"]
