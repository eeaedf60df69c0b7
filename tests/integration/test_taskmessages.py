"""A command's task messages (cmover.state.taskmessages, py-amqp alone) against Celery's own, field by field.

Both are published to a queue of a real vhost and read back raw from RabbitMQ: what the workers receive must
be the message Celery's ``send_task`` writes for the same task, so that a Celery release that writes another
one fails here before a worker meets it. And a command's connection lost between two uses is replaced.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest
from support.deploy import Deployment, DeploymentSet
from support.worker import configure_app_without_broker

import cmover.app as appmod
from cmover.core.tasknames import ROUTES, TASK_NAMES
from cmover.state import taskmessages
from cmover.worker.taskbase import publish as publish_through_celery

#: Properties that differ on purpose. ``reply_to``: Celery names its app's result consumer, which a command
#: without Celery does not have (and every pass task ignores its result).
_OWN = {"reply_to"}


@pytest.fixture(scope="module")
def site(module_deployments: DeploymentSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("taskmessages")
    dep = module_deployments.new("taskmsg", root / "src", root / "dst")
    dep.init_broker()
    yield dep


def _url(site: Deployment) -> str:
    password = (site.rabbitmq_dir / f"rabbitmq_{site.username}.conf").read_text().strip()
    return f"amqp://{site.username}:{password}@127.0.0.1:5672/{site.username}"


def _both(site: Deployment, name: str, args: list[Any], tid: str) -> tuple[amqp.Message, amqp.Message]:
    from kombu import Connection

    configure_app_without_broker()
    with Connection(_url(site), transport_options={"confirm_publish": True}) as conn:
        publish_through_celery(appmod.app, [(name, args, tid)], connection=conn)
    link = taskmessages.Link(_url(site))
    try:
        taskmessages.publish(link, [(name, args, tid)])
        ch = link.channel()
        celery, ours, none = (ch.basic_get(ROUTES[name], no_ack=True) for _ in range(3))
        assert celery is not None and ours is not None and none is None
        return celery, ours
    finally:
        link.close()


@pytest.mark.parametrize("name", sorted(TASK_NAMES.values()))
def test_a_commands_message_is_celerys_message(site: Deployment, name: str) -> None:
    spec = {"run_id": "copy-1", "kind": name.split(".")[1], "src_root": "/s", "dst_root": "/d"}
    args = [spec, "some/dir", None, ["a", "b"]]
    celery, ours = _both(site, name, args, "0f9d2b1c-task")
    headers = ours.properties["application_headers"]
    assert headers == celery.properties["application_headers"]  # the task, its id, root, origin, argsrepr...
    assert headers["task"] == name and headers["id"] == "0f9d2b1c-task"
    assert {k: v for k, v in ours.properties.items() if k not in _OWN} == \
        {k: v for k, v in celery.properties.items() if k not in _OWN}
    assert ours.properties["correlation_id"] == "0f9d2b1c-task" and ours.properties["delivery_mode"] == 2
    assert (ours.properties["content_type"], ours.properties["content_encoding"]) == ("application/json", "utf-8")
    for key in ("exchange", "routing_key", "redelivered"):
        assert ours.delivery_info[key] == celery.delivery_info[key]
    assert ours.delivery_info["routing_key"] == ROUTES[name] and ours.delivery_info["exchange"] == ""
    assert ours.body == celery.body
    assert json.loads(ours.body) == [args, {}, {"callbacks": None, "errbacks": None, "chain": None,
                                                              "chord": None}]


def test_a_lost_connection_is_replaced_and_the_rest_of_a_batch_is_sent(site: Deployment) -> None:
    """The connection dies between two uses (its socket shut): the next publication connects again and sends
    every message, each once."""
    link = taskmessages.Link(_url(site))
    name = TASK_NAMES[("copy", "dir")]
    spec = {"run_id": "copy-2", "kind": name.split(".")[1], "src_root": "/s", "dst_root": "/d"}
    try:
        first = link.connect()
        first.transport.sock.shutdown(socket.SHUT_RDWR)
        taskmessages.publish(link, [(name, [spec, f"d{i}", None], f"t{i}") for i in range(5)])
        assert link.connect() is not first
        ch = link.channel()
        got = []
        while (m := ch.basic_get(ROUTES[name], no_ack=True)) is not None:
            got.append(m.properties["application_headers"]["id"])
        assert got == [f"t{i}" for i in range(5)]
    finally:
        link.close()


def _drain(site: Deployment, queue: str) -> list[amqp.Message]:
    link = taskmessages.Link(_url(site))
    try:
        ch = link.channel()
        got = []
        while (m := ch.basic_get(queue, no_ack=True)) is not None:
            got.append(m)
        return got
    finally:
        link.close()


def test_a_workers_children_are_sent_at_once_and_confirmed_together(site: Deployment) -> None:
    """A worker's publisher writes its children without waiting for each confirmation, and settle returns once
    the broker has them all: the same messages as a command's, in order; settling with nothing sent is free."""
    name = TASK_NAMES[("copy", "files")]
    spec = {"run_id": "copy-3", "kind": "copy", "src_root": "/s", "dst_root": "/d"}
    messages = [(name, [spec, f"d{i}", ["f"]], f"p{i}") for i in range(50)]
    pub = taskmessages.Publisher(_url(site))
    try:
        pub.settle()
        pub.send(messages[:1])
        pub.send(messages[1:])
        pub.settle()
        assert pub._unconfirmed == {} and pub._held == [] and not pub.holding
    finally:
        pub.close()
    got = _drain(site, ROUTES[name])
    assert [m.properties["application_headers"]["id"] for m in got] == [f"p{i}" for i in range(50)]
    link = taskmessages.Link(_url(site))
    try:
        taskmessages.publish(link, messages[:1])
    finally:
        link.close()
    (reference,) = _drain(site, ROUTES[name])
    assert got[0].body == reference.body
    assert got[0].properties["application_headers"] == reference.properties["application_headers"]


def test_children_sent_before_a_lost_connection_are_sent_again(site: Deployment) -> None:
    """The connection dies after the children were written and before the broker's confirmations were read:
    settle sends every one not confirmed again on a new connection, so each reaches the queue (a duplicate is a
    redelivery the ledger ignores); none is lost."""
    name = TASK_NAMES[("copy", "dir")]
    spec = {"run_id": "copy-4", "kind": "copy", "src_root": "/s", "dst_root": "/d"}
    pub = taskmessages.Publisher(_url(site))
    try:
        pub.send([(name, [spec, f"d{i}", None], f"q{i}") for i in range(20)])
        first = pub._link.connect()
        first.transport.sock.shutdown(socket.SHUT_RDWR)
        pub.settle()
        assert pub._link.connect() is not first and pub._unconfirmed == {}
        pub.send([(name, [spec, "after", None], "q-after")])
        pub.settle()
    finally:
        pub.close()
    ids = [m.properties["application_headers"]["id"] for m in _drain(site, ROUTES[name])]
    assert set(ids) == {f"q{i}" for i in range(20)} | {"q-after"}, ids


class _Relay:
    """A TCP relay to the broker (127.0.0.1:5672) on a port of its own, which :meth:`outage` takes away for a
    while: every connection through it is cut and new ones are refused, as while a broker restarts."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.up.set()
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open()

    def _open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by outage
            broker = socket.create_connection(("127.0.0.1", 5672))
            with self._lock:
                self._conns += [client, broker]
            for a, b in ((client, broker), (broker, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def outage(self, seconds: float) -> None:
        """Cut every connection, refuse new ones for ``seconds`` (in the background), then relay again."""
        assert self._listener is not None
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone leaves it listening)
        self._listener.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conns.clear()
        self.up.clear()

        def back() -> None:
            time.sleep(seconds)
            self._open()
            self.up.set()

        threading.Thread(target=back, daemon=True).start()


def test_children_are_held_through_a_broker_outage_and_none_is_dropped(site: Deployment,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker goes away for 3 s (5 times Celery's publish retries) while a task's children wait for their
    confirmations: settle rides it out and every child reaches its queue. Gone for longer than the publisher's
    outage allowance (1 s here), settle gives up (BrokerLost, broker trouble: the task runs again later) but
    the messages stay held, and the next settle of the process, a later task's, sends them: a child counted in
    the ledger is never dropped, whatever the task's next delivery sends."""
    name = TASK_NAMES[("copy", "files")]
    spec = {"run_id": "copy-6", "kind": "copy", "src_root": "/s", "dst_root": "/d"}
    relay = _Relay()
    url = _url(site).replace("127.0.0.1:5672", f"127.0.0.1:{relay.port}")
    pub = taskmessages.Publisher(url)
    try:
        pub.send([(name, [spec, "first", ["f"]], "o-first")])
        relay.outage(3.0)  # the connection made for the first child is cut: the rest go on a new one
        t0 = time.monotonic()
        pub.send([(name, [spec, f"d{i}", ["f"]], f"o{i}") for i in range(20)])
        pub.settle()
        assert time.monotonic() - t0 > 2.5 and not pub.holding
        monkeypatch.setattr(taskmessages, "OUTAGE_SECONDS", 1.0)
        pub.send([(name, [spec, "late", ["f"]], "o-late")])
        relay.outage(4.0)
        with pytest.raises(taskmessages.BrokerLost, match="connection lost"):
            pub.send([(name, [spec, "during", ["f"]], "o-during")])
            pub.settle()
        assert pub.holding
        assert relay.up.wait(10)
        pub.send([(name, [spec, "after", ["f"]], "o-after")])
        pub.settle()
        assert not pub.holding
    finally:
        pub.close()
    ids = [m.properties["application_headers"]["id"] for m in _drain(site, ROUTES[name])]
    assert sorted(set(ids)) == sorted({f"o{i}" for i in range(20)} | {"o-first", "o-late", "o-during", "o-after"}), ids


def test_a_message_the_broker_refuses_is_broker_trouble_not_a_hang(site: Deployment) -> None:
    """The broker closes the channel on an error of its own (here the task's exchange exists with another type):
    BrokerLost at once, a ConnectionError, which a task takes for broker trouble (it runs again later)."""
    name = TASK_NAMES[("dirtime", "dir")]
    link = taskmessages.Link(_url(site))
    try:
        ch = link.channel()
        ch.exchange_delete(ROUTES[name])
        ch.exchange_declare(ROUTES[name], "fanout", durable=True, auto_delete=False)
        pub = taskmessages.Publisher(_url(site))
        spec = {"run_id": "dirtime-5", "kind": "dirtime", "src_root": "/s", "dst_root": "/d"}
        with pytest.raises(taskmessages.BrokerLost, match="refused") as got:
            pub.send([(name, [spec, "d", None], "r1")])
            pub.settle()
        assert isinstance(got.value, ConnectionError)
        pub.close()
    finally:
        ch = link.channel()
        ch.exchange_delete(ROUTES[name])
        taskmessages.declare(ch, ROUTES[name])  # as every other test of the module expects it
        link.close()


def test_a_bad_broker_url_is_a_config_error() -> None:
    from cmover.core.errors import ConfigError

    for url in ("redis://u:p@h/v", "amqp://h/v", "amqp://u@h/v"):
        with pytest.raises(ConfigError, match="amqp://user:password@host:port/vhost"):
            taskmessages.Link(url)


def test_the_distributed_command_path_imports_neither_celery_nor_kombu() -> None:
    """Planning, checking the broker, seeding and waiting import py-amqp only (Celery and kombu are the
    workers' own)."""
    code = ("import sys, cmover.cli.main, cmover.ops.start, cmover.ops.status, cmover.ops.broker\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'billiard', 'yaml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent).stdout
    assert out.strip() == "[]"


def test_queue_depths_are_read_on_one_channel_and_a_missing_queue_reads_0(site: Deployment) -> None:
    """The depths a command reads for `status` (cmover.ops.broker): a queue never declared is 0, and the
    broker's closing of the channel that asked for it costs the others nothing but a new channel."""
    from cmover.ops import broker

    link = taskmessages.Link(_url(site))
    try:
        ch = link.channel()
        for name in ("depth.a", "depth.c"):
            taskmessages.declare(ch, name)
        for _ in range(2):
            ch.basic_publish(amqp.Message(b"x"), exchange="", routing_key="depth.a")
        ch.close()
        time.sleep(0.2)  # the broker counts what it was sent
        opened: list[int] = []
        channel = link.channel

        def counting() -> amqp.Channel:
            opened.append(1)
            return channel()

        link.channel = counting  # type: ignore[method-assign]
        assert broker._read_depths(link, ["depth.a", "depth.c", "depth.b", "depth.c"]) == \
            {"depth.a": 2, "depth.c": 0, "depth.b": 0}
        assert len(opened) == 2
        assert broker._read_depths(link, ["depth.a", "depth.c"]) == {"depth.a": 2, "depth.c": 0}
        assert len(opened) == 3
    finally:
        link.close()
