"""A closed output never hangs cmover, never costs a pass and never prints a traceback (embedded passes).

A migration (copy, delete, dirtime, then sync after more changes) runs with its output going away early,
in the ways an operator meets it: stdout on a pipe whose reader closed it (the summary and the
``deleted:`` lines fail with EPIPE); ``cmover -v PASS ... 2>&1 | head -1`` (the log lines fail too,
mid-pass); and the terminal closed mid-pass (EIO on the live progress, SIGHUP to the whole process
group). Each time the pass completes (trees compared), cmover exits with the pass's own exit code within
seconds, prints no traceback and leaves no process (pool, hub) behind. Runs as root, as CI does.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import CMOVER
from support.closedout import EXIT_SECONDS, Outcome, close_output, hang_up, head_through_bash, session_leftovers
from support.snap import compare_trees
from support.tree import mutate, random_tree


def _env(cfg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    env["CMOVER_CONFIG"] = str(cfg)
    return env


def _clean(o: Outcome) -> None:
    assert o.returncode == 0, o.explain()
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError"):
        assert noise not in o.stderr, o.explain()
    assert o.leftovers == [], o.explain()


def _prune(src: Path) -> None:
    """Give the delete pass work: a whole directory and a few files disappear from the source."""
    shutil.rmtree(sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("d"))[0])
    for f in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())[:5]:
        f.unlink()


def _migrate(tmp_path: Path, run) -> None:
    """copy, delete, dirtime, then sync after every kind of change, each through ``run(PASS, SRC, DST)``."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=12, n_files=400, n_dirs=30)
    _clean(run("copy", src, dst))
    assert compare_trees(src, dst) == []
    _prune(src)
    _clean(run("delete", src, dst))
    assert {p.relative_to(dst) for p in dst.rglob("*")} == {p.relative_to(src) for p in src.rglob("*")}
    _clean(run("dirtime", src, dst))
    assert compare_trees(src, dst, dir_times=True) == []
    mutate(src)
    _clean(run("sync", src, dst))
    assert compare_trees(src, dst, dir_times=True) == []


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """Small tasks: many of them, so the passes log a lot with -v and last long enough to be hung up."""
    path = tmp_path / "config.py"
    path.write_text("BATCH = 10\nINLINE_ENTRIES = 5\n")
    return path


def test_stdout_closed_by_its_reader(tmp_path: Path, cfg: Path) -> None:
    """Before: ``cmover deleted | head`` and every pass printing into a closed pipe ended with a
    BrokenPipeError traceback, and the embedded run could then hang at exit for ever."""

    def run(kind: str, src: Path, dst: Path) -> Outcome:
        return close_output([*CMOVER, kind, str(src), str(dst)], env=_env(cfg), cwd=tmp_path)

    _migrate(tmp_path, run)


def test_head_of_verbose_output(tmp_path: Path, cfg: Path) -> None:
    """Before: ``cmover -v copy SRC DST 2>&1 | head -5`` hung at exit every time, after the copy."""

    def run(kind: str, src: Path, dst: Path) -> Outcome:
        line = shlex.join([*CMOVER, "-v", kind, str(src), str(dst)]) + " 2>&1"
        o = head_through_bash(line, env=_env(cfg), cwd=tmp_path)
        assert o.got.startswith(b"cmover: ") or b" INFO " in o.got, o.explain()  # head saw the first line
        return o

    _migrate(tmp_path, run)


@pytest.mark.parametrize("kind", ["copy", "sync"])
def test_terminal_closed_mid_pass(tmp_path: Path, cfg: Path, kind: str) -> None:
    """The operator's connection drops while the pass shows its live progress: the pass goes on to its
    end (SIGHUP ignored by cmover, its pool and its hub; the progress discarded) and tears down."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=13, n_files=3000, n_dirs=150, max_size=4096)
    outcome, running = hang_up([*CMOVER, kind, "-j", "2", str(src), str(dst)], env=_env(cfg), cwd=tmp_path,
                               after=b"elapsed")
    assert running, f"the pass ended before the terminal was closed; make it longer\n{outcome.explain()}"
    assert b"elapsed" in outcome.got, outcome.explain()
    assert outcome.returncode == 0, outcome.explain()
    assert outcome.seconds < EXIT_SECONDS
    assert outcome.leftovers == [], outcome.explain()
    assert compare_trees(src, dst, dir_times=kind == "sync") == []


_TEARDOWN_SCRIPT = r"""
import os, sys, threading
sys.path.insert(0, os.environ["SEAMS_DIR"])
import seams
seams.install()  # CMFAULT_PACE: every entry takes a moment, so that the pass outlasts the interrupt's tick
from cmover.embedded.runner import run_embedded
from cmover.core.passes import PassKind
from cmover.engine.planner import PassOptions, create_target_root, plan, preflight
from cmover.core.settings import from_mapping

kind, src, dst, interrupt = PassKind(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "interrupt"
# One task per directory (no inline walk): the interrupt lands while many tasks are still to run.
spec = plan(kind, from_mapping({"INLINE_ENTRIES": 0}), src, dst, options=PassOptions())
preflight(spec, create_target=True)
if kind is PassKind.COPY:
    create_target_root(spec)
stop = threading.Event()


def progress(totals, seconds):
    if interrupt and totals:  # as Ctrl-C does, once tasks run (the next check sees work outstanding)
        stop.set()


result = run_embedded(spec, 3, on_progress=progress, stop_event=stop)
try:
    os.waitpid(-1, os.WNOHANG)
    children = "some"
except ChildProcessError:
    children = "none"
print(result.state, children, flush=True)
sys.exit(0)  # the interpreter's exit handlers run: nothing may be left for them to wait on
"""


@pytest.mark.parametrize("how", ["complete", "interrupt"])
def test_embedded_run_leaves_nothing_for_exit_handlers(tmp_path: Path, how: str) -> None:
    """The contract of run_embedded behind the hang: on return its pool processes and hub are gone
    (reaped: no child at all), so a normal interpreter exit is prompt. Before: the pool processes were only
    signalled and a finalizer of theirs left registered; at exit it could wait for ever on a queue lock a
    killed process held."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=14, n_files=1000 if how == "interrupt" else 200, n_dirs=100, max_size=4096)
    env = dict(os.environ, SEAMS_DIR=str(Path(__file__).parent / "faults"),
               CMFAULT_PACE="0.001" if how == "interrupt" else "")
    o = close_output([sys.executable, "-c", _TEARDOWN_SCRIPT, "copy", str(src), str(dst), how], read=100,
                     env=env, cwd=tmp_path)
    assert o.returncode == 0 and o.stderr == "", o.explain()
    state, children = o.got.decode().split()
    assert (state, children) == ("interrupted" if how == "interrupt" else "complete", "none")
    assert o.leftovers == [], o.explain()
    if how == "complete":
        assert compare_trees(src, dst) == []


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_pass_and_tears_down(tmp_path: Path, cfg: Path, how: str) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM to cmover alone (`kill PID`, a batch
    system ending the job) mid-pass: exit 130 within seconds, no process left behind; the next copy
    completes the target."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=15, n_files=3000, n_dirs=150, max_size=4096)
    proc = subprocess.Popen([*CMOVER, "copy", "-j", "2", str(src), str(dst)], env=_env(cfg), cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(dst.glob("d*/*")) and time.monotonic() < deadline:  # copying has begun
        time.sleep(0.02)
    assert proc.poll() is None, "the pass ended before Ctrl-C; make it longer"
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=EXIT_SECONDS)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in out, (out, err)
    assert "Traceback" not in err and "exited with" not in err, err
    assert session_leftovers(proc.pid) == []
    again = subprocess.run([*CMOVER, "copy", "-q", str(src), str(dst)], env=_env(cfg), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert compare_trees(src, dst) == []


#: `cmover copy` with a real SIGINT sent to itself as its own process starts the root directory task (the
#: import of the task bodies), and a line on stderr if Celery is ever imported (the embedded mode never does).
_CTRL_C_IN_ROOT_TASK = """
import os, signal, sys
class Hooks:
    def find_spec(self, name, path=None, target=None):
        if name == "celery":
            sys.stderr.write("celery imported\\n")
        return None
sys.meta_path.insert(0, Hooks())
from cmover.engine.copypass import CopyPass
command, run_dirs = os.getpid(), CopyPass.run_dirs
def ctrl_c_first(self, *args, **kwargs):  # the root directory task, in the command's own process
    if os.getpid() == command:
        os.kill(command, signal.SIGINT)
    return run_dirs(self, *args, **kwargs)
CopyPass.run_dirs = ctrl_c_first
from cmover.cli import main
sys.exit(main())
"""


def test_ctrl_c_while_the_command_walks_the_root_task(tmp_path: Path, cfg: Path) -> None:
    """Ctrl-C while the command's own process runs the root directory task: the pass ends interrupted, exit
    130, its pool (forked with the task's first child) stopped, no Celery imported at any point (an earlier
    embedded mode imported and started it, half a second, only to stop it); the next copy completes the
    target."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=16, n_files=600, n_dirs=60, max_size=1024)  # more than INLINE_ENTRIES = 5 covers
    r = subprocess.run([sys.executable, "-c", _CTRL_C_IN_ROOT_TASK, "copy", "-j", "2", str(src), str(dst)],
                       env=_env(cfg), cwd=tmp_path, capture_output=True, text=True, timeout=EXIT_SECONDS * 4,
                       start_new_session=True)
    assert r.returncode == 130, (r.stdout, r.stderr)
    assert "interrupted" in r.stdout, (r.stdout, r.stderr)
    assert "celery imported" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    again = subprocess.run([*CMOVER, "copy", "-q", str(src), str(dst)], env=_env(cfg), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert compare_trees(src, dst) == []


#: The command as the console script runs it, with a real SIGINT sent to itself while ``module`` is being imported
#: (a Ctrl-C in the first ~0.15 s of a command, at a moment chosen exactly).
_EARLY_CTRL_C = """
import os, signal, sys
module = sys.argv.pop(1)
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == module:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
from cmover.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("module", ["cmover.cli.main", "cmover.cli.passes", "cmover.embedded.runner"])
def test_ctrl_c_while_the_command_imports_is_one_line_and_exit_130(tmp_path: Path, cfg: Path, module: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_tree(src, seed=16, n_files=20, n_dirs=3)
    r = subprocess.run([sys.executable, "-c", _EARLY_CTRL_C, module, "copy", str(src), str(dst)], env=_env(cfg),
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.startswith("cmover: interrupted") and len(r.stderr.splitlines()) == 1, r.stderr
    assert not dst.exists()
