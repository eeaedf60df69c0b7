"""The delete and dirtime passes distributed over real ``celery worker`` processes (RabbitMQ + memcached).

1. A delete pass over two workers: a dry run deletes nothing and lists exactly what the real run then
   deletes (files, symlinks pointing out of the tree, FIFOs, whole directory trees, non-UTF-8 names);
   afterwards the target equals the source, and what the symlinks pointed to is untouched.
2. Safety: an empty filesystem mounted over the source root after the pass was seeded (before any task
   ran) makes every task refuse: nothing is deleted, the failures are listed, ``--wait`` exits 1; with
   the mount already there, ``cmover start delete`` refuses in the preflight (exit 2, one line).
3. A whole migration: copy, source changes, copy again, delete, dirtime: the trees are identical,
   directory times included.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from support.deploy import (
    CMOVER,
    DIRS_Q,
    FILES_Q,
    REPO,
    Deployment,
    DeploymentSet,
    Worker,
    explain,
    run,
)
from support.snap import compare_trees, diff, snapshot
from support.tree import REFERENCE_NS, File, build, mutate, random_tree

from cmover.core.paths import display
from cmover.core.settings import load_settings
from cmover.state.errorlist import deleted_list, errors_queue

pytestmark = pytest.mark.integration

DELETE_QS = ("cmover.delete.dirs", "cmover.delete.files")
DIRTIME_QS = ("cmover.dirtime.dirs", "cmover.dirtime.files")
ALL_QS = (DIRS_Q, FILES_Q, *DELETE_QS, *DIRTIME_QS)

_DELETE_TASK_RE = re.compile(r"Task cmover\.delete\.(dir|files|purge)\[[0-9a-f-]+\] succeeded")
_LOG_ERROR_RE = re.compile(r"\] (ERROR|CRITICAL)/")

#: A fixed, distinctive time for the entries this module creates itself (make_tree sets its own).
T_NS = REFERENCE_NS - 123_456_789_123


# -- helpers ------------------------------------------------------------------------------------------------


def _json_out(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"no JSON summary on stdout\n{explain(r)}")


def _file(path: bytes, data: bytes = b"", mode: int = 0o644, mtime_ns: int = T_NS) -> None:
    """A file at ``path`` (its directory exists) holding ``data``, atime and mtime ``mtime_ns``."""
    build(os.path.dirname(path), {os.path.basename(path): File(data, mode=mode, atime_ns=mtime_ns, mtime_ns=mtime_ns)})


def _pass_status(dep: Deployment, kind: str, run_id: str | None = None) -> dict[str, Any]:
    """``cmover status KIND --json``; "unknown" (exit 3) is returned too, not failed on."""
    r = dep.cmover("status", kind, "--json", *(["--run", run_id] if run_id else []), timeout=60)
    assert r.returncode in (0, 3), explain(r)
    return _json_out(r)


def _deleted_list(dep: Deployment, run_id: str | None = None) -> list[str]:
    """The lines of ``cmover deleted [--run RUN]`` (one displayed path each)."""
    r = dep.cmover("deleted", *(["--run", run_id] if run_id else []), timeout=60)
    assert r.returncode == 0, explain(r)
    lines = r.stdout.splitlines()
    m = re.search(r"([\d,]+) entries in the deletion list of (\S+)", r.stderr)
    assert m, explain(r)
    assert int(m.group(1).replace(",", "")) == len(lines), explain(r)
    if run_id:
        assert m.group(2) == run_id, explain(r)
    return lines


def _delete_tasks(*workers: Worker) -> list[int]:
    return [len(_DELETE_TASK_RE.findall(w.log_text())) for w in workers]


def _logged_errors(*workers: Worker) -> list[str]:
    return [f"{w.node}: {line}" for w in workers for line in w.log_text().splitlines() if _LOG_ERROR_RE.search(line)]


def _start_workers(dep: Deployment, queues: tuple[str, ...], n: int, concurrency: int = 2) -> list[Worker]:
    workers = [dep.start_worker(f"w{i}", queues, concurrency) for i in range(1, n + 1)]
    for w in workers:
        w.wait_ready()
    return workers


def _unchanged(before: dict[bytes, dict[str, Any]], root: Path) -> list[str]:
    """Differences between an earlier snapshot and the tree now (directory mtimes included, atimes not)."""
    return diff(before, snapshot(root), dir_times=True)


@dataclass
class Extras:
    """What the test put on the target only: what the delete pass must list and remove."""

    listed: set[str] = field(default_factory=set)  # `cmover deleted` lines: top-level entries, trees with "/"
    entries: int = 0  # every entry removed (trees counted entry by entry, their directories included)
    dirs: int = 0

    def single(self, root: bytes, rel: bytes) -> bytes:
        self.listed.add(display(rel))
        self.entries += 1
        return root + b"/" + rel

    def tree(self, root: bytes, rel: bytes) -> bytes:
        self.listed.add(display(rel + b"/"))
        path = root + b"/" + rel
        os.mkdir(path, 0o755)
        return path

    def count_tree(self, path: bytes) -> None:
        for _dirpath, dirnames, filenames in os.walk(path):
            self.entries += len(dirnames) + len(filenames)  # symlinks to directories are in dirnames
            self.dirs += sum(1 for d in dirnames if not os.path.islink(os.path.join(_dirpath, d)))
        self.entries += 1
        self.dirs += 1


def _outside(tmp_path: Path) -> bytes:
    """A directory outside both trees that symlinks on the target point into: it must survive."""
    out = tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_bytes(b"keep me")
    (out / "sub" / "keep-too").write_bytes(b"me too")
    return os.fsencode(out)


# -- 1. distributed delete: dry run, then the real run ------------------------------------------------------


def _build_delete_trees(tmp_path: Path) -> tuple[Path, Path, Extras, bytes]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    # The same seed gives the same tree, entry for entry (names, data, modes, owners, times).
    random_tree(src, seed=4242, n_files=400, n_dirs=40, weird_names=True)
    random_tree(dst, seed=4242, n_files=400, n_dirs=40, weird_names=True)
    s, d = os.fsencode(src), os.fsencode(dst)
    assert compare_trees(src, dst) == []
    outside = _outside(tmp_path)
    ex = Extras()

    # A directory present on both sides that is bigger than BATCH: its extras go to delete.files tasks.
    for root in (s, d):
        os.mkdir(root + b"/big", 0o755)
        for i in range(120):
            _file(root + b"/big/keep-%03d" % i, b"k" * i)
    for i in range(80):
        _file(ex.single(d, b"big/extra-%03d" % i), b"e" * i)
    _file(ex.single(d, b"big/extra-\xff\xfe"), b"non-utf8 name")
    _file(ex.single(d, b"big/new\nline extra"), b"newline in the name")

    # Extra entries here and there: plain files, non-UTF-8 names, a FIFO, symlinks out of the tree.
    src_dirs = sorted(rel for rel, rec in snapshot(src).items() if rec["type"] == "dir")
    deep = [rel for rel in src_dirs if rel.count(b"/") >= 2][:5]
    assert len(deep) >= 3, src_dirs
    _file(ex.single(d, b"extra-top"), b"x")
    _file(ex.single(d, b"extra-caf\xe9"), b"x")
    _file(ex.single(d, b"dir-\xff\xfe/extra-in-non-utf8-dir-\xe9"), b"x")
    for i, rel in enumerate(deep):
        _file(ex.single(d, rel + b"/extra-deep-%d" % i), b"deep" * i)
    os.mkfifo(ex.single(d, b"extra-fifo"), 0o640)
    os.symlink(outside, ex.single(d, b"escape-abs-dir"))
    os.symlink(outside + b"/keep.txt", ex.single(d, b"escape-abs-file"))
    os.symlink(b"../" * (deep[0].count(b"/") + 1) + b"../outside", ex.single(d, deep[0] + b"/escape-rel"))
    os.symlink(b"/nonexistent/cmover-dangling", ex.single(d, b"dangling-\xff"))

    # A deleted tree of a few thousand entries, with symlinks out of the tree and odd names inside.
    gone = ex.tree(d, b"gone-tree")
    for i in range(30):
        sub = gone + b"/s%02d" % i
        os.mkdir(sub, 0o755)
        for j in range(80):
            _file(sub + b"/f%03d" % j, b"g" * (j % 7))
        for t in (b"t0", b"t1 \xe9\xff"):
            os.mkdir(sub + b"/" + t, 0o750)
            for j in range(15):
                _file(sub + b"/" + t + b"/g-\xff%02d" % j, b"gg")
        os.symlink(outside, sub + b"/escape-dir")
        os.symlink(outside + b"/sub/keep-too", sub + b"/t0/escape-file")
        os.symlink(b"../../../outside", sub + b"/escape-rel")
    ex.count_tree(gone)

    # A deleted tree with a non-UTF-8 name inside an existing directory.
    gone2 = ex.tree(d, b"d0001/gone-\xff\xfe dir")
    os.makedirs(gone2 + b"/a/b\nc", 0o755)
    for j in range(40):
        _file(gone2 + (b"/a/x-%02d" if j % 2 else b"/a/b\nc/y-\xe9%02d") % j, b"z")
    os.symlink(outside, gone2 + b"/a/b\nc/out")
    ex.count_tree(gone2)

    # A directory that is empty on the target and gone on the source.
    ex.tree(d, b"empty-gone")
    ex.count_tree(d + b"/empty-gone")
    return src, dst, ex, outside


def test_distributed_delete_dry_run_lists_what_the_real_run_deletes(deployments: DeploymentSet,
                                                                    tmp_path: Path) -> None:
    src, dst, ex, outside = _build_delete_trees(tmp_path)
    outside_before = snapshot(outside)
    dep = deployments.new("delete", src, dst, INLINE_ENTRIES=0, BATCH=25)
    dep.init_broker()
    workers = _start_workers(dep, DELETE_QS, 2)

    # The dry run: counts and lists, deletes nothing.
    before = snapshot(dst)
    dry = dep.cmover("start", "delete", "--dry-run", "--wait", "--json", timeout=120)
    assert dry.returncode == 0, explain(dry)
    out = _json_out(dry)
    assert out["pass"] == "delete" and out["state"] == "complete", out
    assert out["failure_count"] == 0, out["failures"]
    t = out["totals"]
    assert t.get("entries_deleted", 0) == 0 and t.get("dirs_deleted", 0) == 0, t
    assert t.get("entries_would_delete") == ex.entries, t
    assert t.get("dirs_would_delete") == ex.dirs, t
    assert _unchanged(before, dst) == [], "the dry run changed the target"
    dry_list = _deleted_list(dep, out["run_id"])
    assert len(dry_list) == len(set(dry_list)), "an entry is listed twice"
    assert set(dry_list) == ex.listed, (sorted(set(dry_list) - ex.listed), sorted(ex.listed - set(dry_list)))
    assert set(out["deleted"]) == ex.listed and out["deleted_count"] == len(ex.listed)
    assert _deleted_list(dep) == dry_list  # the current delete run by default

    # The real run deletes exactly what the dry run listed.
    real = dep.cmover("start", "delete", "--wait", "--json", timeout=120)
    assert real.returncode == 0, explain(real)
    out = _json_out(real)
    assert out["state"] == "complete" and out["run_id"] != _json_out(dry)["run_id"], out
    assert out["failure_count"] == 0, out["failures"]
    t = out["totals"]
    assert t.get("entries_deleted") == ex.entries, t
    assert t.get("dirs_deleted") == ex.dirs, t
    assert t.get("entries_would_delete", 0) == 0, t
    real_list = _deleted_list(dep)
    assert len(real_list) == len(set(real_list)), "an entry is listed twice"
    assert set(real_list) == set(dry_list)
    assert _deleted_list(dep, _json_out(dry)["run_id"]) == dry_list, "the dry run's list changed"

    assert compare_trees(src, dst) == []
    assert diff(outside_before, snapshot(outside), dir_times=True) == [], \
        "a symlink was followed out of the tree"

    # The work was spread over both workers, and nothing went wrong in them.
    assert all(n > 0 for n in _delete_tasks(*workers)), _delete_tasks(*workers)
    assert _logged_errors(*workers) == []

    # Nothing left to do: a third run deletes nothing and lists nothing.
    again = dep.cmover("start", "delete", "--wait", "--json", timeout=120)
    assert again.returncode == 0, explain(again)
    assert _json_out(again)["totals"].get("entries_deleted", 0) == 0
    assert _deleted_list(dep) == []

    # A deletion list written before deletions had a record of their own (error-list records) still reads.
    old = [{"path": "old/tree/", "op": "delete tree", "errno": 0, "message": "directory tree", "side": "target",
            "worker": "", "time": 0.0},
           {"path": {"b64": "b2xkL2b/"}, "op": "delete", "errno": 0, "message": "file", "side": "target",
            "worker": "", "time": 0.0}]
    queue = errors_queue(deleted_list("delete-old"))
    with Connection(load_settings(str(dep.config)).broker_url()) as conn:
        conn.Producer().publish({"run_id": "delete-old", "failures": old}, routing_key=queue.name, declare=[queue],
                                serializer="json", delivery_mode=2)
    assert _deleted_list(dep, "delete-old") == ["old/tree/", display(b"old/f\xff")]


# -- 2. safety: the source replaced by an empty filesystem --------------------------------------------------


def _mount_tmpfs(path: Path) -> None:
    r = run(["mount", "-t", "tmpfs", "-o", "size=16m", "none", path], timeout=30)
    assert r.returncode == 0, explain(r)
    assert os.path.ismount(path) and not os.listdir(path)


def _umount(path: Path) -> None:
    if not os.path.ismount(path):
        return
    r = run(["umount", path], timeout=30)
    if r.returncode != 0:
        r = run(["umount", "-l", path], timeout=30)
    assert r.returncode == 0, explain(r)


def test_delete_pass_refuses_a_replaced_source(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=77, n_files=200, n_dirs=20, weird_names=True)
    random_tree(dst, seed=77, n_files=200, n_dirs=20, weird_names=True)
    d = os.fsencode(dst)
    for i in range(150):  # many directories whose source is gone, each a purge of its own
        os.makedirs(d + b"/gone-%03d/sub" % i)
        for j in range(4):
            _file(d + b"/gone-%03d/f%d" % (i, j), b"x")
            _file(d + b"/gone-%03d/sub/g%d" % (i, j), b"y")
    for i in range(50):
        _file(d + b"/extra-%02d" % i, b"z")
    before = snapshot(dst)
    dep = deployments.new("unsafe", src, dst, INLINE_ENTRIES=0, BATCH=10)
    dep.init_broker()

    # Seed the pass with no worker running: `start --wait` passes its preflight on the real source.
    waiter = subprocess.Popen([str(CMOVER), "start", "delete", "--wait", "--json"], cwd=REPO, env=dep.env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, errors="replace")
    try:
        deadline = time.monotonic() + 30
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert waiter.poll() is None, f"start --wait exited {waiter.returncode}: {waiter.communicate()}"
            st = _pass_status(dep, "delete")
            if st["state"] == "running" and (st["outstanding"] or 0) >= 1:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the delete pass was not seeded after 30 s: {st}")
        run_id = st["run_id"]
        try:
            # An empty filesystem over the source root before any task runs: every task sees it.
            _mount_tmpfs(src)
            workers = _start_workers(dep, DELETE_QS, 2)
            try:
                stdout, stderr = waiter.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("start --wait did not finish in 60 s:\n"
                            + "\n".join(f"--- {w.node}\n{w.log_text()[-3000:]}" for w in workers))
            res = subprocess.CompletedProcess(waiter.args, waiter.returncode, stdout, stderr)
            assert res.returncode == 1, explain(res)
            out = _json_out(res)
            assert out["run_id"] == run_id and out["state"] == "complete", out
            assert out["failure_count"] >= 1, out
            assert all(str(src) in f["message"] for f in out["failures"]), out["failures"]
            assert out["totals"].get("entries_deleted", 0) == 0, out["totals"]
            assert out["deleted"] == [] and out["deleted_count"] == 0, out
            assert _unchanged(before, dst) == [], "something was deleted although the source was replaced"

            errs = dep.cmover("errors", "delete", timeout=60)
            assert errs.returncode == 0, explain(errs)
            lines = errs.stdout.splitlines()
            assert lines and all(str(src) in line for line in lines), explain(errs)
            assert f"{len(lines)} failure(s) in {run_id}" in errs.stderr, explain(errs)
            assert _deleted_list(dep, run_id) == []
            logs = "\n".join(w.log_text() for w in workers)
            assert "nothing was deleted by this task" in logs, logs[-3000:]
            assert "Traceback" not in logs, logs[-3000:]

            # The preflight variant: with the empty filesystem already there, nothing is even started.
            for extra in ((), ("--wait",)):
                r = dep.cmover("start", "delete", *extra, timeout=60)
                assert r.returncode == 2, explain(r)
                assert r.stdout == "", explain(r)
                assert len(r.stderr.splitlines()) == 1, explain(r)
                assert "is empty while the target is not" in r.stderr and str(src) in r.stderr, explain(r)
            assert _pass_status(dep, "delete")["run_id"] == run_id, "a refused pass became the current run"
            assert _unchanged(before, dst) == []
        finally:
            _umount(src)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()

    # With the real source back the same pass deletes what it should: the refusals were not vacuous.
    r = dep.cmover("start", "delete", "--wait", "--json", timeout=120)
    assert r.returncode == 0, explain(r)
    assert _json_out(r)["totals"].get("entries_deleted") == 150 * 10 + 50
    assert compare_trees(src, dst) == []


# -- 3. a whole migration: copy, changes, copy, delete, dirtime ---------------------------------------------


def _run_pass(dep: Deployment, kind: str) -> dict[str, Any]:
    r = dep.cmover("start", kind, "--wait", "--json", timeout=120)
    assert r.returncode == 0, explain(r)
    out = _json_out(r)
    assert out["pass"] == kind and out["state"] == "complete", out
    assert out["failure_count"] == 0, out["failures"]
    return out


def test_three_pass_migration_makes_identical_trees(deployments: DeploymentSet, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=31337, n_files=800, n_dirs=80, weird_names=True)
    dst.mkdir()
    dep = deployments.new("migrate", src, dst, INLINE_ENTRIES=20, BATCH=40)
    dep.init_broker()
    # One worker listening on the queues of all three passes, and one on the batch queues only.
    workers = [dep.start_worker("all", ALL_QS, 3),
               dep.start_worker("files", (FILES_Q, "cmover.delete.files", "cmover.dirtime.files"), 2)]
    for w in workers:
        w.wait_ready()

    first = _run_pass(dep, "copy")
    assert first["totals"].get("files_copied", 0) > 800
    assert compare_trees(src, dst) == []

    mutate(src)
    assert compare_trees(src, dst) != []
    second = _run_pass(dep, "copy")
    assert second["totals"].get("files_copied", 0) > 0
    # Only the delete pass removes what the source lost.
    leftovers = compare_trees(src, dst)
    assert leftovers and all("extra on target" in line for line in leftovers), leftovers

    deleted = _run_pass(dep, "delete")
    assert deleted["totals"].get("entries_deleted", 0) > 0
    assert compare_trees(src, dst) == []
    # Each pass's node table shows its own counters, not the copy columns (one host: its totals are the run's).
    node = _node_row(dep, "delete", ["node", "processes", "active", "dirs", "scanned", "deleted", "kept", "failed",
                                     "dirs/s", "deleted/s", "last report"])
    t = deleted["totals"]
    assert (node["deleted"], node["kept"]) == (f"{t['entries_deleted']:,}", f"{t['entries_kept']:,}"), node

    dirtime = _run_pass(dep, "dirtime")
    t = dirtime["totals"]
    assert t.get("dirs_missing", 0) == 0 and t.get("dir_times_set") == t.get("dirs"), t
    assert compare_trees(src, dst, dir_times=True) == []
    node = _node_row(dep, "dirtime", ["node", "processes", "active", "dirs", "times set", "missing", "failed",
                                      "dirs/s", "last report"])
    assert (node["times set"], node["missing"]) == (f"{t['dir_times_set']:,}", "0"), node

    # `cmover sync` with a broker configured runs the three passes on the workers, one after another.
    (src / "after-sync" / "sub").mkdir(parents=True)
    (src / "after-sync" / "sub" / "new").write_bytes(b"new")
    next(p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink()).unlink()
    assert compare_trees(src, dst, dir_times=True) != []
    r = dep.cmover("sync", str(src), str(dst), timeout=240)
    assert r.returncode == 0, explain(r)
    for name in ("copy", "delete", "dirtime"):
        assert f"cmover {name}: complete" in r.stdout, r.stdout
    assert compare_trees(src, dst, dir_times=True) == []
    assert _logged_errors(*workers) == []


def _node_row(dep: Deployment, kind: str, header: list[str]) -> dict[str, str]:
    """The one node row of ``cmover status KIND`` read through a pipe (plain text, columns split on 2+ spaces)."""
    r = dep.cmover("status", kind, timeout=60)
    assert r.returncode == 0, explain(r)
    lines = r.stdout.splitlines()
    at = next((i for i, ln in enumerate(lines) if ln.startswith("node ")), None)
    assert at is not None and at + 1 < len(lines), r.stdout
    assert re.split(r"\s{2,}", lines[at]) == header, r.stdout
    return dict(zip(header, re.split(r"\s{2,}", lines[at + 1]), strict=True))
