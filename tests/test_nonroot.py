"""`cmover copy|dirtime|delete` run by a regular user (a real unprivileged process) on a tree of several owners.

The tests run as root and drop to an unused uid with ``setpriv`` for each ``cmover`` command, so the
process has no capability at all. A regular user copies data, modes, times, ``user.*`` attributes and
ACLs; owners it cannot give, the set-id bits of those, device nodes and ``trusted.*``/``security.*``
attributes are said once not to be preserved, never failed per file; a second pass copies nothing;
only what the user truly cannot read is a failure; the root is never an empty path in a message.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.snap import diff, snapshot
from support.tree import Device, Dir, Fifo, File, HardLink, Link, build

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("setfacl"),
                                reason="needs root (to build a tree of several owners), setpriv and setfacl")

USER, GROUP, MEMBER = 64201, 64201, 64202  # the regular user, its primary group, a supplementary group of it
ALICE, BOB = 64203, 64204  # two other users owning source files


def as_user(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``cmover ARGS`` as the unprivileged USER (groups GROUP and MEMBER, no capabilities)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CMOVER_CONFIG", "CMOVER_RABBITMQ_DIR")}
    env.update(HOME=str(cwd), PYTHONDONTWRITEBYTECODE="1")
    cmd = ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", f"--groups={MEMBER}", "--inh-caps=-all",
           sys.executable, "-m", "cmover", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="cmover-nonroot-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def build_tree(src: Path) -> None:
    """Files of root, ALICE, BOB and USER, set-id modes, user/trusted/security xattrs, ACLs, a FIFO, a
    device node, symlinks, a hard-link pair, a read-only directory, and two entries USER cannot read."""
    t = 1_700_000_000_123_456_789

    def file(data: bytes, owner: tuple[int, int], mode: int, mtime_ns: int, **kw: Any) -> File:
        return File(data, uid=owner[0], gid=owner[1], mode=mode, atime_ns=mtime_ns - 7, mtime_ns=mtime_ns, **kw)

    build(src, {
        "plain": file(b"root's data\n", (0, 0), 0o644, t),
        "setuid-root": file(b"#!/bin/sh\n", (0, 0), 0o4755, t + 1),
        "own-setuid": file(b"#!/bin/sh\n", (USER, GROUP), 0o4755, t + 2),
        "own-sgid-foreign-group": file(b"x", (USER, 0), 0o2755, t + 3),
        "alice-sgid-member-group": file(b"y", (ALICE, MEMBER), 0o2750, t + 4),  # readable through MEMBER
        "secret": file(b"not for USER", (ALICE, ALICE), 0o600, t + 5),
        "hard1": file(b"linked" * 100, (BOB, BOB), 0o644, t + 6),
        "hard2": HardLink("hard1"),
        "fifo": Fifo(uid=ALICE, gid=ALICE, mode=0o640, atime_ns=t, mtime_ns=t + 7),
        "null-like": Device(1, 3, mode=0o644, atime_ns=t, mtime_ns=t + 8),
        "link": Link("plain", uid=ALICE, gid=ALICE, atime_ns=t, mtime_ns=t + 9),
        # security.site: readable by USER, writable only by root
        "attrs/x": file(b"attributes", (ALICE, ALICE), 0o644, t + 10, acl=f"u:{BOB}:r--,g:{MEMBER}:rw-",
                        xattrs={"user.note": b"\x00kept\xff", "trusted.site": b"root only",
                                "security.site": b"root only"}),
        "attrs": Dir(uid=ALICE, gid=ALICE, default_acl=f"u:{BOB}:rwx", atime_ns=t, mtime_ns=t + 20),
        # The copy must still fill the read-only tree; setting an attribute on it needs write permission.
        "readonly/sub/f": file(b"in a read-only tree", (BOB, BOB), 0o444, t + 11,
                               xattrs={"user.note": b"on a read-only file"}),
        "readonly/f": file(b"read-only file", (BOB, BOB), 0o444, t + 12),
        "readonly/sub": Dir(uid=BOB, gid=BOB, mode=0o555, xattrs={"user.note": b"on a read-only directory"},
                            atime_ns=t, mtime_ns=t + 21),
        "readonly": Dir(uid=BOB, gid=BOB, mode=0o555, atime_ns=t, mtime_ns=t + 22),
        "private": Dir(uid=ALICE, gid=ALICE, mode=0o700, atime_ns=t, mtime_ns=t + 23),  # USER may not list it
    })


UNREADABLE = {"secret", "private"}


def expected(src: Path) -> dict[bytes, dict[str, Any]]:
    """What USER's copy of ``src`` holds: every readable entry but the device node, owned by USER (groups
    kept where USER is a member), set-id bits only with the owner or group kept, no trusted/security names."""
    snap = snapshot(src)
    out: dict[bytes, dict[str, Any]] = {}
    for rel, rec in snap.items():
        if rel.split(b"/")[0].decode() in UNREADABLE or rec["type"] == "chr":
            continue
        rec = dict(rec)
        uid, gid, mode = rec["uid"], rec["gid"], rec["mode"]
        if uid != USER:
            mode &= ~stat.S_ISUID
        if gid not in (GROUP, MEMBER):
            mode &= ~stat.S_ISGID
            gid = GROUP
        rec.update(uid=USER, gid=gid, mode=mode,
                   xattrs={k: v for k, v in rec["xattrs"].items() if not k.startswith(("trusted.", "security."))})
        out[rel] = rec
    return out


def _failures(doc: dict[str, Any]) -> set[str]:
    return {f["path"] for f in doc["failures"]}


def test_regular_user_copies_everything_it_can_and_recopies_nothing(base):
    src, dst = base / "src", base / "dst"
    build_tree(src)
    dst.mkdir()
    os.chown(dst, USER, GROUP)

    first = as_user("copy", "--json", str(src), str(dst), cwd=base)
    assert first.returncode == 1, first.stderr  # only for what USER cannot read
    doc = json.loads(first.stdout)
    assert _failures(doc) == UNREADABLE, first.stderr
    assert all(f["errno"] == 13 and f["side"] != "target" for f in doc["failures"]), doc["failures"]
    totals = doc["totals"]
    assert totals["devices_skipped"] == 1 and totals["not_preserved"] > 0 and totals["files_copied"] >= 10
    # Said once, with the reason; never a failure per file.
    notices = [line for line in first.stderr.splitlines() if f"copying as uid {USER} without" in line]
    assert len(notices) == 1 and "CAP_CHOWN" in notices[0] and "device nodes" in notices[0], first.stderr
    assert "EPERM" not in first.stderr and "Operation not permitted" not in first.stderr, first.stderr

    # The read-only directory was filled; the dirtime pass gives it its mode back with the times.
    dirtime = as_user("dirtime", "--json", str(src), str(dst), cwd=base)
    assert dirtime.returncode == 1 and _failures(json.loads(dirtime.stdout)) == {"private"}, dirtime.stderr
    assert diff(expected(src), snapshot(dst), dir_times=True) == []
    assert stat.S_IMODE(os.lstat(dst / "readonly").st_mode) == 0o555
    assert os.lstat(dst / "hard1").st_ino == os.lstat(dst / "hard2").st_ino

    # A later pass as the same user: nothing differs that it could change.
    second = as_user("copy", "--json", str(src), str(dst), cwd=base)
    assert second.returncode == 1 and _failures(json.loads(second.stdout)) == UNREADABLE, second.stderr
    totals = json.loads(second.stdout)["totals"]
    assert {k: totals.get(k, 0) for k in ("files_copied", "files_meta_updated", "dirs_created", "hardlinks_made",
                                          "not_preserved")} == dict.fromkeys(
        ("files_copied", "files_meta_updated", "dirs_created", "hardlinks_made", "not_preserved"), 0)
    assert totals["files_skipped"] >= 10

    # The final passes as the same user: dirtime first (read-only directories again), then delete.
    (src / "readonly" / "f").unlink()
    assert as_user("dirtime", str(src), str(dst), cwd=base).returncode == 1
    delete = as_user("delete", "--json", str(src), str(dst), cwd=base)
    assert delete.returncode == 0, delete.stderr
    assert json.loads(delete.stdout)["totals"]["entries_deleted"] == 1
    assert as_user("dirtime", str(src), str(dst), cwd=base).returncode == 1
    assert diff(expected(src), snapshot(dst), dir_times=True) == []


def test_failures_at_the_root_name_it(base):
    src = base / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    # The target's parent is not USER's to write: one line naming the target, exit 2, nothing created.
    parent = base / "rootonly"
    parent.mkdir(0o755)
    proc = as_user("copy", str(src), str(parent / "new"), cwd=base)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot create target {parent / 'new'}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (parent / "new").exists()
    # A target root USER may write into but not chmod (root's, mode 1777): the root's own metadata fails,
    # named '.', and its contents are copied all the same.
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    proc = as_user("copy", str(src), str(shared), cwd=base)
    assert proc.returncode == 1
    failed = [line.strip() for line in proc.stderr.splitlines() if "failed on" in line and "WARNING" not in line]
    assert failed == [".: set directory metadata failed on target (EPERM): Operation not permitted"], proc.stderr
    assert (shared / "f").read_bytes() == b"data" and os.lstat(shared / "f").st_uid == USER


def test_json_log_of_an_embedded_verbose_run_names_what_failed_exactly(base):
    """``LOG_FORMAT = "json"``: every line ``cmover -v copy --json`` writes on stderr is one JSON object (its
    notes, Celery's lines, its pool processes' warnings); a failure on a name that is not UTF-8 carries the
    pass, the run and the name's exact bytes."""
    src, dst = base / "src", base / "dst"
    odd = b"d\xff/caf\xe9 \n"  # not UTF-8, and a newline in it
    t = 1_700_000_000_000_000_000
    build(src, {b"": Dir(mode=0o755), b"d\xff": Dir(mode=0o755), "ok": b"ok",
                odd: File(b"not for USER", uid=ALICE, gid=ALICE, mode=0o600, atime_ns=t - 7, mtime_ns=t)})
    dst.mkdir()
    os.chown(dst, USER, GROUP)
    cfg = base / "config.py"
    # INLINE_ENTRIES = 0: the subdirectory is a task of its own, run by a pool process (the root's task runs
    # in the command's own process).
    cfg.write_text('LOG_FORMAT = "json"\nINLINE_ENTRIES = 0\n')
    proc = as_user("--config", str(cfg), "-v", "copy", "--json", str(src), str(dst), cwd=base)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # nothing but JSON lines
    assert proc.stderr.isascii() and len(records) >= 4, proc.stderr
    fields = ["time", "level", "node", "pass", "run", "path", "message", "logger", "pid"]
    assert all(list(r)[:len(fields)] == fields for r in records), records
    notes = [r["message"] for r in records if r["logger"] == "cmover.note"]
    assert notes[0] == f"config {cfg} (named by --config)" and any("not preserved" in n for n in notes), notes
    failed = [r for r in records if r["path"] is not None]
    assert len(failed) == 1, records
    (rec,) = failed
    assert (rec["level"], rec["pass"], rec["run"]) == ("WARNING", "copy", summary["run_id"]), rec
    assert base64.b64decode(rec["path"]["b64"]) == odd  # the name's bytes, exactly
    assert rec["message"] == "b'd\\xff/caf\\xe9 \\n': copy failed on source/target (EACCES): Permission denied"
    assert rec["pid"] != records[0]["pid"]  # written by a pool process
    assert summary["failures"][0]["path"] == rec["path"]  # as on the wire
