"""A command's task messages (cmover.state.taskmessages, kombu alone) against Celery's own, field by field.

Both are published on one kombu in-memory connection and read back raw: what the workers receive must be the
message Celery's ``send_task`` writes for the same task, so that a Celery release that writes another one
fails here before a worker meets it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from kombu import Connection
from support.worker import configure_app_without_broker

import cmover.app as appmod
from cmover.core.tasknames import ROUTES, TASK_NAMES
from cmover.state import taskmessages
from cmover.worker.taskbase import publish as publish_through_celery

#: Properties that differ on purpose. ``reply_to``: Celery names its app's result consumer, which a command
#: without Celery does not have (and every pass task ignores its result). ``argsrepr``: Celery copies the
#: option into the properties as well as the header; AMQP has no such property and the broker drops it.
#: ``delivery_tag``: each message's own.
_OWN = {"reply_to", "argsrepr", "delivery_tag"}


def _both(name: str, args: list[Any], tid: str) -> tuple[Any, Any]:
    configure_app_without_broker()
    conn = Connection("memory://")
    try:
        conn.connect()
        publish_through_celery(appmod.app, [(name, args, tid)], connection=conn)
        taskmessages.publish(conn, [(name, args, tid)])
        queue = taskmessages.queue(ROUTES[name])(conn.default_channel)
        celery, ours = queue.get(no_ack=True), queue.get(no_ack=True)
        assert celery is not None and ours is not None and queue.get(no_ack=True) is None
        return celery, ours
    finally:
        conn.release()


@pytest.mark.parametrize("name", sorted(TASK_NAMES.values()))
def test_a_commands_message_is_celerys_message(name: str) -> None:
    spec = {"run_id": "copy-1", "kind": name.split(".")[1], "src_root": "/s", "dst_root": "/d"}
    args = [spec, "some/dir", None, ["a", "b"]]
    celery, ours = _both(name, args, "0f9d2b1c-task")
    assert ours.headers == celery.headers  # the task, its id, root, origin, argsrepr, ignore_result...
    assert ours.headers["task"] == name and ours.headers["id"] == "0f9d2b1c-task"
    assert {k: v for k, v in ours.properties.items() if k not in _OWN} == \
        {k: v for k, v in celery.properties.items() if k not in _OWN}
    assert ours.properties["correlation_id"] == "0f9d2b1c-task" and ours.properties["delivery_mode"] == 2
    assert ours.delivery_info == celery.delivery_info == {"exchange": "", "routing_key": ROUTES[name]}
    assert (ours.content_type, ours.content_encoding) == (celery.content_type, celery.content_encoding)
    assert ours.body == celery.body
    assert ours.decode() == [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_the_distributed_command_path_imports_no_celery() -> None:
    """Planning, checking the broker, seeding and waiting import kombu only (Celery is the workers' own)."""
    code = ("import sys, cmover.cli.main, cmover.ops.start, cmover.ops.status, cmover.ops.broker\n"
            "print(sorted(m for m in sys.modules if m == 'celery' or m.startswith('celery.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
