"""The embedded mode's broker: queues, ledger, counters and error list shared by local processes.

``cmover copy`` without a broker runs its tasks in a pool of forked processes (:mod:`cmover.embedded.pool`),
so that the copy uses every core (a thread pool is capped by the GIL: measured, one thread was faster than
four). Pool processes publish the tasks they fan out, so the queues must be shared between processes.
:class:`Hub` lives in a helper process forked at the start of the run (:func:`start_hub`) and holds
the queues, the messages handed out and not yet acknowledged, the completion ledger, the counters and the
error list of the run.

Queued messages beyond :data:`MEMORY_BYTES` per queue wait in a file of the hub's own (:class:`SpillQueue`),
so that the hub's memory stays bounded however many tasks a pass queues (a full copy of 10^5 directories
queues about that many directory tasks at once).

Its connections carry JSON frames (:mod:`cmover.embedded.wire`), never pickle: strings, integers, lists,
dicts and bytes; messages travel as their compressed JSON (:mod:`cmover.embedded.packing`). It listens on a Unix
socket in a private directory, answers only processes of its own user, and lives only as long as the run (or
its runner: a runner killed with SIGKILL takes the hub with it).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import struct
import threading
import time
from collections import Counter, deque
from typing import Any, BinaryIO

from cmover.core.deletion import Deletion
from cmover.core.difference import Difference
from cmover.core.failure import Failure
from cmover.core.hsmrecord import HsmRecord, hsm_list
from cmover.core.settings import Settings
from cmover.embedded import wire
from cmover.embedded.forked import Forked
from cmover.state.errorlist import MEMORY_LIMIT, MemoryErrors, Records, deleted_list, differences_list
from cmover.state.hsmlist import HsmFile
from cmover.state.ledger import MemoryLedger
from cmover.state.stats import MemoryStats
from cmover.worker.context import WorkerContext

log = logging.getLogger(__name__)


#: Bytes of queued messages a queue keeps in the hub's memory; the newer ones wait in its spill file.
MEMORY_BYTES = 8 << 20


class SpillQueue:
    """One queue of the hub, first in first out: its oldest messages in memory (up to ``limit`` bytes, default
    :data:`MEMORY_BYTES`), the
    newer ones appended to a spill file in ``directory``, read back in order as the memory empties.

    A message is bytes (a packed message) or text. Only the hub's lock-holder calls it. The file is the
    hub's own, in a private directory, and lives as long as the run (which keeps its queues in memory
    anyway: nothing of it has to survive a crash).
    """

    __slots__ = ("head", "head_bytes", "limit", "path", "spill", "spilled", "read_at")

    def __init__(self, path: str, limit: int | None = None) -> None:
        self.head: deque[bytes | str] = deque()
        self.head_bytes = 0
        self.limit = MEMORY_BYTES if limit is None else limit
        self.path = path
        self.spill: BinaryIO | None = None
        self.spilled = 0  # messages in the file not yet read back
        self.read_at = 0  # where the oldest of them starts

    def __len__(self) -> int:
        return len(self.head) + self.spilled

    def append(self, payload: bytes | str) -> None:
        if not self.spilled and self.head_bytes + len(payload) <= self.limit:
            self.head.append(payload)
            self.head_bytes += len(payload)
            return
        # Once a message waits in the file, every newer one goes there too: the order stays the same.
        if self.spill is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self.spill = os.fdopen(fd, "w+b")
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.spill.seek(0, os.SEEK_END)
        self.spill.write(_RECORD.pack(len(data), isinstance(payload, str)) + data)
        self.spilled += 1

    def appendleft(self, payload: bytes | str) -> None:
        """Put a message back at the head (one handed out and given back): in memory, whatever the budget."""
        self.head.appendleft(payload)
        self.head_bytes += len(payload)

    def popleft(self) -> bytes | str:
        """The oldest message (IndexError when the queue is empty)."""
        if not self.head and self.spilled:
            self._refill()
        payload = self.head.popleft()
        self.head_bytes -= len(payload)
        return payload

    def _refill(self) -> None:
        """Read the oldest spilled messages back, up to half the memory budget (at least one)."""
        f = self.spill
        assert f is not None
        f.flush()
        f.seek(self.read_at)
        while self.spilled and (not self.head or self.head_bytes < self.limit // 2):
            size, text = _RECORD.unpack(f.read(_RECORD.size))
            data = f.read(size)
            payload: bytes | str = data.decode("utf-8") if text else data
            self.head.append(payload)
            self.head_bytes += len(payload)
            self.spilled -= 1
        self.read_at = f.tell()
        if not self.spilled:  # all read back: the file starts again empty (its disk space is given back)
            f.seek(0)
            f.truncate()
            self.read_at = 0

    def clear(self) -> int:
        """Drop every message; return how many there were."""
        n = len(self)
        self.head.clear()
        self.head_bytes = self.spilled = self.read_at = 0
        if self.spill is not None:
            self.spill.seek(0)
            self.spill.truncate()
        return n


#: A spilled message's header: its length and whether it is text.
_RECORD = struct.Struct("<I?")


class Hub:
    """Shared state of one embedded run; every public method is a call a client makes over its connection
    (:class:`Client`), each connection served by a thread of the hub's process (:func:`_answer`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Waiters (a consumer for a message, the runner for the end of a pass) sleep in the hub until what
        # they wait for happens: no polling round trips (measured: the bulk of a small pass's syscalls).
        # Two conditions on the one lock, so that a put wakes only consumers and a task done only the runner,
        # and the runner only when the run has nothing outstanding (each wake is a futex call per waiter).
        self._message = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._queues: dict[str, SpillQueue] = {}
        # Messages handed to a pool process and not yet acknowledged: tag -> (queue, payload, owner).
        self._taken: dict[str, tuple[str, bytes | str, str]] = {}
        self._tags = 0
        self._dead: set[str] = set()  # pool processes that died: handed nothing more
        self._spill_dir = _spill_dir or _socket_dir()
        # The embedded run's state is the in-memory ledger, counters and error list, shared here.
        self._ledger = MemoryLedger()
        self._stats = MemoryStats()
        self._errors = MemoryErrors()

    # queues
    def put(self, queue: str, payload: Any) -> None:
        with self._lock:
            self._queue(queue).append(payload)
            self._message.notify()

    def _queue(self, name: str) -> SpillQueue:
        """Queue ``name``, made on first use (under the lock)."""
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = SpillQueue(os.path.join(self._spill_dir, f"queue-{len(self._queues)}"))
        return q

    def take(self, queues: list[str], wait: float, owner: str) -> list[Any] | None:
        """The first message of the first non-empty queue, as ``[tag, payload]``, handed to pool process
        ``owner``: it stays the hub's until acknowledged (:meth:`ack`), and returns to its queue when the owner
        dies (:meth:`requeue_owner`). When every queue is empty, wait up to ``wait`` seconds for one (less once
        the hub is closing); None if none came, or when ``owner`` is known dead."""
        with self._lock:
            deadline = None
            while True:
                if owner in self._dead:
                    return None  # its reply would go nowhere: the message would be lost with it
                for name in queues:
                    q = self._queues.get(name)
                    if q:
                        self._tags += 1
                        tag = str(self._tags)
                        payload = q.popleft()
                        self._taken[tag] = (name, payload, owner)
                        return [tag, payload]
                if self._closed or wait <= 0:
                    return None
                now = time.monotonic()
                deadline = deadline or now + min(wait, _MAX_WAIT)
                if now >= deadline:
                    return None
                self._message.wait(deadline - now)

    def ack(self, tag: str) -> None:
        """The message handed out as ``tag`` is done with (run, or rejected for good): it is gone."""
        with self._lock:
            self._taken.pop(tag, None)

    def requeue(self, tag: str) -> None:
        """The message handed out as ``tag`` goes back to the head of its queue, to be run again."""
        with self._lock:
            got = self._taken.pop(tag, None)
            if got is not None:
                self._queue(got[0]).appendleft(got[1])
                self._message.notify()

    def requeue_owner(self, owner: str) -> int:
        """Pool process ``owner`` died: every message it was handed and had not acknowledged goes back to the
        head of its queue (its task runs again), and it is handed nothing from now on. Returns how many."""
        with self._lock:
            self._dead.add(owner)
            mine = [tag for tag, (_, _, who) in self._taken.items() if who == owner]
            for tag in reversed(mine):
                name, payload, _ = self._taken.pop(tag)
                self._queue(name).appendleft(payload)
            if mine:
                self._message.notify_all()
            return len(mine)

    def close(self) -> None:
        """The run is over: every waiter returns now, and none waits from now on."""
        with self._lock:
            self._closed = True
            self._message.notify_all()
            self._idle.notify_all()

    def size(self, queue: str) -> int:
        with self._lock:
            return len(self._queues.get(queue, ()))

    # ledger (see cmover.state.ledger)
    def open_run(self, run_id: str) -> None:
        self._ledger.open_run(run_id)

    def enqueue(self, run_id: str, tid: str) -> None:
        self._ledger.enqueue(run_id, tid)

    def begin(self, run_id: str, tid: str) -> int | None:
        return self._ledger.begin(run_id, tid)

    def done(self, run_id: str, tid: str) -> None:
        with self._lock:  # under the hub's lock: a waiter reads the count and sleeps under it, and misses nothing
            self._ledger.done(run_id, tid)
            if not self._ledger.outstanding(run_id):
                self._idle.notify_all()

    def outstanding(self, run_id: str, wait: float = 0.0) -> int | None:
        """Tasks of the run not done; with ``wait``, first wait up to that many seconds for 0."""
        out = self._ledger.outstanding(run_id)
        if out and wait > 0:
            deadline = time.monotonic() + min(wait, _MAX_WAIT)
            with self._lock:
                while out and not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._idle.wait(left)
                    out = self._ledger.outstanding(run_id)
        return out

    def claim(self, run_id: str, key: str, value: str) -> str:
        return self._ledger.claim(run_id, key, value)

    def claimed(self, run_id: str, keys: list[str]) -> int:
        return self._ledger.claimed(run_id, keys)

    def incr(self, run_id: str, key: str, n: int) -> int:
        return self._ledger.incr(run_id, key, n)

    def sync(self) -> None:
        """Nothing: a call that only carries the calls a client held (:func:`send_held`)."""

    def batch(self, calls: list[list[Any]]) -> Any:
        """Run ``[name, args]`` calls in order and return the last one's result: the calls a client held
        (:data:`HELD`, whose results nobody waits for), sent in the round trip of its next call."""
        *held, (name, args) = calls
        for n, a in held:
            if n not in HELD:
                raise ValueError(f"{n} cannot be held")
            getattr(self, n)(*a)
        if name not in _SERVED:
            raise ValueError(f"no hub call {name}")
        return getattr(self, name)(*args)

    # counters and errors
    def stats_add(self, run_id: str, tally: dict[str, int]) -> None:
        self._stats.add(run_id, Counter(tally))

    def stats_totals(self, run_id: str) -> dict[str, int] | None:
        return self._stats.totals(run_id)

    def errors_record(self, run_id: str, failures: list[dict[str, Any]]) -> None:
        # Kept in their wire form: failures, or deletions in a deletion list; the reader decodes them.
        self._errors.record(run_id, failures)

    def errors_read(self, run_id: str, limit: int) -> dict[str, Any]:
        items, count = self._errors.items(run_id, limit)
        return {"items": items, "count": count}


#: Hub calls a client may hold and send with its next call (:meth:`Hub.batch`): a child task counted in the
#: ledger (sent with the message's put), a task's counters and failures (sent with its done). They reach the
#: hub in the order they were made, before the call that carries them, so the ledger still counts every
#: child before its message can be taken and before its parent is done, and a run's totals are complete
#: when its ledger says 0. Measured: a third fewer round trips per task. A pool process's acknowledgement of
#: the message it ran goes with its next take: lost with the process, it costs only a redelivery that the
#: ledger, which has the task done, turns into nothing.
HELD = frozenset({"enqueue", "stats_add", "errors_record", "ack", "requeue"})

#: What :meth:`Hub.batch` may end with: the hub's own calls.
_SERVED = frozenset(n for n in vars(Hub) if not n.startswith("_") and n != "batch")

#: Longest wait of one hub call: a waiting consumer or runner looks at its own state (stop, shutdown) this often.
_MAX_WAIT = 0.5


#: How long an idle pool process waits in the hub for a message per call.
CONSUMER_WAIT = 0.25


#: Connections the hub's socket queues before it accepts them (a pool process connects once, as it starts).
_BACKLOG = socket.SOMAXCONN

# Address of the running hub and the directory its queues spill into: set by start_hub() before the pool forks,
# so pool processes inherit them; each process (each thread) connects on first use.
_address: str | None = None
_spill_dir: str | None = None
_proxy: Client | None = None
_proxy_lock = threading.Lock()
_held = threading.local()  # .calls: the calls this thread holds (Client.hold)


def _after_fork_in_child() -> None:
    # The pool forks while other threads of the parent may hold this lock or use their connections.
    global _proxy_lock, _proxy, _held
    _proxy_lock = threading.Lock()
    _proxy = None
    _held = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)


def start_hub(spill_under: str | None = None) -> Forked:
    """Start the hub process for this run and return it (a :class:`~cmover.embedded.forked.Forked`); the caller ends
    it with :func:`stop_hub`.

    Its queues spill (:class:`SpillQueue`) into a private directory made under ``spill_under`` (created if
    missing; the run's STATE_DIR: on disk, where /tmp may be memory), else under the system's temporary
    directory; it is removed by :func:`stop_hub`.

    The socket listens before the hub process is forked, so that a client connects at once (the hub accepts it
    when it is ready): no round trip waits for the hub to start. The hub ignores SIGINT and SIGHUP (a Ctrl-C or
    a hangup reaches the terminal's whole process group): it lives until :func:`stop_hub`, so the run can
    finish, or stop cleanly, after either; and it ends by itself when this process is gone.
    """
    global _address, _spill_dir, _proxy
    with _proxy_lock:
        _proxy = None  # a client of an earlier hub of this process would talk to a socket that is gone
    sockdir = _socket_dir()  # mode 0700: only this user can reach the socket
    _address = os.path.join(sockdir, "hub")
    _spill_dir = os.path.join(sockdir, "spill")
    if spill_under:
        try:
            os.makedirs(spill_under, mode=0o700, exist_ok=True)
            _spill_dir = private_dir(spill_under, "cmover-hub-")
        except OSError as exc:
            # Where the spill goes is the hub's own business: a STATE_DIR that cannot be written (a user with
            # no home) leaves it in the socket's private directory, and the pass goes on.
            log.debug("queued tasks spill to %s, not %s (%s)", sockdir, spill_under, exc.strerror or exc)
    if _spill_dir == os.path.join(sockdir, "spill"):
        os.mkdir(_spill_dir, 0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(_address)
        listener.listen(_BACKLOG)
        process = Forked(_serve, (listener, os.getpid()), "cmover-hub")
        process.start()
    finally:
        listener.close()  # the hub's now: a pool process forked later must not hold it
    return process


def _serve(listener: socket.socket, runner: int) -> None:
    """The hub process's life: a thread answers each connection (:func:`_answer`), until the hub is killed
    (:func:`stop_hub`) or its ``runner`` is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    hub = Hub()
    threading.Thread(target=_end_with, args=(runner,), name="runner", daemon=True).start()
    while True:
        conn, _ = listener.accept()
        if not wire.same_user(conn):
            conn.close()
            continue
        threading.Thread(target=_answer, args=(hub, conn), daemon=True).start()


def _end_with(runner: int) -> None:
    """End the hub's process once process ``runner`` is gone (SIGKILL leaves no one to stop the hub), its socket
    and spill files removed as :func:`stop_hub` would."""
    try:
        fd = os.pidfd_open(runner)
    except OSError:  # gone already, or a kernel without pidfds: look every second
        while os.getppid() == runner:
            time.sleep(1.0)
    else:
        select.select([fd], [], [])  # readable once it has exited
    try:
        _remove_files()
    finally:
        os._exit(0)


def _answer(hub: Hub, conn: socket.socket) -> None:
    """Answer the calls of one connection, in order, until its client closes it or is gone. A call that raises
    is answered with its error, and the connection goes on."""
    rfile = conn.makefile("rb")
    with conn, rfile:
        while True:
            try:
                request = wire.read_frame(rfile)
            except (EOFError, OSError):
                return
            try:
                name, args = wire.loads(request)
                if name not in _SERVED and name != "batch":
                    raise ValueError(f"no hub call {name!r}")
                reply = wire.dumps([0, getattr(hub, name)(*args)])
            except Exception as exc:  # the caller's error (a wrong call, a bad argument): said to the caller
                reply = wire.dumps([1, f"{type(exc).__name__}: {exc}"])
            try:
                wire.send_frame(conn, reply)
            except OSError:
                return


def stop_hub(process: Forked) -> None:
    """End the run's hub (after its pool: see :mod:`cmover.embedded.runner`).

    The hub keeps nothing that outlives the run (its spill files are removed here), so it is killed rather than
    asked to shut down: an orderly shutdown (the hub's interpreter exit) took 5-10 ms at the end of every
    pass."""
    try:
        hub().close()  # waiters return at once instead of finding the hub gone
    except (OSError, EOFError, wire.HubError):
        pass
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
    process.join()
    _remove_files()


def _remove_files() -> None:
    """Remove the run's hub socket and spill files (its queues, spilled): by :func:`stop_hub`, or by the hub itself
    when its runner is gone."""
    if _spill_dir is not None:
        _remove_dir(_spill_dir)  # inside the socket's directory when it could not go under STATE_DIR
    if _address is not None:
        try:
            os.unlink(_address)
        except FileNotFoundError:
            pass
        _remove_dir(os.path.dirname(_address))


def _socket_dir() -> str:
    """A new private directory for the hub's socket: under $TMPDIR, else (unset, or no directory can be made
    there) /tmp, else /var/tmp, as ``tempfile`` would choose; the error of the last one when none can be made."""
    error: OSError | None = None
    for root in (os.environ.get("TMPDIR"), "/tmp", "/var/tmp"):
        if root:
            try:
                return private_dir(root, "cmover-")
            except OSError as exc:
                error = exc
    assert error is not None
    raise error


def private_dir(under: str, prefix: str) -> str:
    """A new directory under ``under`` that only this user can enter (mode 0700), its name ``prefix`` and 12 random
    hex digits; OSError when it cannot be made. (What ``tempfile.mkdtemp`` does; importing tempfile, with shutil
    and random, was 3 ms of every embedded command's start.)"""
    while True:
        path = os.path.join(under, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:  # 48 random bits: another name
            continue


def _remove_dir(path: str) -> None:
    """Remove directory ``path``: at once when it is empty (a pass whose queues never spilled), else with its
    contents (spill files)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        import shutil  # only for a hub whose queues spilled to files

        shutil.rmtree(path, ignore_errors=True)


def hub() -> Client:
    """The run's hub as this process calls it (thread-safe: each thread has its own connection)."""
    global _proxy
    with _proxy_lock:
        # No pid check: a forked child starts with no client (_after_fork_in_child), and asking the pid was a
        # syscall per hub call.
        if _proxy is None:
            if _address is None:
                raise RuntimeError("embedded hub not started")
            _proxy = Client(_address)
        return _proxy


def send_held() -> None:
    """Send the calls this thread holds, if any, now."""
    if getattr(_held, "calls", None):
        hub().sync()


class Client:
    """The hub as this process calls it: every :class:`Hub` method, each thread over a connection of its own
    (opened on its first call), and :meth:`hold` for the calls whose results nobody waits for (see
    :data:`HELD`). A call raises :class:`~cmover.embedded.wire.HubError` when it raised in the hub, EOFError or
    OSError when the hub is gone."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._local = threading.local()

    def call(self, name: str, args: list[Any]) -> Any:
        """Call hub method ``name`` with ``args`` now, in one round trip (no held calls sent with it)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = wire.Connection(self._address)
        return conn.call(name, args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            held = getattr(_held, "calls", None)
            if held:
                _held.calls = []
                return self.call("batch", [[*held, [name, list(args)]]])
            return self.call(name, list(args))
        return call

    def hold(self, name: str, *args: Any) -> None:
        """Make call ``name`` (one of :data:`HELD`) with this thread's next call, in the same round trip."""
        assert name in HELD, name
        calls = getattr(_held, "calls", None)
        if calls is None:
            calls = _held.calls = []
        calls.append([name, list(args)])


class HubStats:
    """StatsSink over the hub."""

    def add(self, run_id: str, tally: Counter[str], node: str = "", began: float = 0.0) -> None:
        hub().hold("stats_add", run_id, dict(tally))  # with the task's done

    def totals(self, run_id: str) -> dict[str, int] | None:
        totals = hub().stats_totals(run_id)
        return None if totals is None else {str(k): int(v) for k, v in totals.items()}

    def flush(self) -> None:
        send_held()  # an add is held until the task's done; a process that exits sends what it still holds


class HubErrors:
    """Error list over the hub."""

    def record(self, run_id: str, failures: Records) -> None:
        hub().hold("errors_record", run_id, [f.as_dict() for f in failures])  # with the task's done

    def read(self, run_id: str, limit: int = 1000) -> tuple[list[Failure], int]:
        data = hub().errors_read(run_id, limit)
        return [Failure.from_dict(d) for d in data["items"]], int(data["count"])

    def read_deleted(self, run_id: str, limit: int = 1000) -> tuple[list[Deletion], int]:
        """The deletion list of delete pass ``run_id``."""
        data = hub().errors_read(deleted_list(run_id), limit)
        return [Deletion.from_dict(d) for d in data["items"]], int(data["count"])

    def read_hsm(self, run_id: str) -> list[HsmRecord]:
        """The HSM list of copy run ``run_id`` as kept in the hub (a session without settings)."""
        data = hub().errors_read(hsm_list(run_id), MEMORY_LIMIT)
        return [HsmRecord.from_dict(d) for d in data["items"]]

    def read_differences(self, run_id: str, limit: int = 1000) -> tuple[list[Difference], int]:
        """The differences list of verify pass ``run_id``."""
        data = hub().errors_read(differences_list(run_id), limit)
        return [Difference.from_dict(d) for d in data["items"]], int(data["count"])


class HubLedger:
    """Completion ledger over the hub (same protocol as :mod:`cmover.state.ledger`)."""

    def open_run(self, run_id: str) -> None:
        hub().open_run(run_id)

    def enqueue(self, run_id: str, tid: str) -> None:
        hub().hold("enqueue", run_id, tid)  # with the put of its message (or the parent's done)

    def begin(self, run_id: str, tid: str) -> int | None:
        r = hub().begin(run_id, tid)
        return None if r is None else int(r)

    def finished(self, run_id: str) -> None:
        # Not counted: an embedded run's counters reach the hub before its tasks are done, so its
        # totals are complete when the ledger says 0 (no reader needs the count; one round trip saved).
        pass

    def finished_count(self, run_id: str) -> int | None:
        return None

    def done(self, run_id: str, tid: str) -> None:
        hub().done(run_id, tid)

    def outstanding(self, run_id: str, wait: float = 0.0) -> int | None:
        """See :meth:`Hub.outstanding`: with ``wait``, returns as soon as the run is done (or after ``wait``)."""
        r = hub().outstanding(run_id, wait)
        return None if r is None else int(r)

    def exact_outstanding(self, run_id: str, hint: int) -> int | None:
        return self.outstanding(run_id)  # the hub counts under one lock: never off

    def claim(self, run_id: str, key: str, value: str) -> str:
        return str(hub().claim(run_id, key, value))

    def claimed(self, run_id: str, keys: list[str]) -> int:
        return int(hub().claimed(run_id, keys))

    def incr(self, run_id: str, key: str, n: int) -> int:
        return int(hub().incr(run_id, key, n))


def embedded_context(settings: Settings | None = None) -> WorkerContext:
    """The context of an embedded run's processes: ledger, counters and errors in the run's hub; HSM
    lists in files in LOG_DIR (:class:`~cmover.state.hsmlist.HsmFile`), which outlive the session.

    ``settings``: the site (its LUSTREAPI, LOG_DIR); None: the defaults, HSM lists kept in the hub.
    """
    return WorkerContext(ledger=HubLedger(), stats=HubStats(), errors=HubErrors(),
                         lustreapi=settings.lustreapi if settings is not None else "",
                         hsm=HsmFile(settings.log_path()) if settings is not None else None)
