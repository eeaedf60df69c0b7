"""cmover.engine.filters: exclusion prefixes on whole components and the age window (regular files only)."""

import pytest

from cmover.core.passes import PassKind, PassSpec
from cmover.core.record import Kind, Record
from cmover.engine.filters import Filter


def rec(kind=Kind.REG, atime_ns=0, mtime_ns=0) -> Record:
    return Record(kind=kind, perm=0o644, uid=0, gid=0, size=1, atime_ns=atime_ns, mtime_ns=mtime_ns, ctime_ns=0,
                  ino=1, dev=1, nlink=1, rdev=0, blocks=0)


EX = Filter(frozenset({b"a/b", b"top", b"caf\xe9/x y"}), 0, 0)


@pytest.mark.parametrize("rel, out", [
    (b"a/b", True), (b"a/b/c", True), (b"a/b/c/d/e", True), (b"top", True), (b"top/x", True),
    (b"caf\xe9/x y", True), (b"caf\xe9/x y/z", True),
    (b"a", False), (b"a/bc", False), (b"a/b.txt", False), (b"a/c/b", False), (b"x/a/b", False),
    (b"topx", False), (b"to", False), (b"caf\xe9/x", False), (b"", False),
])
def test_excluded_whole_components(rel, out):
    assert EX.excluded(rel) is out


def test_no_excludes():
    assert Filter(frozenset(), 0, 0).excluded(b"a/b") is False


def test_from_spec():
    spec = PassSpec(run_id="r", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d", excludes=(b"x",),
                    oldest_atime_ns=5, newest_mtime_ns=9, min_size=3, max_size=7)
    assert Filter.from_spec(spec) == Filter(frozenset({b"x"}), 5, 9, 3, 7)
    assert Filter.from_spec(spec).has_size_window is True


@pytest.mark.parametrize("lo, hi, size, skipped", [
    (0, 0, 0, False), (0, 0, 1 << 60, False),  # no window
    (0, 100, 100, False), (0, 100, 101, True), (0, 100, 0, False),  # max only, inclusive
    (10, 0, 9, True), (10, 0, 10, False), (10, 0, 1 << 60, False), (10, 0, 0, True),  # min only, inclusive
    (10, 100, 9, True), (10, 100, 10, False), (10, 100, 100, False), (10, 100, 101, True),
    (5, 5, 5, False), (5, 5, 4, True), (5, 5, 6, True),
])
def test_size_skip_bounds(lo, hi, size, skipped):
    f = Filter(frozenset(), 0, 0, lo, hi)
    assert f.has_size_window is bool(lo or hi)
    assert f.size_skip(size) is skipped


OLD, NEW = 1_000, 5_000


@pytest.mark.parametrize("atime, mtime, skipped", [
    (OLD, NEW, False),  # exactly at both cutoffs: selected
    (OLD - 1, NEW, True),  # read before the oldest cutoff
    (OLD, NEW + 1, True),  # modified after the newest cutoff
    (OLD - 1, NEW + 1, True),
    (OLD + 10, NEW - 10, False),
])
def test_age_skip_both_cutoffs(atime, mtime, skipped):
    f = Filter(frozenset(), OLD, NEW)
    assert (f.age_skip(rec(atime_ns=atime, mtime_ns=mtime)) is not None) is skipped


def test_age_skip_reasons():
    f = Filter(frozenset(), OLD, NEW)
    assert "OLDEST_DATE" in f.age_skip(rec(atime_ns=0, mtime_ns=NEW))
    assert "NEWEST_DATE" in f.age_skip(rec(atime_ns=OLD, mtime_ns=NEW + 1))


@pytest.mark.parametrize("kind", [Kind.DIR, Kind.LNK, Kind.FIFO, Kind.CHR, Kind.BLK, Kind.SOCK])
def test_age_skip_only_regular_files(kind):
    f = Filter(frozenset(), OLD, NEW)
    assert f.age_skip(rec(kind=kind, atime_ns=0, mtime_ns=10**18)) is None


def test_age_cutoffs_off():
    f = Filter(frozenset(), 0, 0)
    assert f.age_skip(rec(atime_ns=0, mtime_ns=10**19)) is None
    assert Filter(frozenset(), OLD, 0).age_skip(rec(atime_ns=OLD, mtime_ns=10**19)) is None
    assert Filter(frozenset(), 0, NEW).age_skip(rec(atime_ns=0, mtime_ns=NEW)) is None
