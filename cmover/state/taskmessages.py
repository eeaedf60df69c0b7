"""Task messages as the workers read them, published with kombu: what a command sends without Celery.

The workers are Celery workers; they read Celery's task message protocol, version 2, which Celery documents
for clients that are not Celery: the headers name the task, its id and tracing fields, the body is
``[args, kwargs, embed]``. A command sends a pass's first tasks and then only waits, and importing Celery to
send them was a quarter of the CPU of its start on the development machine (kombu alone 0.170 s, with
Celery 0.225 s, paired runs), time in which no worker has a task yet. :func:`publish` writes the message
Celery's ``send_task`` writes for cmover's tasks: the same queue (declared as :mod:`cmover.app` declares
it), the default exchange with the queue's name as routing key, persistent delivery, Celery's default
publish retry policy, the same headers and properties. ``tests/test_taskmessages.py`` holds the two side by
side, field by field, so that a Celery release that writes another message fails there first.

The workers' own children are still sent through Celery (:func:`cmover.worker.taskbase.publish`): a worker
has it loaded anyway.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from kombu import Connection, Exchange, Producer, Queue

from cmover.core.tasknames import ROUTES, Message, argsrepr

#: Celery's default ``task_publish_retry_policy`` (cmover.app keeps it): up to 3 retries, 0.2 s apart more each
#: time, at most 1 s.
RETRY_POLICY: dict[str, Any] = {"max_retries": 3, "interval_start": 0, "interval_max": 1, "interval_step": 0.2}

#: Seconds a command waits for the broker to accept its connection (Celery's ``broker_connection_timeout``).
CONNECT_TIMEOUT = 4.0


def queue(name: str) -> Queue:
    """Queue ``name`` as every cmover process declares it: durable, bound to a durable direct exchange of the
    same name with its name as routing key."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def connection(url: str) -> Connection:
    """A connection to the broker at ``url`` as the Celery app makes one to publish: publisher confirms on
    (a message is sent when the broker has it), :data:`CONNECT_TIMEOUT`; not connected yet."""
    return Connection(url, connect_timeout=CONNECT_TIMEOUT, transport_options={"confirm_publish": True})


def task_message(name: str, args: list[Any], task_id: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``(headers, properties, body)`` of task ``name`` with positional ``args`` (the pass spec first) and id
    ``task_id``, in protocol 2, as Celery's ``send_task`` makes them for a task that ignores its result and
    has no parent, group, ETA, expiry or time limit."""
    headers: dict[str, Any] = {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None, "expires": None, "group": None,
        "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": argsrepr(args[1:]), "kwargsrepr": "{}", "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties: dict[str, Any] = {"correlation_id": task_id, "reply_to": ""}
    body: tuple[Any, ...] = (args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    return headers, properties, body


def publish(conn: Connection, messages: Sequence[Message]) -> None:
    """Send task messages (each counted in the ledger already) on ``conn``, each to its task's queue (declared
    first, as Celery does), persistent, retried as Celery retries them; raises what kombu raises once the
    retries are spent."""
    producer = Producer(conn, auto_declare=False)
    for name, args, task_id in messages:
        qname = ROUTES[name]  # only cmover's own tasks are sent: KeyError is a bug
        headers, properties, body = task_message(name, args, task_id)
        producer.publish(body, exchange="", routing_key=qname, serializer="json", delivery_mode=2,
                         declare=[queue(qname)], retry=True, retry_policy=RETRY_POLICY, headers=headers,
                         **properties)


__all__ = ["queue", "connection", "task_message", "publish", "RETRY_POLICY", "CONNECT_TIMEOUT"]
