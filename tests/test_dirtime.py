"""cmover.engine.dirtimepass.DirtimePass on real trees: directory times after a copy, nanoseconds, one-sided
directories, fan-out of subtrees as jobs. Runs as root (as CI does): make_tree gives entries other owners.
"""

from __future__ import annotations

import os

import pytest
from support.runner import drain
from support.snap import compare_trees, diff, snapshot
from support.tree import random_tree

from cmover.core.counters import C
from cmover.core.passes import PassKind, PassSpec
from cmover.engine.jobs import DirJob

T_ATIME = 1_500_000_000_123_456_789
T_MTIME = 1_600_000_000_987_654_321
OTHER = 1_000_000_000_000_000_007


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
def test_copy_then_dirtime_gives_identical_trees(roots, make_spec, dirtime_spec, inline_entries):
    src, dst = roots
    random_tree(src, seed=21, n_files=250, n_dirs=30)
    assert drain(make_spec(batch=40, inline_entries=inline_entries), seed=inline_entries).failures == []
    dirs = dirs_of(dst)
    for rel in dirs:  # whatever the copy did to them, the dirtime pass alone must set them
        os.utime(os.path.join(dst, rel), ns=(OTHER, OTHER))
    assert compare_trees(src, dst) == []
    assert compare_trees(src, dst, dir_times=True) != []
    src_before = snapshot(src)
    res = drain(dirtime_spec(inline_entries), seed=1)  # any order, some jobs twice: the same times in the end
    assert res.failures == []
    assert bool(res.emitted) == (inline_entries < 2000)
    assert res.tally[C.DIRTIMES] == res.tally[C.DIRS] >= len(dirs)
    assert res.tally[C.DIRS_MISSING] == 0 and res.tally[C.FAILED] == 0
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns  # the root too
    assert compare_trees(src, dst, dir_times=True) == []
    assert diff(src_before, snapshot(src), dir_times=True) == []


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
    res = drain(dirtime_spec(inline_entries), redeliver=0)
    assert res.failures == []
    assert res.tally[C.DIRTIMES] == len(expect) == 8
    for rel, want in expect.items():
        assert times(os.path.join(dst, rel)) == want, rel
        assert times(os.path.join(src, rel)) == want, rel  # read with O_NOATIME: source atimes kept


def test_dirs_missing_on_one_side_are_counted_listed_and_not_created(roots, dirtime_spec):
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
    res = drain(dirtime_spec(0), redeliver=0)
    after = snapshot(dst)
    assert diff(before, after, inodes=True) == []  # nothing created or removed (dir times aside)
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
    res = drain(dirtime_spec(), DirJob(b"d"), redeliver=0)
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
    first = drain(dirtime_spec(0), follow=False, redeliver=0)
    assert first.emitted == [DirJob(b"a"), DirJob(b"b"), DirJob(b"c"), DirJob(b"\xe9")]
    assert first.tally[C.DIRTIMES] == 1 and first.failures == []
    assert times(dst) == (T_ATIME, T_MTIME)
    assert times(os.path.join(dst, b"a")) == (OTHER, OTHER)
    second = drain(dirtime_spec(0), DirJob(b"a"), follow=False, redeliver=0)
    assert second.emitted == [DirJob(b"a/a1")]
    assert times(os.path.join(dst, b"a/a1")) == (OTHER, OTHER)
    everything = drain(dirtime_spec(0), redeliver=0)
    assert len(everything.emitted) == 7 and everything.tally[C.DIRTIMES] == 8
    for rel in dirs_of(src):
        assert times(os.path.join(dst, rel)) == (T_ATIME, T_MTIME), rel
    inline = drain(dirtime_spec(2000), redeliver=0)
    assert inline.emitted == [] and inline.tally[C.DIRTIMES] == 8


def test_failures_are_logged_under_the_dirtime_logger(roots, dirtime_spec, caplog):
    """A dirtime failure is a line of ``cmover.engine.dirtimepass``, not of another pass's logger."""
    src, _ = roots
    os.makedirs(os.path.join(src, b"src-only"))
    with caplog.at_level("WARNING", logger="cmover.engine"):
        res = drain(dirtime_spec(), redeliver=0)
    assert [f.path for f in res.failures] == [b"src-only"]
    lines = [(r.name, r.getMessage()) for r in caplog.records if "src-only" in r.getMessage()]
    assert lines == [("cmover.engine.dirtimepass", res.failures[0].line())]


@pytest.mark.parametrize("fails", [1, 99])
def test_transient_error_setting_times_is_retried(roots, dirtime_spec, monkeypatch, fails):
    """ESTALE from utime is tried again after a pause (1 failure: then set); when it never clears, the
    directory is a failure that names the errno."""
    import errno

    from cmover.engine import jobs

    src, dst = roots
    for root in roots:
        os.makedirs(os.path.join(root, b"d"))
    os.utime(os.path.join(src, b"d"), ns=(T_ATIME, T_MTIME))
    d_ino = os.stat(os.path.join(dst, b"d")).st_ino
    real_utime = os.utime
    calls = []

    def utime(path, *args, **kw):
        if isinstance(path, int) and os.fstat(path).st_ino == d_ino:
            calls.append(path)
            if len(calls) <= fails:
                raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return real_utime(path, *args, **kw)

    pauses: list[float] = []
    monkeypatch.setattr(os, "utime", utime)
    monkeypatch.setattr(jobs.time, "sleep", pauses.append)
    res = drain(dirtime_spec(), redeliver=0)
    if fails == 1:
        assert res.failures == [] and res.tally[C.DIRTIMES] == 2
        assert times(os.path.join(dst, b"d")) == (T_ATIME, T_MTIME)
        assert len(calls) == 2 and pauses == [jobs.TRANSIENT_PAUSES[0]]
    else:
        assert [(f.path, f.op, f.errno) for f in res.failures] == [(b"d", "set mode and times", errno.ESTALE)]
        assert res.tally[C.DIRTIMES] == 1  # the root only
        assert len(calls) == 1 + len(jobs.TRANSIENT_PAUSES) and pauses == list(jobs.TRANSIENT_PAUSES)
