"""Shared fixtures of the unit tests: pass specs on tmp trees and one copy-task delivery.

What else the tests share is in the ``support`` package (trees, snapshots, the job runner).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.lustre import LustreEnv, build_standin
from support.runner import Run
from support.xfs import mounted_xfs

from cmover import lustre
from cmover.core.passes import PassKind, PassSpec
from cmover.engine.jobs import DirJob, FilesJob
from cmover.lustre import llapi

# Clean-pass records of the passes the tests run go to a directory of their own, never to the home directory;
# removed when the test session ends (not one left in /tmp per session).
if "CMOVER_STATE_DIR" not in os.environ:
    os.environ["CMOVER_STATE_DIR"] = _state_dir = tempfile.mkdtemp(prefix="cmover-test-state-")
    atexit.register(shutil.rmtree, _state_dir, ignore_errors=True)

# A shell without job control starts a background command (`scripts/test.sh &`) with SIGINT ignored, and every
# process the tests start would inherit that: the tests of Ctrl-C (SIGINT to a command, expecting exit 130)
# would then wait for a command that cannot hear it. The tests run as from a terminal, whatever started them.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def roots(tmp_path):
    """(src, dst) roots as bytes; both exist, side by side in tmp_path."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    return os.fsencode(src), os.fsencode(dst)


@pytest.fixture
def make_spec(roots):
    """Build a copy PassSpec on ``roots``; a generous time budget keeps inline walking deterministic."""

    def make(**kw) -> PassSpec:
        base = dict(run_id="copy-test", kind=PassKind.COPY, src_root=roots[0], dst_root=roots[1],
                    inline_seconds=3600.0)
        base.update(kw)
        return PassSpec(**base)

    return make


@pytest.fixture
def run_copy():
    """``run_copy(spec)``: one delivery of the copy pass's root task (``rel=``: of that directory's task;
    ``names=``: of that batch), on a run of its own (:class:`support.runner.Run`); returns the Run, whose
    ``emitted`` lists the jobs the task published. ``fs``: see :class:`~support.runner.Run`."""

    def run(spec: PassSpec, rel: bytes = b"", names: list[bytes] | None = None, fs=None) -> Run:
        r = Run(spec, fs=fs)
        r.deliver(DirJob(rel) if names is None else FilesJob(rel, tuple(names)))
        return r

    return run


@pytest.fixture(scope="session")
def standin_build() -> Path:
    """The liblustreapi stand-in, built (a build failure fails the tests, never skips)."""
    return build_standin()


@pytest.fixture
def lenv(tmp_path, monkeypatch, standin_build) -> Iterator[LustreEnv]:
    """A fake Lustre for one test (:class:`support.lustre.LustreEnv`), the stand-in loaded through it."""
    env = LustreEnv(tmp_path, standin_build / "liblustreapi.so.1")
    monkeypatch.setenv(llapi.ENV_LIBRARY, str(env.lib_path))
    monkeypatch.setenv("STANDIN_FS", env.fs_env())
    monkeypatch.setenv("STANDIN_CALL_LOG", str(env.calls))
    for var in ("STANDIN_IGNORE_SETSTRIPE", "STANDIN_MKDIR_EPERM", "STANDIN_NO_DOM"):
        monkeypatch.delenv(var, raising=False)
    lustre.reset()
    yield env
    lustre.reset()


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh XFS mounted for the whole test module; its mount point."""
    with mounted_xfs(tmp_path_factory.mktemp("xfs")) as mnt:
        yield mnt


_GROUPS = {"integration": pytest.mark.integration, "faults": pytest.mark.faults}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration carries the ``integration`` marker and every one under tests/faults
    ``faults``, whether or not its module says so, so that ``-m`` selects (or leaves out) each group whole."""
    tests = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(tests).parts if item.path.is_relative_to(tests) else ()
        if len(parts) > 1 and parts[0] in _GROUPS:
            item.add_marker(_GROUPS[parts[0]])
