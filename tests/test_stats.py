"""cmover.stats: totals in memory and in the real memcached (127.0.0.1:11211); a dead sink never raises."""

import threading
import uuid
from collections import Counter

from pymemcache.client.base import Client, PooledClient

from cmover.stats import C, MemcacheStats, MemoryStats


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
