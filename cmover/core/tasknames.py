"""Task names and queue names of the passes: what a message is routed by, known without the Celery app.

:mod:`cmover.app` routes with them; the code that publishes or runs tasks names them from here, so that a
process that runs a task without Celery (the embedded runner and its pool, :func:`cmover.worker.taskbase.run_message`)
does not import it.
"""

from __future__ import annotations

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
