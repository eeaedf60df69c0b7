"""The distributed copy pass end to end: rabbitmq_init.sh, several `celery worker` processes on RabbitMQ,
memcached, and the operator's commands `cmover start|status|errors|stop` (design §2, §4, §7).

Directory mtimes are not compared anywhere: the copy pass leaves them to the dirtime pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.deploy import (
    BIN,
    CMOVER,
    DIRS_Q,
    FILES_Q,
    REPO,
    SUBPATH,
    Deployment,
    DeploymentSet,
    SourceTree,
    Worker,
    explain,
    rabbitmqctl,
    run,
)
from support.snap import compare_trees, snapshot
from support.tree import random_tree

from cmover.core.paths import from_wire

pytestmark = pytest.mark.integration

#: Counters that must not depend on the deployment (embedded or distributed, how tasks were split).
DEPLOYMENT_INDEPENDENT = ("dirs", "dirs_created", "files_scanned", "files_copied", "bytes_copied",
                          "failed", "files_skipped")


def _json_out(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"no JSON summary on stdout\n{explain(r)}")


def _regular_bytes(snapshot: dict[bytes, dict[str, Any]]) -> int:
    return sum(rec["size"] for rec in snapshot.values() if rec["type"] == "file")


def _dirs(snapshot: dict[bytes, dict[str, Any]]) -> int:
    return sum(1 for rec in snapshot.values() if rec["type"] == "dir")


# -- 1. broker set-up ---------------------------------------------------------------------------------------


def test_rabbitmq_init_creates_vhost_user_and_private_password(deployments: DeploymentSet, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    dep = deployments.new("init", tmp_path / "src", tmp_path / "dst")
    dep.init_broker(api=False)  # as on the broker host: rabbitmqctl

    pw = dep.rabbitmq_dir / f"rabbitmq_{dep.username}.conf"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o400
    first = pw.read_text()
    assert re.fullmatch(r"[A-Za-z0-9]{32}\n", first)
    assert (dep.rabbitmq_dir / "rabbitmq.conf").read_text().strip() == "127.0.0.1"
    assert not [p.name for p in dep.rabbitmq_dir.iterdir() if p.name.startswith(".")], "temporary files left"

    vhosts = rabbitmqctl("-q", "list_vhosts", "name")
    assert dep.username in vhosts.stdout.split(), explain(vhosts)
    perms = rabbitmqctl("-q", "list_permissions", "-p", dep.username)
    assert perms.returncode == 0, explain(perms)
    assert [dep.username, ".*", ".*", ".*"] in [line.split("\t") for line in perms.stdout.splitlines()], perms.stdout

    assert _can_connect(dep.username, first.strip())

    # Running it again rotates the password (the old one stops working) and keeps the file private; this time
    # through the management API (--api), as from a host other than the broker's.
    dep.init_broker(api=True)
    assert stat.S_IMODE(pw.stat().st_mode) == 0o400
    second = pw.read_text()
    assert re.fullmatch(r"[A-Za-z0-9]{32}\n", second) and second != first
    assert _can_connect(dep.username, second.strip())
    assert not _can_connect(dep.username, first.strip())

    # A vhost created through the API belongs to the cmover user alone, as with rabbitmqctl (the API would
    # also have given the administrator rights on it).
    other = deployments.new("init_api", tmp_path / "src", tmp_path / "dst")
    r = other.init_broker(api=True)
    assert f"vhost {other.username}: created" in r.stdout, explain(r)
    perms = rabbitmqctl("-q", "list_permissions", "-p", other.username)
    assert [line.split("\t")[0] for line in perms.stdout.splitlines()[1:]] == [other.username], perms.stdout
    assert not [p.name for p in other.rabbitmq_dir.iterdir() if p.name.startswith(".")], "temporary files left"


def _can_connect(username: str, password: str) -> bool:
    """Log in to the vhost ``username`` on 127.0.0.1 as the user ``username``."""
    from kombu import Connection

    with Connection(hostname="127.0.0.1", port=5672, userid=username, password=password, virtual_host=username,
                    connect_timeout=5) as conn:
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
        except Exception:
            return False
        return True


# -- 2. a pass over two worker nodes ------------------------------------------------------------------------


@dataclass
class DistRun:
    dep: Deployment
    w1: Worker
    w2: Worker
    first: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def dist(module_deployments: DeploymentSet, weird_tree: SourceTree) -> DistRun:
    """The weird tree copied by `cmover start copy --wait` over w1 (dirs+files) and w2 (files), -c 2 each.

    Small INLINE_ENTRIES and BATCH make the pass publish many directory and batch tasks.
    """
    dst = module_deployments.root / "dst-dist"
    dst.mkdir()
    dep = module_deployments.new("dist", weird_tree.path, dst, INLINE_ENTRIES=100, BATCH=20)
    dep.init_broker()
    w1 = dep.start_worker("w1", (DIRS_Q, FILES_Q))
    w2 = dep.start_worker("w2", (FILES_Q,))
    w1.wait_ready()
    w2.wait_ready()
    first = dep.cmover("start", "copy", "--wait", "--json", timeout=240)
    return DistRun(dep, w1, w2, first)


def test_distributed_copy_is_identical(dist: DistRun, weird_tree: SourceTree) -> None:
    assert dist.first.returncode == 0, explain(dist.first)
    out = _json_out(dist.first)
    assert out["state"] == "complete"
    assert out["failure_count"] == 0 and out["failures"] == []
    assert weird_tree.diff(dist.dep.dst) == []


def test_tasks_ran_on_both_nodes(dist: DistRun) -> None:
    assert dist.first.returncode == 0, explain(dist.first)
    w1_log, w2_log = dist.w1.log_text(), dist.w2.log_text()
    assert re.search(r"Task cmover\.copy\.dir\[[0-9a-f-]+\] succeeded", w1_log)
    assert dist.w1.tasks_succeeded() > 0
    assert dist.w2.tasks_succeeded() > 0, "w2 (files queue only) executed no task: no fan-out"
    for node, text in (("w1", w1_log), ("w2", w2_log)):
        assert not re.search(r"\] (ERROR|CRITICAL)/", text), f"{node} logged errors:\n{text[-3000:]}"
    total = _json_out(dist.first)["totals"]["tasks"]
    assert dist.w1.tasks_succeeded() + dist.w2.tasks_succeeded() == total


def test_status_reports_complete_with_exact_totals(dist: DistRun, weird_tree: SourceTree) -> None:
    assert dist.first.returncode == 0, explain(dist.first)
    run_id = _json_out(dist.first)["run_id"]
    st = dist.dep.status(run_id)
    assert st["run_id"] == run_id
    assert st["state"] == "complete"
    assert st["outstanding"] == 0
    assert st["queues"] == {DIRS_Q: 0, FILES_Q: 0}
    t = st["totals"]
    non_dir = weird_tree.non_dir_entries()
    assert t.get("files_copied") == non_dir  # the socket too
    assert t.get("files_scanned") == non_dir
    assert t.get("dirs") == _dirs(weird_tree.snapshot) + 1  # and the root
    assert t.get("dirs_created") == _dirs(weird_tree.snapshot)  # the target root existed
    assert t.get("bytes_copied") == _regular_bytes(weird_tree.snapshot)
    assert t.get("failed", 0) == 0 and t.get("dead_lettered", 0) == 0
    assert t == _json_out(dist.first)["totals"]


def test_second_pass_copies_nothing(dist: DistRun, weird_tree: SourceTree) -> None:
    assert dist.first.returncode == 0, explain(dist.first)
    r = dist.dep.cmover("start", "copy", "--wait", "--json", timeout=240)
    assert r.returncode == 0, explain(r)
    out = _json_out(r)
    assert out["state"] == "complete"
    assert out["run_id"] != _json_out(dist.first)["run_id"]
    t = out["totals"]
    non_dir = weird_tree.non_dir_entries()
    assert t.get("files_copied", 0) == 0
    assert t.get("bytes_copied", 0) == 0
    assert t.get("files_meta_updated", 0) == 0
    assert t.get("dirs_created", 0) == 0
    assert t.get("files_skipped") == non_dir
    assert t.get("failed", 0) == 0
    assert weird_tree.diff(dist.dep.dst) == []


def _holding(pids: list[int], root: Path) -> set[int]:
    """The processes among ``pids`` with a descriptor open on directory ``root`` itself."""
    held = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in names:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(root):
                    held.add(pid)
            except OSError:
                pass
    return held


def test_pool_processes_keep_the_roots_while_busy_and_let_them_go(dist: DistRun) -> None:
    """A worker's pool processes open each pass root from / once and keep it while they work (not 8 opens
    per root and task), and close it once unused for IDLE_ROOT_SECONDS: an idle worker keeps no mount busy."""
    from cmover.core.fsio import IDLE_ROOT_SECONDS

    assert dist.first.returncode == 0, explain(dist.first)
    pool = dist.w1.pool_children() + dist.w2.pool_children()
    src = Path(os.path.realpath(dist.dep.src))
    r = dist.dep.cmover("start", "copy", "--wait", "--json")
    assert r.returncode == 0, explain(r)
    # The pass is over, no task runs: only a kept root is still open (for 2-3 s after its last use).
    assert _holding(pool, src), "no pool process kept the source root open after its tasks"
    deadline = time.monotonic() + IDLE_ROOT_SECONDS + 10
    while _holding(pool, src) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _holding(pool, src), "the source root is still open in an idle pool process"


# -- 5. the embedded mode -----------------------------------------------------------------------------------


def test_embedded_copy_matches_distributed(dist: DistRun, weird_tree: SourceTree, tmp_path: Path) -> None:
    """No rabbitmq.conf beside config.py: `cmover copy SRC DST` runs embedded and gives the same copy."""
    assert dist.first.returncode == 0, explain(dist.first)
    conf_dir = tmp_path / "embedded-site"
    conf_dir.mkdir()
    (conf_dir / "config.py").write_text('USERNAME = "unused"\nLOCAL_JOBS = 4\nLOG_DIR = "log"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(conf_dir / "config.py")
    dst2 = tmp_path / "dst-embedded"
    r = run([CMOVER, "copy", "--json", weird_tree.path, dst2], env=env, cwd=conf_dir, timeout=120)
    assert r.returncode == 0, explain(r)
    out = _json_out(r)
    assert out["state"] == "complete"
    assert out["failure_count"] == 0
    assert weird_tree.diff(dst2) == []
    assert compare_trees(dist.dep.dst, dst2) == []
    dist_totals = _json_out(dist.first)["totals"]
    for key in DEPLOYMENT_INDEPENDENT:  # dirs_created too: a target root made by `cmover copy` is not counted
        assert out["totals"].get(key, 0) == dist_totals.get(key, 0), key


# -- 4. a pass started at a sub-path ------------------------------------------------------------------------


def test_subpath_pass_copies_only_that_subtree(deployments: DeploymentSet, weird_tree: SourceTree,
                                              tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    dep = deployments.new("sub", weird_tree.path, dst, INLINE_ENTRIES=5, BATCH=10)
    dep.init_broker()
    dep.start_worker("w1").wait_ready()

    r = dep.cmover("start", "copy", SUBPATH, "--wait", "--json", timeout=120)
    assert r.returncode == 0, explain(r)
    out = _json_out(r)
    assert out["state"] == "complete"

    src_b, dst_b = os.fsencode(weird_tree.path), os.fsencode(dst)
    sub_snap = snapshot(src_b + b"/" + SUBPATH)
    parent = SUBPATH.rsplit(b"/", 1)[0]
    expected = {parent, SUBPATH} | {SUBPATH + b"/" + rel for rel in sub_snap}
    assert set(snapshot(dst)) == expected
    assert compare_trees(src_b + b"/" + SUBPATH, dst_b + b"/" + SUBPATH) == []
    # The missing parent was created with the owner and mode of its source counterpart.
    for rel in (parent, SUBPATH):
        s, d = os.lstat(src_b + b"/" + rel), os.lstat(dst_b + b"/" + rel)
        assert (d.st_mode, d.st_uid, d.st_gid) == (s.st_mode, s.st_uid, s.st_gid), rel
    assert out["totals"].get("files_copied") == sum(1 for rec in sub_snap.values() if rec["type"] != "dir")
    assert out["totals"].get("dirs") == _dirs(sub_snap) + 1


def test_a_worker_hands_subdirectories_to_its_idle_pool_processes(deployments: DeploymentSet,
                                                                   tmp_path: Path) -> None:
    """With an inline budget that would let the root task walk the whole tree alone, the worker's other pool
    process waits (its byte in the worker's idle board): the root task hands it subdirectories, so more than
    one task runs, and the copy is exact. Each holds a subdirectory: a leaf as small as these would be walked
    inline (cmover.worker.hooks.LEAST_LEAF; tests/test_walker.py)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in range(40):
        (src / f"d{d:02d}" / "sub").mkdir(parents=True)
        for f in range(10):
            (src / f"d{d:02d}" / "sub" / f"f{f}").write_bytes(b"%d" % f)
    dst.mkdir()
    dep = deployments.new("idle", src, dst, INLINE_ENTRIES=10**6, INLINE_SECONDS=3600)
    dep.init_broker()
    dep.start_worker("w1", concurrency=2).wait_ready()
    r = dep.cmover("start", "copy", "--wait", "--json", timeout=120)
    assert r.returncode == 0, explain(r)
    out = _json_out(r)
    assert out["state"] == "complete" and out["totals"]["tasks"] > 1, out["totals"]
    assert out["totals"]["files_copied"] == 400 and compare_trees(src, dst) == []


# -- 3. workers killed in the middle of a pass --------------------------------------------------------------


@pytest.mark.parametrize("crash", ["node", "main-process"])
def test_sigkill_mid_pass_loses_nothing(deployments: DeploymentSet, tmp_path: Path, crash: str) -> None:
    """Mid-pass, SIGKILL one pool child of w2 and either all of w1 (a node crash) or only w1's main process
    (its pool children, orphaned, may finish their tasks while the broker redelivers them): a replacement
    worker w3 and the redelivered tasks finish the pass, and "complete" is never reported before the target
    is identical."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    counts = random_tree(src, seed=3, n_files=6_000, n_dirs=120, weird_names=False, max_size=32768)
    dst.mkdir()
    # Workers report after every task (REPORT_INTERVAL below any task's length): progress is read from the
    # counters below, and the totals are checked exactly, while a process killed with reports pending
    # loses those counts by design (at most one interval of its work).
    dep = deployments.new(f"kill_{crash}", src, dst, INLINE_ENTRIES=50, BATCH=25, REPORT_INTERVAL=0.001)
    # Every entry's copy takes 2 ms more (the fault seam of a slow filesystem): the pass lasts seconds on any
    # machine, so the kills below land mid-pass (a fast machine once finished 12,000 files in 1.6 s without it).
    dep.extra_env["CMFAULT_PACE"] = "0.002"
    seams = (str(BIN / "python"), str(REPO / "tests" / "faults" / "seams.py"))
    dep.init_broker()
    w1 = dep.start_worker("w1", (DIRS_Q, FILES_Q), prefix=seams)
    w2 = dep.start_worker("w2", (FILES_Q,), prefix=seams)
    w1.wait_ready()
    w2.wait_ready()

    run_id = dep.start_pass()
    deadline = time.monotonic() + 60
    while True:
        st = dep.status(run_id)
        assert st["state"] == "running", f"pass ended before the workers could be killed: {st}"
        if st["totals"].get("files_copied", 0) >= counts["files"] // 6:
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.2)

    children = w2.pool_children()
    assert children, "w2 has no pool children"
    os.kill(children[0], signal.SIGKILL)  # one process of a node dies; its task is redelivered
    if crash == "node":
        w1.kill_group()  # main process and pool at once
    else:
        w1.proc.send_signal(signal.SIGKILL)
    w1.proc.wait(10)
    w3 = dep.start_worker("w3", (DIRS_Q, FILES_Q), prefix=seams)
    w3.wait_ready()

    final = dep.wait_complete(run_id, timeout=120)
    diffs = compare_trees(src, dst)  # at the first "complete" reading
    assert diffs == [], f"status said complete while {len(diffs)} differences remained: {diffs[:10]}"
    t = final["totals"]
    assert t.get("failed", 0) == 0 and t.get("dead_lettered", 0) == 0, t
    # Work of a killed task is not counted; its redelivery finds some files done already.
    assert t.get("files_copied", 0) + t.get("files_skipped", 0) >= counts["files"] + counts["symlinks"], t
    assert final["outstanding"] == 0
    assert w2.alive(), "w2 died with its pool child"
    assert re.search(r"signal 9|SIGKILL", w2.log_text()), "w2 did not notice its pool child's death"
    assert w2.tasks_succeeded() + w3.tasks_succeeded() > 0

    # A later pass agrees: nothing left to copy.
    r = dep.cmover("start", "copy", "--wait", "--json", timeout=180)
    assert r.returncode == 0, explain(r)
    assert _json_out(r)["totals"].get("files_copied", 0) == 0


# -- 6. unreadable source entries ---------------------------------------------------------------------------


def test_unreadable_source_entries_are_counted_listed_and_retried(deployments: DeploymentSet, tmp_path: Path) -> None:
    """A worker without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (root can read anything otherwise) meets a
    mode-000 file and directory owned by another user: both are failures, listed, and the rest is copied;
    once readable, `retry-failed` copies them and the error list empties."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root's DAC capabilities"
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=11, n_files=150, n_dirs=15, weird_names=True, owners=False)
    src_b = os.fsencode(src)
    secret, locked = b"d0001/secret\nfile", b"locked \xe9"
    with open(src_b + b"/" + secret, "wb") as f:
        f.write(b"top secret")
    os.mkdir(src_b + b"/" + locked)
    with open(src_b + b"/" + locked + b"/inner", "wb") as f:
        f.write(b"inner")
    for rel in (secret, locked):
        os.chown(src_b + b"/" + rel, 1000, 1000)
        os.chmod(src_b + b"/" + rel, 0)
    dst.mkdir()
    dep = deployments.new("unreadable", src, dst, INLINE_ENTRIES=20, BATCH=10)
    dep.init_broker()
    dep.start_worker("w1", prefix=(setpriv, "--bounding-set=-dac_override,-dac_read_search",
                                   "--inh-caps=-all")).wait_ready()

    r = dep.cmover("start", "copy", "--wait", "--json", timeout=120)
    assert r.returncode == 1, explain(r)
    out = _json_out(r)
    assert out["state"] == "complete"
    assert out["failure_count"] == 2
    assert out["totals"].get("failed") == 2
    assert sorted(from_wire(f["path"]) for f in out["failures"]) == sorted([secret, locked])

    e = dep.cmover("errors", "--run", out["run_id"])
    assert e.returncode == 0, explain(e)
    lines = e.stdout.splitlines()
    assert len(lines) == 2, e.stdout
    assert any(line.startswith(repr(secret) + ":") and "EACCES" in line for line in lines), lines
    assert any(line.startswith(repr(locked) + ":") and "EACCES" in line for line in lines), lines
    assert "2 failure(s)" in e.stderr
    assert all(re.search(r"  \[\S+:\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]$", line) for line in lines), lines
    ej = dep.cmover("errors", "--run", out["run_id"], "--json")
    assert ej.returncode == 0, explain(ej)
    recs = json.loads(ej.stdout)["failures"]
    assert sorted(from_wire(f["path"]) for f in recs) == sorted([secret, locked])
    assert all(f["errno"] == 13 and f["op"] and f["side"] and re.fullmatch(r"\S+:\d+", f["worker"])
               and abs(f["time"] - time.time()) < 600 for f in recs), json.dumps(recs)

    diffs = compare_trees(src, dst)
    assert diffs == sorted([f"{secret!r}: missing on target (file)", f"{locked!r}: missing on target (dir)",
                            f"{locked + b'/inner'!r}: missing on target (file)"])

    # The operator fixes the permissions; retry-failed copies just those items and the list empties.
    st = dep.status(out["run_id"])
    assert st["errors"] == 2 and st["totals"]["failed"] == 2
    for rel, mode in ((secret, 0o644), (locked, 0o755)):  # root's again (the worker has no DAC override)
        os.chown(src_b + b"/" + rel, 0, 0)
        os.chmod(src_b + b"/" + rel, mode)
    tasks_before = st["totals"]["tasks"]
    rr = dep.cmover("retry-failed", "copy", "--json", timeout=120)
    assert rr.returncode == 0, explain(rr)
    assert "retrying 2 failed item(s)" in rr.stderr
    retry = _json_out(rr)
    assert retry["run_id"] == out["run_id"] and retry["state"] == "complete"
    assert retry["failure_count"] == 0 and retry["failures"] == []
    assert retry["totals"]["files_copied"] == out["totals"]["files_copied"] + 2  # secret and locked/inner
    assert retry["totals"]["tasks"] == tasks_before + 2  # one batch task and one directory task
    assert retry["totals"]["failures_retried"] == 2
    assert dep.cmover("errors", "--run", out["run_id"]).stdout == ""
    assert dep.status(out["run_id"])["errors"] == 0
    assert compare_trees(src, dst) == []
    again = dep.cmover("retry-failed", "copy")
    assert again.returncode == 0 and "nothing to retry" in again.stderr, explain(again)


# -- 7. stop ------------------------------------------------------------------------------------------------


def test_stop_shuts_every_worker_down(deployments: DeploymentSet, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    dep = deployments.new("stop", tmp_path / "src", tmp_path / "dst")
    dep.init_broker()
    workers = [dep.start_worker("w1", concurrency=1), dep.start_worker("w2", (FILES_Q,), concurrency=1)]
    for w in workers:
        w.wait_ready()
    r = dep.cmover("stop")
    assert r.returncode == 0, explain(r)
    for w in workers:
        try:
            code = w.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {w.node} still running 30 s after `cmover stop`:\n{w.log_text()[-3000:]}")
        assert code == 0, f"{w.node} exited {code}:\n{w.log_text()[-3000:]}"
        assert "Got shutdown from remote" in w.log_text()
        assert not w.pool_children()


# -- sites sharing one memcached -----------------------------------------------------------------------------


def test_status_of_one_site_does_not_show_another_sites_run(deployments: DeploymentSet, tmp_path: Path) -> None:
    """Two sites (USERNAME = vhost) sharing the default memcached: `cmover status` of a site that never
    started a pass must not report the other site's run."""
    for d in ("src", "dst"):
        (tmp_path / d).mkdir()
    a = deployments.new("site_a", tmp_path / "src", tmp_path / "dst")
    b = deployments.new("site_b", tmp_path / "src", tmp_path / "dst")
    a.init_broker()
    b.init_broker()
    run_a = a.start_pass()  # no workers: the seeded root task just waits in site A's vhost
    assert a.status()["run_id"] == run_a
    st_b = b.status()
    assert st_b["state"] == "none" and st_b["run_id"] != run_a, st_b
