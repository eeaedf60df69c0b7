"""cmover.engine.deletepass.DeletePass on real trees: what is deleted, what is kept, and every guard that keeps it safe.

Each test builds a target that holds more than its source, runs the pass's root task and then every job it
emits (each job with a fresh DeletePass, as a task would), and checks the target, the counters, the failures
and the deletion records. Runs as root (as CI does): tmpfs mounts, and dropping capabilities with setpriv.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.runner import Run, drain
from support.snap import diff, entries, snapshot, unchanged
from support.tree import Dir, build, put

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.errors import ConfinementError
from cmover.core.failure import Failure
from cmover.core.passes import DeleteOptions, PassKind, PassSpec
from cmover.core.settings import from_mapping
from cmover.engine.claims import RunClaims
from cmover.engine.deletepass import DeletePass, SourceUnsafe
from cmover.engine.jobs import DirJob, Job
from cmover.engine.planner import PassOptions, plan
from cmover.state.ledger import MemoryLedger

TESTS_DIR = Path(__file__).resolve().parent


def src_id(root: bytes) -> tuple[int, int]:
    st = os.stat(root)
    return st.st_dev, st.st_ino


@pytest.fixture
def delete_spec(roots, make_spec):
    """``delete_spec(**options)``: a delete PassSpec on ``roots`` with the source identity of planning."""

    def make(inline_entries: int = 2000, batch: int = 1000, **options) -> PassSpec:
        return make_spec(run_id="delete-test", kind=PassKind.DELETE, inline_entries=inline_entries, batch=batch,
                         options=DeleteOptions(src_id=src_id(roots[0]), **options))

    return make


def gone_on_target(dst: bytes, res: Run) -> list[bytes]:
    """Deletion records whose entry still exists on the target (a real run must list only what it removed)."""
    return [p for p in res.deleted_paths() if os.path.lexists(os.path.join(dst, p.rstrip(b"/")))]


def build_gone_tree(root: bytes, top: bytes, n_dirs: int, n_files: int, seed: int = 0) -> None:
    """``top`` plus n_dirs - 1 nested directories below it (random parents) holding n_files files."""
    rng = random.Random(seed)
    dirs = [top]
    for i in range(1, n_dirs):
        dirs.append(rng.choice(dirs) + b"/d%03d" % i)
    build(root, {**{d: Dir() for d in dirs}, **{dirs[i % n_dirs] + b"/f%05d" % i: b"x" for i in range(n_files)}})


# -- what is deleted -------------------------------------------------------------------------------------

def test_entries_gone_from_source_are_deleted(roots, delete_spec):
    src, dst = roots
    put(src, b"keep", b"d/keep2")
    put(dst, b"keep", b"d/keep2", b"gone1", b"gone2", b"d/gone3", b".cmover.gone1.part", b"d/.cmover.x.tmp")
    os.mkfifo(os.path.join(dst, b"fifo"))
    os.mknod(os.path.join(dst, b"d/null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    res = drain(delete_spec())
    assert res.failures == []
    assert entries(dst) == {b"keep", b"d", b"d/keep2"}
    assert entries(src) == {b"keep", b"d", b"d/keep2"}
    assert res.deleted_paths() == [b".cmover.gone1.part", b"d/.cmover.x.tmp", b"d/gone3", b"d/null", b"fifo",
                                   b"gone1", b"gone2"]
    assert {d.what for d in res.deleted} == {"file"} and {d.dry_run for d in res.deleted} == {False}
    t = res.tally
    assert (t[C.DELETED], t[C.DIRS_DELETED], t[C.KEPT], t[C.DIRS], t[C.SCANNED]) == (7, 0, 2, 2, 9)
    assert t[C.WOULD_DELETE] == 0 and t[C.FAILED] == 0


def test_big_target_directory_split_into_batches(roots, delete_spec):
    src, dst = roots
    kept = [b"k%02d" % i for i in range(4)]
    gone = [b"g%02d" % i for i in range(11)]
    put(src, *kept)
    put(dst, *kept, *gone)
    res = drain(delete_spec(batch=3), seed=5)
    assert sum(j.kind == "files" for j in res.delivered) >= 3
    assert res.failures == []
    assert entries(dst) == set(kept)
    assert res.deleted_paths() == gone
    assert res.tally[C.DELETED] == 11 and res.tally[C.KEPT] == 4


def test_deleted_tree_inline(roots, delete_spec):
    src, dst = roots
    put(src, b"keep")
    put(dst, b"keep")
    build_gone_tree(dst, b"gone", 8, 40)
    res = drain(delete_spec())
    assert [j.kind for j in res.delivered] == ["dir"]  # a small tree is purged by the task that found it
    assert res.failures == []
    assert entries(dst) == {b"keep"}
    assert res.deleted_paths() == [b"gone/"]
    assert res.deleted[0].what == "tree"
    assert res.tally[C.DELETED] == 48 and res.tally[C.DIRS_DELETED] == 8


class ListingProbe:
    """Records, in order, every entry named ``prefix...`` a scandir iterator hands out and every unlink, to
    measure how many listed non-directories a task holds before it acts on them."""

    def __init__(self, monkeypatch, prefix: bytes) -> None:
        self.events: list[tuple[str, bytes]] = []
        real_scandir, real_unlink = os.scandir, os.unlink
        probe = self

        class Iter:
            def __init__(self, it) -> None:
                self.it = it

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.it.close()

            def __iter__(self):
                return self

            def __next__(self):
                entry = next(self.it)
                if os.fsencode(entry.name).startswith(prefix):
                    probe.events.append(("listed", os.fsencode(entry.name)))
                return entry

        def unlink(name, *args, **kw):
            real_unlink(name, *args, **kw)
            if os.fsencode(name).startswith(prefix):
                self.events.append(("unlinked", os.fsencode(name)))

        monkeypatch.setattr(os, "scandir", lambda *a: Iter(real_scandir(*a)))
        monkeypatch.setattr(os, "unlink", unlink)

    def most_held(self) -> int:
        held = peak = 0
        for what, _ in self.events:
            held += 1 if what == "listed" else -1
            peak = max(peak, held)
        return peak


@pytest.mark.parametrize("dry_run", [False, True])
def test_purge_streams_a_huge_directory_in_batches(roots, delete_spec, monkeypatch, dry_run):
    """Invariant 6: a deleted directory of 100 files with batch 7 is removed batch by batch while it is
    read; the task never holds more than one batch (+1 read ahead) of listed entries. The batches of one listing
    grow (cmover.engine.walker.GROW_EVERY): 7, 7, 14, 14, 28, 28, then the 2 left, so at most 28 + 1 are held."""
    src, dst = roots
    put(src, b"keep")
    put(dst, b"keep", *[b"gone/f%03d" % i for i in range(100)])
    probe = ListingProbe(monkeypatch, b"f")
    res = drain(delete_spec(batch=7, dry_run=dry_run))
    assert res.failures == []
    assert res.deleted_paths() == [b"gone/"]
    assert res.tally[C.WOULD_DELETE if dry_run else C.DELETED] == 101
    if dry_run:
        assert len(entries(dst)) == 102
    else:
        assert entries(dst) == {b"keep"}
        assert sum(what == "unlinked" for what, _ in probe.events) == 100
        assert probe.most_held() <= 28 + 1, probe.events[:20]
        first_unlink = next(i for i, (what, _) in enumerate(probe.events) if what == "unlinked")
        assert first_unlink < 20  # the first batch went before the rest of the listing was read


def test_transient_errors_of_the_proof_and_the_unlink_are_retried(roots, delete_spec, monkeypatch):
    """ESTALE from the source lstat (the proof) and EBUSY from unlink are tried again after a pause."""
    from cmover.engine import jobs

    src, dst = roots
    put(src, b"keep")
    put(dst, b"keep", b"gone", b"busy")
    real_stat, real_unlink = os.stat, os.unlink
    fails = {(b"stat", b"gone"): 1, (b"unlink", b"busy"): 2}

    def flaky(what: bytes, real, err: int):
        def call(name, *args, **kw):
            key = (what, os.fsencode(name))
            if kw.get("dir_fd") is not None and fails.get(key, 0) > 0:
                fails[key] -= 1
                raise OSError(err, os.strerror(err))
            return real(name, *args, **kw)
        return call

    pauses: list[float] = []
    monkeypatch.setattr(os, "stat", flaky(b"stat", real_stat, errno.ESTALE))
    monkeypatch.setattr(os, "unlink", flaky(b"unlink", real_unlink, errno.EBUSY))
    monkeypatch.setattr(jobs.time, "sleep", pauses.append)
    res = drain(delete_spec())
    assert res.failures == [] and fails == {(b"stat", b"gone"): 0, (b"unlink", b"busy"): 0}
    assert entries(dst) == {b"keep"} and res.deleted_paths() == [b"busy", b"gone"]
    assert sorted(pauses) == sorted([jobs.TRANSIENT_PAUSES[0]] * 2 + [jobs.TRANSIENT_PAUSES[1]])


@pytest.mark.parametrize("seed, redeliver", [(1, 0.0), (2, 0.3)])
def test_huge_deleted_tree_spread_over_purge_jobs_any_order(roots, delete_spec, seed, redeliver):
    src, dst = roots
    put(src, b"keep", b"d/keep")
    put(dst, b"keep", b"d/keep")
    build_gone_tree(dst, b"gone", 60, 3000, seed=seed)
    build_gone_tree(dst, b"d/gone", 5, 20, seed=seed)
    res = drain(delete_spec(inline_entries=0), seed=seed, redeliver=redeliver)
    purges = [j for j in res.delivered if j.kind == "purge"]
    assert len({j.rel for j in purges}) == 59 + 4  # every subdirectory of a deleted tree is a task of its own
    assert {j.root for j in purges} == {b"gone", b"d/gone"}
    if redeliver:
        assert len(purges) > 63
    assert res.failures == []
    assert entries(dst) == {b"keep", b"d", b"d/keep"}
    assert sorted(set(res.deleted_paths())) == [b"d/gone/", b"gone/"]
    assert res.tally[C.DELETED] == 3000 + 60 + 20 + 5
    assert res.tally[C.DIRS_DELETED] == 65
    assert res.tally[C.FAILED] == 0


def test_symlinks_removed_their_targets_survive(roots, delete_spec, tmp_path):
    src, dst = roots
    outside = os.fsencode(tmp_path / "outside")
    put(outside, b"f", b"d/inner", b"d/sub/deep")
    put(src, b"keep")
    put(dst, b"keep")
    os.symlink(b"a", os.path.join(src, b"kept-link"))
    os.symlink(b"b", os.path.join(dst, b"kept-link"))  # present on the source (another target): kept
    links = {
        b"abs-file": os.path.join(outside, b"f"),
        b"abs-dir": os.path.join(outside, b"d"),
        b"rel-file": b"../outside/f",
        b"rel-dir": b"../outside/d",
        b"gone/abs-dir": os.path.join(outside, b"d"),
        b"gone/sub/rel-dir": b"../../../outside/d",
        b"gone/sub/abs-file": os.path.join(outside, b"f"),
        b"gone/sub/deeper/abs-dir": os.path.join(outside, b"d/sub"),
    }
    build(dst, {b"gone/sub/deeper": Dir()})
    for rel, target in links.items():
        os.symlink(target, os.path.join(dst, rel))
        assert os.path.exists(os.path.join(dst, rel))  # every link resolves: following one would be visible
    before = snapshot(outside)
    res = drain(delete_spec(inline_entries=0), seed=3)
    assert res.failures == []
    assert unchanged(before, snapshot(outside)) == []
    assert entries(dst) == {b"keep", b"kept-link"}
    assert os.readlink(os.path.join(dst, b"kept-link")) == b"b"
    assert res.deleted_paths() == [b"abs-dir", b"abs-file", b"gone/", b"rel-dir", b"rel-file"]
    assert res.tally[C.DELETED] == 8 + 3 and res.tally[C.DIRS_DELETED] == 3
    assert res.tally[C.KEPT] == 2


def test_purge_directory_swapped_for_symlink_is_not_followed(roots, delete_spec, tmp_path):
    src, dst = roots
    outside = os.fsencode(tmp_path / "outside")
    put(outside, b"f", b"d/inner")
    put(src, b"keep")
    put(dst, b"keep", b"gone/f", b"gone/sub/f", b"gone/sub/deeper/f")
    before = snapshot(outside)

    def swap(job: Job) -> None:
        if job.kind == "purge" and job.rel == b"gone/sub" and not os.path.islink(os.path.join(dst, b"gone/sub")):
            shutil.rmtree(os.path.join(dst, b"gone/sub"))
            os.symlink(os.path.join(outside, b"d"), os.path.join(dst, b"gone/sub"))

    res = drain(delete_spec(inline_entries=0), before=swap)
    assert unchanged(before, snapshot(outside)) == []
    assert set(res.failed()) == {b"gone/sub"}
    assert res.failed()[b"gone/sub"].side == "target"
    assert res.failed()[b"gone/sub"].errno in (errno.ELOOP, errno.ENOTDIR)
    assert entries(dst) == {b"keep", b"gone", b"gone/sub"}  # the link itself is left for the next pass


def test_non_utf8_names(roots, delete_spec):
    src, dst = roots
    put(src, b"keep-\xe9", b"kept-\xff/caf\xe9")
    put(dst, b"keep-\xe9", b"kept-\xff/caf\xe9", b"kept-\xff/gone-\xe9\n", b"caf\xe9", b"dir-\xff\xfe/\xe9t\xe9",
        b"dir-\xff\xfe/sub\x01/x")
    res = drain(delete_spec(inline_entries=0), seed=1)
    assert res.failures == []
    assert entries(dst) == {b"keep-\xe9", b"kept-\xff", b"kept-\xff/caf\xe9"}
    assert res.deleted_paths() == [b"caf\xe9", b"dir-\xff\xfe/", b"kept-\xff/gone-\xe9\n"]
    assert res.tally[C.DELETED] == 2 + 4 and res.tally[C.KEPT] == 2


def test_entries_present_on_source_are_kept_type_changes_included(roots, delete_spec):
    src, dst = roots
    put(src, b"keep", b"d/inner", b"file-here")
    build(src, {b"dir-here": Dir(), b"empty": Dir()})
    os.symlink(b"keep", os.path.join(src, b"link"))
    # target: a directory where the source has a file (with content the source lacks), a file where the
    # source has a directory, a symlink where the source has one; each is the copy pass's business.
    put(dst, b"keep", b"d/inner", b"file-here/not-on-source", b"file-here/sub/x", b"dir-here", b"d/gone")
    build(dst, {b"empty": Dir()})
    os.symlink(b"elsewhere", os.path.join(dst, b"link"))
    before = snapshot(dst)
    res = drain(delete_spec(inline_entries=0), seed=2, redeliver=0)  # counts what was kept, exactly
    assert res.failures == []
    assert res.deleted_paths() == [b"d/gone"]
    after = snapshot(dst)
    del before[b"d/gone"]
    assert diff(before, after, inodes=True) == []
    # keep, d/inner, file-here (dir vs file), dir-here (file vs dir), link; d and empty are walked
    assert res.tally[C.KEPT] == 5
    assert res.tally[C.DIRS] == 3 and res.tally[C.DELETED] == 1


# -- dry run and --max-delete ------------------------------------------------------------------------------

def _mixed_target(src: bytes, dst: bytes) -> None:
    put(src, b"keep", b"a/keep", b"a/b/keep")
    put(dst, b"keep", b"a/keep", b"a/b/keep", b"gone", b"a/gone", b"a/b/gone\xe9")
    build_gone_tree(dst, b"a/tree", 12, 150)
    build_gone_tree(dst, b"top-tree", 3, 9)
    for i in range(7):
        put(dst, b"a/b/many%d" % i)
    os.symlink(b"/etc", os.path.join(dst, b"a/link"))
    os.mkfifo(os.path.join(dst, b"a/tree/fifo"))


def test_dry_run_deletes_nothing_and_lists_what_the_real_run_deletes(roots, delete_spec):
    src, dst = roots
    _mixed_target(src, dst)
    before = snapshot(dst)
    dry = drain(delete_spec(inline_entries=0, batch=3, dry_run=True), seed=11, redeliver=0)
    assert dry.failures == []
    assert unchanged(before, snapshot(dst)) == []
    assert any(j.kind == "purge" for j in dry.delivered) and any(j.kind == "files" for j in dry.delivered)
    real = drain(delete_spec(inline_entries=0, batch=3), seed=12)
    assert real.failures == []
    assert dry.deleted_paths() == sorted(set(real.deleted_paths()))
    assert len(dry.deleted) == len(set(dry.deleted_paths())) == 13
    assert {d.dry_run for d in dry.deleted} == {True} and {d.dry_run for d in real.deleted} == {False}
    assert real.tally[C.DELETED] == dry.tally[C.WOULD_DELETE] == 150 + 12 + 9 + 3 + 3 + 7 + 2
    assert real.tally[C.DIRS_DELETED] == dry.tally[C.DIRS_WOULD_DELETE] == 15
    assert dry.tally[C.DELETED] == 0 and real.tally[C.WOULD_DELETE] == 0
    assert entries(dst) == {b"keep", b"a", b"a/keep", b"a/b", b"a/b/keep"}


def test_max_delete_stops_after_n_and_lists_only_what_it_deleted(roots, delete_spec):
    src, dst = roots
    put(src, b"keep")
    gone = [b"g%02d" % i for i in range(10)]
    put(dst, b"keep", *gone)
    res = drain(delete_spec(max_delete=4))
    assert res.failures == []
    assert res.tally[C.DELETED] == 4 and res.tally[C.DEL_LIMITED] == 6
    assert len(entries(dst)) == 1 + 6
    assert len(res.deleted) == 4 and gone_on_target(dst, res) == []


def test_max_delete_reached_before_a_deleted_tree(roots, delete_spec):
    src, dst = roots
    put(src, b"keep")
    put(dst, b"keep", b"g1", b"g2", b"g3", b"tree/f1", b"tree/f2")
    res = drain(delete_spec(max_delete=2))
    assert res.tally[C.DELETED] == 2 and res.tally[C.DEL_LIMITED] >= 2
    assert sorted(os.listdir(os.path.join(dst, b"tree"))) == [b"f1", b"f2"]
    # Nothing of tree/ was deleted: it must not be listed as deleted.
    assert gone_on_target(dst, res) == []


@pytest.mark.parametrize("inline_entries", [2000, 0])
@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("limit", [5, 8])
def test_max_delete_counts_every_entry_once_in_a_purged_tree(roots, delete_spec, limit, dry_run, inline_entries):
    """tree/{a/{f1,f2}, b/f3, c/f4}: 8 entries. --max-delete N removes (or would remove) exactly min(N, 8)."""
    src, dst = roots
    put(src, b"keep")
    put(dst, b"keep", b"tree/a/f1", b"tree/a/f2", b"tree/b/f3", b"tree/c/f4")
    # No duplicate deliveries: in a dry run a duplicate would claim the budget again (nothing was removed).
    res = drain(delete_spec(inline_entries=inline_entries, max_delete=limit, dry_run=dry_run), seed=4, redeliver=0)
    assert res.failures == []
    done = res.tally[C.WOULD_DELETE if dry_run else C.DELETED]
    assert done == min(limit, 8)
    assert (res.tally[C.DEL_LIMITED] > 0) == (limit < 8)
    if not dry_run:
        assert len(entries(dst)) == 1 + 8 - done


# -- source guards -----------------------------------------------------------------------------------------

def test_unopenable_source_directory_deletes_nothing_under_it(roots, delete_spec, monkeypatch):
    src, dst = roots
    put(src, b"keep", b"d/keep", b"other/keep")
    put(dst, b"keep", b"d/keep", b"d/gone", b"d/sub/gone", b"other/keep", b"other/gone", b"gone")
    real_open = fsio.open_dir

    def open_dir(root: bytes, rel: bytes, *, source: bool) -> int:
        if source and root == src and (rel == b"d" or rel.startswith(b"d/")):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(root, rel, source=source)

    monkeypatch.setattr(fsio, "open_dir", open_dir)
    for inline in (2000, 0):
        res = drain(delete_spec(inline_entries=inline), seed=1)
        assert entries(dst) == {b"keep", b"d", b"d/keep", b"d/gone", b"d/sub", b"d/sub/gone", b"other",
                                b"other/keep"}
        assert set(res.failed()) == {b"d"}
        f = res.failed()[b"d"]
        assert (f.op, f.errno, f.side) == ("open directory", errno.EACCES, "source")
        assert res.tally[C.FAILED] == 1


SUBPROCESS_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from cmover.core.passes import PassSpec
from support.runner import drain
res = drain(PassSpec.from_dict(json.loads(sys.argv[2])), seed=1, redeliver=0)
print(json.dumps({"tally": res.tally, "failures": [f.as_dict() for f in res.failures],
                  "deleted": [p.hex() for p in res.deleted_paths()]}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_unreadable_source_directories_without_dac_override(roots, delete_spec):
    """chmod 000 / 0400 source directories, the pass run by root without CAP_DAC_OVERRIDE/READ_SEARCH."""
    src, dst = roots
    put(src, b"keep", b"noread/keep", b"nosearch/keep")
    put(dst, b"keep", b"gone", b"noread/keep", b"noread/gone", b"noread/sub/gone", b"nosearch/keep",
        b"nosearch/gone", b"nosearch/tree/f")
    os.chmod(os.path.join(src, b"noread"), 0)
    os.chmod(os.path.join(src, b"nosearch"), 0o400)  # listable, but no entry in it can be looked up
    try:
        spec = delete_spec()
        proc = subprocess.run(
            ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c", SUBPROCESS_RUN,
             str(TESTS_DIR), json.dumps(spec.as_dict())], capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(os.path.join(src, b"noread"), 0o755)
        os.chmod(os.path.join(src, b"nosearch"), 0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [bytes.fromhex(p) for p in out["deleted"]] == [b"gone"]
    assert entries(dst) == {b"keep", b"noread", b"noread/keep", b"noread/gone", b"noread/sub", b"noread/sub/gone",
                            b"nosearch", b"nosearch/keep", b"nosearch/gone", b"nosearch/tree", b"nosearch/tree/f"}
    failed = {Failure.from_dict(f).path: Failure.from_dict(f) for f in out["failures"]}
    assert set(failed) == {b"noread", b"nosearch/keep", b"nosearch/gone", b"nosearch/tree"}
    assert failed[b"noread"].op == "open directory"
    assert {f.errno for f in failed.values()} == {errno.EACCES}
    assert {f.side for f in failed.values()} == {"source"}
    assert out["tally"][C.DELETED] == 1 and out["tally"][C.FAILED] == 4


@pytest.fixture
def mounts():
    """``mount(path)``: a tmpfs over ``path``, unmounted at teardown (last mounted first)."""
    done: list[bytes] = []

    def mount(path: bytes) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", path], check=True)
        done.append(path)

    yield mount
    for path in reversed(done):
        subprocess.run(["umount", path], check=True)


@pytest.mark.parametrize("fill", [False, True])
def test_tmpfs_mounted_over_source_root_after_planning(roots, mounts, fill):
    src, dst = roots
    put(src, b"keep", b"d/keep")
    put(dst, b"keep", b"d/keep", b"gone", b"d/gone", b"tree/f")
    spec = plan(PassKind.DELETE, from_mapping({"INLINE_ENTRIES": 0}), os.fsdecode(src), os.fsdecode(dst),
                options=PassOptions())
    assert DeleteOptions.of(spec).src_id == src_id(src)
    before = snapshot(dst)
    mounts(src)
    if fill:  # not empty: only the identity check can tell it is not the planned source
        put(src, b"keep", b"d/keep")
    dp = DeletePass(spec, Counter(), [].append, [].append, RunClaims(MemoryLedger(), spec.run_id), [].append)
    with pytest.raises(SourceUnsafe, match="not the directory the pass was planned on"):
        dp.run_dir(b"")
    with pytest.raises(SourceUnsafe):
        dp.run_files(b"", [b"gone"])
    with pytest.raises(SourceUnsafe):
        dp.run_purge(b"tree", b"tree")
    assert unchanged(before, snapshot(dst)) == []


@pytest.mark.parametrize("inline_entries", [2000, 0])
def test_tmpfs_mounted_over_source_subdirectory(roots, delete_spec, mounts, inline_entries):
    src, dst = roots
    put(src, b"keep")
    build(src, {b"m": Dir()})
    put(dst, b"keep", b"gone", b"m/gone", b"m/sub/gone")
    mounts(os.path.join(src, b"m"))  # empty: everything under m looks deleted
    res = drain(delete_spec(inline_entries=inline_entries))
    assert entries(dst) == {b"keep", b"m", b"m/gone", b"m/sub", b"m/sub/gone"}
    assert res.deleted_paths() == [b"gone"]
    assert set(res.failed()) == {b"m"}
    assert "another filesystem is mounted" in res.failed()[b"m"].message


def test_purge_below_a_source_submount_deletes_nothing_and_is_reported(roots, delete_spec, mounts):
    src, dst = roots
    put(src, b"keep")
    build(src, {b"m": Dir()})
    put(dst, b"keep", b"m/tree/f", b"m/tree/sub/f", b"m/tree/sub/deeper/f")

    def mount_first(job: Job) -> None:
        # the tree's own task ran before the source subdirectory was mounted over
        if job.kind == "purge" and not os.path.ismount(os.path.join(src, b"m")):
            mounts(os.path.join(src, b"m"))

    res = drain(delete_spec(inline_entries=0), DirJob(b"m"), before=mount_first)
    assert {j.rel for j in res.delivered if j.kind == "purge"} == {b"m/tree/sub"}
    assert entries(dst) == {b"keep", b"m", b"m/tree", b"m/tree/sub", b"m/tree/sub/f", b"m/tree/sub/deeper",
                            b"m/tree/sub/deeper/f"}
    assert res.tally[C.FAILED] >= 1 and res.failures


@pytest.mark.parametrize("how", ["emptied", "removed", "replaced"])
def test_source_root_emptied_or_gone_after_planning(roots, delete_spec, how):
    src, dst = roots
    put(src, b"keep")
    put(dst, b"keep", b"gone", b"d/f")
    spec = delete_spec()
    before = snapshot(dst)
    os.unlink(os.path.join(src, b"keep"))
    if how == "removed":
        os.rmdir(src)
    elif how == "replaced":
        os.rename(src, src + b".old")
        os.mkdir(src)
        put(src, b"keep")
    with pytest.raises(SourceUnsafe):
        drain(spec)
    assert unchanged(before, snapshot(dst)) == []


def test_empty_source_and_empty_target_is_fine(roots, delete_spec):
    res = drain(delete_spec())
    assert res.failures == [] and res.tally[C.DELETED] == 0


@pytest.mark.parametrize("back_as", ["dir", "file"])
def test_purge_whose_root_reappeared_on_source_deletes_nothing(roots, delete_spec, back_as):
    src, dst = roots
    put(src, b"keep")
    put(dst, b"keep", b"tree/f", b"tree/sub/f", b"tree/sub/deeper/f", b"tree/sub2/f")

    def reappear(job: Job) -> None:
        if job.kind == "purge" and not os.path.lexists(os.path.join(src, b"tree")):
            build(src, {b"tree": Dir() if back_as == "dir" else b"x"})

    res = drain(delete_spec(inline_entries=0), before=reappear, redeliver=0)  # counts each purge task once
    assert {j.rel for j in res.delivered if j.kind == "purge"} == {b"tree/sub", b"tree/sub2"}
    assert res.failures == []
    # tree/f went with the tree's own task; the purge tasks that ran after the source came back did nothing.
    assert entries(dst) == {b"keep", b"tree", b"tree/sub", b"tree/sub/f", b"tree/sub/deeper", b"tree/sub/deeper/f",
                            b"tree/sub2", b"tree/sub2/f"}
    assert res.tally[C.DELETED] == 1 and res.tally[C.KEPT] == 1 + 2  # keep, then each purge task that found it


# -- confinement -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel, root", [
    (b"b", b"a"), (b"ab", b"a"), (b"a", b"a/b"), (b"", b"a"), (b"b/a", b"a"),
    (b"a/../..", b"a"),  # spelled inside the root, resolves outside it
    (b"", b""),  # the pass root itself is never a deleted tree
])
def test_run_purge_outside_its_root_is_refused(tmp_path, make_spec, rel, root):
    box = tmp_path / "box"
    src, dst = os.fsencode(box / "src"), os.fsencode(box / "dst")
    put(src, b"keep")
    put(dst, b"keep", b"a/f", b"a/b/f", b"b/f", b"b/a/f", b"ab/f")
    put(os.fsencode(box), b"sentinel")
    spec = make_spec(kind=PassKind.DELETE, src_root=src, dst_root=dst, inline_entries=0,
                     options=DeleteOptions(src_id=src_id(src)))
    tally: Counter = Counter()
    emitted: list[Job] = []
    dp = DeletePass(spec, tally, [].append, emitted.append, RunClaims(MemoryLedger(), spec.run_id), [].append)
    with pytest.raises(ConfinementError):
        dp.run_purge(rel, root)
    assert (box / "sentinel").exists()
    assert entries(dst) == {b"keep", b"a", b"a/f", b"a/b", b"a/b/f", b"b", b"b/f", b"b/a", b"b/a/f", b"ab", b"ab/f"}
    assert tally[C.DELETED] == 0 and emitted == []
