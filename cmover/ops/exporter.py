"""The Prometheus endpoint: ``cmover exporter`` serves the counters of each pass's current run over HTTP.

The same readings as ``send_graphite.py`` and `cmover status` (:func:`cmover.ops.reading.read_passes`), taken
afresh on every scrape, never cached:

- ``cmover_<counter>_total{pass,run}`` (counter) for every name in :data:`cmover.core.counters.C.ALL`: the
  cumulative totals of the pass's current run (0 while a counter is still absent). A new run of a pass
  is a new ``run`` label, so the series of a run only go up.
- ``cmover_node_<counter>_total{pass,run,host}`` (counter) for every name in :data:`cmover.ops.reading.RATED`:
  the part of those totals counted on one node (a host of worker processes), summed over the run's worker
  records of that host (0 while absent); ``host`` is the host name as the workers report it.
- ``cmover_queue_messages{pass,queue}`` (gauge): ready messages per pass queue, read from the broker.
- ``cmover_outstanding_tasks{pass}`` (gauge): tasks published and not done, the completion ledger's
  count; absent while the ledger cannot vouch for it.
- ``cmover_pass_paused{pass}`` (gauge): 1 while `cmover pause` holds the pass on every worker, else 0 (the
  no-progress alert stays quiet during a pause).
- ``cmover_up`` (gauge): 1 when memcached and the broker were read, 0 when not. Then the scrape still
  answers (HTTP 200) with ``cmover_scrape_error_info{service,message} 1`` naming the service
  (``memcached``, ``broker``, or ``exporter`` for a fault of the exporter itself) and the fix, and
  without any pass metric. The reason is logged once per outage, and again when it is over.
- ``cmover_scrape_duration_seconds`` (gauge): how long the reading took.

A pass that has never been started has no metrics. Only a dedicated registry is served (nothing of the
process-wide default one), by prometheus_client's own threaded HTTP server; readings are serialized, so
concurrent scrapes never multiply the load on memcached and the broker.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from cmover.core.counters import C
from cmover.core.errors import EXIT_OK, ConfigError
from cmover.core.settings import Settings
from cmover.ops.reading import RATED, PassReading, ReadError, read_passes

log = logging.getLogger(__name__)

#: The port ``cmover exporter`` listens on unless told otherwise.
DEFAULT_PORT = 9477

#: The address it listens on unless told otherwise: only this machine can scrape until the operator opens it.
DEFAULT_LISTEN = "127.0.0.1"


class PassCollector(Collector):
    """Turns one reading per scrape into metric families; ``read`` is called on every :meth:`collect`.

    ``read`` returns the current runs (:func:`cmover.ops.reading.read_passes` in production). A
    :class:`~cmover.ops.reading.ReadError` or any other exception it raises becomes ``cmover_up 0`` with
    ``cmover_scrape_error_info``; :meth:`collect` itself never raises. Thread-safe.
    """

    def __init__(self, read: Callable[[], list[PassReading]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._down: str | None = None  # the service of the outage logged last; None while all is well

    def collect(self) -> Iterable[Metric]:
        # The whole reading under the lock, returned as a list: a scrape that is abandoned half-way can
        # never leave the lock held.
        with self._lock:
            t0 = time.monotonic()
            try:
                readings = self._read()
            except ReadError as exc:
                return self._failed(exc.service, str(exc), t0, traceback=False)
            except Exception as exc:  # a fault of ours: say so in the scrape instead of an HTTP 500
                return self._failed("exporter", f"{type(exc).__name__}: {exc}", t0, traceback=True)
            if self._down is not None:
                log.warning("memcached and the broker answer again: scrapes report cmover_up 1")
                self._down = None
            return [*pass_families(readings), _up(1), _duration(t0)]

    def _failed(self, service: str, message: str, t0: float, *, traceback: bool) -> list[Metric]:
        if self._down != service:
            log.warning("%s; scrapes report cmover_up 0 until this is fixed", message, exc_info=traceback)
            self._down = service
        info = InfoMetricFamily("cmover_scrape_error", "why cmover_up is 0: the service that failed and the fix",
                                labels=["service", "message"])
        info.add_metric([service, message], {})
        return [_up(0), info, _duration(t0)]


def _up(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily("cmover_up", "1 when memcached and the broker were read, 0 when not "
                             "(see cmover_scrape_error_info)", value=value)


def _duration(t0: float) -> GaugeMetricFamily:
    return GaugeMetricFamily("cmover_scrape_duration_seconds", "seconds this scrape spent reading memcached and "
                             "the broker", value=time.monotonic() - t0)


def pass_families(readings: list[PassReading]) -> list[Metric]:
    """The metric families of ``readings``: every counter of :data:`C.ALL`, the per-node counters of
    :data:`cmover.ops.reading.RATED`, queue depths, outstanding tasks, whether the pass is paused.

    Every family is returned, empty when no pass has a current run, so the metric names are always listed.
    """
    families: list[Metric] = []
    for name in C.ALL:
        fam = CounterMetricFamily(f"cmover_{name}", f"cmover counter {name} of the pass's current run "
                                  "(restarts at 0 under a new run label)", labels=["pass", "run"])
        for r in readings:
            fam.add_metric([r.kind, r.run_id], r.totals.get(name, 0))
        families.append(fam)
    for name in RATED:
        fam = CounterMetricFamily(f"cmover_node_{name}", f"cmover counter {name} of the pass's current run "
                                  "counted on one host (restarts at 0 under a new run label)",
                                  labels=["pass", "run", "host"])
        for r in readings:
            for host, sums in r.nodes.items():
                fam.add_metric([r.kind, r.run_id, host], sums.get(name, 0))
        families.append(fam)
    queues = GaugeMetricFamily("cmover_queue_messages", "ready messages in the pass's broker queue",
                               labels=["pass", "queue"])
    outstanding = GaugeMetricFamily("cmover_outstanding_tasks", "tasks of the pass's current run published and "
                                    "not done (absent while the ledger cannot vouch for its count)",
                                    labels=["pass"])
    paused = GaugeMetricFamily("cmover_pass_paused", "1 while `cmover pause` holds the pass on every worker, "
                               "else 0", labels=["pass"])
    for r in readings:
        for q, n in r.queues.items():
            queues.add_metric([r.kind, q], n)
        if r.outstanding is not None:
            outstanding.add_metric([r.kind], r.outstanding)
        paused.add_metric([r.kind], int(r.paused))
    return [*families, queues, outstanding, paused]


def make_registry(read: Callable[[], list[PassReading]]) -> tuple[CollectorRegistry, PassCollector]:
    """A registry of its own holding only a :class:`PassCollector` of ``read`` (nothing is read yet)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = PassCollector(read)
    registry.register(collector)
    return registry, collector


def serve(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve ``registry`` on ``host:port`` from prometheus_client's threaded HTTP server; return the server.

    Port 0 picks a free port (``server.server_port``). Raises :class:`ConfigError` naming the fix when it
    cannot listen there.
    """
    where = f"{host}:{port}"
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where} ({exc.strerror}); give --listen an address of this machine "
                          "(127.0.0.1, or 0.0.0.0 / :: for every interface)") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            fix = "choose another --port, or stop the program listening there"
        elif exc.errno == errno.EACCES:
            fix = "choose a --port above 1023, or run as root"
        elif exc.errno == errno.EADDRNOTAVAIL:
            fix = "give --listen an address of this machine (127.0.0.1, or 0.0.0.0 / :: for every interface)"
        else:
            fix = "check --listen and --port"
        raise ConfigError(f"cannot listen on {where} ({reason}); {fix}") from None
    return server


def url(server: WSGIServer) -> str:
    """Where ``server`` answers scrapes, e.g. ``http://127.0.0.1:9477/metrics``."""
    host, port = server.server_address[:2]
    host = str(host)
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def run(settings: Settings, host: str = DEFAULT_LISTEN, port: int = DEFAULT_PORT) -> int:
    """``cmover exporter``: serve the site's metrics in the foreground until SIGTERM (then return 0).

    SIGINT raises KeyboardInterrupt as everywhere else. Prints one line saying where it listens, then
    reads once so that an outage is logged at start. Raises :class:`ConfigError` with the fix for a bad
    port, an address it cannot listen on, or a site without a broker (nothing could ever be read); an
    unreachable memcached or broker is not an error here (scrapes report ``cmover_up 0``). The Celery
    app must be configured for the same site (:func:`cmover.app.install_settings`, as the commands do).
    """
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} must be a TCP port, 1 to 65535 (default {DEFAULT_PORT})")
    settings.broker_login()  # no broker configured, or no password file: ConfigError with the fix
    registry, collector = make_registry(lambda: read_passes(settings))
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server = serve(registry, host, port)
        try:
            print(f"cmover exporter: serving {url(server)} for site {settings.username}; stop with SIGTERM "
                  "or Ctrl-C", flush=True)
            collector.collect()  # read once now: an outage is logged at start, not only at the first scrape
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


__all__ = ["PassCollector", "pass_families", "make_registry", "serve", "url", "run", "DEFAULT_PORT",
           "DEFAULT_LISTEN"]
