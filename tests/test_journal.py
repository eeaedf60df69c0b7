"""Journal-driven passes with the fanotify backend, end to end (embedded), on a scratch ext4 filesystem.

1. Random mutation rounds (every kind of change: names, types, data, owner, mode, xattrs, ACLs, hard links,
   times), each followed by ``cmover sync --changes``: every pass runs from the journal and the trees
   compare identical in every category, directory times included.
2. Renames of directories with content (and of a file) of every shape are replayed on the target as renames
   when the journal proves them (the target's copies keep their inodes: no data copied again), else copied;
   the trees compare identical either way.
3. The trust rule: a hard-link group only partly named, a damaged journal (a gap in the indices), a queue
   overflow, a watcher killed with SIGKILL (what it had acknowledged is still in its journal) and
   restarted each refuse ``--changes`` (one line, exit 2, nothing written on the target);
   ``--changes=auto`` walks instead, saying why, and a clean pass after that makes the journal usable
   again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import journal as journaltools
from support import snap, tree

from cmover.journal.store import read_segment, read_state, segments

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fanotify is Linux only")


class Site:
    def __init__(self, root: Path, mnt: Path) -> None:
        self.src = mnt / "src"
        self.dst = root / "dst"
        self.changes = root / "changes"
        self.config = root / "config.py"
        self.config.write_text(f"CHANGES_DIR = {str(self.changes)!r}\nLOG_DIR = {str(root / 'log')!r}\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
        self.env["CMOVER_CONFIG"] = str(self.config)
        self.env["CMOVER_RABBITMQ_DIR"] = str(root / "no-broker")
        self.watcher: journaltools.WatchProcess | None = None

    def cmover(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cmover", *args], env=self.env, capture_output=True, text=True,
                              timeout=300)

    def sync(self, *opts: str) -> subprocess.CompletedProcess[str]:
        return self.cmover("sync", "-q", "-j", "2", *opts, str(self.src), str(self.dst))

    def watch(self) -> journaltools.WatchProcess:
        self.watcher = journaltools.WatchProcess(self.src, self.changes, self.env)
        return self.watcher

    def identical(self) -> list[str]:
        return snap.compare_trees(self.src, self.dst, dir_times=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("journal")
    with journaltools.loop_fs(root) as mnt:
        s = Site(root, mnt)
        tree.random_tree(s.src, seed=17, n_files=300, n_dirs=30, weird_names=True)
        tree.add_fidelity(s.src)
        s.watch()
        r = s.sync()  # the first pass walks: there is no clean pass to start from
        assert r.returncode == 0, r.stderr
        assert s.identical() == []
        try:
            yield s
        finally:
            if s.watcher:
                s.watcher.stop()


def _from_journal(r: subprocess.CompletedProcess[str]) -> int:
    return r.stderr.count("pass from the change journal")


def test_random_mutations_then_journal_driven_sync_make_identical_trees(site: Site) -> None:
    rng = random.Random(1717)
    assert site.watcher is not None
    for round_ in range(2):
        done = journaltools.mutate(os.fsencode(site.src), rng, 30)
        # The watcher stamps a record with the time it reads it; one it reads while a pass's drain runs is
        # after that pass's start, so the next pass reads it again (more work, never a change missed). Let it
        # catch up first, as a quiet moment does, so that the last pass below has nothing to read.
        site.watcher.drain()
        r = site.sync("--changes")
        assert r.returncode == 0, f"round {round_} ({done}): {r.stderr}"
        assert _from_journal(r) == 3, r.stderr  # copy, delete and dirtime all ran from the journal
        diff = site.identical()
        assert diff == [], f"round {round_}: {done}\n" + "\n".join(diff)
    # Nothing changed since: the passes have nothing to do.
    r = site.sync("--changes")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("0 records -> 0 entries") == 3, r.stderr


def _refused(site: Site, why: str) -> None:
    """``copy --changes`` refuses: one line naming ``why``, exit 2, nothing written on the target."""
    before = snap.snapshot(site.dst)
    r = site.cmover("copy", "--changes", str(site.src), str(site.dst))
    assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert snap.unchanged(before, snap.snapshot(site.dst)) == []


def test_partial_link_group_gap_and_overflow_force_the_walk(site: Site) -> None:
    w = site.watcher
    assert w is not None
    # A hard-link group only partly named: a file gains a name, its other names untouched.
    target = next(os.path.join(d, f) for d, _, files in sorted(os.walk(site.src)) for f in sorted(files)
                  if os.lstat(os.path.join(d, f)).st_nlink > 1)  # add_fidelity made groups of four names
    os.link(target, site.src / "new-link")
    _refused(site, "hard links")

    # A damaged journal: a record missing in the middle is a gap.
    state = read_state(w.dir)
    assert state is not None
    seg = w.dir / state["segment"]
    data = seg.read_bytes()
    lines = data.splitlines(keepends=True)
    seg.write_bytes(b"".join(lines[:2] + lines[3:]))
    try:
        _refused(site, "gap")
    finally:
        with open(seg, "r+b") as f:  # the watcher appends with O_APPEND: keep what it wrote meanwhile too
            tail = f.read()[len(data) - len(lines[2]):]
            f.seek(0)
            f.write(data + tail)
            f.truncate()

    # Overflow: the watcher is stopped while more events than the kernel queues (16384) happen.
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        flood = site.src / "flood"
        flood.mkdir()
        for i in range(17000):
            os.close(os.open(flood / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    _refused(site, "overflow")
    r = site.sync("--changes=auto")
    assert r.returncode == 0 and _from_journal(r) == 0, r.stderr
    assert "full walk:" in r.stderr and "overflow" in r.stderr, r.stderr
    assert "dirtime pass walked" not in r.stderr and "a copy pass walked the trees" in r.stderr, r.stderr
    assert site.identical() == []
    # Removed as fast as unlink goes, 17,000 names would overflow the queue again whenever the watcher falls
    # behind (a loaded machine): removed in batches the queue holds, the watcher draining each.
    names = sorted(os.listdir(flood))
    for i in range(0, len(names), 4000):
        for name in names[i:i + 4000]:
            os.unlink(flood / name)
        w.drain()
    flood.rmdir()
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    assert site.identical() == []


def test_watcher_killed_keeps_what_it_acknowledged_and_restart_is_not_trusted(site: Site) -> None:
    w = site.watcher
    assert w is not None
    rng = random.Random(99)
    journaltools.mutate(os.fsencode(site.src), rng, 15)
    # Acknowledged = published as durable in the state file after an fdatasync.
    deadline = time.monotonic() + 60
    while True:
        state = read_state(w.dir)
        assert state is not None
        if state["events"] > 0 and state["durable"] >= state["events"]:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    acked = state["durable"]
    os.kill(w.proc.pid, signal.SIGKILL)
    w.proc.wait(30)
    kept = list(read_segment(w.dir / state["segment"]))
    assert [rec["i"] for rec in kept[:acked + 1]] == list(range(acked + 1))
    _refused(site, "not running")
    site.watch()
    assert read_state(w.dir)["segment"] != state["segment"]
    _refused(site, "after the last clean pass")
    r = site.sync("--changes=auto")
    assert r.returncode == 0 and "full walk:" in r.stderr, r.stderr
    assert site.identical() == []
    # Every pass of the tree began after the killed watcher's segment was last written: it is removed.
    assert segments(w.dir) == [read_state(w.dir)["segment"]]
    journaltools.mutate(os.fsencode(site.src), rng, 10)
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    assert site.identical() == []


def _inodes(root: Path) -> dict[bytes, int]:
    base = os.fsencode(root)
    return {os.path.relpath(os.path.join(d, f), base): os.lstat(os.path.join(d, f)).st_ino
            for d, _, files in os.walk(base) for f in files}


def test_renamed_directories_and_files_are_renamed_on_the_target_not_copied_again(site: Site) -> None:
    fs = journaltools.PlainFs()
    base = os.fsencode(site.src / "renames")
    journaltools.rename_setup(fs, base)
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    before = _inodes(site.dst / "renames")
    kept = journaltools.rename_scenario(fs, base)
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    assert site.identical() == []
    # Replayed: a plain rename, a chain, one inside a directory renamed after it, one into a new directory, the
    # old name used again, a file moved; not: the swap (two) and the rename over an existing directory.
    after = _inodes(site.dst / "renames")
    assert {new: after[new] for new in kept} == {new: before[old] for new, old in kept.items()}
    assert "; 7 renamed on the target, 3 not" in r.stderr, r.stderr


def test_a_reading_with_no_newer_change_resolves_directories_as_the_last_one_did(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    # The passes of one `sync --changes` read the journal one after the other: while the source records no
    # change, a directory's path is what the previous reading resolved, without open_by_handle_at again.
    from cmover.journal import fanotify, local
    from cmover.journal.base import touched

    calls: list[object] = []
    real = fanotify.open_handle
    monkeypatch.setattr(fanotify, "open_handle", lambda fd, h: calls.append(h) or real(fd, h))
    monkeypatch.setattr(local, "_memo", None)
    src = os.fsencode(site.src)
    moved = site.src / "memo-a"
    (moved / "sub").mkdir(parents=True)
    (moved / "sub" / "f").write_bytes(b"x")
    j = local.LocalJournal(site.changes, src)
    since = int(read_state(j.directory)["started_ns"])

    memos: list[dict[object, object]] = []

    def dirs() -> set[bytes]:
        r = j.read(since)
        memos.append(r.memo)
        return set(touched(r.changes, r.resolve, src, b"").names)

    first = dirs()
    assert b"memo-a/sub" in first and calls
    n = len(calls)
    assert dirs() == first and len(calls) == n  # nothing new: every key as before, none opened
    assert memos[1] is memos[0]  # and what the first plan learnt of the source holds for the second
    os.rename(moved, site.src / "memo-b")  # a change: the paths may differ now, every key is resolved again
    again = dirs()
    assert len(calls) >= 2 * n and b"memo-b/sub" in again and b"memo-a/sub" not in again
    assert memos[2] is not memos[0] and memos[2] == {}
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    assert site.identical() == []
