"""cmover.core.statefile: a state file is replaced whole, never through a planted link, leaving no temporary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cmover.core import statefile


def test_replace_writes_the_new_content_mode_0600_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    statefile.replace(target, b"new" * 10_000)
    assert target.read_bytes() == b"new" * 10_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    with pytest.raises(OSError):
        statefile.replace(tmp_path / "state.json", b"new")
    assert victim.read_bytes() == b"keep"
    assert not (tmp_path / "state.json").exists()
