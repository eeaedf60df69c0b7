"""Starting a distributed pass: count its first task in the ledger, record the run, then publish the task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cmover.core.errors import FatalError
from cmover.core.passes import PassSpec
from cmover.core.settings import Settings
from cmover.engine.jobs import Job
from cmover.ops import runs
from cmover.ops.broker import check_broker, link
from cmover.state import taskmessages
from cmover.state.ledger import LedgerLost

if TYPE_CHECKING:
    from cmover.worker.taskbase import Message


def start(settings: Settings, spec: PassSpec, jobs: Sequence[Job] | None = None, how: str = "") -> str:
    """Seed ``spec`` on the broker (after the caller's preflight) as the current run of its pass; return the
    root task id (with ``jobs``, a journal-driven pass: those are seeded instead, see ``seed``). ConfigError
    when the broker cannot be reached, FatalError when memcached cannot: a pass
    is never published without the ledger that tells when it is complete."""
    from cmover.worker.taskbase import seed

    check_broker(settings)
    try:
        # The site's ledger alone: a worker's whole context would bring the Celery app its error lists record through.
        # The run becomes the current one once its ledger counts its first task (see seed's ``announce``).
        return seed(_send, spec, runs.ledger(settings), jobs, announce=lambda: runs.record_start(settings, spec, how))
    except (TimeoutError, OSError, LedgerLost) as exc:
        raise FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) "
                         "or fix MEMCACHED in config.py: passes cannot be tracked without it") from None


def _send(messages: Sequence[Message]) -> None:
    """Publish on the command's broker connection, the one its check opened, with py-amqp alone
    (:mod:`cmover.state.taskmessages`: the message Celery would send, without importing Celery or kombu)."""
    with link() as conn:
        taskmessages.publish(conn, messages)


__all__ = ["start"]
