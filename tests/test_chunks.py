"""Chunked copies of huge files (cmover.chunks) driven through the engine, with one shared run ledger.

The tests run the split, then the chunk jobs in chosen orders, as separate tasks would: the target name
must appear only complete, with the source's mtime, and every failure mode must leave no complete-looking
file behind.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from cmover.chunks import MAX_CHUNKS, ChunkSpec, aligned, chunk_geometry, part_name
from cmover.copypass import CopyPass, Job
from cmover.errors import ConfigError, ConfinementError
from cmover.ledger import MemoryLedger, RunClaims, task_id
from cmover.lustre.base import PosixFs
from cmover.settings import from_mapping
from cmover.stats import C

MiB = 1 << 20
T_MTIME = 1_600_000_000_987_654_321


class Run:
    """One pass's shared state: ledger, tally, failures; tasks are built per call like real deliveries."""

    def __init__(self, spec, fs=None):
        self.spec = spec
        self.fs = fs or PosixFs()
        self.ledger = MemoryLedger()
        self.tally: Counter[str] = Counter()
        self.failures: list = []

    def task(self, jobs: list) -> CopyPass:
        return CopyPass(self.spec, self.fs, self.tally, self.failures.append, jobs.append,
                        RunClaims(self.ledger, self.spec.run_id))

    def walk(self) -> list[Job]:
        jobs: list[Job] = []
        self.task(jobs).run_dir(b"")
        return jobs

    def chunk(self, job: Job, tid: str | None = None) -> None:
        assert job.kind == "chunk" and job.chunk is not None
        tid = tid or task_id(self.spec.run_id, "chunk", job.rel, job.index, (job.chunk.key(),))
        self.task([]).run_chunk(job.rel, job.index, job.chunk, tid)


def big(root: bytes, rel: bytes, size: int, mtime: int = T_MTIME) -> bytes:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    os.chown(path, 1234, 567)
    os.chmod(path, 0o4751)
    os.setxattr(path, b"user.k", b"v")
    os.utime(path, ns=(T_MTIME - 5, mtime))
    return path


def read(path: bytes) -> bytes:
    """Content, read without moving the atime (the tests compare atimes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def parts(d: bytes) -> list[bytes]:
    return [n for n in os.listdir(d) if n.startswith(b".cmover.") and n.endswith(b".part")]


@pytest.fixture
def chunk_spec(make_spec):
    return lambda **kw: make_spec(**{"chunk_threshold": 2 * MiB, "chunk_size": MiB, **kw})


# -- pure parts --------------------------------------------------------------------------------------------


def test_geometry():
    cs = ChunkSpec(size=5 * MiB + 1, mtime_ns=1, ctime_ns=2, ino=3, chunk=MiB)
    assert cs.count == 6
    assert cs.extent(0) == (0, MiB) and cs.extent(5) == (5 * MiB, 1)
    assert aligned(MiB, 0) == MiB and aligned(MiB, 3 * MiB) == 3 * MiB and aligned(5 * MiB, 4 * MiB) == 8 * MiB
    assert chunk_geometry(10 * MiB, MiB, 4 * MiB) == 4 * MiB  # stripe-aligned
    huge = 1 << 50
    assert -(-huge // chunk_geometry(huge, MiB, 0)) <= MAX_CHUNKS  # bounded chunk count


def test_wire_round_trip_and_rejects():
    cs = ChunkSpec(size=3 * MiB, mtime_ns=-5, ctime_ns=2, ino=3, chunk=MiB)
    assert ChunkSpec.from_wire(cs.as_wire()) == cs
    for bad in (None, [], {**cs.as_wire(), "chunk": 0}, {**cs.as_wire(), "size": "3"},
                {**cs.as_wire(), "ino": True}, {**cs.as_wire(), "chunk": 1, "size": 10 * MAX_CHUNKS}):
        with pytest.raises(ConfinementError):
            ChunkSpec.from_wire(bad)


def test_part_name_fixed_length_and_keyed_on_identity():
    cs = ChunkSpec(size=3 * MiB, mtime_ns=1, ctime_ns=2, ino=3, chunk=MiB)
    a = part_name("run", b"x" * 255, cs)
    assert len(a) == len(".cmover.") + 16 + len(".part")
    assert a == part_name("run", b"x" * 255, ChunkSpec(3 * MiB, 1, 2, 3, 2 * MiB))  # geometry aside
    assert a != part_name("run", b"x" * 255, ChunkSpec(3 * MiB, 9, 2, 3, MiB))
    assert a != part_name("run2", b"x" * 255, cs)


@pytest.mark.parametrize("values, word", [
    ({"CHUNK_SIZE": 1000}, "CHUNK_SIZE"),
    ({"CHUNK_THRESHOLD": -1}, "CHUNK_THRESHOLD"),
    ({"CHUNK_THRESHOLD": 2 * MiB, "CHUNK_SIZE": 4 * MiB}, "below"),
    ({"BATCH_SECONDS": 0}, "BATCH_SECONDS"),
])
def test_bad_chunk_settings(values, word):
    with pytest.raises(ConfigError, match=word):
        from_mapping(values)


# -- split and chunks ---------------------------------------------------------------------------------------


def test_split_then_chunks_in_any_order(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"d/f", 5 * MiB + 123)
    run = Run(chunk_spec())
    jobs = run.walk()
    chunks = [j for j in jobs if j.kind == "chunk"]
    assert len(chunks) == 6 and {j.index for j in chunks} == set(range(6)) and all(j.rel == b"d/f" for j in chunks)
    assert run.tally[C.CHUNKED] == 1 and run.tally[C.COPIED] == 0
    assert not os.path.lexists(os.path.join(dst, b"d/f"))  # nothing under the name yet
    [part] = parts(os.path.join(dst, b"d"))
    assert os.path.getsize(os.path.join(dst, b"d", part)) == 5 * MiB + 123
    for j in reversed(chunks[1:]):
        run.chunk(j)
        assert not os.path.lexists(os.path.join(dst, b"d/f")), "finished before its last chunk"
    run.chunk(chunks[0])
    out = os.path.join(dst, b"d/f")
    assert read(out) == read(path)
    s, d = os.stat(path), os.stat(out)
    assert (d.st_mode, d.st_uid, d.st_gid, d.st_mtime_ns, d.st_atime_ns) == \
        (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, s.st_atime_ns)
    assert os.getxattr(out, b"user.k") == b"v"
    assert parts(os.path.join(dst, b"d")) == []
    assert run.tally[C.COPIED] == 1 and run.tally[C.CHUNKS] == 6 and run.failures == []
    # The next pass finds it identical and splits nothing.
    again = Run(chunk_spec(run_id="copy-next"))
    assert [j for j in again.walk() if j.kind == "chunk"] == []
    assert again.tally[C.SKIPPED] == 1


def test_redelivered_split_and_chunks_are_harmless(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec())
    first = [j for j in run.walk() if j.kind == "chunk"]
    run.chunk(first[0])
    run.chunk(first[0])  # redelivered: same range rewritten, still one done mark
    second = [j for j in run.walk() if j.kind == "chunk"]  # the splitting task, redelivered
    assert second == first  # same part, same chunk jobs (same task ids)
    assert len(parts(dst)) == 1
    for j in first[1:]:
        run.chunk(j)
    assert read(os.path.join(dst, b"f")) == read(path)
    last = first[-1]
    run.chunk(last)  # the finisher redelivered after the rename: its part is gone, nothing happens
    assert run.tally[C.COPIED] == 1 and run.failures == []


def test_only_the_finish_claim_winner_finishes(roots, chunk_spec):
    src, dst = roots
    big(src, b"f", 2 * MiB)
    run = Run(chunk_spec())
    a, b = [j for j in run.walk() if j.kind == "chunk"]
    run.chunk(a)
    assert run.ledger.claim(run.spec.run_id, "finish:" + parts(dst)[0].decode(), "someone-else") == "someone-else"
    run.chunk(b)  # all chunks done, but another task holds the finish claim
    assert not os.path.lexists(os.path.join(dst, b"f")) and len(parts(dst)) == 1
    run.chunk(a, tid="someone-else")  # that task (redelivered) finishes it
    assert os.path.isfile(os.path.join(dst, b"f")) and parts(dst) == []


def test_source_changed_between_chunks(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec())
    chunks = [j for j in run.walk() if j.kind == "chunk"]
    run.chunk(chunks[0])
    with open(path, "r+b") as f:
        f.write(b"changed")
    run.chunk(chunks[1])
    assert run.tally[C.CHANGED] == 1 and parts(dst) == [] and not os.path.lexists(os.path.join(dst, b"f"))
    run.chunk(chunks[2])  # the part is gone: the remaining chunk has nothing to do
    assert run.tally[C.CHANGED] == 2 and run.failures == []
    nxt = Run(chunk_spec(run_id="copy-next"))
    for j in nxt.walk():
        nxt.chunk(j)
    assert read(os.path.join(dst, b"f")) == read(path)


def test_source_changed_after_last_chunk_is_not_finished(roots, chunk_spec, monkeypatch):
    src, dst = roots
    path = big(src, b"f", 2 * MiB)
    run = Run(chunk_spec())
    a, b = [j for j in run.walk() if j.kind == "chunk"]
    run.chunk(a)
    import cmover.chunks as chunks_mod

    real = chunks_mod.metadata.apply_fd

    def touch_then_apply(fd, rec, **kw):
        os.utime(path, ns=(1, 2))  # a writer touches the source while the file is being finished
        real(fd, rec, **kw)

    monkeypatch.setattr(chunks_mod.metadata, "apply_fd", touch_then_apply)
    run.chunk(b)
    assert not os.path.lexists(os.path.join(dst, b"f")) and parts(dst) == []
    assert run.tally[C.CHANGED] == 1 and run.tally[C.COPIED] == 0


def test_chunk_write_failure_removes_the_part(roots, chunk_spec, monkeypatch):
    """A chunk that cannot be written (a full target) is a per-item failure and is never marked done, so
    the run cannot finish the file: its part is removed (not left holding space on the full target), the
    other chunks find no part, and the next pass copies the file."""
    import errno

    import cmover.chunks as chunks_mod

    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec())
    chunks = [j for j in run.walk() if j.kind == "chunk"]
    run.chunk(chunks[0])
    real = chunks_mod.fsio.copy_extent

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunks_mod.fsio, "copy_extent", full)
    run.chunk(chunks[1])
    monkeypatch.setattr(chunks_mod.fsio, "copy_extent", real)
    assert [(f.path, f.errno, f.side) for f in run.failures] == [(b"f", errno.ENOSPC, "target")]
    assert parts(dst) == [] and not os.path.lexists(os.path.join(dst, b"f"))
    run.chunk(chunks[2])  # nothing to write into any more
    assert parts(dst) == [] and not os.path.lexists(os.path.join(dst, b"f")) and len(run.failures) == 1
    nxt = Run(chunk_spec(run_id="copy-next"))
    for j in nxt.walk():
        nxt.chunk(j)
    assert read(os.path.join(dst, b"f")) == read(path) and nxt.failures == []


def test_old_target_version_and_its_links_stay_intact_until_finished(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    os.makedirs(dst, exist_ok=True)
    old = os.path.join(dst, b"f")
    with open(old, "wb") as f:
        f.write(b"old version")
    os.link(old, os.path.join(dst, b"other-name"))
    run = Run(chunk_spec())
    chunks = [j for j in run.walk() if j.kind == "chunk"]
    for j in chunks[:-1]:
        run.chunk(j)
        assert read(old) == b"old version"
    run.chunk(chunks[-1])
    assert read(old) == read(path)
    assert read(os.path.join(dst, b"other-name")) == b"old version"  # never written through


def test_sparse_chunked_file_stays_sparse(roots, chunk_spec):
    src, dst = roots
    path = os.path.join(src, b"sparse")
    with open(path, "wb") as f:
        for _ in range(8):  # 8 x 512 KiB of data, each followed by a 4 MiB hole: 4 MiB allocated
            f.write(os.urandom(512 << 10))
            f.seek(4 * MiB, os.SEEK_CUR)
        f.write(b"end")
    run = Run(chunk_spec(chunk_threshold=4 * MiB))
    chunks = [j for j in run.walk() if j.kind == "chunk"]
    assert chunks
    for j in chunks:
        run.chunk(j)
    out = os.path.join(dst, b"sparse")
    assert read(out) == read(path)
    assert os.stat(out).st_blocks <= os.stat(path).st_blocks + 64


def test_mostly_hole_file_is_not_chunked(roots, chunk_spec):
    src, dst = roots
    path = os.path.join(src, b"holes")
    with open(path, "wb") as f:
        f.seek(64 * MiB)
        f.write(b"x")
    run = Run(chunk_spec())
    assert run.walk() == [] and run.tally[C.COPIED] == 1 and run.tally[C.CHUNKED] == 0
    assert read(os.path.join(dst, b"holes")) == read(path)


def test_chunk_message_outside_its_file_is_refused(roots, chunk_spec):
    src, _ = roots
    big(src, b"f", 2 * MiB)
    run = Run(chunk_spec())
    [a, _b] = [j for j in run.walk() if j.kind == "chunk"]
    assert a.chunk is not None
    with pytest.raises(ConfinementError):
        run.task([]).run_chunk(b"f", 7, a.chunk, "tid")
    with pytest.raises(ConfinementError):
        run.task([]).run_chunk(b"", 0, a.chunk, "tid")


def test_chunking_disabled_copies_inline(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec(chunk_threshold=0))
    assert run.walk() == [] and read(os.path.join(dst, b"f")) == read(path)


def test_long_batch_hands_on_its_remainder(roots, make_spec):
    src, dst = roots
    os.makedirs(os.path.join(src, b"d"))
    os.makedirs(os.path.join(dst, b"d"))
    names = [b"f%d" % i for i in range(5)]
    for n in names:
        with open(os.path.join(src, b"d", n), "wb") as f:
            f.write(n)
    run = Run(make_spec(batch_seconds=1e-9))
    jobs: list[Job] = []
    run.task(jobs).run_files(b"d", names)
    assert run.tally[C.COPIED] == 1  # the first entry is always done: progress is guaranteed
    assert jobs == [Job("files", b"d", tuple(names[1:]))]


def test_hard_linked_chunked_file_links_on_the_next_pass(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"a/f", 3 * MiB)
    os.makedirs(os.path.join(src, b"b"))
    os.link(path, os.path.join(src, b"b/g"))
    run = Run(chunk_spec())
    chunks = [j for j in run.walk() if j.kind == "chunk"]
    assert run.tally[C.LINK_DEFERRED] == 1 and run.failures == []  # did not wait for the chunks
    for j in chunks:
        run.chunk(j)
    # Whichever name led the group exists now; the other one waits for the next pass.
    assert os.path.lexists(os.path.join(dst, b"a/f")) != os.path.lexists(os.path.join(dst, b"b/g"))
    nxt = Run(chunk_spec(run_id="copy-next"))
    assert nxt.walk() == [] and nxt.tally[C.LINKED] == 1
    assert os.stat(os.path.join(dst, b"a/f")).st_ino == os.stat(os.path.join(dst, b"b/g")).st_ino
