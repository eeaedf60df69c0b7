"""What the operator side asks RabbitMQ directly: is it there, how many messages wait in a pass's queues,
the error and deletion lists, the shutdown broadcast.

Depths are read with a passive ``queue.declare`` (the exact count of ready messages, not the sampled
management statistics). A queue that was never declared answers it with the channel error NOT_FOUND
(404): nothing was ever published to it, it holds 0 messages. Any other failure -- connection refused or
reset, a timeout, access refused, a locked queue -- is :class:`BrokerUnreadable`: the depth is not known,
and whoever decides completion must say "unknown", never read it as 0.

A command talks to the broker through one connection (:func:`link`): the check before a pass, the
pass's publication and every later reading share it, and :func:`close` ends it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from amqp.exceptions import NotFound

from cmover.core import site
from cmover.core.deletion import Deletion
from cmover.core.difference import Difference
from cmover.core.errors import ConfigError, FatalError
from cmover.core.failure import Failure
from cmover.core.hsmrecord import HsmRecord
from cmover.core.settings import Settings
from cmover.core.tasknames import pass_queues, queue_name
from cmover.state import taskmessages

#: The fix named by every message about a broker that cannot be reached or read.
FIX = "start RabbitMQ there or fix rabbitmq/rabbitmq.conf, and check the vhost/user with rabbitmq/rabbitmq_init.sh"


class BrokerUnreadable(FatalError):
    """The broker could not be read. ``reason`` is the error as the client gave it; ``str()`` is one line
    naming what was read, the broker, the reason and the fix."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"cannot read {what} from the broker at {_host()} ({reason}); {FIX}")
        self.reason = reason


_link: taskmessages.Link | None = None  # this process's connection to the broker (see link)
_link_lock = threading.RLock()  # one user at a time: a connection is not thread-safe (the exporter's scrapes)


@contextmanager
def link() -> Iterator[taskmessages.Link]:
    """This process's connection to the broker, connected on first use and kept until :func:`close`.

    Each new connection is an AMQP handshake and a login (3-8 ms here): a distributed pass's command opened
    four (the check, the publication, the queue depths when the pass was seen complete, its error list)
    before they shared this one. On any error inside, the connection is dropped (no I/O on it) and the error
    goes on: the next use connects afresh, so a broker restarted while a command waits is simply read again.
    """
    global _link
    with _link_lock:
        if _link is None:
            # py-amqp alone: a command needs neither Celery nor kombu to reach the broker
            # (cmover.state.taskmessages); a broken config is the ConfigError of broker_url.
            _link = taskmessages.Link(login=site.get().broker_login())
        try:
            yield _link
        except BaseException:
            broken, _link = _link, None
            broken.drop()
            raise


def close() -> None:
    """Close this process's broker connection, if open, with the protocol's close (the broker logs no lost
    client); safe to call at any time and more than once."""
    global _link
    with _link_lock:
        conn, _link = _link, None
    if conn is not None:
        conn.close()


def _host() -> str:
    try:
        return site.get().broker_host or "?"
    except Exception:  # the message is being built for another error: never hide that one
        return "?"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def check_broker(settings: Settings) -> None:
    """Connect once to the broker; ConfigError with the fix when it cannot be reached."""
    settings.broker_login()  # missing password file etc. -> ConfigError
    try:
        with link() as conn:
            conn.connect()
    except Exception as exc:
        raise ConfigError(f"cannot reach the broker at {settings.broker_host} ({exc}); {FIX}") from None


def _read_depths(conn: taskmessages.Link, queues: list[str]) -> dict[str, int]:
    """Ready messages in each of ``queues`` on ``conn``, 0 for one never declared; anything else raises. One
    channel for them all (each channel is two round trips more), a new one after a queue that is not there: the
    broker closes the channel that asked for it."""
    depths: dict[str, int] = {}
    ch: Any = None
    try:
        for queue in queues:
            if ch is None:
                ch = conn.channel()
            try:
                _, n, _ = ch.queue_declare(queue, passive=True)
                depths[queue] = int(n)
            except NotFound:
                depths[queue] = 0
                ch = None  # closed by the broker
            except Exception as exc:  # named: the one queue that cannot be read (held exclusively, say)
                ch = None
                raise BrokerUnreadable(queue, _reason(exc)) from None
    finally:
        if ch is not None:
            try:
                ch.close()
            except Exception:
                pass  # closed with the connection: nothing to release
    return depths


def _depths(queues: list[str], what: str) -> dict[str, int]:
    try:
        with link() as conn:
            return _read_depths(conn, queues)
    except BrokerUnreadable:
        raise
    except Exception as exc:
        raise BrokerUnreadable(what, _reason(exc)) from None


def pass_depths(kind: str) -> tuple[dict[str, int], int]:
    """Ready messages per queue of pass ``kind`` (``cmover.<kind>.dirs|files``), and in its dead-letter queue
    (``cmover.<kind>.dead``, of every run of the pass), 0 for a queue never declared; :class:`BrokerUnreadable`
    when any of them cannot be read."""
    queues, dead = pass_queues(kind), queue_name(kind, "dead")
    depths = _depths([*queues, dead], f"the {kind} queues")
    return {q: depths[q] for q in queues}, depths[dead]


def read_list(name: str, limit: int = 10_000) -> tuple[list[Failure], int]:
    """Up to ``limit`` records of the error list of run ``name`` and their count, nothing removed;
    :class:`BrokerUnreadable` when the broker cannot be read."""
    from cmover.state.errorlist import BrokerErrors

    try:
        return BrokerErrors(None, link).read(name, limit)
    except Exception as exc:
        raise BrokerUnreadable(f"the list {name}", _reason(exc)) from None


def read_deleted(run_id: str, limit: int = 10_000) -> tuple[list[Deletion], int]:
    """Up to ``limit`` records of the deletion list of delete run ``run_id`` (what it deleted, or would delete
    in a dry run) and their count, nothing removed; :class:`BrokerUnreadable` when the broker cannot be read."""
    from cmover.state.errorlist import BrokerErrors, deleted_list

    try:
        return BrokerErrors(None, link).read_deleted(run_id, limit)
    except Exception as exc:
        raise BrokerUnreadable(f"the list {deleted_list(run_id)}", _reason(exc)) from None


def read_hsm(run_id: str) -> list[HsmRecord]:
    """Every record of copy run ``run_id``'s HSM list, nothing removed; :class:`BrokerUnreadable` when the
    broker cannot be read."""
    from cmover.state.errorlist import BrokerErrors

    try:
        return BrokerErrors(None, link).read_hsm(run_id)
    except Exception as exc:
        raise BrokerUnreadable(f"the HSM list of {run_id}", _reason(exc)) from None


def read_differences(run_id: str, limit: int = 10_000) -> tuple[list[Difference], int]:
    """Up to ``limit`` records of the differences list of verify run ``run_id`` and their count, nothing
    removed; :class:`BrokerUnreadable` when the broker cannot be read."""
    from cmover.state.errorlist import BrokerErrors, differences_list

    try:
        return BrokerErrors(None, link).read_differences(run_id, limit)
    except Exception as exc:
        raise BrokerUnreadable(f"the list {differences_list(run_id)}", _reason(exc)) from None


def stop() -> None:
    """Warm shutdown of every worker of this vhost: running tasks finish, queued ones stay queued."""
    from cmover import app as appmod  # Celery's remote control: only this command needs the app

    appmod.app.control.broadcast("shutdown")


__all__ = ["BrokerUnreadable", "link", "close", "check_broker", "pass_depths", "read_list",
           "read_deleted", "read_differences", "stop", "FIX"]
