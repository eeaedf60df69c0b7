"""cmover.ops.exporter and ``cmover exporter``: the metric families of a reading, ``cmover_up 0`` when memcached or
the broker cannot be read (logged once per outage), scrapes over HTTP, and the command's start, stop and
one-line errors.

The collector is fed by an injected reading function here; one test reads the real memcached
(127.0.0.1:11211) with the broker replaced, and checks that the exporter and send_graphite.py give the same
numbers. tests/integration/test_exporter.py runs the whole chain against real RabbitMQ and memcached.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.deploy import Samples
from support.deploy import parse_samples as samples

from cmover.core.counters import C
from cmover.core.errors import ConfigError
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import from_mapping
from cmover.ops import broker, exporter, graphite, reading, runs
from cmover.ops.reading import PassReading, ReadError
from cmover.state import keys
from cmover.state.ledger import MemcacheLedger
from cmover.state.runstats import MemcacheStats

# Some tests here read and write the real memcached: the module runs with the memcached group.
pytestmark = pytest.mark.memcached

REPO = Path(__file__).resolve().parents[1]


def types(text: str) -> dict[str, str]:
    return {fam.name: fam.type for fam in text_string_to_metric_families(text)}


def scrape_registry(read: Callable[[], list[PassReading]]) -> tuple[str, exporter.PassCollector]:
    registry, collector = exporter.make_registry(read)
    return generate_latest(registry).decode(), collector


def lab(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def all_totals(**counts: int) -> dict[str, int]:
    """A reading's totals: every counter, 0 unless given."""
    return {name: counts.get(name, 0) for name in C.ALL}


def node(**counts: int) -> dict[str, int]:
    """A reading's per-node sums: every rated counter, 0 unless given."""
    return {name: counts.get(name, 0) for name in reading.RATED}


COPY = PassReading("copy", "copy-run-1", all_totals(files_scanned=40, files_copied=32, bytes_copied=123_456_789,
                                                    failed=1),
                   {"cmover.copy.dirs": 3, "cmover.copy.files": 0}, 2,
                   {"node-a.example.org": node(files_scanned=30, files_copied=30, bytes_copied=123_000_000),
                    "node-b": node(files_scanned=10, files_copied=2, bytes_copied=456_789, failed=1)})
DELETE = PassReading("delete", "delete-run-7", all_totals(entries_deleted=11, entries_kept=5),
                     {"cmover.delete.dirs": 0, "cmover.delete.files": 7}, None,
                     {"node-a.example.org": node(entries_deleted=11)}, paused=True)


# -- collector ----------------------------------------------------------------------------------------------


def test_a_reading_becomes_counters_queue_gauges_and_outstanding() -> None:
    text, _ = scrape_registry(lambda: [COPY, DELETE])
    got = samples(text)

    want: Samples = {}
    for r in (COPY, DELETE):
        for name in C.ALL:
            want[(f"cmover_{name}_total", lab(**{"pass": r.kind, "run": r.run_id}))] = r.totals[name]
        for host, sums in r.nodes.items():  # the host label as the workers report it, dots and all
            for name in reading.RATED:
                want[(f"cmover_node_{name}_total", lab(**{"pass": r.kind, "run": r.run_id, "host": host}))] = \
                    sums[name]
        for q, n in r.queues.items():
            want[("cmover_queue_messages", lab(**{"pass": r.kind, "queue": q}))] = n
    want[("cmover_outstanding_tasks", lab(**{"pass": "copy"}))] = 2  # delete: the ledger cannot vouch, absent
    want[("cmover_pass_paused", lab(**{"pass": "copy"}))] = 0
    want[("cmover_pass_paused", lab(**{"pass": "delete"}))] = 1
    want[("cmover_up", lab())] = 1
    duration = got.pop(("cmover_scrape_duration_seconds", lab()))
    assert got == want
    assert 0 <= duration < 1
    kinds = types(text)
    assert all(kinds[f"cmover_{name}"] == "counter" for name in C.ALL)
    assert all(kinds[f"cmover_node_{name}"] == "counter" for name in reading.RATED)
    # totals, nodes, queues, outstanding, paused, up
    assert len(want) == 2 * len(C.ALL) + 3 * len(reading.RATED) + 4 + 1 + 2 + 1
    assert (kinds["cmover_queue_messages"], kinds["cmover_outstanding_tasks"], kinds["cmover_pass_paused"],
            kinds["cmover_up"]) == ("gauge", "gauge", "gauge", "gauge")


def test_no_pass_started_is_up_with_the_names_listed_and_no_samples() -> None:
    text, _ = scrape_registry(list)
    got = samples(text)
    got.pop(("cmover_scrape_duration_seconds", lab()))
    assert got == {("cmover_up", lab()): 1}
    assert "# TYPE cmover_files_copied_total counter" in text  # names are listed even before the first run
    assert "# TYPE cmover_node_files_copied_total counter" in text


def test_every_scrape_reads_anew() -> None:
    calls: list[int] = []

    def read() -> list[PassReading]:
        calls.append(1)
        return [PassReading("copy", "r", all_totals(files_copied=len(calls)), {}, len(calls))]

    registry, _ = exporter.make_registry(read)
    assert calls == []  # registering reads nothing
    for i in (1, 2, 3):
        got = samples(generate_latest(registry).decode())
        assert got[("cmover_files_copied_total", lab(**{"pass": "copy", "run": "r"}))] == i
        assert got[("cmover_outstanding_tasks", lab(**{"pass": "copy"}))] == i


def failing(errors: list[BaseException | None]) -> Callable[[], list[PassReading]]:
    """A reader raising the next of ``errors`` on each call (None: a good reading of COPY)."""
    it = iter(errors)

    def read() -> list[PassReading]:
        exc = next(it)
        if exc is not None:
            raise exc
        return [COPY]

    return read


MC_DOWN = ("memcached at 127.0.0.1:1 is unreachable ([Errno 111] Connection refused); start it (memcached -M) or "
           "fix MEMCACHED in config.py")
BROKER_DOWN = "cannot reach the broker at 127.0.0.1:2 (refused); start RabbitMQ there or fix rabbitmq/rabbitmq.conf"


def test_an_outage_is_up_0_with_the_reason_and_logged_once(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inner = failing([ReadError("memcached", MC_DOWN), ReadError("memcached", MC_DOWN),
                     ReadError("broker", BROKER_DOWN), None, None, ReadError("broker", BROKER_DOWN)])
    # The exporter's clock is one the reading moves: each reading takes a known time, failed or not, and
    # the scrape must report exactly that (binary fractions: exact through the text format).
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(exporter, "time", SimpleNamespace(monotonic=lambda: clock.now))
    took = iter([0.25, 1.5, 0.125, 3.0, 0.5, 2.25, 0.75])
    spent: list[float] = []

    def read() -> list[PassReading]:
        spent.append(next(took))
        clock.now += spent[-1]
        return inner()

    registry, _ = exporter.make_registry(read)
    caplog.set_level(logging.INFO, logger="cmover.ops.exporter")

    def scrape() -> Samples:
        got = samples(generate_latest(registry).decode())
        assert got.pop(("cmover_scrape_duration_seconds", lab())) == spent[-1]
        return got

    for _ in range(2):
        assert scrape() == {("cmover_up", lab()): 0,
                            ("cmover_scrape_error_info", lab(service="memcached", message=MC_DOWN)): 1}
    assert [r.getMessage() for r in caplog.records] == [f"{MC_DOWN}; scrapes report cmover_up 0 until this is fixed"]
    assert caplog.records[0].levelno == logging.WARNING and not caplog.records[0].exc_info

    assert scrape() == {("cmover_up", lab()): 0,
                        ("cmover_scrape_error_info", lab(service="broker", message=BROKER_DOWN)): 1}
    assert len(caplog.records) == 2  # another service: another outage
    for _ in range(2):
        got = scrape()
        assert got[("cmover_up", lab())] == 1 and not any(n == "cmover_scrape_error_info" for n, _ in got)
        assert got[("cmover_files_copied_total", lab(**{"pass": "copy", "run": "copy-run-1"}))] == 32
    assert [r.getMessage() for r in caplog.records][2:] == [
        "memcached and the broker answer again: scrapes report cmover_up 1"]
    scrape()
    assert len(caplog.records) == 4  # a new outage after the recovery is logged again


def test_a_fault_of_the_exporter_is_reported_in_the_scrape_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    read = failing([KeyError("spec"), KeyError("spec")])
    registry, _ = exporter.make_registry(read)
    for _ in range(2):
        got = samples(generate_latest(registry).decode())
        assert got[("cmover_up", lab())] == 0
        assert got[("cmover_scrape_error_info", lab(service="exporter", message="KeyError: 'spec'"))] == 1
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None  # with its traceback, once


def test_exporter_and_graphite_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_passes against the real memcached (broker replaced) feeds both; their values agree."""
    from pymemcache.client.base import Client

    Client(("127.0.0.1", 11211), connect_timeout=2, timeout=5).version()  # memcached is required: fail if absent
    site = from_mapping({"USERNAME": f"ex_{uuid.uuid4().hex[:12]}", "MEMCACHED": "127.0.0.1:11211",
                         "GRAPHITE_PREFIX": "p"})
    monkeypatch.setattr(broker, "check_broker", lambda s: None)
    monkeypatch.setattr(broker, "pass_depths",
                        lambda kind: ({f"cmover.{kind}.dirs": 4, f"cmover.{kind}.files": 9}, 0))
    mc = keys.memcache_client(site)
    run_id = f"copy-ex-{uuid.uuid4().hex}"
    spec = PassSpec(run_id=run_id, kind=PassKind.COPY, src_root=b"/src", dst_root=b"/dst")
    mc.set(runs._current_key(site, "copy"), json.dumps({"spec": spec.as_dict(), "started": time.time()}),
           expire=600)
    try:
        MemcacheStats(lambda: mc, worker="ex-node.example.org:5").add(
            run_id, Counter({C.COPIED: 5, C.BYTES: 2**40 + 3, C.DIRS: 2}))
        MemcacheStats(lambda: mc, worker="ex-node.example.org:6").add(run_id, Counter({C.COPIED: 1, C.SCANNED: 6}))
        ledger = MemcacheLedger(lambda: mc)
        ledger.open_run(run_id)
        ledger.enqueue(run_id, "t1")

        readings = reading.read_passes(site)
        text, _ = scrape_registry(lambda: readings)
        prom = samples(text)
        sent = dict(graphite.collect(site))
    finally:
        mc.delete_many([runs._current_key(site, "copy"), f"cm:{run_id}:workers",
                        f"cm:{run_id}:w:ex-node.example.org:5", f"cm:{run_id}:w:ex-node.example.org:6"])
    assert [r.run_id for r in readings] == [run_id]
    labels = lab(**{"pass": "copy", "run": run_id})
    for name in C.ALL:
        assert prom[(f"cmover_{name}_total", labels)] == sent[f"p.copy.{name}"], name
    assert prom[(f"cmover_{C.BYTES}_total", labels)] == 2**40 + 3
    assert [r.nodes for r in readings] == [{"ex-node.example.org": {**dict.fromkeys(reading.RATED, 0), C.COPIED: 6,
                                                                    C.BYTES: 2**40 + 3, C.DIRS: 2, C.SCANNED: 6}}]
    node_labels = lab(**{"pass": "copy", "run": run_id, "host": "ex-node.example.org"})
    for name in reading.RATED:
        assert prom[(f"cmover_node_{name}_total", node_labels)] == sent[f"p.copy.node.ex-node_example_org.{name}"], name
    assert {dict(labels)["host"] for n, labels in prom if n.startswith("cmover_node_")} == {"ex-node.example.org"}
    for q in ("dirs", "files"):
        assert prom[("cmover_queue_messages", lab(**{"pass": "copy", "queue": f"cmover.copy.{q}"}))] == \
            sent[f"p.copy.queue.cmover_copy_{q}"]
    assert prom[("cmover_outstanding_tasks", lab(**{"pass": "copy"}))] == sent["p.copy.outstanding"] == 1


# -- HTTP ---------------------------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[Callable[[Callable[[], list[PassReading]]], str]]:
    """serve(a registry of ``read``) on a free loopback port; returns its URL. Servers shut down afterwards."""
    servers = []

    def start(read: Callable[[], list[PassReading]]) -> str:
        registry, _ = exporter.make_registry(read)
        server = exporter.serve(registry, "127.0.0.1", 0)
        servers.append(server)
        return exporter.url(server)

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def http_get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read().decode()


def test_scrape_over_http_serves_only_our_registry(served: Callable[..., str]) -> None:
    url = served(lambda: [COPY])
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    status, ctype, body = http_get(url)
    assert status == 200 and ctype.startswith("text/plain")
    got = samples(body)
    assert got[("cmover_up", lab())] == 1
    assert got[("cmover_bytes_copied_total", lab(**{"pass": "copy", "run": "copy-run-1"}))] == 123_456_789
    # Nothing of the process-wide default registry (python_gc_*, process_*, python_info).
    assert all(name.startswith("cmover_") for name, _ in got), sorted({n for n, _ in got})


def test_scrape_over_http_during_an_outage_is_200_with_up_0(served: Callable[..., str]) -> None:
    url = served(failing([ReadError("memcached", MC_DOWN)] * 3))
    for _ in range(3):
        status, _, body = http_get(url)
        assert status == 200
        assert samples(body)[("cmover_up", lab())] == 0


def test_serve_refuses_a_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        registry, _ = exporter.make_registry(list)
        with pytest.raises(ConfigError) as info:
            exporter.serve(registry, "127.0.0.1", port)
    assert str(info.value) == (f"cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port, "
                               "or stop the program listening there")


def test_url_brackets_ipv6() -> None:
    class S:
        server_address = ("::1", 9477, 0, 0)

    assert exporter.url(S()) == "http://[::1]:9477/metrics"  # type: ignore[arg-type]


# -- cmover exporter ----------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound once by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_site(tmp_path: Path, *, broker: bool = True) -> dict[str, str]:
    """A site whose memcached and broker are closed ports (nothing to read); the env to run cmover in it."""
    site = tmp_path / "site"
    (site / "rabbitmq").mkdir(parents=True)
    (site / "config.py").write_text(f"USERNAME = 'exporter_unit'\nMEMCACHED = '127.0.0.1:{free_port()}'\n")
    if broker:
        (site / "rabbitmq" / "rabbitmq.conf").write_text(f"127.0.0.1:{free_port()}\n")
        (site / "rabbitmq" / "rabbitmq_exporter_unit.conf").write_text("pw-unit\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(site / "config.py")
    return env


def cmover(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cmover", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_command_refuses_a_bad_port(tmp_path: Path, port: str) -> None:
    r = cmover(make_site(tmp_path), "exporter", "--port", port)
    assert one_line(r) == f"cmover: --port {port} must be a TCP port, 1 to 65535 (default 9477)"


def test_command_refuses_a_port_that_is_not_a_number(tmp_path: Path) -> None:
    r = cmover(make_site(tmp_path), "exporter", "--port", "http")
    assert one_line(r) == "cmover: argument --port: invalid int value: 'http'; see `cmover exporter --help`"


def test_command_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = cmover(make_site(tmp_path), "exporter", "--port", str(port))
    assert one_line(r) == (f"cmover: cannot listen on 127.0.0.1:{port} (Address already in use); choose another "
                           "--port, or stop the program listening there")


def test_command_refuses_an_address_not_of_this_machine(tmp_path: Path) -> None:
    r = cmover(make_site(tmp_path), "exporter", "--listen", "192.0.2.1", "--port", str(free_port()))
    assert one_line(r).startswith("cmover: cannot listen on 192.0.2.1:")
    assert r.stderr.rstrip().endswith("give --listen an address of this machine (127.0.0.1, or 0.0.0.0 / :: for "
                                      "every interface)")


def test_command_refuses_a_site_without_broker(tmp_path: Path) -> None:
    r = cmover(make_site(tmp_path, broker=False), "exporter", "--port", str(free_port()))
    assert one_line(r).startswith("cmover: no broker configured: ")


def start_exporter(env: dict[str, str], port: int) -> tuple[subprocess.Popen[str], str]:
    """``cmover exporter --port PORT`` in the background; (process, its first stdout line) once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "cmover", "exporter", "--port", str(port)], env=env, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line


@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_command_serves_until_stopped(tmp_path: Path, sig: signal.Signals, rc: int) -> None:
    env = make_site(tmp_path)
    port = free_port()
    proc, line = start_exporter(env, port)
    try:
        assert line == (f"cmover exporter: serving http://127.0.0.1:{port}/metrics for site exporter_unit; stop "
                        "with SIGTERM or Ctrl-C\n")
        for _ in range(2):
            status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            got = samples(body)
            assert got[("cmover_up", lab())] == 0
            assert [dict(labels)["service"] for name, labels in got if name == "cmover_scrape_error_info"] == \
                ["memcached"]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == rc, err
    assert out == ""
    # The reading at start logged the outage; the two scrapes of the same outage added nothing.
    assert err.count("is unreachable") == 1, err
    assert "pw-unit" not in err  # the broker password is never printed
    if sig == signal.SIGINT:
        assert err.splitlines()[-1].startswith("cmover: interrupted after ")
    with pytest.raises(OSError):  # the port is released
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_help_names_the_defaults() -> None:
    r = subprocess.run([sys.executable, "-m", "cmover", "exporter", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "default 127.0.0.1" in text and "default 9477" in text and "0.0.0.0" in text
    assert exporter.DEFAULT_PORT == 9477 and exporter.DEFAULT_LISTEN == "127.0.0.1"
