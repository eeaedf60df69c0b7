"""Fidelity through the distributed pass: hard-link groups whose names are handled by different workers
at the same time, xattrs and POSIX ACLs, sparse files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.deploy import FILES_Q, DeploymentSet, explain
from support.snap import compare_trees
from support.tree import Dir, File, HardLink, add_fidelity, build, random_tree

pytestmark = pytest.mark.integration


def _build(src: Path) -> None:
    # 30 directories, each its own task (INLINE_ENTRIES=0), with links into d0's files: the names of
    # one group are copied by different worker processes concurrently.
    spec: dict[str, Any] = {f"d{d}": Dir() for d in range(30)}
    for i in range(60):
        spec[f"d0/f{i}"] = File(size=1000 + i)
        spec.update({f"d{d}/l{i}": HardLink(f"d0/f{i}") for d in range(1, 30)})
    spec["attrs"] = File(b"attrs", xattrs={"user.k": b"\xffv"}, acl="u:4242:rw-")
    spec["d1"] = Dir(default_acl="g:77:r-x")
    spec["sparse"] = File(size=(32 << 20) + 3, data={32 << 20: b"end"})
    build(src, spec)


def test_hard_links_xattrs_acls_sparse(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _build(src)
    dst.mkdir()
    dep = deployments.new("fid", src, dst, INLINE_ENTRIES=0, BATCH=20, CLOCK_SKEW=0)
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
    # Both passes were clean and recorded by `start --wait`; the next one carries the proof to the workers,
    # and still finds what changed after it: a source attribute, and one planted on the target.
    assert len(os.listdir(dep.root / "state" / "clean")) == 1
    os.setxattr(src / "attrs", b"user.k", b"changed")
    os.setxattr(dst / "sparse", b"user.planted", b"x")
    r3 = dep.cmover("start", "copy", "--wait", "--json", timeout=180)
    assert r3.returncode == 0, explain(r3)
    assert json.loads(r3.stdout)["totals"].get("files_meta_updated") == 2, r3.stdout
    assert os.getxattr(dst / "attrs", b"user.k") == b"changed" and os.listxattr(dst / "sparse") == []


def test_distributed_copy_keeps_every_fidelity_category(deployments: DeploymentSet, tmp_path: Path) -> None:
    """The distributed twin of test_fidelity_embedded: the whole fidelity tree over two workers, two passes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=11, n_files=300, n_dirs=20)
    counts = add_fidelity(src)
    assert counts["link_groups"] == 5
    dst.mkdir()
    # Every directory its own task and small batches: the tree is spread over both workers' processes.
    dep = deployments.new("fidtree", src, dst, INLINE_ENTRIES=0, BATCH=20)
    dep.init_broker()
    w1 = dep.start_worker("w1")
    w2 = dep.start_worker("w2", queues=(FILES_Q,))
    w1.wait_ready()
    w2.wait_ready()
    first = dep.cmover("start", "copy", "--wait", "--json", timeout=300)
    assert first.returncode == 0, explain(first)
    assert w1.tasks_succeeded() and w2.tasks_succeeded(), (w1.tasks_succeeded(), w2.tasks_succeeded())
    report = json.loads(first.stdout)
    totals = report["totals"]
    assert report["state"] == "complete" and report["failure_count"] == 0, report
    assert totals.get("failed", 0) == 0, totals
    assert totals["hardlinks_made"] == 15, totals
    # Same options as the embedded test: directory times are not compared (no dirtime pass yet).
    assert compare_trees(src, dst) == []
    second = dep.cmover("start", "copy", "--wait", "--json", timeout=300)
    assert second.returncode == 0, explain(second)
    report2 = json.loads(second.stdout)
    totals2 = report2["totals"]
    assert report2["failure_count"] == 0 and totals2.get("failed", 0) == 0, report2
    assert totals2.get("files_copied", 0) == 0 and totals2.get("hardlinks_made", 0) == 0, totals2
    assert compare_trees(src, dst) == []
