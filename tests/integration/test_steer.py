"""Steering a running pass with real workers: `cmover pause|resume` and `cmover pool grow|shrink`.

RabbitMQ, memcached and `celery worker` processes as in production (conftest.py); nothing is mocked.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.deploy import CELERY, DIRS_Q, FILES_Q, Deployment, DeploymentSet, Worker, explain, run
from support.snap import compare_trees

from cmover.core.settings import load_settings
from cmover.ops import steer

pytestmark = pytest.mark.integration

_RECEIVED_RE = re.compile(r"Task cmover\.copy\.\w+\[[0-9a-f-]+\] received")


def _received(w: Worker) -> int:
    return len(_RECEIVED_RE.findall(w.log_text()))


def _is_paused(dep: Deployment) -> bool:
    return steer.is_paused(load_settings(str(dep.config)), "copy")


def _flat_tree(root: Path, tops: int, subs: int, files: int = 1) -> int:
    """``tops`` x ``subs`` leaf directories with ``files`` small files each; returns the directory count."""
    for t in range(tops):
        for s in range(subs):
            leaf = root / f"t{t:02d}" / f"s{s:03d}"
            leaf.mkdir(parents=True)
            for f in range(files):
                (leaf / f"f{f}").write_bytes(b"%d/%d/%d\n" % (t, s, f))
    return tops * subs + tops


def _until(what: str, check: Callable[[], Any], timeout: float, poll: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not so after {timeout} s")
        time.sleep(poll)


def _one_line(r: Any) -> str:
    """The single stderr line of a rejected command (exit 2, nothing on stdout)."""
    assert r.returncode == 2, explain(r)
    assert r.stdout == "", explain(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmover: "), explain(r)
    return lines[0]


# -- 1. pause and resume in the middle of a pass ----------------------------------------------------------


def test_pause_then_resume_mid_pass(deployments: DeploymentSet, tmp_path: Path) -> None:
    """Paused mid-pass, nothing new starts (the queues still hold work); a worker that starts during the
    pause takes nothing either; after `cmover resume` the pass completes and the trees are identical."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    dirs = _flat_tree(src, 20, 200)
    dst.mkdir()
    # One task per directory: the 20 first-level tasks publish 200 tasks each (seconds in all), so the pass
    # still runs when the pause lands (~2 s after the command starts).
    dep = deployments.new("pause", src, dst, INLINE_ENTRIES=1, INLINE_SECONDS=0, REPORT_INTERVAL=0.5)
    dep.init_broker()
    w1 = dep.start_worker("w1", (DIRS_Q, FILES_Q))
    w1.wait_ready()

    run_id = dep.start_pass()
    # Paused as soon as the root directory is done: while the first-level tasks still fan out.
    _until("the root directory copied", lambda: w1.tasks_succeeded() >= 1, timeout=30, poll=0.05)
    t0 = time.monotonic()
    r = dep.cmover("pause", timeout=90)
    pause_s = time.monotonic() - t0
    assert r.returncode == 0, explain(r)
    assert re.search(rf"^paused copy on {re.escape(w1.node)}@\S+ \({DIRS_Q}, {FILES_Q}\)$", r.stdout, re.M), r.stdout
    assert "no copy task is running" in r.stdout, r.stdout
    assert _is_paused(dep)

    # A worker that starts during the pause (files queue only) leaves the queue out before consuming.
    w2 = dep.start_worker("w2", (FILES_Q,))
    before = (dep.status(run_id), _received(w1), w1.tasks_succeeded())
    t1 = time.monotonic()
    w2.wait_ready()
    assert f"the copy pass is paused: not consuming {FILES_Q}" in w2.log_text()
    time.sleep(max(0.0, 4 - (time.monotonic() - t1)))
    after = (dep.status(run_id), _received(w1), w1.tasks_succeeded())
    st = after[0]
    # Work is waiting, and stays there ("paused" once `cmover status` knows about pauses).
    assert st["state"] in ("running", "paused") and st["queues"][DIRS_Q] > 0, st
    assert st["totals"].get("tasks") == before[0]["totals"].get("tasks"), (before[0], st)
    assert st["totals"] == before[0]["totals"]
    assert st["outstanding"] == before[0]["outstanding"] > 0
    assert st["queues"] == before[0]["queues"]
    assert after[1:] == before[1:], "w1 received or finished tasks while paused"
    assert _received(w2) == 0
    assert st["totals"].get("dirs", 0) < dirs + 1, "the pass was complete before it could be paused"

    r = dep.cmover("resume", timeout=60)
    assert r.returncode == 0, explain(r)
    # Each worker gets back exactly the queues it had: w2 never consumed cmover.copy.dirs.
    assert re.search(rf"^resumed copy on {re.escape(w1.node)}@\S+ \({DIRS_Q}, {FILES_Q}\), "
                     rf"{re.escape(w2.node)}@\S+ \({FILES_Q}\)$", r.stdout, re.M), r.stdout
    assert not _is_paused(dep)
    final = dep.wait_complete(run_id, timeout=90)
    assert final["totals"].get("failed", 0) == 0, final
    assert final["totals"].get("dirs") == dirs + 1
    assert compare_trees(src, dst) == []
    assert _received(w1) > before[1]
    assert f"Started consuming from {FILES_Q}" in w2.log_text()
    assert f"Started consuming from {DIRS_Q}" not in w2.log_text()
    assert pause_s < 30, f"`cmover pause` took {pause_s:.1f} s"

    r = dep.cmover("resume")
    assert r.returncode == 0 and "copy was not paused" in r.stdout, explain(r)


# -- 2. a worker started while its pass is paused ---------------------------------------------------------


def test_worker_started_while_paused_consumes_nothing_until_resume(deployments: DeploymentSet,
                                                                   tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    dirs = _flat_tree(src, 4, 5, files=3)
    dst.mkdir()
    dep = deployments.new("late", src, dst, INLINE_ENTRIES=1, INLINE_SECONDS=0)
    dep.init_broker()
    # No worker yet: pool commands have nobody to talk to.
    assert "no worker answered" in _one_line(dep.cmover("pool", "grow", "1"))

    run_id = dep.start_pass()  # the root task waits on the broker
    r = dep.cmover("pause", "copy", "--no-wait")
    assert r.returncode == 0, explain(r)
    assert "paused copy: no worker consumes it now" in r.stdout, r.stdout
    assert _is_paused(dep)

    w = dep.start_worker("w1", (DIRS_Q, FILES_Q))
    w.wait_ready()
    time.sleep(1.5)
    assert f"the copy pass is paused: not consuming {DIRS_Q}, {FILES_Q}" in w.log_text()
    assert _received(w) == 0
    st = dep.status(run_id)
    assert st["queues"][DIRS_Q] == 1 and st["outstanding"] == 1, st

    r = dep.cmover("resume", "copy")
    assert r.returncode == 0, explain(r)
    assert re.search(rf"^resumed copy on {re.escape(w.node)}@\S+ \({DIRS_Q}, {FILES_Q}\)$", r.stdout, re.M), \
        r.stdout
    final = dep.wait_complete(run_id, timeout=60)
    assert final["totals"].get("dirs") == dirs + 1
    assert compare_trees(src, dst) == []
    assert _received(w) > 0


# -- 3. and 4. pool size, bad input ------------------------------------------------------------------------


@dataclass
class PoolSite:
    dep: Deployment
    w1: Worker
    w2: Worker
    names: dict[str, str]  # short node name -> full name


@pytest.fixture(scope="module")
def pool_site(module_deployments: DeploymentSet, tmp_path_factory: pytest.TempPathFactory) -> PoolSite:
    root = tmp_path_factory.mktemp("pool")
    (root / "src").mkdir()
    (root / "dst").mkdir()
    dep = module_deployments.new("pool", root / "src", root / "dst")
    dep.init_broker()
    w1 = dep.start_worker("w1", (DIRS_Q, FILES_Q), concurrency=1)
    w2 = dep.start_worker("w2", (FILES_Q,), concurrency=1)
    w1.wait_ready()
    w2.wait_ready()
    names = {w.node: f"{w.node}@{socket.gethostname()}" for w in (w1, w2)}  # what `-n NAME@%h` gives
    return PoolSite(dep, w1, w2, names)


def _pool_sizes(dep: Deployment, nodes: list[str]) -> dict[str, int]:
    """Pool processes per worker, as `celery inspect stats` reports them (the process list: its
    max-concurrency stays at the configured value). Naming the workers spares the reply timeout."""
    r = run([CELERY, "-A", "cmover.app", "inspect", "stats", "--json", "--timeout", "3", "-d", ",".join(nodes)],
            env=dep.env(), timeout=60)
    assert r.returncode == 0, explain(r)
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    return {node: len(s["pool"]["processes"]) for node, s in stats.items()}


def _expect_sizes(site: PoolSite, want: dict[str, int]) -> None:
    full = {site.names[k]: v for k, v in want.items()}
    _until(f"pool sizes {want}", lambda: _pool_sizes(site.dep, sorted(full)) == full, timeout=20, poll=0.2)


def test_pool_grow_and_shrink(pool_site: PoolSite) -> None:
    dep, names = pool_site.dep, pool_site.names
    _expect_sizes(pool_site, {"w1": 1, "w2": 1})

    r = dep.cmover("pool", "grow", "1")
    assert r.returncode == 0, explain(r)
    assert r.stdout.splitlines() == [f"{names['w1']}: pool will grow", f"{names['w2']}: pool will grow"], r.stdout
    _expect_sizes(pool_site, {"w1": 2, "w2": 2})

    # With NODE (here its short name) only that worker changes.
    r = dep.cmover("pool", "shrink", "1", "w1")
    assert r.returncode == 0, explain(r)
    assert r.stdout.splitlines() == [f"{names['w1']}: pool will shrink"], r.stdout
    _expect_sizes(pool_site, {"w1": 1, "w2": 2})
    time.sleep(1)
    assert _pool_sizes(dep, sorted(names.values())) == {names["w1"]: 1, names["w2"]: 2}

    # A worker whose pool would be left without a process is refused, the others shrink: exit 2.
    r = dep.cmover("pool", "shrink", "1")
    assert r.returncode == 2, explain(r)
    assert r.stdout.splitlines() == [f"{names['w2']}: pool will shrink"], r.stdout
    assert r.stderr.splitlines() == [f"{names['w1']}: has 1 pool process(es); shrinking by 1 would leave none"]
    _expect_sizes(pool_site, {"w1": 1, "w2": 1})


def test_bad_input_is_one_line_and_exit_2(pool_site: PoolSite) -> None:
    dep, names = pool_site.dep, pool_site.names
    assert "N must be a positive number" in _one_line(dep.cmover("pool", "grow", "0"))
    line = _one_line(dep.cmover("pool", "grow", "1", "nosuch@nowhere"))
    assert "no worker named 'nosuch@nowhere'" in line and names["w1"] in line and names["w2"] in line, line
    assert "no worker named 'nosuch'" in _one_line(dep.cmover("pause", "--node", "nosuch"))
    assert "no worker named 'nosuch'" in _one_line(dep.cmover("resume", "--node", "nosuch"))
    _one_line(dep.cmover("pool", "grow", "many"))
    _one_line(dep.cmover("pause", "nopass"))
    assert not _is_paused(dep)
