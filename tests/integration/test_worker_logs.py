"""Worker logs: every worker of a node writes one file through concurrent-log-handler, which rotates it
safely while several processes write (cmover/worker/logs.py); nothing is lost at rotation. With
``LOG_FORMAT = "json"`` every line of that file is one JSON object (cmover/core/logformat.py) that says
which pass, run and directory it is about, names that are not UTF-8 included."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from support.deploy import DIRS_Q, FILES_Q, DeploymentSet

pytestmark = pytest.mark.integration

#: A directory whose name is not UTF-8: its tasks' lines carry it as {"b64": ...}.
ODD = b"d-\xff\xfe caf\xe9"
FIELDS = ["time", "level", "node", "pass", "run", "path", "message", "logger", "pid"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_workers_of_a_node_share_one_rotating_log(deployments: DeploymentSet, tmp_path: Path, log_format: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(40):
        d = src / f"d{i:02}"
        d.mkdir(parents=True)
        for j in range(20):
            (d / f"f{j}").write_bytes(b"x" * j)
    odd = src / os.fsdecode(ODD)
    odd.mkdir()
    for j in range(7):
        (odd / f"f{j}").write_bytes(b"y" * j)
    dst.mkdir()
    # BATCH 4: each directory of 20 files gives batches of 4, 4 and 8 (they grow), so 162 tasks in all.
    site = deployments.new(f"logs-{log_format}", src, dst, BATCH=4, INLINE_ENTRIES=0, INLINE_SECONDS=0,
                           LOG_FORMAT=log_format)
    site.extra_env = {"CMOVER_LOG_MAX_BYTES": "20000", "CMOVER_LOG_BACKUPS": "100"}
    site.init_broker()
    logfile = site.root / "log" / "cmover_node.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    for node, queue in (("dirs", DIRS_Q), ("files", FILES_Q)):
        site.start_worker(node, queues=(queue,), args=(f"--logfile={logfile}",))
    deadline = time.monotonic() + 60
    while len(re.findall(r"@\S+ ready\.", logfile.read_text() if logfile.exists() else "")) < 2:
        assert time.monotonic() < deadline, "both workers should log 'ready.' to the shared file"
        assert all(w.alive() for w in site.workers), [w.log_text()[-2000:] for w in site.workers]
        time.sleep(0.2)
    run_id = site.start_pass()
    st = site.wait_complete(run_id, timeout=120)
    texts = [p.read_text() for p in sorted(logfile.parent.glob("cmover_node.log*")) if not p.name.endswith(".lock")]
    assert len(texts) >= 3, "the log rotated at 20000 bytes into numbered backups"
    succeeded = sum(len(re.findall(r"Task cmover\.copy\.\w+\[\S+\] succeeded", t)) for t in texts)
    assert succeeded == st["totals"]["tasks"] > 150  # every task's line survived the rotations
    joined = "".join(texts)
    assert "cmover.copy.dir[" in joined and "cmover.copy.files[" in joined  # both workers wrote here
    if log_format == "text":
        assert not joined.lstrip().startswith("{"), joined[:200]
        return

    lines = joined.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object: nothing else is written
    assert all(list(r)[:len(FIELDS)] == FIELDS for r in records), records[:3]
    assert {r["node"] for r in records} == {socket.gethostname()}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["time"]) for r in records)
    assert joined.isascii()
    done = [r for r in records if re.match(r"Task cmover\.copy\.\w+\[\S+\] succeeded", r["message"])]
    assert len(done) == succeeded
    # Celery's line of each task carries the task's pass, run and directory (the root is "").
    assert {(r["pass"], r["run"]) for r in done} == {("copy", run_id)}
    paths = {r["path"] if isinstance(r["path"], str) else base64.b64decode(r["path"]["b64"]) for r in done}
    assert paths == {"", *(f"d{i:02}" for i in range(40)), ODD}, paths - {"", *(f"d{i:02}" for i in range(40))}
    odd_lines = [r for r in done if r["path"] == {"b64": base64.b64encode(ODD).decode()}]
    # Its directory task and its batch task(s) (7 files, BATCH 5), the name's bytes exactly.
    kinds = sorted({r["message"].split("[")[0] for r in odd_lines})
    assert kinds == ["Task cmover.copy.dir", "Task cmover.copy.files"], odd_lines
    # Lines outside a task (the worker's start, its "ready.") belong to no run.
    ready = [r for r in records if r["message"].endswith(" ready.")]
    assert len(ready) == 2 and all((r["pass"], r["run"], r["path"]) == (None, None, None) for r in ready)
