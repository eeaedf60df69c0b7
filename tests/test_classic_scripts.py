"""``python cmover_control.py`` and ``python send_graphite.py`` with a Python 3 that is not the project's.

The README writes them with ``python``: whatever the operator's shell finds, usually the system's
interpreter without cmover's dependencies. With the project's ``.venv`` present they re-execute
themselves under it (tests/integration/test_operator_commands.py runs them against a broker); without
it they end with one line naming the command that creates it. Importing ``cmover_control`` (as
``celery -A cmover_control`` does) has no side effect and gives Celery the app.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import REPO, system_python
from support.snap import snapshot, unchanged


def _bare_project(tmp_path: Path) -> Path:
    """A project directory as a fresh clone has it: the scripts and the package, no .venv."""
    project = tmp_path / "cmover"
    project.mkdir()
    for script in ("cmover_control.py", "send_graphite.py"):
        shutil.copy(REPO / script, project / script)
    (project / "cmover").symlink_to(REPO / "cmover")
    return project


@pytest.mark.parametrize("argv", [["cmover_control.py", "start"], ["cmover_control.py", "status", "--json"],
                                  ["send_graphite.py", "-v"]])
def test_without_the_project_environment_one_line_names_the_fix(tmp_path: Path, argv: list[str]) -> None:
    """Before: a ModuleNotFoundError traceback (No module named 'celery')."""
    project = _bare_project(tmp_path)
    python = system_python()
    before = snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    r = subprocess.run([python, *argv], cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith(f"{argv[0]}: {python} "), line
    assert "lacks celery" in line and "bash scripts/services.sh ensure_runtime_venv" in line, line
    assert str(project) in line, line
    assert unchanged(before, snapshot(tmp_path)) == []


@pytest.mark.parametrize(("script", "prefix"), [("cmover_control.py", "cmover"), ("send_graphite.py", "send_graphite")])
def test_with_the_project_environment_it_runs_there(tmp_path: Path, script: str, prefix: str) -> None:
    """From the project directory, the system's Python runs the script under .venv: reading the site's
    broker settings needs Celery, which that interpreter lacks, and here gives the usual one-line error
    about the (deliberately) missing broker file instead of a ModuleNotFoundError."""
    python = system_python()
    (tmp_path / "config.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(tmp_path / "config.py")
    args = ["status"] if script == "cmover_control.py" else []
    r = subprocess.run([python, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"{prefix}: no broker configured: ") and len(r.stderr.splitlines()) == 1, r.stderr


def test_importing_cmover_control_has_no_side_effect_and_gives_the_app(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(tmp_path / "missing-config.py")  # importing must not read it
    env["PYTHONPATH"] = str(REPO)
    code = ("import cmover_control, cmover.app, celery; "
            "assert cmover_control.app is cmover.app.app and isinstance(cmover_control.app, celery.Celery)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    assert list(tmp_path.iterdir()) == []
