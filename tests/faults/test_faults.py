"""Faults the distributed copy pass must survive, injected into real processes on a real broker (issue 7).

"Nothing lost, nothing written where it must not be": every scenario ends by comparing the trees with
tests/support (tree, snap). Each runs ``celery worker`` processes (through tests/faults/seams.py) on the
session's private RabbitMQ node and memcached (see conftest.py), and records its numbers for the fault
matrix (bench/fault_matrix.py):

1. worker processes killed with SIGKILL, several times in one pass, while small files and chunked huge
   files are copied;
2. the RabbitMQ node stopped and started, then its app stopped and started, in the middle of a pass: the
   workers reconnect by themselves;
3. memcached down for the whole pass: the copy happens, the completion cannot be vouched for;
4. the target filling up (a small tmpfs): per-item ENOSPC failures, no partial file with the source's
   mtime, no temporary file left; a later pass with space completes the copy;
5. the source changing under the pass (files and directories created, changed, renamed, deleted): the
   pass finishes, the races are counted, a quiescent copy and delete pass make the trees identical;
6. a poison message (a file whose copy kills its worker every time): dead-lettered after MAX_DELIVERIES,
   shown by `cmover status` and `cmover errors`, the rest of the pass completes;
7. a copy task longer than the broker's consumer timeout (a node of its own with a 4 s timeout).

Directory mtimes are left to the dirtime pass and not compared.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.deploy import DIRS_Q, FILES_Q, Worker, explain, run
from support.faults import FaultDeployment, FaultDeployments, PrivateRabbit
from support.snap import diff, snapshot
from support.tree import REFERENCE_NS, File, build, random_tree

from cmover.core.paths import from_wire

pytestmark = pytest.mark.faults

MiB = 1 << 20
COPY_QS = (DIRS_Q, FILES_Q)
DELETE_QS = ("cmover.delete.dirs", "cmover.delete.files")
TEMP_RE = re.compile(rb"\.cmover\.[0-9a-f]{16}\.(part|tmp)")
_TRACEBACK_RE = re.compile(r"unexpected error in|internal error|Unrecoverable error")


# -- helpers ------------------------------------------------------------------------------------------------


def _compare(src: Path, dst: Path) -> tuple[int, list[str]]:
    """(entries compared: the union of both trees' paths, differences) between ``src`` and ``dst``."""
    s, d = snapshot(src), snapshot(dst)
    return len(s.keys() | d.keys()), diff(s, d)


def _entries_differing(src: Path, dst: Path) -> int:
    """How many entries of ``src`` are missing on ``dst`` or differ there."""
    s, d = snapshot(src), snapshot(dst)
    return sum(1 for rel in s if rel not in d or diff({rel: s[rel]}, {rel: d[rel]}))


def _non_dirs(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _temp_files(root: Path) -> list[bytes]:
    """cmover's temporary names (``.cmover.<hash>.part`` of chunked copies, ``.cmover.<hex>.tmp``) under root."""
    return [os.path.join(d, n) for d, _, names in os.walk(os.fsencode(root)) for n in names if TEMP_RE.fullmatch(n)]


def _big_file(path: Path, size: int, seed: int) -> None:
    """``size`` bytes of seeded random data with a distinctive old mtime (allocated: it is chunked)."""
    build(path.parent, {path.name: File(size=size, seed=seed, atime_ns=REFERENCE_NS - 7 * 10**9 + seed,
                                        mtime_ns=REFERENCE_NS - 10**10 + seed)})


def _status(dep: FaultDeployment, run_id: str) -> tuple[int, dict[str, Any] | None]:
    """``cmover status copy --json --run`` as (exit code, document or None when it printed none)."""
    r = dep.cmover("status", "copy", "--json", "--run", run_id, timeout=60)
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        return r.returncode, None


def _wait_complete(dep: FaultDeployment, run_id: str, timeout: float,
                   tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Poll the run's status until "complete" (transient failures, e.g. while the broker is down, are
    retried); ``tick`` runs between polls. Fails on "unknown" (but for a broker that could not be read) or
    at the timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        rc, st = _status(dep, run_id)
        last = st or rc
        if st is not None:
            assert st["state"] != "unknown" or "from the broker" in st.get("why", ""), \
                f"the ledger lost track of the run: {st}"
            if st["state"] == "complete":
                return st
        if tick is not None:
            tick()
        time.sleep(0.3)
    pytest.fail(f"run {run_id} not complete after {timeout} s; last status {last}\n{_stuck(dep, run_id)}\n"
                f"{dep.worker_logs()}")


def _stuck(dep: FaultDeployment, run_id: str) -> str:
    """What a run that does not complete is waiting for: each queue's ready and unacknowledged messages (a
    message held by a consumer that does not run it is unacknowledged), and each task the ledger lists with
    no done marker, with the worker log lines that name it (received, succeeded, requeued...)."""
    from pymemcache.client.base import Client

    from cmover.state import keys
    from cmover.state.ledger import MemcacheLedger

    lines = [f"queues (ready, unacked): {dep.rabbit.queues(dep.username)}"]
    mc = Client(("127.0.0.1", dep.memcached.port), connect_timeout=5, timeout=10)
    try:
        shards = mc.get_many([keys.task_list(run_id, i) for i in range(MemcacheLedger.SHARDS)])
        tids = {t for raw in shards.values() for t in raw.decode().split()}
        marked = mc.get_many([keys.done(run_id, t) for t in tids])
        left = sorted(t for t in tids if keys.done(run_id, t) not in marked)
        starts = mc.get_many([keys.enqueued(run_id, t) for t in left])
    finally:
        mc.close()
    lines.append(f"ledger: {len(tids)} task(s) listed, {len(left)} without a done marker")
    for tid in left:
        lines.append(f"  {tid}: deliveries started {starts.get(keys.enqueued(run_id, tid))!r}")
        for w in dep.workers:
            lines.extend(f"    {w.node}: {line}" for line in w.log_text().splitlines() if tid in line)
    return "\n".join(lines)


def _errors(dep: FaultDeployment, run_id: str) -> list[dict[str, Any]]:
    r = dep.cmover("errors", "copy", "--run", run_id, "--json", timeout=60)
    assert r.returncode == 0, explain(r)
    return list(json.loads(r.stdout)["failures"])


def _copy_pass(dep: FaultDeployment, kind: str = "copy", expect_rc: int = 0) -> dict[str, Any]:
    r = dep.cmover("start", kind, "--wait", "--json", timeout=180)
    assert r.returncode == expect_rc, explain(r) + "\n" + dep.worker_logs()
    out = json.loads(r.stdout)
    assert out["state"] == "complete", out
    return out


def _ready(w: Worker) -> bool:
    return re.search(rf"{re.escape(w.node)}@\S+ ready\.", w.log_text()) is not None


def _crashes(dep: FaultDeployment) -> list[str]:
    """Log lines of unexpected errors in any worker (not per-item failures)."""
    return [line for w in dep.workers for line in w.log_text().splitlines() if _TRACEBACK_RE.search(line)]


def _copy_queues_drained(dep: FaultDeployment, polls: int = 3, every: float = 0.5) -> bool:
    """Both copy queues hold no ready and no unacknowledged message, ``polls`` times in a row."""
    for i in range(polls):
        q = dep.rabbit.queues(dep.username)
        if any(sum(q.get(name, (0, 0))) for name in COPY_QS):
            return False
        if i + 1 < polls:
            time.sleep(every)
    return True


# -- 1. workers killed with SIGKILL -------------------------------------------------------------------------


def test_workers_killed_repeatedly_mid_pass(fault_deployments: FaultDeployments, tmp_path: Path,
                                            matrix: Any) -> None:
    """Six SIGKILLs in one pass, about one a second while the pass runs: five pool processes (their task
    is redelivered by the broker) and once a whole worker node (main process and pool; a replacement node
    joins). Small files and two huge files copied in 1 MiB chunks are in flight. The trees end identical,
    nothing is failed or dead-lettered, no temporary file is left, and a second pass copies nothing."""
    row = matrix("worker SIGKILL (small + chunked files)")
    src, dst = tmp_path / "src", tmp_path / "dst"
    counts = random_tree(src, seed=71, n_files=5000, n_dirs=80, weird_names=True, max_size=32768)
    _big_file(src / "big-a.bin", 40 * MiB + 4321, 1)
    _big_file(src / "d0001" / "big-b.bin", 40 * MiB + 1234, 2)
    dst.mkdir()
    total = counts["files"] + counts["symlinks"] + 2
    # The delivery cap is not what this test is about: random kills may hit one long task a few times.
    dep = fault_deployments.new("kill", src, dst, INLINE_ENTRIES=50, BATCH=25, CHUNK_THRESHOLD=8 * MiB,
                                CHUNK_SIZE=MiB, MAX_DELIVERIES=20)
    dep.init_broker()
    w1 = dep.start_worker("w1", COPY_QS)
    w2 = dep.start_worker("w2", (FILES_Q,))
    w1.wait_ready()
    w2.wait_ready()

    run_id = dep.start_pass()
    kills: list[str] = []
    rng = random.Random(5)
    node_killed = False
    deadline = time.monotonic() + 90
    while len(kills) < 6:
        assert time.monotonic() < deadline, f"only {len(kills)} kills after 90 s\n{dep.worker_logs()}"
        done = _non_dirs(dst)
        if done >= total:
            break  # finished before every kill was injected: reported below
        if done < total // 20:
            time.sleep(0.05)
            continue
        if len(kills) == 2 and not node_killed:
            w2.kill_group()  # a node crash: main process and pool at once
            w2.proc.wait(10)
            node_killed = True
            kills.append(f"node w2 at {done}/{total}")
            dep.start_worker("w3", COPY_QS)  # its replacement (not waited for: the pass goes on)
        else:
            # Workers still starting are left alone: a pool that dies while it boots stops the worker.
            live = [w for w in dep.workers if w.alive() and _ready(w)]
            children = [(w, pid) for w in live for pid in w.pool_children()]
            if not children:
                time.sleep(0.1)
                continue
            w, pid = rng.choice(children)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append(f"pool process {pid} of {w.node} at {done}/{total}")
        time.sleep(0.8)

    final = _wait_complete(dep, run_id, timeout=120)
    entries, diffs = _compare(src, dst)
    temps = _temp_files(dst)
    t = final["totals"]
    row.record(injected=len(kills), completed=True, entries=entries, differences=len(diffs) + len(temps),
               note="5 pool processes, 1 whole node")
    assert len(kills) == 6, f"the pass ended after {len(kills)} kills: {kills}"
    assert diffs == [], f"{len(diffs)} differences after kills {kills}: {diffs[:10]}\n{dep.worker_logs()}"
    assert temps == [], temps
    assert t.get("failed", 0) == 0 and t.get("dead_lettered", 0) == 0, (t, _errors(dep, run_id))
    assert final["outstanding"] == 0
    # Counters of a killed process's last reporting interval die with it: count chunk tasks in the logs.
    chunk_tasks = sum(len(re.findall(r"Task cmover\.copy\.chunk\[[0-9a-f-]+\] succeeded", w.log_text()))
                      for w in dep.workers)
    assert chunk_tasks >= 2 * 41 - len(kills), chunk_tasks
    assert w1.alive(), "w1 died with its pool processes"
    assert _crashes(dep) == []

    again = _copy_pass(dep)["totals"]
    assert again.get("files_copied", 0) == 0 and again.get("chunks_copied", 0) == 0, again


# -- 2. the broker restarted --------------------------------------------------------------------------------


def test_broker_restarted_mid_pass(fault_deployments: FaultDeployments, tmp_path: Path, matrix: Any) -> None:
    """The private RabbitMQ node is stopped (its Erlang VM exits) and started again at ~15% of the copy,
    then its app is stopped and started at ~50%. The workers are never restarted: they reconnect by
    themselves, the persistent messages of the durable queues survive, the redelivered tasks are
    idempotent. The pass completes and the trees are identical."""
    row = matrix("RabbitMQ restarted mid-pass")
    src, dst = tmp_path / "src", tmp_path / "dst"
    counts = random_tree(src, seed=72, n_files=8000, n_dirs=100, weird_names=True, max_size=16384)
    dst.mkdir()
    total = counts["files"] + counts["symlinks"]
    dep = fault_deployments.new("restart", src, dst, INLINE_ENTRIES=50, BATCH=25)
    dep.init_broker()
    w1 = dep.start_worker("w1", COPY_QS)
    w2 = dep.start_worker("w2", (FILES_Q,))
    w1.wait_ready()
    w2.wait_ready()
    rabbit = dep.rabbit
    restarts_before = rabbit.restarts

    run_id = dep.start_pass()
    injected: list[str] = []
    for i, (fraction, how) in enumerate(((0.15, "node"), (0.5, "app"))):
        # Each fault hits connected workers that are copying: after the previous one, wait until both have
        # reconnected (Celery retries after 0, 2, 4, 6... s) and the copy has gone on.
        deadline = time.monotonic() + 90
        while (done := _non_dirs(dst)) < total * fraction or \
                any(w.log_text().count("Connected to amqp://") < i + 1 for w in (w1, w2)):
            assert time.monotonic() < deadline, f"copy stuck at {done}/{total} before the {how} restart\n" \
                                                f"{dep.worker_logs()}"
            time.sleep(0.05)
        assert done < total, f"the pass ended before the {how} restart could be injected"
        if how == "node":
            rabbit.restart_node(down_seconds=2)
        else:
            rabbit.restart_app(down_seconds=2)
        injected.append(f"{how} restart at {done}/{total}")

    final = _wait_complete(dep, run_id, timeout=120)
    entries, diffs = _compare(src, dst)
    row.record(injected=rabbit.restarts - restarts_before, completed=True, entries=entries,
               differences=len(diffs), note="node stop/start + stop_app/start_app")
    assert diffs == [], f"{len(diffs)} differences after {injected}: {diffs[:10]}\n{dep.worker_logs()}"
    assert _temp_files(dst) == []
    t = final["totals"]
    assert t.get("failed", 0) == 0 and t.get("dead_lettered", 0) == 0, (t, _errors(dep, run_id))
    # The pass can complete on one worker while the other is still in its reconnect back-off (2, 4, 6... s):
    # what must hold is that each reconnects by itself, so wait for it rather than sample the log once.
    for w in (w1, w2):
        deadline = time.monotonic() + 60
        while w.log_text().count("Connected to amqp://") < 3 and w.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert w.alive(), f"worker {w.node} exited instead of reconnecting:\n{w.log_text()[-3000:]}"
        text = w.log_text()
        assert text.count("Connected to amqp://") >= 3, f"{w.node} did not reconnect twice:\n{text[-3000:]}"
    assert _crashes(dep) == []


# -- 3. memcached down --------------------------------------------------------------------------------------


def test_memcached_down_for_the_whole_pass(fault_deployments: FaultDeployments, tmp_path: Path,
                                           matrix: Any) -> None:
    """memcached holds the completion ledger and the counters. With memcached down, `cmover start` refuses
    (exit 2, naming memcached; nothing published, nothing written). A pass seeded while it was up and then
    run entirely without it still copies everything (the broker's queue depths show when the workers are
    done), but its completion cannot be vouched for: `cmover status` never says "complete" -- it exits
    non-zero while memcached is unreachable, and says "unknown" (exit 3) once an empty memcached is back."""
    row = matrix("memcached down for the whole pass")
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=73, n_files=1500, n_dirs=40, weird_names=True)
    dst.mkdir()
    dep = fault_deployments.new("nomc", src, dst, INLINE_ENTRIES=20, BATCH=25)
    dep.init_broker()
    mc = dep.memcached
    try:
        mc.stop()
        r = dep.cmover("start", "copy", timeout=60)
        assert r.returncode == 2 and "memcached" in r.stderr, explain(r)
        assert not any(sum(v) for k, v in dep.rabbit.queues(dep.username).items() if k in COPY_QS)
        assert os.listdir(dst) == []

        mc.start()
        run_id = dep.start_pass()
        mc.stop()  # before any worker exists: every task of the pass runs without memcached
        w1 = dep.start_worker("w1", COPY_QS)
        w2 = dep.start_worker("w2", (FILES_Q,))
        w1.wait_ready()
        w2.wait_ready()
        deadline = time.monotonic() + 90
        while not _copy_queues_drained(dep):
            assert time.monotonic() < deadline, f"queues not drained after 90 s\n{dep.worker_logs()}"
            rc, st = _status(dep, run_id)
            assert st is None or st["state"] != "complete", f"status said complete without a ledger: {st}"
            time.sleep(0.5)
        entries, diffs = _compare(src, dst)

        rc_down, st_down = _status(dep, run_id)
        mc.start()  # back, empty: the run's ledger is gone
        rc_back, st_back = _status(dep, run_id)
        unknown_back = st_back is not None and st_back["state"] == "unknown" and rc_back == 3
        row.record(injected=1, completed=not diffs, entries=entries, differences=len(diffs),
                   note=f"copied with the queues drained; status while down: "
                        f"{st_down['state'] if st_down else '-'} (exit {rc_down}), after an empty memcached: "
                        f"{st_back['state'] if st_back else '-'} (exit {rc_back})")
        assert diffs == [], f"{len(diffs)} differences: {diffs[:10]}\n{dep.worker_logs()}"
        assert rc_down != 0 and (st_down is None or st_down["state"] in ("unknown", "running")), (rc_down, st_down)
        assert rc_down == 3, f"status with memcached unreachable must say unknown (exit 3), got exit {rc_down}"
        assert unknown_back, (rc_back, st_back)
        assert w1.alive() and w2.alive()
        assert _crashes(dep) == []
        assert _temp_files(dst) == []
        assert any("completion ledger unavailable" in w.log_text() for w in dep.workers), dep.worker_logs()
    finally:
        mc.ensure_up()


# -- 4. the target full -------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(exist_ok=True)
    r = run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "cmfault-target", path], timeout=30)
    assert r.returncode == 0, explain(r)
    assert os.path.ismount(path)


def _umount(path: Path) -> None:
    if os.path.ismount(path):
        r = run(["umount", path], timeout=30)
        if r.returncode != 0:
            r = run(["umount", "-l", path], timeout=30)
        assert r.returncode == 0, explain(r)


def _committed_but_different(src: Path, dst: Path) -> list[str]:
    """Target files that carry their source's mtime (the commit marker) without its size and content."""
    s, d = snapshot(src), snapshot(dst)
    bad = []
    for rel, rec in d.items():
        if rec["type"] != "file" or rel not in s or s[rel]["type"] != "file":
            continue
        if rec["mtime_ns"] == s[rel]["mtime_ns"] and (rec["size"], rec["digest"]) != (s[rel]["size"],
                                                                                     s[rel]["digest"]):
            bad.append(repr(rel))
    return bad


def test_target_full(fault_deployments: FaultDeployments, tmp_path: Path, matrix: Any) -> None:
    """The target is a 4 MiB tmpfs for a ~10 MiB source (small files and one 10 MiB file copied in
    chunks). The pass completes with per-item ENOSPC failures on the target side, listed by
    `cmover errors`; no target file carries its source's mtime unless its data is the source's, and no
    temporary file is left. With the tmpfs grown to 64 MiB, `retry-failed` completes the copy (the
    chunked file included) and empties the error list, and a later pass finds nothing to copy."""
    row = matrix("target full (4 MiB tmpfs)")
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=74, n_files=120, n_dirs=8, weird_names=False, max_size=128 * 1024)
    _big_file(src / "d0002" / "big.bin", 10 * MiB + 77, 3)
    _mount_tmpfs(dst, "4m")
    try:
        dep = fault_deployments.new("full", src, dst, INLINE_ENTRIES=20, BATCH=20, CHUNK_THRESHOLD=4 * MiB,
                                    CHUNK_SIZE=MiB)
        dep.init_broker()
        for w in (dep.start_worker("w1", COPY_QS), dep.start_worker("w2", (FILES_Q,))):
            w.wait_ready()

        first = _copy_pass(dep, expect_rc=1)
        failures = _errors(dep, first["run_id"])
        nospace = [f for f in failures if f["errno"] == errno.ENOSPC]
        text = dep.cmover("errors", "copy", "--run", first["run_id"], timeout=60)
        assert text.returncode == 0, explain(text)
        committed_bad = _committed_but_different(src, dst)
        temps_full = _temp_files(dst)
        full_diffs = _compare(src, dst)[1]
        not_copied = _entries_differing(src, dst)

        r = run(["mount", "-o", "remount,size=64m", dst], timeout=30)
        assert r.returncode == 0, explain(r)
        # With space: `retry-failed` redoes just the failed items (the chunked file with a new part file
        # and new chunk tasks: its first attempt's chunks are done in the ledger), the list empties ...
        retry = dep.cmover("retry-failed", "copy", "--json", timeout=180)
        assert retry.returncode == 0, explain(retry)
        retried = json.loads(retry.stdout)
        retry_diffs = _compare(src, dst)[1]
        after_retry = _errors(dep, first["run_id"])
        # ... and a later pass finds nothing left to copy.
        second = _copy_pass(dep)
        entries, diffs = _compare(src, dst)
        temps = _temp_files(dst)
        row.record(injected=1, completed=True, entries=entries, differences=len(diffs) + len(temps),
                   note=f"first pass: {len(nospace)} ENOSPC failures, {not_copied} entries not copied")

        assert nospace, f"no ENOSPC failure listed: {failures}"
        assert any(f["path"] == "d0002/big.bin" for f in nospace), f"the chunked file did not fail: {failures}"
        assert all(f["side"] == "target" for f in nospace), nospace
        assert len(nospace) == len(failures), f"failures other than ENOSPC: {failures}"
        assert first["totals"].get("failed", 0) == len(failures) == first["failure_count"], first
        assert text.stdout.count("(ENOSPC)") == len(nospace), text.stdout
        assert full_diffs, "the 4 MiB target held everything: no fault was injected"
        assert committed_bad == [], f"files with the source's mtime but other data: {committed_bad}"
        assert temps_full == [], f"temporary files left on the full target: {temps_full}"
        assert retried["run_id"] == first["run_id"] and retried["failure_count"] == 0, retried
        assert retried["totals"]["failures_retried"] == len(failures), retried
        assert retry_diffs == [], f"{len(retry_diffs)} differences after retry-failed: {retry_diffs[:10]}"
        assert after_retry == [], after_retry
        assert second["failure_count"] == 0, second
        assert second["totals"].get("files_copied", 0) == 0, second
        assert diffs == [], f"{len(diffs)} differences after the pass with space: {diffs[:10]}"
        assert temps == []
        assert _crashes(dep) == []
    finally:
        for d in fault_deployments.made:
            for w in d.workers:
                w.stop()
        _umount(dst)


# -- 5. the source changing during the pass -----------------------------------------------------------------


class Mutator:
    """Changes the source while a pass runs, in a thread: appends to a chunked file (its chunk tasks find
    it changed), deletes a big directory's files once its listing is done (its batches find them gone),
    and creates, rewrites, renames and deletes random files and directories elsewhere."""

    def __init__(self, src: Path, dst: Path, hot: Path, doomed: str, seed: int) -> None:
        self.src = os.fsencode(src)
        self.dst = os.fsencode(dst)
        self.hot = hot
        self.doomed = os.fsencode(doomed)
        self.rng = random.Random(seed)
        self.ops: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mutator", daemon=True)
        hot_name = os.fsencode(hot.name)
        self.files: list[bytes] = []
        self.dirs: list[bytes] = []
        for d, dirnames, names in os.walk(self.src):
            rel = b"" if d == self.src else os.path.relpath(d, self.src)
            if rel.split(b"/")[0] == self.doomed:
                continue
            # Regular files and real directories only: a rewrite must never follow one of the tree's
            # symlinks (some point outside it, e.g. to /etc/passwd).
            self.files += [os.path.join(rel, n) for n in names if (rel or n != hot_name)
                           and stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode)]
            self.dirs += [os.path.join(rel, n) for n in dirnames if (rel or n != self.doomed)
                          and not os.path.islink(os.path.join(d, n))]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "mutator hangs"

    def _run(self) -> None:
        try:
            doomed_done = False
            n = 0
            while not self._stop.is_set():
                with open(self.hot, "ab") as f:
                    f.write(os.urandom(4096))
                self.ops["changed"] += 1
                if not doomed_done and self._doomed_started():
                    gone = 0
                    for name in os.listdir(self.src + b"/" + self.doomed):
                        os.unlink(self.src + b"/" + self.doomed + b"/" + name)
                        gone += 1
                    self.ops["deleted"] += gone
                    doomed_done = True
                self._random_op(n)
                n += 1
                self._stop.wait(0.02)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _doomed_started(self) -> bool:
        try:
            return bool(os.listdir(self.dst + b"/" + self.doomed))
        except FileNotFoundError:
            return False

    def _path(self, rel: bytes) -> bytes:
        return self.src + b"/" + rel

    def _random_op(self, n: int) -> None:
        rng = self.rng
        op = ("rewrite", "create", "rename", "mkdir", "renamedir", "delete", "rmtree")[n % 7]
        if op == "rewrite" and self.files:
            rel = rng.choice(self.files)
            fd = os.open(self._path(rel), os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            with open(fd, "wb") as f:
                f.write(os.urandom(rng.randint(0, 20000)))
            self.ops["changed"] += 1
        elif op == "create" and self.dirs:
            rel = rng.choice(self.dirs) + b"/new-%05d" % n
            with open(self._path(rel), "wb") as f:
                f.write(os.urandom(rng.randint(0, 5000)))
            self.files.append(rel)
            self.ops["created"] += 1
        elif op == "rename" and self.files:
            rel = self.files.pop(rng.randrange(len(self.files)))
            new = rel + b".renamed"
            os.rename(self._path(rel), self._path(new))
            self.files.append(new)
            self.ops["renamed"] += 1
        elif op == "mkdir" and self.dirs:
            rel = rng.choice(self.dirs) + b"/newdir-%05d" % n
            os.mkdir(self._path(rel))
            for i in range(3):
                with open(self._path(rel + b"/f%d" % i), "wb") as f:
                    f.write(os.urandom(100))
            self.dirs.append(rel)
            self.ops["created"] += 4
        elif op in ("renamedir", "rmtree"):
            leaves = [d for d in self.dirs if not any(o.startswith(d + b"/") for o in self.dirs)]
            if not leaves:
                return
            rel = rng.choice(leaves)
            self.dirs.remove(rel)
            inside = [f for f in self.files if f.startswith(rel + b"/")]
            self.files = [f for f in self.files if not f.startswith(rel + b"/")]
            if op == "rmtree":
                shutil.rmtree(self._path(rel))
                self.ops["deleted"] += 1 + len(inside)
            else:
                new = rel + b"-moved"
                os.rename(self._path(rel), self._path(new))
                self.dirs.append(new)
                self.files += [new + f[len(rel):] for f in inside]
                self.ops["renamed"] += 1
        elif op == "delete" and self.files:
            rel = self.files.pop(rng.randrange(len(self.files)))
            os.unlink(self._path(rel))
            self.ops["deleted"] += 1


def test_source_changing_during_the_pass(fault_deployments: FaultDeployments, tmp_path: Path,
                                         matrix: Any) -> None:
    """While the first pass runs, the source is changed all the time (see :class:`Mutator`). The pass
    finishes ("complete") without a crash; the races are counted (``changed_during_copy`` from the
    chunked file appended to, ``vanished`` from the directory emptied after its listing); a directory
    renamed or deleted before its own task ran is a listed ENOENT failure, nothing else fails. Then,
    with the source quiet, a copy pass and a delete pass make the trees identical."""
    row = matrix("source changed during the pass")
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=75, n_files=3000, n_dirs=60, weird_names=True, max_size=16384)
    (src / "doomed").mkdir()
    for i in range(600):
        (src / "doomed" / f"f{i:04d}").write_bytes(b"d" * (i % 97))
    hot = src / "hot.bin"
    _big_file(hot, 24 * MiB, 4)
    dst.mkdir()
    dep = fault_deployments.new("mutate", src, dst, INLINE_ENTRIES=0, BATCH=20, CHUNK_THRESHOLD=8 * MiB,
                                CHUNK_SIZE=MiB)
    dep.init_broker()
    w1 = dep.start_worker("w1", (*COPY_QS, *DELETE_QS))
    w2 = dep.start_worker("w2", (FILES_Q, DELETE_QS[1]), concurrency=1)
    w1.wait_ready()
    w2.wait_ready()

    mutator = Mutator(src, dst, hot, "doomed", seed=8)
    mutator.start()
    try:
        run_id = dep.start_pass()
        final = _wait_complete(dep, run_id, timeout=120)
    finally:
        mutator.stop()
    assert mutator.error is None, f"mutator failed: {mutator.error!r}"
    t = final["totals"]
    failures = _errors(dep, run_id)
    crashes = _crashes(dep)

    second = _copy_pass(dep)
    deleted = _copy_pass(dep, "delete")
    entries, diffs = _compare(src, dst)
    row.record(injected=sum(mutator.ops.values()), completed=True, entries=entries, differences=len(diffs),
               note=f"source ops {dict(sorted(mutator.ops.items()))}; counted: changed_during_copy "
                    f"{t.get('changed_during_copy', 0)}, vanished {t.get('vanished', 0)}, "
                    f"ENOENT failures {len(failures)}")
    assert crashes == [], crashes
    assert w1.alive() and w2.alive()
    assert t.get("changed_during_copy", 0) > 0, (t, mutator.ops)
    assert t.get("vanished", 0) > 0, (t, mutator.ops)
    assert all(f["errno"] == errno.ENOENT for f in failures), failures
    assert t.get("failed", 0) == len(failures), (t, failures)
    assert second["failure_count"] == 0 and deleted["failure_count"] == 0
    assert second["totals"].get("files_copied", 0) > 0  # what the first pass left for the next one
    assert diffs == [], f"{len(diffs)} differences after the quiescent passes: {diffs[:10]}"
    assert _temp_files(dst) == []


# -- 6. a poison message ------------------------------------------------------------------------------------


def test_poison_message_is_dead_lettered(fault_deployments: FaultDeployments, tmp_path: Path,
                                         matrix: Any) -> None:
    """Copying ``poison/kill-me.dat`` kills the worker process, every time (seam CMFAULT_POISON). With
    MAX_DELIVERIES = 3 the directory task holding it kills three pool processes, its fourth delivery is
    moved to the dead-letter queue ``cmover.copy.dead`` instead of running; the rest of the pass
    completes. `cmover status` counts the dead letter, `cmover errors` lists it; the trees differ by the
    poisoned file alone, and once the cause is gone (workers without the seam) a new pass copies it."""
    row = matrix("poison message")
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=76, n_files=800, n_dirs=30, weird_names=True)
    (src / "poison").mkdir()
    (src / "poison" / "kill-me.dat").write_bytes(b"poison" * 100)
    dst.mkdir()
    dep = fault_deployments.new("poison", src, dst, INLINE_ENTRIES=0, BATCH=50, MAX_DELIVERIES=3)
    dep.extra_env["CMFAULT_POISON"] = "poison/kill-me.dat"
    dep.init_broker()
    w1 = dep.start_worker("w1", COPY_QS)
    w2 = dep.start_worker("w2", (FILES_Q,))
    w1.wait_ready()
    w2.wait_ready()

    run_id = dep.start_pass()
    final = _wait_complete(dep, run_id, timeout=120)
    entries, diffs = _compare(src, dst)
    kills = sum(w.log_text().count("fault seam: b'poison/kill-me.dat' kills") for w in dep.workers)
    failures = _errors(dep, run_id)
    text_status = dep.cmover("status", "copy", "--run", run_id, timeout=60)
    text_errors = dep.cmover("errors", "copy", "--run", run_id, timeout=60)
    dead_q = dep.rabbit.queues(dep.username).get("cmover.copy.dead")
    expected = ["b'poison/kill-me.dat': missing on target (file)"]

    # The cause removed: workers without the seam, a new pass.
    for w in dep.workers:
        w.stop()
    del dep.extra_env["CMFAULT_POISON"]
    dep.start_worker("w3", COPY_QS).wait_ready()
    after = _copy_pass(dep)
    entries_after, diffs_after = _compare(src, dst)
    row.record(injected=kills, completed=True, entries=entries_after,
               differences=len([d for d in diffs if d not in expected]) + len(diffs_after),
               note=f"{final.get('dead_letters')} dead letter(s); the poisoned file copied by a later pass")

    assert kills == 3, f"{kills} kills (MAX_DELIVERIES = 3)\n{dep.worker_logs()}"
    assert len(re.findall(r"signal 9 \(SIGKILL\)", w1.log_text())) >= 3, w1.log_text()[-4000:]
    assert final["outstanding"] == 0
    assert final["totals"].get("dead_lettered") == 1 and final["totals"].get("failed") == 1, final["totals"]
    assert final.get("dead_letters") == 1, final
    assert dead_q == (1, 0), dep.rabbit.queues(dep.username)
    assert text_status.returncode == 0 and "cmover.copy.dead" in text_status.stdout, explain(text_status)
    assert [from_wire(f["path"]) for f in failures] == [b"poison"], failures
    assert "gave up after 3 deliveries" in failures[0]["message"], failures
    assert text_errors.returncode == 0 and "gave up after 3 deliveries" in text_errors.stdout, explain(text_errors)
    assert diffs == expected, diffs
    # (Counters are not compared with the tree: a killed process's unreported counts die with it.)
    assert after["failure_count"] == 0 and after["totals"].get("files_copied") == 1, after
    assert diffs_after == []


# -- 7. a task longer than the consumer timeout -------------------------------------------------------------


class Supervisor:
    """Restarts every worker that exits, as a service manager would (a new node name each time)."""

    def __init__(self, dep: FaultDeployment, queues: dict[str, tuple[str, ...]]) -> None:
        self.dep = dep
        self.queues = queues  # node base name -> its queues
        self.current: dict[str, Worker] = {}
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        for base, qs in self.queues.items():
            self.current[base] = self.dep.start_worker(base, qs)
        for w in self.current.values():
            w.wait_ready()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for base, w in list(self.current.items()):
                if not w.alive():
                    self.restarts += 1
                    self.current[base] = self.dep.start_worker(f"{base}r{self.restarts}", self.queues[base])


def test_task_longer_than_consumer_timeout(fault_deployments: FaultDeployments, tmp_path: Path,
                                           matrix: Any) -> None:
    """A RabbitMQ node of its own with ``consumer_timeout = 4000`` (ms) in its rabbitmq.conf and channels
    checking it every second (``channel_tick_interval``; the default check runs once a minute). Copying
    ``slow/big.dat`` takes 10 s (seam CMFAULT_SLOW), so its directory task outlives the timeout: the broker
    closes the channel and requeues the message; the worker reconnects by itself
    (``broker_channel_error_retry``) and lets the running task finish, while the requeued message may
    run again elsewhere. The pass completes: the first delivery to finish marks the task done, later
    deliveries are no-ops; the trees are identical, nothing is dead-lettered and no worker had to be
    restarted (the supervisor, which would restart a worker that exits, as a service manager does, must
    have nothing to do)."""
    row = matrix("task longer than consumer_timeout")
    rabbit = PrivateRabbit(tmp_path / "rabbit-timeout", consumer_timeout=4000, tick_ms=1000)
    rabbit.start()
    sup: Supervisor | None = None
    try:
        src, dst = tmp_path / "src", tmp_path / "dst"
        random_tree(src, seed=77, n_files=300, n_dirs=12, weird_names=True)
        (src / "slow").mkdir()
        _big_file(src / "slow" / "big.dat", MiB, 5)
        dst.mkdir()
        dep = fault_deployments.new("timeout", src, dst, rabbit=rabbit, INLINE_ENTRIES=0, BATCH=50)
        dep.extra_env["CMFAULT_SLOW"] = "slow/big.dat=10"
        dep.init_broker()
        sup = Supervisor(dep, {"w1": COPY_QS, "w2": COPY_QS})
        sup.start()
        run_id = dep.start_pass()
        final = _wait_complete(dep, run_id, timeout=120)
        entries, diffs = _compare(src, dst)
        logs = [w.log_text() for w in dep.workers]
        closed = sum(text.count("PRECONDITION_FAILED - delivery acknowledgement") for text in logs)
        # Each worker logs the closed channel once or twice (the error and its traceback): count workers.
        timed_out = sum(1 for text in logs if "PRECONDITION_FAILED - delivery acknowledgement" in text)
        slow_runs = sum(text.count("fault seam: copying b'slow/big.dat'") for text in logs)
        row.record(injected=timed_out, completed=True, entries=entries, differences=len(diffs),
                   note=f"{slow_runs} runs of the 10 s task, {sup.restarts} worker restarts")
        assert closed >= 1, "the consumer timeout never closed a channel: no fault was injected"
        assert diffs == [], f"{len(diffs)} differences: {diffs[:10]}\n{dep.worker_logs()}"
        t = final["totals"]
        assert t.get("failed", 0) == 0 and t.get("dead_lettered", 0) == 0, (t, _errors(dep, run_id))
        assert slow_runs <= 3, f"the slow task ran {slow_runs} times"
        assert sup.restarts == 0, f"{sup.restarts} worker(s) exited on the closed channel\n{dep.worker_logs()}"
    finally:
        if sup is not None:
            sup.stop()
        for d in fault_deployments.made:
            if d.rabbit is rabbit:
                d.close()  # while its node still runs
        rabbit.stop()


def test_matrix_recorder_writes_rows(tmp_path: Path, matrix: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows bench/fault_matrix.py reads: one JSON object per line in $CMFAULT_MATRIX."""
    out = tmp_path / "rows.jsonl"
    monkeypatch.setenv("CMFAULT_MATRIX", str(out))
    matrix("a fault").record(injected=2, completed=True, entries=10, differences=0, note="n")
    row = json.loads(out.read_text())
    assert (row["fault"], row["injected"], row["completed"], row["entries"], row["differences"]) == \
        ("a fault", 2, True, 10, 0)
