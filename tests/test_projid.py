"""Project ids (cmover.core.projid) on a real, loop-mounted XFS: copied with files and directories (the inherit
flag of directories too, chunked files included), compared on later passes (a changed id is re-applied as a
metadata update), and counted, never failed, on a target that cannot store them (ext4 without the project
feature)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmover.core import projid
from cmover.core.counters import C
from cmover.core.passes import PassKind, PassSpec
from cmover.core.projid import SAME, SET, UNSUPPORTED, Project

T = 1_660_000_000_000_000_000


def test_decide_is_the_rule():
    p42, p42i = Project(42), Project(42, inherit=True)
    assert projid.decide(None, p42) == SAME  # the source filesystem has no project ids
    assert projid.decide(Project(0), p42) == SAME  # no project on the source: the target's is left alone
    assert projid.decide(p42, p42) == SAME
    assert projid.decide(p42, Project(0)) == SET
    assert projid.decide(p42i, p42) == SET  # inheritance is part of a directory's project
    assert projid.decide(Project(0, inherit=True), Project(0)) == SET
    assert projid.decide(p42, None) == UNSUPPORTED
    assert not Project(0).present and Project(0, True).present and p42.present


def _xfs_io(path: Path, *cmds: str) -> None:
    args = ["xfs_io"]
    for c in cmds:
        args += ["-c", c]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def _lsproj(path: Path) -> int:
    """The project id as ``lsattr -p`` shows it (independent of cmover's own ioctl code)."""
    out = subprocess.run(["lsattr", "-pd", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def _inherits(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        p = projid.read(fd)
    finally:
        os.close(fd)
    assert p is not None
    return p.inherit


def _build(src: Path) -> dict[str, tuple[int, bool]]:
    """A tree with projects; returns {relative path: (project id, inherits)} of its files and directories."""
    proj = src / "proj"
    (proj / "sub").mkdir(parents=True)
    _xfs_io(proj, "chattr +P", "chproj 42")  # a project tree: new entries inherit 42
    _xfs_io(proj / "sub", "chproj 44")  # an id of its own, no inheritance
    for name, size in (("a", 10), ("b", 3 << 20), ("sub/c", 5)):  # b: copied in chunks
        with open(proj / name, "wb") as fh:
            fh.write(b"x" * size)
    _xfs_io(proj / "sub" / "c", "chproj 43")
    (src / "loose").write_bytes(b"loose")
    _xfs_io(src / "loose", "chproj 45")  # a file with a project in a directory without one
    (src / "plain").write_bytes(b"plain")
    os.symlink("a", proj / "l")  # symlinks have no project id (they cannot be opened)
    for p in (proj / "a", proj / "b", proj / "sub" / "c", src / "loose", src / "plain", proj / "l"):
        os.utime(p, ns=(T, T), follow_symlinks=False)
    rels = ["proj", "proj/sub", "proj/a", "proj/b", "proj/sub/c", "loose", "plain"]
    return {r: (_lsproj(src / r), _inherits(src / r)) for r in rels}


def _cmover(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CMOVER_CONFIG", "CMOVER_RABBITMQ_DIR")}
    return subprocess.run([sys.executable, "-m", "cmover", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_copied_compared_and_reapplied_on_xfs(xfs, tmp_path, run_copy):
    src, dst = xfs / "src", xfs / "dst"
    src.mkdir()
    want = _build(src)
    assert want["proj"] == (42, True) and want["proj/a"] == (42, False) and want["proj/sub/c"] == (43, False)
    assert want["plain"] == (0, False) and want["loose"] == (45, False)

    first = _cmover("copy", "--json", "--chunk-threshold", "1M", "--chunk-size", "1M", str(src), str(dst),
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    t1 = json.loads(first.stdout)["totals"]
    assert t1["files_chunked"] == 1 and t1.get("project_ids_unsupported", 0) == 0, t1
    assert {r: (_lsproj(dst / r), _inherits(dst / r)) for r in want} == want
    # Set explicitly: proj (42+P), sub (44), sub/c (43), loose (45); a and b inherited 42 from their new directory.
    assert t1["project_ids_set"] == 4, t1

    spec = PassSpec(run_id="copy-projid", kind=PassKind.COPY, src_root=os.fsencode(src), dst_root=os.fsencode(dst),
                    inline_seconds=3600.0)
    again = run_copy(spec)
    assert again.failures == []
    assert again.tally[C.COPIED] == 0 and again.tally[C.META] == 0 and again.tally[C.PROJECTS_SET] == 0, again.tally

    # Project ids changed on the source (chproj moves no mtime): re-applied, data untouched.
    ino = os.lstat(dst / "proj" / "a").st_ino
    _xfs_io(src / "proj" / "a", "chproj 50")
    _xfs_io(src / "proj" / "sub", "chattr +P", "chproj 60")
    third = run_copy(spec)
    assert third.failures == []
    assert third.tally[C.META] == 1 and third.tally[C.COPIED] == 0 and third.tally[C.PROJECTS_SET] == 2, third.tally
    assert (_lsproj(dst / "proj" / "a"), os.lstat(dst / "proj" / "a").st_ino) == (50, ino)
    assert (_lsproj(dst / "proj" / "sub"), _inherits(dst / "proj" / "sub")) == (60, True)
    assert run_copy(spec).tally[C.PROJECTS_SET] == 0


def test_target_without_project_ids_is_counted_not_failed(xfs, tmp_path):
    src = xfs / "src-unsupported"
    src.mkdir()
    want = _build(src)
    dst = tmp_path / "dst"  # ext4 (or another filesystem) without project ids
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        if projid.write(fd, Project(7), True):
            pytest.fail(f"{tmp_path} stores project ids: this test needs a target that cannot")
    finally:
        os.close(fd)
    r = _cmover("copy", "--chunk-threshold", "1M", "--chunk-size", "1M", str(src), str(dst), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with_project = sum(1 for pid, inherit in want.values() if pid or inherit)
    assert f"WARNING: {with_project:,} entries keep no project id" in r.stdout, r.stdout
    assert "project id that the target filesystem cannot store" in r.stderr  # said once, in the log
    assert (dst / "proj" / "b").read_bytes() == b"x" * (3 << 20)
    # A second pass writes nothing; each directory with a project is counted again (a reminder, not a failure).
    r2 = _cmover("copy", "--json", str(src), str(dst), cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    t2 = json.loads(r2.stdout)["totals"]
    assert t2.get("files_copied", 0) == 0 and t2.get("files_meta_updated", 0) == 0, t2
    assert t2["project_ids_unsupported"] == 2 and t2.get("failed", 0) == 0, t2
