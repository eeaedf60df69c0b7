"""Run cmover's Celery tasks in this process, as a worker runs them, for hostile-message and fuzz tests.

:class:`InProcessWorker` installs a :class:`cmover.app.WorkerContext` with in-memory ledger, counters and
error list and the configured mounts (so ``check_spec`` confines as on a real worker), replaces
``app.send_task`` by a recorder (children are listed, never published) and calls a task's ``run`` inside
a pushed request, exactly what Celery's tracer does around it. :func:`outside_state` snapshots a tree so a
test can prove that nothing outside the target root was written.
"""

from __future__ import annotations

import logging
import os
import stat
import uuid
from pathlib import Path
from typing import Any

from celery.exceptions import Reject

import cmover.app as appmod
from cmover.app import WorkerContext
from cmover.errorlist import MemoryErrors
from cmover.errors import Failure
from cmover.ledger import MemoryLedger
from cmover.stats import MemoryStats


def configure_app_without_broker() -> None:
    """Load the Celery configuration once without a site's broker: nothing in these tests publishes."""
    if appmod.app.configured:
        return
    was = appmod._embedded
    appmod._embedded = True  # _configure_broker then leaves the broker alone instead of reading config.py
    try:
        _ = appmod.app.conf.broker_url  # reading (not setting) a key loads the configuration now
        appmod.app.conf.broker_url = "memory://"
    finally:
        appmod._embedded = was


class _Tracebacks(logging.Handler):
    """Collects every log record that carries a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text or record.stack_info:
            self.records.append(record)


class InProcessWorker:
    """One worker process's context and a way to deliver messages to its tasks."""

    def __init__(self, src_mount: bytes | None, dst_mount: bytes | None) -> None:
        self.ctx = WorkerContext(ledger=MemoryLedger(), stats=MemoryStats(), errors=MemoryErrors(),
                                 src_mount=src_mount, dst_mount=dst_mount)
        self.sent: list[tuple[str, list[Any], str]] = []
        self.tracebacks = _Tracebacks()

    def install(self, mp: Any) -> None:
        """Use this worker's context in this process (``mp``: a pytest MonkeyPatch, undone by the caller)."""
        configure_app_without_broker()
        mp.setattr(appmod, "_context", self.ctx)
        mp.setattr(appmod.app, "send_task", self._send)
        root = logging.getLogger()
        root.addHandler(self.tracebacks)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self.tracebacks)

    def _send(self, name: str, args: Any = None, task_id: str | None = None, **_: Any) -> None:
        self.sent.append((name, list(args or []), task_id or ""))

    def deliver(self, task: Any, *args: Any) -> Reject | None:
        """Run ``task`` on message arguments ``args``; the Reject it raised, or None when it completed.

        Any other exception propagates: a worker would log it with its traceback.
        """
        task.push_request(id=f"t-{uuid.uuid4()}", args=list(args), kwargs={}, delivery_info={}, retries=0,
                          hostname="in-process@test", is_eager=False)
        try:
            task.run(*args)
        except Reject as exc:
            return exc
        finally:
            task.pop_request()
        return None

    def failures(self, run_id: str) -> list[Failure]:
        return self.ctx.errors.read(run_id)[0]


def outside_state(top: Path | bytes, *, skip: tuple[Path | bytes, ...] = ()) -> dict[bytes, tuple[Any, ...]]:
    """Every entry under ``top`` (not below ``skip``): type, mode, owner, size, mtime, data or link target.

    Directory mtimes are included, so even an entry created and removed again shows up as a change.
    """
    top_b = os.fsencode(top)
    skips = {os.fsencode(s) for s in skip}
    out: dict[bytes, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top_b):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skips]
        for name in [b"", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = f.read()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            out[os.path.relpath(path, top_b)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid,
                                                 st.st_size, st.st_mtime_ns, st.st_ino, extra)
    return out


# Test modules put task objects into parametrize lists: pytest's look at them finalizes the Celery app,
# which loads its configuration. Do it here, before any collection, without a site broker.
configure_app_without_broker()
