"""Worker log files: one rotating file per node, written by every cmover worker process on it.

Celery opens ``--logfile`` with a plain file handler in each worker; several workers of a node (the
directory and file workers of each pass, and their pool processes) write the same file, which a plain
rotating handler would corrupt at rotation. :func:`use_rotating_file` swaps that handler for a
``ConcurrentRotatingFileHandler`` (concurrent-log-handler: a lock file serialises writes and rotation
across processes). Size and backups: ``LOG_MAX_BYTES`` and ``LOG_BACKUPS`` below, overridable by the
environment variables ``CMOVER_LOG_MAX_BYTES`` and ``CMOVER_LOG_BACKUPS`` (read when a worker starts).
"""

from __future__ import annotations

import logging
import os

from concurrent_log_handler import ConcurrentRotatingFileHandler

LOG_MAX_BYTES = 100 << 20  # rotate at 100 MiB
LOG_BACKUPS = 10  # keep cmover_<host>.log.1 .. .10

_handlers: dict[str, ConcurrentRotatingFileHandler] = {}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"cmover: {name}={raw!r} is not a whole number; fix or unset it") from None
    if value < 0:
        raise SystemExit(f"cmover: {name}={raw!r} must be >= 0")
    return value


def rotating_handler(path: str) -> ConcurrentRotatingFileHandler:
    """The process's one rotating handler for ``path`` (shared by every logger that writes there)."""
    path = os.path.abspath(path)
    handler = _handlers.get(path)
    if handler is None:
        handler = ConcurrentRotatingFileHandler(
            path, maxBytes=_env_int("CMOVER_LOG_MAX_BYTES", LOG_MAX_BYTES),
            backupCount=_env_int("CMOVER_LOG_BACKUPS", LOG_BACKUPS))
        _handlers[path] = handler
    return handler


def use_rotating_file(logger: logging.Logger, logfile: str | None) -> None:
    """Replace ``logger``'s plain file handler for ``logfile`` by the shared rotating one (same format)."""
    if not logfile:
        return
    target = os.path.abspath(logfile)
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename) == target:
            rotating = rotating_handler(target)
            rotating.setFormatter(h.formatter)
            rotating.setLevel(h.level)
            logger.removeHandler(h)
            h.close()
            if rotating not in logger.handlers:
                logger.addHandler(rotating)
