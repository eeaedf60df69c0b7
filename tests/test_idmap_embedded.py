"""`cmover copy --usermap/--groupmap` end to end (embedded): owners and POSIX ACL ids written as mapped, a
second pass copies nothing, the dirtime pass keeps the mapped owners' set-id bits, a malformed or ambiguous
map is exit 2 with nothing written."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.snap import compare_trees

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners of other users need root")

USERMAP = "1000:5000,1001:4000"  # 1001 goes below 1000's new id: ACL entries must be re-sorted
GROUPS = {100: 500, 101: 501}
T = 1_650_000_000_123_456_789


def _cmover(*args: str, cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CMOVER_CONFIG", "CMOVER_RABBITMQ_DIR")}
    if config is not None:
        env["CMOVER_CONFIG"] = str(config)
    return subprocess.run([sys.executable, "-m", "cmover", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _build(root: Path, u: dict[int, int], g: dict[int, int]) -> None:
    """The same tree with the ids renamed by ``u``/``g``: the source (identity) or what its copy must be."""
    proj = root / "proj"
    proj.mkdir(parents=True)
    os.chown(root, u[1000], g[100])
    os.chown(proj, u[1000], g[100])
    os.chmod(proj, 0o2775)
    subprocess.run(["setfacl", "-d", "-m", f"u:{u[1001]}:rwx,g:{g[101]}:r-x", str(proj)], check=True)
    subprocess.run(["setfacl", "-m", f"u:{u[1001]}:r-x", str(proj)], check=True)
    owners = {"a": (1000, 100), "b": (1001, 101), "c": (7, 7), "d": (1001, 100)}
    for i, (name, (uid, gid)) in enumerate(owners.items()):
        p = proj / name
        p.write_bytes(name.encode() * (i + 1))
        os.chown(p, u.get(uid, uid), g.get(gid, gid))
        os.chmod(p, 0o6750 if name == "a" else 0o640)
    subprocess.run(["setfacl", "-m", f"u:{u[1000]}:r--,u:{u[1001]}:rw-,g:{g[101]}:r--", str(proj / "c")],
                   check=True)
    os.symlink("a", proj / "l")
    os.chown(proj / "l", u[1001], g[101], follow_symlinks=False)
    os.mkfifo(proj / "fifo", 0o600)
    os.chown(proj / "fifo", u[1000], 7)
    sub = proj / "sub"
    sub.mkdir()
    os.chown(sub, u[1001], g[101])
    os.chmod(sub, 0o2750)
    for p in (*(proj / n for n in owners), proj / "l", proj / "fifo"):
        os.utime(p, ns=(T, T + 1), follow_symlinks=False)


def test_mapped_copy_second_pass_dirtime_and_refusals(tmp_path: Path) -> None:
    src, dst, want = tmp_path / "src", tmp_path / "dst", tmp_path / "want"
    identity = {1000: 1000, 1001: 1001}
    _build(src, identity, {100: 100, 101: 101})
    _build(want, {1000: 5000, 1001: 4000}, GROUPS)
    gmap = tmp_path / "groups.map"
    gmap.write_text("# site A group : site B group\n" + "".join(f"{a}:{b}\n" for a, b in GROUPS.items()))
    maps = ("--usermap", USERMAP, "--groupmap", f"@{gmap}")

    first = _cmover("copy", "--json", *maps, str(src), str(dst), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert compare_trees(want, dst) == []
    assert compare_trees(src, dst) != []  # the owners did change
    assert json.loads(first.stdout)["totals"]["files_copied"] == 6
    assert "cmover: identity maps: 2 uid(s) and 2 gid(s) mapped" in first.stderr, first.stderr

    second = _cmover("copy", "--json", *maps, str(src), str(dst), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    t2 = json.loads(second.stdout)["totals"]
    assert t2.get("files_copied", 0) == 0 and t2.get("files_meta_updated", 0) == 0, t2
    assert t2["files_skipped"] == 6

    # The delete and dirtime passes with the same maps: nothing deleted, directory times and modes set.
    for kind in ("delete", "dirtime"):
        r = _cmover(kind, "--json", *maps, str(src), str(dst), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["totals"]["dir_times_set"] == 3
    # Directory times now match the source's too: what still differs from the source is the mapped ids only.
    assert compare_trees(src, dst, dir_times=True) == compare_trees(src, dst)
    st = os.lstat(dst / "proj" / "sub")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4000, 501, 0o2750)

    # Refused before anything is written: a malformed map, a map both in config.py and on the command line.
    fresh = tmp_path / "fresh"
    for args, config, words in (
        (("--usermap", "1000:alice"), None, ["--usermap: 'alice' in '1000:alice' is not a numeric id"]),
        (("--groupmap", "100:500,100:501"), None, ["id 100 is mapped twice"]),
        (("--usermap", "1:2"), 'UID_MAP = {1000: 5000}\n', ["UID_MAP is set in config.py and --usermap"]),
        ((), 'GID_MAP = ["100:x"]\n', ["GID_MAP: 'x' in '100:x' is not a numeric id", "fix it in config.py"]),
    ):
        cfg = None
        if config is not None:
            cfg = tmp_path / "config.py"
            cfg.write_text(config)
        r = _cmover("copy", *args, str(src), str(fresh), cwd=tmp_path, config=cfg)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), (args, r.stderr)
        assert not fresh.exists()
