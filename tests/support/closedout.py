"""Run a command whose output goes away early: a pipe closed by its reader, ``| head``, a hung-up terminal.

Shared by tests/test_closed_output.py (embedded passes) and tests/integration/test_operator_commands.py
(listings against a broker). Every runner starts the command in a session of its own, so that
:func:`session_leftovers` can name any process of it (pool process, hub, pipeline member) still there
after it exited.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import tempfile
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass

#: How long a command may take to end once its output is gone (or, for a pass, once the pass is done);
#: far more than it needs, far less than the hang it guards against (minutes, or for ever).
EXIT_SECONDS = 20.0
#: A pipe of one page: output beyond it blocks the writer until the reader reads or closes.
_PIPE_SIZE = 4096


@dataclass
class Outcome:
    returncode: int
    stderr: str  # what the command wrote on stderr ("" when stderr went into the closed output too)
    got: bytes  # what was read of the output before it was closed
    seconds: float  # from closing the output (or starting the command) to its exit
    leftovers: list[str]  # processes of its session still there after it exited

    def explain(self) -> str:
        return (f"exit {self.returncode} after {self.seconds:.1f} s; read {self.got[:200]!r}; leftovers "
                f"{self.leftovers}\n--- stderr\n{self.stderr[-4000:]}")


def session_leftovers(sid: int, wait: float = 5.0) -> list[str]:
    """Processes (zombies included) still in session ``sid`` after up to ``wait`` seconds for them to go;
    they are killed."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            comm, _, rest = stat.partition(b" (")[2].rpartition(b") ")
            fields = rest.split()
            if int(fields[3]) == sid:  # state ppid pgrp session
                found.append(f"{pid} {comm.decode(errors='replace')} {fields[0].decode()}")
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for line in found:  # a failing test leaves nothing running
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


def _finish(proc: subprocess.Popen[bytes], started: float, what: str) -> tuple[int, float]:
    try:
        rc = proc.wait(EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(f"{what}: still running {EXIT_SECONDS:.0f} s later (killed)") from None
    return rc, time.monotonic() - started


def close_output(cmd: Sequence[str], *, env: dict[str, str], cwd: str | os.PathLike[str], read: int = 0,
                 merge_stderr: bool = False, timeout: float = 120) -> Outcome:
    """Run ``cmd`` with stdout (and stderr with ``merge_stderr``) on a one-page pipe; read ``read`` bytes
    (waiting for the command to write them), then close the pipe: every later write fails with EPIPE.

    With ``read=0`` the pipe is closed before the command can write anything. ``timeout`` bounds the
    wait for the first bytes (a pass writes them at its end).
    """
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=w, stderr=w if merge_stderr else err,
                                cwd=cwd, env=env, start_new_session=True)
        os.close(w)
        got = b""
        try:
            if read:
                os.set_blocking(r, True)
                deadline = time.monotonic() + timeout
                while len(got) < read and time.monotonic() < deadline:
                    chunk = os.read(r, read - len(got))
                    if not chunk:
                        break
                    got += chunk
        finally:
            os.close(r)
        rc, seconds = _finish(proc, time.monotonic(), f"{cmd!r} with its output closed")
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Outcome(rc, stderr, got, seconds, session_leftovers(proc.pid))


def head_through_bash(command_line: str, *, env: dict[str, str], cwd: str | os.PathLike[str]) -> Outcome:
    """``bash -c 'COMMAND_LINE | head -1'``: the exit code is the command's (PIPESTATUS), not head's."""
    script = f"{command_line} | head -1; exit ${{PIPESTATUS[0]}}"
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=EXIT_SECONDS + 120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{command_line!r} | head -1 did not end") from None
    return Outcome(proc.returncode, err.decode(errors="replace"), out, time.monotonic() - started,
                   session_leftovers(proc.pid))


def hang_up(cmd: Sequence[str], *, env: dict[str, str], cwd: str | os.PathLike[str], after: bytes,
            timeout: float = 120) -> tuple[Outcome, bool]:
    """Run ``cmd`` on a terminal of its own (a pty as its controlling terminal, as a login shell's job),
    wait until it has shown ``after``, then close the terminal as a dropped connection does: the pty is
    hung up (writes fail with EIO) and SIGHUP goes to the command's whole process group, as the shell
    sends it to its jobs. Returns the outcome and whether the command was still running at the hangup.
    """
    master, slave = os.openpty()

    def controlling_tty() -> None:  # in the child, after start_new_session's setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(list(cmd), stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                            start_new_session=True, preexec_fn=controlling_tty)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while after not in seen and time.monotonic() < deadline and proc.poll() is None:
            try:
                seen += os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal (it exited)
                break
    finally:
        running = proc.poll() is None
        os.close(master)  # the terminal goes away
        try:
            os.killpg(proc.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass
    rc, seconds = _finish(proc, time.monotonic(), f"{cmd!r} after its terminal was closed")
    return Outcome(rc, "", seen, seconds, session_leftovers(proc.pid)), running
