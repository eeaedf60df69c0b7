"""``cmover delete``, ``cmover dirtime`` and ``cmover sync`` run as subprocesses (embedded mode, no broker).

Exit codes 0 (all good), 1 (items failed, listed), 2 (preflight refused: one ``cmover:`` line on stderr and
nothing touched). Runs as root (as CI does): make_tree gives entries other owners; a tmpfs is mounted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.cli import CMOVER, assert_fatal, run
from support.snap import compare_trees, snapshot, unchanged
from support.tree import mutate, random_tree


@pytest.fixture
def pair(tmp_path):
    """tmp_path/work (cwd), tmp_path/site/config.py (no broker), tmp_path/src and tmp_path/dst holding more."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "site").mkdir()
    cfg = tmp_path / "site" / "config.py"
    cfg.write_text("BATCH = 3\nINLINE_ENTRIES = 2\n")
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        for rel in ("keep", "a/keep", "a/b/keep", "x/keep", "\xe9t\xe9/keep"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"k")
    for rel in ("gone", "a/gone", "a/b/gone1", "a/b/gone2", "a/b/gone3", "a/b/gone4", "tree/f", "tree/s/f",
                "tree/s/t/f", "tree/s2/f", "a/tree/f", "x/sub/deeper/f"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(b"g")
    os.symlink("/etc", dst / "a" / "link-out")
    (dst / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1")
    return tmp_path, work, cfg, src, dst


EXPECTED = {"gone", "a/gone", "a/b/gone1", "a/b/gone2", "a/b/gone3", "a/b/gone4", "tree/", "a/tree/", "x/sub/",
            "a/link-out", "b'caf\\xe9'"}


def names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def listed(stdout: str, verb: str) -> set[str]:
    prefix = verb + ": "
    return {line[len(prefix):] for line in stdout.splitlines() if line.startswith(prefix)}


def test_delete_dry_run_then_real_run(pair):
    tmp, work, cfg, src, dst = pair
    before = snapshot(tmp)
    dry = run(["delete", "--dry-run", str(src), str(dst)], work, config=cfg)
    assert dry.returncode == 0, dry.stderr
    assert listed(dry.stdout, "would delete") == EXPECTED
    assert listed(dry.stdout, "deleted") == set()
    assert "would delete 21 entries (7 directories) -- dry run" in dry.stdout
    assert unchanged(before, snapshot(tmp)) == []

    js = run(["delete", "--dry-run", "--json", str(src), str(dst)], work, config=cfg)
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["pass"] == "delete" and doc["state"] == "complete" and doc["failure_count"] == 0
    assert set(doc["deleted"]) == EXPECTED and doc["deleted_count"] == len(EXPECTED)
    assert doc["totals"]["entries_would_delete"] == 21 and doc["totals"].get("entries_deleted", 0) == 0
    assert unchanged(before, snapshot(tmp)) == []

    real = run(["delete", str(src), str(dst)], work, config=cfg)
    assert real.returncode == 0, real.stderr
    assert listed(real.stdout, "deleted") == EXPECTED
    assert listed(real.stdout, "would delete") == set()
    assert "deleted   21 entries (7 directories)" in real.stdout
    assert names(dst) == names(src)
    assert os.path.isdir("/etc")

    again = run(["delete", "--json", str(src), str(dst)], work, config=cfg)
    doc = json.loads(again.stdout)
    assert again.returncode == 0 and doc["deleted"] == [] and doc["totals"].get("entries_deleted", 0) == 0


def test_delete_json_lists_deleted(pair):
    tmp, work, cfg, src, dst = pair
    res = run(["delete", "--json", str(src), str(dst)], work, config=cfg)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc["deleted"]) == EXPECTED and doc["deleted_count"] == len(EXPECTED)
    assert doc["totals"]["entries_deleted"] == 21 and doc["totals"]["dirs_deleted"] == 7
    assert names(dst) == names(src)


def test_delete_max_delete_exits_1(pair):
    tmp, work, cfg, src, dst = pair
    res = run(["delete", "--json", "--max-delete", "3", str(src), str(dst)], work, config=cfg)
    assert res.returncode == 1, (res.stdout, res.stderr)  # entries left by the limit: work not done
    doc = json.loads(res.stdout)
    assert doc["totals"]["entries_deleted"] == 3 and doc["totals"]["deletes_over_limit"] > 0
    assert doc["failure_count"] == 0
    text = run(["delete", "--max-delete", "2", str(src), str(dst)], work, config=cfg)
    assert text.returncode == 1
    assert "left because --max-delete was reached" in text.stdout
    # A tree is listed when its purge starts; the limit may stop it midway (documented), so count files only.
    assert len([p for p in listed(text.stdout, "deleted") if not p.endswith("/")]) <= 2


# -- preflight refusals: exit 2, one line, nothing touched ------------------------------------------------

def _refused(pair, args, *words, config_text=None):
    tmp, work, cfg, src, dst = pair
    if config_text is not None:
        cfg.write_text(config_text)
    before = snapshot(tmp)
    res = run(args, work, config=cfg)
    line = assert_fatal(res, *words)
    assert res.stdout == ""
    assert unchanged(before, snapshot(tmp)) == []
    return line


@pytest.mark.parametrize("command", ["delete", "dirtime", "sync"])
def test_missing_source(pair, command):
    tmp, work, cfg, src, dst = pair
    if command == "sync":  # sync stops at its first pass (copy), which prints the refusal
        res = run([command, str(tmp / "nope"), str(dst)], work, config=cfg)
        assert res.returncode == 2 and "does not exist" in res.stderr
        return
    _refused(pair, [command, str(tmp / "nope"), str(dst)], "does not exist")


def test_source_empty_while_target_is_not(pair):
    tmp, work, cfg, src, dst = pair
    shutil.rmtree(src)
    src.mkdir()
    line = _refused(pair, ["delete", str(src), str(dst)], "empty while the target is not")
    assert "mounted" in line
    _refused(pair, ["delete", "--dry-run", str(src), str(dst)], "empty")


@pytest.mark.parametrize("spelling", ["same", "slash", "symlink"])
def test_source_is_target(pair, spelling):
    tmp, work, cfg, src, dst = pair
    other = {"same": str(src), "slash": str(src) + "/", "symlink": str(tmp / "alias")}[spelling]
    os.symlink("src", tmp / "alias")
    _refused(pair, ["delete", str(src), other], "same")


def test_source_must_be_a_mount_point(pair):
    tmp, work, cfg, src, dst = pair
    line = _refused(pair, ["delete", str(src), str(dst)], "not a mount point", config_text="SOURCE_IS_MOUNT = True\n")
    assert "SOURCE_IS_MOUNT" in line


def test_source_is_a_mount_point(pair):
    tmp, work, cfg, src, dst = pair
    cfg.write_text("SOURCE_IS_MOUNT = True\n")
    mnt = tmp / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(mnt)], check=True)
    try:
        (mnt / "keep").write_bytes(b"k")
        res = run(["delete", "--json", str(mnt), str(dst)], work, config=cfg)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(dst)) == ["keep"]


# -- dirtime -------------------------------------------------------------------------------------------------

def test_dirtime_with_a_target_directory_missing(pair):
    tmp, work, cfg, src, dst = pair
    (src / "a" / "b" / "c").mkdir()
    copy = tmp / "copy"
    shutil.copytree(src, copy, symlinks=True)
    shutil.rmtree(copy / "a" / "b")
    res = run(["dirtime", str(src), str(copy)], work, config=cfg)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "1 missing on one side, 1 failed" in res.stdout
    failures = [ln.strip() for ln in res.stderr.splitlines() if ln.startswith("  ")]
    assert failures == ["a/b: dirtime failed on target (-): directory missing on the target; run the copy pass first"]
    assert not (copy / "a" / "b").exists()
    assert os.stat(copy / "x").st_mtime_ns == os.stat(src / "x").st_mtime_ns


def test_dirtime_lists_every_one_sided_directory(pair):
    tmp, work, cfg, src, dst = pair
    (src / "only-src").mkdir()
    res = run(["dirtime", "--json", str(src), str(dst)], work, config=cfg)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    got = {(f["path"], f["side"]) for f in doc["failures"]}
    assert got == {("only-src", "target"), ("tree", "source"), ("a/tree", "source"), ("x/sub", "source")}
    assert doc["totals"]["dirs_missing"] == 4 and doc["failure_count"] == 4
    assert not (dst / "only-src").exists() and (dst / "tree" / "s" / "f").exists()


# -- sync -----------------------------------------------------------------------------------------------------

def test_sync_after_every_kind_of_change(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cfg = tmp_path / "config.py"
    cfg.write_text("BATCH = 7\nINLINE_ENTRIES = 5\n")
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=5, n_files=150, n_dirs=20)
    first = run(["copy", str(src), str(dst)], work, config=cfg)
    assert first.returncode == 0, first.stderr
    mutate(src)
    diffs = "\n".join(compare_trees(src, dst))
    for what in ("missing on target", "extra on target", "type differs: source=dir target=file",
                 "type differs: source=file target=dir", "size differs", "digest differs", "mode differs",
                 "mtime_ns differs"):
        assert what in diffs, what
    trace = tmp_path / "execve.trace"
    res = run(["sync", str(src), str(dst)], work, config=cfg,
              cmd=["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=execve", "-o", str(trace), *CMOVER])
    assert res.returncode == 0, (res.stdout, res.stderr)
    for name in ("copy", "delete", "dirtime"):
        assert f"cmover {name}: complete" in res.stdout, res.stdout
    assert "deleted: " in res.stdout
    # The passes ran in the sync process itself (one hub, one worker): cmover was started once, by strace.
    # Before: sync started `python -m cmover copy|delete|dirtime --json` and parsed their output.
    execs = [line for line in trace.read_text().splitlines()
             if "execve(" in line and line.endswith("= 0") and ('"cmover"' in line or f'execve("{CMOVER[0]}"' in line)]
    assert len(execs) == 1, execs
    assert compare_trees(src, dst, dir_times=True) == []
    again = run(["sync", "--json", str(src), str(dst)], work, config=cfg)
    assert again.returncode == 0, again.stderr
    assert compare_trees(src, dst, dir_times=True) == []


def test_sync_dry_run_only_lists(pair):
    tmp, work, cfg, src, dst = pair
    before = snapshot(tmp)
    res = run(["sync", "--dry-run", str(src), str(dst)], work, config=cfg)
    assert res.returncode == 0, res.stderr
    assert listed(res.stdout, "would delete") == EXPECTED
    assert "cmover copy" not in res.stdout and "cmover dirtime" not in res.stdout
    assert unchanged(before, snapshot(tmp)) == []


def test_a_copy_into_a_new_target_looks_up_no_name_there(tmp_path):
    """The command creates the target root, the walk its directories: no file name is looked up in them first,
    in the root task, in the directory tasks or in their batches (strace: no lstat finds a target name
    missing). Into a target root that held something, every name of the root is looked up (an empty one is
    as new: tests/test_copypass.py)."""
    work = tmp_path / "work"
    work.mkdir()
    cfg = tmp_path / "config.py"
    cfg.write_text("BATCH = 5\nINLINE_ENTRIES = 2\n")
    src = tmp_path / "src"
    for rel in [f"f{i:02d}" for i in range(12)] + [f"sub/g{i}" for i in range(8)]:
        (src / rel).parent.mkdir(exist_ok=True)
        (src / rel).write_bytes(rel.encode())

    def missing_names(dst: Path) -> set[str]:
        traces = tmp_path / f"{dst.name}.trace"
        traces.mkdir()
        # One file per process (-ff): no call is split over two lines by another process's.
        res = run(["copy", "-j", "2", str(src), str(dst)], work, config=cfg,
                  cmd=["strace", "-ff", "-qq", "-e", "trace=newfstatat", "-o", str(traces / "p"), *CMOVER])
        assert res.returncode == 0, (res.stdout, res.stderr)
        assert compare_trees(src, dst) == []
        return {line.split('"')[1] for trace in traces.iterdir() for line in trace.read_text().splitlines()
                if line.endswith("= -1 ENOENT (No such file or directory)") and '"' in line}

    # (A directory's name is looked up before its mkdir: a few per cent of the entries of a tree.)
    files = {p.name for p in src.rglob("*") if p.is_file()}
    assert not missing_names(tmp_path / "new") & files
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "f00").write_bytes(b"an older f00")
    assert {f"f{i:02d}" for i in range(1, 12)} <= missing_names(tmp_path / "there")
