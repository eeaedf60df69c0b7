"""send_graphite.py end to end: a real distributed copy pass (RabbitMQ, memcached, a celery worker), the
current runs of the other passes recorded the way ``cmover start`` records them, and a real carbon-cache
(scripts/services.sh ensure_carbon) whose whisper files are read back and compared with the run totals.

carbon stores metrics whose path starts with "cmover" every second, so each value read back is exactly
the one sent. When carbon (or the whisper module in .venv) cannot be had, the tests fail; they never skip.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from support.deploy import BIN, REPO, Deployment, DeploymentSet, explain, run

from cmover.core.counters import C
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import Settings, load_settings
from cmover.ops import graphite, reading, runs
from cmover.state import keys
from cmover.state.ledger import MemcacheLedger
from cmover.state.runstats import MemcacheStats

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Carbon:
    host: str
    port: int
    whisper_dir: Path


@pytest.fixture(scope="module")
def carbon() -> Carbon:
    """Our carbon-cache on loopback, started when missing; a failure fails the tests."""
    try:
        r = run(["bash", "-c", "source scripts/services.sh && ensure_carbon && carbon_info"], timeout=600)
    except Exception as exc:  # a timeout included
        pytest.fail(f"scripts/services.sh ensure_carbon did not finish: {exc}")
    if r.returncode != 0:
        pytest.fail(f"scripts/services.sh ensure_carbon failed: carbon-cache is required\n{explain(r)}")
    host, port, whisper_dir = r.stdout.split()
    try:
        import whisper  # noqa: F401
    except ImportError:
        pytest.fail("the whisper module is missing from .venv; run scripts/services.sh ensure_venv")
    with socket.create_connection((host, int(port)), timeout=5):
        pass
    return Carbon(host, int(port), Path(whisper_dir))


@pytest.fixture(scope="module")
def prefix(carbon: Carbon) -> Iterator[str]:
    """GRAPHITE_PREFIX of this module: unique (no value of an earlier session is read), under "cmover"."""
    p = f"cmover_it_{secrets.token_hex(4)}"
    yield p
    shutil.rmtree(carbon.whisper_dir / p, ignore_errors=True)


@pytest.fixture(scope="module")
def site(module_deployments: DeploymentSet, tmp_path_factory: pytest.TempPathFactory, carbon: Carbon,
         prefix: str) -> Deployment:
    """A site with its vhost, a small source tree, and config.py pointing at our carbon."""
    root = tmp_path_factory.mktemp("graphite")
    src, dst = root / "src", root / "dst"
    for d in ("a", "a/b", "c"):
        (src / d).mkdir(parents=True)
    for i in range(12):
        (src / ("a", "a/b", "c")[i % 3] / f"f{i}").write_bytes(b"x" * (100 * i + 1))
    dst.mkdir()
    dep = module_deployments.new("graphite", src, dst, GRAPHITE_HOST=carbon.host, GRAPHITE_PORT=carbon.port,
                                 GRAPHITE_PREFIX=prefix)
    dep.init_broker()
    return dep


def send_graphite(dep: Deployment, *args: str) -> Any:
    r = run([BIN / "python", REPO / "send_graphite.py", *args], env=dep.env(), timeout=60)
    assert r.returncode == 0, explain(r)
    return r


def stored(carbon: Carbon, metric: str) -> float | None:
    """The newest value carbon wrote for ``metric`` in the last 10 minutes, None when there is none (yet)."""
    import whisper

    path = carbon.whisper_dir.joinpath(*metric.split(".")).with_suffix(".wsp")
    if not path.exists():
        return None
    try:
        _, values = whisper.fetch(str(path), time.time() - 600, time.time() + 60)
    except whisper.CorruptWhisperFile:
        # carbon creates a file and writes its header afterwards: a reader in between sees it empty
        return None
    got = [v for v in values if v is not None]
    return got[-1] if got else None


def read_back(carbon: Carbon, expected: dict[str, float], timeout: float = 15) -> None:
    """Wait until carbon has written every expected value (its writer runs asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {m: stored(carbon, m) for m in expected}
        if got == expected:
            return
        if time.monotonic() > deadline:
            wrong = {m: (got[m], v) for m, v in expected.items() if got[m] != v}
            pytest.fail(f"carbon holds other values than expected (metric: (stored, expected)): {wrong}")
        time.sleep(0.2)


def stored_metrics(carbon: Carbon, prefix: str, kind: str) -> set[str]:
    base = carbon.whisper_dir / prefix / kind
    return {".".join((prefix, kind, *p.relative_to(base).with_suffix("").parts)) for p in base.rglob("*.wsp")}


#: The one node of these tests: the workers and the test process run on this host.
HOST = socket.gethostname()


def expected_for(prefix: str, kind: str, totals: dict[str, int], queues: dict[str, int],
                 outstanding: int | None, node: dict[str, int]) -> dict[str, float]:
    """Every metric of a pass; ``node`` holds the rated counters counted on HOST (0 unless given)."""
    want: dict[str, float] = {f"{prefix}.{kind}.{name}": totals.get(name, 0) for name in C.ALL}
    word = graphite.metric_word(HOST)
    want.update({f"{prefix}.{kind}.node.{word}.{name}": node.get(name, 0) for name in reading.RATED})
    want.update({f"{prefix}.{kind}.queue.{q.replace('.', '_')}": n for q, n in queues.items()})
    if outstanding is not None:
        want[f"{prefix}.{kind}.outstanding"] = outstanding
    want[f"{prefix}.{kind}.paused"] = 0
    return want


def test_a_distributed_copy_pass_reaches_graphite(site: Deployment, carbon: Carbon, prefix: str) -> None:
    worker = site.start_worker("graphite")
    worker.wait_ready()
    run_id = site.start_pass("--max-size", "1K")  # f11 (1101 bytes) left out
    st = site.wait_complete(run_id, timeout=60)
    totals = st["totals"]
    assert totals[C.COPIED] == 11 and totals[C.BYTES] == sum(100 * i + 1 for i in range(11)), totals
    assert totals[C.SIZE_FILTERED] == 1, totals
    view = site.cmover("status", "copy", timeout=60)
    assert re.search(r"^left out  +0 by age filters, 1 by size, 0 excluded", view.stdout, re.M), explain(view)

    r = send_graphite(site, "-v")

    assert r.stderr == ""
    # counters, one node's counters, two queues, outstanding, paused
    n_metrics = len(C.ALL) + len(reading.RATED) + 2 + 1 + 1
    assert r.stdout == (f"send_graphite: sent {n_metrics} metrics to {carbon.host}:{carbon.port} as {prefix}.* "
                        f"(copy run {run_id})\n")
    # One host: its worker processes counted everything, so the node's counters are the run's totals.
    want = expected_for(prefix, "copy", totals, {"cmover.copy.dirs": 0, "cmover.copy.files": 0}, 0, totals)
    assert (totals[C.SCANNED], totals[C.DIRS]) == (12, 4), totals  # the root, a, a/b, c
    read_back(carbon, want)
    assert stored_metrics(carbon, prefix, "copy") == set(want)  # nothing else was sent for the pass


def _make_current(settings: Settings, kind: str) -> str:
    """Record a new run of ``kind`` as the current one, as cmover.ops.start.start does; return its id."""
    run_id = f"{kind}-graphite-{secrets.token_hex(6)}"
    spec = PassSpec(run_id=run_id, kind=PassKind(kind), src_root=os.fsencode(settings.source_mount),
                    dst_root=os.fsencode(settings.target_mount))
    keys.memcache_client(settings).set(runs._current_key(settings, kind),
                                         json.dumps({"spec": spec.as_dict(), "started": time.time()}),
                                         expire=3600)
    return run_id


def _publish(settings: Settings, counts: dict[str, int]) -> None:
    """Put ``n`` messages on each named pass queue (declared as the app declares it), confirmed."""
    with Connection(settings.broker_url(), transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        for name, n in counts.items():
            exchange = Exchange(name, type="direct", durable=True)
            queue = Queue(name, exchange, routing_key=name, durable=True)
            for i in range(n):
                producer.publish({"graphite-test": i}, exchange=exchange, routing_key=name, declare=[queue],
                                 serializer="json", delivery_mode=2)


def test_current_runs_of_every_pass_and_their_queues_reach_graphite(site: Deployment, carbon: Carbon,
                                                                    prefix: str) -> None:
    settings = load_settings(str(site.config))
    assert re.fullmatch(r".*/site-graphite/rabbitmq", settings.rabbitmq_dir)
    stats = MemcacheStats(lambda: keys.memcache_client(settings))
    ledger = MemcacheLedger(lambda: keys.memcache_client(settings))

    delete_run = _make_current(settings, "delete")
    stats.add(delete_run, Counter({C.DELETED: 40, C.DIRS_DELETED: 6, C.KEPT: 900, C.FAILED: 2}))
    ledger.open_run(delete_run)
    for i in range(5):
        ledger.enqueue(delete_run, f"delete-task-{i}")
    dirtime_run = _make_current(settings, "dirtime")  # no ledger keys: outstanding unknown, not sent
    stats.add(dirtime_run, Counter({C.DIRTIMES: 321, C.DIRS_MISSING: 1}))
    _publish(settings, {"cmover.delete.dirs": 3, "cmover.delete.files": 2})

    r = send_graphite(site)
    assert (r.stdout, r.stderr) == ("", "")  # cron: silent on success

    delete_totals = {C.DELETED: 40, C.DIRS_DELETED: 6, C.KEPT: 900, C.FAILED: 2}
    dirtime_totals = {C.DIRTIMES: 321, C.DIRS_MISSING: 1}
    # Counted by this process, on HOST: the node holds the rated counters (dirs_deleted, kept: not rated).
    want = expected_for(prefix, "delete", delete_totals, {"cmover.delete.dirs": 3, "cmover.delete.files": 2}, 5,
                        {C.DELETED: 40, C.FAILED: 2})
    want_dirtime = expected_for(prefix, "dirtime", dirtime_totals, {"cmover.dirtime.dirs": 0,
                                                                    "cmover.dirtime.files": 0}, None,
                                {C.DIRTIMES: 321})
    read_back(carbon, {**want, **want_dirtime})
    assert stored_metrics(carbon, prefix, "delete") == set(want)
    assert stored_metrics(carbon, prefix, "dirtime") == set(want_dirtime)

    # More work: the next send carries the new cumulative totals.
    stats.add(delete_run, Counter({C.DELETED: 10}))
    ledger.done(delete_run, "delete-task-0")
    send_graphite(site)  # within the same second it overwrites the point: the newest value is the one read
    read_back(carbon, {f"{prefix}.delete.{C.DELETED}": 50, f"{prefix}.delete.outstanding": 4,
                       f"{prefix}.delete.{C.KEPT}": 900,
                       f"{prefix}.delete.node.{graphite.metric_word(HOST)}.{C.DELETED}": 50})
