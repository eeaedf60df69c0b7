"""Journal-driven passes on real ``celery worker`` processes (RabbitMQ + memcached), both backends.

On a scratch ext4 filesystem watched by ``cmover watch``: a full ``cmover sync`` on the broker, then random
mutations of every kind, then ``cmover sync --changes``: the three passes are seeded from the journal
(copy and delete batches, directories walked in full, dirtime's shallow ``cmover.dirtime.files`` tasks) and
the trees compare identical in every category, directory times included. Then, on the same workers, the same
source seen as a 2-MDT Lustre filesystem by the command (the liblustreapi stand-in): a full sync records every
MDT's changelog position, random mutations write their changelog records, and ``sync --changes`` runs its
three passes from the changelogs.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import changelog as mds_side
from support import journal as journaltools
from support import snap, tree
from support.deploy import DIRS_Q, FILES_Q, DeploymentSet, explain

pytestmark = pytest.mark.integration

ALL_QS = (DIRS_Q, FILES_Q, "cmover.delete.dirs", "cmover.delete.files", "cmover.dirtime.dirs",
          "cmover.dirtime.files")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with journaltools.loop_fs(tmp_path / "fs") as mnt:
        yield mnt


def test_journal_driven_sync_on_workers_makes_identical_trees(deployments: DeploymentSet, tmp_path: Path,
                                                               scratch: Path, standin_build: Path) -> None:
    src, dst = scratch / "src", tmp_path / "dst"
    tree.random_tree(src, seed=4242, n_files=200, n_dirs=20, weird_names=True)
    tree.add_fidelity(src)
    dst.mkdir()
    changes = tmp_path / "changes"
    dep = deployments.new("journal", src, dst, CHANGES_DIR=str(changes), INLINE_ENTRIES=20, BATCH=40)
    dep.init_broker()
    worker = dep.start_worker("all", ALL_QS, 3)
    worker.wait_ready()
    watcher = journaltools.WatchProcess(src, changes, dep.env())
    try:
        r = dep.cmover("sync", str(src), str(dst), timeout=240)
        assert r.returncode == 0, explain(r)
        journaltools.mutate(os.fsencode(src), random.Random(4243), 30)
        r = dep.cmover("sync", "--changes", str(src), str(dst), timeout=240)
        assert r.returncode == 0, explain(r)
        assert r.stderr.count("pass from the change journal") == 3, explain(r)
        assert snap.compare_trees(src, dst, dir_times=True) == []
        assert "cmover.dirtime.files" in worker.log_text()
        st = json.loads(dep.cmover("status", "delete", "--json", timeout=60).stdout)
        assert "delete pass from the change journal" in st["changes"], st  # status says what drove it

        # Lustre changelogs: only the command sees the stand-in (the workers started without it copy plainly;
        # the changelogs are read where the pass is prepared).
        mds = mds_side.Mds(tmp_path / "mds", "srcfs", 2)
        users = {mds.device(i): mds.register(i) for i in range(2)}
        with open(dep.config, "a") as f:
            f.write(f"CHANGELOG_USERS = {users!r}\n")
        dep.extra_env.update(CMOVER_LUSTREAPI=str(standin_build / "liblustreapi.so.1"),
                             STANDIN_FS=f"{src},srcfs,4,2", STANDIN_CHANGELOG_DIR=str(mds.dir))
        r = dep.cmover("sync", str(src), str(dst), timeout=240)  # walks: records each MDT's position
        assert r.returncode == 0, explain(r)
        mds_side.mutate(mds_side.ChangingFs(mds, os.fsencode(src)), random.Random(4244), 30)
        assert all(mds.state(i)[0] > 1 for i in range(2))  # records on both MDTs
        r = dep.cmover("sync", "--changes", str(src), str(dst), timeout=240)
        assert r.returncode == 0, explain(r)
        assert r.stderr.count("pass from the change journal") == 3, explain(r)
        assert snap.compare_trees(src, dst, dir_times=True) == []
        assert all(min(mds.state(i)[2].values()) > 1 for i in range(2))  # read and cleared past the mark
    finally:
        watcher.stop()
