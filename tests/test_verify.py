"""The verify pass engine on real trees: every category found exactly once, hard-link partitions across
directories and task orders, content only with --content, chunked content, the manifest and its reuse."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import time

import pytest
from support.runner import Run, drain

from cmover.core.counters import C
from cmover.core.difference import CATEGORIES, counter
from cmover.core.passes import PassKind, PassSpec, VerifyOptions
from cmover.engine import manifest

T = 1_600_000_000_123_456_789


def run_verify(spec: PassSpec, *, seed: int | None = None, fs=None) -> Run:
    """A whole verify pass on the job runner (every job on a fresh engine, as another worker would; in random
    order when ``seed`` is given; each delivered once: the tests count differences exactly); no failure.
    ``fs``: see :class:`support.runner.Run`."""
    run = drain(spec, seed=seed, redeliver=0, fs=fs)
    assert run.failures == [], run.failures
    return run


@pytest.fixture
def vspec(roots):
    def make(**opts) -> PassSpec:
        kw = {k: opts.pop(k) for k in ("batch", "chunk_threshold", "chunk_size", "inline_entries") if k in opts}
        return PassSpec(run_id="verify-test", kind=PassKind.VERIFY, src_root=roots[0], dst_root=roots[1],
                        inline_seconds=3600.0, options=VerifyOptions(**opts), **kw)

    return make


def build(root: bytes) -> None:
    """A small tree with an entry of every kind cmover copies, hard links across directories and a sparse file."""
    r = os.fsdecode(root)
    os.makedirs(f"{r}/d1/sub")
    os.makedirs(f"{r}/d2")
    with open(f"{r}/d1/file", "wb") as f:
        f.write(b"some data\n" * 100)
    with open(f"{r}/d1/other", "wb") as f:
        f.write(b"other data")
    os.link(f"{r}/d1/file", f"{r}/d2/link")  # a group across directories
    with open(f"{r}/d1/sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(300_000)
        f.write(b"island")
    os.symlink("file", f"{r}/d1/sym")
    os.mkfifo(f"{r}/d1/fifo")
    os.mknod(f"{r}/d1/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(f"{r}/d1/file", "user.tag", b"v1")
    subprocess.run(["setfacl", "-m", "u:12345:r", f"{r}/d1/other"], check=True)
    os.chown(f"{r}/d1/other", 1234, 5678)
    for dirpath, dirs, files in os.walk(r, topdown=False):
        for n in files + dirs:
            os.utime(os.path.join(dirpath, n), ns=(T, T), follow_symlinks=False)
    os.utime(r, ns=(T, T))


def copy_tree(src: bytes, dst: bytes) -> None:
    os.rmdir(dst)
    subprocess.run(["rsync", "-aHAXS", os.fsdecode(src) + "/", os.fsdecode(dst)], check=True)
    # rsync keeps no directory atimes (and its reads may move the source's): give the target the source's.
    for dirpath, dirs, files in os.walk(src, topdown=False):
        for n in [*files, *dirs, b""]:
            s = os.path.join(dirpath, n) if n else dirpath
            st = os.lstat(s)
            os.utime(dst + s[len(src):], ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


@pytest.fixture
def pair(roots):
    src, dst = roots
    build(src)
    copy_tree(src, dst)
    return os.fsdecode(src), os.fsdecode(dst)


def keep_times(path: str):
    """Restore the mtime and atime of ``path`` (not followed) after a change: one difference at a time."""
    st = os.lstat(path)
    return lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _rewrite(path: str, data: bytes) -> None:
    back = keep_times(path)
    with open(path, "r+b") as f:
        f.write(data)
    back()


def _replace_symlink(d: str) -> None:
    back = keep_times(d + "/d1")
    st = os.lstat(d + "/d1/sym")
    os.unlink(d + "/d1/sym")
    os.symlink("fild", d + "/d1/sym")  # same length: same size
    os.utime(d + "/d1/sym", ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    back()


def _replace_node(d: str, name: str, make) -> None:
    back = keep_times(d + "/d1")
    st = os.lstat(f"{d}/d1/{name}")
    os.unlink(f"{d}/d1/{name}")
    make(f"{d}/d1/{name}", st)
    os.chown(f"{d}/d1/{name}", st.st_uid, st.st_gid, follow_symlinks=False)
    os.utime(f"{d}/d1/{name}", ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    back()


def _split_link(d: str) -> None:
    back = keep_times(d + "/d2")
    shutil.copy2(d + "/d2/link", d + "/d2/link.tmp")
    os.setxattr(d + "/d2/link.tmp", "user.tag", b"v1")
    os.rename(d + "/d2/link.tmp", d + "/d2/link")
    back()


def _fill_holes(d: str) -> None:
    back = keep_times(d + "/d1/sparse")
    with open(d + "/d1/sparse", "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    back()


def _remove(d: str, rel: str) -> None:
    back = keep_times(os.path.dirname(f"{d}/{rel}"))
    os.unlink(f"{d}/{rel}")
    back()


def _add(d: str, rel: str) -> None:
    back = keep_times(os.path.dirname(f"{d}/{rel}"))
    with open(f"{d}/{rel}", "wb") as f:
        f.write(b"x")
    back()


def _truncate(d: str) -> None:
    back = keep_times(d + "/d1/other")
    os.truncate(d + "/d1/other", 3)
    back()


def _keeping(path: str, change) -> None:
    back = keep_times(path)
    change(path)
    back()


def _plain_file(path: str, st: os.stat_result) -> None:
    with open(path, "wb"):
        pass
    os.chmod(path, stat.S_IMODE(st.st_mode))


#: One difference of each category, made on the target ("d": its root), with what the verify must name.
INJECT = {
    "missing": (lambda d: _remove(d, "d1/other"), "d1/other"),
    "extra": (lambda d: _add(d, "d2/new"), "d2/new"),
    "type": (lambda d: _replace_node(d, "fifo", _plain_file), "d1/fifo"),
    "size": (_truncate, "d1/other"),
    "mode": (lambda d: os.chmod(d + "/d1/fifo", 0o600), "d1/fifo"),
    "uid": (lambda d: os.chown(d + "/d1/other", 4321, -1), "d1/other"),
    "gid": (lambda d: os.chown(d + "/d1/other", -1, 8765), "d1/other"),
    "mtime": (lambda d: os.utime(d + "/d1/other", ns=(T, T + 1)), "d1/other"),
    "atime": (lambda d: os.utime(d + "/d1/other", ns=(T + 1, T)), "d1/other"),
    "xattr": (lambda d: _keeping(d + "/d1/file", lambda p: os.setxattr(p, "user.tag", b"v2")), "d1/file"),
    "acl": (lambda d: subprocess.run(["setfacl", "-n", "-m", "u:12345:rw", d + "/d1/other"], check=True), "d1/other"),
    "symlink": (_replace_symlink, "d1/sym"),
    "rdev": (lambda d: _replace_node(d, "null", lambda p, st: os.mknod(p, st.st_mode, os.makedev(1, 5))), "d1/null"),
    "hardlink": (_split_link, "d2/link"),
    "holes": (_fill_holes, "d1/sparse"),
    "content": (lambda d: _rewrite(d + "/d1/file", b"SOME"), "d1/file"),
    "dir mtime": (lambda d: os.utime(d + "/d1/sub", ns=(T, T + 5)), "d1/sub"),
}


def test_every_category_has_a_counter():
    assert all(counter(c) in C.ALL for c in CATEGORIES)


def test_identical_copy_verifies_identical(pair, vspec):
    res = run_verify(vspec(content=True, atime=True))
    assert res.diffs == []
    assert res.tally[C.VERIFIED] == 12 - 1 and res.tally[C.FILES_READ] == 3  # 4 dirs, 7 entries; 3 data (a link)


@pytest.mark.parametrize("what", sorted(INJECT))
def test_each_difference_found_exactly_once_with_its_category(pair, vspec, what):
    inject, rel = INJECT[what]
    inject(pair[1])
    category = what.split()[-1]
    res = run_verify(vspec(content=True, atime=category == "atime"), seed=len(what))
    assert res.found() == [(rel.encode(), category)], [d.line() for d in res.diffs]
    assert res.tally[C.DIFFERENCES] == 1 and res.tally[counter(category)] == 1
    if category == "content":  # a same-size, same-mtime corruption: only reading finds it
        assert run_verify(vspec()).diffs == []
    if what == "dir mtime":
        assert run_verify(vspec(skip_dir_times=True)).diffs == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hard_link_partitions_across_directories_in_any_task_order(roots, vspec, seed):
    src, dst = (os.fsdecode(r) for r in roots)
    for d in ("a", "b", "c"):
        os.mkdir(f"{src}/{d}")
    for i in range(3):
        with open(f"{src}/a/f{i}", "wb") as f:
            f.write(b"same")
        os.utime(f"{src}/a/f{i}", ns=(T, T))
    os.link(f"{src}/a/f0", f"{src}/b/g0")
    os.link(f"{src}/a/f0", f"{src}/c/h0")  # group {a/f0, b/g0, c/h0}; a/f1, a/f2 alone
    for d in ("a", "b", "c", ""):
        os.utime(f"{src}/{d}", ns=(T, T))
    copy_tree(*roots)
    # On the target: c/h0 split from its group, and a/f2 merged into a/f1's inode.
    back = keep_times(f"{dst}/c"), keep_times(f"{dst}/a")
    os.unlink(f"{dst}/c/h0")
    shutil.copy2(f"{dst}/a/f0", f"{dst}/c/h0")
    os.unlink(f"{dst}/a/f2")
    os.link(f"{dst}/a/f1", f"{dst}/a/f2")
    for b in back:
        b()
    res = run_verify(vspec(inline_entries=0, batch=1), seed=seed)  # every directory and entry a task of its own
    got = res.found()
    assert [c for _, c in got] == ["hardlink", "hardlink"], got
    assert {p for p, _ in got} & {b"a/f1", b"a/f2"} and {p for p, _ in got} & {b"a/f0", b"b/g0", b"c/h0"}


def test_huge_files_compared_in_chunks_one_difference_per_file(roots, vspec):
    src, dst = (os.fsdecode(r) for r in roots)
    with open(f"{src}/big", "wb") as f:
        f.write(os.urandom(5 << 20))
    copy_tree(*roots)
    assert run_verify(vspec(content=True, chunk_threshold=1 << 20, chunk_size=1 << 20)).diffs == []
    for off in (100, 3 << 20, (5 << 20) - 1):
        _rewrite(f"{dst}/big", b"\xff\xfe")  # at 0
        back = keep_times(f"{dst}/big")
        with open(f"{dst}/big", "r+b") as f:
            f.seek(off)
            f.write(b"!")
        back()
    res = run_verify(vspec(content=True, chunk_threshold=1 << 20, chunk_size=1 << 20), seed=4)
    assert res.found() == [(b"big", "content")]
    assert res.tally[C.CHUNKS_VERIFIED] == 5 and res.tally[C.FILES_READ] == 1
    assert sum(1 for j in res.emitted if j.kind == "chunk") == 5


def test_manifest_merge_reuse_and_the_standard_checker(roots, vspec, tmp_path):
    src, dst = (os.fsdecode(r) for r in roots)
    names = ["plain", "back\\slash", "new\nline", "sp ace", "d/inner"]
    os.mkdir(f"{src}/d")
    for n in names:
        with open(f"{src}/{n}", "wb") as f:
            f.write(n.encode() * 10)
    with open(os.fsencode(src) + b"/bad\xff", "wb") as f:
        f.write(b"not utf-8")
    copy_tree(*roots)
    mdir = str(tmp_path / "m")
    os.mkdir(mdir)
    first = run_verify(vspec(content=True, manifest=mdir, batch=2, inline_entries=0), seed=5)
    assert first.diffs == [] and first.tally[C.MANIFEST_LEFT_OUT] == 1
    assert manifest.merge(mdir, "verify-test") == len(names)
    assert not os.path.exists(os.path.join(mdir, manifest.SHARDS))
    for root in (src, dst):
        out = subprocess.run(["b3sum", "--check", os.path.join(mdir, manifest.MANIFEST)], cwd=root,
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.count(": OK") == len(names), out
    # Unchanged files are not read again; a changed one is, and the checker sees the change on the target.
    _rewrite(f"{dst}/plain", b"PLAIN")
    second = run_verify(vspec(content=True, manifest=mdir), seed=6)
    assert second.found() == [(b"plain", "content")]
    assert second.tally[C.FILES_READ] == 2 and second.tally[C.HASHES_REUSED] == len(names) - 1  # + bad\xff
    manifest.merge(mdir, "verify-test")
    out = subprocess.run(["b3sum", "--check", os.path.join(mdir, manifest.MANIFEST)], cwd=dst,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "plain: FAILED" in out.stdout
    third = run_verify(vspec(content=True, manifest=mdir, reread_all=True))
    assert third.tally[C.FILES_READ] == len(names) + 1 and third.tally[C.HASHES_REUSED] == 0


def test_previous_index_binary_search(tmp_path):
    paths = sorted((f"d{i % 7}/n{i}".encode() for i in range(500)), key=manifest.sort_key)
    paths.insert(0, b"top")
    lines = [manifest.Entry(i, i, i, i, "a" * 64, p).line() for i, p in enumerate(sorted(paths, key=manifest.sort_key))]
    (tmp_path / manifest.INDEX).write_bytes(b"".join(lines))
    idx = manifest.PreviousIndex.open(str(tmp_path))
    assert idx is not None
    for p in paths[::17]:
        e = idx.get(p)
        assert e is not None and e.path == p
    assert idx.get(b"d3/none") is None and idx.get(b"zzz") is None and idx.get(b"") is None
    assert [e.path for e in idx.directory(b"d3")] == sorted(p for p in paths if p.startswith(b"d3/"))
    assert [e.path for e in idx.directory(b"")] == [b"top"]
    idx.close()


def test_escaping_round_trip():
    for p in (b"a\\b", b"a\nb", b"\\\\n", b"plain"):
        assert manifest.unescape(manifest.escape(p)) == p
    assert manifest.checker_line("0" * 64, b"a\nb") == b"\\" + b"0" * 64 + b"  a\\nb\n"
    with pytest.raises(ValueError):
        manifest.checker_line("0" * 64, b"\xff")


def test_mapped_tree_verifies_identical(pair, vspec):
    """A migration between sites: owners and ACL ids written through the identity maps are identical."""
    from cmover.core.idmap import IdMap

    dst = pair[1]
    back = keep_times(dst + "/d1/other")
    os.chown(dst + "/d1/other", 4321, 8765)
    subprocess.run(["setfacl", "-n", "-x", "u:12345", "-m", "u:23456:r", dst + "/d1/other"], check=True)
    back()
    base = vspec()
    assert {d.category for d in run_verify(base).diffs} == {"uid", "gid", "acl"}
    mapped = base._replace(idmap=IdMap(uids=((1234, 4321), (12345, 23456)), gids=((5678, 8765),)))
    assert run_verify(mapped).diffs == []


def test_project_ids_compared_as_the_copy_copies_them(xfs, vspec):
    """On a real XFS: directories' projects always, files' in a directory that has one (cmover.core.projid)."""
    src, dst = xfs / "vsrc", xfs / "vdst"
    (src / "proj").mkdir(parents=True)
    (src / "proj" / "a").write_bytes(b"a")
    (src / "plain").mkdir()
    (src / "plain" / "b").write_bytes(b"b")
    _xfs_io(src / "proj", "chattr +P", "chproj 42")
    _xfs_io(src / "proj" / "a", "chproj 42")
    _xfs_io(src / "plain" / "b", "chproj 45")  # a file's own project outside a project directory: not compared
    dst.mkdir()
    copy_tree(os.fsencode(src), os.fsencode(dst))
    _xfs_io(dst / "proj", "chattr +P", "chproj 42")
    _xfs_io(dst / "proj" / "a", "chproj 42")
    spec = vspec()._replace(src_root=os.fsencode(src), dst_root=os.fsencode(dst))
    assert run_verify(spec).diffs == []
    _xfs_io(dst / "proj" / "a", "chproj 7")
    _xfs_io(dst / "plain", "chproj 0")
    assert [d.line() for d in run_verify(spec).diffs] == ["proj/a: project: source 42, target 7"]
    _xfs_io(dst / "proj", "chattr -P")
    assert [(d.path, d.category) for d in run_verify(spec).diffs] == [(b"proj", "project"), (b"proj/a", "project")]


def _xfs_io(path, *commands: str) -> None:
    subprocess.run(["xfs_io", *[a for c in commands for a in ("-c", c)], str(path)], check=True, capture_output=True)


def test_bad_verify_options_are_refused_before_anything_is_written(roots, tmp_path):
    from cmover.core.errors import ConfigError
    from cmover.core.settings import Settings
    from cmover.engine.planner import PassOptions, plan

    src, dst = (os.fsdecode(r) for r in roots)

    def planned(**v):
        return plan(PassKind.VERIFY, Settings(), src, dst, options=PassOptions(verify=VerifyOptions(**v)))

    for where in (f"{src}/m", f"{dst}/m", dst):
        with pytest.raises(ConfigError, match="inside the (source|target) tree"):
            planned(manifest=where)
    with pytest.raises(ConfigError, match="--all only matters with --manifest"):
        planned(reread_all=True)
    with pytest.raises(ConfigError, match="parent directory does not exist"):
        planned(manifest=str(tmp_path / "no" / "m"))
    spec = planned(manifest=str(tmp_path / "m"), atime=True)
    opts = VerifyOptions.of(spec)
    assert opts.content and opts.atime and opts.manifest == str(tmp_path / "m") and not os.path.exists(opts.manifest)
    assert PassSpec.from_dict(spec.as_dict()) == spec


def test_status_and_summary_show_a_verify_pass_with_its_own_counters():
    from cmover.cli.render import status_lines, summary_lines
    from cmover.ops.status import PassStatus

    totals = {"dirs": 3, "files_scanned": 40, "entries_verified": 41, "differences": 3, "diff_mode": 2,
              "diff_content": 1, "files_read": 30, "bytes_read": 4096, "hashes_reused": 9}
    lines = summary_lines("verify", "complete", totals, 2.0)
    assert lines[0] == "cmover verify: complete in 2.0 s"
    assert "  differ    3 (2 mode, 1 content)" in lines and any("30 files read" in ln for ln in lines)
    assert "(identical)" in summary_lines("verify", "complete", {"dirs": 1}, 0.1)[2]
    node = {"host": "n1", "processes": 2, "active": 1, "last_report_s": 3, "totals": totals,
            "rates": {"files_scanned": 20.0}}
    st = PassStatus("verify-1", "verify", "complete", 0, {"cmover.verify.dirs": 0}, totals, 2.0, nodes=[node])
    out = status_lines(st, None)
    head = next(ln for ln in out if ln.startswith("node "))
    assert head.split() == ["node", "processes", "active", "dirs", "entries", "differences", "read", "failed",
                            "files/s", "last", "report"], head
    assert any(ln.startswith("differ") and "2 mode" in ln for ln in out), out


def test_merge_sorts_in_bounded_runs_drops_torn_lines_and_repeats(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "RUN_LINES", 3)
    monkeypatch.setattr(manifest, "_FAN_IN", 2)
    rng = random.Random(9)
    paths = [f"d{rng.randrange(5)}/f{i}".encode() for i in range(40)] + [b"top", b"a\nb", b"c\\d"]
    shards = tmp_path / manifest.SHARDS / "verify-m"
    shards.mkdir(parents=True)
    lines = [manifest.Entry(1, 2, 3, 4, "b" * 64, p).line() for p in paths]
    rng.shuffle(lines)
    (shards / "h-1").write_bytes(b"".join(lines[:20]) + lines[5])  # a task delivered twice
    (shards / "h-2").write_bytes(b"".join(lines[20:]) + b"7 7 7 7 " + b"c" * 30)  # torn last line
    assert manifest.merge(str(tmp_path), "verify-m") == len(paths)
    got = [manifest.Entry.parse(ln).path for ln in (tmp_path / manifest.INDEX).read_bytes().splitlines(True)]
    assert got == sorted(paths, key=manifest.sort_key)
    assert (tmp_path / manifest.MANIFEST).read_bytes().count(b"\n") == len(paths)
    assert not shards.exists() and not (tmp_path / manifest.SHARDS).exists()


def test_a_merge_removes_the_shards_interrupted_runs_left_and_keeps_those_still_written(tmp_path):
    top = tmp_path / manifest.SHARDS
    line = manifest.Entry(1, 2, 3, 4, "e" * 64, b"f").line()
    for run in ("verify-old", "verify-live", "verify-new"):
        (top / run).mkdir(parents=True)
        (top / run / "h-1").write_bytes(line)
    t = time.time_ns()
    old = t - 3600 * 10**9
    os.utime(top / "verify-old" / "h-1", ns=(old, old))  # interrupted an hour ago
    os.utime(top / "verify-old", ns=(old, old))
    live = t + 60 * 10**9
    os.utime(top / "verify-live" / "h-1", ns=(live, live))  # written after this run began: another run's
    assert manifest.merge(str(tmp_path), "verify-new") == 1
    assert sorted(p.name for p in top.iterdir()) == ["verify-live"]


def test_lustre_layout_compared_under_the_copy_policy(lenv):
    """Through the liblustreapi stand-in: a target file striped otherwise than the policy would give it."""
    from cmover.lustre.layout import Component, Layout

    striped = Layout((Component(stripe_count=2, stripe_size=2 << 20),))
    other = Layout((Component(stripe_count=1, stripe_size=1 << 20),))
    lenv.make_file(lenv.src / "f", striped, data=b"f" * 5000)
    lenv.make_file(lenv.dst / "f", other, data=b"f" * 5000)
    st = os.stat(lenv.src / "f")
    os.utime(lenv.dst / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    for d in (lenv.src, lenv.dst):
        os.utime(d, ns=(T, T))
    spec = PassSpec(run_id="verify-l", kind=PassKind.VERIFY, src_root=os.fsencode(lenv.src),
                    dst_root=os.fsencode(lenv.dst), inline_seconds=3600.0, options=VerifyOptions(content=True))
    keep = run_verify(spec._replace(layout="keep"), fs=lambda t: lenv.fs("keep", True, tally=t))
    assert [(d.path, d.category) for d in keep.diffs] == [(b"f", "layout")]
    default = run_verify(spec._replace(layout="target-default"),
                         fs=lambda t: lenv.fs("target-default", True, tally=t))
    assert default.diffs == []


def test_a_merge_that_misses_shards_is_a_failure(tmp_path, capsys):
    """Workers whose --manifest directory is not the one the command merges (not shared): said, exit 1."""
    from cmover.cli.verify import finish

    shards = tmp_path / manifest.SHARDS / "verify-s"
    shards.mkdir(parents=True)
    (shards / "h-1").write_bytes(manifest.Entry(1, 2, 3, 4, "d" * 64, b"f").line())
    totals = {C.MANIFEST_LISTED: 1}
    finish("verify", "verify-s", "complete", str(tmp_path), totals)
    assert C.FAILED not in totals and "manifest: 1 files" in capsys.readouterr().err
    (shards.parent / "verify-t").mkdir(parents=True)
    (shards.parent / "verify-t" / "h-1").write_bytes(manifest.Entry(1, 2, 3, 4, "d" * 64, b"f").line())
    totals = {C.MANIFEST_LISTED: 2}
    finish("verify", "verify-t", "complete", str(tmp_path), totals)
    assert totals[C.FAILED] == 1 and "is incomplete: 1 of the 2 files" in capsys.readouterr().err
