"""The test support itself: the tree builder makes what its spec says (and the random tree is deterministic),
the snapshot diff notices every kind of difference, and the job runner delivers in any order, twice."""

import os
import shutil
import stat
import subprocess

import pytest
from support import snap as S
from support import tree as T
from support.runner import Run, drain

from cmover.core.counters import C
from cmover.engine.jobs import DirJob

SMALL = {"n_files": 60, "n_dirs": 12}


def _without_atimes(snap: dict) -> dict:
    # Reading the tree may legitimately move atimes (symlinks are read by readlink); inode numbers and
    # allocation differ between two trees by nature; the rest must not change.
    skip = ("atime_ns", "inode", "blocks")
    return {rel: {k: v for k, v in rec.items() if k not in skip} for rel, rec in snap.items()}


@pytest.fixture
def pair(tmp_path):
    """A small tree and its `cp -a` copy, as bytes paths."""
    src = os.fsencode(tmp_path / "src")
    dst = os.fsencode(tmp_path / "dst")
    T.random_tree(src, seed=7, **SMALL)
    subprocess.run(["cp", "-a", src, dst], check=True)
    return src, dst


def _first(snap: dict, kind: str, pred=lambda rel, rec: True) -> bytes:
    return next(rel for rel, rec in sorted(snap.items()) if rec["type"] == kind and pred(rel, rec))


def test_same_seed_gives_same_tree(tmp_path):
    counts_a = T.random_tree(tmp_path / "a", seed=3, **SMALL)
    counts_b = T.random_tree(tmp_path / "b", seed=3, **SMALL)
    T.random_tree(tmp_path / "c", seed=4, **SMALL)
    snap_a = S.snapshot(tmp_path / "a")
    assert counts_a == counts_b
    assert counts_a["entries"] == len(snap_a)
    assert _without_atimes(snap_a) == _without_atimes(S.snapshot(tmp_path / "b"))
    assert S.compare_trees(tmp_path / "a", tmp_path / "c") != []


def test_counts_and_kinds(tmp_path):
    counts = T.random_tree(tmp_path, seed=1, **SMALL)
    snap = S.snapshot(tmp_path)
    n_weird = len(T.WEIRD_NAMES)
    assert counts["files"] == SMALL["n_files"] + 2 * n_weird
    assert counts["dirs"] == SMALL["n_dirs"] + n_weird
    for kind, key in (("file", "files"), ("dir", "dirs"), ("symlink", "symlinks")):
        assert sum(rec["type"] == kind for rec in snap.values()) == counts[key]
    modes = {stat.S_IMODE(rec["mode"]) for rec in snap.values()}
    assert {0o644, 0o600, 0o755, 0o640, 0o2775, 0o4755} <= modes
    assert any(rec["size"] == 0 for rec in snap.values() if rec["type"] == "file")
    assert all(rec["mtime_ns"] % 10**9 for rec in snap.values())
    targets = [rec["target"] for rec in snap.values() if rec["type"] == "symlink"]
    assert any(t.startswith(b"/") for t in targets)
    assert any(t.startswith(b"..") for t in targets)
    root = os.fsencode(tmp_path)
    links = [rel for rel, rec in snap.items() if rec["type"] == "symlink"]
    assert any(not os.path.exists(root + b"/" + rel) for rel in links)
    assert any(os.path.isdir(root + b"/" + rel) for rel in links)
    assert max(rel.count(b"/") for rel in snap) <= T.MAX_DEPTH
    if os.geteuid() == 0:
        assert any(1000 <= rec["uid"] <= 1005 for rec in snap.values() if rec["type"] == "symlink")


def test_weird_names_created(tmp_path):
    T.random_tree(tmp_path / "t", seed=2, n_files=5, n_dirs=2)
    snap = S.snapshot(tmp_path / "t")
    for file_name, dir_name, link_name in T.WEIRD_NAMES.values():
        assert snap[file_name]["type"] == "file"
        assert snap[dir_name]["type"] == "dir"
        assert snap[dir_name + b"/" + file_name]["type"] == "file"
        assert snap[link_name]["type"] == "symlink"
    assert b"caf\xe9" in snap
    assert any(len(rel) == 255 for rel in snap)


def test_no_weird_names(tmp_path):
    T.random_tree(tmp_path, seed=2, n_files=5, n_dirs=2, weird_names=False)
    names = list(S.snapshot(tmp_path))
    assert all(name.decode("ascii").isprintable() for name in names)


def test_cp_a_copy_is_identical(pair):
    src, dst = pair
    assert S.compare_trees(src, dst, dir_times=True) == []


def _touch_like(path: bytes, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def test_detects_content(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "file", lambda rel, rec: rec["size"] > 0)
    path = dst + b"/" + rel
    st = os.lstat(path)
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    _touch_like(path, st)
    problems = S.compare_trees(src, dst)
    assert len(problems) == 1
    assert problems[0].startswith(f"{rel!r}: digest differs")


def test_detects_mode(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "file")
    os.chmod(dst + b"/" + rel, 0o606)
    problems = S.compare_trees(src, dst)
    assert len(problems) == 1
    assert problems[0].startswith(f"{rel!r}: mode differs")
    assert "target=0o100606" in problems[0]


def test_detects_mtime_nanoseconds(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "file")
    path = dst + b"/" + rel
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    problems = S.compare_trees(src, dst)
    assert problems == [f"{rel!r}: mtime_ns differs: source={st.st_mtime_ns} target={st.st_mtime_ns + 1}"]


def test_detects_missing_and_extra(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "file")
    os.unlink(dst + b"/" + rel)
    extra = b"extra\xff"
    with open(dst + b"/" + extra, "wb"):
        pass
    problems = S.compare_trees(src, dst)
    assert f"{rel!r}: missing on target (file)" in problems
    assert f"{extra!r}: extra on target (file)" in problems
    assert len(problems) == 2


def test_detects_missing_directory_contents(pair):
    src, dst = pair
    snap = S.snapshot(src)
    rel = _first(snap, "dir", lambda rel, rec: any(k.startswith(rel + b"/") for k in snap))
    shutil.rmtree(dst + b"/" + rel)
    problems = S.compare_trees(src, dst)
    expected = sorted(k for k in snap if k == rel or k.startswith(rel + b"/"))
    assert problems == [f"{k!r}: missing on target ({snap[k]['type']})" for k in expected]


def test_detects_symlink_target(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "symlink")
    path = dst + b"/" + rel
    st = os.lstat(path)
    os.unlink(path)
    os.symlink(b"elsewhere", path)
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    _touch_like(path, st)
    problems = S.compare_trees(src, dst)
    assert len(problems) == 1
    assert problems[0].startswith(f"{rel!r}: target differs")
    assert "target=b'elsewhere'" in problems[0]


def test_detects_type_change(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "symlink")
    os.unlink(dst + b"/" + rel)
    os.mkdir(dst + b"/" + rel)
    assert S.compare_trees(src, dst) == [f"{rel!r}: type differs: source=symlink target=dir"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_detects_owner(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "file")
    st = os.lstat(dst + b"/" + rel)
    os.chown(dst + b"/" + rel, st.st_uid + 1, st.st_gid)
    problems = S.compare_trees(src, dst)
    assert len(problems) == 1
    assert problems[0].startswith(f"{rel!r}: uid differs")


def test_directory_mtime_only_with_dir_times(pair):
    src, dst = pair
    rel = _first(S.snapshot(src), "dir")
    st = os.lstat(dst + b"/" + rel)
    os.utime(dst + b"/" + rel, ns=(st.st_atime_ns, st.st_mtime_ns + 5))
    assert S.compare_trees(src, dst) == []
    problems = S.compare_trees(src, dst, dir_times=True)
    assert len(problems) == 1
    assert problems[0].startswith(f"{rel!r}: mtime_ns differs")


def test_atime_only_with_atimes(tmp_path):
    src = os.fsencode(tmp_path / "src")
    dst = os.fsencode(tmp_path / "dst")
    T.random_tree(src, seed=5, n_files=3, n_dirs=1, weird_names=False)
    T.random_tree(dst, seed=5, n_files=3, n_dirs=1, weird_names=False)
    rel = _first(S.snapshot(src), "file")
    st = os.lstat(dst + b"/" + rel)
    os.utime(dst + b"/" + rel, ns=(st.st_atime_ns + 7, st.st_mtime_ns))
    assert S.compare_trees(src, dst) == []
    problems = S.compare_trees(src, dst, atimes=True)
    assert problems == [f"{rel!r}: atime_ns differs: source={st.st_atime_ns} target={st.st_atime_ns + 7}"]


def test_snapshot_does_not_follow_symlinks(tmp_path):
    os.mkdir(tmp_path / "outside")
    (tmp_path / "outside" / "secret").write_bytes(b"x")
    os.mkdir(tmp_path / "t")
    os.symlink(tmp_path / "outside", tmp_path / "t" / "link")
    snap = S.snapshot(tmp_path / "t")
    assert list(snap) == [b"link"]
    assert snap[b"link"]["target"] == os.fsencode(tmp_path / "outside")


def test_compare_detects_xattr_hardlink_and_hole_differences(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        (root / "f").write_bytes(b"x")
        os.link(root / "f", root / "g")
        with open(root / "s", "wb") as fh:
            fh.truncate(16 << 20)

    def same_times() -> None:
        for root in (a, b):
            for name in ("f", "g", "s"):
                os.utime(root / name, ns=(1_000_000_001, 2_000_000_002))

    same_times()
    assert S.compare_trees(a, b) == []
    os.setxattr(b / "f", b"user.k", b"v")
    subprocess.run(["setfacl", "-m", "u:4242:r--", os.fsdecode(b / "s")], check=True)
    (b / "g").unlink()
    (b / "g").write_bytes(b"x")  # same content, no longer linked
    with open(b / "s", "r+b") as fh:
        fh.write(b"\0" * (16 << 20))  # same bytes, holes filled
    same_times()
    diffs = "\n".join(S.compare_trees(a, b))
    assert "xattrs differs" in diffs
    assert "b's': acls differs" in diffs
    assert "hard-link group differs" in diffs
    assert "holes not kept" in diffs


# -- the declarative builder --------------------------------------------------------------------------------

T_NS = 1_600_000_000_123_456_789


def test_build_makes_every_entry_type_with_its_attributes(tmp_path):
    root = T.build(tmp_path / "t", {
        b"": T.Dir(mode=0o750, uid=4321, gid=4322),
        "d/sub/": T.Dir(mode=0o2770, mtime_ns=T_NS + 1),
        "d/f": T.File(b"data", mode=0o4751, uid=1001, gid=1002, atime_ns=T_NS - 5, mtime_ns=T_NS,
                      xattrs={"user.k": b"v"}, acl="u:4242:rw-"),
        "d/hard": T.HardLink("d/f"),
        "big": T.File(size=5000),
        "sparse": T.File(size=16 << 20, data={8 << 20: b"mid"}),
        b"caf\xe9": b"latin-1",
        "link": T.Link(b"d/f", uid=77, gid=78, mtime_ns=T_NS),
        "fifo": T.Fifo(mode=0o620),
        "null": T.Device(1, 3, mode=0o666),
        "sock": T.Socket(),
        "acl-dir": T.Dir(default_acl="u:4242:rwx"),
    })
    snap = S.snapshot(root, include_root=True)
    assert (snap[b""]["uid"], snap[b""]["gid"], stat.S_IMODE(snap[b""]["mode"])) == (4321, 4322, 0o750)
    f = snap[b"d/f"]
    assert (f["uid"], f["gid"], stat.S_IMODE(f["mode"]), f["atime_ns"], f["mtime_ns"]) == \
        (1001, 1002, 0o4751, T_NS - 5, T_NS)
    assert f["xattrs"] == {"user.k": b"v"} and set(f["acls"]) == {"system.posix_acl_access"}
    assert snap[b"d/hard"]["inode"] == f["inode"]
    assert snap[b"d/sub"]["mtime_ns"] == T_NS + 1 and stat.S_IMODE(snap[b"d/sub"]["mode"]) == 0o2770
    assert snap[b"big"]["size"] == 5000
    assert snap[b"sparse"]["size"] == 16 << 20 and snap[b"sparse"]["blocks"] < 1024
    assert S.read_noatime(os.path.join(root, b"sparse"))[8 << 20:(8 << 20) + 3] == b"mid"
    assert snap[b"caf\xe9"]["size"] == 7
    assert (snap[b"link"]["target"], snap[b"link"]["uid"], snap[b"link"]["mtime_ns"]) == (b"d/f", 77, T_NS)
    assert {snap[n]["type"] for n in (b"fifo", b"null", b"sock")} == {"fifo", "chr", "socket"}
    assert snap[b"null"]["rdev"] == os.makedev(1, 3)
    assert set(snap[b"acl-dir"]["acls"]) == {"system.posix_acl_default"}


def test_unchanged_sees_a_replaced_entry_and_a_directory_touched_in_between(tmp_path):
    root = T.build(tmp_path / "t", {"d/f": b"x", "g": b"y"})
    before = S.snapshot(root, include_root=True)
    assert S.unchanged(before, S.snapshot(root, include_root=True)) == []
    T.put(root, "d/tmp")
    os.unlink(os.path.join(root, b"d/tmp"))  # created and removed again: only d's mtime tells
    g = os.path.join(root, b"g")
    st = os.lstat(g)
    os.rename(g, g + b".old")
    T.build(root, {"g": T.File(b"y", mtime_ns=st.st_mtime_ns, atime_ns=st.st_atime_ns)})
    os.unlink(g + b".old")
    problems = "\n".join(S.unchanged(before, S.snapshot(root, include_root=True)))
    assert "b'd': mtime_ns differs" in problems and "b'g': inode differs" in problems


# -- the job runner ------------------------------------------------------------------------------------------


def test_runner_delivers_in_random_order_some_jobs_twice(roots, make_spec):
    src, dst = roots
    T.random_tree(src, seed=9, n_files=120, n_dirs=25, weird_names=False)
    spec = make_spec(inline_entries=0, batch=10)
    ordered = Run(spec).drain(seed=None, redeliver=0)
    assert len(ordered.delivered) == len(set(ordered.delivered)) > 25  # each job once, in emission order
    shutil.rmtree(dst)
    os.mkdir(dst)
    shuffled = drain(spec, seed=3, redeliver=0.5)
    twice = {j for j in shuffled.delivered if shuffled.delivered.count(j) == 2}
    assert twice and all(shuffled.delivered.count(j) <= 2 for j in shuffled.delivered)
    assert shuffled.delivered[:1] == [DirJob(b"")] and shuffled.delivered != ordered.delivered
    assert set(shuffled.delivered) == set(ordered.delivered)
    assert shuffled.failures == [] and shuffled.tally[C.COPIED] == ordered.tally[C.COPIED]
    assert S.compare_trees(src, dst) == []
