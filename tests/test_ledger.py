"""cmover.state.ledger: exact outstanding count under duplicate enqueue/begin/done, in memory and in memcached.

The memcached tests use the real server on 127.0.0.1:11211 (started by scripts/test.sh): they fail,
never skip, when it is unreachable.
"""

import uuid

import pytest
from pymemcache.client.base import Client

from cmover.state import keys
from cmover.state.ledger import LedgerLost, MemcacheLedger, MemoryLedger, task_id

# Some tests here read and write the real memcached: the module runs with the memcached group.
pytestmark = pytest.mark.memcached

MEMCACHED = ("127.0.0.1", 11211)


def mc_client() -> Client:
    return Client(MEMCACHED, connect_timeout=2, timeout=5, default_noreply=False)


@pytest.fixture
def run_id():
    return f"test-ledger-{uuid.uuid4().hex}"


@pytest.fixture(params=["memory", "memcache"])
def ledger(request):
    if request.param == "memory":
        return MemoryLedger()
    mc_client().version()  # unreachable memcached: the test errors out instead of skipping
    return MemcacheLedger(mc_client)


def test_task_id_deterministic():
    a = task_id("run", "dir", b"a/caf\xe9")
    assert a == task_id("run", "dir", b"a/caf\xe9")
    assert len({a, task_id("run", "files", b"a/caf\xe9"), task_id("run", "dir", b"a/caf\xe9", 1),
                task_id("run2", "dir", b"a/caf\xe9"), task_id("run", "dir", b"a/cafe")}) == 5


def test_batch_id_covers_its_names():
    """Same directory and position, different names (a redelivered dir task split its listing
    differently): different ids, so a done batch never stands for names it did not handle."""
    a = task_id("run", "files", b"d", 0, (b"x", b"y"))
    assert a == task_id("run", "files", b"d", 0, (b"x", b"y"))
    assert a != task_id("run", "files", b"d", 0, (b"x", b"z"))
    assert a != task_id("run", "files", b"d", 0, (b"xy",))


def test_enqueue_twice_counts_once(ledger, run_id):
    ledger.open_run(run_id)
    assert ledger.outstanding(run_id) == 0
    ledger.enqueue(run_id, "t1")
    ledger.enqueue(run_id, "t1")
    assert ledger.outstanding(run_id) == 1
    ledger.enqueue(run_id, "t2")
    assert ledger.outstanding(run_id) == 2


def test_a_first_delivery_asks_one_thing_of_memcached_and_a_lost_count_is_still_checked(run_id):
    """begin counts first and looks for the done marker only for a later delivery, or where the count is gone
    (a memcached that evicted it may still hold the done marker)."""
    calls: list[str] = []

    class Counting:
        def __init__(self, inner: Client) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            calls.append(name)
            return getattr(self.inner, name)

    client = mc_client()
    led = MemcacheLedger(lambda: Counting(client))
    led.open_run(run_id)
    led.enqueue(run_id, "t1")
    calls.clear()
    assert led.begin(run_id, "t1") == 1 and calls == ["incr"]
    assert led.begin(run_id, "t1") == 2 and calls == ["incr", "incr", "get"]
    led.done(run_id, "t1")
    assert led.begin(run_id, "t1") is None
    client.delete(keys.enqueued(run_id, "t1"))  # the count evicted, the done marker kept
    assert led.begin(run_id, "t1") is None


def test_begin_counts_deliveries_and_none_after_done(ledger, run_id):
    ledger.open_run(run_id)
    ledger.enqueue(run_id, "t1")
    assert ledger.begin(run_id, "t1") == 1
    assert ledger.begin(run_id, "t1") == 2
    assert ledger.begin(run_id, "t1") == 3
    ledger.done(run_id, "t1")
    assert ledger.begin(run_id, "t1") is None


def test_done_twice_decrements_once(ledger, run_id):
    ledger.open_run(run_id)
    for t in ("t1", "t2", "t3"):
        ledger.enqueue(run_id, t)
    assert ledger.done(run_id, "t1") == 2  # the count just after: the worker of the last task reports at once
    assert ledger.done(run_id, "t1") is None  # not this call's to count
    assert ledger.outstanding(run_id) == 2
    assert [ledger.done(run_id, t) for t in ("t3", "t2")] == [1, 0]


def test_outstanding_zero_only_when_all_done(ledger, run_id):
    ledger.open_run(run_id)
    tids = [task_id(run_id, "dir", f"d{i}".encode()) for i in range(5)]
    ledger.enqueue(run_id, tids[0])
    seen = []
    # A parent enqueues its children before it is done; redeliveries and duplicate dones in between.
    for i, tid in enumerate(tids):
        ledger.begin(run_id, tid)
        if i + 1 < len(tids):
            ledger.enqueue(run_id, tids[i + 1])
            ledger.enqueue(run_id, tids[i + 1])
        ledger.done(run_id, tid)
        ledger.done(run_id, tid)
        seen.append(ledger.outstanding(run_id))
    assert seen == [1, 1, 1, 1, 0]


def test_runs_are_separate(ledger, run_id):
    other = run_id + "-b"
    ledger.open_run(run_id)
    ledger.open_run(other)
    ledger.enqueue(run_id, "t")
    assert (ledger.outstanding(run_id), ledger.outstanding(other)) == (1, 0)


def test_open_run_idempotent(ledger, run_id):
    ledger.open_run(run_id)
    ledger.enqueue(run_id, "t")
    ledger.open_run(run_id)
    assert ledger.outstanding(run_id) == 1


def test_memory_unknown_run_is_none(run_id):
    assert MemoryLedger().outstanding(run_id) is None


def test_memcache_unknown_run_is_none(run_id):
    assert MemcacheLedger(mc_client).outstanding(run_id) is None


def test_memcache_lost_epoch_means_unknown(run_id):
    led = MemcacheLedger(mc_client)
    led.open_run(run_id)
    led.enqueue(run_id, "t1")
    led.done(run_id, "t1")
    assert led.outstanding(run_id) == 0
    assert mc_client().delete(f"cm:{run_id}:epoch", noreply=False)
    assert led.outstanding(run_id) is None  # never 0 after a loss


def test_memcache_lost_counter(run_id):
    led = MemcacheLedger(mc_client)
    led.open_run(run_id)
    led.enqueue(run_id, "t1")
    mc_client().delete(f"cm:{run_id}:out", noreply=False)
    assert led.outstanding(run_id) is None
    with pytest.raises(LedgerLost):
        led.enqueue(run_id, "t2")
    with pytest.raises(LedgerLost):
        led.done(run_id, "t1")


def test_memcache_begin_recreates_lost_marker(run_id):
    led = MemcacheLedger(mc_client)
    led.open_run(run_id)
    led.enqueue(run_id, "t1")
    mc_client().delete(f"cm:{run_id}:e:t1", noreply=False)
    assert led.begin(run_id, "t1") == 1
    assert led.begin(run_id, "t1") == 2


def test_memcache_keys_have_expiry_below_30_days(run_id):
    led = MemcacheLedger(mc_client)
    assert 0 < led.TTL < 30 * 24 * 3600
    led.open_run(run_id)
    led.enqueue(run_id, "t1")
    # A TTL above 30 days would be read as an absolute (past) time: the keys would vanish at once.
    assert led.outstanding(run_id) == 1
    assert mc_client().get(f"cm:{run_id}:e:t1") is not None


def test_memcache_unreachable_outstanding_is_none(run_id):
    led = MemcacheLedger(lambda: Client(("127.0.0.1", 1), connect_timeout=1, timeout=1))
    assert led.outstanding(run_id) is None


def _tid(i: int) -> str:
    return task_id("run", "dir", b"d%d" % i)


def test_memcache_crash_between_done_calls_is_settled_by_the_exact_scan(run_id):
    """A worker killed after the done marker and before the decrement: the count stays at 1 (a stall,
    never an early "complete"), and the exact scan of the task list says 0."""
    led = MemcacheLedger(mc_client)
    led.open_run(run_id)
    a, b = _tid(1), _tid(2)
    led.enqueue(run_id, a)
    led.enqueue(run_id, b)
    led.done(run_id, a)
    assert led.begin(run_id, b) == 1
    mc_client().add(f"cm:{run_id}:d:{b}", "1")  # done marker written, then SIGKILL: no decrement
    assert led.outstanding(run_id) == 1
    assert led.begin(run_id, b) is None  # the redelivery sees it done
    assert led.exact_outstanding(run_id, 1) == 0
    assert led.exact_outstanding(run_id, 1) == 0  # cached while the count does not move


def test_memcache_exact_scan_counts_unfinished_tasks(run_id):
    led = MemcacheLedger(mc_client)
    led.open_run(run_id)
    tids = [_tid(i) for i in range(2000)]
    for t in tids:
        led.enqueue(run_id, t)
    for t in tids[:-3]:
        led.done(run_id, t)
    assert led.outstanding(run_id) == 3
    assert led.exact_outstanding(run_id, 3) == 3


def test_memcache_crash_inside_enqueue_only_overcounts(run_id):
    """Killed after counting and before the marker: the redelivered parent enqueues again; the count is
    too high by one (settled by the scan), never too low."""
    led = MemcacheLedger(mc_client)
    led.open_run(run_id)
    t = _tid(7)
    mc_client().incr(f"cm:{run_id}:out", 1)  # the first attempt counted it, then died
    led.enqueue(run_id, t)  # the parent's redelivery
    assert led.outstanding(run_id) == 2
    led.done(run_id, t)
    assert led.outstanding(run_id) == 1
    assert led.exact_outstanding(run_id, 1) == 0


def test_memcache_exact_scan_is_throttled(run_id):
    led = MemcacheLedger(mc_client)
    led.open_run(run_id)
    led.enqueue(run_id, _tid(1))
    assert led.exact_outstanding(run_id, 1) == 1
    assert led.exact_outstanding(run_id, 2) is None  # a new count within 10 s: not scanned again yet


class _ChildFinishesDuringScan:
    """A memcached client that, when the exact scan first reads done markers (the task list is read by
    then), lets a running task list a child task and finish, as a live worker may do at that moment."""

    def __init__(self, client: Client, during) -> None:
        self._client = client
        self._during = during

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_many(self, keys):
        if self._during is not None and keys and ":d:" in keys[0]:
            during, self._during = self._during, None
            during()
        return self._client.get_many(keys)


def test_memcache_exact_scan_never_misses_a_child_listed_during_it(run_id):
    """The scan reads the task list, then the done markers: it is no snapshot. A parent that lists a
    child after the list was read and is done before its marker is read must not make the scan say 0
    (the child has not run): the scan sees that tasks finished while it ran and cannot vouch."""
    parent, child = _tid(1), _tid(2)
    worker = MemcacheLedger(mc_client)
    worker.open_run(run_id)
    mc_client().incr(f"cm:{run_id}:out", 1)  # an earlier worker died inside a ledger call: count stale
    worker.enqueue(run_id, parent)
    assert worker.begin(run_id, parent) == 1

    def parent_finishes() -> None:
        worker.enqueue(run_id, child)
        worker.finished(run_id)
        worker.done(run_id, parent)

    reader = MemcacheLedger(lambda: _ChildFinishesDuringScan(mc_client(), parent_finishes))
    assert worker.outstanding(run_id) == 2  # the stale one and the parent (the child is not listed yet)
    assert reader.exact_outstanding(run_id, 2) != 0
    mc_client().delete(f"cm:{run_id}:xlock", noreply=False)  # next scan allowed now (normally 10 s later)
    assert reader.exact_outstanding(run_id, worker.outstanding(run_id)) == 1  # the child, seen this time


def test_finished_counts_every_delivery_that_reports(ledger, run_id):
    """``finished`` counts deliveries whose counters are about to be reported (a duplicate one too);
    ``finished_count`` reads it back (what `status` compares with the workers' reported tasks)."""
    ledger.open_run(run_id)
    assert ledger.finished_count(run_id) == 0
    ledger.enqueue(run_id, "t1")
    for _ in range(2):
        ledger.finished(run_id)
        ledger.done(run_id, "t1")
    assert ledger.finished_count(run_id) == 2
    assert ledger.outstanding(run_id) == 0


def test_memcache_finished_count_unknown_without_the_run(run_id):
    assert MemcacheLedger(mc_client).finished_count(run_id) is None


def test_the_memcached_client_times_out_in_the_kernel_and_works(monkeypatch):
    """cmover's memcached client (keys.memcache_client) talks to a real memcached as any client does, with a
    blocking socket whose timeouts are the kernel's (no poll before each send and receive); a server that
    accepts and never answers fails the call with OSError after the timeout, not a hang."""
    import socket
    import time

    from cmover.core.settings import Settings
    from cmover.state import keys

    mc = keys.memcache_client(Settings(memcached="127.0.0.1:11211"))
    key = f"test-kernel-timeout-{uuid.uuid4().hex}"
    assert mc.add(key, b"1", expire=60) and mc.get(key) == b"1" and mc.incr(key, 2) == 3
    with mc.client_pool.get_and_release() as client:
        assert client.sock.gettimeout() is None  # blocking: bounded by SO_RCVTIMEO / SO_SNDTIMEO
        assert client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) != bytes(16)

    monkeypatch.setattr(keys, "TIMEOUT", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        stuck = keys.memcache_client(Settings(memcached=f"127.0.0.1:{silent.getsockname()[1]}"))
        t0 = time.monotonic()
        with pytest.raises(OSError):
            stuck.get("k")
        assert 0.25 < time.monotonic() - t0 < 5


def test_task_ids_are_the_version_5_uuids_of_their_names():
    """task_id writes uuid.uuid5 out by hand (the uuid module is not imported): the same ids, for any name."""
    import hashlib
    import random

    from cmover.state.ledger import _NS

    rng = random.Random(3)
    for _ in range(200):
        rel = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        names = tuple(rng.randbytes(rng.randrange(1, 9)).replace(b"\0", b"x") for _ in range(rng.randrange(0, 3)))
        index = rng.randrange(0, 1 << 20)
        h = hashlib.sha1(b"\0".join(names)).hexdigest() if names else ""
        name = "copy-x" + "\0" + "files" + "\0" + rel.hex() + "\0" + str(index) + "\0" + h
        assert task_id("copy-x", "files", rel, index, names) == str(uuid.uuid5(uuid.UUID(bytes=_NS), name))


@pytest.mark.parametrize("journal", [False, True], ids=["root task", "journal jobs"])
def test_a_started_run_is_current_only_once_its_ledger_counts_a_task(run_id, journal, monkeypatch):
    """`cmover start` (cmover.ops.start) makes its run the current one only once the ledger counts a task
    of it, and sends nothing before: whatever `status` reads from then on, until the pass's tasks run, is
    "1 or more outstanding", never a run without a ledger ("unknown": `status` exited 3 when run a moment
    after a start) nor one with nothing counted ("complete" before anything was sent)."""
    from cmover.core.passes import PassKind, PassSpec
    from cmover.core.settings import Settings
    from cmover.engine.jobs import DirJob, FilesJob
    from cmover.ops import runs
    from cmover.ops import start as startmod

    mc_client().version()
    settings = Settings(memcached="127.0.0.1:11211", username=f"t{run_id[-12:]}")  # its own current run
    reader = MemcacheLedger(mc_client)  # another process's view
    spec = PassSpec(run_id=run_id, kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d")
    seen: list[tuple[str, int | None]] = []
    record_start = runs.record_start

    def recording_start(*args, **kwargs):
        seen.append(("current", reader.outstanding(run_id)))
        record_start(*args, **kwargs)

    def send(messages):
        current = runs.current(settings, "copy")
        assert current is not None and current.run_id == run_id, "a task was sent before its run was current"
        seen.extend(("send", reader.outstanding(run_id)) for _ in messages)

    monkeypatch.setattr(startmod, "check_broker", lambda settings: None)
    monkeypatch.setattr(startmod, "_send", send)
    monkeypatch.setattr(runs, "record_start", recording_start)
    jobs = [DirJob(b"a"), FilesJob(b"", (b"x", b"y"), 0)] if journal else None
    tid = startmod.start(settings, spec, jobs)
    assert [what for what, _ in seen] == (["current", "send", "send"] if journal else ["current", "send"])
    assert all(out is not None and out >= 1 for _, out in seen), seen
    # Every job counted, and nothing else: the seeding's own count is given back once all are sent.
    assert reader.outstanding(run_id) == (2 if journal else 1)
    assert tid == ("" if journal else task_id(run_id, "dir", b"", 0))
    if journal:
        none = PassSpec(run_id=run_id + "-none", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d")
        assert startmod.start(settings, none, []) == ""
        assert reader.outstanding(none.run_id) == 0  # no job: complete at once


def test_a_task_settles_the_messages_its_process_still_holds(monkeypatch):
    """A task that sent nothing still settles when its process's publisher holds an earlier task's messages
    (given up on while the broker was gone): they reach the broker before this task is counted done. A task
    that sent nothing in a process that holds nothing costs no round trip."""
    from cmover.core.passes import PassKind, PassSpec
    from cmover.worker import taskbase

    class FakePublisher:
        def __init__(self, holding: bool) -> None:
            self.holding = holding
            self.settled = 0

        def settle(self) -> None:
            self.settled += 1
            self.holding = False

    spec = PassSpec(run_id="copy-settle", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d")
    emit = taskbase.Emitter(spec.as_dict(), spec, MemoryLedger())
    for holding, settles in ((False, 0), (True, 1)):
        pub = FakePublisher(holding)
        monkeypatch.setattr(taskbase, "_publisher", (taskbase.pid(), pub))
        emit.settle()
        assert pub.settled == settles and not pub.holding
