"""Task names and queue names of the passes: what a message is routed by, known without the Celery app.

:mod:`cmover.app` routes with them; the code that publishes or runs tasks names them from here, so that a
process that runs a task without Celery (the embedded runner and its pool, :func:`cmover.worker.taskbase.run_message`)
does not import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: (pass, job kind) -> task name. Queues are named after the pass and kind: cmover.<pass>.dirs|files.
TASK_NAMES: dict[tuple[str, str], str] = {
    ("copy", "dir"): "cmover.copy.dir",
    ("copy", "files"): "cmover.copy.files",
    ("copy", "chunk"): "cmover.copy.chunk",
    ("delete", "dir"): "cmover.delete.dir",
    ("delete", "files"): "cmover.delete.files",
    ("delete", "purge"): "cmover.delete.purge",
    ("dirtime", "dir"): "cmover.dirtime.dir",
    ("dirtime", "files"): "cmover.dirtime.files",
    ("verify", "dir"): "cmover.verify.dir",
    ("verify", "files"): "cmover.verify.files",
    ("verify", "chunk"): "cmover.verify.chunk",
}


def queue_name(kind: str, what: str) -> str:
    """``cmover.<pass>.<what>`` with what in dirs, files, dead, or ``errors.<run>``."""
    return f"cmover.{kind}.{what}"


def pass_queues(kind: str) -> list[str]:
    return [queue_name(kind, "dirs"), queue_name(kind, "files")]


#: Task name -> the queue its messages go to: a directory task to ``cmover.<pass>.dirs``, every other one to
#: ``cmover.<pass>.files`` (the Celery app's routes, the embedded hub's and a command's own publication).
ROUTES: dict[str, str] = {name: queue_name(kind, "dirs" if what == "dir" else "files")
                          for (kind, what), name in TASK_NAMES.items()}


def argsrepr(wire_args: Sequence[Any]) -> str:
    """What a task message shows of its arguments (Celery's ``argsrepr``: logs and events only): the job's own
    arguments, not the pass spec every task carries, which Celery would repeat there (1 KiB of each message,
    kept by the broker or the embedded hub for every queued task)."""
    return "(<spec>, " + ", ".join(repr(a) for a in wire_args)[:1000] + ")"


#: A task message as cmover's task layer builds it: (task name, arguments, task id); the arguments are the pass
#: spec's wire form, then the job's (:meth:`cmover.engine.jobs.Job.wire_args`).
Message = tuple[str, list[Any], str]
