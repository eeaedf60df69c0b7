"""The embedded mode's hub, pool and runner: messages handed out and given back, a pool process lost mid-pass."""

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
from support.cli import CMOVER, TIMEOUT
from support.snap import compare_trees
from support.tree import random_tree

from cmover.core.idle import IdleBoard
from cmover.core.passes import PassKind, PassSpec
from cmover.embedded import hub as hubmod
from cmover.embedded import packing, wire


@pytest.fixture
def hub_running():
    """A started hub for this test (its own helper process and socket), stopped afterwards."""
    process = hubmod.start_hub()
    try:
        yield
    finally:
        hubmod.stop_hub(process)


def test_queued_messages_are_kept_compact_and_come_back_exactly():
    """The hub keeps a queued task message packed (compressed, a pass spec's keys preset): what comes back is
    the message as sent, and anything else is refused with ValueError, not taken for a message."""
    spec = PassSpec(run_id="copy-x", kind=PassKind.COPY, src_root=b"/s" * 200, dst_root=b"/d")
    msg = ("cmover.copy.files", [spec.as_dict(), "d/e", ["f1", "caf\u00e9"], None], "t1")
    packed = packing.pack(msg)
    assert isinstance(packed, bytes) and len(packed) < len(json.dumps(msg)) / 3
    assert packing.unpack(packed) == msg
    for junk in (b"", b"not zlib", packing.pack(("n", "not a list", "t")), packing.pack((1, [], "t"))):
        with pytest.raises(ValueError):
            packing.unpack(junk)


def test_the_hub_wire_carries_json_values_and_bytes_exactly(hub_running):
    """What crosses the hub's connections comes back as sent: bytes as bytes (also inside lists and dicts),
    integers beyond 64 bits, names that are not UTF-8 (surrogate-escaped); a value JSON cannot hold is a
    TypeError on the sender's side, and a bad call is the caller's error, not a hung connection."""
    name = os.fsdecode(b"caf\xe9-\xff")
    value = [b"\0\xff" * 300, {"k": b"", "n": 1 << 70, "\u00e9": [name, None, -1]}, "", 2.5]
    assert wire.loads(wire.dumps(value)) == value
    assert wire.loads(wire.dumps({"\0": "x", "y": 1})) == {"\0": "x", "y": 1}  # only a one-key dict is bytes
    with pytest.raises(TypeError):
        wire.dumps([object()])
    h = hubmod.hub()
    h.put("cmover.test.files", value[0])
    assert h.take(["cmover.test.files"], 0.0, "p")[1] == value[0]
    with pytest.raises(wire.HubError, match=r"TypeError: .*take\(\) missing"):
        h.take()  # wrong arity: the hub answers with the error
    assert h.size("cmover.test.files") == 0  # and the connection still works


def test_a_message_handed_out_returns_unless_acknowledged(hub_running):
    """A message taken by a pool process stays the hub's: acknowledged, it is gone; given back (requeue), or
    its process dead (requeue_owner), it is first in its queue again; a dead process is handed nothing more.
    Queues are asked in the order given; an empty wait returns None."""
    h = hubmod.hub()
    for n in (1, 2, 3):
        h.put("cmover.test.files", b"m%d" % n)
    h.put("cmover.test.dirs", b"d")
    tag, payload = h.take(["cmover.test.dirs", "cmover.test.files"], 0.0, "p1")
    assert payload == b"d"
    h.ack(tag)
    tag1, payload = h.take(["cmover.test.dirs", "cmover.test.files"], 0.0, "p1")
    assert payload == b"m1"
    h.requeue(tag1)
    tag1, payload = h.take(["cmover.test.files"], 0.0, "p1")
    tag2, payload2 = h.take(["cmover.test.files"], 0.0, "p2")
    assert (payload, payload2) == (b"m1", b"m2")
    assert h.requeue_owner("p1") == 1 and h.requeue_owner("p1") == 0
    assert h.take(["cmover.test.files"], 0.0, "p1") is None  # dead: handed nothing
    h.ack(tag1)  # a late acknowledgement of a message given back changes nothing
    got = [h.take(["cmover.test.files"], 0.0, "p3") for _ in range(2)]
    assert [g[1] for g in got] == [b"m1", b"m3"]
    assert h.take(["cmover.test.files"], 0.05, "p3") is None
    assert h.size("cmover.test.files") == 0


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
    process = hubmod.start_hub(str(tmp_path / "state"))
    try:
        h = hubmod.hub()
        sent = [os.urandom(100) for _ in range(300)]
        for m in sent:
            h.put("cmover.test.dirs", m)
        (spill,) = (tmp_path / "state").iterdir()
        assert sum(f.stat().st_size for f in spill.iterdir()) > 200 * 100
        assert h.size("cmover.test.dirs") == 300
        got = [h.take(["cmover.test.dirs"], 0.0, "p")[1] for _ in range(300)]
        assert got == sent and h.take(["cmover.test.dirs"], 0.0, "p") is None
    finally:
        hubmod.stop_hub(process)
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
    with pytest.raises(wire.HubError, match=r"ValueError: done cannot be held"):
        hubmod.hub().call("batch", [[["done", ["copy-held", "child"]], ["outstanding", ["copy-held"]]]])
    assert ledger.outstanding("copy-held") == 1


def test_the_hub_answers_only_processes_of_its_own_user():
    """The hub's connections are checked by the kernel's word on the peer (SO_PEERCRED), not by a shared key: a
    process of this user is answered, one of another user is not, even where it can reach the socket."""
    import socket

    a, b = socket.socketpair()
    with a, b:
        assert wire.same_user(a)
    if os.getuid() != 0:
        pytest.skip("another user's process needs root to be made")
    import shutil
    import tempfile

    where = tempfile.mkdtemp()  # under /tmp: a directory the other user can reach (pytest's are private)
    os.chmod(where, 0o777)
    address = os.path.join(where, "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        os.chmod(address, 0o777)
        listener.listen(1)
        listener.settimeout(30)
        pid = os.fork()
        if pid == 0:  # another user (nobody) that connects
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                    c.connect(address)
                    c.recv(1)
            finally:
                os._exit(0)
        conn, _ = listener.accept()
        with conn:
            assert not wire.same_user(conn)
        os.waitpid(pid, 0)
    shutil.rmtree(where)


@pytest.mark.parametrize("spill_under", [False, True])
def test_the_hub_ends_with_its_runner(tmp_path, spill_under):
    """A runner killed with SIGKILL (nobody left to stop its hub) takes its hub with it: no process is left
    behind holding the run's queues, and no file: the socket's directory and the spill directory (under
    STATE_DIR, or in the socket's directory) are gone too."""
    sockets, state = tmp_path / "tmp", tmp_path / "state"
    sockets.mkdir()
    code = ("import sys\nfrom cmover.embedded import hub\np = hub.start_hub(sys.argv[1] or None)\n"
            "print(p.pid, flush=True)\nsys.stdin.read()\n")
    runner = subprocess.Popen([sys.executable, "-c", code, str(state) if spill_under else ""], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(sockets)})
    try:
        hub_pid = int(runner.stdout.readline())
        assert hubmod.wire is wire and os.path.exists(f"/proc/{hub_pid}")
        made = [p.name for p in sockets.iterdir()] + ([p.name for p in state.iterdir()] if spill_under else [])
        assert len(made) == (2 if spill_under else 1), made  # cmover-*, and cmover-hub-* under STATE_DIR
        runner.kill()
        runner.wait()
        deadline = time.monotonic() + 10
        while _alive(hub_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(hub_pid), "the hub outlived its runner"
        assert list(sockets.iterdir()) == [] and (not spill_under or list(state.iterdir()) == [])
    finally:
        runner.kill()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
    """Process ``k`` is blocked reading its connection to the hub (read or recvfrom): it waits there for a message."""
    try:
        with open(f"/proc/{k}/syscall") as f:
            call = f.read().split()
        return call[0] in ("0", "45") and os.readlink(f"/proc/{k}/fd/{int(call[1], 16)}").startswith("socket:")
    except (OSError, IndexError, ValueError):
        return False


@pytest.mark.parametrize("victim", ["copying", "waiting"])
def test_pool_process_killed_mid_pass(tmp_path: Path, victim: str) -> None:
    """SIGKILL (as the OOM killer sends) of a pool process of `cmover copy` mid-pass, while it copies or while
    it waits in the hub for a message: the pass completes, says which process died, and the trees compare
    identical (the message it held went back to its queue; a new process took its place)."""
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


def test_a_pool_whose_processes_die_as_they_start_stops_the_pass(hub_running, monkeypatch):
    """Pool processes that die as they start, holding no message (a fault at start), are replaced, and after
    three such deaths in a row the pass stops with one clear error instead of forking for ever."""
    from cmover.core.errors import FatalError
    from cmover.embedded import pool as poolmod

    monkeypatch.setattr(poolmod, "_serve", lambda owner, parent: os._exit(3))  # inherited by the fork
    pool = poolmod.Pool(1)
    pool.start()
    deadline = time.monotonic() + 10
    try:
        with pytest.raises(FatalError, match="die as they start"):
            while time.monotonic() < deadline:
                pool.lost()
                time.sleep(0.01)
    finally:
        pool.stop(idle=True)
    assert pool._early == 3


#: `cmover` with the fault seams of tests/faults/seams.py installed first (CMFAULT_POISON: copying that entry
#: kills its process with SIGKILL, every time).
_WITH_SEAMS = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import seams
seams.install()
from cmover.cli import main
sys.exit(main())
"""


def test_a_task_that_kills_every_pool_process_is_given_up(tmp_path: Path) -> None:
    """A poison message in the embedded mode (copying ``poison/kill-me.dat`` kills its pool process every
    time): the directory task holding it kills MAX_DELIVERIES = 3 processes, each replaced, and is given up at
    its fourth delivery (one failure, listed); the rest of the pass completes, and the trees differ by that
    directory's files alone. Deaths of processes holding a message are not taken for a pool that cannot
    start."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=24, n_files=300, n_dirs=20, max_size=2048)
    (src / "poison").mkdir()
    (src / "poison" / "kill-me.dat").write_bytes(b"poison" * 100)
    cfg = tmp_path / "config.py"
    cfg.write_text("INLINE_ENTRIES = 0\nMAX_DELIVERIES = 3\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMOVER_", "CMFAULT_"))}
    env.update(CMOVER_CONFIG=str(cfg), CMFAULT_POISON="poison/kill-me.dat")
    seams = Path(__file__).resolve().parent / "faults"
    r = subprocess.run([sys.executable, "-c", _WITH_SEAMS, str(seams), "copy", "-j", "2", str(src), str(dst)],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.count("kills its worker process") == 3, r.stderr
    assert r.stderr.count("of the embedded run died; their tasks run again") == 3, r.stderr
    assert "gave up after 3 deliveries" in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert "die as they start" not in r.stderr
    differ = {d.split(":")[0] for d in compare_trees(src, dst)}
    assert differ and all("poison" in d for d in differ), differ


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
        pool = sorted(session.pool.procs)
        out.append({"pass": kind.value, "state": result.state, "totals": result.totals, "pool": pool,
                    "failures": result.failure_count})
print(json.dumps({"passes": out,
                  "celery": sorted({m.split(".")[0] for m in sys.modules} & {"celery", "kombu", "billiard"})}))
"""


def test_session_runs_passes_one_after_another_in_one_pool(tmp_path: Path) -> None:
    """An EmbeddedSession (what `cmover sync` uses) runs copy, delete and dirtime in one hub and one pool:
    the same pool processes serve every pass, each pass reports its own totals, and the trees end
    identical, directory times included. Celery, kombu and billiard are never imported."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=22, n_files=300, n_dirs=30, max_size=4096)
    (dst / "gone" / "deeper").mkdir(parents=True)
    (dst / "gone" / "deeper" / "f").write_bytes(b"x")
    (dst / "extra").write_bytes(b"x")
    r = subprocess.run([sys.executable, "-c", _SESSION_SCRIPT, str(src), str(dst)], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["celery"] == []
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
    worker = bool(session.pool.procs)
print(json.dumps({"state": result.state, "totals": result.totals, "worker": worker,
                  "celery": sorted({m.split(".")[0] for m in sys.modules} & {"celery", "kombu", "billiard"})}))
"""


def test_a_pass_its_root_task_completes_starts_no_pool(tmp_path: Path) -> None:
    """A pass over a small tree is run by the root directory task, which the session's own process runs: no
    pool process is forked when it is done within POOL_AFTER (the no-change pass over 40 files here; the copy
    before it may take longer on a loaded machine), and, as in every embedded pass, neither Celery, kombu nor
    billiard is imported."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=23, n_files=40, n_dirs=4, max_size=4096)
    docs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _SMALL_PASS_SCRIPT, str(src), str(dst), "{}"],
                           capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        docs.append(json.loads(r.stdout))
    copy, again = docs
    assert copy["state"] == "complete" and copy["totals"]["files_copied"] >= 40 and copy["celery"] == []
    assert again["state"] == "complete" and again["totals"]["tasks"] == 1 and again["totals"]["files_scanned"] >= 40
    assert again["worker"] is False and again["celery"] == []
    assert compare_trees(src, dst) == []


def test_the_idle_board_is_shared_with_forked_processes_and_each_wait_is_claimed_once():
    """A pool process's byte, set after fork, is seen by the runner; one claim per waiting process."""
    board = IdleBoard(3)
    assert not board.claim()
    pid = os.fork()
    if pid == 0:  # the child: slots 0 and 2 wait
        board.waiting(0)
        board.waiting(2)
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.waiting_count() == 2
    assert board.claim() and board.claim() and not board.claim()
    board.waiting(1)
    assert board.anyone_waits() and board.anyone_waits()  # asking claims nothing
    board.busy(1)
    assert not board.claim() and not board.anyone_waits()


def test_a_big_subtree_spreads_over_the_pool_within_the_inline_budget(tmp_path: Path) -> None:
    """With an inline budget that would let the root task walk the whole tree alone, the pool is forked once
    the root task has walked POOL_AFTER_ENTRIES, and its processes are handed the directories still to walk:
    more than one task runs, and the copy is exact."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in range(60):
        (src / f"d{d:02d}").mkdir(parents=True)
        for f in range(40):
            (src / f"d{d:02d}" / f"f{f:02d}").write_bytes(b"%d" % f)
    settings = json.dumps({"INLINE_ENTRIES": 10**6, "INLINE_SECONDS": 3600})
    r = subprocess.run([sys.executable, "-c", _SMALL_PASS_SCRIPT, str(src), str(dst), settings],
                       capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "complete" and doc["worker"] is True and doc["totals"]["tasks"] > 1
    assert doc["totals"]["files_copied"] == 2400 and compare_trees(src, dst) == []


_GROUPS_SCRIPT = r"""
import json, sys
from cmover.core.passes import PassKind
from cmover.core.settings import from_mapping
from cmover.embedded.runner import EmbeddedSession
from cmover.engine.planner import PassOptions, create_target_root, plan, preflight

src, dst = sys.argv[1], sys.argv[2]
settings = from_mapping({"INLINE_ENTRIES": 150, "INLINE_SECONDS": 3600})
out = []
with EmbeddedSession(2, settings) as session:
    for kind in (PassKind.COPY, PassKind.DIRTIME, PassKind.VERIFY):
        spec = plan(kind, settings, src, dst, options=PassOptions())
        preflight(spec, create_target=True)
        if kind is PassKind.COPY:
            create_target_root(spec)
        result = session.run(spec)
        out.append({"pass": kind.value, "state": result.state, "totals": result.totals,
                    "failures": result.failure_count, "differences": len(result.extra.get("differences", [[]])[0])})
print(json.dumps(out))
"""


def test_many_small_directories_go_out_in_groups_of_a_budget(tmp_path: Path) -> None:
    """A tree of 3 directories of 100 directories of 2 files each, an inline budget of 150 entries: past it, a
    task hands the directories it has not reached out in jobs of about a budget each (75 directories of 2
    entries), not one per directory; the copy, dirtime and verify passes run far fewer tasks than there are
    directories, and the trees end identical, directory times included, with nothing found different."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for top in range(3):
        for d in range(100):
            leaf = src / f"t{top}" / f"d{d:03d}"
            leaf.mkdir(parents=True)
            for f in range(2):
                (leaf / f"f{f}").write_bytes(b"%d" % f)
    r = subprocess.run([sys.executable, "-c", _GROUPS_SCRIPT, str(src), str(dst)], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    copy, dirtime, verify = json.loads(r.stdout)
    for p in (copy, dirtime, verify):
        assert p["state"] == "complete" and p["failures"] == 0, p
        assert 1 < p["totals"]["tasks"] < 100, p  # 304 directories
    assert copy["totals"]["files_copied"] == 600 and copy["totals"]["dirs"] == 304
    assert dirtime["totals"]["dir_times_set"] == 304 and verify["differences"] == 0
    assert compare_trees(src, dst) == []


def test_a_failing_task_imports_no_kombu_where_none_is_loaded() -> None:
    """The error classes a task's failure is matched against (broker trouble: requeue) name kombu's only where
    kombu is loaded: an embedded process, which never imports it, does not import it for a task that failed."""
    code = ("import sys\nfrom cmover.worker.taskbase import _broker_errors\n"
            "before = _broker_errors()\nloaded = 'kombu' in sys.modules\n"
            "import kombu.exceptions\n"
            "print(before == (ConnectionError,), loaded, kombu.exceptions.OperationalError in _broker_errors())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "True"]


def _exits_with(how: str) -> None:
    if how == "return":
        return
    if how == "exit 3":
        raise SystemExit(3)
    if how == "exit None":
        sys.exit()
    if how == "exit text":
        raise SystemExit("bye")
    if how == "raise":
        raise RuntimeError("boom in the child")
    if how == "stdin":
        print(repr(os.read(0, 10)), flush=True)  # /dev/null: b''
        return
    time.sleep(30)


@pytest.mark.parametrize("how, code", [("return", 0), ("exit 3", 3), ("exit None", 0), ("exit text", 1),
                                       ("raise", 1), ("stdin", 0)])
def test_a_forked_function_ends_its_process_with_its_exit_code(capfd, how: str, code: int) -> None:
    """Forked: the child's exit code is 0 on return, a SystemExit's code (1 for a message), 1 after the traceback
    of any other exception; it reads /dev/null on standard input, and never comes back into the caller."""
    from cmover.embedded.forked import Forked

    child = Forked(_exits_with, (how,), "test-child")
    child.start()
    assert child.pid > 0 and child.pid != os.getpid()
    child.join(TIMEOUT)
    assert child.exitcode == code and not child.is_alive()
    out, err = capfd.readouterr()
    if how == "raise":
        assert "Process test-child:" in err and "RuntimeError: boom in the child" in err, err
    else:
        assert "Traceback" not in err, err
    assert out == ("b''\n" if how == "stdin" else ""), out
    with pytest.raises(ChildProcessError):  # reaped
        os.waitpid(child.pid, os.WNOHANG)


def test_a_forked_process_can_be_waited_for_with_a_bound_and_killed() -> None:
    """join(timeout) returns after about the timeout while the child runs; a SIGKILLed child's exit code is -9."""
    from cmover.embedded.forked import Forked

    child = Forked(_exits_with, ("sleep",))
    child.start()
    t0 = time.monotonic()
    child.join(0.3)
    waited = time.monotonic() - t0
    assert child.is_alive() and child.exitcode is None
    assert 0.25 <= waited < 5, waited
    os.kill(child.pid, signal.SIGKILL)
    child.join(TIMEOUT)
    assert child.exitcode == -signal.SIGKILL
    child.join()  # once ended: returns at once, whatever the bound


def test_an_embedded_pass_imports_no_multiprocessing(tmp_path: Path) -> None:
    """The embedded command forks its hub and pool itself (cmover.embedded.forked): a copy that starts both
    loads neither multiprocessing nor pickle (their import was 5 ms of every command's start)."""
    src = tmp_path / "src"
    random_tree(src, seed=21, n_files=300, n_dirs=30, max_size=1024)
    # One task per directory: the pool runs them.
    (tmp_path / "config.py").write_text(f"INLINE_ENTRIES = 0\nSTATE_DIR = {str(tmp_path / 'state')!r}\n")
    # -X importtime lists every module the command imports (it ends with os._exit: no code runs after it).
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "cmover", "copy", "-q", "-j", "2", str(src),
                        str(tmp_path / "dst")], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "cmover.embedded.pool" in imported and "cmover.worker.bodies" in imported
    assert sorted(m for m in imported if m.split(".")[0] in ("multiprocessing", "pickle")) == []
    assert compare_trees(src, tmp_path / "dst") == []


def test_the_hub_socket_goes_under_tmpdir_else_tmp(tmp_path: Path, monkeypatch) -> None:
    """The hub's private socket directory (mode 0700) is made under $TMPDIR, and under /tmp when $TMPDIR cannot
    hold one; a run with such a $TMPDIR works and leaves no directory behind."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    made = hubmod._socket_dir()
    assert os.path.dirname(made) == str(tmp_path) and os.stat(made).st_mode & 0o777 == 0o700
    os.rmdir(made)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    made = hubmod._socket_dir()
    assert os.path.dirname(made) == "/tmp" and os.stat(made).st_mode & 0o777 == 0o700
    os.rmdir(made)

    src = tmp_path / "src"
    random_tree(src, seed=22, n_files=20, n_dirs=3, max_size=100)
    before = {p for p in os.listdir("/tmp") if p.startswith("cmover-")}
    r = subprocess.run([*CMOVER, "copy", "-q", str(src), str(tmp_path / "dst")], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path / "missing")))
    assert r.returncode == 0, r.stderr
    assert compare_trees(src, tmp_path / "dst") == []
    assert {p for p in os.listdir("/tmp") if p.startswith("cmover-")} <= before


#: `cmover` as its console script runs it, with a line on stderr for every import (in this process or a pool
#: process forked from it) of a module a copy pass has no use for.
_WATCHED_IMPORTS = """
import sys
UNNEEDED = {"pathlib", "runpy", "urllib", "celery", "kombu", "billiard", "rich", "cmover.journal.local",
            "cmover.journal.watch", "cmover.lustre.llapi", "cmover.engine.verifypass", "cmover.ops.broker"}
class Hooks:
    def find_spec(self, name, path=None, target=None):
        if name in UNNEEDED:
            sys.stderr.write(f"imported {name}\\n")
        return None
sys.meta_path.insert(0, Hooks())
from cmover.cli import main
sys.exit(main())
"""


def test_an_embedded_copy_imports_only_what_it_uses(tmp_path: Path) -> None:
    """A copy pass, then a no-change pass, through the command line, with config.py read (a setting computed
    with os.path, the file's own __file__): neither the command nor its pool imports what only other commands
    use (pathlib, urllib.parse and runpy were 10 ms of every command's start), and the trees end identical."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=24, n_files=600, n_dirs=30, max_size=1024)
    cfg = tmp_path / "config.py"
    cfg.write_text("import os\nLOG_DIR = os.path.join(os.path.dirname(__file__), 'log')\nBATCH = 20\n")
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _WATCHED_IMPORTS, "-v", "--config", str(cfg), "copy", "-j", "2",
                            "--embedded", str(src), str(dst)], capture_output=True, text=True, timeout=TIMEOUT,
                           cwd=tmp_path)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "imported " not in r.stderr, r.stderr
        assert str(cfg) in r.stderr  # -v names the file read: this config, not the defaults
    assert compare_trees(src, dst) == []
