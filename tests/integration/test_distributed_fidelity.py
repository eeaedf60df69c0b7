"""Fidelity through the distributed pass: hard-link groups whose names are handled by different workers
at the same time, xattrs and POSIX ACLs, sparse files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import FILES_Q, DeploymentSet, explain

pytestmark = pytest.mark.integration


def _build(src: Path) -> None:
    # 30 directories, each its own task (INLINE_ENTRIES=0), with links into d0's files: the names of
    # one group are copied by different worker processes concurrently.
    for d in range(30):
        (src / f"d{d}").mkdir(parents=True)
    for i in range(60):
        leader = src / "d0" / f"f{i}"
        leader.write_bytes(os.urandom(1000 + i))
        for d in range(1, 30):
            os.link(leader, src / f"d{d}" / f"l{i}")
    x = src / "attrs"
    x.write_bytes(b"attrs")
    os.setxattr(x, b"user.k", b"\xffv")
    subprocess.run(["setfacl", "-m", "u:4242:rw-", str(x)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:77:r-x", str(src / "d1")], check=True)
    with open(src / "sparse", "wb") as fh:
        fh.seek(32 << 20)
        fh.write(b"end")


def test_hard_links_xattrs_acls_sparse(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _build(src)
    dst.mkdir()
    dep = deployments.new("fid", src, dst, INLINE_ENTRIES=0, BATCH=20)
    dep.init_broker()
    w1 = dep.start_worker("w1")
    w2 = dep.start_worker("w2", queues=(FILES_Q,))
    w1.wait_ready()
    w2.wait_ready()
    r = dep.cmover("start", "copy", "--wait", timeout=180)
    assert r.returncode == 0, explain(r)
    assert w1.tasks_succeeded() and w2.tasks_succeeded()
    for i in range(60):
        inos = {os.lstat(dst / f"d{d}" / (f"f{i}" if d == 0 else f"l{i}")).st_ino for d in range(30)}
        assert len(inos) == 1, (i, inos)
    assert os.lstat(dst / "d0" / "f0").st_nlink == 30
    assert os.getxattr(dst / "attrs", b"user.k") == b"\xffv"
    acl = subprocess.run(["getfacl", "-cp", str(dst / "attrs")], check=True, capture_output=True, text=True)
    assert "user:4242:rw-" in acl.stdout
    dacl = subprocess.run(["getfacl", "-cp", str(dst / "d1")], check=True, capture_output=True, text=True)
    assert "default:group:77:r-x" in dacl.stdout
    assert os.lstat(dst / "sparse").st_blocks <= os.lstat(src / "sparse").st_blocks + 64
    # A second pass keeps everything as it is.
    r2 = dep.cmover("start", "copy", "--wait", "--json", timeout=180)
    assert r2.returncode == 0, explain(r2)
    assert '"files_copied"' not in r2.stdout or '"files_copied": 0' in r2.stdout
    assert os.lstat(dst / "d0" / "f0").st_nlink == 30
