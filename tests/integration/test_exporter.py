"""``cmover exporter`` end to end: the Prometheus endpoint of a site, run as its own process, scraped over HTTP.

1. A real distributed copy pass (RabbitMQ, memcached, a celery worker): before it the scrape holds no pass
   metric, after it the counters equal ``cmover status --json`` and what was copied, with the queue depths
   and the ledger's count. Many scrapes leave the exporter's open files where they were.
2. memcached of the site goes away (a private memcached, killed): scrapes still answer 200 with
   ``cmover_up 0`` naming memcached, logged once; when it is back, ``cmover_up 1`` again.
3. The broker of the site is a closed port: ``cmover_up 0`` naming the broker.

The exporter stops with exit 0 on SIGTERM each time. When a service cannot be had, the tests fail; they
never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.deploy import DeploymentSet, Exporter, Samples
from support.metric_readers import free_port

from cmover.core.counters import C
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import Settings, load_settings
from cmover.ops import reading, runs
from cmover.state import keys
from cmover.state.runstats import MemcacheStats

pytestmark = pytest.mark.integration

def lab(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def copy_labels(run_id: str) -> frozenset[tuple[str, str]]:
    return lab(**{"pass": "copy", "run": run_id})


#: The one node of these tests: the workers and the test process run on this host.
HOST = socket.gethostname()


def node_samples(got: Samples) -> dict[tuple[str, str, str, str], float]:
    """(counter, pass, run, host) -> value of every cmover_node_<counter>_total sample."""
    out: dict[tuple[str, str, str, str], float] = {}
    for (name, labels), v in got.items():
        if name.startswith("cmover_node_") and name.endswith("_total"):
            d = dict(labels)
            out[(name.removeprefix("cmover_node_").removesuffix("_total"), d["pass"], d["run"], d["host"])] = v
    return out


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    made: list[Exporter] = []
    yield made
    for e in made:
        if e.proc.poll() is None:
            e.proc.kill()
            e.proc.wait()


def errors_of(got: Samples) -> dict[str, str]:
    """service -> message of the cmover_scrape_error_info samples."""
    return {dict(labels)["service"]: dict(labels)["message"] for name, labels in got
            if name == "cmover_scrape_error_info"}


def pass_samples(got: Samples) -> set[str]:
    return {name for name, labels in got if dict(labels).get("pass")}


# -- 1. a real pass ------------------------------------------------------------------------------------------


def test_scrapes_give_the_totals_of_a_distributed_copy_pass(deployments: DeploymentSet, tmp_path: Path,
                                                            exporters: list[Exporter]) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in ("a", "a/b", "c"):
        (src / d).mkdir(parents=True)
    for i in range(12):
        (src / ("a", "a/b", "c")[i % 3] / f"f{i}").write_bytes(b"x" * (100 * i + 1))
    dst.mkdir()
    site = deployments.new("exporter", src, dst)
    site.init_broker()
    exp = Exporter(site, "pass")
    exporters.append(exp)
    assert exp.stdout() == (f"cmover exporter: serving {exp.url} for site {site.username}; stop with SIGTERM "
                            "or Ctrl-C\n")

    before = exp.scrape()
    assert before[("cmover_up", lab())] == 1
    assert pass_samples(before) == set()  # no pass of this site has been started

    worker = site.start_worker("exporter")
    worker.wait_ready()
    run_id = site.start_pass("--min-size", "2", "--max-size", "1000")  # f0 (1 byte), f10 and f11 left out
    st = site.wait_complete(run_id, timeout=60)
    totals = st["totals"]
    assert totals[C.COPIED] == 9 and totals[C.BYTES] == sum(100 * i + 1 for i in range(1, 10)), totals
    assert totals[C.SIZE_FILTERED] == 3, totals

    got = exp.scrape()  # read afresh: the same process that saw nothing before

    assert got[("cmover_up", lab())] == 1
    assert errors_of(got) == {}
    for name in C.ALL:
        assert got[(f"cmover_{name}_total", copy_labels(run_id))] == totals.get(name, 0), name
    assert got[(f"cmover_{C.COPIED}_total", copy_labels(run_id))] == 9
    assert got[(f"cmover_{C.SIZE_FILTERED}_total", copy_labels(run_id))] == 3
    assert got[(f"cmover_{C.BYTES}_total", copy_labels(run_id))] == sum(100 * i + 1 for i in range(1, 10))
    assert got[(f"cmover_{C.DIRS}_total", copy_labels(run_id))] == 4  # the root, a, a/b, c
    queues = {dict(labels)["queue"]: v for (name, labels), v in got.items() if name == "cmover_queue_messages"}
    assert queues == st["queues"] == {"cmover.copy.dirs": 0, "cmover.copy.files": 0}
    assert got[("cmover_outstanding_tasks", lab(**{"pass": "copy"}))] == st["outstanding"] == 0
    assert {dict(labels)["pass"] for name, labels in got if dict(labels).get("pass")} == {"copy"}
    assert {dict(labels)["run"] for name, labels in got if "run" in dict(labels)} == {run_id}
    # One host: its worker processes counted everything, so the node's counters are the run's totals.
    assert node_samples(got) == {(name, "copy", run_id, HOST): totals.get(name, 0) for name in reading.RATED}
    assert (totals[C.SCANNED], totals[C.DIRS]) == (12, 4), totals

    # Scrapes are served for as long as it runs; each opens and closes its own connections.
    for _ in range(5):
        exp.scrape()
    files = exp.open_files()
    for _ in range(40):
        assert exp.scrape()[(f"cmover_{C.COPIED}_total", copy_labels(run_id))] == 9
    assert exp.open_files() <= files + 5, f"{files} open files after 5 scrapes, {exp.open_files()} after 45"

    assert exp.stop() == 0, exp.stderr()
    assert "Traceback" not in exp.stderr() and "cmover_up 0" not in exp.stderr(), exp.stderr()


# -- 2. memcached goes away ----------------------------------------------------------------------------------


def start_memcached(port: int) -> subprocess.Popen[bytes]:
    """A private memcached on 127.0.0.1:PORT, answering when this returns."""
    memcached = shutil.which("memcached")
    assert memcached, "memcached is needed (scripts/services.sh installs it)"
    proc = subprocess.Popen([memcached, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-M",
                             *(["-u", "root"] if os.geteuid() == 0 else [])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"private memcached on port {port} did not start")
            time.sleep(0.05)


def make_current(settings: Settings, kind: str, counts: dict[str, int]) -> str:
    """Record a run of ``kind`` as current, as cmover.ops.start.start does, with ``counts`` as its counters."""
    run_id = f"{kind}-exporter-{os.urandom(6).hex()}"
    spec = PassSpec(run_id=run_id, kind=PassKind(kind), src_root=os.fsencode(settings.source_mount),
                    dst_root=os.fsencode(settings.target_mount))
    keys.memcache_client(settings).set(runs._current_key(settings, kind),
                                         json.dumps({"spec": spec.as_dict(), "started": time.time()}), expire=3600)
    MemcacheStats(lambda: keys.memcache_client(settings)).add(run_id, Counter(counts))
    return run_id


def test_memcached_away_is_up_0_and_logged_once_then_up_again(deployments: DeploymentSet, tmp_path: Path,
                                                              exporters: list[Exporter]) -> None:
    port = free_port()
    mc = start_memcached(port)
    try:
        (tmp_path / "src").mkdir()
        (tmp_path / "dst").mkdir()
        site = deployments.new("exporter_mc", tmp_path / "src", tmp_path / "dst", MEMCACHED=f"127.0.0.1:{port}")
        site.init_broker()
        run_id = make_current(load_settings(str(site.config)), "delete", {C.DELETED: 40, C.KEPT: 900})
        exp = Exporter(site, "mc")
        exporters.append(exp)
        got = exp.scrape()
        assert got[("cmover_up", lab())] == 1
        assert got[(f"cmover_{C.DELETED}_total", lab(**{"pass": "delete", "run": run_id}))] == 40
        assert got[(f"cmover_{C.KEPT}_total", lab(**{"pass": "delete", "run": run_id}))] == 900
        assert ("cmover_outstanding_tasks", lab(**{"pass": "delete"})) not in got  # no ledger: cannot vouch
        # Counted by this process, on HOST (entries_kept is not rated).
        assert node_samples(got) == {(name, "delete", run_id, HOST): 40 if name == C.DELETED else 0
                                     for name in reading.RATED}

        os.kill(mc.pid, signal.SIGKILL)
        mc.wait()
        for _ in range(3):
            got = exp.scrape()
            assert got[("cmover_up", lab())] == 0
            assert list(errors_of(got)) == ["memcached"]
            assert f"memcached at 127.0.0.1:{port} is unreachable" in errors_of(got)["memcached"]
            assert pass_samples(got) == set()  # no stale numbers while they cannot be read
        assert exp.stderr().count("cmover_up 0") == 1, exp.stderr()
        assert exp.proc.poll() is None

        mc = start_memcached(port)  # back, empty: no pass has a current run any more
        got = exp.scrape()
        assert got[("cmover_up", lab())] == 1
        assert errors_of(got) == {} and pass_samples(got) == set()
        assert exp.stderr().count("answer again: scrapes report cmover_up 1") == 1, exp.stderr()
        assert exp.stop() == 0, exp.stderr()
    finally:
        if mc.poll() is None:
            mc.kill()
            mc.wait()


# -- 3. the broker is a closed port --------------------------------------------------------------------------


def test_broker_away_is_up_0(deployments: DeploymentSet, tmp_path: Path, exporters: list[Exporter]) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    site = deployments.new("exporter_nobroker", tmp_path / "src", tmp_path / "dst")
    port = free_port()
    site.rabbitmq_dir.mkdir()
    (site.rabbitmq_dir / "rabbitmq.conf").write_text(f"127.0.0.1:{port}\n")
    (site.rabbitmq_dir / f"rabbitmq_{site.username}.conf").write_text("not-used\n")
    exp = Exporter(site, "nobroker")
    exporters.append(exp)
    for _ in range(2):
        got = exp.scrape()
        assert got[("cmover_up", lab())] == 0
        assert list(errors_of(got)) == ["broker"]
        assert errors_of(got)["broker"].startswith(f"cannot reach the broker at 127.0.0.1:{port} ")
    assert exp.stderr().count("cmover_up 0") == 1, exp.stderr()
    assert exp.stop() == 0, exp.stderr()
