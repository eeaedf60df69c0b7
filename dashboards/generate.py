"""The dashboards of cmover, generated from one panel list: ``python dashboards/generate.py [--check]``.

:data:`PANELS` is the single source of truth. Each panel holds its Graphite target(s) (what
``send_graphite.py`` sends, with ``$prefix`` standing for ``GRAPHITE_PREFIX``) and the PromQL of the same
curve (what ``cmover exporter`` serves, with ``$job`` the scrape job and ``$__rate_interval`` Grafana's rate
window). From it this script writes:

- ``cmover-graphite.json``: a Grafana dashboard on a Graphite data source (variables ``datasource`` and
  ``prefix``);
- ``cmover-prometheus.json``: the same dashboard on a Prometheus data source (variables ``datasource`` and
  ``job``);
- ``cmover-graphite-web.json``: a dashboard of graphite-web's own dashboard UI (``/dashboard/``), with the
  default prefix ``cmover``; saved as a template (key ``cmover``) it serves any other prefix.

The files are committed; ``--check`` exits 1 when one differs from what this script writes (the tests run
it), so an edit of a JSON file by hand cannot drift from the panel list. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent

#: GRAPHITE_PREFIX of a site that kept the default; the graphite-web dashboard is written for it.
DEFAULT_PREFIX = "cmover"


@dataclass(frozen=True)
class Query:
    """One curve (or one group of curves) of a panel, in both query languages.

    ``graphite``: a Graphite target with ``$prefix`` for ``GRAPHITE_PREFIX``; its name (``alias`` or
    ``aliasByNode``) is the legend. ``promql``: the same numbers from ``cmover exporter``, filtered on
    ``job="$job"``, with ``$__rate_interval`` as the window of ``rate``/``increase``; ``legend`` its Grafana
    legend format (``{{pass}}``), the same words as the Graphite alias where the labels allow.
    ``in_bytes``: the values are bytes (a stat panel shows them in bytes; graphite-web draws them on the
    right-hand axis when the panel mixes them with counts).
    """

    graphite: str
    promql: str
    legend: str
    in_bytes: bool = False


@dataclass(frozen=True)
class Panel:
    """A graph (``timeseries``) or the current values (``stat``) of some queries.

    ``description`` holds for both readers; ``graphite_how`` and ``prometheus_how`` are appended to it for
    the dashboard of that reader (how the curve is computed there). ``unit`` is Grafana's (``short``,
    ``Bps``); ``width``/``height`` are grid units (24 columns).
    """

    title: str
    description: str
    queries: tuple[Query, ...]
    graphite_how: str = ""
    prometheus_how: str = ""
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8


def _copy(counter: str, legend: str, fn: str = "perSecond", pass_: str = "copy") -> Query:
    """A per-second (or new-per-interval) curve of one counter of one pass."""
    prom_fn = "rate" if fn == "perSecond" else "increase"
    return Query(f"alias({fn}($prefix.{pass_}.{counter}), '{legend}')",
                 f'sum({prom_fn}(cmover_{counter}_total{{job="$job", pass="{pass_}"}}[$__rate_interval]))', legend)


def _total(pass_: str, counter: str, legend: str, in_bytes: bool = False) -> Query:
    """The current run's total of one counter of one pass."""
    return Query(f"alias($prefix.{pass_}.{counter}, '{legend}')",
                 f'sum(cmover_{counter}_total{{job="$job", pass="{pass_}"}})', legend, in_bytes)


def _per_node(counter: str) -> Query:
    """A per-second curve of one counter of the copy pass on each node (host of worker processes)."""
    return Query(f"aliasByNode(perSecond($prefix.copy.node.*.{counter}), -2)",
                 f'sum by (host) (rate(cmover_node_{counter}_total{{job="$job", pass="copy"}}[$__rate_interval]))',
                 "{{host}}")


_RATE_HOW_GRAPHITE = "perSecond of the cumulative counters; the drop when a new run starts is ignored"
_RATE_HOW_PROMETHEUS = "rate over Grafana's rate interval, summed over runs: a new run is a new series"

#: The panels, in dashboard order (left to right, top to bottom).
PANELS: tuple[Panel, ...] = (
    Panel("Copy: files per second",
          "Non-directory entries looked at, files whose data was written, and per-item failures of the "
          "current copy run.",
          (_copy("files_scanned", "scanned"), _copy("files_copied", "copied"), _copy("failed", "failed")),
          graphite_how=_RATE_HOW_GRAPHITE, prometheus_how=_RATE_HOW_PROMETHEUS),
    Panel("Copy: bytes per second", "Data written by the current copy run.",
          (_copy("bytes_copied", "copied"),),
          graphite_how="perSecond of bytes_copied", prometheus_how=_RATE_HOW_PROMETHEUS, unit="Bps"),
    Panel("Queue depths", "Ready messages in every pass queue (cmover.<pass>.dirs|files), read from the broker.",
          (Query("aliasByNode($prefix.*.queue.*, -1)", 'sum by (queue) (cmover_queue_messages{job="$job"})',
                 "{{queue}}"),)),
    Panel("Outstanding tasks",
          "Tasks published and not yet done, per pass (the completion ledger; 0 = complete once the queues "
          "are empty too).",
          (Query("aliasByNode($prefix.*.outstanding, -2)", 'sum by (pass) (cmover_outstanding_tasks{job="$job"})',
                 "{{pass}}"),)),
    Panel("Delete: entries deleted per second",
          "Entries (files, symlinks, directories) removed by the current delete run, and directories among them.",
          (_copy("entries_deleted", "entries deleted", pass_="delete"),
           _copy("dirs_deleted", "directories deleted", pass_="delete"))),
    Panel("Dirtime: directory times set per second",
          "Target directories given their source's atime/mtime by the current dirtime run.",
          (_copy("dir_times_set", "dir times set", pass_="dirtime"),)),
    Panel("Verify: entries compared, files read and differences per second",
          "Entries compared by the current verify run, files whose data it read (--content), and the differences "
          "it found (list them with `cmover differences`).",
          (_copy("files_scanned", "entries compared", pass_="verify"),
           _copy("files_read", "files read", pass_="verify"), _copy("differences", "differences", pass_="verify"))),
    Panel("Lustre: layout and MDT mismatches (new per data point)",
          "Files or directories that did not get the layout or MDT asked for, keeping the target's default.",
          (_copy("layout_mismatches", "layout mismatches", fn="nonNegativeDerivative"),
           _copy("mdt_mismatches", "MDT mismatches", fn="nonNegativeDerivative")),
          graphite_how="nonNegativeDerivative: new ones per stored point, a minute with send_graphite.py in cron",
          prometheus_how="increase over Grafana's rate interval"),
    Panel("Failures per pass (new per data point)",
          "Per-item failures of every pass's current run (list them with `cmover errors PASS`).",
          (Query("aliasByNode(nonNegativeDerivative($prefix.*.failed), -2)",
                 'sum by (pass) (increase(cmover_failed_total{job="$job"}[$__rate_interval]))', "{{pass}}"),),
          prometheus_how="increase over Grafana's rate interval"),
    Panel("Current runs: totals", "Cumulative counters of each pass's current run (last value sent).",
          (_total("copy", "files_copied", "files copied"), _total("copy", "bytes_copied", "bytes copied", True),
           _total("copy", "files_scanned", "files scanned"), _total("copy", "failed", "copy failures"),
           _total("delete", "entries_deleted", "entries deleted"), _total("dirtime", "dir_times_set", "dir times set"),
           _total("copy", "layout_mismatches", "layout mismatches")),
          kind="stat", width=24, height=5),
    Panel("Copy: files copied per second by node",
          "Files copied by the current copy run on each node (host of worker processes).",
          (_per_node("files_copied"),),
          graphite_how="perSecond of node.<host>.files_copied, the host's dots written as _",
          prometheus_how="rate of cmover_node_files_copied_total by host"),
    Panel("Copy: bytes copied per second by node",
          "Data written by the current copy run on each node (host of worker processes).",
          (_per_node("bytes_copied"),),
          graphite_how="perSecond of node.<host>.bytes_copied, the host's dots written as _",
          prometheus_how="rate of cmover_node_bytes_copied_total by host", unit="Bps"),
)


def _description(panel: Panel, how: str) -> str:
    if not how:
        return panel.description
    if panel.description.endswith(")."):  # one parenthesis, not two in a row
        return f"{panel.description[:-2]}; {how})."
    return f"{panel.description[:-1]} ({how})."


def _layout(panels: tuple[Panel, ...]) -> list[dict[str, int]]:
    """Grid positions: left to right in rows of 24 columns, a row as high as its highest panel."""
    out, x, y, row_h = [], 0, 0, 0
    for p in panels:
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append({"x": x, "y": y, "w": p.width, "h": p.height})
        x, row_h = x + p.width, max(row_h, p.height)
    return out


def _timeseries_options(unit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    field_config = {"defaults": {"unit": unit, "min": 0,
                                 "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "spanNulls": True,
                                            "stacking": {"mode": "none", "group": "A"}}},
                    "overrides": []}
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
               "tooltip": {"mode": "multi", "sort": "none"}}
    return field_config, options


def _stat_options(panel: Panel) -> tuple[dict[str, Any], dict[str, Any]]:
    overrides = [{"matcher": {"id": "byName", "options": q.legend}, "properties": [{"id": "unit", "value": "bytes"}]}
                 for q in panel.queries if q.in_bytes]
    field_config = {"defaults": {"unit": panel.unit}, "overrides": overrides}
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "none",
               "graphMode": "none", "textMode": "value_and_name", "orientation": "auto", "justifyMode": "auto"}
    return field_config, options


def grafana(reader: str) -> dict[str, Any]:
    """The Grafana dashboard of :data:`PANELS` on a ``graphite`` or ``prometheus`` data source."""
    source = {"type": reader, "uid": "${datasource}"}
    panels = []
    for n, (p, pos) in enumerate(zip(PANELS, _layout(PANELS), strict=True), start=1):
        field_config, options = _stat_options(p) if p.kind == "stat" else _timeseries_options(p.unit)
        if reader == "graphite":
            how = p.graphite_how
            targets = [{"refId": chr(ord("A") + i), "datasource": source, "target": q.graphite}
                       for i, q in enumerate(p.queries)]
        else:
            how = p.prometheus_how
            targets = [{"refId": chr(ord("A") + i), "datasource": source, "expr": q.promql,
                        "legendFormat": q.legend, "range": p.kind != "stat", "instant": p.kind == "stat"}
                       for i, q in enumerate(p.queries)]
        panels.append({"id": n, "type": p.kind, "title": p.title, "description": _description(p, how),
                       "datasource": source, "gridPos": pos, "fieldConfig": field_config, "options": options,
                       "targets": targets})
    variables: list[dict[str, Any]] = [
        {"type": "datasource", "name": "datasource", "label": reader.capitalize(), "query": reader, "current": {},
         "hide": 0, "refresh": 1, "regex": "", "options": []}]
    if reader == "graphite":
        variables.append({"type": "textbox", "name": "prefix", "label": "GRAPHITE_PREFIX", "query": DEFAULT_PREFIX,
                          "current": {"selected": False, "text": DEFAULT_PREFIX, "value": DEFAULT_PREFIX}, "hide": 0,
                          "options": [{"selected": True, "text": DEFAULT_PREFIX, "value": DEFAULT_PREFIX}]})
        description = ("Counters, queue depths and outstanding tasks of cmover's current copy, delete and dirtime "
                       "runs, as sent by send_graphite.py (see README.md, section Graphite).")
    else:
        variables.append({"type": "query", "name": "job", "label": "job", "datasource": source,
                          "query": {"query": "label_values(cmover_up, job)", "refId": "job"},
                          "definition": "label_values(cmover_up, job)", "current": {}, "hide": 0, "refresh": 1,
                          "regex": "", "sort": 1, "options": []})
        description = ("Counters, queue depths and outstanding tasks of cmover's current copy, delete and dirtime "
                       "runs, as served by cmover exporter (see README.md, section Prometheus).")
    return {"uid": f"cmover-{reader}", "title": "cmover: migration progress", "description": description,
            "tags": ["cmover", reader], "editable": True, "graphTooltip": 1, "refresh": "1m", "schemaVersion": 39,
            "version": 1, "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "timezone": "",
            "annotations": {"list": []}, "links": [], "templating": {"list": variables}, "panels": panels}


#: Size of every graph of the graphite-web dashboard, in pixels.
GRAPH_SIZE = {"width": 560, "height": 300}
#: Time range and render parameters every graph of the graphite-web dashboard starts from.
DEFAULT_GRAPH_PARAMS = {"from": "-6hours", "until": "now", **GRAPH_SIZE}


def graphite_web_targets(panel: Panel, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The targets of ``panel`` in the graphite-web dashboard: the Grafana ones with ``prefix``; when the
    panel mixes bytes with counts, the bytes go to the right-hand axis (``secondYAxis``)."""
    mixed = any(q.in_bytes for q in panel.queries) and not all(q.in_bytes for q in panel.queries)
    out = []
    for q in panel.queries:
        target = q.graphite.replace("$prefix", prefix)
        if mixed and q.in_bytes:  # inside the alias, which names the curve
            target = re.sub(r"^alias\((.*), ('[^']*')\)$", r"alias(secondYAxis(\1), \2)", target)
            assert target.startswith("alias(secondYAxis("), q.graphite
        out.append(target)
    return out


def graphite_web_params(panel: Panel, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """The render parameters of one graph of the graphite-web dashboard (without size and time range)."""
    params: dict[str, Any] = {"target": graphite_web_targets(panel, prefix), "title": panel.title,
                              "lineMode": "connected", "hideLegend": "false"}
    if panel.kind == "stat":  # no stat panel in graphite-web: the cumulative totals, last value in the legend
        params["legendValue"] = "last"
        if any(q.in_bytes for q in panel.queries):
            params["vtitleRight"] = "bytes"
            params["yUnitSystem"] = "binary"
    else:
        params["yMin"] = 0
        params["vtitle"] = "bytes/s" if panel.unit == "Bps" else "per second" if "second" in panel.title else ""
        if panel.unit == "Bps":
            params["yUnitSystem"] = "binary"
        if not params["vtitle"]:
            del params["vtitle"]
    return params


def graphite_web() -> dict[str, Any]:
    """The graphite-web dashboard state of :data:`PANELS` (what its UI saves and loads), for the default prefix."""
    graphs = []
    for p in PANELS:
        params = graphite_web_params(p)
        graph_id = urlencode([("target", t) for t in params["target"]])
        url = "/render?" + urlencode({**DEFAULT_GRAPH_PARAMS, **params}, doseq=True)
        graphs.append([graph_id, params, url])
    return {"name": "cmover",
            "timeConfig": {"type": "relative", "relativeStartQuantity": "6", "relativeStartUnits": "hours",
                           "relativeUntilQuantity": "", "relativeUntilUnits": "now",
                           "startDate": "2025-01-01T00:00:00.000Z", "startTime": "9:00 AM",
                           "endDate": "2025-01-01T00:00:00.000Z", "endTime": "5:00 PM"},
            "refreshConfig": {"enabled": True, "interval": 60000},
            "graphSize": GRAPH_SIZE, "defaultGraphParams": DEFAULT_GRAPH_PARAMS, "graphs": graphs}


#: File name -> its content, as written.
def outputs() -> dict[str, str]:
    docs = {"cmover-graphite.json": grafana("graphite"), "cmover-prometheus.json": grafana("prometheus"),
            "cmover-graphite-web.json": graphite_web()}
    return {name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in docs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write cmover's dashboards from their panel list.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming the files that differ from the panel list")
    parser.add_argument("--dir", type=Path, default=HERE, help="where the files are (default: this directory)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in outputs().items():
        path = args.dir / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"generate.py: {', '.join(stale)} differ from the panel list; run python dashboards/generate.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
