"""The Graphite exporter: the counters of each pass's current run, sent to carbon's plaintext port.

``send_graphite.py`` (run every minute from cron) calls :func:`main`. For every pass kind with a current
run (the run ``cmover start`` recorded last, :func:`cmover.ops.runs.current`), read as `cmover status`
reads it (:func:`cmover.ops.reading.read_passes`), it sends:

- ``<GRAPHITE_PREFIX>.<pass>.<counter>`` for every name in :data:`cmover.core.counters.C.ALL`: the run's
  cumulative totals from memcached (0 while a counter is still absent). They only go up during a run
  and restart from 0 with the next run of that pass, so graph them with ``perSecond`` or
  ``nonNegativeDerivative`` (both ignore the drop at a new run).
- ``<GRAPHITE_PREFIX>.<pass>.node.<host>.<counter>`` for every name in :data:`cmover.ops.reading.RATED`: the
  part of those totals counted on one node (a host of worker processes), the sum of the run's worker
  records of that host (0 while absent). The host becomes one word of the path (:func:`metric_word`:
  dots and every character outside ``[A-Za-z0-9_-]`` replaced by ``_``, ``node1.example.org`` ->
  ``node1_example_org``); hosts that come out as the same word are added up. Cumulative per run like the
  totals; a host that has not reported for the run sends nothing.
- ``<GRAPHITE_PREFIX>.<pass>.queue.<queue>``: ready messages per pass queue, read from the broker, the
  queue name's dots replaced by ``_`` (``cmover.copy.dirs`` -> ``cmover_copy_dirs``).
- ``<GRAPHITE_PREFIX>.<pass>.outstanding``: tasks published and not done (the completion ledger's
  count; left out while the ledger cannot vouch for it).
- ``<GRAPHITE_PREFIX>.<pass>.paused``: 1 while `cmover pause` holds the pass on every worker, else 0.

A pass that has never been started sends nothing. Graphite is reached synchronously (graphyte with no
send interval, send errors raised): an unreachable carbon is an error with the fix, never a silently
dropped batch. Every metric of one call carries the same timestamp.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Mapping

import graphyte

from cmover import app as appmod
from cmover.core import logformat
from cmover.core.counters import C
from cmover.core.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, CmoverError, FatalError
from cmover.core.settings import Settings, load_settings
from cmover.ops.reading import RATED, read_passes

#: Seconds to wait for carbon to accept a connection and take the lines.
TIMEOUT = 10


class GraphiteError(FatalError):
    """Graphite (carbon's plaintext port) cannot be reached or did not take the metrics."""


def queue_metric(name: str) -> str:
    """A queue name as one word of a metric path: ``cmover.copy.dirs`` -> ``cmover_copy_dirs``."""
    return name.replace(".", "_")


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def metric_word(name: str) -> str:
    """Any name (a host) as one safe word of a metric path: dots and every character outside
    ``[A-Za-z0-9_-]`` replaced by ``_`` (``node1.example.org`` -> ``node1_example_org``); ``""`` -> ``_``."""
    return _UNSAFE.sub("_", name) or "_"


def node_metrics(base: str, nodes: Mapping[str, dict[str, int]]) -> list[tuple[str, int]]:
    """``(base.node.<host word>.<counter>, value)`` of ``nodes`` (:func:`cmover.ops.reading.node_totals`), hosts
    sorted.

    Hosts that become the same word (:func:`metric_word`) are added up: a metric is never sent twice.
    """
    words: dict[str, dict[str, int]] = {}
    for host, sums in nodes.items():
        acc = words.setdefault(metric_word(host), dict.fromkeys(RATED, 0))
        for name in RATED:
            acc[name] += sums.get(name, 0)
    return [(f"{base}.node.{word}.{name}", acc[name]) for word, acc in sorted(words.items())
            for name in RATED]


def _collect(settings: Settings) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """The metrics and, per pass with a current run, that run's id."""
    readings = read_passes(settings)
    metrics: list[tuple[str, float]] = []
    for r in readings:
        base = f"{settings.graphite_prefix}.{r.kind}"
        metrics.extend((f"{base}.{name}", r.totals[name]) for name in C.ALL)
        metrics.extend(node_metrics(base, r.nodes))
        metrics.extend((f"{base}.queue.{queue_metric(q)}", n) for q, n in r.queues.items())
        if r.outstanding is not None:
            metrics.append((f"{base}.outstanding", r.outstanding))
        metrics.append((f"{base}.paused", int(r.paused)))
    return metrics, {r.kind: r.run_id for r in readings}


def collect(settings: Settings) -> list[tuple[str, float]]:
    """``(metric path, value)`` of every pass's current run: counters, per-node counters, queue depths,
    outstanding tasks, paused.

    Reads memcached (``settings.memcached``), then checks the broker of the Celery app, which must be
    configured for the same site (:func:`cmover.app.install_settings`, as the commands do), and reads the
    queue depths of the passes that have a current run (:func:`cmover.ops.reading.read_passes`). Sends nothing.
    Raises :class:`FatalError` (a :class:`cmover.ops.reading.ReadError`) with the fix when memcached or the
    broker cannot be reached.
    """
    return _collect(settings)[0]


def send(settings: Settings, metrics: list[tuple[str, float]], timestamp: float | None = None) -> None:
    """Send ``metrics`` to ``GRAPHITE_HOST:GRAPHITE_PORT`` now, one connection per 1000 lines.

    Raises :class:`GraphiteError` naming the fix when carbon cannot be reached. An empty list still
    connects once: that checks the address without sending anything.
    """
    sender = graphyte.Sender(settings.graphite_host, port=settings.graphite_port, timeout=TIMEOUT,
                             interval=None, raise_send_errors=True)
    ts = int(time.time()) if timestamp is None else timestamp  # whole seconds: never ahead of carbon's clock
    try:
        lines = [sender.build_message(name, value, ts) for name, value in metrics]
    except (TypeError, ValueError) as exc:  # a bug here, not an operator's problem: say which metric
        raise FatalError(f"cannot format a metric for Graphite: {exc}") from None
    try:
        for i in range(0, max(len(lines), 1), sender.batch_size):
            sender.send_socket(b"".join(lines[i:i + sender.batch_size]))
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise GraphiteError(f"cannot reach Graphite at {settings.graphite_host}:{settings.graphite_port} "
                            f"({reason}); start carbon-cache or fix GRAPHITE_HOST/GRAPHITE_PORT in config.py") \
            from None


def run(settings: Settings) -> tuple[int, dict[str, str]]:
    """Check Graphite, collect (memcached, broker) and send; return (metrics sent, pass -> run id)."""
    send(settings, [])  # Graphite first: nothing is read when it cannot take the result
    metrics, runs = _collect(settings)
    if metrics:
        send(settings, metrics)
    return len(metrics), runs


def main(argv: list[str] | None = None) -> int:
    """``send_graphite.py [-v] [--config FILE]``: silent and 0 on success, one line on stderr and 2 on error."""
    parser = argparse.ArgumentParser(
        prog="send_graphite.py",
        description="Send the counters and queue depths of every pass's current run to Graphite "
                    "(GRAPHITE_HOST/PORT/PREFIX in config.py). Meant for cron, once a minute.")
    parser.add_argument("-v", "--verbose", action="store_true", help="print one summary line (and warnings)")
    parser.add_argument("--config", help="config.py to use (default $CMOVER_CONFIG or ./config.py)")
    args = parser.parse_args(argv)
    # cron mails whatever is printed: only our own one-line error, unless asked for more.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL + 1,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        logformat.apply(settings.log_format)  # -v's warnings (from the libraries it uses) as LOG_FORMAT says
        appmod.install_settings(settings)  # the Celery app must use the same site (broker)
        count, runs = run(settings)
    except CmoverError as exc:
        print(f"send_graphite: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("send_graphite: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.verbose:
        which = ", ".join(f"{k} run {r}" for k, r in runs.items()) or "no pass has been started"
        print(f"send_graphite: sent {count} metrics to {settings.graphite_host}:{settings.graphite_port} "
              f"as {settings.graphite_prefix}.* ({which})")
    return EXIT_OK


__all__ = ["collect", "send", "run", "main", "GraphiteError", "queue_metric", "metric_word", "node_metrics"]
