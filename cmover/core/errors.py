"""The three error classes of cmover, and the one place each is handled.

::

    CmoverError
    ├── FatalError            the pass cannot run: bad config, preflight failure, unreachable broker.
    │   ├── ConfigError
    │   └── PreflightError
    └── ItemError             one entry failed: the rest goes on.
        ├── SourceChangedError
        ├── SourceStateError  the source may not be read (an HSM file whose archive copy is lost)
        └── ConfinementError  a path or message that would leave its root: never acted on.

* **Fatal** -- on the command line, :func:`cmover.cli.main.main` prints ``cmover: <message>`` (one line
  naming the problem and the fix) and exits with EXIT_FATAL (2). In a worker,
  :func:`cmover.worker.taskbase.run_pass_task` rejects a message whose spec is malformed or outside the
  configured mounts (ConfigError, ConfinementError: not requeued), and records a PreflightError raised
  inside a task (a delete task finding the source root unsafe) as a failure of that task.
* **Transient** -- an ``OSError`` whose errno is in :data:`TRANSIENT_ERRNOS` ("try again": EAGAIN,
  ETIMEDOUT, ESTALE, EINTR, EBUSY; the first three are real on Lustre and NFS). A per-item operation
  that fails so is run again a few times with a short backoff by
  :func:`cmover.engine.jobs.retry_transient`, called by every pass engine's per-entry guard (copy and
  chunks: :meth:`cmover.engine.walker.Walker.guard`; delete: the source ``lstat`` that proves absence
  and each unlink/rmdir; dirtime: setting a directory's mode and times). When the retries are used up
  the last error is an item error like any other. (Broker trouble is not this class: the task layer
  requeues the message, :func:`~cmover.worker.taskbase.run_pass_task`.)
* **Per item** -- ``ItemError`` and any other ``OSError`` met while handling one entry: the pass engine
  turns it into a :class:`~cmover.core.failure.Failure` record (:func:`~cmover.core.failure.item_failure`),
  counts it, logs it and adds it to the run's error list (:func:`cmover.engine.jobs.report_failure`), and
  goes on with the next entry. A source
  that changed while it was copied (SourceChangedError) is counted as ``changed``, not failed: the next
  pass copies it again. Anything else a task did not expect is logged with its traceback and recorded
  as a failure of the task's directory or batch by :func:`~cmover.worker.taskbase.run_pass_task`.
"""

from __future__ import annotations

import errno as _errno

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_FATAL = 2
EXIT_INTERRUPTED = 130


class CmoverError(Exception):
    """Base class of every error cmover raises on purpose."""


class FatalError(CmoverError):
    """The pass cannot run at all. ``str(exc)`` is a one-line message naming the problem and the fix."""


class ConfigError(FatalError):
    """Invalid configuration or command-line input."""


class PreflightError(FatalError):
    """A safety check before (or during) a pass failed; nothing was written."""


class ItemError(CmoverError):
    """One entry could not be handled; carries the errno when there is one, and the side it was met on."""

    side = "target"

    def __init__(self, message: str, *, op: str = "", err: int = 0) -> None:
        super().__init__(message)
        self.op = op
        self.errno = err


class SourceChangedError(ItemError):
    """The source entry changed while it was being copied; the target was not given its mtime."""


class SourceStateError(ItemError):
    """The source entry is in a state that forbids copying it (an HSM file whose archive copy is lost)."""

    side = "source"


class ConfinementError(ItemError):
    """A path or message would make cmover act outside its source or target root."""


#: errnos that say "try again" rather than "this item is broken" (handled by cmover.engine.jobs.retry_transient).
TRANSIENT_ERRNOS = frozenset({_errno.EAGAIN, _errno.ETIMEDOUT, _errno.ESTALE, _errno.EINTR, _errno.EBUSY})
