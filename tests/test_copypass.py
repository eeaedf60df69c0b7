"""cmover.copypass.CopyPass on real trees: walking, fidelity, idempotence, filters, failures, budget, batches.

Runs as root (as CI does): ownership changes and device nodes need it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time

import pytest

from cmover import fsio
from cmover.copypass import Job
from cmover.passes import PassKind
from cmover.planner import plan
from cmover.settings import from_mapping
from cmover.stats import C

T_ATIME = 1_500_000_000_123_456_789
T_MTIME = 1_600_000_000_987_654_321
DAY_NS = 86400 * 10**9


def put(root: bytes, rel: bytes, data: bytes = b"data", mode: int = 0o644, uid: int = 0, gid: int = 0,
        times: tuple[int, int] = (T_ATIME, T_MTIME)) -> bytes:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    os.utime(path, ns=times)
    return path


def mkdir(root: bytes, rel: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0) -> bytes:
    path = os.path.join(root, rel)
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


NAMES = [b"caf\xe9", b"new\nline", b"trailing ", b"x" * 255, "\u65e5\u672c".encode(), b"-dash", b"#hash"]


def build_tree(src: bytes, tmp_path) -> None:
    """Every kind of entry cmover copies, odd names, special modes and owners, nanosecond times."""
    os.chown(src, 4321, 4321)
    os.chmod(src, 0o750)
    mkdir(src, b"d", 0o2775, 1000, 1001)
    mkdir(src, b"d/sub/deeper", 0o700, 1002, 1003)
    mkdir(src, b"sticky", 0o1777)
    mkdir(src, b"empty", 0o555)
    put(src, b"top.txt", os.urandom(5000), 0o4755, 1234, 5678)
    put(src, b"d/sgid", b"g", 0o2711, 1, 2)
    put(src, b"d/sub/deeper/f", b"deep", 0o600, 3, 4)
    put(src, b"d/empty-file", b"", 0o444)
    for i, name in enumerate(NAMES):
        put(src, b"d/" + name, name * 3, 0o640, 100 + i, 200 + i)
    link = os.path.join(src, b"d/link")
    os.symlink(b"../top.txt", link)
    os.symlink(b"/nonexistent/\xff dangling", os.path.join(src, b"dangling"))
    os.chown(link, 77, 78, follow_symlinks=False)
    os.utime(link, ns=(T_ATIME, T_MTIME), follow_symlinks=False)
    fifo = os.path.join(src, b"d/fifo")
    os.mkfifo(fifo, 0o600)
    os.chmod(fifo, 0o620)
    os.utime(fifo, ns=(T_ATIME, T_MTIME))
    null = os.path.join(src, b"d/null")
    os.mknod(null, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chmod(null, 0o666)
    os.utime(null, ns=(T_ATIME, T_MTIME))
    with socket.socket(socket.AF_UNIX) as s:  # bound by relative name: tmp paths can exceed sun_path
        cwd = os.getcwd()
        os.chdir(os.path.join(src, b"d"))
        try:
            s.bind("sock")
        finally:
            os.chdir(cwd)


def n_entries(snap: dict, kinds=(stat.S_ISREG, stat.S_ISLNK, stat.S_ISFIFO, stat.S_ISCHR)) -> int:
    return sum(1 for v in snap.values() if any(k(v["mode"]) for k in kinds))


def test_full_tree_copy(roots, tmp_path, make_spec, run_copy, snapshot):
    src, dst = roots
    build_tree(src, tmp_path)
    expected = snapshot(src, inodes=False)
    del expected[b"d/sock"]
    res = run_copy(make_spec())
    assert res.failures == [] and res.jobs == []
    assert snapshot(dst, inodes=False) == expected
    assert snapshot(src, inodes=False) == {**expected, b"d/sock": snapshot(src, inodes=False)[b"d/sock"]}
    rst = os.lstat(dst)
    assert (rst.st_uid, rst.st_gid, stat.S_IMODE(rst.st_mode)) == (4321, 4321, 0o750)
    n_dirs = sum(1 for v in expected.values() if stat.S_ISDIR(v["mode"]))
    assert res.tally[C.DIRS] == n_dirs + 1 and res.tally[C.DIRS_CREATED] == n_dirs
    assert res.tally[C.SOCKETS] == 1
    assert res.tally[C.COPIED] == n_entries(expected)
    assert res.tally[C.SCANNED] == n_entries(expected) + 1
    assert res.tally[C.FAILED] == 0


def test_second_run_skips_everything(roots, tmp_path, make_spec, run_copy, snapshot):
    src, dst = roots
    build_tree(src, tmp_path)
    run_copy(make_spec())
    before = snapshot(dst)
    res = run_copy(make_spec())
    assert snapshot(dst) == before  # same inodes, data, modes, owners, times
    assert res.failures == []
    assert res.tally[C.COPIED] == 0 and res.tally[C.META] == 0 and res.tally[C.DIRS_CREATED] == 0
    assert res.tally[C.SKIPPED] == n_entries(before) and res.tally[C.SOCKETS] == 1


def test_changed_file_replaced_not_written_through(roots, make_spec, run_copy):
    src, dst = roots
    put(src, b"a/b/f", b"old")
    put(src, b"a/b/g", b"same")
    run_copy(make_spec())
    os.link(os.path.join(dst, b"a/b/f"), os.path.join(dst, b"hard"))
    ino = os.lstat(os.path.join(dst, b"a/b/f")).st_ino
    put(src, b"a/b/f", b"new!", times=(T_ATIME, T_MTIME + 1))
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
    put(src, b"d/f", b"x", 0o644, 10, 10)
    mkdir(src, b"d", 0o755, 10, 10)
    run_copy(make_spec())
    ino = os.lstat(os.path.join(dst, b"d/f")).st_ino
    os.chown(os.path.join(src, b"d/f"), 11, 12)
    os.chmod(os.path.join(src, b"d/f"), 0o4750)
    mkdir(src, b"d", 0o2770, 13, 14)
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
        put(src, rel)
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
    put(src, b"d/old", times=(now - 10 * DAY_NS, now - 20 * DAY_NS))
    put(src, b"d/recent", times=(now, now - 20 * DAY_NS))
    os.symlink(b"old", os.path.join(src, b"d/link"))
    os.utime(os.path.join(src, b"d/link"), ns=(now - 10 * DAY_NS, now - 20 * DAY_NS), follow_symlinks=False)
    res = run_copy(_plan(src, dst, OLDEST_DATE=86400))
    assert sorted(os.listdir(os.path.join(dst, b"d"))) == [b"link", b"recent"]
    assert res.tally[C.FILTERED] == 1


def test_newest_date_filter(roots, run_copy):
    src, dst = roots
    put(src, b"d/hot", times=(T_ATIME, os.stat(src).st_mtime_ns))
    put(src, b"d/cold", times=(T_ATIME, T_MTIME))
    os.mkfifo(os.path.join(src, b"d/fifo"))
    res = run_copy(_plan(src, dst, NEWEST_DATE=3600))
    assert sorted(os.listdir(os.path.join(dst, b"d"))) == [b"cold", b"fifo"]
    assert res.tally[C.FILTERED] == 1


def test_plan_reads_exclusions_file(roots, tmp_path, run_copy):
    src, dst = roots
    put(src, b"skip/me")
    put(src, b"keep/me")
    ex = tmp_path / "excludes"
    ex.write_bytes(b"# prefixes\n" + src + b"/skip\n")
    res = run_copy(_plan(src, dst, EXCLUDE_FILE=str(ex)))
    assert os.listdir(dst) == [b"keep"] and res.tally[C.EXCLUDED] == 1


def test_unreadable_file_is_one_failure(roots, make_spec, run_copy, monkeypatch):
    src, dst = roots
    for name in (b"a", b"bad", b"c", b"d"):
        put(src, b"dir/" + name, name)
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
    put(src, b"locked/secret")
    put(src, b"open/file")
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
    put(src, b"was-dir", b"now a file")
    put(src, b"was-file/inner", b"inner")
    put(src, b"was-link/inner", b"inner")
    put(dst, b"was-dir/old/deep", b"stale")
    put(dst, b"was-file", b"stale")
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
    mkdir(src, b"a", 0o750, 7, 8)
    mkdir(src, b"a/b", 0o711, 9, 10)
    put(src, b"a/b/c/f", b"x")
    put(src, b"a/other", b"not copied")
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
    put(src, b"rootfile")
    put(src, b"a/f1")
    put(src, b"b/c/f2")
    spec = make_spec(inline_entries=0)
    res = run_copy(spec)
    assert sorted(res.jobs, key=lambda j: j.rel) == [Job("dir", b"a"), Job("dir", b"b")]
    assert sorted(os.listdir(dst)) == [b"rootfile"]  # subdirectories are left to their own tasks
    for job in res.jobs:
        sub = run_copy(spec, rel=job.rel)
        assert sub.failures == []
        if job.rel == b"b":
            assert sub.jobs == [Job("dir", b"b/c")]
            assert run_copy(spec, rel=b"b/c").jobs == []
    assert os.path.isfile(os.path.join(dst, b"a/f1")) and os.path.isfile(os.path.join(dst, b"b/c/f2"))


def test_no_time_budget_emits_subdirectories(roots, make_spec, run_copy):
    src, _ = roots
    put(src, b"a/f")
    assert run_copy(make_spec(inline_seconds=0.0)).jobs == [Job("dir", b"a")]


def test_large_budget_walks_inline(roots, make_spec, run_copy):
    src, dst = roots
    for i in range(5):
        put(src, b"d%d/e/f" % i)
    res = run_copy(make_spec(inline_entries=1000))
    assert res.jobs == [] and res.tally[C.COPIED] == 5


def test_striped_first_level_mdts(roots, make_spec, run_copy):
    src, _ = roots
    for name in (b"a", b"b", b"c"):
        put(src, name + b"/x/f")
    spec = make_spec(inline_entries=0, mds_striped=True, mdt_list=(3, 5))
    jobs = run_copy(spec).jobs
    assert [j.mdt for j in jobs] == [3, 5, 3] and all(j.kind == "dir" for j in jobs)
    assert all(j.mdt is None for j in run_copy(spec, rel=jobs[0].rel).jobs)  # only the first level


def test_big_directory_split_into_batches(roots, make_spec, run_copy):
    src, dst = roots
    names = {b"f%02d" % i for i in range(35)}
    for n in names:
        put(src, b"big/" + n, n)
    mkdir(src, b"big/subdir")
    spec = make_spec(batch=10)
    res = run_copy(spec)
    files_jobs = [j for j in res.jobs if j.kind == "files"]
    assert len(res.jobs) == 3 == len(files_jobs)
    assert [j.index for j in files_jobs] == [0, 1, 2]
    assert all(j.rel == b"big" and len(j.names) == 10 for j in files_jobs)
    batched = [n for j in files_jobs for n in j.names]
    assert len(set(batched)) == 30 and set(batched) <= names
    inline = set(os.listdir(os.path.join(dst, b"big"))) - {b"subdir"}
    assert inline == names - set(batched) and len(inline) == 5
    assert res.tally[C.COPIED] == 5
    for j in files_jobs:
        sub = run_copy(spec, rel=j.rel, names=list(j.names))
        assert sub.failures == [] and sub.jobs == [] and sub.tally[C.COPIED] == 10
    assert set(os.listdir(os.path.join(dst, b"big"))) == names | {b"subdir"}


@pytest.mark.parametrize("n, n_jobs, n_inline", [(10, 0, 10), (11, 1, 1), (20, 1, 10), (21, 2, 1)])
def test_at_most_one_batch_handled_inline(roots, make_spec, run_copy, n, n_jobs, n_inline):
    src, dst = roots
    for i in range(n):
        put(src, b"d/f%02d" % i)
    res = run_copy(make_spec(batch=10))
    assert len(res.jobs) == n_jobs and all(len(j.names) == 10 for j in res.jobs)
    assert len(os.listdir(os.path.join(dst, b"d"))) == n_inline == res.tally[C.COPIED]


def test_run_files_copies_exactly_those(roots, make_spec, run_copy):
    src, dst = roots
    for n in (b"a", b"b", b"caf\xe9", b"n\nl", b"other"):
        put(src, b"d/" + n, n)
    mkdir(src, b"d/subdir")
    run_copy(make_spec(inline_entries=0))  # creates the target root only
    os.mkdir(os.path.join(dst, b"d"))
    res = run_copy(make_spec(), rel=b"d", names=[b"a", b"caf\xe9", b"n\nl", b"gone", b"subdir"])
    assert sorted(os.listdir(os.path.join(dst, b"d"))) == sorted([b"a", b"caf\xe9", b"n\nl"])
    assert res.tally[C.COPIED] == 3 and res.tally[C.VANISHED] == 1 and res.failures == []


def test_run_files_refuses_symlinked_target_dir(roots, make_spec, run_copy, tmp_path):
    src, dst = roots
    put(src, b"d/f", b"payload")
    put(src, b"a/b/g", b"payload")
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
    put(src, b"a/b/g", b"payload")
    os.mkdir(os.path.join(dst, b"x"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(os.fsencode(outside), os.path.join(dst, b"a"))
    res = run_copy(make_spec(), rel=b"a/b")
    assert [(f.path, f.errno in (errno.ELOOP, errno.ENOTDIR)) for f in res.failures] == [(b"a/b", True)]
    assert os.listdir(outside) == []


def test_hard_link_groups_kept(roots, make_spec, run_copy):
    src, dst = roots
    put(src, b"a/f", b"shared")
    os.makedirs(os.path.join(src, b"b"))
    os.link(os.path.join(src, b"a/f"), os.path.join(src, b"b/g"))
    run_copy(make_spec())
    assert os.lstat(os.path.join(dst, b"a/f")).st_ino == os.lstat(os.path.join(dst, b"b/g")).st_ino


def _ino(root: bytes, rel: bytes) -> int:
    return os.lstat(os.path.join(root, rel)).st_ino


def test_hard_links_kept_across_passes_and_groups_grow(roots, make_spec, run_copy):
    src, dst = roots
    put(src, b"a/f", b"shared")
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
    put(src, b"f", b"new data")
    os.link(os.path.join(src, b"f"), os.path.join(src, b"g"))
    # On the target, g is an unrelated file that has another name outside the group.
    put(dst, b"g", b"old")
    os.link(os.path.join(dst, b"g"), os.path.join(dst, b"keep"))
    res = run_copy(make_spec())
    assert not res.failures
    assert _ino(dst, b"f") == _ino(dst, b"g")
    with open(os.path.join(dst, b"keep"), "rb") as fh:
        assert fh.read() == b"old"


def test_hard_link_leader_never_completed_is_reported(roots, monkeypatch):
    from cmover.errors import ItemError
    from cmover.hardlinks import HardLinker
    from cmover.record import Record

    src, dst = roots
    put(src, b"f", b"x")
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
    from cmover.errors import ItemError
    from cmover.hardlinks import HardLinker
    from cmover.ledger import MemoryLedger
    from cmover.record import Record

    src, dst = roots
    put(src, b"f", b"x")
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
    from cmover.ledger import task_id

    src, dst = roots
    for i in range(35):
        put(src, b"big/f%02d" % i, b"%d" % i)
    spec = make_spec(batch=10)
    first = run_copy(spec)
    done = set()
    for j in first.jobs:
        run_copy(spec, rel=j.rel, names=list(j.names))
        done.add(task_id(spec.run_id, j.kind, j.rel, j.index, j.names))
    batched = {n for j in first.jobs for n in j.names}
    for name in os.listdir(os.path.join(dst, b"big")):  # the killed delivery's inline work was lost
        if name not in batched:
            os.unlink(os.path.join(dst, b"big", name))
    for i in range(3):  # the source directory changes before the redelivery
        os.unlink(os.path.join(src, b"big/f%02d" % (i * 7)))
        put(src, b"big/g%02d" % i)
    second = run_copy(spec)
    for j in second.jobs:
        if task_id(spec.run_id, j.kind, j.rel, j.index, j.names) not in done:
            run_copy(spec, rel=j.rel, names=list(j.names))
    assert set(os.listdir(os.path.join(src, b"big"))) <= set(os.listdir(os.path.join(dst, b"big")))


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
