"""What a site reads cmover's metrics with, run for real after a real distributed migration.

One site for the whole module (fixture ``migration``): a generated tree copied by celery workers on two hosts
(``mover1.example.org`` and ``mover2.example.org``: each worker in a UTS namespace of its own), then a delete
pass (extras planted on the target), a dirtime pass and a verify pass. Each pass is started while nothing
consumes it (no worker yet for the copy pass, ``cmover pause`` for the others) and let go once Prometheus has
scraped it idle, so every counter series of a run starts at 0 and the queue depths and outstanding tasks of a
waiting pass are on record. All along:

- ``cmover exporter`` is scraped by a private Prometheus (Debian package) configured with the scrape
  configuration and the rule file the README shows (taken from README.md, so it cannot drift). The test
  configuration changes only the scrape and evaluation intervals, to 1 s: with the README's 30 s a pass
  of a few seconds would leave no samples to compute a rate from;
- ``send_graphite.py`` sends to the tests' carbon-cache five times a second (cron does it once a minute;
  carbon keeps one point per second for metric paths starting with "cmover");
- graphite-web (Debian package) reads that carbon's whisper files and its cache.

The tests then evaluate every PromQL expression of the README and of the shipped Prometheus dashboard, and
render every target of the shipped Graphite dashboards, against the passes' own summaries
(``cmover status --json``). When Prometheus, graphite-web or carbon cannot be had, the tests fail; they never
skip.
"""

from __future__ import annotations

import fnmatch
import json
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.deploy import BIN, REPO, Deployment, DeploymentSet, Exporter, explain, run
from support.snap import compare_trees
from support.tree import random_tree

from cmover.core.counters import C
from cmover.ops import graphite
from cmover.ops.reading import RATED

sys.path.insert(0, str(REPO / "dashboards"))
sys.path.insert(0, str(REPO / "tests"))
import generate  # noqa: E402  (dashboards/generate.py: the panel list)
from support import metric_readers  # noqa: E402
from support.metric_readers import GraphiteWeb, Prometheus, SenderLoop  # noqa: E402

pytestmark = pytest.mark.integration

HOSTS = ("mover1.example.org", "mover2.example.org")
PASSES = ("copy", "delete", "dirtime", "verify")
QUEUES = tuple(f"cmover.{p}.{q}" for p in PASSES for q in ("dirs", "files"))
#: The rate window of the README's queries, and what ``$__rate_interval`` stands for here.
WINDOW = "5m"
WINDOW_S = 300.0
README = (REPO / "README.md").read_text()
ALERTS_FILE = REPO / "dashboards" / "cmover-alerts.yml"

Labels = frozenset[tuple[str, str]]


# -- what the README and the dashboards hold -------------------------------------------------------------------


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def readme_scrape_config() -> dict[str, Any]:
    """The README's prometheus.yml (the yaml block holding ``scrape_configs``), parsed."""
    found = [yaml.safe_load(b) for b in readme_blocks("yaml") if "scrape_configs:" in b]
    assert len(found) == 1, "README.md must show exactly one prometheus.yml (a yaml block with scrape_configs)"
    return found[0]


#: A PromQL function applied to a cmover metric, e.g. ``rate(cmover_...`` or ``sum by (pass) (cmover_...``.
_PROMQL_LIKE = re.compile(r"\b(sum|rate|increase|irate|avg|max|min|count|topk|delta)\b[^`]*\(.*\bcmover_\w+")


def readme_promql() -> list[str]:
    """Every PromQL expression of the README: each line of its promql blocks (comments aside), and every inline
    code span that applies a function to a cmover metric (so no query can be added without being tested)."""
    exprs = [ln.strip() for b in readme_blocks("promql") for ln in b.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    prose = re.sub(r"^```.*?^```", "", README, flags=re.S | re.M)
    exprs += [s for s in re.findall(r"`([^`\n]+)`", prose) if _PROMQL_LIKE.search(s)]
    assert exprs, "README.md shows no PromQL"
    return list(dict.fromkeys(exprs))


def dashboard_promql() -> list[str]:
    doc = json.loads((REPO / "dashboards" / "cmover-prometheus.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    return [e.replace("$__rate_interval", WINDOW).replace("$job", "cmover") for e in exprs]


def grafana_graphite_targets(prefix: str) -> list[tuple[str, str]]:
    """(panel title, target) of every target of dashboards/cmover-graphite.json with its variables set."""
    doc = json.loads((REPO / "dashboards" / "cmover-graphite.json").read_text())
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "prefix"]
    return [(p["title"], t["target"].replace("$prefix", prefix)) for p in doc["panels"] for t in p["targets"]]


# -- the site, its passes and the readers --------------------------------------------------------------------


@dataclass
class PassRecord:
    """One pass as its summary tells: ``final`` is ``cmover status --json`` once complete, ``idle`` while it
    waited for its workers; ``idle_at`` a Prometheus sample time of that wait."""

    kind: str
    run_id: str
    idle: dict[str, Any]
    idle_at: float
    final: dict[str, Any] = field(default_factory=dict)


@dataclass
class Migration:
    site: Deployment
    prefix: str
    instance: str  # the exporter's address, Prometheus's instance label
    prometheus: Prometheus
    web: GraphiteWeb
    passes: dict[str, PassRecord]
    started: float  # Unix time before anything was sent
    end_at: float  # the time of Prometheus's last sample, all passes complete
    sender: tuple[int, str]  # sends of the loop, its stderr
    cli_send: str  # stdout of the last send_graphite.py -v


def _in_uts(host: str) -> tuple[str, ...]:
    """Run a worker as if on ``host``: its own UTS namespace with that host name (workers report their host)."""
    return ("unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', host)


def _wait_idle_scrape(prom: Prometheus, kind: str, run_id: str) -> float:
    """Wait until Prometheus holds two samples of run ``run_id`` waiting (its seed message queued, one task
    outstanding, nothing done) and the no-progress rule has gone pending for it -- or, for a pass `cmover pause`
    holds, until its paused gauge reads 1 (the rule stays quiet then); return a sample time."""
    sel = f'job="cmover", pass="{kind}"'
    prom.wait_for(f'count_over_time(cmover_tasks_total{{{sel}, run="{run_id}"}}[1m]) >= 2 '
                  f'and cmover_tasks_total{{{sel}}} == 0', lambda v: len(v) == 1, what=f"two idle scrapes of {run_id}")
    prom.wait_for(f'cmover_queue_messages{{{sel}, queue="cmover.{kind}.dirs"}} == 1 '
                  f'and on (job, instance) cmover_outstanding_tasks{{{sel}}} == 1', lambda v: len(v) == 1,
                  what=f"the queued seed of {run_id}")
    if kind == "copy":  # waits for its workers
        prom.wait_for(f'ALERTS{{alertname="CmoverNoProgress", pass="{kind}", alertstate="pending"}}',
                      lambda v: len(v) == 1, what=f"CmoverNoProgress pending for the waiting {kind} pass")
    else:  # paused
        prom.wait_for(f'cmover_pass_paused{{{sel}}} == 1', lambda v: len(v) == 1, what=f"the paused {kind} pass")
    at = prom.values(f'timestamp(cmover_queue_messages{{{sel}, queue="cmover.{kind}.dirs"}} == 1)')
    assert len(at) == 1, at
    return next(iter(at.values()))


def _status(site: Deployment, kind: str, run_id: str) -> dict[str, Any]:
    r = site.cmover("status", kind, "--json", "--run", run_id, timeout=60)
    assert r.returncode == 0, explain(r)
    st: dict[str, Any] = json.loads(r.stdout)
    assert (st["pass"], st["run_id"]) == (kind, run_id), st
    return st


def _complete(site: Deployment, kind: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll ``cmover status KIND --json --run RUN_ID`` until complete; return that summary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _status(site, kind, run_id)
        if st["state"] == "complete":
            return st
        assert st["state"] == "running", st
        time.sleep(0.3)
    pytest.fail(f"{kind} run {run_id} not complete after {timeout} s: {st}")


def _plant_extras(dst: Path) -> int:
    """Entries on the target that the source lacks, for the delete pass; return how many."""
    n = 0
    for i in range(6):
        d = dst / f"extra-{i}"
        d.mkdir()
        n += 1
        for j in range(25):
            (d / f"gone-{j}").write_bytes(b"x" * j)
            n += 1
    return n


@pytest.fixture(scope="module")
def migration(module_deployments: DeploymentSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migration]:
    for fn in ("ensure_prometheus", "ensure_graphite_web"):
        try:
            metric_readers.ensure(fn)
        except metric_readers.ReaderError as exc:
            pytest.fail(f"{exc}\nPrometheus and graphite-web are required")
    r = run(["bash", "-c", "source scripts/services.sh && ensure_carbon && carbon_info"], timeout=600)
    if r.returncode != 0:
        pytest.fail(f"scripts/services.sh ensure_carbon failed: carbon-cache is required\n{explain(r)}")
    carbon_host, carbon_port, whisper_dir = r.stdout.split()
    root = tmp_path_factory.mktemp("monitoring")
    prefix = f"cmover_mon_{secrets.token_hex(4)}"
    started = time.time()
    made: list[Any] = []
    try:
        src, dst = root / "src", root / "dst"
        random_tree(src, seed=1818, n_files=3000, n_dirs=100, weird_names=False)
        dst.mkdir()
        site = module_deployments.new("monitoring", src, dst, GRAPHITE_HOST=carbon_host, GRAPHITE_PORT=int(carbon_port),
                                      GRAPHITE_PREFIX=prefix, REPORT_INTERVAL=0.5, BATCH=2, INLINE_ENTRIES=0)
        site.init_broker()
        exporter = Exporter(site, "monitoring")
        made.append(exporter)
        instance = f"127.0.0.1:{exporter.port}"

        config = readme_scrape_config()
        (job,) = config["scrape_configs"]
        assert job["job_name"] == "cmover" and [Path(f).name for f in config["rule_files"]] == [ALERTS_FILE.name]
        config["rule_files"] = [str(ALERTS_FILE)]
        config["global"] = {"evaluation_interval": "1s"}
        job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [instance]}])
        prom = Prometheus(root / "prometheus", config)  # its first scrape comes about 5 s after its start
        made.append(prom)
        passes: dict[str, PassRecord] = {}

        def start(kind: str) -> str:
            r = site.cmover("start", kind, timeout=60)
            assert r.returncode == 0, explain(r)
            return re.search(rf"started {kind} pass (\S+) at", r.stdout).group(1)  # type: ignore[union-attr]

        def waiting(kind: str, run_id: str) -> PassRecord:
            at = _wait_idle_scrape(prom, kind, run_id)
            passes[kind] = PassRecord(kind, run_id, _status(site, kind, run_id), at)
            return passes[kind]

        copy_run = start("copy")  # no worker yet: it waits
        web = GraphiteWeb(root / "graphite-web", Path(whisper_dir), carbon_host)
        made.append(web)
        sender = SenderLoop(site.env())
        made.append(sender)
        for kind in PASSES[1:]:  # remembered: the workers started below leave these queues alone
            p = site.cmover("pause", kind, "--no-wait", timeout=60)
            assert p.returncode == 0, explain(p)

        copy = waiting("copy", copy_run)
        for i, host in enumerate(HOSTS, start=1):
            site.start_worker(f"mon{i}", QUEUES, 1, prefix=_in_uts(host))
        for w in site.workers:
            w.wait_ready()
        copy.final = _complete(site, "copy", copy.run_id)

        planted = _plant_extras(dst)
        for kind in PASSES[1:]:
            rec = waiting(kind, start(kind))
            r = site.cmover("resume", kind, timeout=60)
            assert r.returncode == 0, explain(r)
            rec.final = _complete(site, kind, rec.run_id)
        assert passes["delete"].final["totals"][C.DELETED] == planted, passes["delete"].final
        assert compare_trees(src, dst, dir_times=True) == []

        # The final state in Prometheus (every run's last counter) and sent to carbon a few times.
        verified = passes["verify"].final["totals"]
        assert verified.get("differences", 0) == 0 and verified.get("files_scanned", 0) > 0, verified
        prom.wait_for(f'cmover_files_scanned_total{{pass="verify"}} == {verified["files_scanned"]} and on (job) '
                      'cmover_outstanding_tasks{pass="verify"} == 0', lambda v: len(v) == 1, what="the final state")
        time.sleep(1.2)  # the loop sends them in two seconds at least: a rate's last point
        end_at = max(prom.values('timestamp(cmover_up{job="cmover"})').values())
        loop = sender.stop()
        made.remove(sender)
        cli = run([BIN / "python", REPO / "send_graphite.py", "-v"], env=site.env(), timeout=60)
        assert cli.returncode == 0 and cli.stderr == "", explain(cli)
        yield Migration(site, prefix, instance, prom, web, passes, started, end_at, loop, cli.stdout)
    finally:
        for m in reversed(made):
            m.stop()
        shutil.rmtree(Path(whisper_dir) / prefix, ignore_errors=True)


# -- a model of what the exporter serves, from the passes' summaries -----------------------------------------

Samples = dict[tuple[str, Labels], float]


def summary_samples(summaries: list[tuple[str, dict[str, Any]]], instance: str) -> Samples:
    """The series ``cmover exporter`` serves for these pass summaries (``cmover status --json``), as scraped."""
    scrape = {"job": "cmover", "instance": instance}
    out: Samples = {("cmover_up", frozenset(scrape.items())): 1.0}
    for kind, st in summaries:
        run_labels = {**scrape, "pass": kind, "run": st["run_id"]}
        for name in C.ALL:
            out[(f"cmover_{name}_total", frozenset(run_labels.items()))] = float(st["totals"].get(name, 0))
        for node in st["nodes"]:
            for name in RATED:
                out[(f"cmover_node_{name}_total", frozenset({**run_labels, "host": node["host"]}.items()))] = \
                    float(node["totals"].get(name, 0))
        for q, n in st["queues"].items():
            out[("cmover_queue_messages", frozenset({**scrape, "pass": kind, "queue": q}.items()))] = float(n)
        out[("cmover_outstanding_tasks", frozenset({**scrape, "pass": kind}.items()))] = float(st["outstanding"])
    return out


_SELECTOR = r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?"


def model(expr: str, samples: Samples, first: Samples) -> dict[Labels, tuple[float, float]]:
    """What ``expr`` must evaluate to on ``samples`` (the last values), as {labels: (low, high)}.

    Understands the shapes the README and the dashboards use: ``[sum [by (L)]] (SELECTOR)`` and
    ``[sum [by (L)]] (rate|increase(SELECTOR[W]))`` with equality matchers; anything else fails, so a new
    kind of query gets a model before it ships. A rate over a run's whole life at one of its sample times is
    exact when the series starts at 0; a series that starts above 0 (``first``, Prometheus's first sample of
    it: a host's first report) is extrapolated by Prometheus to somewhere between the increase it saw and
    its last value, hence a range.
    """
    agg = re.fullmatch(r"sum(?:\s+by\s*\(([^)]*)\))?\s*\((.*)\)", expr.strip(), re.S)
    inner = agg.group(2).strip() if agg else expr.strip()
    fn = re.fullmatch(rf"(rate|increase)\({_SELECTOR}\[(\d+)([smh])\]\)", inner)
    sel = re.fullmatch(_SELECTOR, inner)
    if fn:
        func, metric, matchers = fn.group(1), fn.group(2), fn.group(3) or ""
        seconds = int(fn.group(4)) * {"s": 1, "m": 60, "h": 3600}[fn.group(5)]
    elif sel:
        func, metric, matchers, seconds = "", sel.group(1), sel.group(2) or "", 0
    else:
        raise AssertionError(f"the test has no model of {expr!r}: teach model() its shape")
    pairs = re.findall(r'\s*(\w+)\s*=\s*"([^"]*)"\s*(?:,|$)', matchers)
    assert re.sub(r'\s*\w+\s*=\s*"[^"]*"\s*(,|$)', "", matchers) == "", f"only = matchers are modelled: {expr!r}"
    by = [x.strip() for x in ((agg.group(1) if agg else None) or "").split(",") if x.strip()]
    out: dict[Labels, tuple[float, float]] = {}
    for (name, labels), value in samples.items():
        d = dict(labels)
        if name != metric or any(d.get(k) != v for k, v in pairs):
            continue
        low = high = value
        if func:
            low = value - first.get((name, labels), 0.0)
            if func == "rate":
                low, high = low / seconds, high / seconds
        else:
            d["__name__"] = name
        if agg:
            missing = [k for k in by if k not in d]
            assert not missing, f"{expr}: {metric} has no label {missing} to sum by"
            d = {k: d[k] for k in by}
        key = frozenset(d.items())
        lo0, hi0 = out.get(key, (0.0, 0.0))
        out[key] = (lo0 + low, hi0 + high)
    return out


def check_expr(prom: Prometheus, expr: str, at: float, samples: Samples, first: Samples, *,
               selects: bool = True) -> None:
    """``expr`` evaluated at ``at`` gives what :func:`model` says; with ``selects``, it gives something."""
    want = model(expr, samples, first)
    assert want or not selects, f"{expr} selects none of the series the exporter serves: a wrong name or label?"
    got = prom.values(expr, at)
    assert set(got) == set(want), f"{expr}: series {sorted(map(sorted, got))} != {sorted(map(sorted, want))}"
    for labels, value in got.items():
        low, high = want[labels]
        slack = 1e-9 * max(1.0, abs(high))
        assert low - slack <= value <= high + slack, f"{expr} {dict(labels)}: {value} not in [{low}, {high}]"


def first_samples(prom: Prometheus, at: float) -> Samples:
    """The first sample of every cmover series Prometheus holds (counters only go up within a run)."""
    got = prom.samples('{__name__=~"cmover_.*_total"}', WINDOW, at)
    return {(dict(labels)["__name__"], frozenset((k, v) for k, v in labels if k != "__name__")): values[0]
            for labels, values in got.items()}


# -- Prometheus ------------------------------------------------------------------------------------------------


def test_every_promql_query_of_the_readme_and_the_dashboard_gives_the_passes_numbers(migration: Migration) -> None:
    m = migration
    prom = m.prometheus
    exprs = readme_promql() + dashboard_promql()
    assert len(exprs) > 20, exprs
    # The whole migration lies within the rate window: each run's series is seen from its first sample on.
    assert m.end_at - m.passes["copy"].idle_at < WINDOW_S - 20, "the migration took too long for the 5m window"

    summaries = [(k, m.passes[k].final) for k in PASSES]
    samples = summary_samples(summaries, m.instance)
    first = first_samples(prom, m.end_at)
    # The pass counters start at 0 (each pass waited, scraped, before its workers took it): their rates are exact.
    assert {k: v for k, v in first.items() if not k[0].startswith("cmover_node_") and v} == {}
    hosts = {n["host"] for n in m.passes["copy"].final["nodes"]}
    assert hosts == set(HOSTS), m.passes["copy"].final["nodes"]
    for expr in exprs:
        check_expr(prom, expr, m.end_at, samples, first)

    # The README's per-node query: both hosts copied, and their shares add up to the pass's files.
    per_host = prom.values(f'sum by (host) (rate(cmover_node_files_copied_total{{pass="copy"}}[{WINDOW}]))', m.end_at)
    assert {dict(k)["host"] for k, v in per_host.items() if v > 0} == set(HOSTS), per_host
    assert prom.values('sum(cmover_node_files_copied_total{pass="copy"})', m.end_at) == \
        {frozenset(): float(m.passes["copy"].final["totals"][C.COPIED])}

    # While each pass waited for its workers: its queued seed and outstanding task, the earlier passes' results.
    instant = [e for e in exprs if "[" not in e]
    assert any("cmover_queue_messages" in e for e in instant) and any("cmover_outstanding" in e for e in instant)
    for i, kind in enumerate(PASSES):
        rec = m.passes[kind]
        assert rec.idle["state"] == ("running" if kind == "copy" else "paused"), rec.idle
        assert (rec.idle["queues"][f"cmover.{kind}.dirs"], rec.idle["outstanding"]) == (1, 1), rec.idle
        assert sum(rec.idle["totals"].get(c, 0) for c in (C.TASKS, C.COPIED, C.DELETED, C.DIRTIMES)) == 0, rec.idle
        then = summary_samples([(k, m.passes[k].final) for k in PASSES[:i]] + [(kind, rec.idle)], m.instance)
        for expr in instant:
            check_expr(prom, expr, rec.idle_at, then, {}, selects=False)  # a later pass has no series yet


def test_the_alert_rules_load_and_match_the_real_series(migration: Migration) -> None:
    m = migration
    prom = m.prometheus
    groups = prom.api("rules")["groups"]
    shipped = yaml.safe_load(ALERTS_FILE.read_text())
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    for rule in rules.values():
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule
    # Nothing fires after a clean migration; each expression selects nothing then.
    assert prom.values('ALERTS{alertstate="firing"}', m.end_at) == {}
    for rule in rules.values():
        assert prom.values(rule["query"], m.end_at) == {}, rule["query"]
    # While the copy pass waited for its workers, the no-progress rule matched it (and went pending, see the
    # fixture): the rule's labels and joins fit the exporter's series. The passes `cmover pause` held waited as
    # long with nothing done, and the rule left them alone.
    no_progress = rules["CmoverNoProgress"]["query"]
    for kind in PASSES:
        got = prom.values(no_progress, m.passes[kind].idle_at)
        paused = prom.values(f'max by (job, instance, pass) (cmover_pass_paused{{pass="{kind}"}})',
                             m.passes[kind].idle_at)
        labels = frozenset({"job": "cmover", "instance": m.instance, "pass": kind}.items())
        if kind == "copy":
            assert (got, paused) == ({labels: 1.0}, {labels: 0.0}), (kind, got, paused)
        else:
            assert (got, paused) == ({}, {labels: 1.0}), (kind, got, paused)
        assert prom.values(f'max by (job, instance, pass) (cmover_pass_paused{{pass="{kind}"}})',
                           m.end_at) == {labels: 0.0}


# -- Graphite ---------------------------------------------------------------------------------------------------


def sent_metrics(m: Migration) -> dict[str, tuple[float, float]]:
    """Every metric send_graphite.py sent for the passes -> (final value, least peak it must show).

    The peak: a pass's dirs queue and outstanding count held its seed while the pass waited."""
    want: dict[str, tuple[float, float]] = {}
    for kind in PASSES:
        st = m.passes[kind].final
        base = f"{m.prefix}.{kind}"
        want.update({f"{base}.{name}": (st["totals"].get(name, 0), 0) for name in C.ALL})
        for node in st["nodes"]:
            word = graphite.metric_word(node["host"])
            want.update({f"{base}.node.{word}.{name}": (node["totals"].get(name, 0), 0) for name in RATED})
        want.update({f"{base}.queue.{graphite.queue_metric(q)}": (n, 1 if q.endswith(".dirs") else 0)
                     for q, n in st["queues"].items()})
        want[f"{base}.outstanding"] = (st["outstanding"], 1)
        want[f"{base}.paused"] = (0, 0 if kind == "copy" else 1)  # paused while it waited, then resumed
    return want


_CALL = re.compile(r"(\w+)\((.*)\)$", re.S)


def _split_args(s: str) -> list[str]:
    out, depth, cur, quote = [], 0, "", ""
    for ch in s:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    return [*out, cur.strip()]


def expected_series(target: str, metrics: dict[str, tuple[float, float]]) -> dict[str, tuple[str, str]]:
    """The series Graphite must return for ``target``: {name: (metric path, "raw" or "delta")}.

    Understands the functions the dashboards use (alias, aliasByNode, perSecond, nonNegativeDerivative,
    secondYAxis) on paths with ``*``; anything else fails, so a new function gets a model before it ships.
    """
    call = _CALL.match(target.strip())
    if not call:
        pattern = target.strip().split(".")
        return {p: (p, "raw") for p in metrics
                if len(p.split(".")) == len(pattern) and all(map(fnmatch.fnmatchcase, p.split("."), pattern))}
    fn, args = call.group(1), _split_args(call.group(2))
    inner = expected_series(args[0], metrics)
    if fn in ("perSecond", "nonNegativeDerivative"):
        return {f"{fn}({name})": (path, "delta") for name, (path, _) in inner.items()}
    if fn == "secondYAxis":
        return {f"{fn}({name})": v for name, v in inner.items()}
    if fn == "alias":
        assert len(inner) == 1, (target, inner)
        ((path, kind),) = inner.values()
        return {args[1].strip("'\""): (path, kind)}
    if fn == "aliasByNode":
        return {".".join(path.split(".")[int(n)] for n in args[1:]): (path, kind) for path, kind in inner.values()}
    raise AssertionError(f"the test has no model of {fn}() in {target!r}: teach expected_series() about it")


def check_render(m: Migration, title: str, targets: list[str]) -> None:
    """Render ``targets`` through graphite-web and check each series against what was sent."""
    metrics = sent_metrics(m)
    for target in targets:
        want = expected_series(target, metrics)
        assert want, f"{title}: {target} matches no metric that send_graphite.py sent"
        got = m.web.render([target], m.started - 5, time.time())
        assert sorted(s["target"] for s in got) == sorted(want), f"{title}: {target}"
        for s in got:
            path, kind = want[s["target"]]
            final, peak = metrics[path]
            values = [v for v, _ in s["datapoints"] if v is not None]
            assert values, f"{title}: {target} -> {s['target']} has no data point"
            if kind == "raw":
                assert (values[-1], max(values) >= peak) == (final, True), (title, target, s["target"], values[-3:])
            else:  # new per point: never negative, never more than the run did, something when it did anything
                assert min(values) >= 0 and sum(values) <= final, (title, target, s["target"], values)
                assert (max(values) > 0) == (final > 0), (title, target, s["target"], final, values)


def test_send_graphite_sent_every_metric_of_the_passes(migration: Migration) -> None:
    m = migration
    sends, err = m.sender
    assert err == "" and sends > 20, (sends, err)
    runs = ", ".join(f"{k} run {m.passes[k].run_id}" for k in PASSES)
    carbon = re.search(r"GRAPHITE_HOST = '(.*)'\nGRAPHITE_PORT = (\d+)", m.site.config.read_text())
    assert carbon, m.site.config.read_text()
    assert m.cli_send == (f"send_graphite: sent {len(sent_metrics(m))} metrics to {carbon[1]}:{carbon[2]} as "
                          f"{m.prefix}.* ({runs})\n")
    copy = m.passes["copy"].final["totals"]
    words = {graphite.metric_word(h) for h in HOSTS}
    assert words == {"mover1_example_org", "mover2_example_org"}
    rendered = m.web.render([f"{m.prefix}.copy.node.*.files_copied"], m.started - 5, time.time())
    last = {s["target"].split(".")[-2]: [v for v, _ in s["datapoints"] if v is not None][-1] for s in rendered}
    assert set(last) == words and sum(last.values()) == copy[C.COPIED], last


def test_every_target_of_the_grafana_graphite_dashboard_renders(migration: Migration) -> None:
    targets = grafana_graphite_targets(migration.prefix)
    assert len(targets) == sum(len(p.queries) for p in generate.PANELS)
    for title, target in targets:
        assert "$" not in target, target
        check_render(migration, title, [target])


def test_the_graphite_web_dashboard_loads_as_a_template_and_every_graph_renders(migration: Migration) -> None:
    m = migration
    state = (REPO / "dashboards" / "cmover-graphite-web.json").read_text()
    # As the README says: saved as it is (a site with the default prefix)...
    assert m.web.post("/dashboard/save/cmover", {"state": state}) == {"success": True}
    assert json.loads(m.web.get("/dashboard/load/cmover"))["state"] == json.loads(state)
    # ... or as a template whose key is that prefix, opened with the site's own.
    assert m.web.post(f"/dashboard/save_template/cmover/{generate.DEFAULT_PREFIX}", {"state": state}) == \
        {"success": True}
    loaded = json.loads(m.web.get(f"/dashboard/load_template/cmover/{m.prefix}"))["state"]
    assert [g[1]["title"] for g in loaded["graphs"]] == [p.title for p in generate.PANELS]
    for graph in loaded["graphs"]:
        params = graph[1]
        assert all(m.prefix in t and "__VALUE__" not in t for t in params["target"]), params
        check_render(m, params["title"], params["target"])
        # As the dashboard UI draws it: its own parameters, a PNG.
        png = m.web.png({**params, "from": str(int(m.started)), "width": 400, "height": 250})
        assert len(png) > 2000, params["title"]
    page = m.web.get(f"/dashboard/cmover/{m.prefix}").decode()
    assert f"{m.prefix}.copy.files_copied" in page and "Dashboard" in page
