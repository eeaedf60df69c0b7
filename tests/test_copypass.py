"""cmover.engine.copypass.CopyPass on real trees: walking, fidelity, idempotence, filters, failures, budget, batches.

Runs as root (as CI does): ownership changes and device nodes need it.
"""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest
from support.snap import diff, snapshot
from support.tree import Device, Dir, Fifo, File, Link, Socket, build

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.passes import PassKind
from cmover.core.settings import from_mapping
from cmover.engine.jobs import DirJob
from cmover.engine.planner import plan

T_ATIME = 1_500_000_000_123_456_789
T_MTIME = 1_600_000_000_987_654_321
DAY_NS = 86400 * 10**9


NAMES = [b"caf\xe9", b"new\nline", b"trailing ", b"x" * 255, "\u65e5\u672c".encode(), b"-dash", b"#hash"]


def build_tree(src: bytes) -> None:
    """Every kind of entry cmover copies, odd names, special modes and owners, nanosecond times."""
    t = {"atime_ns": T_ATIME, "mtime_ns": T_MTIME}
    build(src, {
        b"": Dir(mode=0o750, uid=4321, gid=4321),
        b"d": Dir(mode=0o2775, uid=1000, gid=1001),
        b"d/sub/deeper": Dir(mode=0o700, uid=1002, gid=1003),
        b"sticky": Dir(mode=0o1777),
        b"empty": Dir(mode=0o555),
        b"top.txt": File(os.urandom(5000), mode=0o4755, uid=1234, gid=5678, **t),
        b"d/sgid": File(b"g", mode=0o2711, uid=1, gid=2, **t),
        b"d/sub/deeper/f": File(b"deep", mode=0o600, uid=3, gid=4, **t),
        b"d/empty-file": File(b"", mode=0o444, uid=0, gid=0, **t),
        **{b"d/" + name: File(name * 3, mode=0o640, uid=100 + i, gid=200 + i, **t) for i, name in enumerate(NAMES)},
        b"d/link": Link(b"../top.txt", uid=77, gid=78, **t),
        b"dangling": Link(b"/nonexistent/\xff dangling"),
        b"d/fifo": Fifo(mode=0o620, **t),
        b"d/null": Device(1, 3, mode=0o666, **t),
        b"d/sock": Socket(),
    })


def n_entries(snap: dict, kinds=(stat.S_ISREG, stat.S_ISLNK, stat.S_ISFIFO, stat.S_ISCHR, stat.S_ISSOCK)) -> int:
    return sum(1 for v in snap.values() if any(k(v["mode"]) for k in kinds))


def test_full_tree_copy(roots, make_spec, run_copy):
    src, dst = roots
    build_tree(src)
    expected = snapshot(src)
    res = run_copy(make_spec())
    assert res.failures == [] and res.emitted == []
    assert diff(expected, snapshot(dst), atimes=True) == []  # the socket too (mknod S_IFSOCK, as rsync -D)
    assert diff(expected, snapshot(src), atimes=True, inodes=True) == [], "the source is untouched, its atimes too"
    rst = os.lstat(dst)
    assert (rst.st_uid, rst.st_gid, stat.S_IMODE(rst.st_mode)) == (4321, 4321, 0o750)
    n_dirs = sum(1 for v in expected.values() if stat.S_ISDIR(v["mode"]))
    assert res.tally[C.DIRS] == n_dirs + 1 and res.tally[C.DIRS_CREATED] == n_dirs
    assert res.tally[C.COPIED] == n_entries(expected)
    assert res.tally[C.SCANNED] == n_entries(expected)
    assert res.tally[C.FAILED] == 0


def test_second_run_skips_everything(roots, make_spec, run_copy):
    src, dst = roots
    build_tree(src)
    run_copy(make_spec())
    before = snapshot(dst)
    res = run_copy(make_spec())
    assert diff(before, snapshot(dst), atimes=True, inodes=True, dir_times=True) == []  # the very same entries
    assert res.failures == []
    assert res.tally[C.COPIED] == 0 and res.tally[C.META] == 0 and res.tally[C.DIRS_CREATED] == 0
    assert res.tally[C.SKIPPED] == n_entries(before)


def test_changed_file_replaced_not_written_through(roots, make_spec, run_copy):
    src, dst = roots
    build(src, {b"a/b/f": File(b"old", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"a/b/g": File(b"same", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    run_copy(make_spec())
    os.link(os.path.join(dst, b"a/b/f"), os.path.join(dst, b"hard"))
    ino = os.lstat(os.path.join(dst, b"a/b/f")).st_ino
    build(src, {b"a/b/f": File(b"new!", atime_ns=T_ATIME, mtime_ns=T_MTIME + 1)})
    res = run_copy(make_spec())
    assert res.tally[C.COPIED] == 1 and res.tally[C.SKIPPED] == 1
    st = os.lstat(os.path.join(dst, b"a/b/f"))
    assert st.st_ino != ino and st.st_mtime_ns == T_MTIME + 1
    with open(os.path.join(dst, b"a/b/f"), "rb") as f:
        assert f.read() == b"new!"
    with open(os.path.join(dst, b"hard"), "rb") as f:
        assert f.read() == b"old"


def test_owner_and_mode_change_in_place(roots, make_spec, run_copy):
    src, dst = roots
    build(src, {b"d/f": File(b"x", uid=10, gid=10, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"d": Dir(mode=0o755, uid=10, gid=10)})
    run_copy(make_spec())
    ino = os.lstat(os.path.join(dst, b"d/f")).st_ino
    os.chown(os.path.join(src, b"d/f"), 11, 12)
    os.chmod(os.path.join(src, b"d/f"), 0o4750)
    build(src, {b"d": Dir(mode=0o2770, uid=13, gid=14)})
    res = run_copy(make_spec())
    st = os.lstat(os.path.join(dst, b"d/f"))
    assert (st.st_ino, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (ino, 11, 12, 0o4750)
    assert st.st_mtime_ns == T_MTIME
    dst_d = os.lstat(os.path.join(dst, b"d"))
    assert (dst_d.st_uid, dst_d.st_gid, stat.S_IMODE(dst_d.st_mode)) == (13, 14, 0o2770)
    assert res.tally[C.META] == 1 and res.tally[C.COPIED] == 0


def test_excluded_prefixes(roots, make_spec, run_copy):
    src, dst = roots
    for rel in (b"a/b/x", b"a/b/c/y", b"a/bc", b"a/keep", b"top/z", b"topx", b"caf\xe9/n\nl"):
        build(src, {rel: File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    res = run_copy(make_spec(excludes=(b"a/b", b"top", b"caf\xe9/n\nl")))
    assert not os.path.lexists(os.path.join(dst, b"a/b"))
    assert not os.path.lexists(os.path.join(dst, b"top"))
    assert not os.path.lexists(os.path.join(dst, b"caf\xe9/n\nl"))
    for rel in (b"a/bc", b"a/keep", b"topx"):
        assert os.path.isfile(os.path.join(dst, rel))
    assert os.path.isdir(os.path.join(dst, b"caf\xe9"))
    assert res.tally[C.EXCLUDED] == 3


def _plan(src: bytes, dst: bytes, **settings):
    s = from_mapping({"INLINE_SECONDS": 3600, **settings})
    return plan(PassKind.COPY, s, os.fsdecode(src), os.fsdecode(dst))


def test_oldest_date_filter(roots, run_copy):
    src, dst = roots
    now = os.stat(src).st_mtime_ns
    build(src, {b"d/old": File(b"data", atime_ns=now - 10 * DAY_NS, mtime_ns=now - 20 * DAY_NS)})
    build(src, {b"d/recent": File(b"data", atime_ns=now, mtime_ns=now - 20 * DAY_NS)})
    os.symlink(b"old", os.path.join(src, b"d/link"))
    os.utime(os.path.join(src, b"d/link"), ns=(now - 10 * DAY_NS, now - 20 * DAY_NS), follow_symlinks=False)
    res = run_copy(_plan(src, dst, OLDEST_DATE=86400))
    assert sorted(os.listdir(os.path.join(dst, b"d"))) == [b"link", b"recent"]
    assert res.tally[C.FILTERED] == 1


def test_newest_date_filter(roots, run_copy):
    src, dst = roots
    build(src, {b"d/hot": File(b"data", atime_ns=T_ATIME, mtime_ns=os.stat(src).st_mtime_ns)})
    build(src, {b"d/cold": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    os.mkfifo(os.path.join(src, b"d/fifo"))
    res = run_copy(_plan(src, dst, NEWEST_DATE=3600))
    assert sorted(os.listdir(os.path.join(dst, b"d"))) == [b"cold", b"fifo"]
    assert res.tally[C.FILTERED] == 1


def test_plan_reads_exclusions_file(roots, tmp_path, run_copy):
    src, dst = roots
    build(src, {b"skip/me": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"keep/me": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    ex = tmp_path / "excludes"
    ex.write_bytes(b"# prefixes\n" + src + b"/skip\n")
    res = run_copy(_plan(src, dst, EXCLUDE_FILE=str(ex)))
    assert os.listdir(dst) == [b"keep"] and res.tally[C.EXCLUDED] == 1


def test_unreadable_file_is_one_failure(roots, make_spec, run_copy, monkeypatch):
    src, dst = roots
    for name in (b"a", b"bad", b"c", b"d"):
        build(src, {b"dir/" + name: File(name, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    real = fsio.open_noatime

    def deny(name, flags, *, dir_fd=None):
        if name in ("bad", b"bad"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(name, flags, dir_fd=dir_fd)

    monkeypatch.setattr(fsio, "open_noatime", deny)
    res = run_copy(make_spec())
    assert len(res.failures) == 1
    f = res.failures[0]
    assert (f.path, f.errno) == (b"dir/bad", errno.EACCES)
    assert "dir/bad" in f.line() and "EACCES" in f.line()
    assert sorted(os.listdir(os.path.join(dst, b"dir"))) == [b"a", b"c", b"d"]
    assert res.tally[C.FAILED] == 1 and res.tally[C.COPIED] == 3


def test_unreadable_directory_is_one_failure(roots, make_spec, run_copy, monkeypatch):
    src, dst = roots
    build(src, {b"locked/secret": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"open/file": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    real = fsio.open_noatime

    def deny(name, flags, *, dir_fd=None):
        if name in ("locked", b"locked"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(name, flags, dir_fd=dir_fd)

    monkeypatch.setattr(fsio, "open_noatime", deny)
    res = run_copy(make_spec())
    assert [(f.path, f.errno) for f in res.failures] == [(b"locked", errno.EACCES)]
    assert os.path.isfile(os.path.join(dst, b"open/file"))
    assert not os.path.lexists(os.path.join(dst, b"locked/secret"))


def test_type_mismatches_repaired(roots, make_spec, run_copy, tmp_path):
    src, dst = roots
    outside = tmp_path / "outside"
    outside.mkdir()
    build(src, {b"was-dir": File(b"now a file", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"was-file/inner": File(b"inner", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"was-link/inner": File(b"inner", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(dst, {b"was-dir/old/deep": File(b"stale", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(dst, {b"was-file": File(b"stale", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    os.symlink(os.fsencode(outside), os.path.join(dst, b"was-link"))
    res = run_copy(make_spec())
    assert res.failures == []
    with open(os.path.join(dst, b"was-dir"), "rb") as f:
        assert f.read() == b"now a file"
    for d in (b"was-file", b"was-link"):
        assert stat.S_ISDIR(os.lstat(os.path.join(dst, d)).st_mode)
        with open(os.path.join(dst, d, b"inner"), "rb") as f:
            assert f.read() == b"inner"
    assert os.listdir(outside) == []


def test_start_below_root_creates_ancestors(roots, make_spec, run_copy):
    src, dst = roots
    build(src, {b"a": Dir(mode=0o750, uid=7, gid=8)})
    build(src, {b"a/b": Dir(mode=0o711, uid=9, gid=10)})
    build(src, {b"a/b/c/f": File(b"x", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"a/other": File(b"not copied", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    res = run_copy(make_spec(), rel=b"a/b/c")
    assert res.failures == []
    for rel, want in ((b"a", (0o750, 7, 8)), (b"a/b", (0o711, 9, 10))):
        st = os.lstat(os.path.join(dst, rel))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == want
    assert os.path.isfile(os.path.join(dst, b"a/b/c/f"))
    assert not os.path.lexists(os.path.join(dst, b"a/other"))


# -- work sharing ---------------------------------------------------------------------------------------

def test_no_budget_emits_subdirectories(roots, make_spec, run_copy):
    src, dst = roots
    build(src, {b"rootfile": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"a/f1": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"b/c/f2": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    spec = make_spec(inline_entries=0)
    res = run_copy(spec)
    assert sorted(res.emitted, key=lambda j: j.rel) == [DirJob(b"a"), DirJob(b"b")]
    assert sorted(os.listdir(dst)) == [b"rootfile"]  # subdirectories are left to their own tasks
    for job in res.emitted:
        sub = run_copy(spec, rel=job.rel)
        assert sub.failures == []
        if job.rel == b"b":
            assert sub.emitted == [DirJob(b"b/c")]
            assert run_copy(spec, rel=b"b/c").emitted == []
    assert os.path.isfile(os.path.join(dst, b"a/f1")) and os.path.isfile(os.path.join(dst, b"b/c/f2"))


def test_no_time_budget_emits_subdirectories(roots, make_spec, run_copy):
    src, _ = roots
    build(src, {b"a/f": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    assert run_copy(make_spec(inline_seconds=0.0)).emitted == [DirJob(b"a")]


def test_large_budget_walks_inline(roots, make_spec, run_copy):
    src, dst = roots
    for i in range(5):
        build(src, {b"d%d/e/f" % i: File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    res = run_copy(make_spec(inline_entries=1000))
    assert res.emitted == [] and res.tally[C.COPIED] == 5


def test_striped_first_level_mdts(roots, make_spec, run_copy):
    src, _ = roots
    for name in (b"a", b"b", b"c"):
        build(src, {name + b"/x/f": File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    spec = make_spec(inline_entries=0, mds_striped=True, mdt_list=(3, 5))
    jobs = run_copy(spec).emitted
    assert [j.mdt for j in jobs] == [3, 5, 3] and all(j.kind == "dir" for j in jobs)
    assert all(j.mdt is None for j in run_copy(spec, rel=jobs[0].rel).emitted)  # only the first level


def test_big_directory_split_into_batches(roots, make_spec, run_copy):
    src, dst = roots
    names = {b"f%02d" % i for i in range(45)}
    for n in names:
        build(src, {b"big/" + n: File(n, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"big/subdir": Dir(mode=0o755)})
    spec = make_spec(batch=10)
    res = run_copy(spec)
    files_jobs = [j for j in res.emitted if j.kind == "files"]
    assert len(res.emitted) == 3 == len(files_jobs)
    assert [j.index for j in files_jobs] == [0, 1, 2]
    # The batches of one listing grow (cmover.engine.walker.GROW_EVERY): 10, 10, then 20.
    assert all(j.rel == b"big" for j in files_jobs) and [len(j.names) for j in files_jobs] == [10, 10, 20]
    batched = [n for j in files_jobs for n in j.names]
    assert len(set(batched)) == 40 and set(batched) <= names
    inline = set(os.listdir(os.path.join(dst, b"big"))) - {b"subdir"}
    assert inline == names - set(batched) and len(inline) == 5
    assert res.tally[C.COPIED] == 5
    for j in files_jobs:
        sub = run_copy(spec, rel=j.rel, names=list(j.names))
        assert sub.failures == [] and sub.emitted == [] and sub.tally[C.COPIED] == len(j.names)
    assert set(os.listdir(os.path.join(dst, b"big"))) == names | {b"subdir"}


def test_a_grown_batch_whose_entries_are_slow_spreads_again(roots, make_spec, run_copy, monkeypatch):
    """A batch of more than spec.batch names (grown, see above) that has worked SPREAD_SECONDS hands what lies
    beyond its next spec.batch names out again, in batches of spec.batch: a big batch of files to copy does
    not keep its names from idle processes. Every name is copied once, by the batch or by one of its jobs."""
    from cmover.engine import copypass

    src, dst = roots
    names = [b"f%02d" % i for i in range(27)]
    for n in names:
        build(src, {b"big/" + n: File(n, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    os.mkdir(os.path.join(dst, b"big"))  # made by the directory's task
    spec = make_spec(batch=5)
    monkeypatch.setattr(copypass, "SPREAD_SECONDS", 0.0)  # slow at once: spreads after its first name
    res = run_copy(spec, rel=b"big", names=names)
    assert [list(j.names) for j in res.emitted] == [names[6:11], names[11:16], names[16:21], names[21:26],
                                                     names[26:]]
    assert res.tally[C.COPIED] == 6 and sorted(os.listdir(os.path.join(dst, b"big"))) == names[:6]
    for j in res.emitted:
        assert run_copy(spec, rel=j.rel, names=list(j.names)).emitted == []  # batch-sized: no spreading again
    assert sorted(os.listdir(os.path.join(dst, b"big"))) == names
    monkeypatch.setattr(copypass, "SPREAD_SECONDS", 3600.0)
    assert run_copy(spec, rel=b"big", names=names).emitted == []  # quick: the batch keeps its names


@pytest.mark.parametrize("n, n_jobs, n_inline", [(10, 0, 10), (11, 1, 1), (20, 1, 10), (21, 2, 1)])
def test_at_most_one_batch_handled_inline(roots, make_spec, run_copy, n, n_jobs, n_inline):
    src, dst = roots
    for i in range(n):
        build(src, {b"d/f%02d" % i: File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    res = run_copy(make_spec(batch=10))
    assert len(res.emitted) == n_jobs and all(len(j.names) == 10 for j in res.emitted)
    assert len(os.listdir(os.path.join(dst, b"d"))) == n_inline == res.tally[C.COPIED]


def test_run_files_copies_exactly_those(roots, make_spec, run_copy):
    src, dst = roots
    for n in (b"a", b"b", b"caf\xe9", b"n\nl", b"other"):
        build(src, {b"d/" + n: File(n, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"d/subdir": Dir(mode=0o755)})
    run_copy(make_spec(inline_entries=0))  # creates the target root only
    os.mkdir(os.path.join(dst, b"d"))
    res = run_copy(make_spec(), rel=b"d", names=[b"a", b"caf\xe9", b"n\nl", b"gone", b"subdir"])
    assert sorted(os.listdir(os.path.join(dst, b"d"))) == sorted([b"a", b"caf\xe9", b"n\nl"])
    assert res.tally[C.COPIED] == 3 and res.tally[C.VANISHED] == 1 and res.failures == []


def test_run_files_refuses_symlinked_target_dir(roots, make_spec, run_copy, tmp_path):
    src, dst = roots
    build(src, {b"d/f": File(b"payload", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"a/b/g": File(b"payload", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    run_copy(make_spec())
    outside = tmp_path / "outside"
    outside.mkdir()
    for rel in (b"d", b"a"):
        os.rename(os.path.join(dst, rel), os.path.join(dst, rel + b".moved"))
        os.symlink(os.fsencode(outside), os.path.join(dst, rel))
    res = run_copy(make_spec(), rel=b"d", names=[b"f"])
    res2 = run_copy(make_spec(), rel=b"a/b", names=[b"g"])
    for r in (res, res2):
        assert len(r.failures) == 1
        assert r.failures[0].errno in (errno.ELOOP, errno.ENOTDIR) and r.failures[0].side == "target"
        assert r.tally[C.FAILED] == 1
    assert os.listdir(outside) == []


def test_run_dir_refuses_symlinked_target_parent(roots, make_spec, run_copy, tmp_path):
    src, dst = roots
    build(src, {b"a/b/g": File(b"payload", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    os.mkdir(os.path.join(dst, b"x"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(os.fsencode(outside), os.path.join(dst, b"a"))
    res = run_copy(make_spec(), rel=b"a/b")
    assert [(f.path, f.errno in (errno.ELOOP, errno.ENOTDIR)) for f in res.failures] == [(b"a/b", True)]
    assert os.listdir(outside) == []


def test_hard_link_groups_kept(roots, make_spec, run_copy):
    src, dst = roots
    build(src, {b"a/f": File(b"shared", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    os.makedirs(os.path.join(src, b"b"))
    os.link(os.path.join(src, b"a/f"), os.path.join(src, b"b/g"))
    run_copy(make_spec())
    assert os.lstat(os.path.join(dst, b"a/f")).st_ino == os.lstat(os.path.join(dst, b"b/g")).st_ino


def _ino(root: bytes, rel: bytes) -> int:
    return os.lstat(os.path.join(root, rel)).st_ino


def test_hard_links_kept_across_passes_and_groups_grow(roots, make_spec, run_copy):
    src, dst = roots
    build(src, {b"a/f": File(b"shared", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    for d in (b"b", b"c"):
        os.makedirs(os.path.join(src, d))
    os.link(os.path.join(src, b"a/f"), os.path.join(src, b"b/g"))
    first = run_copy(make_spec())
    assert not first.failures
    assert first.tally["files_copied"] == 1 and first.tally["hardlinks_made"] == 1
    assert _ino(dst, b"a/f") == _ino(dst, b"b/g")
    # A second pass changes nothing and keeps the group.
    second = run_copy(make_spec())
    assert second.tally["files_copied"] == 0 and second.tally["hardlinks_made"] == 0
    assert _ino(dst, b"a/f") == _ino(dst, b"b/g")
    # A name added to the group on the source is linked by the next pass.
    os.link(os.path.join(src, b"a/f"), os.path.join(src, b"c/h"))
    third = run_copy(make_spec())
    assert third.tally["files_copied"] == 0
    assert _ino(dst, b"c/h") == _ino(dst, b"a/f") == _ino(dst, b"b/g")


def test_hard_link_replaces_a_separate_target_file_without_writing_through_it(roots, make_spec, run_copy):
    src, dst = roots
    build(src, {b"f": File(b"new data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    os.link(os.path.join(src, b"f"), os.path.join(src, b"g"))
    # On the target, g is an unrelated file that has another name outside the group.
    build(dst, {b"g": File(b"old", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    os.link(os.path.join(dst, b"g"), os.path.join(dst, b"keep"))
    res = run_copy(make_spec())
    assert not res.failures
    assert _ino(dst, b"f") == _ino(dst, b"g")
    with open(os.path.join(dst, b"keep"), "rb") as fh:
        assert fh.read() == b"old"


def test_hard_link_leader_never_completed_is_reported(roots, monkeypatch):
    from cmover.core.errors import ItemError
    from cmover.core.record import Record
    from cmover.engine.hardlinks import HardLinker

    src, dst = roots
    build(src, {b"f": File(b"x", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    st = os.lstat(os.path.join(src, b"f"))
    links = HardLinker(lambda k, v: v, dst, wait_seconds=0.05)
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ItemError, match="next pass"):
            links.link(dfd, "g", b"f", Record.from_stat(st))  # the leader's target f was never written
    finally:
        os.close(dfd)
    assert not os.path.lexists(os.path.join(dst, b"g"))


def test_hard_link_waiters_stop_when_the_leader_copy_failed(roots):
    from cmover.core.errors import ItemError
    from cmover.core.record import Record
    from cmover.engine.hardlinks import HardLinker
    from cmover.state.ledger import MemoryLedger

    src, dst = roots
    build(src, {b"f": File(b"x", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    st = os.lstat(os.path.join(src, b"f"))
    ledger = MemoryLedger()
    links = HardLinker(lambda k, v: ledger.claim("r", k, v), dst, wait_seconds=30)
    links.leader_failed(st)
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    t0 = time.monotonic()
    try:
        with pytest.raises(ItemError, match="failed"):
            links.link(dfd, "g", b"f", Record.from_stat(st))
    finally:
        os.close(dfd)
    assert time.monotonic() - t0 < 5


def test_redelivered_dir_with_a_different_split_loses_nothing(roots, make_spec, run_copy):
    """A dir task killed after its batches ran is redelivered; the directory changed meanwhile, so the new
    listing splits into different batches. Batches already done are skipped by id: every name must still
    be handled by a batch that really ran or by the redelivery itself."""
    from cmover.state.ledger import task_id

    src, dst = roots
    for i in range(35):
        build(src, {b"big/f%02d" % i: File(b"%d" % i, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    spec = make_spec(batch=10)
    first = run_copy(spec)
    done = set()
    for j in first.emitted:
        run_copy(spec, rel=j.rel, names=list(j.names))
        done.add(task_id(spec.run_id, j.kind, j.rel, j.index, j.names))
    batched = {n for j in first.emitted for n in j.names}
    for name in os.listdir(os.path.join(dst, b"big")):  # the killed delivery's inline work was lost
        if name not in batched:
            os.unlink(os.path.join(dst, b"big", name))
    for i in range(3):  # the source directory changes before the redelivery
        os.unlink(os.path.join(src, b"big/f%02d" % (i * 7)))
        build(src, {b"big/g%02d" % i: File(b"data", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    second = run_copy(spec)
    for j in second.emitted:
        if task_id(spec.run_id, j.kind, j.rel, j.index, j.names) not in done:
            run_copy(spec, rel=j.rel, names=list(j.names))
    assert set(os.listdir(os.path.join(src, b"big"))) <= set(os.listdir(os.path.join(dst, b"big")))


def _target_lookups(monkeypatch, dst: bytes) -> list[bytes]:
    """The names looked up (``lstat`` relative to a directory descriptor) in target directories from now on."""
    looked: list[bytes] = []
    real, under = os.stat, os.fsdecode(dst)

    def lstat(path, *, dir_fd=None, follow_symlinks=True):
        if dir_fd is not None and not follow_symlinks and os.readlink(f"/proc/self/fd/{dir_fd}").startswith(under):
            looked.append(os.fsencode(path))
        return real(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "stat", lstat)
    return looked


@pytest.mark.parametrize("root", ["holding", "empty"])
def test_a_target_directory_made_by_the_pass_is_filled_without_lookups(roots, make_spec, monkeypatch, root):
    """A first copy looks up no name of a target directory it has just created, inline or in the batches it
    published for it (FilesJob.made); a file with several names is looked up still (a rebuild of one name must
    not split its group), and so is every name of a directory that was there holding something (here the target
    root with an older copy of one file). A target root there but empty is as new. The next pass looks every name
    up: its no-change path."""
    from support.runner import Run

    src, dst = roots
    if root == "holding":
        with open(os.path.join(dst, b"top"), "wb") as f:
            f.write(b"an older top")
    plain = {b"f%02d" % i for i in range(25)}  # (a symlink's own lstat after its creation sets its owner and times)
    for i in range(25):
        build(src, {b"big/f%02d" % i: File(b"%d" % i, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"big/link": Link(b"f00"), b"big/h1": File(b"h"), b"top": File(b"t"), b"big/sub/deeper/x": File(b"x")})
    os.link(os.path.join(src, b"big/h1"), os.path.join(src, b"big/h2"))
    plain |= {b"sub", b"deeper", b"x"}  # directories walked inline in a new directory are not looked up either
    looked = _target_lookups(monkeypatch, dst)
    spec = make_spec(batch=10)
    run = Run(spec)
    batches = run.deliver(DirJob(b""))
    assert len(batches) == 2 and all(j.kind == "files" and j.made for j in batches)
    for job in batches:
        assert run.deliver(job) == []
    assert run.report.failures == []
    assert diff(snapshot(src), snapshot(dst)) == []
    assert _ino(dst, b"big/h1") == _ino(dst, b"big/h2")
    if root == "holding":
        assert b"top" in looked and b"big" in looked, "the target root held something: its names are looked up"
    else:
        assert b"top" not in looked and b"big" not in looked, "the target root was empty: nothing to look up"
    assert not plain & set(looked), "no plain name of the new directory was looked up"
    looked.clear()
    again = Run(spec)
    for job in again.deliver(DirJob(b"")):
        assert not job.made
        again.deliver(job)
    assert again.report.tally[C.COPIED] == 0 and plain <= set(looked)


def test_new_plain_files_listed_inline_are_opened_before_any_lookup(roots, make_spec, monkeypatch):
    """In a directory whose target the pass has just made, a file its listing calls regular goes through
    Copier.copy_new (opened, no lstat) when the directory's own task handles it; a symlink, a FIFO and a
    subdirectory are looked at as before, a file with several names after copy_new has handed it back. The
    names of batches (no type on the wire) and of a directory that was there are looked up as before."""
    from support.runner import Run

    from cmover.engine.copier import Copier

    src, dst = roots
    build(src, {b"new/a": File(b"a", mode=0o644, **{"atime_ns": T_ATIME, "mtime_ns": T_MTIME}),
                b"new/b": File(b"b" * 70_000, mode=0o600, uid=7, gid=8), b"new/ln": Link(b"a"), b"new/p": Fifo(),
                b"new/h1": File(b"h"), b"new/sub/c": File(b"c"), b"top": File(b"t")})
    os.link(os.path.join(src, b"new/h1"), os.path.join(src, b"new/h2"))
    opened: list[str] = []
    entries: list[str] = []
    real_new, real_entry = Copier.copy_new, Copier.copy_entry

    def copy_new(self, s, d, name, st=None):
        opened.append(name)
        return real_new(self, s, d, name, st)

    def copy_entry(self, s, d, name, *more):
        entries.append(name)
        return real_entry(self, s, d, name, *more)

    monkeypatch.setattr(Copier, "copy_new", copy_new)
    monkeypatch.setattr(Copier, "copy_entry", copy_entry)
    with open(os.path.join(dst, b"top"), "wb") as f:  # the target root holds something: its names are looked up
        f.write(b"an older top")
    run = Run(make_spec())
    assert run.deliver(DirJob(b"")) == []
    assert run.report.failures == []
    assert diff(snapshot(src), snapshot(dst)) == []
    assert _ino(dst, b"new/h1") == _ino(dst, b"new/h2")
    assert sorted(opened) == ["a", "b", "c", "h1", "h2"]
    assert sorted(entries) == ["h1", "h2", "ln", "p", "top"]
    assert run.report.tally[C.SCANNED] == 8 and run.report.tally[C.COPIED] + run.report.tally[C.LINKED] == 8


def test_new_plain_files_of_batches_take_the_short_way_after_their_lstat(roots, make_spec, monkeypatch):
    """The batches of a new directory: a name's lstat first (no type on the wire), then a plain file goes through
    Copier.copy_new with it; a symlink and a FIFO are never opened, and the copy is exact."""
    from support.runner import Run

    from cmover.engine.copier import Copier

    src, dst = roots
    plain = {f"f{i}" for i in range(7)}
    build(src, {os.fsencode("new/" + n): File(n.encode() * 1000, mode=0o644) for n in plain})
    build(src, {b"new/ln": Link(b"f0"), b"new/p": Fifo()})
    opened: list[tuple[str, bool]] = []
    real_new = Copier.copy_new

    def copy_new(self, s, d, name, st=None):
        opened.append((name, st is not None))
        return real_new(self, s, d, name, st)

    monkeypatch.setattr(Copier, "copy_new", copy_new)
    run = Run(make_spec(batch=2))
    batches = run.deliver(DirJob(b""))
    assert batches and all(job.kind == "files" and job.made for job in batches)
    for job in batches:
        assert run.deliver(job) == []
    assert run.report.failures == []
    assert diff(snapshot(src), snapshot(dst)) == []
    in_batches = {os.fsdecode(n) for job in batches for n in job.names}
    assert in_batches & plain, "some plain files went out in batches"
    assert {(n, n in in_batches) for n in plain} == set(opened)  # inline: opened first; batches: with the lstat


def test_a_made_batch_delivered_again_leaves_an_exact_copy(roots, make_spec):
    """A batch of a new directory delivered again (its process died before its acknowledgement), with a
    target file changed by someone in between: the second delivery finds the names its first made (exclusive
    creation fails) and rebuilds them under temporary names; the copy is exact, and the hard-link group is
    whole (its names are looked up: a rebuild of its first name would have split it)."""
    from support.runner import Run

    from cmover.engine.jobs import FilesJob

    src, dst = roots
    for i in range(12):
        build(src, {b"big/f%02d" % i: File(b"%d" % i * 100, atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(src, {b"big/link": Link(b"f00")})
    os.link(os.path.join(src, b"big/f01"), os.path.join(src, b"big/g01"))
    run = Run(make_spec(batch=5))
    batches = run.deliver(DirJob(b""))
    assert len(batches) == 2 and all(j.made for j in batches)
    for job in batches:
        run.deliver(job)
    with open(os.path.join(dst, b"big/f03"), "wb") as fh:
        fh.write(b"someone else")
    # Whichever batch held them, each name is delivered again as part of a batch of the made directory.
    run.deliver(FilesJob(b"big", tuple(sorted(os.listdir(os.path.join(src, b"big")))), made=True))
    assert run.report.failures == []
    assert diff(snapshot(src), snapshot(dst)) == []
    assert _ino(dst, b"big/f01") == _ino(dst, b"big/g01")
    assert not [n for n in os.listdir(os.path.join(dst, b"big")) if n.startswith(b".cmover.")]


def test_a_made_directory_delivered_again_repairs_what_it_finds(roots, make_spec):
    """A root task of a new target root delivered again, after someone put a file where the source has a
    directory, and a directory where it has a file: neither name is looked up first, exclusive creation finds
    each taken, and the stale entry is replaced as a looked-up one would have been."""
    from support.runner import Run

    src, dst = roots
    build(src, {b"d/f": File(b"in d", atime_ns=T_ATIME, mtime_ns=T_MTIME),
                b"g": File(b"g", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    build(dst, {b"d": File(b"a file where the source has a directory"), b"g/inside": File(b"stale")})
    run = Run(make_spec())
    assert run.deliver(DirJob(b"", made=True)) == []
    assert run.report.failures == []
    assert diff(snapshot(src), snapshot(dst)) == []


def test_directory_gone_before_its_task_ran_is_vanished_not_failed(roots, make_spec, run_copy):
    """A directory listed by its parent and removed (or renamed) before its own task runs is a race on a
    live source: counted as vanished, no failure; the pass root itself missing stays a failure."""
    src, _ = roots
    os.makedirs(os.path.join(src, b"a"))
    spec = make_spec()
    res = run_copy(spec, rel=b"a/gone")
    assert res.failures == [] and res.tally[C.VANISHED] == 1
    res = run_copy(spec, rel=b"a/gone", names=[b"x"])  # a batch of a directory that is gone
    assert res.failures == [] and res.tally[C.VANISHED] == 1
    os.rmdir(os.path.join(src, b"a"))
    os.rmdir(src)
    res = run_copy(spec)
    assert [f.op for f in res.failures] == ["open directory"]
