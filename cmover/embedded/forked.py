"""A function run in a process forked from this one: the embedded hub and the pool's processes.

What they had from :mod:`multiprocessing`'s fork context, without importing it: importing it (its context,
process, reduction and util modules, with ``pickle``, ``subprocess`` and ``selectors``) was about 10 ms of every
embedded command's start (measured: a 10-file copy, 0.145 s with it, 0.134 s without), for what the four methods
here do.

The child runs with the ``os.register_at_fork`` hooks run (the hub client's, the kept roots'), standard input
on ``/dev/null`` (a pool process never reads the terminal), and ends with ``os._exit``: exit code 0 when the
function returns, the code of a ``SystemExit`` it raises, 1 after printing the traceback of any other exception.
It never returns into the caller's code, and runs no ``atexit`` handler of the parent's.
"""

from __future__ import annotations

import os
import select
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


class Forked:
    """One child process running ``target(*args)``; ``name`` names it in its traceback, if it has one."""

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...] = (), name: str = "child") -> None:
        self._target, self._args, self.name = target, args, name
        self.pid: int = 0
        self._code: int | None = None
        self._pidfd: int | None = None

    def start(self) -> None:
        """Fork; in the child, run the target and exit (see the module doc)."""
        pid = os.fork()
        if pid == 0:
            os._exit(self._child())
        self.pid = pid
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # a kernel without pidfds: join() polls
            self._pidfd = None

    def _child(self) -> int:
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            self._target(*self._args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            print(f"Process {self.name}:", file=sys.stderr)
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError, AttributeError):
                    pass
        return code

    @property
    def exitcode(self) -> int | None:
        """None while it runs; then its exit code, or minus the signal that ended it (it is reaped here)."""
        if self._code is None and self.pid:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._ended(status)
        return self._code

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has ended (and reap it), or ``timeout`` seconds at most."""
        if self._code is not None or not self.pid:
            return
        if timeout is None:
            self._ended(os.waitpid(self.pid, 0)[1])
            return
        deadline = time.monotonic() + timeout
        while self.exitcode is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], left)  # readable once it has ended
            else:
                time.sleep(min(left, 0.01))

    def _ended(self, status: int) -> None:
        """It has been reaped with wait status ``status``."""
        self._code = os.waitstatus_to_exitcode(status)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
