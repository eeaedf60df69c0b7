"""The embedded `cmover copy` keeps everything add_fidelity() creates (design §5), on a first and a second pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.snap import compare_trees
from support.tree import add_fidelity, random_tree

REPO = Path(__file__).resolve().parent.parent


def _cmover(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CMOVER_CONFIG", "CMOVER_RABBITMQ_DIR")}
    return subprocess.run([sys.executable, "-m", "cmover", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_embedded_copy_keeps_every_fidelity_category(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=11, n_files=300, n_dirs=20)
    counts = add_fidelity(src)
    assert counts["link_groups"] == 5
    first = _cmover("copy", "--json", str(src), str(dst), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert compare_trees(src, dst) == []
    totals = json.loads(first.stdout)["totals"]
    assert totals["hardlinks_made"] == 15
    second = _cmover("copy", "--json", str(src), str(dst), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    totals2 = json.loads(second.stdout)["totals"]
    assert totals2.get("files_copied", 0) == 0 and totals2.get("hardlinks_made", 0) == 0
    assert compare_trees(src, dst) == []
