"""The Celery application: queues, routing, broker settings, and the per-process worker context.

One app serves both deployments. Distributed workers (``celery -A cmover.app worker``, see
scripts/run.sh) get the broker URL from the site settings when Celery first reads its configuration;
the embedded mode (:mod:`cmover.local`) calls :func:`use_embedded` first and runs an in-process worker
on the ``memory://`` transport. Importing this module opens nothing.

Broker settings follow design §7: JSON only (never pickle: it would let anyone who can publish to the
vhost run code in every worker), durable queues, persistent messages, publisher confirms, late acks
with prefetch 1, redelivery when a worker process dies, one queue per pass and kind.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_shutdown
from kombu import Exchange, Queue

from cmover import logs
from cmover.errors import ConfigError, ConfinementError, Failure
from cmover.ledger import Ledger, MemcacheLedger
from cmover.lustre import FsApi, get_fs
from cmover.passes import PassKind, PassSpec
from cmover.paths import is_within
from cmover.settings import Settings, load_settings
from cmover.stats import BatchedStats, MemcacheStats, NullStats, StatsSink

log = logging.getLogger(__name__)

#: (pass, job kind) -> task name. Queues are named after the pass and kind: cmover.<pass>.dirs|files.
TASK_NAMES: dict[tuple[str, str], str] = {
    ("copy", "dir"): "cmover.copy.dir",
    ("copy", "files"): "cmover.copy.files",
    ("copy", "chunk"): "cmover.copy.chunk",
    ("delete", "dir"): "cmover.delete.dir",
    ("delete", "files"): "cmover.delete.files",
    ("delete", "purge"): "cmover.delete.purge",
    ("dirtime", "dir"): "cmover.dirtime.dir",
}


def queue_name(kind: str, what: str) -> str:
    """``cmover.<pass>.<what>`` with what in dirs, files, dead, or ``errors.<run>``."""
    return f"cmover.{kind}.{what}"


def pass_queues(kind: str) -> list[str]:
    return [queue_name(kind, "dirs"), queue_name(kind, "files")]


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


app = Celery("cmover", include=["cmover.tasks_copy", "cmover.tasks_delete", "cmover.tasks_dirtime"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_accept_content=["json"],
    event_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,  # a killed pool child's message is redelivered, not lost
    task_acks_on_failure_or_timeout=True,
    worker_prefetch_multiplier=1,  # nothing waits unacked behind a long copy
    # A channel the broker closed (consumer_timeout under a task longer than it, design §6) is reconnected
    # like a lost connection instead of shutting the worker down. The running task is left to finish: its
    # message is requeued and may run again meanwhile elsewhere, which tasks are built to bear (a file is
    # replaced by rename, a chunk rewritten with the same bytes, the ledger counts the task done once).
    # Cancelling it instead would cancel a task longer than the timeout at every delivery, for ever.
    broker_channel_error_retry=True,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    task_default_delivery_mode="persistent",
    task_queues=[_queue(q) for kind in ("copy", "delete", "dirtime") for q in pass_queues(kind)],
    task_routes={name: {"queue": queue_name(kind, "dirs" if what == "dir" else "files")}
                 for (kind, what), name in TASK_NAMES.items()},
    task_default_queue="cmover.default",
    task_create_missing_queues=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"confirm_publish": True},
    worker_send_task_events=False,
    worker_enable_remote_control=True,
)

_embedded = False


@after_setup_logger.connect
@after_setup_task_logger.connect
def _rotating_log_file(logger: logging.Logger, logfile: str | None = None, **_: Any) -> None:
    """A worker started with ``--logfile`` writes it through a multi-process rotating handler."""
    logs.use_rotating_file(logger, logfile)


@app.on_configure.connect
def _configure_broker(sender: Celery, **_: Any) -> None:
    """Fill in the broker URL from the site settings when Celery first reads its configuration."""
    if _embedded:
        return  # use_embedded() set the broker; reading sender.conf here would recurse into configuration
    try:
        sender.conf.broker_url = settings().broker_url()
    except ConfigError as exc:
        # A worker started with a broken config must say why in one line, not with a traceback.
        print(f"cmover: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def use_embedded(jobs: int) -> None:
    """Switch the app to the embedded broker (:mod:`cmover.localbroker`), before anything reads its config."""
    global _embedded
    _embedded = True
    app.conf.update(
        broker_url="cmover-local://localhost/",
        # Nothing is lost by prefetching in one process: a few reserved tasks per pool process keep the
        # pool busy. The consumer waits inside the hub for messages; the short interval only paces
        # its loop while all prefetch slots are taken.
        broker_transport_options={"polling_interval": 0.001},
        worker_prefetch_multiplier=4,
        worker_concurrency=jobs,
        worker_hijack_root_logger=False,
    )


# -- per-process context ------------------------------------------------------------------------------

_settings: Settings | None = None
_settings_lock = threading.Lock()


def install_settings(s: Settings) -> None:
    """Use ``s`` (e.g. loaded from ``--config``) as this process's settings, broker URL included."""
    global _settings
    with _settings_lock:
        _settings = s


def settings() -> Settings:
    """This process's site settings, loaded on first use."""
    global _settings
    with _settings_lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


@dataclass
class WorkerContext:
    """What a task needs besides its message: built once per process (after fork), passed to the engine."""

    ledger: Ledger
    stats: StatsSink
    errors: Any  # ErrorSink (cmover.errorlist)
    lustreapi: str = ""  # config LUSTREAPI: the liblustreapi to load ("" = the system's)
    src_mount: bytes | None = None  # confinement roots; None in the embedded mode (spec built in-process)
    dst_mount: bytes | None = None
    pid: int = field(default_factory=os.getpid)

    def fs_for(self, spec: PassSpec, tally: Counter[str]) -> FsApi:
        """How one task of pass ``spec`` creates target entries (Lustre layouts or plain POSIX)."""
        return get_fs(spec.src_root, spec.dst_root, spec.layout, spec.restripe, tally, self.lustreapi)

    def check_spec(self, spec: PassSpec) -> None:
        """Refuse a message whose pass roots lie outside this worker's configured mounts."""
        if self.src_mount is None or self.dst_mount is None:
            return
        if not is_within(spec.src_root, self.src_mount) or not is_within(spec.dst_root, self.dst_mount):
            raise ConfinementError(
                f"pass roots {spec.src_root!r} -> {spec.dst_root!r} are outside the configured "
                f"source_mount/target_mount {self.src_mount!r} -> {self.dst_mount!r}"
            )
        if is_within(spec.dst_root, spec.src_root) or is_within(spec.src_root, spec.dst_root):
            raise ConfinementError("pass source and target roots overlap")


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A pool child must not inherit a lock another thread of its parent held at fork time.
    global _context_lock, _settings_lock
    _context_lock = threading.Lock()
    _settings_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def install_context(ctx: WorkerContext) -> None:
    """Use ``ctx`` in this process (the embedded runner and tests)."""
    global _context
    _context = ctx


def memcache_client(s: Settings):
    """A thread-safe pymemcache client with timeouts (an unresponsive server must not hang a worker)."""
    from pymemcache.client.base import PooledClient

    host, _, port = s.memcached.rpartition(":")
    return PooledClient((host or "127.0.0.1", int(port or 11211)), connect_timeout=3, timeout=10,
                        default_noreply=False, max_pool_size=64)


def get_context() -> WorkerContext:
    """This process's context, built on first use in each process (pool children rebuild after fork)."""
    global _context
    with _context_lock:
        if _context is None or _context.pid != os.getpid():
            if _embedded:
                _context = embedded_context()
                return _context
            from cmover.errorlist import BrokerErrors

            s = settings()
            _context = WorkerContext(
                ledger=MemcacheLedger(lambda: memcache_client(s)),
                stats=(BatchedStats(MemcacheStats(lambda: memcache_client(s)), s.report_interval)
                       if s.stats_enabled else NullStats()),
                errors=BrokerErrors(app),
                lustreapi=s.lustreapi,
                src_mount=os.fsencode(s.source_mount),
                dst_mount=os.fsencode(s.target_mount),
            )
            # Every entry cmover creates gets an explicit mode; a umask would only distort mkdir/mknod.
            os.umask(0)
        return _context


@worker_process_shutdown.connect
def _report_counts_at_exit(**_: Any) -> None:
    """A pool process that exits (warm shutdown, pool shrink) reports the counts it still holds."""
    ctx = _context
    if ctx is not None and ctx.pid == os.getpid():
        flush = getattr(ctx.stats, "flush", None)
        if flush is not None:
            flush()


def embedded_context() -> WorkerContext:
    """Context of an embedded run's processes: ledger, counters and errors in the run's hub."""
    from cmover.localbroker import HubErrors, HubLedger, HubStats

    return WorkerContext(ledger=HubLedger(), stats=HubStats(), errors=HubErrors(),
                         lustreapi=_settings.lustreapi if _settings is not None else "")


__all__ = ["app", "TASK_NAMES", "PassKind", "Failure", "get_context", "install_context", "use_embedded"]

from cmover import steer  # noqa: E402,F401  (last: workers connect its handlers that keep a paused pass paused)
