"""A distributed run's records in memcached: the current run of each pass, each run's spec, its start time.

`cmover start` records the run it seeds (:func:`record_start`) twice: as the pass's *current run*
(``cm:<USERNAME>:current:<pass>``: the spec and the start time; per site, because several migrations may
share one memcached) and under its own id (``cm:<run>:spec``), so that an older run can still be named
with ``--run``. Every command that works on "the given run, else the pass's current one" asks
:func:`resolve`: the one place that decides which run a command means.

The other per-run records the operator side keeps here: when a complete run was first seen complete
(:func:`first_seen_complete`, how long `status` waits for the workers' last reports) and the mark a
worker leaves when it published a task its ledger could not count (:func:`untrusted_key`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from cmover.core.errors import ConfigError, FatalError
from cmover.core.frozen import NamedTuple
from cmover.core.passes import PassSpec
from cmover.core.settings import Settings
from cmover.state import keys
from cmover.state.ledger import MemcacheLedger
from cmover.worker.taskbase import UNTRUSTED

#: memcached reads an expiry above 30 days as an absolute Unix time: stay below it.
TTL = 29 * 24 * 3600


class RunRecord(NamedTuple):
    """One run of a pass as the operator side knows it.

    ``spec`` is the pass spec as recorded (:meth:`PassSpec.as_dict`) and ``started`` the Unix time
    `cmover start` recorded it; both are known only for the current run of its pass ({} and None for
    a run named by id that is no longer, or cannot be read as, the current one).
    """

    run_id: str
    kind: str
    spec: dict[str, Any]  # {} when not known
    started: float | None = None
    how: str = ""  # what drove the pass when --changes was given: the journal's one line, or why it walked


def client(settings: Settings) -> Any:
    """The process's memcached client of the site (:func:`cmover.state.keys.memcache_client`: one per server
    and process, thread-safe): `status --watch` and `wait` read several times a second."""
    return keys.memcache_client(settings)


def ledger(settings: Settings) -> MemcacheLedger:
    """The completion ledger of the site, read through :func:`client`."""
    return MemcacheLedger(lambda: client(settings))


def _unreachable(settings: Settings, exc: BaseException, why: str = "") -> FatalError:
    return FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) or fix "
                      f"MEMCACHED in config.py{why}")


def _current_key(settings: Settings, kind: str) -> str:
    return keys.current_run(settings.username, kind)


def _spec_key(run_id: str) -> str:
    return keys.run_key(run_id, "spec")


def complete_key(run_id: str) -> str:
    """When the run was first seen complete (see :func:`first_seen_complete`); a retry removes it."""
    return keys.run_key(run_id, "complete_at")


def untrusted_key(run_id: str) -> str:
    """The run's ledger counter :data:`cmover.worker.taskbase.UNTRUSTED` (``Ledger.incr`` keeps it here): how
    many tasks were published while the ledger could not count them -- at most: an ``incr`` that timed out on a
    memcached that was only frozen is applied when it wakes, and the mark is written again. Present, the
    ledger's count cannot prove the run complete."""
    return keys.ledger_counter(run_id, UNTRUSTED)


def record_start(settings: Settings, spec: PassSpec, how: str = "") -> None:
    """Record ``spec`` as the current run of its pass, started now, and under its id (``how``: see
    :class:`RunRecord`).

    Raises what the memcached client raises (OSError, TimeoutError): the caller says what it means.
    """
    mc = client(settings)
    doc = {"spec": spec.as_dict(), "started": time.time(), "how": how}
    mc.set(_current_key(settings, spec.kind.value), json.dumps(doc), expire=TTL)
    mc.set(_spec_key(spec.run_id), json.dumps(spec.as_dict()), expire=TTL)


def current(settings: Settings, kind: str) -> RunRecord | None:
    """The current run of pass ``kind``, None when none was started; FatalError with the fix when memcached
    cannot be read."""
    try:
        raw = client(settings).get(_current_key(settings, kind))
    except Exception as exc:
        raise _unreachable(settings, exc) from None
    if not raw:
        return None
    info = json.loads(raw)
    spec = info["spec"]
    return RunRecord(str(spec["run_id"]), kind, spec, info.get("started"), str(info.get("how") or ""))


def resolve(settings: Settings, kind: str, run_id: str | None = None, *, detailed: bool = False) -> RunRecord | None:
    """The run a command means: ``run_id`` when given, else the current run of pass ``kind``.

    None when no run is given and none was started. With no ``run_id``, memcached must answer
    (FatalError with the fix). A given ``run_id`` is taken as it is and nothing is read, unless
    ``detailed``: then its spec and start time are looked up (it may be the current run), and a
    memcached that cannot be read leaves them unknown (the run's state is then read as unknown).
    """
    if run_id is None:
        return current(settings, kind)
    if detailed:
        try:
            cur = current(settings, kind)
        except FatalError:
            cur = None
        if cur is not None and cur.run_id == run_id:
            return cur
    return RunRecord(run_id, kind, {})


def spec_of(settings: Settings, kind: str, run_id: str | None = None) -> PassSpec:
    """The spec of run ``run_id`` (default: the current run of pass ``kind``, :func:`resolve`); ConfigError when
    no run was started or the id is unknown, FatalError when memcached cannot be read."""
    run = resolve(settings, kind, run_id)
    if run is None:
        raise ConfigError(f"no {kind} pass has been started; start one with `cmover start {kind}`")
    if run.spec:
        return PassSpec.from_dict(run.spec)
    try:
        raw = client(settings).get(_spec_key(run.run_id))
    except Exception as exc:
        raise _unreachable(settings, exc) from None
    if raw is None:
        raise ConfigError(f"run {run.run_id} is not known to memcached at {settings.memcached}; check the id "
                          f"with `cmover status {kind}`")
    return PassSpec.from_dict(json.loads(raw))


def first_seen_complete(settings: Settings, run_id: str) -> float:
    """The Unix time any reader first saw run ``run_id`` complete (now, when this is the first); raises what
    the memcached client raises."""
    mc = client(settings)
    mc.add(complete_key(run_id), repr(time.time()), expire=TTL, noreply=False)
    return float(mc.get(complete_key(run_id)) or 0)


__all__ = ["RunRecord", "TTL", "client", "ledger", "record_start", "current", "resolve", "spec_of",
           "first_seen_complete", "complete_key", "untrusted_key"]
