"""The completion ledger: exact count of a pass's outstanding tasks under redelivery and worker death.

Every published task has a deterministic id (:func:`task_id`). The ledger keeps, per run:

* ``out`` -- tasks published and not yet done;
* per task an *enqueued* marker (created with ``add``: first writer wins) whose value counts the
  deliveries that started, and a *done* marker (also ``add``).

Protocol (the order matters):

1. before publishing a task: ``enqueue`` -- ``out += 1``, then the enqueued marker; if the marker
   existed already (a redelivered parent publishes again), ``out -= 1``. Counting before publishing
   means a fast child can never finish (and decrement) before it was counted.
2. when a delivery starts: ``begin`` -- returns ``None`` when the task is already done (a duplicate
   delivery is a no-op and does not re-walk a subtree), else the delivery number (1, 2, ...).
3. after the task's children are published and its work is done: ``done`` -- if the done marker is
   new, ``out -= 1``.

So ``out == 0`` exactly when every published task has finished once, whatever was redelivered. A
ledger that lost its state (memcached restarted, keys evicted) answers ``None`` ("unknown"), never 0.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
import zlib
from typing import Any, Protocol

_NS = uuid.UUID("6f1c3a0e-2b8e-4d7a-9a51-3c0f5d2e9b47")


def task_id(run_id: str, kind: str, rel: bytes, index: int = 0, names: tuple[bytes, ...] = ()) -> str:
    """Deterministic id of the task that handles ``rel`` (batch ``index`` of ``names``) in run ``run_id``.

    A batch's id covers its names, not only its position: a redelivered directory task may split its
    listing differently (the inline budget is partly time-based, the directory may have changed), and a
    position-only id would then mark names as done that no finished task ever handled. With the names in
    the id a different split only costs duplicate work, which finds the files already identical.
    """
    h = hashlib.sha1(b"\0".join(names)).hexdigest() if names else ""
    return str(uuid.uuid5(_NS, run_id + "\0" + kind + "\0" + rel.hex() + "\0" + str(index) + "\0" + h))


class Ledger(Protocol):
    def open_run(self, run_id: str) -> None:
        """Create the run's counter (idempotent)."""
        ...

    def enqueue(self, run_id: str, tid: str) -> None: ...

    def begin(self, run_id: str, tid: str) -> int | None: ...

    def done(self, run_id: str, tid: str) -> None: ...

    def outstanding(self, run_id: str) -> int | None:
        """Tasks published and not done, or None when the ledger cannot vouch for its count."""
        ...

    def claim(self, run_id: str, key: str, value: str) -> str:
        """First writer wins: store ``value`` under ``key`` unless set; return the stored value.

        Used to elect one name of a hard-link group (keyed by source device and inode) as the one that
        copies the data; every other name of the group links to it, and to mark chunks of a file done.
        """
        ...

    def claimed(self, run_id: str, keys: list[str]) -> int:
        """How many of ``keys`` hold a claim (how many chunks of a file are done)."""
        ...

    def incr(self, run_id: str, key: str, n: int) -> int:
        """Add ``n`` to the run's counter ``key`` (created at 0) and return the new value (--max-delete)."""
        ...


class MemoryLedger:
    """In-process ledger for the embedded mode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out: dict[str, int] = {}
        self._deliveries: dict[tuple[str, str], int] = {}
        self._done: set[tuple[str, str]] = set()
        self._claims: dict[tuple[str, str], str] = {}
        self._counters: dict[tuple[str, str], int] = {}

    def open_run(self, run_id: str) -> None:
        with self._lock:
            self._out.setdefault(run_id, 0)

    def enqueue(self, run_id: str, tid: str) -> None:
        with self._lock:
            if (run_id, tid) not in self._deliveries:
                self._deliveries[(run_id, tid)] = 0
                self._out[run_id] = self._out.get(run_id, 0) + 1

    def begin(self, run_id: str, tid: str) -> int | None:
        with self._lock:
            if (run_id, tid) in self._done:
                return None
            n = self._deliveries.get((run_id, tid), 0) + 1
            self._deliveries[(run_id, tid)] = n
            return n

    def done(self, run_id: str, tid: str) -> None:
        with self._lock:
            if (run_id, tid) not in self._done:
                self._done.add((run_id, tid))
                self._out[run_id] = self._out.get(run_id, 0) - 1

    def outstanding(self, run_id: str) -> int | None:
        with self._lock:
            return self._out.get(run_id)

    def claim(self, run_id: str, key: str, value: str) -> str:
        with self._lock:
            return self._claims.setdefault((run_id, key), value)

    def claimed(self, run_id: str, keys: list[str]) -> int:
        with self._lock:
            return sum((run_id, k) in self._claims for k in keys)

    def incr(self, run_id: str, key: str, n: int) -> int:
        with self._lock:
            v = self._counters.get((run_id, key), 0) + n
            self._counters[(run_id, key)] = v
            return v


class LedgerLost(Exception):
    """The memcached ledger lost keys it must have: completion can no longer be vouched for."""


class MemcacheLedger:
    """Ledger in memcached (run it with ``-M`` so that keys are never evicted).

    Keys: ``cm:<run>:out``, ``cm:<run>:epoch`` (written once; its absence reveals a restarted or
    flushed memcached), ``cm:<run>:e:<tid>`` (enqueued, value = deliveries started),
    ``cm:<run>:d:<tid>`` (done) and ``cm:<run>:l:<shard>`` (every task id, appended before publishing).
    ``client_factory`` builds a pymemcache client once per process.

    memcached has no multi-key transaction, so a process killed between two of its calls leaves ``out``
    off by one. The calls are ordered so that it can only be too *high* (the pass looks stalled, never
    complete too early); :meth:`exact_outstanding` then settles it from the task list and the done
    markers.
    """

    SHARDS = 1024  # task-list keys per run; at ~37 bytes per id each stays far below memcached's 1 MiB

    # memcached reads an expiry above 30 days as an absolute Unix time: stay below it.
    TTL = 29 * 24 * 3600

    def __init__(self, client_factory) -> None:
        self._factory = client_factory
        self._client = None

    def _mc(self):
        if self._client is None:
            self._client = self._factory()
        return self._client

    def open_run(self, run_id: str) -> None:
        mc = self._mc()
        mc.add(f"cm:{run_id}:out", "0", expire=self.TTL, noreply=False)
        mc.add(f"cm:{run_id}:epoch", "1", expire=self.TTL, noreply=False)

    def enqueue(self, run_id: str, tid: str) -> None:
        mc = self._mc()
        # 1. List the id (read only by exact_outstanding). Listed before it is counted or published.
        lk = f"cm:{run_id}:l:{zlib.crc32(tid.encode()) % self.SHARDS}"
        item = tid + " "
        if not mc.append(lk, item, noreply=False) and not mc.add(lk, item, expire=self.TTL, noreply=False) \
                and not mc.append(lk, item, noreply=False):
            mc.set(f"cm:{run_id}:lost", "1", expire=self.TTL, noreply=False)  # the list can no longer vouch
        # 2. Count first, then mark (see module doc): a crash in between leaves the count too high.
        if mc.incr(f"cm:{run_id}:out", 1) is None:
            raise LedgerLost(f"run {run_id}: outstanding counter missing from memcached")
        if not mc.add(f"cm:{run_id}:e:{tid}", "0", expire=self.TTL, noreply=False):
            mc.decr(f"cm:{run_id}:out", 1)  # published before (a redelivered parent): counted once

    def begin(self, run_id: str, tid: str) -> int | None:
        mc = self._mc()
        if mc.get(f"cm:{run_id}:d:{tid}") is not None:
            return None
        n = mc.incr(f"cm:{run_id}:e:{tid}", 1)
        if n is None:
            # The enqueued marker is gone (memcached restarted, or the message was not published by
            # cmover). Re-create it so attempts are still counted; the run's epoch check reports the loss.
            mc.add(f"cm:{run_id}:e:{tid}", "1", expire=self.TTL, noreply=False)
            return 1
        return int(n)

    def done(self, run_id: str, tid: str) -> None:
        mc = self._mc()
        first = mc.add(f"cm:{run_id}:d:{tid}", "1", expire=self.TTL, noreply=False)
        if first and mc.decr(f"cm:{run_id}:out", 1) is None:
            raise LedgerLost(f"run {run_id}: outstanding counter missing from memcached")

    def claim(self, run_id: str, key: str, value: str) -> str:
        mc = self._mc()
        k = f"cm:{run_id}:k:{key}"
        if mc.add(k, value, expire=self.TTL, noreply=False):
            return value
        got = mc.get(k)
        if got is None:
            raise LedgerLost(f"run {run_id}: claim {key} vanished from memcached")
        return got.decode() if isinstance(got, bytes) else str(got)

    def claimed(self, run_id: str, keys: list[str]) -> int:
        mc = self._mc()
        n = 0
        for i in range(0, len(keys), 500):  # bounded requests for files of thousands of chunks
            n += len(mc.get_many([f"cm:{run_id}:k:{k}" for k in keys[i:i + 500]]))
        return n

    def incr(self, run_id: str, key: str, n: int) -> int:
        mc = self._mc()
        k = f"cm:{run_id}:n:{key}"
        if n < 0:  # memcached counters are unsigned: decr, which stops at 0
            got = mc.decr(k, -n)
            return int(got) if got is not None else 0
        v = mc.incr(k, n)
        if v is None:
            if mc.add(k, str(n), expire=self.TTL, noreply=False):
                return n
            v = mc.incr(k, n)
            if v is None:
                raise LedgerLost(f"run {run_id}: counter {key} vanished from memcached")
        return int(v)

    def exact_outstanding(self, run_id: str, hint: int) -> int | None:
        """Tasks listed and not done, counted key by key; None when it cannot be said right now.

        Used when ``out`` (= ``hint``) stays above 0 with every queue empty: a worker killed between
        two ledger calls. Safe at any moment: a task is listed before it is published and marked done
        only after its children were listed and published, so 0 here means every task is done. The
        scan reads every task id, so it runs at most every 10 s per run and its answer is kept for
        as long as ``out`` does not move.
        """
        mc = self._mc()
        cached = mc.get(f"cm:{run_id}:x")
        if cached is not None:
            h, _, n = cached.decode().partition(":")
            if int(h) == hint:
                return int(n)
        if not mc.add(f"cm:{run_id}:xlock", "1", expire=10, noreply=False):
            return None
        if mc.get(f"cm:{run_id}:lost") is not None:
            return None
        tids: set[str] = set()
        keys = [f"cm:{run_id}:l:{i}" for i in range(self.SHARDS)]
        for i in range(0, len(keys), 256):
            for v in mc.get_many(keys[i:i + 256]).values():
                tids.update(v.decode().split())
        todo = sorted(tids)
        missing = 0
        for i in range(0, len(todo), 500):
            part = todo[i:i + 500]
            missing += len(part) - len(mc.get_many([f"cm:{run_id}:d:{t}" for t in part]))
        mc.set(f"cm:{run_id}:x", f"{hint}:{missing}", expire=60, noreply=False)
        return missing

    def outstanding(self, run_id: str) -> int | None:
        try:
            mc = self._mc()
            got = mc.get_many([f"cm:{run_id}:out", f"cm:{run_id}:epoch"])
        except Exception:
            return None
        if f"cm:{run_id}:epoch" not in got or f"cm:{run_id}:out" not in got:
            return None
        return int(got[f"cm:{run_id}:out"])


class RunClaims:
    """The run's first-writer-wins claims, bound to its id: what the engine needs from the ledger."""

    __slots__ = ("ledger", "run_id")

    def __init__(self, ledger: Any, run_id: str) -> None:
        self.ledger = ledger
        self.run_id = run_id

    def claim(self, key: str, value: str) -> str:
        return str(self.ledger.claim(self.run_id, key, value))

    def claimed(self, keys: list[str]) -> int:
        return int(self.ledger.claimed(self.run_id, keys))

    def incr(self, key: str, n: int = 1) -> int:
        return int(self.ledger.incr(self.run_id, key, n))
