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
3. after the task's children are published and its work is done: ``finished`` -- counts the delivery
   (``fin += 1``) right before its counters go to the stats sink;
4. then ``done`` -- if the done marker is new, ``out -= 1``.

So ``out == 0`` exactly when every published task has finished once, whatever was redelivered. A
ledger that lost its state (memcached restarted, keys evicted) answers ``None`` ("unknown"), never 0.

``fin`` only goes up. It tells a reader that deliveries finished while it looked (the exact scan), and
how many deliveries have counters to report: every delivery counted there reports one ``tasks``, so
once the workers' reported ``tasks`` add up to it, every count of the run has reached memcached (see
cmover.ops.status.reports_complete).
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from typing import Protocol

from cmover.state import keys

#: The namespace of task ids (a version 5 UUID's): changing it changes every id.
_NS = bytes.fromhex("6f1c3a0e2b8e4d7a9a513c0f5d2e9b47")


def task_id(run_id: str, kind: str, rel: bytes, index: int = 0, names: tuple[bytes, ...] = ()) -> str:
    """Deterministic id of the task that handles ``rel`` (batch ``index`` of ``names``) in run ``run_id``.

    A batch's id covers its names, not only its position: a redelivered directory task may split its
    listing differently (the inline budget is partly time-based, the directory may have changed), and a
    position-only id would then mark names as done that no finished task ever handled. With the names in
    the id a different split only costs duplicate work, which finds the files already identical.
    """
    h = hashlib.sha1(b"\0".join(names)).hexdigest() if names else ""
    name = run_id + "\0" + kind + "\0" + rel.hex() + "\0" + str(index) + "\0" + h
    # uuid.uuid5(_NS, name), written out: the uuid module imports platform, 2 ms of every command's start.
    d = bytearray(hashlib.sha1(_NS + name.encode("utf-8")).digest()[:16])
    d[6] = d[6] & 0x0F | 0x50  # version 5
    d[8] = d[8] & 0x3F | 0x80  # RFC 4122 variant
    x = d.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class Ledger(Protocol):
    def open_run(self, run_id: str) -> None:
        """Create the run's counter (idempotent)."""
        ...

    def enqueue(self, run_id: str, tid: str) -> None: ...

    def begin(self, run_id: str, tid: str) -> int | None:
        """Count a delivery of task ``tid`` starting: its number (1 for the first), or None when the task is done
        already (a duplicate delivery, to be ignored)."""
        ...

    def finished(self, run_id: str) -> None:
        """Count one delivery that did its work and is about to report its counters (then ``done``)."""
        ...

    def finished_count(self, run_id: str) -> int | None:
        """How many times ``finished`` was called for the run; None when it cannot be said."""
        ...

    def done(self, run_id: str, tid: str) -> int | None:
        """Mark task ``tid`` done; the run's outstanding count just after, when this call marked it (None for a
        task already done, or when the ledger does not say)."""
        ...

    def outstanding(self, run_id: str) -> int | None:
        """Tasks published and not done, or None when the ledger cannot vouch for its count."""
        ...

    def exact_outstanding(self, run_id: str, hint: int) -> int | None:
        """Tasks not done, settled task by task when ``outstanding`` (= ``hint``) may be off; None: cannot say.

        Asked when the count stays above 0 with every queue empty. A ledger whose count cannot be off
        (one process keeps it under a lock) answers its count.
        """
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


def _key(tid: str) -> bytes:
    """How :class:`MemoryLedger` keeps task id ``tid``: its 128-bit BLAKE2b digest (the chance that two of a
    run's 10^12 task ids share one is below 10^-14)."""
    return hashlib.blake2b(tid.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class MemoryLedger:
    """In-process ledger for the embedded mode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out: dict[str, int] = {}
        # Task ids kept per run as their 128-bit digests (:func:`_key`): a tenth of a pass's tasks may be
        # outstanding and every one is remembered done until the end of the run (duplicates are told by it),
        # so these are the ledger's memory: 16 bytes instead of a tuple, a run id and a 36-character id.
        self._deliveries: dict[str, dict[bytes, int]] = {}  # per run
        self._done: dict[str, set[bytes]] = {}  # per run
        self._claims: dict[tuple[str, str], str] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._finished: dict[str, int] = {}

    def open_run(self, run_id: str) -> None:
        with self._lock:
            self._out.setdefault(run_id, 0)
            self._finished.setdefault(run_id, 0)

    def enqueue(self, run_id: str, tid: str) -> None:
        k = _key(tid)
        with self._lock:
            deliveries = self._deliveries.setdefault(run_id, {})
            if k not in deliveries and k not in self._done.get(run_id, ()):
                deliveries[k] = 0
                self._out[run_id] = self._out.get(run_id, 0) + 1

    def begin(self, run_id: str, tid: str) -> int | None:
        k = _key(tid)
        with self._lock:
            if k in self._done.get(run_id, ()):
                return None
            deliveries = self._deliveries.setdefault(run_id, {})
            n = deliveries[k] = deliveries.get(k, 0) + 1
            return n

    def finished(self, run_id: str) -> None:
        with self._lock:
            self._finished[run_id] = self._finished.get(run_id, 0) + 1

    def finished_count(self, run_id: str) -> int | None:
        with self._lock:
            return self._finished.get(run_id)

    def done(self, run_id: str, tid: str) -> int | None:
        k = _key(tid)
        with self._lock:
            done = self._done.setdefault(run_id, set())
            if k in done:
                return None
            done.add(k)
            self._deliveries.get(run_id, {}).pop(k, None)  # a done task needs no delivery count
            self._out[run_id] = left = self._out.get(run_id, 0) - 1
            return left

    def outstanding(self, run_id: str) -> int | None:
        with self._lock:
            return self._out.get(run_id)

    def exact_outstanding(self, run_id: str, hint: int) -> int | None:
        return self.outstanding(run_id)  # counted under one lock: never off

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
    flushed memcached), ``cm:<run>:fin`` (deliveries finished), ``cm:<run>:e:<tid>`` (enqueued, value =
    deliveries started),
    ``cm:<run>:d:<tid>`` (done) and ``cm:<run>:l:<shard>`` (every task id, appended before publishing).
    ``client_factory`` builds a pymemcache client once per process.

    memcached has no multi-key transaction, so a process killed between two of its calls leaves ``out``
    off by one. The calls are ordered so that it can only be too *high* (the pass looks stalled, never
    complete too early); :meth:`exact_outstanding` then settles it from the task list and the done
    markers.
    """

    SHARDS = 1024  # task-list keys per run; at ~37 bytes per id each stays far below memcached's 1 MiB

    TTL = keys.TTL

    def __init__(self, client_factory) -> None:
        self._factory = client_factory
        self._client = None

    def _mc(self):
        if self._client is None:
            self._client = self._factory()
        return self._client

    def open_run(self, run_id: str) -> None:
        mc = self._mc()
        mc.add(keys.run_key(run_id, "out"), "0", expire=self.TTL, noreply=False)
        mc.add(keys.run_key(run_id, "fin"), "0", expire=self.TTL, noreply=False)
        mc.add(keys.run_key(run_id, "epoch"), "1", expire=self.TTL, noreply=False)

    def enqueue(self, run_id: str, tid: str) -> None:
        mc = self._mc()
        # 1. List the id (read only by exact_outstanding). Listed before it is counted or published.
        lk = keys.task_list(run_id, zlib.crc32(tid.encode()) % self.SHARDS)
        item = tid + " "
        if not mc.append(lk, item, noreply=False) and not mc.add(lk, item, expire=self.TTL, noreply=False) \
                and not mc.append(lk, item, noreply=False):
            mc.set(keys.run_key(run_id, "lost"), "1", expire=self.TTL, noreply=False)  # the list can no longer vouch
        # 2. Count first, then mark (see module doc): a crash in between leaves the count too high.
        if mc.incr(keys.run_key(run_id, "out"), 1) is None:
            raise LedgerLost(f"run {run_id}: outstanding counter missing from memcached")
        if not mc.add(keys.enqueued(run_id, tid), "0", expire=self.TTL, noreply=False):
            mc.decr(keys.run_key(run_id, "out"), 1)  # published before (a redelivered parent): counted once

    def begin(self, run_id: str, tid: str) -> int | None:
        # Counted first: a first delivery (the count was 0, as enqueue left it) cannot have been done, since every
        # delivery counts itself before it can mark the task done; only a later one looks for the done marker.
        # One memcached round trip per task fewer than looking first (a task's calls wait on a busy server).
        mc = self._mc()
        n = mc.incr(keys.enqueued(run_id, tid), 1)
        if n is None:
            # The enqueued marker is gone (memcached restarted or evicting, or the message was not published by
            # cmover). Re-create it so attempts are still counted; the run's epoch check reports the loss.
            if mc.get(keys.done(run_id, tid)) is not None:
                return None
            mc.add(keys.enqueued(run_id, tid), "1", expire=self.TTL, noreply=False)
            return 1
        n = int(n)
        if n > 1 and mc.get(keys.done(run_id, tid)) is not None:
            return None
        return n

    def finished(self, run_id: str) -> None:
        # A missing key (run opened by an older cmover, or memcached lost it) stays missing: nothing
        # then vouches for the reports (finished_count None) and readers fall back to waiting.
        self._mc().incr(keys.run_key(run_id, "fin"), 1)

    def finished_count(self, run_id: str) -> int | None:
        try:
            got = self._mc().get(keys.run_key(run_id, "fin"))
        except Exception:
            return None
        return None if got is None else int(got)

    def done(self, run_id: str, tid: str) -> int | None:
        mc = self._mc()
        if not mc.add(keys.done(run_id, tid), "1", expire=self.TTL, noreply=False):
            return None
        left = mc.decr(keys.run_key(run_id, "out"), 1)
        if left is None:
            raise LedgerLost(f"run {run_id}: outstanding counter missing from memcached")
        return int(left)

    def claim(self, run_id: str, key: str, value: str) -> str:
        mc = self._mc()
        k = keys.claim(run_id, key)
        if mc.add(k, value, expire=self.TTL, noreply=False):
            return value
        got = mc.get(k)
        if got is None:
            raise LedgerLost(f"run {run_id}: claim {key} vanished from memcached")
        return got.decode() if isinstance(got, bytes) else str(got)

    def claimed(self, run_id: str, names: list[str]) -> int:
        mc = self._mc()
        n = 0
        for i in range(0, len(names), 500):  # bounded requests for files of thousands of chunks
            n += len(mc.get_many([keys.claim(run_id, k) for k in names[i:i + 500]]))
        return n

    def incr(self, run_id: str, key: str, n: int) -> int:
        mc = self._mc()
        k = keys.ledger_counter(run_id, key)
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
        two ledger calls. A task is listed before it is published and marked done only after its
        children were listed and published, so 0 means every task is done -- provided no task finished
        while the scan ran: the list is read before the done markers, and a task that listed a child
        after the list was read and then finished would hide that child. ``fin`` is counted after a
        task's children are listed and before it is marked done, so the scan reads it before and after
        and answers None (cannot say now) when it moved. The scan reads every task id, so it runs at
        most every 10 s per run and its answer is kept for as long as ``out`` does not move.
        """
        mc = self._mc()
        cached = mc.get(keys.run_key(run_id, "x"))
        if cached is not None:
            h, _, n = cached.decode().partition(":")
            if int(h) == hint:
                return int(n)
        if not mc.add(keys.run_key(run_id, "xlock"), "1", expire=10, noreply=False):
            return None
        if mc.get(keys.run_key(run_id, "lost")) is not None:
            return None
        fin = mc.get(keys.run_key(run_id, "fin"))
        tids: set[str] = set()
        shards = [keys.task_list(run_id, i) for i in range(self.SHARDS)]
        for i in range(0, len(shards), 256):
            for v in mc.get_many(shards[i:i + 256]).values():
                tids.update(v.decode().split())
        todo = sorted(tids)
        missing = 0
        for i in range(0, len(todo), 500):
            part = todo[i:i + 500]
            missing += len(part) - len(mc.get_many([keys.done(run_id, t) for t in part]))
        if mc.get(keys.run_key(run_id, "fin")) != fin:
            return None  # tasks finished during the scan: what it read is no snapshot
        mc.set(keys.run_key(run_id, "x"), f"{hint}:{missing}", expire=60, noreply=False)
        return missing

    def outstanding(self, run_id: str) -> int | None:
        try:
            mc = self._mc()
            out_key, epoch_key = keys.run_key(run_id, "out"), keys.run_key(run_id, "epoch")
            got = mc.get_many([out_key, epoch_key])
        except Exception:
            return None
        if epoch_key not in got or out_key not in got:
            return None
        return int(got[out_key])
