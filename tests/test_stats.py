"""cmover.state.stats: totals in memory and in the real memcached (127.0.0.1:11211); a dead sink never raises."""

import threading
import uuid
from collections import Counter

import pytest
from pymemcache.client.base import Client, PooledClient

from cmover.core.counters import C
from cmover.state.runstats import MemcacheStats
from cmover.state.stats import MemoryStats

# Some tests here read and write the real memcached: the module runs with the memcached group.
pytestmark = pytest.mark.memcached


def test_memory_totals():
    s = MemoryStats()
    s.add("r", Counter({C.COPIED: 2, C.BYTES: 100}))
    s.add("r", Counter({C.COPIED: 3, C.SKIPPED: 1}))
    s.add("other", Counter({C.COPIED: 7}))
    assert s.totals("r") == {C.COPIED: 5, C.BYTES: 100, C.SKIPPED: 1}
    assert s.totals("other") == {C.COPIED: 7}
    assert s.totals("none") == {}


def test_memory_totals_threads():
    s = MemoryStats()

    def work():
        for _ in range(500):
            s.add("r", Counter({C.SCANNED: 1, C.BYTES: 3}))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.totals("r") == {C.SCANNED: 2000, C.BYTES: 6000}


def test_memcache_add_then_incr_from_threads():
    Client(("127.0.0.1", 11211), connect_timeout=2, timeout=5).version()  # fail, not skip, when unreachable
    run_id = f"test-stats-{uuid.uuid4().hex}"
    per_thread, rounds = 4, 200
    barrier = threading.Barrier(per_thread)
    errors = []

    def work():
        # One sink per thread (as one per worker process), all racing to create the same keys.
        sink = MemcacheStats(lambda: Client(("127.0.0.1", 11211), connect_timeout=2, timeout=5))
        barrier.wait()
        try:
            for i in range(rounds):
                sink.add(run_id, Counter({C.COPIED: 1, C.BYTES: i, C.FAILED: 0}))
        except Exception as exc:  # pragma: no cover - add must never raise
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(per_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    totals = MemcacheStats(lambda: PooledClient(("127.0.0.1", 11211))).totals(run_id)
    assert totals == {C.COPIED: per_thread * rounds, C.BYTES: per_thread * sum(range(rounds))}


def test_memcache_dead_server_never_raises(caplog):
    calls = []

    def factory():
        calls.append(1)
        return Client(("127.0.0.1", 1), connect_timeout=1, timeout=1)

    sink = MemcacheStats(factory)
    sink.add("r", Counter({C.COPIED: 1}))
    sink.add("r", Counter({C.COPIED: 1}))
    assert sink.totals("r") is None
    warnings = [r for r in caplog.records if "counters not recorded" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per task


def test_memcache_factory_raising_never_raises():
    def factory():
        raise OSError("no route")

    sink = MemcacheStats(factory)
    sink.add("r", Counter({C.COPIED: 1}))
    assert sink.totals("r") is None


# -- per-worker records, loss, batching ---------------------------------------------------------------------


def _client():
    return Client(("127.0.0.1", 11211), connect_timeout=2, timeout=5)


def test_worker_records_are_discovered_and_sum_to_the_totals():
    run_id = f"test-workers-{uuid.uuid4().hex}"
    a = MemcacheStats(_client, worker="nodea:101")
    b = MemcacheStats(_client, worker="nodeb:202")
    a.add(run_id, Counter({C.COPIED: 2, C.BYTES: 10}), "copy_f@nodea")
    b.add(run_id, Counter({C.COPIED: 5, C.DIRS: 1}), "copy_d@nodeb")
    a.add(run_id, Counter({C.COPIED: 1}), "copy_f@nodea")
    reader = MemcacheStats(_client)
    workers = reader.workers(run_id)
    assert [(w.worker, w.host, w.pid, w.node) for w in workers] == [
        ("nodea:101", "nodea", 101, "copy_f@nodea"), ("nodeb:202", "nodeb", 202, "copy_d@nodeb")]
    assert workers[0].totals == {C.COPIED: 3, C.BYTES: 10}
    assert workers[1].totals == {C.COPIED: 5, C.DIRS: 1}
    assert reader.totals(run_id) == {C.COPIED: 8, C.BYTES: 10, C.DIRS: 1}
    assert reader.run_counters(run_id) == reader.totals(run_id)


def test_lost_counters_are_logged_once_and_made_up_from_worker_records(caplog):
    run_id = f"test-lost-{uuid.uuid4().hex}"
    w = MemcacheStats(_client, worker="nodea:7")
    w.add(run_id, Counter({C.COPIED: 4, C.BYTES: 40}))
    mc = _client()
    # memcached restarted: every key of the run is gone (the run counters and the registry).
    for key in (f"cm:{run_id}:c:{C.COPIED}", f"cm:{run_id}:c:{C.BYTES}", f"cm:{run_id}:workers",
                f"cm:{run_id}:w:nodea:7"):
        mc.delete(key, noreply=False)  # acknowledged before the next report (another connection)
    w.add(run_id, Counter({C.COPIED: 1}))
    w.add(run_id, Counter({C.COPIED: 1}))
    assert [r for r in caplog.records if "were lost" in r.getMessage()].__len__() == 1
    reader = MemcacheStats(_client)
    assert reader.run_counters(run_id) == {C.COPIED: 2}  # what arrived after the loss
    assert reader.totals(run_id) == {C.COPIED: 6, C.BYTES: 40}  # the worker record came back whole
    assert [x.worker for x in reader.workers(run_id)] == ["nodea:7"]


def test_worker_record_carries_a_rate_window(monkeypatch):
    import cmover.state.stats as stats

    run_id = f"test-rate-{uuid.uuid4().hex}"
    clock = [1000.0]
    monkeypatch.setattr(stats.time, "time", lambda: clock[0])
    w = MemcacheStats(_client, worker="h:1")
    for _ in range(10):  # 10 files per 10 s for 100 s, each batch of work started 10 s before its report
        clock[0] += 10
        w.add(run_id, Counter({C.COPIED: 10}), began=clock[0] - 10)
    rec = MemcacheStats(_client).workers(run_id)[0]
    assert rec.totals == {C.COPIED: 100}
    assert rec.at == 1100.0 and rec.since == 1040.0  # newest report at least a minute old
    assert rec.rate(C.COPIED) == 1.0


class _Recorder:
    def __init__(self):
        self.calls = []

    def add(self, run_id, tally, node="", began=0.0):
        self.calls.append((run_id, dict(tally), node))
        self.began = began

    def totals(self, run_id):
        return None

    def workers(self, run_id):
        return None


def test_batched_reports_once_when_idle():
    import time

    from cmover.state.stats import BatchedStats

    rec = _Recorder()
    b = BatchedStats(rec, interval=3600, idle=0.1)
    for i in range(5):
        b.add("r", Counter({C.COPIED: 1, C.TASKS: 1}), "n@h", began=1000.0 + i)
    assert rec.calls == []  # nothing sent while the interval has not passed and the process is busy
    deadline = time.monotonic() + 5
    while not rec.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rec.calls == [("r", {C.COPIED: 5, C.TASKS: 5}, "n@h")]
    assert rec.began == 1000.0  # the earliest start of the reported work
    b.add("r", Counter({C.COPIED: 1}))
    b.flush()  # process shutdown
    assert rec.calls[-1] == ("r", {C.COPIED: 1}, "")


def test_batched_reports_at_once_when_the_interval_has_passed():
    from cmover.state.stats import BatchedStats

    rec = _Recorder()
    b = BatchedStats(rec, interval=0.0)
    b.add("r", Counter({C.COPIED: 1}))
    b.add("r", Counter({C.COPIED: 2}))
    assert rec.calls == [("r", {C.COPIED: 1}, ""), ("r", {C.COPIED: 2}, "")]


def test_reports_complete_once_every_finished_delivery_has_reported():
    """What `status` waits for before it gives the totals of a complete run: the ledger counts each
    delivery that finished, the delivery then hands its counts (with tasks = 1) to its process's batched
    report, and the records' tasks add up to the ledger's count only when no process holds any back."""
    from cmover.ops.status import reports_complete
    from cmover.state.ledger import MemcacheLedger
    from cmover.state.stats import BatchedStats

    run_id = f"test-reports-{uuid.uuid4().hex}"
    ledger = MemcacheLedger(_client)
    ledger.open_run(run_id)
    # Two worker processes whose reports go out only when flushed here (no interval or idle report).
    a = BatchedStats(MemcacheStats(_client, worker="h:1"), interval=3600, idle=3600)
    b = BatchedStats(MemcacheStats(_client, worker="h:2"), interval=3600, idle=3600)
    reader = MemcacheStats(_client)

    def proven() -> bool:
        return reports_complete(ledger.finished_count(run_id), reader.workers(run_id))

    for sink in (a, a, b):
        ledger.finished(run_id)
        sink.add(run_id, Counter({C.TASKS: 1, C.COPIED: 2}), "n@h")
    assert not proven()
    a.flush()
    assert not proven()  # b's delivery is not reported yet
    b.flush()
    assert proven()
    assert reader.totals(run_id) == {C.TASKS: 3, C.COPIED: 6}
    ledger.finished(run_id)  # a process killed after counting its delivery, before reporting it
    assert not proven()
    assert not reports_complete(None, []) and not reports_complete(3, None)


def test_activity_and_estimate_are_pure():
    from cmover.ops.status import activity, estimate
    from cmover.state.runstats import WorkerStats

    now = 10_000.0
    busy = WorkerStats("a:1", "copy_f@a", now - 2, now - 300, {C.COPIED: 600, C.DIRS: 10}, now - 62,
                       {C.COPIED: 0, C.DIRS: 0})
    idle = WorkerStats("a:2", "copy_d@a", now - 500, now - 900, {C.COPIED: 50}, now - 560, {})
    other = WorkerStats("b:3", "", now - 1, now - 100, {C.DIRS: 30}, now - 61, {C.DIRS: 0})
    rates, nodes = activity([busy, idle, other], now, report_interval=30)
    assert rates[C.COPIED] == 10.0  # the idle process's old rate is not counted
    assert rates[C.DIRS] == 10 / 60 + 0.5
    assert [(n["host"], n["processes"], n["active"], n["celery_nodes"]) for n in nodes] == [
        ("a", 2, 1, ["copy_d@a", "copy_f@a"]), ("b", 1, 1, [])]
    assert nodes[0]["totals"][C.COPIED] == 650
    e = estimate({C.DIRS: 40, C.DIRS_FOUND: 99}, {C.DIRS: 2.0})
    assert e == {"dirs_discovered": 100, "dirs_processed": 40, "dirs_left": 60, "fraction_done": 0.4,
                 "seconds_left": 30.0}
    assert estimate({}, {}) is None
    assert estimate({C.DIRS: 5, C.DIRS_FOUND: 4}, {})["seconds_left"] is None


def test_a_run_looks_stalled_only_with_tasks_outstanding_nothing_queued_and_no_report_for_long():
    from cmover.ops.status import STALLED_AFTER, stalled_for
    from cmover.state.runstats import WorkerStats

    now = 100_000.0
    late = now - STALLED_AFTER - 30

    def w(at: float) -> WorkerStats:
        return WorkerStats("a:1", "copy_f@a", at, at - 60, {}, at - 60, {})

    queues = {"cmover.copy.dirs": 0, "cmover.copy.files": 0}
    assert stalled_for(3, queues, [w(late), w(late - 100)], late - 500, now) == STALLED_AFTER + 30
    assert stalled_for(3, queues, [], late, now) == STALLED_AFTER + 30  # no worker ever reported
    assert stalled_for(3, queues, [w(late), w(now - 5)], late, now) is None  # a process reported lately
    assert stalled_for(3, queues, [w(late)], now - 5, now) is None  # started lately
    assert stalled_for(3, {**queues, "cmover.copy.files": 1}, [w(late)], late, now) is None  # a message waits
    assert stalled_for(0, queues, [w(late)], late, now) is None
    assert stalled_for(None, queues, [w(late)], late, now) is None  # unknown counts prove nothing
    assert stalled_for(3, None, [w(late)], late, now) is None
    assert stalled_for(3, queues, [], None, now) is None


def test_first_report_rate_counts_from_when_the_work_began(monkeypatch):
    import cmover.state.stats as stats

    run_id = f"test-rate0-{uuid.uuid4().hex}"
    monkeypatch.setattr(stats.time, "time", lambda: 2000.0)
    w = MemcacheStats(_client, worker="h:2")
    w.add(run_id, Counter({C.COPIED: 300}), began=1970.0)  # 300 files in the 30 s before the first report
    rec = MemcacheStats(_client).workers(run_id)[0]
    assert rec.since == 1970.0 and rec.rate(C.COPIED) == 10.0


def test_wait_looks_often_at_first_and_at_most_every_probe_later():
    """`wait` reads the ledger PROBE_MIN apart at first (a small pass is seen complete moments after its end),
    then a hundredth of the time waited, never less often than every PROBE (a pass of hours: 50 reads a second)."""
    from cmover.ops.status import PROBE, PROBE_MIN, probe_after

    assert probe_after(0.0) == PROBE_MIN == 0.002
    assert probe_after(1.0) == pytest.approx(0.01)
    assert probe_after(3600.0) == PROBE == 0.02
    waits = [probe_after(t / 10) for t in range(100)]
    assert waits == sorted(waits)


def test_the_last_tasks_of_a_run_report_their_counts_at_once(make_spec, roots):
    """A worker process holds its counts until it has been idle for REPORT_IDLE, and `status` waits for every
    count of a complete run: a task whose done leaves fewer than REPORT_NOW_LEFT tasks outstanding reports at
    once instead. Tasks before them keep theirs (one report per quiet spell, not per task)."""
    import os

    from cmover.state.errorlist import MemoryErrors
    from cmover.state.ledger import MemoryLedger
    from cmover.state.stats import BatchedStats
    from cmover.worker.context import WorkerContext, contexts
    from cmover.worker.taskbase import REPORT_NOW_LEFT, run_message, seed

    src = os.fsdecode(roots[0])
    subdirs = REPORT_NOW_LEFT + 1
    for i in range(subdirs):
        os.mkdir(os.path.join(src, f"sub{i}"))
        with open(os.path.join(src, f"sub{i}", "f"), "w") as f:
            f.write(str(i))
    reported: list[tuple[str, dict[str, int]]] = []

    class Sink:
        def add(self, run_id, tally, node="", began=0.0):
            reported.append((run_id, dict(tally)))

    ledger = MemoryLedger()
    stats = BatchedStats(Sink(), interval=3600, idle=3600)  # nothing would go out before the process ends
    spec = make_spec(inline_entries=0)  # each subdirectory is a task of its own
    queue: list = []
    with contexts.building(lambda: WorkerContext(ledger=ledger, stats=stats, errors=MemoryErrors())):
        seed(queue.extend, spec, ledger)
        run_message(queue.pop(0), "w@test", queue.extend)  # the root: leaves one task per subdirectory
        run_message(queue.pop(0), "w@test", queue.extend)
        assert ledger.outstanding(spec.run_id) == REPORT_NOW_LEFT and reported == []  # held
        run_message(queue.pop(0), "w@test", queue.extend)
        assert [tally[C.TASKS] for _, tally in reported] == [3]  # what was held, with this task
        while queue:
            run_message(queue.pop(0), "w@test", queue.extend)
    assert ledger.outstanding(spec.run_id) == 0 and {run_id for run_id, _ in reported} == {spec.run_id}
    assert [tally[C.TASKS] for _, tally in reported] == [3] + [1] * (REPORT_NOW_LEFT - 1)
    assert sum(tally.get(C.COPIED, 0) for _, tally in reported) == subdirs
