"""Running the ``cmover`` command (and other entry points) as a subprocess, as an operator would.

:func:`run` runs ``cmover ARGS`` in ``cwd`` with ``CMOVER_CONFIG`` set only when ``config`` is given
(the caller's own CMOVER_* variables are dropped), within :data:`TIMEOUT`; :func:`assert_fatal` checks
the contract of every refused input (exit 2, one line ``cmover: ...`` on stderr naming the problem);
:func:`system_python` finds the machine's own Python 3, the one an operator's ``python`` usually is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
_ENTRY = Path(sys.executable).parent / "cmover"
CMOVER = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "cmover"]
TIMEOUT = 120  # a hung embedded run fails the test instead of blocking the suite


def run(args: list[str], cwd: Path, config: Path | None = None, cmd: list[str] | None = None,
        **env_extra: str) -> subprocess.CompletedProcess:
    """``cmover ARGS`` (or ``cmd ARGS``) in ``cwd``; ``env_extra`` adds environment variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("CMOVER_CONFIG", "CMOVER_RABBITMQ_DIR")}
    if config is not None:
        env["CMOVER_CONFIG"] = str(config)
    env.update(env_extra)
    return subprocess.run((cmd or CMOVER) + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def assert_fatal(res: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and exactly one stderr line starting with ``cmover:`` that holds every one of ``words``; the line."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmover:"), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def system_python() -> str:
    """A Python 3 of the machine that is not the project's environment and lacks celery (fails if none)."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not p.startswith(str(VENV)))
    tried = []
    for candidate in ("/usr/bin/python3", shutil.which("python3", path=path), "/usr/local/bin/python3"):
        if not candidate or not os.access(candidate, os.X_OK) or candidate in tried:
            continue
        tried.append(candidate)
        r = subprocess.run([candidate, "-c", "import sys, importlib.util as u; "
                            "print(sys.prefix); print(u.find_spec('celery') is None)"],
                           capture_output=True, text=True, timeout=30)
        prefix, lacks = (r.stdout.split() + ["", ""])[:2]
        if r.returncode == 0 and lacks == "True" and os.path.realpath(prefix) != os.path.realpath(VENV):
            return candidate
    pytest.fail(f"no Python 3 outside {VENV} that lacks celery among {tried}: the test needs one")
