"""Distributed passes seen from an operator's machine: start (seed), status, wait, stop, error list.

These functions talk to RabbitMQ (through the Celery app) and to memcached (ledger and counters).
The completion answer combines the exact ledger count with the broker's queue depths: "complete"
only when the ledger says nothing is outstanding *and* no pass queue holds a ready message; "unknown"
whenever the ledger cannot vouch for its count (memcached restarted or unreachable).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from cmover import app as appmod
from cmover.errors import ConfigError, Failure, FatalError
from cmover.ledger import LedgerLost
from cmover.passes import PassKind, PassSpec
from cmover.settings import Settings
from cmover.stats import C


@dataclass
class PassStatus:
    run_id: str
    kind: str
    state: str  # running | complete | unknown | none
    outstanding: int | None
    queues: dict[str, int]
    totals: dict[str, int]
    seconds: float = 0.0
    spec: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "pass": self.kind, "state": self.state, "outstanding": self.outstanding,
                "queues": self.queues, "totals": self.totals, "seconds": round(self.seconds, 1)}


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


def _mc(settings: Settings):
    return appmod.memcache_client(settings)


def start(settings: Settings, spec: PassSpec) -> str:
    """Seed ``spec`` on the broker (after the caller's preflight); return the root task id."""
    from cmover.taskbase import seed

    check_broker(settings)
    ctx = appmod.get_context()
    try:
        mc = _mc(settings)
        mc.set(_current_key(settings, spec.kind.value), json.dumps({"spec": spec.as_dict(), "started": time.time()}),
               expire=29 * 24 * 3600)
        tid = seed(appmod.app, spec, ctx)
    except (TimeoutError, OSError, LedgerLost) as exc:
        raise FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) "
                         "or fix MEMCACHED in config.py: passes cannot be tracked without it") from None
    return tid


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
    """The state of the current (or given) run of pass ``kind``."""
    check_broker(settings)
    info = current_run(settings, kind)
    if run_id is None:
        if info is None:
            return PassStatus("", kind, "none", None, {}, {})
        run_id = info["spec"]["run_id"]
    assert run_id is not None
    ctx = appmod.get_context()
    out = ctx.ledger.outstanding(run_id)
    totals = ctx.stats.totals(run_id) or {}
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
    started = info.get("started", time.time()) if info and info["spec"]["run_id"] == run_id else time.time()
    return PassStatus(run_id, kind, state, out, depths, totals, time.time() - started,
                      info["spec"] if info else {})


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
