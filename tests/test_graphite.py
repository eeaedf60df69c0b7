"""cmover.ops.graphite and send_graphite.py: settings, collect() against the real memcached (127.0.0.1:11211),
the plaintext lines sent, and the one-line errors of the cron shim when a service cannot be reached.

The broker is replaced here (check_broker, pass_depths); tests/integration/test_graphite.py runs the whole
chain against real RabbitMQ and carbon-cache.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from cmover.core.counters import C
from cmover.core.errors import ConfigError, FatalError
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import Settings, from_mapping, load_settings
from cmover.ops import broker, graphite, reading, runs
from cmover.state import keys, pauses
from cmover.state.ledger import MemcacheLedger
from cmover.state.runstats import MemcacheStats, WorkerStats

# Some tests here read and write the real memcached: the module runs with the memcached group.
pytestmark = pytest.mark.memcached

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "send_graphite.py"
DASHBOARD = REPO / "dashboards" / "cmover-graphite.json"


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound once by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeCarbon:
    """A TCP listener on 127.0.0.1 that keeps every line and counts connections (carbon's plaintext port)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.lines: list[str] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            with self._lock:
                self.connections += 1
                self.lines.extend(data.decode().splitlines())

    def wait_connections(self, n: int, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.connections >= n:
                    return
            time.sleep(0.01)
        raise AssertionError(f"{self.connections} connections, expected {n}")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def carbon() -> Iterator[FakeCarbon]:
    fc = FakeCarbon()
    yield fc
    fc.close()


@pytest.fixture
def memcached() -> None:
    """The real memcached; a failure fails the test (scripts/services.sh ensure_memcached starts it)."""
    Client(("127.0.0.1", 11211), connect_timeout=2, timeout=5).version()


@pytest.fixture
def site() -> Iterator[Settings]:
    """Settings of a site of its own (unique USERNAME: its own current-run keys); keys removed afterwards."""
    s = from_mapping({"USERNAME": f"gt_{uuid.uuid4().hex[:12]}", "MEMCACHED": "127.0.0.1:11211",
                      "GRAPHITE_PREFIX": "t.cmover"})
    yield s
    mc = keys.memcache_client(s)
    run_ids = [json.loads(raw)["spec"]["run_id"] for kind in reading.PASSES
               if (raw := mc.get(runs._current_key(s, kind)))]
    mc.delete_many([runs._current_key(s, kind) for kind in reading.PASSES])
    mc.delete_many([pauses.record_key(s, kind) for kind in reading.PASSES])
    for run_id in run_ids:
        reg = mc.get(f"cm:{run_id}:workers")
        records = [f"cm:{run_id}:w:{w}" for w in (reg.decode().split() if reg else [])]
        mc.delete_many([f"cm:{run_id}:c:{name}" for name in C.ALL] + [f"cm:{run_id}:out", f"cm:{run_id}:epoch",
                                                                      f"cm:{run_id}:workers", *records])


def make_current(s: Settings, kind: str) -> str:
    """A new run of pass ``kind`` recorded as the current one, as cmover.ops.start.start does; its id."""
    run_id = f"{kind}-gt-{uuid.uuid4().hex}"
    spec = PassSpec(run_id=run_id, kind=PassKind(kind), src_root=b"/src", dst_root=b"/dst")
    keys.memcache_client(s).set(runs._current_key(s, kind),
                                  json.dumps({"spec": spec.as_dict(), "started": time.time()}), expire=600)
    return run_id


def no_broker(monkeypatch: pytest.MonkeyPatch, depths: dict[str, dict[str, int]]) -> list[str]:
    """Replace the broker: check_broker passes, pass_depths returns ``depths[kind]`` (no dead letter); the calls
    are listed."""
    calls: list[str] = []
    monkeypatch.setattr(broker, "check_broker", lambda s: calls.append("check"))

    def fake_depths(kind: str) -> tuple[dict[str, int], int]:
        calls.append(kind)
        return depths[kind], 0

    monkeypatch.setattr(broker, "pass_depths", fake_depths)
    return calls


# -- settings -----------------------------------------------------------------------------------------------


def test_settings_defaults_and_shipped_config() -> None:
    s = from_mapping({})
    assert (s.graphite_host, s.graphite_port, s.graphite_prefix) == ("127.0.0.1", 2003, "cmover")
    shipped = load_settings(str(REPO / "config.py"))
    assert (shipped.graphite_host, shipped.graphite_port, shipped.graphite_prefix) == ("127.0.0.1", 2003, "cmover")
    s = from_mapping({"GRAPHITE_HOST": "graphite.example.org", "GRAPHITE_PORT": 2103,
                      "GRAPHITE_PREFIX": "site-1.cm_over.X9"})
    assert (s.graphite_host, s.graphite_port, s.graphite_prefix) == ("graphite.example.org", 2103, "site-1.cm_over.X9")


@pytest.mark.parametrize("prefix", ["", ".cmover", "cmover.", "a..b", "cm over", "cm/over", "cmover.*",
                                    "cm\u00e9", "cmover\n", "a;tag=1"])
def test_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"GRAPHITE_PREFIX = .* must be dot-separated words.*fix config\.py"):
        from_mapping({"GRAPHITE_PREFIX": prefix})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("GRAPHITE_PORT", 0, "must be a TCP port"),
    ("GRAPHITE_PORT", 65536, "must be a TCP port"),
    ("GRAPHITE_PORT", "2003", "must be a int"),
    ("GRAPHITE_PORT", True, "must be a int"),
    ("GRAPHITE_HOST", "", "must be a host name"),
    ("GRAPHITE_HOST", "graphite host", "must be a host name"),
    ("GRAPHITE_HOST", "http://graphite/", "must be a host name"),
    ("GRAPHITE_HOST", 7, "must be a str"),
    ("GRAPHITE_PREFIX", None, "must be a str"),
])
def test_bad_host_and_port_are_refused(name: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name} = .*{message}.*fix .*config\.py"):
        from_mapping({name: value})


def test_queue_metric_is_one_word() -> None:
    assert graphite.queue_metric("cmover.copy.dirs") == "cmover_copy_dirs"
    assert reading.PASSES == ("copy", "delete", "dirtime", "verify")


@pytest.mark.parametrize(("host", "word"), [
    ("node1", "node1"), ("node1.example.org", "node1_example_org"), ("gpu-07_b", "gpu-07_b"),
    ("n\u00f6de b", "n_de_b"), ("a:b/c*d;e=f", "a_b_c_d_e_f"), ("fe80::1%eth0", "fe80__1_eth0"), ("", "_"),
])
def test_metric_word_keeps_only_safe_characters(host: str, word: str) -> None:
    assert graphite.metric_word(host) == word
    assert re.fullmatch(r"[A-Za-z0-9_-]+", graphite.metric_word(host))


def worker(name: str, **totals: int) -> WorkerStats:
    return WorkerStats(worker=name, node=f"copy_f@{name.rsplit(':', 1)[0]}", at=1.0, started=0.0, totals=totals,
                       since=0.0, then={})


def test_node_totals_sum_the_rated_counters_per_host() -> None:
    assert reading.RATED == (C.DIRS, C.SCANNED, C.COPIED, C.BYTES, C.DELETED, C.DIRTIMES, C.FAILED)
    nodes = reading.node_totals([
        worker("n2.example.org:20", files_copied=5, bytes_copied=500, tasks=9),  # tasks is not rated: left out
        worker("n1:10", dirs=2, files_scanned=7, files_copied=3),
        worker("n1:11.1", files_scanned=1, failed=1, layout_mismatches=4),
        worker("n1:12"),  # a record without counts: the host is still listed, with zeros
    ])
    zero = dict.fromkeys(reading.RATED, 0)
    assert nodes == {"n1": {**zero, C.DIRS: 2, C.SCANNED: 8, C.COPIED: 3, C.FAILED: 1},
                     "n2.example.org": {**zero, C.COPIED: 5, C.BYTES: 500}}
    assert list(nodes) == ["n1", "n2.example.org"] and all(list(v) == list(reading.RATED) for v in nodes.values())
    assert reading.node_totals([]) == {}


def test_node_metrics_are_one_word_per_host_and_never_sent_twice() -> None:
    zero = dict.fromkeys(reading.RATED, 0)
    metrics = graphite.node_metrics("p.copy", {"a.b": {**zero, C.COPIED: 2}, "a_b": {**zero, C.COPIED: 3},
                                               "c": {C.DIRS: 1}})
    assert metrics == [*((f"p.copy.node.a_b.{n}", 5 if n == C.COPIED else 0) for n in reading.RATED),
                       *((f"p.copy.node.c.{n}", 1 if n == C.DIRS else 0) for n in reading.RATED)]


# -- collect ------------------------------------------------------------------------------------------------


def test_collect_sends_the_current_runs_counters_queues_and_outstanding(
        memcached: None, site: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    depths = {"copy": {"cmover.copy.dirs": 3, "cmover.copy.files": 0},
              "delete": {"cmover.delete.dirs": 0, "cmover.delete.files": 7}}
    calls = no_broker(monkeypatch, depths)
    # Worker processes on two hosts: two processes on node-a.example.org, one on a host with an unsafe name.
    stats = MemcacheStats(lambda: keys.memcache_client(site), worker="node-a.example.org:101")
    other = MemcacheStats(lambda: keys.memcache_client(site), worker="node-a.example.org:102")
    host_b = MemcacheStats(lambda: keys.memcache_client(site), worker="node+b:7")
    ledger = MemcacheLedger(lambda: keys.memcache_client(site))

    old_copy = make_current(site, "copy")
    stats.add(old_copy, Counter({C.COPIED: 1000}))  # an older run of the pass: never sent once replaced
    copy_run = make_current(site, "copy")
    delete_run = make_current(site, "delete")
    stats.add(copy_run, Counter({C.SCANNED: 40, C.COPIED: 30, C.BYTES: 123_456_789}))
    other.add(copy_run, Counter({C.DIRS: 3, C.SCANNED: 2}))
    host_b.add(copy_run, Counter({C.COPIED: 2, C.FAILED: 1, C.LAYOUT_MISMATCH: 4}))
    stats.add(delete_run, Counter({C.DELETED: 11, C.KEPT: 5}))
    ledger.open_run(copy_run)
    for i in range(3):
        ledger.enqueue(copy_run, f"t{i}")
    ledger.done(copy_run, "t0")
    # delete_run has no ledger keys: its count cannot be vouched for, so no outstanding metric.
    # The delete pass is paused on every worker (what `cmover pause delete` records).
    mc = keys.memcache_client(site)
    pauses.update(mc, pauses.record_key(site, "delete"), lambda st: {**pauses.empty(), "all": True})

    metrics = graphite.collect(site)

    assert calls == ["check", "copy", "delete"]  # the broker once, then the passes with a current run
    names = [n for n, _ in metrics]
    assert len(names) == len(set(names)), "a metric sent twice"
    got = dict(metrics)
    want: dict[str, float] = {}
    for kind, totals in (("copy", {C.SCANNED: 42, C.COPIED: 32, C.BYTES: 123_456_789, C.FAILED: 1,
                                   C.LAYOUT_MISMATCH: 4, C.DIRS: 3}),
                         ("delete", {C.DELETED: 11, C.KEPT: 5})):
        want.update({f"t.cmover.{kind}.{name}": totals.get(name, 0) for name in C.ALL})
    for kind, word, sums in (("copy", "node-a_example_org", {C.DIRS: 3, C.SCANNED: 42, C.COPIED: 30,
                                                               C.BYTES: 123_456_789}),
                             ("copy", "node_b", {C.COPIED: 2, C.FAILED: 1}),  # layout_mismatches: not rated
                             ("delete", "node-a_example_org", {C.DELETED: 11})):
        want.update({f"t.cmover.{kind}.node.{word}.{name}": sums.get(name, 0) for name in reading.RATED})
    want.update({"t.cmover.copy.queue.cmover_copy_dirs": 3, "t.cmover.copy.queue.cmover_copy_files": 0,
                 "t.cmover.delete.queue.cmover_delete_dirs": 0, "t.cmover.delete.queue.cmover_delete_files": 7,
                 "t.cmover.copy.outstanding": 2, "t.cmover.copy.paused": 0, "t.cmover.delete.paused": 1})
    assert got == want
    assert not any(".dirtime." in n for n in names)  # never started: nothing sent
    readings = {r.kind: r for r in reading.read_passes(site)}
    assert list(readings["copy"].nodes) == ["node+b", "node-a.example.org"]  # the hosts as reported
    assert all(isinstance(v, int) for v in got.values())  # sent as integers, exact in the plaintext line


def test_collect_with_no_run_sends_nothing(memcached: None, site: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = no_broker(monkeypatch, {})
    assert graphite.collect(site) == []
    assert calls == ["check"]  # the broker is still checked: a broken site is reported before any pass


def test_collect_reports_an_unreachable_memcached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = no_broker(monkeypatch, {})
    port = closed_port()
    s = from_mapping({"MEMCACHED": f"127.0.0.1:{port}"})
    with pytest.raises(FatalError, match=rf"memcached at 127\.0\.0\.1:{port} is unreachable .*start it "
                                         r"\(memcached -M\) or fix MEMCACHED in config\.py"):
        graphite.collect(s)
    assert calls == []


def test_collect_reports_unreadable_worker_records(memcached: None, site: Settings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    no_broker(monkeypatch, {"copy": {}})
    run_id = make_current(site, "copy")
    monkeypatch.setattr(MemcacheStats, "workers", lambda self, run: None)  # memcached could not be read
    with pytest.raises(reading.ReadError, match=rf"cannot read the counters of run {run_id} from memcached at "
                                                 r"127\.0\.0\.1:11211; check that memcached is running") as info:
        graphite.collect(site)
    assert info.value.service == "memcached"


def test_collect_reports_unreadable_queue_depths(memcached: None, site: Settings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker, "check_broker", lambda s: None)

    def broken(kind: str) -> tuple[dict[str, int], int]:
        raise broker.BrokerUnreadable(f"the {kind} queues", "connection reset by peer")

    monkeypatch.setattr(broker, "pass_depths", broken)
    make_current(site, "dirtime")
    with pytest.raises(FatalError, match=r"cannot read the dirtime queue depths from the broker .*connection "
                                         r"reset by peer.*start RabbitMQ there or fix rabbitmq/rabbitmq\.conf"):
        graphite.collect(site)


# -- send ---------------------------------------------------------------------------------------------------


def test_send_writes_plaintext_lines(carbon: FakeCarbon) -> None:
    s = from_mapping({"GRAPHITE_PORT": carbon.port})
    graphite.send(s, [("cmover.copy.files_copied", 5), ("cmover.copy.bytes_copied", 12_345_678_901_234),
                      ("cmover.copy.queue.cmover_copy_dirs", 0), ("x.y", 1.5)], timestamp=1_700_000_000)
    carbon.wait_connections(1)
    assert carbon.lines == ["cmover.copy.files_copied 5 1700000000",
                            "cmover.copy.bytes_copied 12345678901234 1700000000",
                            "cmover.copy.queue.cmover_copy_dirs 0 1700000000", "x.y 1.5 1700000000"]
    assert carbon.connections == 1


def test_send_uses_one_connection_per_thousand_lines_and_whole_seconds(carbon: FakeCarbon) -> None:
    s = from_mapping({"GRAPHITE_PORT": carbon.port})
    before = int(time.time())
    graphite.send(s, [(f"cmover.m{i}", i) for i in range(2500)])
    carbon.wait_connections(3)
    assert len(carbon.lines) == 2500 and carbon.connections == 3
    stamps = {line.split()[2] for line in carbon.lines}
    assert len(stamps) == 1  # one timestamp for the whole call
    assert before <= int(stamps.pop()) <= time.time()
    assert sorted(int(line.split()[1]) for line in carbon.lines) == list(range(2500))


def test_send_of_nothing_only_connects(carbon: FakeCarbon) -> None:
    graphite.send(from_mapping({"GRAPHITE_PORT": carbon.port}), [])
    carbon.wait_connections(1)
    assert carbon.lines == []


def test_send_reports_an_unreachable_graphite() -> None:
    port = closed_port()
    with pytest.raises(graphite.GraphiteError) as info:
        graphite.send(from_mapping({"GRAPHITE_PORT": port}), [("cmover.copy.files_copied", 1)])
    assert str(info.value) == (f"cannot reach Graphite at 127.0.0.1:{port} (Connection refused); start carbon-cache "
                               "or fix GRAPHITE_HOST/GRAPHITE_PORT in config.py")


# -- send_graphite.py ---------------------------------------------------------------------------------------


def run_shim(tmp_path: Path, config: str, *args: str, rabbitmq: dict[str, str] | None = None,
             username: str = "cmover") -> subprocess.CompletedProcess[str]:
    """send_graphite.py with config.py (and rabbitmq/ files) in tmp_path, from another directory."""
    site = tmp_path / "site"
    (site / "rabbitmq").mkdir(parents=True, exist_ok=True)
    (site / "config.py").write_text(f"USERNAME = {username!r}\n" + config)
    for name, text in (rabbitmq or {}).items():
        (site / "rabbitmq" / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(site / "config.py")
    return subprocess.run([sys.executable, str(SHIM), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=60)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_shim_unreachable_graphite(tmp_path: Path) -> None:
    port = closed_port()
    r = run_shim(tmp_path, f"GRAPHITE_PORT = {port}\n")
    assert one_line(r) == (f"send_graphite: cannot reach Graphite at 127.0.0.1:{port} (Connection refused); start "
                           "carbon-cache or fix GRAPHITE_HOST/GRAPHITE_PORT in config.py")


def test_shim_unreachable_memcached(tmp_path: Path, carbon: FakeCarbon) -> None:
    port = closed_port()
    r = run_shim(tmp_path, f"GRAPHITE_PORT = {carbon.port}\nMEMCACHED = '127.0.0.1:{port}'\n")
    assert re.fullmatch(rf"send_graphite: memcached at 127\.0\.0\.1:{port} is unreachable \(.+\); start it "
                        r"\(memcached -M\) or fix MEMCACHED in config\.py", one_line(r))
    assert carbon.lines == []


def test_shim_unreachable_broker(tmp_path: Path, carbon: FakeCarbon, memcached: None) -> None:
    port = closed_port()
    r = run_shim(tmp_path, f"GRAPHITE_PORT = {carbon.port}\n", username="gt_broker",
                 rabbitmq={"rabbitmq.conf": f"127.0.0.1:{port}\n", "rabbitmq_gt_broker.conf": "secret\n"})
    assert re.fullmatch(rf"send_graphite: cannot reach the broker at 127\.0\.0\.1:{port} \(.+\); start RabbitMQ "
                        r"there or fix rabbitmq/rabbitmq\.conf.*", one_line(r))
    assert carbon.lines == []


def test_shim_without_broker_configuration(tmp_path: Path, carbon: FakeCarbon, memcached: None) -> None:
    r = run_shim(tmp_path, f"GRAPHITE_PORT = {carbon.port}\n", username="gt_nobroker")
    assert re.fullmatch(r"send_graphite: no broker configured: .*rabbitmq\.conf is missing; write the broker host "
                        r"into it .*", one_line(r))


def test_shim_bad_setting(tmp_path: Path) -> None:
    r = run_shim(tmp_path, "GRAPHITE_PREFIX = 'cm over'\n")
    assert one_line(r).startswith(f"send_graphite: {tmp_path / 'site' / 'config.py'}: GRAPHITE_PREFIX = 'cm over' must "
                                  "be dot-separated words")  # the file is named: it may not be the one edited


# -- dashboard ----------------------------------------------------------------------------------------------

_METRIC_RE = re.compile(r"\$prefix\.([A-Za-z0-9_*]+)\.([A-Za-z0-9_*]+)(?:\.([A-Za-z0-9_*]+))?"
                        r"(?:\.([A-Za-z0-9_*]+))?")


def test_dashboard_is_valid_and_names_only_metrics_we_send() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"]
    prefix_var = next(v for v in board["templating"]["list"] if v["name"] == "prefix")
    assert prefix_var["query"] == "cmover"
    ds_var = next(v for v in board["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["query"] == "graphite"
    panels = board["panels"]
    titles = [p["title"] for p in panels]
    assert len(set(titles)) == len(titles)
    seen: set[str] = set()
    for p in panels:
        assert p["datasource"] == {"type": "graphite", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "graphite", "uid": "${datasource}"}
            found = _METRIC_RE.findall(t["target"])
            assert found, t["target"]
            for kind, name, sub, leaf in found:
                assert kind in (*reading.PASSES, "*"), t["target"]
                if name == "node":  # <pass>.node.<host>.<counter>: every host, a counter sent per node
                    assert sub == "*" and leaf in reading.RATED, t["target"]
                    assert "aliasByNode(" in t["target"] and t["target"].endswith(", -2)"), t["target"]
                    seen.add(f"{kind}.node.{leaf}")
                elif name == "queue":
                    assert sub == "*" and not leaf, t["target"]
                else:
                    assert not leaf, t["target"]
                    assert not sub and (name in C.ALL or name in ("outstanding", "*")), t["target"]
                    seen.add(f"{kind}.{name}")
    for metric in ("copy.files_copied", "copy.files_scanned", "copy.failed", "copy.bytes_copied",
                   "delete.entries_deleted", "dirtime.dir_times_set", "copy.layout_mismatches",
                   "copy.node.files_copied", "copy.node.bytes_copied"):
        assert metric in seen, f"no panel shows {metric}"
    targets = json.dumps(panels)
    assert "perSecond(" in targets and "nonNegativeDerivative(" in targets and ".queue.*" in targets
