"""The Celery application: task names, queues, routing, serializer and broker settings.

One app serves both deployments. Distributed workers (``celery -A cmover.app worker``, see
scripts/run.sh) get the broker URL from the site settings (:func:`settings`) when Celery first reads its
configuration; the embedded mode (:mod:`cmover.embedded.runner`) runs the same task bodies without Celery
(:mod:`cmover.embedded.pool`). Importing this module opens nothing. What a task needs besides
its message comes from :mod:`cmover.worker.context`; the workers' signal handlers live in
:mod:`cmover.worker.hooks`, which every worker imports at start (it is in the app's ``include``).

Broker settings follow design §7: JSON only (never pickle: it would let anyone who can publish to the
vhost run code in every worker), durable queues, persistent messages, publisher confirms, late acks
with prefetch 1, redelivery when a worker process dies, one queue per pass and kind.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from cmover.core import site
from cmover.core.errors import ConfigError
from cmover.core.settings import Settings
from cmover.core.tasknames import ROUTES, TASK_NAMES, pass_queues, queue_name

log = logging.getLogger(__name__)


def queue(name: str) -> Queue:
    """Queue ``name`` as every cmover process declares it: durable, bound to a durable direct exchange of the
    same name with its name as routing key (a command declares the same with py-amqp:
    :func:`cmover.state.taskmessages.declare`)."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)

# No fix-ups: Celery's only built-in one adapts a worker to Django when DJANGO_SETTINGS_MODULE is set, which a
# mover node's environment must not decide, and importing it brought Celery's worker modules into every command.
app = Celery("cmover", include=["cmover.tasks_copy", "cmover.tasks_delete", "cmover.tasks_dirtime",
                               "cmover.tasks_verify", "cmover.worker.hooks"], fixups=[])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_accept_content=["json"],
    event_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,  # a killed pool child's message is redelivered, not lost
    task_acks_on_failure_or_timeout=True,
    worker_prefetch_multiplier=1,  # nothing waits unacked behind a long copy
    # A channel the broker closed (consumer_timeout under a task longer than it, design §6) is reconnected
    # like a lost connection instead of shutting the worker down. The running task is left to finish: its
    # message is requeued and may run again meanwhile elsewhere, which tasks are built to bear (a file is
    # replaced by rename, a chunk rewritten with the same bytes, the ledger counts the task done once).
    # Cancelling it instead would cancel a task longer than the timeout at every delivery, for ever.
    broker_channel_error_retry=True,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    task_default_delivery_mode="persistent",
    task_queues=[queue(q) for kind in ("copy", "delete", "dirtime", "verify") for q in pass_queues(kind)],
    task_routes={name: {"queue": q} for name, q in ROUTES.items()},
    task_default_queue="cmover.default",
    task_create_missing_queues=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"confirm_publish": True},
    worker_send_task_events=False,
    worker_enable_remote_control=True,
)

#: The broker this process uses instead of the site's (use_broker), or None: the site's.
_broker_override: str | None = None


@app.on_configure.connect
def _configure_broker(sender: Celery, **_: Any) -> None:
    """Fill in the broker URL when Celery first reads its configuration: the site's, unless overridden."""
    if _broker_override is not None:
        sender.conf.broker_url = _broker_override
        return
    try:
        sender.conf.broker_url = settings().broker_url()
    except ConfigError as exc:
        # A worker started with a broken config must say why in one line, not with a traceback.
        print(f"cmover: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def use_broker(url: str) -> None:
    """Make this process's app use the broker at ``url`` instead of the site's (tests).

    Effective whether or not the app has read its configuration yet; the site settings are not read for
    the broker from then on.
    """
    global _broker_override
    _broker_override = url
    app.conf.broker_url = url  # reading app.conf configures the app first: _configure_broker uses the override


# -- the site ------------------------------------------------------------------------------------------


def install_settings(s: Settings) -> None:
    """Use ``s`` (e.g. loaded from ``--config``) as this process's site settings, broker URL included
    (:func:`cmover.core.site.install`)."""
    site.install(s)


def settings() -> Settings:
    """This process's site settings: those installed, else loaded (config.py) on first use."""
    return site.get()


__all__ = ["app", "TASK_NAMES", "queue_name", "pass_queues", "settings", "install_settings", "use_broker"]
