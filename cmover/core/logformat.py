"""How log records are written: ``LOG_FORMAT = "text"`` (the default) or ``"json"``, one object per line.

A JSON line holds, in this order: ``time`` (UTC, ISO 8601 with microseconds and ``Z``), ``level``
(``INFO``, ``WARNING``...), ``node`` (the host name, as in ``cmover status``), ``pass`` and ``run`` (of the
task the process is running; null outside a task), ``path`` (the entry the record is about, relative to
the pass roots; null when none), ``message``, then ``logger`` and ``pid``, and ``exception`` (the
traceback) when there is one. Nothing else is ever in a line: a multi-line message or traceback is one
escaped JSON string, and the output is ASCII, so a log shipper sends each line to Elasticsearch or Loki
unchanged.

``path`` is written as on the wire (:func:`cmover.core.paths.to_wire`): a string when the name is valid
UTF-8, otherwise ``{"b64": "<base64 of the bytes>"}``, so any name is kept exactly. A message names
entries as :func:`cmover.core.paths.display` does (a name that is not UTF-8 as a bytes literal); a lone
surrogate that reached a message anyway is written as the ``\\xNN`` escape of its byte, never as text
that is not Unicode.

Which record is about which entry: a record logged with ``extra=at(rel)`` is about ``rel``; otherwise a
record logged while a pass task runs is about the task's directory (:func:`bind_task`, set by the one
place tasks run, :func:`cmover.worker.taskbase.run_pass_task`, and cleared after each task).
"""

from __future__ import annotations

import json
import logging
import socket
from contextvars import ContextVar
from typing import Any

from cmover.core.paths import to_wire

#: The values of LOG_FORMAT.
LOG_FORMATS = ("text", "json")

#: The LogRecord attribute holding the relative path (bytes) a record is about (see :func:`at`).
PATH_ATTR = "cmover_path"

#: (pass, run id, relative path) of the task this process (or thread) is running, or None.
_task: ContextVar[tuple[str, str, bytes] | None] = ContextVar("cmover_log_task", default=None)


def at(rel: bytes) -> dict[str, bytes]:
    """``extra`` of a log call about entry ``rel``: ``log.warning("...", extra=at(rel))``."""
    return {PATH_ATTR: rel}


def bind_task(kind: str, run_id: str, rel: bytes) -> None:
    """Records logged from now on are about pass ``kind``, run ``run_id``, directory ``rel`` (until cleared)."""
    _task.set((kind, run_id, rel))


def clear_task() -> None:
    """Records logged from now on belong to no task."""
    _task.set(None)


def _text(s: str) -> str:
    """``s`` as valid Unicode: surrogates (undecodable bytes of a name) become the ``\\xNN`` escapes of their bytes."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        try:
            return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            return s.encode("utf-8", "backslashreplace").decode("ascii")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module doc for its fields)."""

    _node: str | None = None

    @classmethod
    def node(cls) -> str:
        if cls._node is None:
            cls._node = socket.gethostname()
        return cls._node

    def format(self, record: logging.LogRecord) -> str:
        from datetime import UTC, datetime  # here: a run that logs nothing as JSON never needs it

        task = _task.get()
        rel = getattr(record, PATH_ATTR, None)
        if not isinstance(rel, bytes):
            rel = task[2] if task is not None else None
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "node": self.node(),
            "pass": task[0] if task is not None else None,
            "run": task[1] if task is not None else None,
            "path": to_wire(rel) if rel is not None else None,
            "message": _text(record.getMessage()),
            "logger": record.name,
            "pid": record.process,
        }
        if record.exc_info:
            doc["exception"] = _text(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = _text(record.exc_text)
        if record.stack_info:
            doc["stack"] = _text(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=True)


def use_json(logger: logging.Logger) -> None:
    """Write every handler of ``logger`` as JSON lines (handlers shared with other loggers too)."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())


def apply(log_format: str, *loggers: logging.Logger) -> None:
    """Give ``loggers`` (default: the root logger) the handlers' format of ``log_format``; text keeps theirs."""
    if log_format == "json":
        for logger in loggers or (logging.getLogger(),):
            use_json(logger)
