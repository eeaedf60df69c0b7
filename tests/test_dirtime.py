"""cmover.dirtimepass.DirtimePass on real trees: directory times after a copy, nanoseconds, one-sided
directories, fan-out of subtrees as jobs. Runs as root (as CI does): make_tree gives entries other owners.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pytest
import treeutil

from cmover.copypass import Job
from cmover.dirtimepass import DirtimePass
from cmover.errors import Failure
from cmover.passes import PassKind, PassSpec
from cmover.stats import C

T_ATIME = 1_500_000_000_123_456_789
T_MTIME = 1_600_000_000_987_654_321
OTHER = 1_000_000_000_000_000_007


@dataclass
class DirtimeResult:
    tally: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)  # every job emitted

    def failed(self) -> dict[bytes, Failure]:
        return {f.path: f for f in self.failures}


def run_dirtime(spec: PassSpec, rel: bytes = b"", *, follow: bool = True) -> DirtimeResult:
    """Run the task of ``rel`` and (``follow``) every job emitted, each with a fresh DirtimePass."""
    res = DirtimeResult()
    pending = [Job("dir", rel)]
    while pending:
        job = pending.pop(0)
        assert job.kind == "dir", job
        emitted: list[Job] = []
        DirtimePass(spec, res.tally, res.failures.append, emitted.append).run_dir(job.rel)
        res.jobs.extend(emitted)
        if follow:
            pending.extend(emitted)
    return res


def copy_all(spec: PassSpec, run_copy) -> None:
    """A whole copy pass: the root task and every job it emits."""
    pending = [Job("dir", b"")]
    while pending:
        job = pending.pop(0)
        res = run_copy(spec, job.rel, names=list(job.names) if job.kind == "files" else None)
        assert res.failures == [], res.failures
        pending.extend(res.jobs)


@pytest.fixture
def dirtime_spec(make_spec):
    def make(inline_entries: int = 2000) -> PassSpec:
        return make_spec(run_id="dirtime-test", kind=PassKind.DIRTIME, inline_entries=inline_entries)

    return make


def dirs_of(root: bytes) -> list[bytes]:
    """Every directory below ``root`` (relative; symlinks are not directories), root included as b"", deepest first."""
    out = [b""]
    for dirpath, dirnames, _ in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, d), root) for d in dirnames
                if not os.path.islink(os.path.join(dirpath, d))]
    return sorted(out, key=lambda r: -r.count(b"/") - (r != b""))


def times(path: bytes) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_atime_ns, st.st_mtime_ns


@pytest.mark.parametrize("inline_entries", [2000, 3])
def test_copy_then_dirtime_gives_identical_trees(roots, make_spec, run_copy, dirtime_spec, inline_entries):
    src, dst = roots
    treeutil.make_tree(src, seed=21, n_files=250, n_dirs=30)
    copy_all(make_spec(batch=40, inline_entries=inline_entries), run_copy)
    dirs = dirs_of(dst)
    for rel in dirs:  # whatever the copy did to them, the dirtime pass alone must set them
        os.utime(os.path.join(dst, rel), ns=(OTHER, OTHER))
    assert treeutil.compare_trees(src, dst) == []
    assert treeutil.compare_trees(src, dst, dir_times=True) != []
    src_before = treeutil.snapshot(src)
    res = run_dirtime(dirtime_spec(inline_entries))
    assert res.failures == []
    assert bool(res.jobs) == (inline_entries < 2000)
    assert res.tally[C.DIRTIMES] == res.tally[C.DIRS] == len(dirs)
    assert res.tally[C.DIRS_MISSING] == 0 and res.tally[C.FAILED] == 0
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns  # the root too
    assert treeutil.compare_trees(src, dst, dir_times=True) == []
    assert treeutil.diff_snapshots(src_before, treeutil.snapshot(src), dir_times=True) == []


@pytest.mark.parametrize("inline_entries", [2000, 0])
def test_nanosecond_dir_times_copied_source_atimes_untouched(roots, dirtime_spec, inline_entries):
    src, dst = roots
    rels = [b"a/b/c", b"a/b2", b"x", b"caf\xe9/\xff"]
    for rel in rels:
        os.makedirs(os.path.join(src, rel))
        os.makedirs(os.path.join(dst, rel))
    with open(os.path.join(src, b"a/file"), "wb"):
        pass
    expect = {}
    for i, rel in enumerate(dirs_of(src)):  # deepest first: setting a child's times leaves its parent's alone
        expect[rel] = (T_ATIME + i, T_MTIME + 1000 * i)
        os.utime(os.path.join(src, rel), ns=expect[rel])
        os.utime(os.path.join(dst, rel), ns=(OTHER, OTHER))
    res = run_dirtime(dirtime_spec(inline_entries))
    assert res.failures == []
    assert res.tally[C.DIRTIMES] == len(expect) == 8
    for rel, want in expect.items():
        assert times(os.path.join(dst, rel)) == want, rel
        assert times(os.path.join(src, rel)) == want, rel  # read with O_NOATIME: source atimes kept


def test_dirs_missing_on_one_side_are_counted_listed_and_not_created(roots, dirtime_spec, snapshot):
    src, dst = roots
    for rel in (b"both/inner", b"src-only/inner/deeper", b"type/x"):
        os.makedirs(os.path.join(src, rel))
    for rel in (b"both/inner", b"dst-only/inner"):
        os.makedirs(os.path.join(dst, rel))
    with open(os.path.join(dst, b"dst-only/inner/f"), "wb"):
        pass
    with open(os.path.join(dst, b"type"), "wb"):  # a file where the source has a directory
        pass
    os.symlink(b"both", os.path.join(dst, b"src-link"))  # not a directory: never followed
    os.symlink(b"both", os.path.join(src, b"src-link"))
    before = snapshot(dst)
    res = run_dirtime(dirtime_spec(0))
    after = snapshot(dst)
    assert after == before  # nothing created or removed (dir times are not in this snapshot)
    failed = res.failed()
    assert set(failed) == {b"src-only", b"dst-only", b"type"}  # subtrees are skipped, not listed
    assert failed[b"src-only"].side == "target" and failed[b"type"].side == "target"
    assert failed[b"dst-only"].side == "source"
    assert {f.op for f in failed.values()} == {"dirtime"}
    assert "copy pass" in failed[b"src-only"].message and "delete pass" in failed[b"dst-only"].message
    assert res.tally[C.DIRS_MISSING] == 3 and res.tally[C.FAILED] == 3
    assert res.tally[C.DIRTIMES] == 3  # root, both, both/inner
    assert os.stat(os.path.join(dst, b"both")).st_mtime_ns == os.stat(os.path.join(src, b"both")).st_mtime_ns


@pytest.mark.parametrize("side", ["source", "target"])
def test_directory_task_whose_directory_is_missing_on_one_side(roots, dirtime_spec, side):
    """A job emitted for a directory that vanished from one side before it ran is a missing directory too."""
    src, dst = roots
    os.makedirs(os.path.join(dst if side == "source" else src, b"d/sub"))
    res = run_dirtime(dirtime_spec(), b"d")
    assert [(f.path, f.side) for f in res.failures] == [(b"d", side)]
    assert res.tally[C.DIRS_MISSING] == 1
    assert not os.path.lexists(os.path.join(src if side == "source" else dst, b"d"))


def test_subtrees_fanned_out_as_jobs(roots, dirtime_spec):
    src, dst = roots
    for rel in (b"a/a1/a2", b"b/b1", b"c", b"\xe9"):
        os.makedirs(os.path.join(src, rel))
        os.makedirs(os.path.join(dst, rel))
    for rel in dirs_of(src):
        os.utime(os.path.join(src, rel), ns=(T_ATIME, T_MTIME))
        os.utime(os.path.join(dst, rel), ns=(OTHER, OTHER))
    first = run_dirtime(dirtime_spec(0), follow=False)
    assert first.jobs == [Job("dir", b"a"), Job("dir", b"b"), Job("dir", b"c"), Job("dir", b"\xe9")]
    assert first.tally[C.DIRTIMES] == 1 and first.failures == []
    assert times(dst) == (T_ATIME, T_MTIME)
    assert times(os.path.join(dst, b"a")) == (OTHER, OTHER)
    second = run_dirtime(dirtime_spec(0), b"a", follow=False)
    assert second.jobs == [Job("dir", b"a/a1")]
    assert times(os.path.join(dst, b"a/a1")) == (OTHER, OTHER)
    everything = run_dirtime(dirtime_spec(0))
    assert len(everything.jobs) == 7 and everything.tally[C.DIRTIMES] == 8
    for rel in dirs_of(src):
        assert times(os.path.join(dst, rel)) == (T_ATIME, T_MTIME), rel
    inline = run_dirtime(dirtime_spec(2000))
    assert inline.jobs == [] and inline.tally[C.DIRTIMES] == 8
