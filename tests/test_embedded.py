"""The embedded mode's hub and runner: kombu's message paths through the hub, a pool process lost mid-pass."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from support.cli import CMOVER, TIMEOUT
from support.snap import compare_trees
from support.tree import random_tree

from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import from_mapping
from cmover.embedded import hub as hubmod
from cmover.embedded import packing
from cmover.embedded import transport as _transport  # noqa: F401 (registers cmover-local://)
from cmover.engine.planner import PassOptions, plan


@pytest.fixture
def hub_running():
    """A started hub for this test (its own helper process and socket), stopped afterwards."""
    manager = hubmod.start_hub()
    try:
        yield
    finally:
        hubmod.stop_hub(manager)
        hubmod._closing = False  # the next test's hub serves again


def test_queued_messages_are_kept_compact_and_come_back_exactly():
    """The hub keeps a queued message packed (base64 body decoded, compressed with the common keys preset):
    what comes back is the message as kombu gave it, whatever its body encoding."""
    import base64

    body = json.dumps([[{"run_id": "copy-x", "src_root": "/s" * 200}, "d/e", None], {}, {}])
    msg = {"body": base64.b64encode(body.encode()).decode(), "content-type": "application/json",
           "headers": {"id": "t1", "argsrepr": "(<spec>, 'd/e', None)"},
           "properties": {"body_encoding": "base64", "delivery_tag": "t1"}}
    packed = packing.pack(msg)
    assert len(packed.data) < len(json.dumps(msg)) / 3
    assert packing.unpack(packed) == msg and packing.unpack(packed.data) == msg
    for other in ({**msg, "body": "not base64!"}, {**msg, "properties": {"body_encoding": "utf-8"}, "body": "x"},
                  {**msg, "body": base64.b64encode(b"\xff\xfe").decode()}):
        assert packing.unpack(packing.pack(other)) == other


def test_basic_get_reads_one_queue_of_the_hub(hub_running):
    """``Queue.get`` (AMQP basic_get) goes through Channel._get, not the consumer's _get_many. Before: it
    called ``Hub.get``, which does not exist, and every basic_get raised AttributeError."""
    name = "cmover.test.files"
    q = Queue(name, Exchange(name, type="direct"), routing_key=name)
    other = Queue("cmover.test.other", Exchange("cmover.test.other", type="direct"), routing_key="cmover.test.other")
    with Connection("cmover-local://localhost/") as conn:
        bound, bound_other = q(conn.default_channel), other(conn.default_channel)
        bound.declare()
        bound_other.declare()
        producer = conn.Producer(serializer="json")
        producer.publish({"n": 0}, exchange=other.exchange, routing_key=other.routing_key, declare=[other])
        for n in (1, 2):
            producer.publish({"n": n}, exchange=q.exchange, routing_key=q.routing_key, declare=[q])
        first = bound.get(no_ack=False, accept=["json"])
        assert first is not None and first.payload == {"n": 1}
        first.ack()
        second = bound.get(no_ack=True, accept=["json"])
        assert second is not None and second.payload == {"n": 2}
        assert bound.get(no_ack=True) is None  # empty: the other queue's message is not taken
        assert bound_other.get(no_ack=True, accept=["json"]).payload == {"n": 0}


def test_a_queue_beyond_its_memory_budget_spills_to_a_file_in_order(tmp_path):
    """A hub queue keeps up to its budget of message bytes in memory and the newer messages in its file:
    taken in the order put, bytes and text alike, the memory never far above the budget, the file emptied
    once everything in it was read back."""
    import random

    rng = random.Random(5)
    q = hubmod.SpillQueue(str(tmp_path / "q"), limit=1000)
    sent: list[bytes | str] = []
    got: list[bytes | str] = []
    for i in range(3000):
        m: bytes | str = os.urandom(rng.randrange(0, 300)) if i % 3 else f"{i} caf\xe9 " * rng.randrange(1, 9)
        q.append(m)
        sent.append(m)
        if rng.random() < 0.4:
            got.append(q.popleft())
        assert q.head_bytes <= 1000 + 300 * 4
    assert q.spilled > 0 and (tmp_path / "q").stat().st_size > 0
    while len(q):
        got.append(q.popleft())
    assert got == sent
    assert (tmp_path / "q").stat().st_size == 0
    with pytest.raises(IndexError):
        q.popleft()
    q.append(b"again")
    assert q.clear() == 1 and len(q) == 0


def test_hub_spills_queued_messages_under_the_given_directory_and_removes_them(tmp_path, monkeypatch):
    """Through the hub's proxy: messages past the memory budget wait in a file under the directory given to
    start_hub (the run's STATE_DIR), come back in order, and the hub's directory is gone after the run."""
    monkeypatch.setattr(hubmod, "MEMORY_BYTES", 4096)  # inherited by the hub process, forked at start
    manager = hubmod.start_hub(str(tmp_path / "state"))
    try:
        h = hubmod.hub()
        sent = [os.urandom(100) for _ in range(300)]
        for m in sent:
            h.put("cmover.test.dirs", packing.xmlrpc.client.Binary(m))
        (spill,) = (tmp_path / "state").iterdir()
        assert sum(f.stat().st_size for f in spill.iterdir()) > 200 * 100
        assert h.size("cmover.test.dirs") == 300
        got = [h.get_first(["cmover.test.dirs"])[1] for _ in range(300)]
        assert [g.data for g in got] == sent and h.get_first(["cmover.test.dirs"]) is None
    finally:
        hubmod.stop_hub(manager)
        hubmod._closing = False
    assert list((tmp_path / "state").iterdir()) == []


def test_held_hub_calls_arrive_in_order_with_the_next_call(hub_running):
    """A task's child counted in the ledger and its counters are held by the client and reach the hub, in the
    order made, in the round trip of its next call: the parent's done then finds the child counted (the run
    is not complete) and the totals complete. Only the calls whose results nobody waits for can be held."""
    ledger, stats = hubmod.HubLedger(), hubmod.HubStats()
    ledger.open_run("copy-held")
    ledger.enqueue("copy-held", "parent")
    assert ledger.begin("copy-held", "parent") == 1
    ledger.enqueue("copy-held", "child")
    stats.add("copy-held", Counter({"tasks": 1, "files_scanned": 7}))
    assert hubmod._held.calls  # nothing sent yet
    ledger.done("copy-held", "parent")
    assert not hubmod._held.calls
    assert ledger.outstanding("copy-held") == 1
    assert stats.totals("copy-held") == {"tasks": 1, "files_scanned": 7}
    stats.add("copy-held", Counter({"tasks": 1}))
    stats.flush()  # what a pool process that exits does
    assert stats.totals("copy-held") == {"tasks": 2, "files_scanned": 7}
    with pytest.raises(Exception):  # noqa: B017 (the manager's XML-RPC cannot carry the hub's ValueError itself)
        hubmod.hub()._proxy.batch([["done", ["copy-held", "child"]], ["outstanding", ["copy-held"]]])
    assert ledger.outstanding("copy-held") == 1


# -- a pool process lost mid-pass ------------------------------------------------------------------------


def _pool_processes(pid: int) -> list[int]:
    """The pool processes of embedded cmover ``pid``: its children with at most two threads (the main one and
    the one that closes idle pass roots, cmover.core.fsio); the hub has a thread per client besides its own.

    Children are listed per thread that forked them (the pool is forked by the worker thread).
    """
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            with open(f"/proc/{k}/status") as f:
                if re.search(r"\nThreads:\t[12]\n", f.read()):
                    out.append(k)
        except OSError:
            pass
    return out


def _copying(k: int, src: Path) -> bool:
    """Process ``k`` has a file of the source open: it runs a task."""
    try:
        return any(os.readlink(f"/proc/{k}/fd/{fd}").startswith(str(src) + "/") for fd in os.listdir(f"/proc/{k}/fd"))
    except OSError:
        return False


def _waiting_for_a_task(k: int) -> bool:
    """Process ``k`` is blocked reading the pool's task pipe: it holds the lock the pool's processes share."""
    try:
        with open(f"/proc/{k}/syscall") as f:
            call = f.read().split()
        return call[0] == "0" and os.readlink(f"/proc/{k}/fd/{int(call[1], 16)}").startswith("pipe:")
    except (OSError, IndexError, ValueError):
        return False


@pytest.mark.parametrize("victim", ["copying", "waiting"])
def test_pool_process_killed_mid_pass(tmp_path: Path, victim: str) -> None:
    """SIGKILL (as the OOM killer sends) of a pool process of `cmover copy` mid-pass: the pass completes and
    the trees compare identical. Before: a process killed while waiting for a task kept the pool's task
    lock for ever (no process took a task again), and a task lost with its process came back only after
    billiard's 10 s lost-worker timeout; either way `cmover copy` could wait for ever."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=21, n_files=1500, n_dirs=60, max_size=4096)
    for i in range(12):  # files that take a while to copy, so that a process is caught with one open
        (src / f"big{i}").write_bytes(os.urandom(24 << 20))
    cfg = tmp_path / "config.py"
    cfg.write_text("BATCH = 10\nINLINE_ENTRIES = 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(cfg)
    proc = subprocess.Popen([*CMOVER, "copy", "-q", "-j", "2", str(src), str(dst)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def chosen(k: int) -> bool:
        return _copying(k, src) if victim == "copying" else _waiting_for_a_task(k)

    killed = None
    deadline = time.monotonic() + 60
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        for k in _pool_processes(proc.pid):
            if chosen(k):
                os.kill(k, signal.SIGKILL)
                killed = k
                break
        time.sleep(0.0005)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, f"no pool process was {victim} during the pass; make it longer\n{err}"
    assert proc.returncode == 0, (out, err)
    assert f"pool process(es) {killed} of the embedded run died" in err, err
    assert compare_trees(src, dst) == []


# -- a session of several passes ----------------------------------------------------------------------------

_SESSION_SCRIPT = r"""
import json, sys
from cmover.core.passes import PassKind
from cmover.core.settings import from_mapping
from cmover.embedded.runner import EmbeddedSession
from cmover.engine.planner import PassOptions, create_target_root, plan, preflight

src, dst = sys.argv[1], sys.argv[2]
settings = from_mapping({"BATCH": 5, "INLINE_ENTRIES": 3})
out = []
with EmbeddedSession(2, settings) as session:
    for kind in (PassKind.COPY, PassKind.DELETE, PassKind.DIRTIME):
        spec = plan(kind, settings, src, dst, options=PassOptions())
        preflight(spec, create_target=True)
        if kind is PassKind.COPY:
            create_target_root(spec)
        result = session.run(spec)
        pool = sorted(p.pid for p in session._worker.controller.pool._pool._pool)
        out.append({"pass": kind.value, "state": result.state, "totals": result.totals, "pool": pool,
                    "failures": result.failure_count})
print(json.dumps({"passes": out, "hooks": "cmover.worker.hooks" in sys.modules}))
"""


def test_session_runs_passes_one_after_another_in_one_worker(tmp_path: Path) -> None:
    """An EmbeddedSession (what `cmover sync` uses) runs copy, delete and dirtime in one hub and one worker:
    the same pool processes serve every pass, each pass reports its own totals, and the trees end
    identical, directory times included. The worker imported the signal hooks (the app's include)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=22, n_files=300, n_dirs=30, max_size=4096)
    (dst / "gone" / "deeper").mkdir(parents=True)
    (dst / "gone" / "deeper" / "f").write_bytes(b"x")
    (dst / "extra").write_bytes(b"x")
    r = subprocess.run([sys.executable, "-c", _SESSION_SCRIPT, str(src), str(dst)], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["hooks"] is True
    copy, delete, dirtime = doc["passes"]
    assert [p["state"] for p in doc["passes"]] == ["complete"] * 3 and not any(p["failures"] for p in doc["passes"])
    assert copy["pool"] == delete["pool"] == dirtime["pool"] and len(copy["pool"]) == 2
    assert copy["totals"]["files_copied"] > 300 and "entries_deleted" not in copy["totals"]
    assert delete["totals"]["entries_deleted"] == 4 and "files_copied" not in delete["totals"]
    assert dirtime["totals"]["dir_times_set"] == dirtime["totals"]["dirs"] > 30
    assert compare_trees(src, dst, dir_times=True) == []


_SMALL_PASS_SCRIPT = r"""
import json, sys
from cmover.core.passes import PassKind
from cmover.core.settings import from_mapping
from cmover.embedded.runner import EmbeddedSession
from cmover.engine.planner import PassOptions, create_target_root, plan, preflight

src, dst = sys.argv[1], sys.argv[2]
settings = from_mapping(json.loads(sys.argv[3]))
with EmbeddedSession(2, settings) as session:
    spec = plan(PassKind.COPY, settings, src, dst, options=PassOptions())
    preflight(spec, create_target=True)
    create_target_root(spec)
    result = session.run(spec)
    worker = session._worker is not None
print(json.dumps({"state": result.state, "totals": result.totals, "worker": worker,
                  "celery": sorted({m.split(".")[0] for m in sys.modules} & {"celery", "kombu", "billiard"})}))
"""


def test_a_pass_its_root_task_completes_starts_no_worker_and_imports_no_celery(tmp_path: Path) -> None:
    """A small tree is copied by the root directory task, which the session's own process runs: no worker, no
    pool, and not even Celery, kombu or billiard imported (a tenth of a second of a small pass). That task
    walks inline up to ROOT_ENTRIES_FACTOR times the pass's INLINE_ENTRIES: with INLINE_ENTRIES = 3 a tree
    of ~45 entries is still its alone (a worker's task would have published ten subdirectories)."""
    from cmover.embedded.runner import ROOT_ENTRIES_FACTOR

    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=23, n_files=40, n_dirs=4, max_size=4096)
    entries = sum(1 + len(d) + len(f) for _, d, f in os.walk(src))
    assert 3 < entries <= 3 * ROOT_ENTRIES_FACTOR
    r = subprocess.run([sys.executable, "-c", _SMALL_PASS_SCRIPT, str(src), str(dst), '{"INLINE_ENTRIES": 3}'],
                       capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "complete" and doc["totals"]["tasks"] == 1 and doc["totals"]["files_copied"] >= 40
    assert doc["worker"] is False and doc["celery"] == []
    assert compare_trees(src, dst) == []


def test_the_root_budget_scales_the_pass_budget_and_keeps_its_zeros() -> None:
    """The root task the runner runs gets ROOT_ENTRIES_FACTOR times the pass's entries for at most
    ROOT_SECONDS; a pass configured with no inline walking (0 entries or 0 seconds) gets none there either."""
    from cmover.embedded.runner import ROOT_ENTRIES_FACTOR, ROOT_SECONDS, root_budget

    def spec(**kw: object) -> PassSpec:
        return plan(PassKind.COPY, from_mapping({k.upper(): v for k, v in kw.items()}), "/a", "/b",
                    options=PassOptions())

    assert root_budget(spec()) == (2000 * ROOT_ENTRIES_FACTOR, ROOT_SECONDS)
    assert root_budget(spec(inline_entries=0)) == (0, ROOT_SECONDS)
    assert root_budget(spec(inline_seconds=0)) == (2000 * ROOT_ENTRIES_FACTOR, 0)
    assert root_budget(spec(inline_seconds=0.1)) == (2000 * ROOT_ENTRIES_FACTOR, 0.1)
