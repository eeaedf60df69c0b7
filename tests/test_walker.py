"""cmover.engine.walker.Walker and cmover.engine.jobs: the walk every pass shares, and transient errors.

The walker's contract on real directories: listings streamed with full batches handed on while reading,
the inline budget, the open conventions of a source/target pair. Then the one place transient errnos are
handled (retry_transient), on its own and through the copy pass's per-entry guard with a filesystem seam
that fails N times.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections import Counter

import pytest
from support.worker import InProcessWorker

from cmover.core.counters import C
from cmover.core.failure import Failure
from cmover.core.passes import PassKind, PassSpec
from cmover.engine import jobs
from cmover.engine import walker as walkermod
from cmover.engine.jobs import DirJob, FilesJob, retry_transient, retrying
from cmover.engine.walker import Walker
from cmover.lustre.base import PosixFs
from cmover.tasks_copy import copy_dir
from cmover.tasks_delete import delete_dir
from cmover.tasks_dirtime import dirtime_dir
from cmover.worker import taskbase

log = logging.getLogger("cmover.engine.test")


def walker(spec) -> tuple[Walker, Counter, list[Failure]]:
    tally: Counter = Counter()
    failures: list[Failure] = []
    return Walker(spec, tally, failures.append, log), tally, failures


def files(root: bytes, rel: bytes, *names: bytes) -> None:
    os.makedirs(os.path.join(root, rel), exist_ok=True)
    for name in names:
        with open(os.path.join(root, rel, name), "wb"):
            pass


# -- listing ---------------------------------------------------------------------------------------------


def test_scan_hands_on_full_batches_while_reading(roots, make_spec):
    """Full batches go to on_batch during the listing, growing (a directory of millions of entries costs hundreds
    of tasks); what is left, less than a batch, stays for the caller."""
    src, _ = roots
    # Batches of 3, twice as big every GROW_EVERY (2) of them, up to GROW_MAX (8) times: 3 3 6 6 12 12 24 24 24.
    names = [b"f%03d" % i for i in range(3 + 3 + 6 + 6 + 12 + 12 + 24 + 24 + 24 + 5)]
    files(src, b"d", *names)
    os.makedirs(os.path.join(src, b"d/sub"))
    w, tally, failures = walker(make_spec(batch=3))
    batches: list[tuple[int, list[bytes]]] = []
    fd = os.open(os.path.join(src, b"d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        listing = w.scan(b"d", fd, on_batch=lambda b, i: batches.append((i, [os.fsencode(e.name) for e in b])))
    finally:
        os.close(fd)
    assert (walkermod.GROW_EVERY, walkermod.GROW_MAX) == (2, 8)
    assert [(i, len(b)) for i, b in batches] == [(0, 3), (1, 3), (2, 6), (3, 6), (4, 12), (5, 12), (6, 24), (7, 24),
                                                 (8, 24)]
    assert len(listing.entries) == 5 and listing.subdirs == [b"sub"] and listing.complete
    fixed: list[int] = []  # grow=False (the verify pass: its batches do not spread again): batches of 3 alone
    fd = os.open(os.path.join(src, b"d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        rest = w.scan(b"d", fd, on_batch=lambda b, i: fixed.append(len(b)), grow=False)
    finally:
        os.close(fd)
    assert fixed == [3] * (len(names) // 3 - (len(names) % 3 == 0)) and 1 <= len(rest.entries) <= 3
    seen = sorted([n for _, b in batches for n in b] + [os.fsencode(e.name) for e in listing.entries])
    assert seen == names
    assert failures == [] and tally == Counter()


def test_scan_stops_when_on_batch_says_so_and_lists_dirs_only_without_it(roots, make_spec):
    src, _ = roots
    files(src, b"", *[b"f%d" % i for i in range(10)])
    for d in (b"a", b"b"):
        os.makedirs(os.path.join(src, d))
    w, _, _ = walker(make_spec(batch=2))
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        calls: list[int] = []
        stopped = w.scan(b"", fd, on_batch=lambda b, i: calls.append(i) or False)
        assert calls == [0] and not stopped.complete and stopped.entries == []
        os.lseek(fd, 0, os.SEEK_SET)
        dirs = w.scan(b"", fd)
        assert sorted(dirs.subdirs) == [b"a", b"b"] and dirs.entries == [] and dirs.complete
    finally:
        os.close(fd)


def test_scan_excludes_and_counts(roots, make_spec):
    src, _ = roots
    files(src, b"", b"keep", b"skip")
    os.makedirs(os.path.join(src, b"skipdir"))
    w, tally, _ = walker(make_spec())
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        listing = w.scan(b"", fd, on_batch=lambda b, i: None, excluded=lambda rel: rel.startswith(b"skip"))
    finally:
        os.close(fd)
    assert [e.name for e in listing.entries] == ["keep"] and listing.subdirs == []
    assert tally[C.EXCLUDED] == 2


def test_scan_failure_is_reported_on_its_side(roots, make_spec):
    w, tally, failures = walker(make_spec())
    fd = os.open(roots[1], os.O_RDONLY)
    os.close(fd)  # a descriptor that is no longer open: the listing fails at once
    listing = w.scan(b"x", fd, side="target", on_batch=lambda b, i: None)
    assert not listing.complete and listing.entries == [] and listing.subdirs == []
    assert [(f.path, f.op, f.errno, f.side) for f in failures] == [(b"x", "list directory", errno.EBADF, "target")]
    assert tally[C.FAILED] == 1


# -- budget and directory pairs ------------------------------------------------------------------------


def test_inline_budget_counts_entries_and_time(make_spec):
    w, _, _ = walker(make_spec(inline_entries=5, inline_seconds=3600.0))
    w.start()
    assert w.inline()
    w.charge(4)
    assert w.inline()
    w.charge(1)
    assert not w.inline()
    w.start()  # every task starts afresh
    assert w.inline()
    timed, _, _ = walker(make_spec(inline_entries=10**6, inline_seconds=0.0))
    timed.start()
    assert not timed.inline()


@pytest.fixture
def sharing():
    """share_with as a test sets it, reset afterwards (it is process-wide)."""
    yield walkermod.share_with
    walkermod.share_with(None)


def test_subdirs_hands_out_every_one_left_past_the_budget(make_spec, sharing):
    w, _, _ = walker(make_spec(inline_entries=3, inline_seconds=3600.0))
    w.start()
    out: list[str] = []
    walked = []
    for name in w.subdirs(["a", "b", "c", "d"], out.append):
        walked.append(name)
        w.charge(2)  # a's subtree: 2 entries; b's another 2: the budget of 3 is spent
    assert walked == ["a", "b"] and out == ["c", "d"]


def test_a_waiting_peer_gets_the_last_subdirectory_of_the_shallowest_level(make_spec, sharing):
    """While the walk is two levels down, a peer that waits gets the last directory still to walk at the top
    level (the biggest share left), not the next one at the level the walk is on; the asker learns how many
    entries the task has walked so far."""
    w, _, _ = walker(make_spec(inline_entries=100, inline_seconds=3600.0))
    w.start()
    asked: list[int] = []
    waiting = [False]

    def peer_waits(walked: int) -> bool:
        asked.append(walked)
        was, waiting[0] = waiting[0], False
        return was

    sharing(peer_waits)
    top_out: list[str] = []
    inner_out: list[str] = []
    walked = []
    for top in w.subdirs(["A", "B", "C", "D"], top_out.append):
        walked.append(top)
        w.charge(5)
        for inner in w.subdirs([top + "1", top + "2"], inner_out.append):
            walked.append(inner)
            if inner == "A1":
                waiting[0] = True  # a peer waits while the walk is in A1
    assert top_out == ["D"] and inner_out == []
    assert walked == ["A", "A1", "A2", "B", "B1", "B2", "C", "C1", "C2"]
    assert asked[0] == 0 and asked[-1] == 15


def test_a_waiting_peer_gets_the_next_subdirectory_when_none_is_left_above(make_spec, sharing):
    w, _, _ = walker(make_spec(inline_entries=100, inline_seconds=3600.0))
    w.start()
    sharing(lambda walked: True)  # a peer always waits
    out: list[str] = []
    assert list(w.subdirs(["a", "b", "c"], out.append)) == [] and out == ["c", "b", "a"]
    assert not w.inline()  # outside subdirs too: nothing is left above, the next subdirectory goes out


def test_past_the_budget_the_rest_goes_out_in_jobs_of_a_budget_by_the_walked_ones(make_spec, sharing):
    """Subdirectories of 3 entries each, a budget of 10: 4 walked, then the other 16 in jobs of 3 (10 // 3), in
    order. Where the walked ones hold a budget or more, or none was walked (sizes unknown): one per job."""
    w, _, _ = walker(make_spec(inline_entries=10, inline_seconds=3600.0))
    w.start()
    names = [f"d{i:02d}" for i in range(20)]
    alone: list[str] = []
    groups: list[list[str]] = []
    walked = []
    for name in w.subdirs(names, alone.append, groups.append):
        walked.append(name)
        w.charge(3)
    assert walked == names[:4]
    assert groups == [names[4:7], names[7:10], names[10:13], names[13:16], names[16:19]] and alone == [names[19]]

    big, _, _ = walker(make_spec(inline_entries=10, inline_seconds=3600.0))
    big.start()
    alone, groups = [], []
    for _name in big.subdirs(names[:5], alone.append, groups.append):
        big.charge(12)
    assert alone == names[1:5] and groups == []

    timed, _, _ = walker(make_spec(inline_entries=10, inline_seconds=0.0))
    timed.start()
    alone = []
    assert list(timed.subdirs(names[:5], alone.append, groups.append)) == [] and alone == names[:5] and groups == []


def test_a_waiting_peer_gets_one_subdirectory_even_where_they_are_small(make_spec, sharing):
    """Whatever the walked subdirectories of a level tell of their size, a waiting peer gets the last one left
    there, alone; the walk goes on with the rest."""
    w, _, _ = walker(make_spec(inline_entries=1000, inline_seconds=3600.0))
    w.start()
    waiting = [True]

    def peer_waits(walked: int) -> bool:
        was, waiting[0] = waiting[0], False
        return was

    sharing(peer_waits)
    names = [f"d{i:02d}" for i in range(21)]
    alone: list[str] = []
    groups: list[list[str]] = []
    walked = []
    for name in w.subdirs(names, alone.append, groups.append):
        walked.append(name)
        w.charge(10)
        if name == "d02":
            waiting[0] = True  # 3 walked, of 10 entries each
    assert alone == ["d20", "d19"] and groups == []
    assert walked == names[:19]


def test_a_waiting_peer_is_given_no_leaf_too_small_for_a_job(make_spec, sharing):
    """With a least leaf, a subdirectory its engine calls a leaf goes to a waiting peer only when the task's
    directories took that long each: a small one moves to the front of its level and is walked inline next, a
    directory with subdirectories is handed out instead, each is asked about once; with nothing worth a job,
    nothing is handed out and the peer is not claimed (it stays waiting)."""
    w, _, _ = walker(make_spec(inline_entries=1000, inline_seconds=3600.0))
    w.start()
    claims: list[int] = []
    asked: list[str] = []

    def leaf(name: str) -> bool:
        asked.append(name)
        return name != "b"

    sharing(lambda walked: claims.append(walked) is None, anyone_waits=lambda: True, least_leaf=3600.0)
    out: list[str] = []
    walked = list(w.subdirs(["a", "b", "c", "d"], out.append, None, leaf))
    assert out == ["b"] and walked == ["a", "c", "d"] and len(claims) == 1
    assert asked == ["d", "c", "b", "a"]  # d and c moved to the front, b given; then a, being walked

    # A fast filesystem's leaves are worth a job once the task's directories take the least leaf each.
    w.start()
    sharing(lambda walked: True, anyone_waits=lambda: True, least_leaf=1e-9)
    out = []
    assert list(w.subdirs(["a", "b"], out.append, None, lambda name: True)) == [] and out == ["b", "a"]

    # No one waits: nothing is asked of the engine.
    asked.clear()
    sharing(lambda walked: True, anyone_waits=lambda: False, least_leaf=3600.0)
    assert list(w.subdirs(["a", "b"], out.append, None, leaf)) == ["a", "b"] and asked == []


def test_without_anyone_waits_a_least_leaf_is_not_applied(make_spec, sharing):
    w, _, _ = walker(make_spec(inline_entries=1000, inline_seconds=3600.0))
    w.start()
    sharing(lambda walked: True, least_leaf=3600.0)
    out: list[str] = []
    assert list(w.subdirs(["a", "b"], out.append, None, lambda name: True)) == [] and out == ["b", "a"]


def test_a_distributed_pool_process_hands_its_peers_no_small_leaf(make_spec, sharing, monkeypatch):
    """What a worker's pool process sets up (cmover.worker.hooks): a peer waiting on the worker's idle board
    gets a directory with subdirectories, not a leaf while the task's directories take less than LEAST_LEAF."""
    from cmover.worker import hooks

    monkeypatch.setattr(hooks, "_idle", None)
    monkeypatch.setattr(hooks, "_slot", None)
    hooks._make_idle_board()
    hooks._share_with_idle_processes()
    board = hooks._idle
    assert board is not None and hooks.LEAST_LEAF > 0
    board.busy(hooks._slot)
    w, _, _ = walker(make_spec(inline_entries=1000, inline_seconds=3600.0))
    w.start()
    out: list[str] = []
    walked = []
    for name in w.subdirs(["leaf1", "tree", "leaf2"], out.append, None, lambda name: name.startswith("leaf")):
        walked.append(name)
        board.waiting(5)
    assert out == ["tree"] and walked == ["leaf1", "leaf2"] and board.anyone_waits()


def test_dir_jobs_in_groups_keep_each_directory_and_its_mdt():
    one = [DirJob(b"a/x", 1), DirJob(b"a/y", None), DirJob(b"a/z", -1)]
    job = DirJob.group(one)
    assert job == DirJob(b"a/x", 1, ((b"a/y", None), (b"a/z", -1)))
    assert job.members() == one
    assert DirJob.group(one[:1]) == one[0] and one[0].members() == [one[0]]


def _walk_a_random_tree(seed: int, make_spec, sharing) -> None:
    """One random nested walk through Walker.subdirs (see the test below)."""
    rng = random.Random(seed)
    tree: dict[str, list[str]] = {}

    def grow(name: str, depth: int) -> None:
        tree[name] = [f"{name}/{i}" for i in range(rng.randint(0, 4))] if depth < 4 else []
        for child in tree[name]:
            grow(child, depth + 1)

    grow("", 0)
    w, _, _ = walker(make_spec(inline_entries=rng.randint(1, 60), inline_seconds=3600.0, batch=rng.randint(1, 8)))
    w.start()
    least = rng.choice([0.0, 1e-9, 3600.0])
    sharing(lambda walked: rng.random() < 0.2, anyone_waits=lambda: rng.random() < 0.5, least_leaf=least)
    listed, walked, handed = [""], [], []

    def leaf(name: str) -> bool:
        return not tree[name] or rng.random() < 0.3  # an engine may be wrong: the walk stays exact

    def walk(name: str) -> None:
        for child in w.subdirs(tree[name], handed.append, handed.extend if rng.random() < 0.5 else None,
                               leaf if rng.random() < 0.7 else None):
            walked.append(child)
            listed.append(child)
            w.charge(1)
            walk(child)

    walk("")
    expected = sorted(child for name in listed for child in tree[name])
    assert sorted(walked + handed) == expected, seed
    assert w._levels == [], seed

    def failing(name: str) -> None:
        for child in w.subdirs(tree[name], handed.append):
            if child.count("/") == 2:
                raise KeyError(child)
            try:
                failing(child)
            except KeyError:
                pass

    failing("")
    assert w._levels == [], seed


def test_subdirs_walks_or_hands_out_each_subdirectory_exactly_once(make_spec, sharing):
    """Whatever peers wait and whenever the budget runs out, every subdirectory of every directory the task
    lists is walked inline or handed out (alone or in a group), exactly once; a loop left by an exception
    leaves no level behind."""
    for seed in range(200):
        _walk_a_random_tree(seed, make_spec, sharing)


def test_pair_conventions_for_missing_and_unreadable_directories(roots, make_spec):
    src, dst = roots
    os.makedirs(os.path.join(src, b"both"))
    os.makedirs(os.path.join(dst, b"both"))
    os.makedirs(os.path.join(src, b"src-only"))
    w, tally, failures = walker(make_spec())
    with w.pair(b"both", src_missing=None, dst_missing=None) as fds:
        assert fds is not None and all(os.fstat(fd) for fd in fds)
        opened = fds
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed on exit
    with w.pair(b"gone", src_missing=w.vanished, dst_missing=None) as fds:
        assert fds is None
    assert tally[C.VANISHED] == 1 and failures == []
    with w.pair(b"src-only", src_missing=None, dst_missing=w.ignore) as fds:
        assert fds is None
    assert failures == []
    with w.pair(b"src-only", src_missing=None, dst_missing=None) as fds:
        assert fds is None
    with w.pair(b"gone", src_missing=None, dst_missing=None) as fds:
        assert fds is None
    assert [(f.path, f.op, f.side) for f in failures] == [(b"src-only", "open target directory", "target"),
                                                           (b"gone", "open directory", "source")]
    refused: list[bytes] = []
    with w.pair(b"both", src_missing=None, dst_missing=None,
                check_source=lambda rel, fd: refused.append(rel) and False) as fds:
        assert fds is None and refused == [b"both"]


# -- transient errors -------------------------------------------------------------------------------------


@pytest.fixture
def pauses(monkeypatch) -> list[float]:
    """The pauses retry_transient takes, recorded instead of slept."""
    taken: list[float] = []
    monkeypatch.setattr(jobs.time, "sleep", taken.append)
    return taken


def failing(n: int, err: int, result: str = "ok"):
    """A callable that raises OSError(err) on its first ``n`` calls, then returns ``result``."""
    calls = []

    def work() -> str:
        calls.append(1)
        if len(calls) <= n:
            raise OSError(err, os.strerror(err))
        return result

    work.calls = calls  # type: ignore[attr-defined]
    return work


@pytest.mark.parametrize("err", [errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR, errno.EBUSY],
                         ids=errno.errorcode.get)
def test_transient_errno_retried_after_a_pause(pauses, err):
    work = failing(2, err)
    assert retrying(work, b"p") == "ok"
    assert len(work.calls) == 3 and pauses == list(jobs.TRANSIENT_PAUSES[:2])


def test_transient_errno_given_up_with_the_last_error(pauses):
    work = failing(99, errno.ESTALE)
    with pytest.raises(OSError) as ei:
        retrying(work, b"p")
    assert ei.value.errno == errno.ESTALE
    assert len(work.calls) == 1 + len(jobs.TRANSIENT_PAUSES) and pauses == list(jobs.TRANSIENT_PAUSES)


def test_other_errors_are_not_retried(pauses):
    first = OSError(errno.EACCES, "Permission denied")
    with pytest.raises(OSError) as ei:
        retry_transient(failing(0, 0), first, b"p")
    assert ei.value is first and pauses == []
    errors = [OSError(errno.ESTALE, "stale"), FileNotFoundError(errno.ENOENT, "gone")]

    def stale_then_gone() -> None:
        raise errors.pop(0)

    with pytest.raises(FileNotFoundError):
        retrying(stale_then_gone, b"p")  # a non-transient error on a retry ends the retries at once
    assert pauses == [jobs.TRANSIENT_PAUSES[0]]


class FlakyFs(PosixFs):
    """The filesystem seam of the copy pass, failing ``create_file`` of one name ``n`` times with ``err``."""

    def __init__(self, name: str, n: int, err: int) -> None:
        self.name, self.n, self.err, self.calls = name, n, err, 0

    def create_file(self, dir_fd: int, name: str, src_fd: int, mode: int = 0o600) -> int:
        if name == self.name:
            self.calls += 1
            if self.calls <= self.n:
                raise OSError(self.err, os.strerror(self.err))
        return super().create_file(dir_fd, name, src_fd, mode)


@pytest.mark.parametrize("err", [errno.ESTALE, errno.ETIMEDOUT], ids=errno.errorcode.get)
def test_copy_retries_a_transient_error_then_copies(roots, make_spec, run_copy, pauses, err):
    src, dst = roots
    for name in (b"flaky", b"other"):
        with open(os.path.join(src, name), "wb") as f:
            f.write(b"data " + name)
    fs = FlakyFs("flaky", 2, err)
    res = run_copy(make_spec(), fs=lambda tally: fs)
    assert res.failures == [] and res.tally[C.COPIED] == 2 and res.tally[C.FAILED] == 0
    assert fs.calls == 3 and pauses == list(jobs.TRANSIENT_PAUSES[:2])
    with open(os.path.join(dst, b"flaky"), "rb") as f:
        assert f.read() == b"data flaky"
    assert os.stat(os.path.join(dst, b"flaky")).st_mtime_ns == os.stat(os.path.join(src, b"flaky")).st_mtime_ns


def test_copy_gives_up_on_a_transient_error_that_does_not_clear(roots, make_spec, run_copy, pauses):
    src, dst = roots
    for name in (b"flaky", b"other"):
        with open(os.path.join(src, name), "wb") as f:
            f.write(b"data")
    fs = FlakyFs("flaky", 99, errno.ESTALE)
    res = run_copy(make_spec(), fs=lambda tally: fs)
    assert [(f.path, f.op, f.errno) for f in res.failures] == [(b"flaky", "copy", errno.ESTALE)]
    assert res.tally[C.FAILED] == 1 and res.tally[C.COPIED] == 1  # the rest goes on
    assert fs.calls == 1 + len(jobs.TRANSIENT_PAUSES) and pauses == list(jobs.TRANSIENT_PAUSES)
    assert not os.path.lexists(os.path.join(dst, b"flaky")) and os.path.exists(os.path.join(dst, b"other"))


def test_copy_does_not_retry_a_permanent_error(roots, make_spec, run_copy, pauses):
    src, _ = roots
    with open(os.path.join(src, b"f"), "wb"):
        pass
    fs = FlakyFs("f", 99, errno.EIO)
    res = run_copy(make_spec(), fs=lambda tally: fs)
    assert [(f.path, f.errno) for f in res.failures] == [(b"f", errno.EIO)]
    assert fs.calls == 1 and pauses == []


# -- jobs --------------------------------------------------------------------------------------------------


def test_jobs_compare_by_kind_and_content():
    assert DirJob(b"a") == DirJob(b"a", None) != DirJob(b"a", 0)
    assert FilesJob(b"a", (b"x",)) != FilesJob(b"a", (b"x",), 1)
    assert DirJob.kind == "dir" and FilesJob.kind == "files"


# -- broker trouble while publishing -----------------------------------------------------------------------


@pytest.mark.parametrize("when", ["send", "settle"])
@pytest.mark.parametrize("kind", ["copy", "delete", "dirtime"])
def test_broker_trouble_while_publishing_requeues_the_task(tmp_path, monkeypatch, kind, when):
    """A publish that fails while a big directory is listed (a batch) or its subdirectories are handed on is
    broker trouble, not a listing failure: the task is requeued (run again later), nothing is recorded. So is
    a task whose children were sent and never confirmed (settle): it is not counted done."""
    src, dst = tmp_path / "s" / "src", tmp_path / "d" / "dst"
    for root in (src, dst):
        (root / "sub").mkdir(parents=True)
    for i in range(5):
        (dst if kind == "delete" else src).joinpath(f"f{i}").write_bytes(b"x")
    (src / "keep").write_bytes(b"k")
    (dst / "keep").write_bytes(b"k")
    spec = PassSpec(run_id=f"{kind}-publish", kind=PassKind(kind), src_root=os.fsencode(src), dst_root=os.fsencode(dst),
                    batch=2, inline_entries=0).as_dict()
    worker = InProcessWorker(os.fsencode(tmp_path / "s"), os.fsencode(tmp_path / "d"))
    worker.install(monkeypatch)
    try:
        class Publisher:  # the worker's publisher (taskbase.publisher), its broker connection reset
            def send(self, messages):
                if when == "send":
                    raise ConnectionError(errno.ECONNRESET, "Connection reset by peer")

            def settle(self):
                raise ConnectionError(errno.ECONNRESET, "Connection reset by peer")

        monkeypatch.setattr(taskbase, "publisher", Publisher)
        task = {"copy": copy_dir, "delete": delete_dir, "dirtime": dirtime_dir}[kind]
        rej = worker.deliver(task, spec, "", None)
    finally:
        worker.uninstall()
    assert rej is not None and rej.requeue is True, rej
    assert worker.failures(f"{kind}-publish") == []
    assert not worker.ctx.ledger._done.get(f"{kind}-publish")  # the task was not counted done
