"""A huge file copied in chunks by several workers, one of them killed mid-file (see cmover/engine/chunks.py).

The target name must never hold an incomplete file: it is absent (the part file ``.cmover.<hash>.part``
is there instead) until the last chunk renames the finished part over it, with the source's data and
mtime. A watcher thread checks this every 50 ms during the whole run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.deploy import DIRS_Q, FILES_Q, DeploymentSet, Worker, explain

pytestmark = pytest.mark.integration

MiB = 1 << 20
BIG_SIZE = 320 * MiB + 12345  # the last chunk is short
CHUNK_SIZE = 1 * MiB  # the minimum: many chunk tasks
CHUNK_THRESHOLD = 8 * MiB
N_CHUNKS = -(-BIG_SIZE // CHUNK_SIZE)
BIG_NAME = "huge.bin"
BIG_MTIME_NS = 1_234_567_890_123_456_789  # distinctive: nothing sets this mtime by accident
BIG_ATIME_NS = 1_200_000_000_987_654_321
BIG_MODE = 0o640
BIG_OWNER = (1234, 2345)
PART_RE = re.compile(r"\.cmover\.[0-9a-f]{16}\.part")
_CHUNK_DONE_RE = re.compile(r"Task cmover\.copy\.chunk\[[0-9a-f-]+\] succeeded")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(16 * MiB):
            h.update(piece)
    return h.hexdigest()


def _build_source(src: Path) -> str:
    """The huge file (random data, distinctive owner, mode, xattr and times) and two small files; its sha256."""
    src.mkdir()
    h = hashlib.sha256()
    big = src / BIG_NAME
    with open(big, "wb") as f:
        left = BIG_SIZE
        while left:
            piece = os.urandom(min(16 * MiB, left))
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    os.chown(big, *BIG_OWNER)
    os.chmod(big, BIG_MODE)
    os.setxattr(big, b"user.cmover-test", b"chunked \xff")
    os.utime(big, ns=(BIG_ATIME_NS, BIG_MTIME_NS))
    (src / "small-a").write_bytes(b"a" * 1000)
    (src / "small-b").write_bytes(os.urandom(5000))
    return h.hexdigest()


def _chunks_done(*workers: Worker) -> int:
    return sum(len(_CHUNK_DONE_RE.findall(w.log_text())) for w in workers)


@dataclass
class Watcher:
    """Polls the target directory every 50 ms: what the target name and the part files looked like."""

    dst: Path
    early: list[str] = field(default_factory=list)  # the name seen with another size or mtime
    polls: int = 0
    part_without_name: int = 0  # polls that saw a part file and no target name
    appeared_at: float | None = None
    hash_at_appearance: str | None = None
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chunk-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, then look once more: the state the pass left (a completion can be noticed within
        less than one poll interval of the last chunk's rename)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "watcher thread hangs"
        if self.error is None:
            self._poll()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._poll()
                self._stop.wait(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _poll(self) -> None:
        self.polls += 1
        target = self.dst / BIG_NAME
        try:
            st = os.stat(target)
        except FileNotFoundError:
            if any(PART_RE.fullmatch(n) for n in os.listdir(self.dst)):
                self.part_without_name += 1
            return
        if st.st_size != BIG_SIZE or st.st_mtime_ns != BIG_MTIME_NS:
            self.early.append(f"poll {self.polls}: size {st.st_size}, mtime_ns {st.st_mtime_ns}")
        if self.appeared_at is None:
            self.appeared_at = time.monotonic()
            # Whatever shows the name must already be the whole file (nothing writes to it after the rename).
            self.hash_at_appearance = _sha256(target)


@pytest.mark.parametrize("crash", ["w1-node", "w2-node", "w2-pool-child"])
def test_chunked_copy_survives_sigkill_mid_file(deployments: DeploymentSet, tmp_path: Path, crash: str) -> None:
    """A 320 MiB file in 1 MiB chunks over w1 (dirs+files) and w2 (files), -c 2 each. After 20% of the
    chunks are done, SIGKILL all of w1 (a node crash; in practice while its directory task still publishes
    chunk tasks, so the split is redone by w3), all of w2 (a node crash losing only chunk tasks) or one
    pool child of w2; a replacement worker w3 joins. The target name appears only once, whole, with the
    source's mtime; the result is byte-identical."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src_hash = _build_source(src)
    dst.mkdir()
    src_st = os.stat(src / BIG_NAME)
    assert src_st.st_blocks * 512 >= CHUNK_THRESHOLD, "the huge file is sparse: it would not be chunked"

    # Workers report after every task here (REPORT_INTERVAL below any task's length): the counts a killed
    # process had not reported yet are lost by design (at most one interval of its work), and this test
    # accounts for every chunk exactly.
    dep = deployments.new(f"chunk_{crash.replace('-', '_')}", src, dst,
                          CHUNK_THRESHOLD=CHUNK_THRESHOLD, CHUNK_SIZE=CHUNK_SIZE, REPORT_INTERVAL=0.001)
    dep.init_broker()
    w1 = dep.start_worker("w1", (DIRS_Q, FILES_Q))
    w2 = dep.start_worker("w2", (FILES_Q,))
    w1.wait_ready()
    w2.wait_ready()

    watcher = Watcher(dst)
    watcher.start()
    try:
        run_id = dep.start_pass()
        t0 = time.monotonic()
        # `cmover status` takes a few hundred ms and this disk copies a chunk in a few ms: count the chunk
        # tasks done in the worker logs instead (the counters are recorded before the log line).
        deadline = t0 + 60
        while (done := _chunks_done(w1, w2)) < N_CHUNKS // 5:
            assert time.monotonic() < deadline, f"{done} chunks done after 60 s\n{dep.status(run_id)}"
            time.sleep(0.005)
        if crash.endswith("-node"):
            victim = w1 if crash == "w1-node" else w2
            victim.kill_group()  # main process and pool at once, mid-chunk
            victim.proc.wait(10)
        else:
            children = w2.pool_children()
            assert children, "w2 has no pool children"
            os.kill(children[0], signal.SIGKILL)  # its chunk task is redelivered
        killed_at = time.monotonic() - t0
        # Mid-file: the name is still absent.
        assert not (dst / BIG_NAME).exists(), f"the file was finished before the kill ({done} chunks seen)"
        w3 = dep.start_worker("w3", (DIRS_Q, FILES_Q))
        w3.wait_ready()

        final = dep.wait_complete(run_id, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        watcher.stop()
    logs = "\n".join(f"--- {w.node} ({w.log})\n{w.log_text()[-3000:]}" for w in dep.workers)

    assert watcher.error is None, f"watcher failed: {watcher.error!r}"
    assert watcher.early == [], f"target name seen before the copy was complete: {watcher.early[:10]}\n{logs}"
    assert watcher.part_without_name > 0, "never saw the part file in place of the target name"
    assert watcher.appeared_at is not None, "target name absent when the pass was complete"
    assert watcher.hash_at_appearance == src_hash, "target name appeared with other data than the source's"

    # The result, at the first "complete" reading.
    t = final["totals"]
    target = dst / BIG_NAME
    d_st = os.stat(target)
    assert d_st.st_size == BIG_SIZE
    assert d_st.st_mtime_ns == BIG_MTIME_NS
    assert (d_st.st_mode, d_st.st_uid, d_st.st_gid) == (src_st.st_mode, src_st.st_uid, src_st.st_gid)
    assert os.getxattr(target, b"user.cmover-test") == b"chunked \xff"
    assert _sha256(target) == src_hash, f"target differs from source\n{logs}"
    for name in ("small-a", "small-b"):
        assert (dst / name).read_bytes() == (src / name).read_bytes(), name
    leftovers = [n for n in os.listdir(dst) if n.startswith(".cmover.")]
    assert leftovers == [], f"temporary files left: {leftovers}\n{logs}"
    assert sorted(os.listdir(dst)) == sorted(os.listdir(src))

    if t.get("failed", 0) or t.get("dead_lettered", 0):
        e = dep.cmover("errors", "--run", run_id)
        pytest.fail(f"failures in {t}:\n{e.stdout[-3000:]}{e.stderr[-1000:]}\n{logs}")
    assert t.get("files_chunked", 0) >= 1, t
    # A killed chunk task's work is not counted; its redelivery writes and counts it again. Only a chunk
    # killed after marking itself done, whose file another chunk finished before the redelivery, counts
    # nowhere: at most one per killed pool process (2 for the node, 1 for the pool child).
    killed = 2 if crash.endswith("-node") else 1
    assert t.get("chunks_copied", 0) >= N_CHUNKS - killed, (N_CHUNKS, t)
    # The huge file counts as copied once, when finished. A killed directory task (the split is slow to
    # publish hundreds of chunk tasks: w1 may die in it) is redone and finds some files done already.
    assert t.get("files_copied", 0) + t.get("files_skipped", 0) >= 3, t
    assert final["outstanding"] == 0
    if crash == "w2-pool-child":
        assert w1.alive() and w2.alive(), "a worker died with w2's pool child"
        # The main process notices a dead child only after a while (seconds), maybe after the pass ended.
        deadline = time.monotonic() + 20
        while not re.search(r"signal 9|SIGKILL", w2.log_text()):
            assert time.monotonic() < deadline, "w2 did not notice its pool child's death"
            time.sleep(0.2)
    print(f"\n[{crash}] {N_CHUNKS} chunks, killed after {done} chunks ({killed_at:.2f} s); "
          f"complete {elapsed:.1f} s after start; "
          f"watcher polls {watcher.polls}, part-only {watcher.part_without_name}; totals {json.dumps(t)}")

    # A later pass agrees: nothing left to copy.
    r = dep.cmover("start", "copy", "--wait", "--json", timeout=180)
    assert r.returncode == 0, explain(r)
    again = json.loads(r.stdout)["totals"]
    assert again.get("files_copied", 0) == 0, again
    assert again.get("files_chunked", 0) == 0, again
    assert again.get("chunks_copied", 0) == 0, again
    assert again.get("failed", 0) == 0, again
