"""Clean-pass proofs (cmover.core.cleanpass): the rule as pure functions, the durable store, the copy engine
skipping only what a proof covers, and `cmover copy` end to end (a change made after a clean pass is found;
a no-change pass writes nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.snap import compare_trees
from support.tree import random_tree

from cmover.core import cleanpass, privileges
from cmover.core.cleanpass import CleanPass, Proof, Store, dir_proven, fingerprint, may_record, proof_of
from cmover.core.counters import C
from cmover.core.passes import PassKind, PassSpec
from cmover.core.settings import from_mapping
from cmover.engine import cleanrecord
from cmover.engine.planner import PassOptions, plan

CAN = privileges.current()
FUTURE = time.time_ns() + 10**15


def _spec(**kw) -> PassSpec:
    base = dict(run_id="copy-x", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d", planned_ns=10**18)
    base.update(kw)
    return PassSpec(**base)


# -- the rule, pure ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, ok", [
    ({}, True),
    ({"state": "interrupted"}, False),
    ({"state": "unknown"}, False),
    ({"failure_count": 1}, False),
    ({"totals": {C.FAILED: 1}}, False),
    ({"totals": {C.LINK_DEFERRED: 2}}, False),
    ({"totals": {C.DEAD: 1}}, False),
    ({"totals": {C.HSM_SKIPPED: 1}}, False),
    ({"totals": {C.HSM_LOST: 1}}, False),
    ({"totals": {C.CHANGED: 3, C.VANISHED: 1, C.SKIPPED: 9}}, True),  # left with a later ctime: not covered
    ({"spec": {"excludes": (b"a",)}}, False),
    ({"spec": {"min_size": 10}}, False),
    ({"spec": {"max_size": 10}}, False),
    ({"spec": {"oldest_atime_ns": 5}}, False),
    ({"spec": {"newest_mtime_ns": 5}}, False),
    ({"spec": {"kind": PassKind.DELETE}}, False),
    ({"spec": {"planned_ns": 0}}, False),
])
def test_only_a_complete_unfiltered_pass_with_no_failure_is_recorded(change, ok):
    spec = _spec(**change.get("spec", {}))
    assert may_record(spec, change.get("state", "complete"), change.get("failure_count", 0),
                      change.get("totals", {})) is ok


def test_fingerprint_follows_what_shapes_the_copy_and_nothing_else():
    base = fingerprint(_spec(), CAN)
    assert fingerprint(_spec(run_id="copy-y", batch=7, planned_ns=1, chunk_threshold=1 << 40), CAN) == base
    assert fingerprint(_spec(layout="classic"), CAN) != base
    assert fingerprint(_spec(restripe=True), CAN) != base
    assert fingerprint(_spec(), CAN._replace(sys_admin=not CAN.sys_admin)) != base
    assert fingerprint(_spec(), CAN._replace(uid=CAN.uid + 1)) != base
    assert fingerprint(_spec(hsm="recall"), CAN) != base
    assert set(cleanpass.SHAPING) >= {"LUSTRE_LAYOUT", "LUSTRE_RESTRIPE", "UID_MAP", "GID_MAP", "HSM_POLICY"}


def test_proof_needs_the_spec_and_the_same_fingerprint_in_the_worker():
    assert proof_of(_spec(), CAN) is None
    fp = fingerprint(_spec(), CAN)
    assert proof_of(_spec(proof_ns=50, proof_end_ns=90, proof_fp=fp), CAN) == Proof(50, 90)
    other = CAN._replace(setfcap=not CAN.setfcap)  # a worker with other privileges
    assert proof_of(_spec(proof_ns=50, proof_end_ns=90, proof_fp=fp), other) is None


@pytest.mark.parametrize("src_ctime, dst_ctime, covered", [
    (49, 89, True), (50, 89, False), (49, 90, False), (70, 10, False), (10, 95, False)])
def test_covers_needs_source_before_the_cut_and_target_before_the_end(src_ctime, dst_ctime, covered):
    assert Proof(50, 90).covers(src_ctime, dst_ctime) is covered


def test_directory_proven_only_under_a_proven_parent():
    p = Proof(50, 90)
    assert dir_proven(p, True, 49)
    assert not dir_proven(p, True, 50)
    assert not dir_proven(p, False, 10)  # an ancestor changed (or was renamed): nothing below uses the proof
    assert not dir_proven(None, True, 10)


def test_cut_subtracts_the_clock_skew_from_the_start_and_from_the_end():
    rec = CleanPass(b"/s", b"/d", b"", 10_000_000_000, 12_000_000_000, "f", "r")
    assert cleanpass.cut(rec, 2_000_000_000) == (8_000_000_000, 10_000_000_000)
    assert cleanpass.cut(rec, 20_000_000_000) == (0, 0)
    # CLOCK_SKEW = 0 still leaves a kernel tick's margin on both sides.
    assert cleanpass.cut(rec, 0) == (10_000_000_000 - cleanpass.MIN_MARGIN_NS,
                                     12_000_000_000 - cleanpass.MIN_MARGIN_NS)


def test_a_target_change_just_after_the_recorded_end_is_never_covered() -> None:
    """A target entry changed after a pass recorded its end must be compared, even when its ctime trails the
    end: a clock that trails the planning node's by less than CLOCK_SKEW (another node, the target's
    servers, or the kernel's tick) stamps it."""
    rec = CleanPass(b"/s", b"/d", b"", 10_000_000_000, 12_000_000_000, "f", "r")
    skew = 2_000_000_000
    proof_ns, proof_end_ns = cleanpass.cut(rec, skew)
    proof = Proof(proof_ns, proof_end_ns)
    trailing = rec.end_ns + 1_000_000 - skew // 2  # made 1 ms after the end, on a clock 1 s behind
    assert not proof.covers(proof_ns - 1, trailing)


# -- the store -----------------------------------------------------------------------------------------

def test_store_round_trip_covers_subtrees_and_filters_by_fingerprint(tmp_path):
    store = Store(tmp_path / "state")
    assert store.last(b"/s", b"/d") is None
    whole = CleanPass(b"/s", b"/d", b"", 100, 200, "fp1", "copy-1")
    store.record(whole)
    assert store.read(b"/s", b"/d", b"") == whole
    assert store.last(b"/s", b"/d", b"a/b", "fp1") == whole  # a clean pass over the tree covers a subtree
    assert store.last(b"/s", b"/d", b"", "fp2") is None  # another fingerprint: invalidated
    assert store.last(b"/s", b"/other", b"", "fp1") is None
    sub = CleanPass(b"/s", b"/d", b"a", 300, 400, "fp1", "copy-2")
    store.record(sub)
    assert store.last(b"/s", b"/d", b"a/b", "fp1") == sub  # the latest start wins
    assert store.last(b"/s", b"/d", b"", "fp1") == whole  # a subtree's record says nothing of the whole
    newer = whole._replace(start_ns=500, end_ns=600, run_id="copy-3")
    store.record(newer)
    assert store.last(b"/s", b"/d", b"", "fp1") == newer
    files = os.listdir(tmp_path / "state" / "clean")
    assert len(files) == 2 and all(f.endswith(".json") for f in files)  # replaced in place, no temporary left


def test_store_ignores_torn_foreign_and_other_version_records(tmp_path):
    store = Store(tmp_path)
    rec = CleanPass(b"/s", b"/d", b"", 100, 200, "fp", "r")
    store.record(rec)
    (path,) = (tmp_path / "clean").iterdir()
    doc = json.loads(path.read_text())
    for bad in ("{", json.dumps({**doc, "rule": 0}), json.dumps({**doc, "start_ns": 300}),
                json.dumps({**doc, "src_root": "/elsewhere"}),
                json.dumps({k: v for k, v in doc.items() if k != "end_ns"})):
        path.write_text(bad)
        assert store.last(b"/s", b"/d") is None, bad


def test_planner_attaches_the_proof_unless_full_compare(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    settings = from_mapping({"STATE_DIR": str(tmp_path / "state"), "CLOCK_SKEW": 1.5})
    first = plan(PassKind.COPY, settings, str(src), str(dst))
    assert first.proof_ns == 0 and first.planned_ns > 0
    assert not cleanrecord.record(settings, first, "interrupted", 0, {})
    assert cleanrecord.record(settings, first, "complete", 0, {C.SKIPPED: 3}, end_ns=first.planned_ns + 7)
    second = plan(PassKind.COPY, settings, str(src), str(dst))
    skew = 1_500_000_000  # CLOCK_SKEW, off both ends
    assert (second.proof_ns, second.proof_end_ns) == (first.planned_ns - skew, first.planned_ns + 7 - skew)
    assert proof_of(PassSpec.from_dict(second.as_dict()), CAN) == Proof(second.proof_ns, second.proof_end_ns)
    assert plan(PassKind.COPY, settings, str(src), str(dst), options=PassOptions(full_compare=True)).proof_ns == 0
    assert plan(PassKind.COPY, settings, str(src), str(dst), options=PassOptions(layout="classic")).proof_ns == 0
    assert plan(PassKind.DELETE, settings, str(src), str(dst)).proof_ns == 0


# -- the copy engine: what a proof skips, and only that ---------------------------------------------

def _xattr(path, value: bytes | None) -> None:
    if value is None:
        os.removexattr(path, "user.k", follow_symlinks=False)
    else:
        os.setxattr(path, "user.k", value, follow_symlinks=False)


def _proof_spec(make_spec, proof_ns: int) -> PassSpec:
    spec = make_spec()
    return spec._replace(proof_ns=proof_ns, proof_end_ns=FUTURE, proof_fp=fingerprint(spec, CAN))


def test_engine_skips_attribute_compare_only_for_covered_entries_in_proven_directories(roots, make_spec, run_copy):
    src, dst = roots
    os.makedirs(src + b"/d/e")
    for rel in (b"top", b"d/f", b"d/e/g"):
        with open(src + b"/" + rel, "wb") as f:
            f.write(rel)
    res = run_copy(make_spec())
    assert res.failures == [] and res.tally[C.COPIED] == 3
    # Tamper the target's attributes only: lstat still matches, so only an attribute compare finds it.
    for rel in (b"top", b"d/f", b"d/e/g"):
        _xattr(dst + b"/" + rel, b"planted")
    cut = time.time_ns()
    # Everything predates the cut: the proof covers every entry and the tampering is (by assumption) not seen.
    blind = run_copy(_proof_spec(make_spec, cut))
    assert blind.tally[C.SKIPPED] == 3 and blind.tally[C.META] == 0
    # Directory d changes after the cut (an entry added and removed): its whole subtree is compared in full,
    # e included although e itself did not change (the ancestor rule); the top-level file still uses the proof.
    time.sleep(0.01)
    open(src + b"/d/tmp", "wb").close()
    os.unlink(src + b"/d/tmp")
    res = run_copy(_proof_spec(make_spec, cut))
    assert res.tally[C.META] == 2 and res.tally[C.SKIPPED] == 1
    for rel in (b"d/f", b"d/e/g"):
        assert b"user.k" not in [n.encode() for n in os.listxattr(dst + b"/" + rel)]
    # A source entry whose attributes change after the cut has a later ctime: compared, and fixed.
    _xattr(src + b"/top", b"new")
    res = run_copy(_proof_spec(make_spec, cut))
    assert res.tally[C.META] == 1
    assert os.getxattr(dst + b"/top", "user.k") == b"new"
    # No proof (a full compare): everything is compared.
    _xattr(dst + b"/top", b"planted")
    assert run_copy(make_spec()).tally[C.META] == 1


def test_engine_proof_for_a_batch_task_checks_the_chain_from_the_root(roots, make_spec, run_copy):
    src, dst = roots
    os.makedirs(src + b"/a/b")
    with open(src + b"/a/b/f", "wb") as f:
        f.write(b"x")
    run_copy(make_spec())
    _xattr(dst + b"/a/b/f", b"planted")
    cut = time.time_ns()
    assert run_copy(_proof_spec(make_spec, cut), rel=b"a/b", names=[b"f"]).tally[C.SKIPPED] == 1
    time.sleep(0.01)
    os.rename(src + b"/a", src + b"/a2")  # the moved directory's ctime moves; below it nothing is proven
    os.rename(src + b"/a2", src + b"/a")
    res = run_copy(_proof_spec(make_spec, cut), rel=b"a/b", names=[b"f"])
    assert res.tally[C.META] == 1 and os.listxattr(dst + b"/a/b/f") == []


def test_engine_directory_attributes_use_the_proof_and_an_unchanged_directory_is_not_written(
        roots, make_spec, run_copy):
    src, dst = roots
    os.makedirs(src + b"/d")
    _xattr(src + b"/d", b"v")
    run_copy(make_spec())
    assert os.getxattr(dst + b"/d", "user.k") == b"v"
    before = os.lstat(dst + b"/d").st_ctime_ns
    time.sleep(0.01)
    run_copy(make_spec())  # full compare, nothing differs: nothing written
    assert os.lstat(dst + b"/d").st_ctime_ns == before
    _xattr(dst + b"/d", b"planted")
    assert run_copy(_proof_spec(make_spec, time.time_ns())).failures == []
    assert os.getxattr(dst + b"/d", "user.k") == b"planted"  # covered by the proof: not compared
    run_copy(make_spec())
    assert os.getxattr(dst + b"/d", "user.k") == b"v"


# -- end to end: `cmover copy` ------------------------------------------------------------------------

def _cmover(args: list[str], cwd: Path, cfg: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CMOVER_CONFIG", "CMOVER_RABBITMQ_DIR")}
    env["CMOVER_CONFIG"] = str(cfg)
    res = subprocess.run([sys.executable, "-m", "cmover", "copy", "--json", "-j", "2", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["totals"]


def _ctimes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[p] = os.lstat(p).st_ctime_ns
    return out


def test_copy_records_a_clean_pass_writes_nothing_unchanged_and_finds_later_changes(tmp_path):
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    random_tree(src, seed=21, n_files=120, n_dirs=8)
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    cfg = tmp_path / "config.py"
    # No clock margin: the tree was made on this clock just before the first pass.
    cfg.write_text(f"STATE_DIR = {str(state)!r}\nCLOCK_SKEW = 0\nINLINE_ENTRIES = 10\nBATCH = 20\n")
    _cmover([str(src), str(dst)], tmp_path, cfg)
    assert len(os.listdir(state / "clean")) == 1
    before = _ctimes(dst)
    time.sleep(0.02)
    totals = _cmover([str(src), str(dst)], tmp_path, cfg)  # proven: no attribute compare, nothing written
    assert totals.get(C.COPIED, 0) == 0 and totals.get(C.META, 0) == 0
    assert _ctimes(dst) == before
    # Changes after the clean pass, each only in what a listxattr/lstat compare sees.
    os.setxattr(files[0], "user.new", b"1", follow_symlinks=False)
    subprocess.run(["setfacl", "-m", "u:1234:r", str(files[1])], check=True)
    os.chmod(files[2], 0o640 if (files[2].stat().st_mode & 0o777) != 0o640 else 0o600)
    os.chown(files[3], 4321, 4321)
    os.setxattr(dst / files[4].relative_to(src), "user.planted", b"x")  # on the target, after its end
    totals = _cmover([str(src), str(dst)], tmp_path, cfg)
    assert totals.get(C.META, 0) == 5, totals
    assert compare_trees(src, dst) == []
    # --full-compare ignores the record: the same numbers for a tree now in line.
    totals = _cmover(["--full-compare", str(src), str(dst)], tmp_path, cfg)
    assert totals.get(C.META, 0) == 0 and totals[C.SKIPPED] >= len(files)
