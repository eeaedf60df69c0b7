"""The verify pass end to end: embedded and on two distributed workers, over a copied tree with one difference of
every category; read-only on a strictatime filesystem; the manifest checked by b3sum and re-read only where files
changed."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import verify
from support.deploy import CMOVER, Deployment, DeploymentSet, explain, run

VERIFY_QS = ("cmover.verify.dirs", "cmover.verify.files")


def _embedded(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    with tempfile.TemporaryDirectory() as cwd:  # no ./config.py found
        return run([CMOVER, "verify", "--embedded", "-q", "-j", "2", *args], env=env, cwd=Path(cwd), timeout=180)


def _found(doc: dict) -> list[tuple[bytes, str]]:
    """The differences as (path, category); a split hard-link group is reported on whichever of its two names
    was seen second (workers race for them), named here as the injection's."""
    from cmover.core.paths import from_wire

    same = {b"hardlink/x/a": b"hardlink/y/b"}
    return sorted((same.get(from_wire(d["path"]), from_wire(d["path"])), d["category"]) for d in doc["differences"])


@pytest.fixture(scope="module")
def trees() -> Iterator[tuple[str, str, set[tuple[bytes, str]]]]:
    """A source and its copy on a tmpfs mounted strictatime (every read would move an atime), the copy given
    one difference of each category; yields (src, dst, expected)."""
    mnt = tempfile.mkdtemp(prefix="cmover-verify-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "strictatime,size=256m", "tmpfs", mnt], check=True)
    try:
        src, dst = f"{mnt}/src", f"{mnt}/dst"
        os.mkdir(src)
        verify.build(src)
        verify.copy(src, dst)
        r = _embedded("--content", "--atime", src, dst)
        assert r.returncode == 0 and "(identical)" in r.stdout, explain(r)
        expected = verify.inject_all(dst)
        yield src, dst, expected
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def test_embedded_verify_finds_each_difference_once_and_changes_nothing(trees) -> None:
    src, dst, expected = trees
    before = verify.times(src), verify.times(dst)
    r = _embedded("--content", "--atime", "--json", src, dst)
    assert r.returncode == 1, explain(r)
    doc = json.loads(r.stdout)
    assert _found(doc) == sorted(expected), explain(r)
    assert doc["difference_count"] == len(expected) == doc["totals"]["differences"]
    assert all(doc["totals"][f"diff_{c}"] == sum(1 for _, e in expected if e == c) for _, c in expected)
    # Read-only: no ctime, mtime or atime of either tree moved (on strictatime every read would move one).
    assert (verify.times(src), verify.times(dst)) == before
    # Without --content the same-size, same-mtime corruption is not seen; everything else is.
    r = _embedded("--atime", "--json", src, dst)
    assert r.returncode == 1 and _found(json.loads(r.stdout)) == sorted(e for e in expected if e[1] != "content")
    # The human summary lists every difference with its category.
    r = _embedded("--content", src, dst)
    assert r.returncode == 1 and "symlink/l: symlink: source 'target-a', target 'target-b'" in r.stdout, explain(r)


def test_distributed_verify_on_two_workers_with_a_manifest(trees, module_deployments: DeploymentSet,
                                                          tmp_path: Path) -> None:
    src, dst, expected = trees
    dep: Deployment = module_deployments.new("verify", Path(src), Path(dst), INLINE_ENTRIES=0, BATCH=2)
    dep.init_broker()
    workers = [dep.start_worker(f"w{i}", VERIFY_QS, 1) for i in (1, 2)]
    for w in workers:
        w.wait_ready()
    man = tmp_path / "manifest"
    before = verify.times(src), verify.times(dst)
    r = dep.cmover("start", "verify", "--wait", "--json", "--content", "--atime", "--manifest", str(man), timeout=240)
    assert r.returncode == 1, explain(r)
    doc = json.loads(r.stdout)
    assert _found(doc) == sorted(expected), explain(r)
    assert (verify.times(src), verify.times(dst)) == before
    # Both workers did part of it (every directory and every two entries are tasks of their own).
    done = [sum("Task cmover.verify." in ln and "succeeded" in ln for ln in w.log_text().splitlines()) for w in workers]
    assert all(done) and sum(done) == doc["totals"]["tasks"], done
    # The list is durable and readable afterwards; status shows the verify pass with its own counters.
    r = dep.cmover("differences", "--json")
    assert r.returncode == 1 and _found(json.loads(r.stdout)) == sorted(expected), explain(r)
    r = dep.cmover("status", "verify", "--json")
    st = json.loads(r.stdout)
    assert st["state"] == "complete" and st["totals"]["differences"] == len(expected), st
    assert st["totals"]["diff_hardlink"] == 1 and st["totals"]["files_read"] > 0, st
    # Without a manifest, files of CHUNK_THRESHOLD bytes or more are compared in chunks by both workers.
    r = dep.cmover("start", "verify", "--wait", "--json", "--content", "--chunk-threshold", "1M", "--chunk-size", "1M",
                   timeout=240)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and _found(doc) == sorted(e for e in expected if e[1] != "atime"), explain(r)
    assert doc["totals"]["chunks_verified"] == 3 + 1, doc["totals"]  # big/f, holes/sparse
    # (Last: b3sum reads through mmap, which allocates a tmpfs file's holes.)
    # The shards of both workers were merged into one manifest that b3sum checks against the source.
    out = subprocess.run(["b3sum", "--check", str(man / "manifest.b3")], cwd=src, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count(": OK") == 14, out  # every regular file
    assert not (man / ".shards").exists()


def test_manifest_of_ten_thousand_files_re_reads_only_what_changed(tmp_path: Path) -> None:
    src, dst, man = tmp_path / "src", tmp_path / "dst", tmp_path / "m"
    for d in range(100):
        (src / f"d{d:02}").mkdir(parents=True)
        for f in range(99):
            (src / f"d{d:02}" / f"f{f:02}").write_bytes(b"%d/%d\n" % (d, f))
    verify.copy(str(src), str(dst))  # 10,000 entries and the root
    r = _embedded("--manifest", str(man), str(src), str(dst))
    assert r.returncode == 0, explain(r)
    assert "9,900 files read" in r.stdout, r.stdout
    changed = [f"d{d:02}/f{d % 99:02}" for d in range(0, 100, 15)]  # 7 files
    for rel in changed[:-1]:  # rewritten on both sides (a new mtime)
        for root in (src, dst):
            (root / rel).write_bytes(b"new contents\n")
        os.utime(dst / rel, ns=(os.stat(src / rel).st_atime_ns, os.stat(src / rel).st_mtime_ns))
    back = verify.keep_times(str(dst / changed[-1]))  # corrupted on the target, size and mtime kept
    (dst / changed[-1]).write_bytes(b"X" + (src / changed[-1]).read_bytes()[1:])
    back()
    for rel in {os.path.dirname(c) for c in changed}:  # directory times as before
        st = os.stat(src / rel)
        os.utime(dst / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = _embedded("--manifest", str(man), "--json", str(src), str(dst))
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and _found(doc) == [(changed[-1].encode(), "content")], explain(r)
    assert doc["totals"]["files_read"] == len(changed) and doc["totals"]["hashes_reused"] == 9900 - len(changed)
    # The standard checker: the source matches the manifest; the target has exactly the corrupted file wrong.
    for root, rc, failed in ((src, 0, 0), (dst, 1, 1)):
        out = subprocess.run(["b3sum", "--check", str(man / "manifest.b3")], cwd=root, capture_output=True, text=True)
        assert out.returncode == rc and out.stdout.count(": FAILED") == failed, out
    assert f"{changed[-1]}: FAILED" in out.stdout


def test_sync_ends_with_a_verify_that_proves_the_copy(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    verify.build(str(src))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    r = run([CMOVER, "sync", "--embedded", "-q", "-j", "2", "--verify", "--content", str(src), str(dst)], env=env,
            cwd=tmp_path, timeout=180)
    assert r.returncode == 0, explain(r)
    assert "cmover dirtime: complete" in r.stdout and "cmover verify: complete" in r.stdout, r.stdout
    assert "  differ    0 (identical)" in r.stdout and "13 files read" in r.stdout, r.stdout  # a hard-linked pair once
