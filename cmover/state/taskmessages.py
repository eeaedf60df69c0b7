"""Task messages as the workers read them, published with py-amqp: what a command sends without Celery or kombu.

The workers are Celery workers; they read Celery's task message protocol, version 2, which Celery documents
for clients that are not Celery: the headers name the task, its id and tracing fields, the body is
``[args, kwargs, embed]``. A command sends a pass's first tasks and then only waits. Importing Celery to send
them was a quarter of the CPU of its start (kombu alone 0.170 s, with Celery 0.225 s, paired runs), and
kombu itself, over py-amqp, then most of what was left: on the development machine ``import kombu``'s
modules took 0.09 s more than the command's own, against 0.016 s for ``amqp`` (its plugin lookup through
``importlib.metadata``, billiard, PyYAML where installed). :func:`publish` writes on the wire the message
Celery's ``send_task`` writes for cmover's tasks: the same queue (declared as :mod:`cmover.app` declares it:
a durable direct exchange of the queue's name, bound with that name), the default exchange with the queue's
name as routing key, persistent delivery, priority 0, JSON in UTF-8, Celery's default publish retry policy,
the same headers and properties. ``tests/integration/test_taskmessages.py`` reads both back from RabbitMQ,
field by field, so that a Celery release that writes another message fails there first.

:class:`Link` is a command's one connection (:func:`cmover.ops.broker.link`): publisher confirms on, so that a
message is sent when the broker has it.

:class:`Publisher` sends a distributed worker's children the same way, but waits for the broker's
confirmations once per task rather than once per message (:func:`cmover.worker.taskbase.publisher`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import amqp

from cmover.core.errors import ConfigError
from cmover.core.origin import host, pid
from cmover.core.tasknames import ROUTES, Message, argsrepr

T = TypeVar("T")

#: Celery's default ``task_publish_retry_policy`` (cmover.app keeps it): up to 3 retries, 0.2 s apart more each
#: time, at most 1 s.
RETRY_POLICY: dict[str, Any] = {"max_retries": 3, "interval_start": 0, "interval_max": 1, "interval_step": 0.2}

#: Seconds a command waits for the broker to accept its connection (Celery's ``broker_connection_timeout``).
CONNECT_TIMEOUT = 4.0

#: What losing the connection raises: the operation is tried again on a new one (:meth:`Link.retrying`).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, amqp.exceptions.RecoverableConnectionError,
                                                     amqp.exceptions.ConnectionForced)


#: How long a worker's :class:`Publisher` waits for a broker that went away to come back before it gives up on
#: the task messages it holds: a broker restarted, a node rebooted, a network partition healed. Those messages
#: are counted in the ledger: one that never reaches the broker leaves its run outstanding for good.
OUTAGE_SECONDS = 600.0

#: The longest pause between two attempts to reach the broker again while :data:`OUTAGE_SECONDS` last.
OUTAGE_PAUSE = 2.0


def outage_pauses() -> Iterator[float]:
    """The pause before each attempt to reach the broker again (0, then 0.2 s more each time, at most
    :data:`OUTAGE_PAUSE`), until :data:`OUTAGE_SECONDS` have passed since the first."""
    deadline = time.monotonic() + OUTAGE_SECONDS
    pause = 0.0
    while time.monotonic() + pause < deadline:
        yield pause
        pause = min(pause + 0.2, OUTAGE_PAUSE)


def retry_pauses() -> Iterator[float]:
    """The pause before each retry of :data:`RETRY_POLICY`, in order; exhausted when the retries are spent."""
    pause = float(RETRY_POLICY["interval_start"])
    for _ in range(int(RETRY_POLICY["max_retries"])):
        yield pause
        pause = min(pause + float(RETRY_POLICY["interval_step"]), float(RETRY_POLICY["interval_max"]))


class Link:
    """A command's connection to the broker at an ``amqp://user:password@host:port/vhost`` URL: opened on first
    use, with publisher confirms; :meth:`drop` forgets a broken one (no I/O), :meth:`close` ends it with the
    protocol's close. Not thread-safe (:func:`cmover.ops.broker.link` serialises its users)."""

    def __init__(self, url: str | None = None, *, login: tuple[str, str, str, str] | None = None,
                 confirm_each: bool = True) -> None:
        """To ``url``, or to ``login``: ``(host:port, user, password, vhost)`` as
        :meth:`cmover.core.settings.Settings.broker_login` gives them. ``confirm_each``: every publication waits
        for the broker's confirmation (py-amqp's ``confirm_publish``); False for :class:`Publisher`, which waits
        for them together."""
        if login is None:
            import urllib.parse  # a URL is Celery's (a worker has it loaded); a command passes the login

            u = urllib.parse.urlsplit(url or "")
            if u.scheme != "amqp" or not u.hostname or u.username is None or u.password is None:
                raise ConfigError(f"broker URL {u.scheme}://{u.hostname}... is not "
                                  "amqp://user:password@host:port/vhost")
            port = u.port or 5672
            login = (f"{u.hostname}:{port}" if ":" not in u.hostname else f"[{u.hostname}]:{port}",
                     urllib.parse.unquote(u.username), urllib.parse.unquote(u.password),
                     urllib.parse.unquote(u.path[1:]) or "/")
        host, user, password, vhost = login
        self._params: dict[str, Any] = {
            "host": host, "userid": user, "password": password, "virtual_host": vhost,
            "connect_timeout": CONNECT_TIMEOUT, "confirm_publish": confirm_each,
        }
        self._conn: amqp.Connection | None = None

    def connect(self) -> amqp.Connection:
        """The open connection, connecting first when there is none."""
        if self._conn is None:
            conn = amqp.Connection(**self._params)
            try:
                conn.connect()
            except BaseException:
                conn.collect()
                raise
            self._conn = conn
        return self._conn

    def channel(self) -> amqp.Channel:
        """A new channel on the open connection (the caller closes it)."""
        return self.connect().channel()

    def drop(self) -> None:
        """Forget the connection without a word to the broker (it is broken): the next use connects afresh."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:
                pass  # already gone: nothing to release

    def close(self) -> None:
        """Close the connection with the protocol's close (the broker logs no lost client)."""
        if self._conn is not None:
            try:
                self._conn.close()
                self._conn = None
            except Exception:
                self.drop()  # a connection that fails as it closes is closed

    def retrying(self, work: Callable[[amqp.Channel], T]) -> T:
        """``work(channel)`` on a new channel, closed after; when the connection is lost on the way, again on a
        new connection, as :data:`RETRY_POLICY` retries; raises the last error once the retries are spent."""
        pauses = retry_pauses()
        while True:
            try:
                ch = self.channel()
                try:
                    return work(ch)
                finally:
                    try:
                        ch.close()
                    except Exception:
                        pass  # closed with its connection
            except CONNECTION_ERRORS:
                self.drop()
                pause = next(pauses, None)
                if pause is None:
                    raise
                time.sleep(pause)


class BrokerLost(ConnectionError):
    """Task messages could not be handed to the broker (connection lost past the retries, a confirmation that
    never came, a message the broker refused): the task that sent them must run again."""


#: Seconds :meth:`Publisher.settle` waits for the broker's confirmations before it gives up on the connection.
CONFIRM_TIMEOUT = 30.0


class Publisher:
    """One process's task messages to the broker at ``url``, sent without waiting for each confirmation: a
    distributed worker's children, where waiting for the broker's confirmation of each in turn kept a pool
    process idle for a round trip per child (a tenth of the workers' time in a no-change pass on 2 cores,
    with the broker on the same machine; a network round trip per child where it is not).

    :meth:`send` writes the messages on the process's channel at once (publisher confirms on, persistent, each
    to its task's queue, declared once per channel), :meth:`settle` returns once the broker has confirmed every
    message sent so far. A task settles before it is counted done, so a message it sent is the broker's
    before the ledger can say the task's work is handed on, as when each publication waited.

    Every message given to :meth:`send` is counted in the ledger already, and the task that sent it, run again,
    may not send it again (a directory walked inline on one delivery is handed out on the next: the budget
    and idle peers decide, and the children's task ids follow). So no message is dropped: one not yet
    confirmed when the connection is lost is held, and sent again on a new connection, for as long as the
    broker takes to come back (:data:`OUTAGE_SECONDS`; a message sent twice is a duplicate delivery, which the
    ledger ignores). Past that, or when the broker refuses a message, :class:`BrokerLost`, and the messages
    stay held: the next :meth:`send` or :meth:`settle` of this process, a later task's, sends them first
    (:attr:`holding`). Not thread-safe: a pool process runs one task at a time.
    """

    def __init__(self, url: str) -> None:
        self._link = Link(url, confirm_each=False)
        self._ch: amqp.Channel | None = None
        self._declared: set[str] = set()
        self._tag = 0  # the broker's number for the last message sent on the channel
        self._unconfirmed: dict[int, Message] = {}
        # Messages to write, in order, before anything else: given to send and not yet written, or written on a
        # connection that was lost before the broker confirmed them.
        self._held: list[Message] = []
        self._refused = 0

    @property
    def holding(self) -> bool:
        """Whether messages given to :meth:`send` are not yet confirmed by the broker."""
        return bool(self._held or self._unconfirmed)

    def send(self, messages: Sequence[Message]) -> None:
        """Send task messages (each counted in the ledger already) without waiting for the broker's word."""
        self._held.extend(messages)
        self._retrying(lambda: None)

    def settle(self) -> None:
        """Return once every message sent is confirmed by the broker (:class:`BrokerLost`: see the class doc)."""
        self._retrying(self._wait)

    def close(self) -> None:
        self._link.close()
        self._ch = None

    def _channel(self) -> amqp.Channel:
        if self._ch is None:
            ch = self._link.channel()
            ch.confirm_select()
            ch.events["basic_ack"].add(self._confirmed)
            ch.events["basic_nack"].add(self._refuse)
            self._ch, self._tag, self._declared = ch, 0, set()
        return self._ch

    def _write(self, message: Message) -> None:
        ch = self._channel()
        name, args, task_id = message
        qname = ROUTES[name]  # only cmover's own tasks are sent: KeyError is a bug
        if qname not in self._declared:
            declare(ch, qname)
            self._declared.add(qname)
        ch.basic_publish(amqp_message(name, args, task_id), exchange="", routing_key=qname)
        self._tag += 1
        self._unconfirmed[self._tag] = message

    def _confirmed(self, tag: int, multiple: bool) -> None:
        if multiple:
            for t in [t for t in self._unconfirmed if t <= tag]:
                del self._unconfirmed[t]
        else:
            self._unconfirmed.pop(tag, None)

    def _refuse(self, tag: int, multiple: bool) -> None:
        # The broker could not take them (an internal error of a queue): they are held, to be sent again.
        self._refused += 1
        self._held += [m for t, m in sorted(self._unconfirmed.items()) if t == tag or (multiple and t <= tag)]
        self._confirmed(tag, multiple)

    def _wait(self) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while self._unconfirmed and not self._refused:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError()
                self._link.connect().drain_events(timeout=left)
            except TimeoutError:
                raise BrokerLost(f"the broker confirmed none of {len(self._unconfirmed)} task message(s) in "
                                 f"{CONFIRM_TIMEOUT:.0f} s") from None
        if self._refused:
            self._refused = 0
            raise BrokerLost("the broker refused task messages (nack)")

    def _retrying(self, work: Callable[[], None]) -> None:
        """Write the held messages, then ``work()``; when the connection is lost on the way, every message not
        yet confirmed is held again, and all of it tried again on a new connection while :func:`outage_pauses`
        lasts."""
        pauses = outage_pauses()
        while True:
            try:
                while self._held:  # each stays held until it is written: none is dropped on the way
                    self._write(self._held[0])
                    del self._held[0]
                work()
                return
            except BrokerLost:
                raise
            except (*CONNECTION_ERRORS, amqp.exceptions.AMQPError) as exc:
                self._held = [m for _, m in sorted(self._unconfirmed.items())] + self._held
                self._unconfirmed = {}
                self._link.drop()
                self._ch = None
                if not isinstance(exc, CONNECTION_ERRORS):  # the broker closed the channel on an error of its own
                    raise BrokerLost(f"the broker refused task messages: {exc}") from exc
                pause = next(pauses, None)
                if pause is None:
                    raise BrokerLost(f"broker connection lost: {exc}") from exc
                time.sleep(pause)


def declare(ch: amqp.Channel, name: str) -> None:
    """Queue ``name`` as every cmover process declares it: durable, bound to a durable direct exchange of the
    same name with its name as routing key."""
    ch.exchange_declare(name, "direct", durable=True, auto_delete=False)
    ch.queue_declare(name, durable=True, auto_delete=False)
    ch.queue_bind(name, name, name)


def task_message(name: str, args: list[Any], task_id: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``(headers, properties, body)`` of task ``name`` with positional ``args`` (the pass spec first) and id
    ``task_id``, in protocol 2, as Celery's ``send_task`` makes them for a task that ignores its result and
    has no parent, group, ETA, expiry or time limit."""
    headers: dict[str, Any] = {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None, "expires": None, "group": None,
        "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": argsrepr(args[1:]), "kwargsrepr": "{}", "origin": f"gen{pid()}@{host()}",
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties: dict[str, Any] = {"correlation_id": task_id, "reply_to": ""}
    body: tuple[Any, ...] = (args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    return headers, properties, body


def amqp_message(name: str, args: list[Any], task_id: str) -> amqp.Message:
    """Task ``name``'s message (:func:`task_message`) as py-amqp sends it: JSON in UTF-8, persistent, priority 0."""
    headers, properties, body = task_message(name, args, task_id)
    return amqp.Message(json.dumps(body).encode(), content_type="application/json", content_encoding="utf-8",
                        application_headers=headers, delivery_mode=2, priority=0, **properties)


def publish(link: Link, messages: Sequence[Message]) -> None:
    """Send task messages (each counted in the ledger already) on ``link``, each to its task's queue (declared
    first, as Celery does, once per channel), persistent, each confirmed by the broker before the next; when
    the connection is lost, the rest goes on a new one, as Celery retries (:meth:`Link.retrying`); raises what
    py-amqp raises once the retries are spent. A message sent again after a connection lost before its
    confirmation is a duplicate delivery, which the ledger ignores."""
    todo = list(messages)
    sent = 0

    def send(ch: amqp.Channel) -> None:
        nonlocal sent
        declared: set[str] = set()
        while sent < len(todo):
            name, args, task_id = todo[sent]
            qname = ROUTES[name]  # only cmover's own tasks are sent: KeyError is a bug
            if qname not in declared:
                declare(ch, qname)
                declared.add(qname)
            ch.basic_publish(amqp_message(name, args, task_id), exchange="", routing_key=qname)
            sent += 1

    if todo:
        link.retrying(send)


__all__ = ["Link", "Publisher", "BrokerLost", "declare", "task_message", "amqp_message", "publish", "RETRY_POLICY",
           "CONNECT_TIMEOUT", "CONFIRM_TIMEOUT", "CONNECTION_ERRORS"]
