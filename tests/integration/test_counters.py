"""Counters of distributed passes with real workers, RabbitMQ and memcached.

1. Per worker process: every process that worked reports its own totals, discovered by the run's
   registry; they add up to the run's totals, which equal what was copied; `cmover status` shows the
   node with its Celery nodes and processes, in text and JSON.
2. memcached stopped mid-pass (a private memcached for this site, killed with SIGKILL): the workers go
   on without it, the queues drain and the trees are identical; `cmover status` answers "unknown" for
   the run (exit 3), or says memcached is unreachable (one line, exit 2), never "complete".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from support.deploy import CMOVER as CMOVER_BIN
from support.deploy import FILES_Q, DeploymentSet, explain, rabbitmqctl
from support.metric_readers import free_port
from support.snap import compare_trees
from support.tree import random_tree

pytestmark = pytest.mark.integration


def _on_terminal(cmd: list[str], env: dict[str, str], columns: int) -> tuple[int, str]:
    """Run ``cmd`` on a pseudo-terminal of ``columns`` columns; its exit code and screen text (no escapes)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        rc = proc.wait(timeout=60)
    finally:
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", out.decode(errors="replace"))
    return rc, text.replace("\r", "")


def test_per_worker_counters_add_up_to_what_was_copied(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=21, n_files=400, n_dirs=40, weird_names=True, owners=False)
    dst.mkdir()
    n_dirs = sum(1 for p in src.rglob("*") if p.is_dir() and not p.is_symlink())
    n_files = sum(1 for _ in src.rglob("*")) - n_dirs
    dep = deployments.new("counters", src, dst, INLINE_ENTRIES=5, BATCH=3)
    dep.init_broker()
    dep.start_worker("dirw", concurrency=2).wait_ready()
    dep.start_worker("filew", (FILES_Q,), concurrency=2).wait_ready()

    r = dep.cmover("start", "copy", "--wait", "--json", timeout=180)
    assert r.returncode == 0, explain(r)
    out = json.loads(r.stdout)
    assert compare_trees(src, dst) == []
    totals = out["totals"]
    assert totals["files_copied"] == n_files and totals["files_scanned"] == n_files
    assert totals["dirs"] == n_dirs + 1 and totals["dirs_discovered"] == n_dirs

    st = dep.status(out["run_id"])
    assert st["state"] == "complete" and st["totals"] == totals and st["estimate"] is None
    host = socket.gethostname()
    assert [n["host"] for n in st["nodes"]] == [host]
    node = st["nodes"][0]
    assert node["celery_nodes"] == [f"dirw@{host}", f"filew@{host}"]
    assert 2 <= node["processes"] <= 4  # every pool process that ran a task reported
    assert node["totals"]["files_scanned"] == n_files and node["totals"]["dirs"] == n_dirs + 1

    # The records themselves: one per process, discovered through the run's registry, adding up.
    from pymemcache.client.base import Client

    from cmover.state.runstats import MemcacheStats

    records = MemcacheStats(lambda: Client(("127.0.0.1", 11211))).workers(out["run_id"])
    assert records is not None and len(records) == node["processes"]
    pids = {c for w in dep.workers for c in w.pool_children()}
    assert {w.pid for w in records} <= pids
    summed: Counter[str] = Counter()
    for w in records:
        summed.update(w.totals)
    assert dict(summed) == totals  # no report lost: the records and the run counters agree exactly

    # Every pass at once (no PASS), and the human view.
    allp = dep.cmover("status", "--json")
    assert allp.returncode == 0, explain(allp)
    assert [p["pass"] for p in json.loads(allp.stdout)["passes"]] == ["copy"]
    text = dep.cmover("status")
    assert text.returncode == 0, explain(text)
    assert "copy complete" in text.stdout and host in text.stdout and f"{n_files:,} copied" in text.stdout
    # --json names the config file read; piped, the view is plain text: nothing wrapped, nothing cut off.
    assert json.loads(allp.stdout)["config"] == st["config"] == str(dep.config)
    assert "\x1b" not in text.stdout and "…" not in text.stdout
    lines = text.stdout.splitlines()
    at = lines.index(next(ln for ln in lines if ln.startswith("node ")))
    header = re.split(r"\s{2,}", lines[at])
    assert header == ["node", "processes", "active", "dirs", "files", "copied", "bytes", "files/s", "bytes/s",
                      "last report"], text.stdout
    row = dict(zip(header, re.split(r"\s{2,}", lines[at + 1]), strict=True))
    assert row["node"] == host and row["files"] == f"{n_files:,}" and row["last report"].endswith(" s ago"), row
    assert re.fullmatch(r"[0-9.]+ (B|KiB|MiB)", row["bytes"]), row
    # On an 80-column terminal: every line fits, numbers stay with their units, nothing is cut off.
    rc, screen = _on_terminal([str(CMOVER_BIN), "status"], dep.env(), columns=80)
    assert rc == 0, screen
    assert "copy complete" in screen and "…" not in screen, screen
    assert all(len(ln) <= 80 for ln in screen.splitlines()), screen
    assert not [ln for ln in screen.splitlines() if re.match(r"\s*((K|M|G)?i?B|s ago)\b", ln)], screen
    assert f"files {n_files:,}" in " ".join(screen.split()) and host in screen, screen

    # --watch redraws until Ctrl-C, then exits 0.
    from support.deploy import CMOVER

    watch = subprocess.Popen([str(CMOVER), "status", "--watch", "0.5"], env=dep.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    watch.send_signal(signal.SIGINT)
    wout, werr = watch.communicate(timeout=30)
    assert watch.returncode == 0, werr
    assert "copy complete" in wout and "Ctrl-C" in wout
    assert dep.cmover("status", "--watch", "0").returncode == 2


def test_memcached_stopped_mid_pass(deployments: DeploymentSet, tmp_path: Path) -> None:
    memcached = shutil.which("memcached")
    assert memcached, "memcached is needed (scripts/services.sh installs it)"
    port = free_port()
    mc = subprocess.Popen([memcached, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-M", "-u", "root"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "private memcached did not start"
                time.sleep(0.1)
        src, dst = tmp_path / "src", tmp_path / "dst"
        random_tree(src, seed=5, n_files=1500, n_dirs=300, weird_names=False, owners=False)
        dst.mkdir()
        dep = deployments.new("mcdown", src, dst, MEMCACHED=f"127.0.0.1:{port}", INLINE_ENTRIES=1,
                              INLINE_SECONDS=0.001, BATCH=5)
        dep.init_broker()
        workers = [dep.start_worker("w1", concurrency=2), dep.start_worker("w2", concurrency=2)]
        for w in workers:
            w.wait_ready()
        run_id = dep.start_pass()
        # Let the pass get going, then take memcached away for good.
        deadline = time.monotonic() + 60
        while sum(1 for _ in dst.rglob("*")) < 200:
            assert time.monotonic() < deadline, "the pass did not start"
            time.sleep(0.05)
        os.kill(mc.pid, signal.SIGKILL)
        mc.wait()
        copied_at_kill = sum(1 for _ in dst.rglob("*"))
        total = sum(1 for _ in src.rglob("*"))
        assert copied_at_kill < total, "the pass ended before memcached was stopped; make the tree bigger"

        # Without the ledger nobody can vouch for completion: watch the broker until it holds no message.
        quiet_since = None
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, "queues did not drain after memcached was stopped"
            assert all(w.alive() for w in workers), "a worker died when memcached went away"
            q = rabbitmqctl("list_queues", "-p", dep.username, "--silent", "name", "messages")
            assert q.returncode == 0, explain(q)
            busy = sum(int(line.split()[1]) for line in q.stdout.splitlines()
                       if line.startswith("cmover.copy.") and len(line.split()) == 2)
            if busy == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 3:
                    break
            else:
                quiet_since = None
            time.sleep(0.3)
        assert compare_trees(src, dst) == []
        logs = "".join(w.log_text() for w in workers)
        # Said once per process, not once per task.
        assert 0 < logs.count("counters not recorded") <= 4, logs[-3000:]
        assert 0 < logs.count("completion ledger unavailable") <= 4, logs[-3000:]
        with socket.socket() as probe:  # nothing may answer there now (ports are not reserved: check)
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"something else listens on {port} now"
        # The run is named but its ledger is gone: "unknown" (exit 3), never "complete".
        st = dep.cmover("status", "copy", "--run", run_id, "--json")
        assert st.returncode == 3 and json.loads(st.stdout)["state"] == "unknown", explain(st)
        # Without a run id there is nothing to report on: one line naming memcached, exit 2.
        st = dep.cmover("status", "copy")
        assert st.returncode == 2 and len(st.stderr.strip().splitlines()) == 1, explain(st)
        assert "memcached" in st.stderr and f"127.0.0.1:{port}" in st.stderr
    finally:
        if mc.poll() is None:
            mc.kill()
            mc.wait()
