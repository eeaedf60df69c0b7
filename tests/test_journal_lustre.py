"""Journal-driven passes from Lustre changelogs, end to end (embedded), through the liblustreapi stand-in.

The source is a fake Lustre filesystem with 3 MDTs; every change the tests make goes through
support.changelog.ChangingFs, which writes the records Lustre would into the MDTs' changelogs. cmover reads
them with its users from CHANGELOG_USERS.

1. Random mutation rounds (names, types, data, owner, mode, xattrs, ACLs, hard links, times), each followed
   by ``cmover sync --changes``: every pass runs from the changelogs and the trees compare identical in every
   category, directory times included; the MDTs are cleared up to what the passes read, never further.
2. Renames of directories with content (and of a file) of every shape, from the RENME records (both names of
   one FID), are replayed on the target as renames where the trees agree (same inodes: no data copied again),
   else copied; the trees compare identical either way.
3. The trust rule: an MDT without a configured user, a gap in an MDT's record indices and a deregistered
   user each refuse ``--changes`` (one line, exit 2, nothing written); ``--changes=auto`` walks saying why,
   after which the journal is usable again.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import changelog as mds_side
from support import journal as journaltools
from support import snap, tree

MDTS = 3


class Site:
    def __init__(self, root: Path, lib: Path) -> None:
        self.src = root / "lsrc"
        self.dst = root / "dst"
        self.src.mkdir()
        self.mds = mds_side.Mds(root / "mds", "srcfs", MDTS)
        self.changes = root / "changes"
        self.config = root / "config.py"
        self.log = root / "log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CMOVER_", "STANDIN_"))}
        self.env.update(CMOVER_CONFIG=str(self.config), CMOVER_RABBITMQ_DIR=str(root / "no-broker"),
                        CMOVER_LUSTREAPI=str(lib), STANDIN_FS=f"{self.src},srcfs,4,{MDTS}",
                        STANDIN_CHANGELOG_DIR=str(self.mds.dir))
        self.users = {self.mds.device(i): self.mds.register(i) for i in range(MDTS)}
        self.configure(self.users)
        self.fs = mds_side.ChangingFs(self.mds, os.fsencode(self.src))

    def configure(self, users: dict[str, str]) -> None:
        self.config.write_text(f"CHANGES_DIR = {str(self.changes)!r}\nLOG_DIR = {str(self.log)!r}\n"
                               f"CHANGELOG_USERS = {users!r}\n")

    def cmover(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cmover", *args], env=self.env, capture_output=True, text=True,
                              timeout=300)

    def sync(self, *opts: str) -> subprocess.CompletedProcess[str]:
        return self.cmover("sync", "-q", "-j", "2", *opts, str(self.src), str(self.dst))

    def identical(self) -> list[str]:
        return snap.compare_trees(self.src, self.dst, dir_times=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, standin_build: Path) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.fail("the changelog device of the stand-in, like Lustre's, is root-only: run the tests as root")
    s = Site(tmp_path_factory.mktemp("chlog"), standin_build / "liblustreapi.so.1")
    tree.random_tree(s.src, seed=23, n_files=150, n_dirs=20, weird_names=True)
    tree.add_fidelity(s.src)
    r = s.sync()  # the first pass walks: there is no clean pass to start from; it records every MDT's position
    assert r.returncode == 0, r.stderr
    assert s.identical() == []
    yield s


def _from_journal(r: subprocess.CompletedProcess[str]) -> int:
    return r.stderr.count("pass from the change journal")


def test_random_mutations_then_changelog_driven_sync_make_identical_trees(site: Site) -> None:
    rng = random.Random(2323)
    for round_ in range(3):
        done = mds_side.mutate(site.fs, rng, 40)
        stored = [site.mds.state(i)[0] for i in range(MDTS)]
        r = site.sync("--changes")
        assert r.returncode == 0, f"round {round_} ({done}): {r.stderr}"
        assert _from_journal(r) == 3, r.stderr  # copy, delete and dirtime all ran from the changelogs
        diff = site.identical()
        assert diff == [], f"round {round_}: {done}\n" + "\n".join(diff)
        # Every MDT had records, each was read, and cleared up to what all three passes read -- no further.
        for i in range(MDTS):
            index, _, users = site.mds.state(i)
            cleared = users[int(site.users[site.mds.device(i)][2:])]
            assert stored[i] <= cleared <= index, (i, stored, cleared, index)
    r = site.sync("--changes")  # nothing changed since: nothing to do
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("0 records -> 0 entries") == 3, r.stderr


def _refused(site: Site, why: str) -> None:
    """``copy --changes`` refuses: one line naming ``why``, exit 2, nothing written on the target."""
    before = snap.snapshot(site.dst)
    r = site.cmover("copy", "--changes", str(site.src), str(site.dst))
    refusals = [ln for ln in r.stderr.splitlines() if "--changes:" in ln]  # after the pass's layout and HSM lines
    assert r.returncode == 2 and len(refusals) == 1 and why in refusals[0], r.stderr
    assert snap.unchanged(before, snap.snapshot(site.dst)) == []


def _walks_then_trusted(site: Site, why: str, rng: random.Random) -> None:
    r = site.sync("--changes=auto")
    assert r.returncode == 0 and _from_journal(r) == 0 and "full walk:" in r.stderr and why in r.stderr, r.stderr
    assert site.identical() == []
    mds_side.mutate(site.fs, rng, 10)
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    assert site.identical() == []


def test_missing_mdt_user_gap_and_deregistered_user_force_the_walk(site: Site) -> None:
    rng = random.Random(77)
    # An MDT of the source without a user in CHANGELOG_USERS.
    dev2 = site.mds.device(2)
    site.configure({d: u for d, u in site.users.items() if d != dev2})
    _refused(site, f"MDT {dev2} of srcfs has no changelog user")
    site.configure(site.users)

    # A gap: records of MDT 1 purged behind cmover (the first one still stored is past the last one read + 1).
    read = site.mds.state(1)[0]  # the last record of MDT 1, read by the last sync
    while site.mds.state(1)[0] < read + 2:
        site.fs.write(os.fsencode(site.src / f"gap{rng.randrange(1 << 30)}"), b"x")
    site.mds.purge(1, read + 1)
    _refused(site, "has a gap since the last clean pass")
    _walks_then_trusted(site, "gap", rng)

    # A user deregistered (by an operator, or by the idle-user garbage collector) and registered again.
    dev0 = site.mds.device(0)
    site.mds.deregister(0, site.users[dev0])
    _refused(site, f"changelog user {site.users[dev0]} of {dev0} is gone")
    site.users[dev0] = site.mds.register(0)
    site.configure(site.users)
    _refused(site, "is gone")  # the new user starts now: what happened in between is lost
    _walks_then_trusted(site, "is gone", rng)


def _inodes(root: Path) -> dict[bytes, int]:
    base = os.fsencode(root)
    return {os.path.relpath(os.path.join(d, f), base): os.lstat(os.path.join(d, f)).st_ino
            for d, _, files in os.walk(base) for f in files}


def test_renames_from_rename_records_are_replayed_on_the_target(site: Site) -> None:
    base = os.fsencode(site.src / "renames")
    journaltools.rename_setup(site.fs, base)
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    before = _inodes(site.dst / "renames")
    kept = journaltools.rename_scenario(site.fs, base)
    r = site.sync("--changes")
    assert r.returncode == 0 and _from_journal(r) == 3, r.stderr
    assert site.identical() == []
    after = _inodes(site.dst / "renames")  # the target's copies were renamed: same inodes, no data copied again
    assert {new: after[new] for new in kept} == {new: before[old] for new, old in kept.items()}
    assert "; 7 renamed on the target, 3 not" in r.stderr, r.stderr
