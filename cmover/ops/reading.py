"""One reading of a distributed run: what `cmover status`, ``send_graphite.py`` and `cmover exporter` show.

:func:`read_run` reads a run once -- the ledger's count of outstanding tasks, the pass's queue depths
and dead letters on the broker, the run's counters and worker records in memcached -- into a
:class:`RunReading`. `cmover status` decides the run's state from it (:mod:`cmover.ops.status`); the two
exporters turn it into a :class:`PassReading` (:func:`read_passes`). A counter added to
:data:`cmover.core.counters.C.ALL` or a queue added to the pass's queues thus shows in all three.

Nothing here raises on a service that cannot be read: the part it could not read is None (and the
broker's error is kept), so each reader applies its own rule. Status says "unknown"; the exporters
report the service as down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from cmover.core.counters import C
from cmover.core.errors import FatalError
from cmover.core.frozen import NamedTuple
from cmover.core.passes import PassKind
from cmover.core.settings import Settings
from cmover.ops import broker, runs
from cmover.ops.broker import BrokerUnreadable
from cmover.ops.runs import RunRecord
from cmover.state import keys, pauses
from cmover.state.ledger import MemcacheLedger
from cmover.state.runstats import MemcacheStats, WorkerStats, merge_totals

#: Counters whose rates `cmover status` shows (per second, over about the last minute), and that the exporters
#: send per node.
RATED: tuple[str, ...] = (C.DIRS, C.SCANNED, C.COPIED, C.BYTES, C.DELETED, C.DIRTIMES, C.FAILED)
#: Counters summed per node for `cmover status` (each pass's node table shows its own): the rated ones, and
#: what the delete and dirtime passes count besides.
NODE_COUNTED: tuple[str, ...] = RATED + (C.KEPT, C.WOULD_DELETE, C.DIRS_MISSING)

#: The pass kinds, in the order the exporters collect their metrics.
PASSES: tuple[str, ...] = tuple(k.value for k in PassKind)


class RunReading(NamedTuple):
    """A run as read at one moment; None for what could not be read.

    ``outstanding``: the ledger's count of tasks published and not done, None while the ledger cannot
    vouch for it (memcached unreachable or restarted, or ``untrusted``). ``untrusted``: tasks published
    while the ledger could not count them (:func:`cmover.ops.runs.untrusted_key`). ``queues``: ready
    messages per pass queue and ``dead_letters`` in the pass's dead-letter queue (of every run of the
    pass), both None with ``broker_error`` set when the broker could not be read. ``counters`` and
    ``workers``: the run's counters and worker records in memcached.
    """

    run: RunRecord
    outstanding: int | None
    untrusted: int = 0
    queues: dict[str, int] | None = None
    dead_letters: int | None = None
    broker_error: BrokerUnreadable | None = None
    counters: dict[str, int] | None = None
    workers: list[WorkerStats] | None = None

    @property
    def kind(self) -> str:
        return self.run.kind

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def totals(self) -> dict[str, int]:
        """The run's cumulative counts (counters and worker records merged), the counters counted so far."""
        return merge_totals(self.counters or {}, self.workers or [])


def ledger_count(mc: Any, ledger: Any, run_id: str) -> tuple[int | None, int]:
    """``(outstanding, untrusted)`` of run ``run_id`` (see :class:`RunReading`); never raises."""
    try:
        marked = mc.get(runs.untrusted_key(run_id))
    except Exception:
        return None, 0  # memcached cannot be read: nor can the ledger
    if marked is not None:
        return None, max(int(marked), 1)
    return ledger.outstanding(run_id), 0


def read_counters(mc: Any, run_id: str) -> tuple[dict[str, int] | None, list[WorkerStats] | None]:
    """The run's counters and worker records (one read of each); None for what memcached could not give."""
    stats = MemcacheStats(lambda: mc)
    counters = stats.run_counters(run_id)
    return counters, stats.workers(run_id) if counters is not None else None


def read_run(run: RunRecord, mc: Any) -> RunReading:
    """Read ``run`` now through the memcached client ``mc`` and the Celery app's broker (configured for the
    same site: :func:`cmover.app.install_settings`): ledger first, then the queues, then the counters."""
    outstanding, untrusted = ledger_count(mc, MemcacheLedger(lambda: mc), run.run_id)
    queues: dict[str, int] | None = None
    dead: int | None = None
    error: BrokerUnreadable | None = None
    try:
        queues, dead = broker.pass_depths(run.kind)
    except BrokerUnreadable as exc:
        queues, dead, error = None, None, exc
    counters, workers = read_counters(mc, run.run_id)
    return RunReading(run, outstanding, untrusted, queues, dead, error, counters, workers)


def reread_counters(reading: RunReading, mc: Any) -> RunReading:
    """``reading`` with its counters and worker records read again (the rest as it was)."""
    counters, workers = read_counters(mc, reading.run_id)
    return reading._replace(counters=counters, workers=workers)


# -- the exporters' view --------------------------------------------------------------------------------------


def node_totals(workers: Iterable[WorkerStats]) -> dict[str, dict[str, int]]:
    """host -> every counter of :data:`RATED` summed over that host's worker records (pure).

    A counter a record lacks counts 0; hosts are sorted. The same per-node totals as ``cmover status``.
    """
    nodes: dict[str, dict[str, int]] = {}
    for w in workers:
        sums = nodes.setdefault(w.host, dict.fromkeys(RATED, 0))
        for name in RATED:
            sums[name] += int(w.totals.get(name, 0))
    return dict(sorted(nodes.items()))


class ReadError(FatalError):
    """memcached or the broker could not be read; ``str()`` is the one-line message with the fix.

    ``service`` names which: ``"memcached"`` or ``"broker"``.
    """

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


class PassReading(NamedTuple):
    """One pass kind's current run as the exporters send it: a complete :class:`RunReading`, flattened.

    ``totals`` holds every name of :data:`cmover.core.counters.C.ALL` (0 while a counter is still absent);
    ``queues`` maps each pass queue (``cmover.<pass>.dirs|files``) to its ready messages, by name;
    ``outstanding`` is the completion ledger's count of tasks published and not done, None while the
    ledger cannot vouch for it; ``nodes`` maps each host that reported for the run to every counter of
    :data:`RATED` summed over its worker records (:func:`node_totals`); ``paused``: `cmover pause` holds the
    pass on every worker (:func:`cmover.state.pauses.is_paused`), so that no task finishing is expected.
    """

    kind: str
    run_id: str
    totals: dict[str, int]
    queues: dict[str, int]
    outstanding: int | None
    nodes: Mapping[str, dict[str, int]] = MappingProxyType({})
    paused: bool = False

    @classmethod
    def of(cls, r: RunReading, settings: Settings, paused: bool = False) -> PassReading:
        """The view of ``r``; :class:`ReadError` naming the service and the fix when part of it is missing."""
        if r.counters is None or r.workers is None:
            raise ReadError("memcached", f"cannot read the counters of run {r.run_id} from memcached at "
                            f"{settings.memcached}; check that memcached is running (memcached -M) and "
                            "MEMCACHED in config.py")
        if r.queues is None:
            reason = r.broker_error.reason if r.broker_error else "not read"
            raise ReadError("broker", f"cannot read the {r.kind} queue depths from the broker at "
                            f"{settings.broker_host} ({reason}); start RabbitMQ there or fix "
                            "rabbitmq/rabbitmq.conf")
        totals = r.totals
        return cls(r.kind, r.run_id, {name: int(totals.get(name, 0)) for name in C.ALL}, dict(sorted(r.queues.items())),
                   r.outstanding, node_totals(r.workers), paused)


def read_passes(settings: Settings) -> list[PassReading]:
    """The current run of every pass kind that has one (in :data:`PASSES` order), read now.

    Reads memcached (``settings.memcached``) first, then checks the broker of the Celery app, which must
    be configured for the same site (:func:`cmover.app.install_settings`), once, then reads each run
    (:func:`read_run`). Raises :class:`ReadError` naming the service and the fix when memcached or the
    broker cannot be reached or read; nothing is returned in part.
    """
    try:
        current = [r for kind in PASSES if (r := runs.current(settings, kind)) is not None]
    except FatalError as exc:
        raise ReadError("memcached", str(exc)) from None
    try:
        broker.check_broker(settings)
    except FatalError as exc:  # ConfigError: unreachable, or no broker configured for the site
        raise ReadError("broker", str(exc)) from None
    mc = keys.memcache_client(settings)  # for the counters and the ledger; its idle connections closed below
    try:
        return [PassReading.of(read_run(run, mc), settings, pauses.is_paused(settings, run.kind)) for run in current]
    finally:
        mc.close()


__all__ = ["RATED", "NODE_COUNTED", "PASSES", "RunReading", "read_run", "reread_counters", "ledger_count",
           "read_counters", "node_totals", "PassReading", "ReadError", "read_passes"]
