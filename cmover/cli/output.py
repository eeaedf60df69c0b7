"""The command's output when its reader goes away (``| head``, a closed pipe, a hung-up terminal).

The rest of that stream is discarded (:class:`Output`). A command that runs or steers a pass goes on to its
end regardless: its work does not depend on being watched, and an embedded pass torn down half-way would
only have to be run again. Its exit code stays the pass's own, so ``cmover copy ... | head; echo
${PIPESTATUS[0]}`` still says whether the copy is complete. Listings (:data:`LISTINGS`, and --help) stop at
once, exit 141 (:data:`EXIT_OUTPUT_GONE`), without a traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO, cast

#: 128 + SIGPIPE: what a shell reports for a command whose reader went away.
EXIT_OUTPUT_GONE = 128 + signal.SIGPIPE  # 141

#: Commands whose output is all they produce: they stop when it is closed.
LISTINGS = frozenset({"status", "errors", "deleted", "lustre-info", "hsm-rebind-list"})


class Output:
    """sys.stdout or sys.stderr as the command writes it: one place that handles a reader going away.

    A write or flush that fails with EPIPE (the reader of a pipe exited, e.g. ``| head``) or EIO (the
    terminal was hung up) points the stream's file descriptor at /dev/null, as Python's documentation
    advises for BrokenPipeError: the data still buffered, every later write (also from other threads,
    log handlers and forked pool processes that hold this object) and the flush at exit then succeed
    silently. What the command does next depends on :attr:`stop` (set per command by :func:`for_command`):
    a pass goes on (the failed write returns as if done); a listing gets BrokenPipeError from that write
    and from every later one, which :func:`guarded` turns into exit 141. Other errors are raised as usual.
    """

    #: Raise BrokenPipeError in the writer once the output is gone (listings), instead of discarding.
    stop = True

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if self.gone and Output.stop:
            raise BrokenPipeError(errno.EPIPE, "the output was closed")
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._lost(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        if exc.errno not in (errno.EPIPE, errno.EIO):
            raise exc
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)
        self.gone = True
        if Output.stop:
            raise BrokenPipeError(errno.EPIPE, "the output was closed") from exc

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer... of the real stream
        return getattr(self._stream, name)


def guard() -> None:
    """Route sys.stdout and sys.stderr through :class:`Output` (once; before any handler holds them)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, Output):
            setattr(sys, name, cast(TextIO, Output(stream)))


def for_command(name: str) -> None:
    """Set what a closed output does to command ``name``: a listing stops, anything else goes on."""
    Output.stop = name in LISTINGS


def guarded(command: Callable[[], int]) -> int:
    """Run ``command`` (the whole command line) with stdout and stderr guarded (:func:`guard`); its exit code,
    or EXIT_OUTPUT_GONE when a listing's output was closed. Until :func:`for_command` says otherwise (--help,
    usage errors) the output is a listing's."""
    guard()
    Output.stop = True
    try:
        try:
            return command()
        finally:  # also after argparse's SystemExit; a listing whose reader left learns it here at the latest
            sys.stdout.flush()
            sys.stderr.flush()
    except BrokenPipeError:
        return EXIT_OUTPUT_GONE
    except SystemExit as exc:  # rich's Console answers a BrokenPipeError with SystemExit(1) (on_broken_pipe)
        if isinstance(exc.__context__, BrokenPipeError):
            return EXIT_OUTPUT_GONE
        raise
