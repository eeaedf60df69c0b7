"""`cmover start copy --wait` is never early and its totals are the real counts, also when a worker dies.

The worker running a task is killed (SIGKILL of its whole node) while every other task of the pass is
done: the broker requeues the message, and for a while no worker runs at all. `--wait` must keep
waiting through that (the ledger still counts the task), and once a new worker has run the task it
must report "complete" with the tree identical and totals equal to what the workers really did: the
killed delivery counts nowhere, every finished one exactly once (see cmover.ops.status.reports_complete).

The task is held in the first worker by the fault seam of tests/faults/seams.py (CMFAULT_SLOW: copying
one file sleeps first); the second worker runs without it.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from support.deploy import BIN, CMOVER, REPO, DeploymentSet, explain
from support.snap import compare_trees
from support.tree import random_tree

pytestmark = pytest.mark.integration

SEAMS = REPO / "tests" / "faults" / "seams.py"
SLOW = "slow/slow.dat"


def _mc():
    from pymemcache.client.base import Client

    return Client(("127.0.0.1", 11211))


def _reported(run_id: str) -> tuple[int | None, int]:
    """(deliveries the ledger counts as finished, ``tasks`` the run's worker records add up to)."""
    from cmover.state.ledger import MemcacheLedger
    from cmover.state.runstats import MemcacheStats

    records = MemcacheStats(_mc).workers(run_id) or []
    return MemcacheLedger(_mc).finished_count(run_id), sum(w.totals.get("tasks", 0) for w in records)


def test_wait_is_exact_when_the_worker_of_a_task_dies(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=31, n_files=300, n_dirs=20, weird_names=False, owners=False)
    (src / "slow").mkdir()
    for i in range(4):
        (src / "slow" / f"small-{i}").write_bytes(b"s" * (100 + i))
    (src / SLOW).write_bytes(b"x" * 5000)
    dst.mkdir()
    n_dirs = sum(1 for p in src.rglob("*") if p.is_dir() and not p.is_symlink())
    n_files = sum(1 for _ in src.rglob("*")) - n_dirs
    dep = deployments.new("waitkill", src, dst, INLINE_ENTRIES=0, BATCH=10)
    dep.init_broker()
    dep.extra_env["CMFAULT_SLOW"] = f"{SLOW}=600"  # held until killed
    victim = dep.start_worker("victim", concurrency=2, prefix=(str(BIN / "python"), str(SEAMS)))
    del dep.extra_env["CMFAULT_SLOW"]
    victim.wait_ready()

    waiter = subprocess.Popen([str(CMOVER), "start", "copy", "--wait", "--json"], cwd=REPO, env=dep.env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, errors="replace")
    try:
        # Everything done but the held task, and every count of the victim reported (a count a process had
        # not reported when killed is lost by design, and the totals below could not be exact): kill.
        deadline = time.monotonic() + 60
        while True:
            assert waiter.poll() is None, f"--wait exited with a task held in a worker: {waiter.communicate()}"
            st = dep.status()
            if f"copying b'{SLOW}'" in victim.log_text() and st["outstanding"] == 1 and not any(
                    st["queues"].values()):
                finished, reported = _reported(st["run_id"])
                if finished == reported:
                    break
            assert time.monotonic() < deadline, f"the pass did not get down to the held task: {st}"
            time.sleep(0.2)
        victim.kill_group()
        victim.proc.wait(10)

        # No worker at all now, the message back in its queue: still running, and --wait still waits
        # (through several of its ledger probes and at least one full reading).
        deadline = time.monotonic() + 30
        while sum((st := dep.status())["queues"].values()) != 1:
            assert time.monotonic() < deadline, f"the killed task's message was not requeued: {st}"
            time.sleep(0.2)
        time.sleep(1.5)
        assert waiter.poll() is None, f"--wait exited while a task was outstanding: {waiter.communicate()}"
        st = dep.status()
        assert (st["state"], st["outstanding"]) == ("running", 1), st

        survivor = dep.start_worker("survivor", concurrency=2)
        try:
            stdout, stderr = waiter.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"--wait did not end after the task was redelivered:\n{survivor.log_text()[-3000:]}")
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    res = subprocess.CompletedProcess(waiter.args, waiter.returncode, stdout, stderr)
    assert res.returncode == 0, explain(res)
    out = json.loads(stdout)
    assert out["state"] == "complete", out

    # Never early: the held file is there, and so is everything else.
    assert (dst / SLOW).read_bytes() == (src / SLOW).read_bytes()
    assert compare_trees(src, dst) == []

    # The summary's totals are the real counts: every entry looked at once (the killed delivery counts
    # nowhere, its redelivery finds what the killed one copied identical), every finished task once.
    t = out["totals"]
    assert t["files_scanned"] == n_files, t
    assert t.get("files_copied", 0) + t.get("files_skipped", 0) == n_files, t
    assert t["dirs"] == n_dirs + 1 and t["dirs_discovered"] == n_dirs, t
    assert t.get("failed", 0) == 0 and t.get("dead_lettered", 0) == 0, t
    assert t["tasks"] == victim.tasks_succeeded() + survivor.tasks_succeeded(), t
    assert survivor.tasks_succeeded() >= 1

    # What --wait relied on: the ledger's finished deliveries and the reported tasks agree exactly.
    assert _reported(out["run_id"]) == (t["tasks"], t["tasks"])
    assert dep.status(out["run_id"])["totals"] == t

    # Reports that can never add up, as a process killed with unreported counts leaves them (here a
    # worker whose config.py turns its counters off): --wait still ends, "complete", after at most
    # cmover.ops.status.SETTLE, instead of waiting for them for ever.
    survivor.stop()
    no_stats = dep.root / "config-no-stats.py"
    no_stats.write_text(dep.config.read_text() + "STATS_ENABLED = False\n")
    dep.extra_env["CMOVER_CONFIG"] = str(no_stats)
    dep.start_worker("nostats", concurrency=2).wait_ready()
    del dep.extra_env["CMOVER_CONFIG"]
    r = dep.cmover("start", "copy", "--wait", "--json", timeout=120)
    assert r.returncode == 0, explain(r)
    again = json.loads(r.stdout)
    assert again["state"] == "complete", again
    finished, reported = _reported(again["run_id"])
    assert finished is not None and finished >= 1 and reported == 0
    assert compare_trees(src, dst) == []
