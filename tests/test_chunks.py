"""Chunked copies of huge files (cmover.engine.chunks) driven through the engine, with one shared run ledger.

The tests run the split, then the chunk jobs in chosen orders, as separate tasks would: the target name
must appear only complete, with the source's mtime, and every failure mode must leave no complete-looking
file behind.
"""

from __future__ import annotations

import os

import pytest
from support.runner import Run, drain
from support.snap import compare_trees, read_noatime
from support.tree import Dir, File, build

from cmover.core.counters import C
from cmover.core.errors import ConfigError, ConfinementError
from cmover.core.settings import from_mapping
from cmover.engine.chunks import MAX_CHUNKS, ChunkJob, ChunkSpec, aligned, chunk_geometry, part_name
from cmover.engine.jobs import DirJob, FilesJob, Job

MiB = 1 << 20
T_MTIME = 1_600_000_000_987_654_321


def big(root: bytes, rel: bytes, size: int, mtime: int = T_MTIME) -> bytes:
    """A file of ``size`` random bytes with every attribute a finished copy must carry; its path."""
    build(root, {rel: File(size=size, mode=0o4751, uid=1234, gid=567, xattrs={"user.k": b"v"},
                           atime_ns=T_MTIME - 5, mtime_ns=mtime)})
    return os.path.join(root, rel)


def walk(run: Run) -> list[Job]:
    """Deliver the pass's root directory task; the jobs it emitted."""
    return run.deliver(DirJob(b""))


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
    jobs = walk(run)
    chunks = [j for j in jobs if j.kind == "chunk"]
    assert len(chunks) == 6 and {j.index for j in chunks} == set(range(6)) and all(j.rel == b"d/f" for j in chunks)
    assert run.tally[C.CHUNKED] == 1 and run.tally[C.COPIED] == 0
    assert not os.path.lexists(os.path.join(dst, b"d/f"))  # nothing under the name yet
    [part] = parts(os.path.join(dst, b"d"))
    assert os.path.getsize(os.path.join(dst, b"d", part)) == 5 * MiB + 123
    for j in reversed(chunks[1:]):
        run.deliver(j)
        assert not os.path.lexists(os.path.join(dst, b"d/f")), "finished before its last chunk"
    run.deliver(chunks[0])
    out = os.path.join(dst, b"d/f")
    assert read_noatime(out) == read_noatime(path)
    s, d = os.stat(path), os.stat(out)
    assert (d.st_mode, d.st_uid, d.st_gid, d.st_mtime_ns, d.st_atime_ns) == \
        (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, s.st_atime_ns)
    assert os.getxattr(out, b"user.k") == b"v"
    assert parts(os.path.join(dst, b"d")) == []
    assert run.tally[C.COPIED] == 1 and run.tally[C.CHUNKS] == 6 and run.failures == []
    # The next pass finds it identical and splits nothing.
    again = Run(chunk_spec(run_id="copy-next"))
    assert [j for j in walk(again) if j.kind == "chunk"] == []
    assert again.tally[C.SKIPPED] == 1


def test_redelivered_split_and_chunks_are_harmless(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec())
    first = [j for j in walk(run) if j.kind == "chunk"]
    run.deliver(first[0])
    run.deliver(first[0])  # redelivered: same range rewritten, still one done mark
    second = [j for j in walk(run) if j.kind == "chunk"]  # the splitting task, redelivered
    assert second == first  # same part, same chunk jobs (same task ids)
    assert len(parts(dst)) == 1
    for j in first[1:]:
        run.deliver(j)
    assert read_noatime(os.path.join(dst, b"f")) == read_noatime(path)
    last = first[-1]
    run.deliver(last)  # the finisher redelivered after the rename: its part is gone, nothing happens
    assert run.tally[C.COPIED] == 1 and run.failures == []


def test_only_the_finish_claim_winner_finishes(roots, chunk_spec):
    src, dst = roots
    big(src, b"f", 2 * MiB)
    run = Run(chunk_spec())
    a, b = [j for j in walk(run) if j.kind == "chunk"]
    run.deliver(a)
    assert run.ledger.claim(run.spec.run_id, "finish:" + parts(dst)[0].decode(), "someone-else") == "someone-else"
    run.deliver(b)  # all chunks done, but another task holds the finish claim
    assert not os.path.lexists(os.path.join(dst, b"f")) and len(parts(dst)) == 1
    run.deliver(a, task_id="someone-else")  # that task (redelivered) finishes it
    assert os.path.isfile(os.path.join(dst, b"f")) and parts(dst) == []


def test_source_changed_between_chunks(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec())
    chunks = [j for j in walk(run) if j.kind == "chunk"]
    run.deliver(chunks[0])
    with open(path, "r+b") as f:
        f.write(b"changed")
    run.deliver(chunks[1])
    assert run.tally[C.CHANGED] == 1 and parts(dst) == [] and not os.path.lexists(os.path.join(dst, b"f"))
    run.deliver(chunks[2])  # the part is gone: the remaining chunk has nothing to do
    assert run.tally[C.CHANGED] == 2 and run.failures == []
    nxt = Run(chunk_spec(run_id="copy-next"))
    for j in walk(nxt):
        nxt.deliver(j)
    assert read_noatime(os.path.join(dst, b"f")) == read_noatime(path)


def test_source_changed_after_last_chunk_is_not_finished(roots, chunk_spec, monkeypatch):
    src, dst = roots
    path = big(src, b"f", 2 * MiB)
    run = Run(chunk_spec())
    a, b = [j for j in walk(run) if j.kind == "chunk"]
    run.deliver(a)
    import cmover.engine.chunks as chunks_mod

    real = chunks_mod.metadata.apply_fd

    def touch_then_apply(fd, rec, **kw):
        os.utime(path, ns=(1, 2))  # a writer touches the source while the file is being finished
        real(fd, rec, **kw)

    monkeypatch.setattr(chunks_mod.metadata, "apply_fd", touch_then_apply)
    run.deliver(b)
    assert not os.path.lexists(os.path.join(dst, b"f")) and parts(dst) == []
    assert run.tally[C.CHANGED] == 1 and run.tally[C.COPIED] == 0


def test_chunk_write_failure_removes_the_part(roots, chunk_spec, monkeypatch):
    """A chunk that cannot be written (a full target) is a per-item failure and is never marked done, so
    the run cannot finish the file: its part is removed (not left holding space on the full target), the
    other chunks find no part, and the next pass copies the file."""
    import errno

    import cmover.engine.chunks as chunks_mod

    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec())
    chunks = [j for j in walk(run) if j.kind == "chunk"]
    run.deliver(chunks[0])
    real = chunks_mod.fsio.copy_extent

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunks_mod.fsio, "copy_extent", full)
    run.deliver(chunks[1])
    monkeypatch.setattr(chunks_mod.fsio, "copy_extent", real)
    assert [(f.path, f.errno, f.side) for f in run.failures] == [(b"f", errno.ENOSPC, "target")]
    assert parts(dst) == [] and not os.path.lexists(os.path.join(dst, b"f"))
    run.deliver(chunks[2])  # nothing to write into any more
    assert parts(dst) == [] and not os.path.lexists(os.path.join(dst, b"f")) and len(run.failures) == 1
    nxt = Run(chunk_spec(run_id="copy-next"))
    for j in walk(nxt):
        nxt.deliver(j)
    assert read_noatime(os.path.join(dst, b"f")) == read_noatime(path) and nxt.failures == []


def test_old_target_version_and_its_links_stay_intact_until_finished(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    os.makedirs(dst, exist_ok=True)
    old = os.path.join(dst, b"f")
    with open(old, "wb") as f:
        f.write(b"old version")
    os.link(old, os.path.join(dst, b"other-name"))
    run = Run(chunk_spec())
    chunks = [j for j in walk(run) if j.kind == "chunk"]
    for j in chunks[:-1]:
        run.deliver(j)
        assert read_noatime(old) == b"old version"
    run.deliver(chunks[-1])
    assert read_noatime(old) == read_noatime(path)
    assert read_noatime(os.path.join(dst, b"other-name")) == b"old version"  # never written through


def test_sparse_chunked_file_stays_sparse(roots, chunk_spec):
    src, dst = roots
    path = os.path.join(src, b"sparse")
    step = (512 << 10) + 4 * MiB  # 8 x 512 KiB of data, each followed by a 4 MiB hole: 4 MiB allocated
    data = {i * step: os.urandom(512 << 10) for i in range(8)}
    build(src, {b"sparse": File(size=8 * step + 3, data={**data, 8 * step: b"end"})})
    run = Run(chunk_spec(chunk_threshold=4 * MiB))
    chunks = [j for j in walk(run) if j.kind == "chunk"]
    assert chunks
    for j in chunks:
        run.deliver(j)
    out = os.path.join(dst, b"sparse")
    assert read_noatime(out) == read_noatime(path)
    assert os.stat(out).st_blocks <= os.stat(path).st_blocks + 64


def test_mostly_hole_file_is_not_chunked(roots, chunk_spec):
    src, dst = roots
    path = os.path.join(src, b"holes")
    build(src, {b"holes": File(size=64 * MiB + 1, data={64 * MiB: b"x"})})
    run = Run(chunk_spec())
    assert walk(run) == [] and run.tally[C.COPIED] == 1 and run.tally[C.CHUNKED] == 0
    assert read_noatime(os.path.join(dst, b"holes")) == read_noatime(path)


def test_chunk_message_outside_its_file_is_refused(roots, chunk_spec):
    src, _ = roots
    big(src, b"f", 2 * MiB)
    run = Run(chunk_spec())
    [a, _b] = [j for j in walk(run) if j.kind == "chunk"]
    assert isinstance(a, ChunkJob)
    with pytest.raises(ConfinementError):
        run.deliver(ChunkJob(b"f", 7, a.cs))
    with pytest.raises(ConfinementError):
        run.deliver(ChunkJob(b"", 0, a.cs))


def test_chunking_disabled_copies_inline(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"f", 3 * MiB)
    run = Run(chunk_spec(chunk_threshold=0))
    assert walk(run) == [] and read_noatime(os.path.join(dst, b"f")) == read_noatime(path)


def test_long_batch_hands_on_its_remainder(roots, make_spec):
    src, dst = roots
    names = [b"f%d" % i for i in range(5)]
    build(src, {b"d/" + n: n for n in names})
    build(dst, {b"d": Dir()})
    run = Run(make_spec(batch_seconds=1e-9))
    jobs = run.deliver(FilesJob(b"d", tuple(names)))
    assert run.tally[C.COPIED] == 1  # the first entry is always done: progress is guaranteed
    assert jobs == [FilesJob(b"d", tuple(names[1:]))]


def test_hard_linked_chunked_file_links_on_the_next_pass(roots, chunk_spec):
    src, dst = roots
    path = big(src, b"a/f", 3 * MiB)
    os.makedirs(os.path.join(src, b"b"))
    os.link(path, os.path.join(src, b"b/g"))
    run = Run(chunk_spec())
    chunks = [j for j in walk(run) if j.kind == "chunk"]
    assert run.tally[C.LINK_DEFERRED] == 1 and run.failures == []  # did not wait for the chunks
    for j in chunks:
        run.deliver(j)
    # Whichever name led the group exists now; the other one waits for the next pass.
    assert os.path.lexists(os.path.join(dst, b"a/f")) != os.path.lexists(os.path.join(dst, b"b/g"))
    nxt = Run(chunk_spec(run_id="copy-next"))
    assert walk(nxt) == [] and nxt.tally[C.LINKED] == 1
    assert os.stat(os.path.join(dst, b"a/f")).st_ino == os.stat(os.path.join(dst, b"b/g")).st_ino


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunked_files_in_any_order_with_duplicate_deliveries(roots, chunk_spec, seed):
    """Whole passes over several chunked files, jobs in random order and half of them delivered twice: the
    target ends identical, no part left behind, and every file counted copied once."""
    src, dst = roots
    for i, size in enumerate((5 * MiB + 7, 3 * MiB, 2 * MiB + 1)):
        big(src, b"d%d/f" % i, size)
    build(src, {b"d0/small": b"s"})
    run = drain(chunk_spec(), seed=seed, redeliver=0.5)
    assert run.failures == []
    assert any(j.kind == "chunk" for j in run.delivered)
    assert len(run.delivered) > len(set(run.delivered)), "some job was delivered twice"
    assert compare_trees(src, dst, atimes=True) == []
    assert all(parts(os.path.join(dst, b"d%d" % i)) == [] for i in range(3))
    assert run.tally[C.COPIED] == 4
