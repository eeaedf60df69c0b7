"""Worker logs: every worker of a node writes one file through concurrent-log-handler, which rotates it
safely while several processes write (cmover/logs.py); nothing is lost at rotation."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .conftest import DIRS_Q, FILES_Q, DeploymentSet

pytestmark = pytest.mark.integration


def test_workers_of_a_node_share_one_rotating_log(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(40):
        d = src / f"d{i:02}"
        d.mkdir(parents=True)
        for j in range(20):
            (d / f"f{j}").write_bytes(b"x" * j)
    dst.mkdir()
    site = deployments.new("logs", src, dst, BATCH=5, INLINE_ENTRIES=0, INLINE_SECONDS=0)
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
