"""Steering a running pass: pause and resume its consumers, grow and shrink the worker pools.

Everything goes through Celery's remote control (the vhost's ``celery.pidbox`` broadcast), so each
operation has a classic ``celery -A cmover.app control ...`` equivalent (README, "Steering a running
pass"). What the classic commands cannot do is kept in the pass's pause record in memcached
(:mod:`cmover.state.pauses`): the queues each paused worker consumed, and whether the pass is paused on
every worker, which a worker starting during the pause reads (:mod:`cmover.worker.hooks`).

Pausing cancels consumers and nothing else: tasks a worker already received run to their end, queued
messages stay on the broker, the ledger and the counters are untouched, so resuming goes on where the
pass stopped.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmover import app as appmod
from cmover.core.errors import ConfigError, FatalError
from cmover.core.passes import PassKind
from cmover.core.settings import Settings
from cmover.state import keys, pauses
from cmover.state.pauses import State, is_paused

log = logging.getLogger(__name__)

#: Seconds a broadcast waits for replies. Replies come from the workers' main processes, which answer
#: while their pool processes copy; a worker silent this long is reported as "no answer".
REPLY_TIMEOUT = 1.5


def _kind(kind: str) -> str:
    try:
        return PassKind(kind).value
    except ValueError:
        raise ConfigError(f"unknown pass {kind!r}; use copy, delete or dirtime") from None


def _task_names(kind: str) -> set[str]:
    return {name for (k, _), name in appmod.TASK_NAMES.items() if k == kind}


def _memcached_down(settings: Settings, exc: Exception) -> FatalError:
    return FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) or fix "
                      "MEMCACHED in config.py: a pause must be remembered to be resumed")


def _memcache(settings: Settings, key: str, change: Callable[[State | None], State | None]) -> State | None:
    try:
        return pauses.update(keys.memcache_client(settings), key, change)
    except pauses.MC_ERRORS as exc:
        raise _memcached_down(settings, exc) from None


# -- remote control -----------------------------------------------------------------------------------


def _replies(answers: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Celery's list of ``{node: reply}`` as one mapping."""
    merged: dict[str, Any] = {}
    for answer in answers or []:
        merged.update(answer)
    return merged


def _broker(call: Callable[[], Any]) -> Any:
    """Run a remote-control call; a broker that cannot be reached is a one-line FatalError."""
    try:
        return call()
    except (OSError, ConnectionError) as exc:
        raise FatalError(f"cannot reach the broker ({exc}); start RabbitMQ or fix rabbitmq/rabbitmq.conf") from None
    except Exception as exc:
        from kombu.exceptions import OperationalError

        if isinstance(exc, OperationalError):
            raise FatalError(f"cannot reach the broker ({exc}); start RabbitMQ or fix rabbitmq/rabbitmq.conf") \
                from None
        raise


def _consumers(kind: str, destination: list[str] | None = None) -> dict[str, list[str]]:
    """Every worker that answered -> the queues of pass ``kind`` it consumes now (possibly none)."""
    queues = appmod.pass_queues(kind)
    inspect = appmod.app.control.inspect(timeout=REPLY_TIMEOUT, destination=destination)
    answered = _broker(inspect.active_queues) or {}
    return {node: [q for q in queues if any(d.get("name") == q for d in (consumed or []))]
            for node, consumed in answered.items()}


def _ping(destination: list[str] | None = None) -> list[str]:
    return sorted(_replies(_broker(lambda: appmod.app.control.ping(timeout=REPLY_TIMEOUT,
                                                                   destination=destination))))


def resolve_node(node: str, known: list[str] | set[str]) -> str:
    """``node`` as a full worker name: given exactly, or the part before ``@`` when that is unique."""
    if node in known:
        return node
    matches = [k for k in known if k.split("@", 1)[0] == node]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(sorted(known)) or "none"
    if matches:
        raise ConfigError(f"{node!r} names several workers ({', '.join(sorted(matches))}); give the full name")
    raise ConfigError(f"no worker named {node!r} answered (workers: {listed})")


def _broadcast(command: str, nodes: list[str], **arguments: Any) -> dict[str, Any]:
    """Send ``command`` to ``nodes`` and return the replies by node (silent nodes are missing)."""
    if not nodes:
        return {}
    return _replies(_broker(lambda: appmod.app.control.broadcast(
        command, arguments=arguments, destination=nodes, reply=True, timeout=REPLY_TIMEOUT)))


def _per_queue(command: str, targets: dict[str, list[str]], queues: list[str]) -> tuple[set[str], set[str]]:
    """``command`` (add_consumer/cancel_consumer) for each queue to the targets holding it: (answered, silent)."""
    answered: set[str] = set()
    silent: set[str] = set()
    for q in queues:
        nodes = sorted(n for n, qs in targets.items() if q in qs)
        replies = _broadcast(command, nodes, queue=q)
        answered |= {n for n in nodes if n in replies}
        silent |= {n for n in nodes if n not in replies}
    return answered - silent, silent


# -- pause and resume ---------------------------------------------------------------------------------


@dataclass
class PauseReport:
    kind: str
    node: str | None  # the one worker asked for; None: every worker
    paused: dict[str, list[str]] = field(default_factory=dict)  # worker -> its queues of the pass now cancelled
    silent: list[str] = field(default_factory=list)  # consumed the pass but did not confirm the cancel
    workers: list[str] = field(default_factory=list)  # the workers in scope that answered (for wait_idle)


@dataclass
class ResumeReport:
    kind: str
    node: str | None
    was_paused: bool = False
    resumed: dict[str, list[str]] = field(default_factory=dict)  # worker -> queues given back
    silent: list[str] = field(default_factory=list)  # paused workers that did not answer (stopped?)


def pause(settings: Settings, kind: str, node: str | None = None) -> PauseReport:
    """Stop the workers (all, or ``node``) from taking new tasks of pass ``kind``; remember it for resume.

    Tasks already received run to their end (:func:`wait_idle` waits for them). With no ``node``, workers
    that start while the pause lasts do not consume the pass either, and a pause with no worker running
    is remembered the same way. Raises ConfigError for an unknown pass or ``node``, FatalError when the
    broker or memcached cannot be reached (then no worker was touched).
    """
    kind = _kind(kind)
    queues = appmod.pass_queues(kind)
    key = pauses.record_key(settings, kind)
    consuming = _consumers(kind)
    report = PauseReport(kind, None)
    if node is not None:
        node = resolve_node(node, set(consuming))
        report.node = node
    seen = set(consuming)

    def mark(cur: State | None) -> State:
        state = cur or pauses.empty()
        if node is None:
            state["all"], state["resumed"] = True, []
        else:
            state["nodes"].setdefault(node, [])
            state["resumed"] = [n for n in state["resumed"] if n != node]
        state["since"] = state["since"] or time.time()
        return state

    # Marked first: a worker starting from now on leaves the pass's queues out by itself.
    _memcache(settings, key, mark)
    silent: set[str] = set()
    for _ in range(2):  # the second round catches a worker that started consuming before the mark
        targets = {n: qs for n, qs in consuming.items() if qs and (node is None or n == node)}
        if not targets:
            break

        def record(cur: State | None, targets: dict[str, list[str]] = targets) -> State:
            state = mark(cur)
            for n, qs in targets.items():
                state["nodes"][n] = [q for q in queues if q in qs or q in state["nodes"].get(n, [])]
            return state

        # Recorded before the cancel: resume must give these queues back even if this command dies now.
        _memcache(settings, key, record)
        answered, no_reply = _per_queue("cancel_consumer", targets, queues)
        for n in answered:
            report.paused[n] = sorted(set(report.paused.get(n, [])) | set(targets[n]), key=queues.index)
        silent |= no_reply
        consuming = _consumers(kind, [node] if node else None)
        seen |= set(consuming)
    report.silent = sorted(silent - set(report.paused))
    report.workers = [node] if node else sorted(seen)
    return report


def resume(settings: Settings, kind: str, node: str | None = None) -> ResumeReport:
    """Give paused workers (all, or ``node``) back the queues of pass ``kind`` they consumed; forget the pause.

    A paused worker that does not answer (stopped) is forgotten too: it consumes the pass when it starts
    again. Resuming a pass that is not paused changes nothing (``was_paused`` False). Raises ConfigError for
    an unknown pass or ``node``, FatalError when the broker or memcached cannot be reached.
    """
    kind = _kind(kind)
    queues = appmod.pass_queues(kind)
    key = pauses.record_key(settings, kind)
    report = ResumeReport(kind, None)
    sent: dict[str, list[str]] = {}
    answered: set[str] = set()
    silent: set[str] = set()
    try:
        mc = keys.memcache_client(settings)
        state, token = pauses.gets(mc, key)
        if node is not None:
            # A recorded worker may be stopped: naming it still clears its record.
            node = resolve_node(node, set(_ping()) | set((state or pauses.empty())["nodes"]))
            report.node = node
        for _ in range(pauses.CAS_ATTEMPTS):
            if state is None:
                break
            if node is None:
                report.was_paused = report.was_paused or state["all"] or bool(state["nodes"])
            else:
                report.was_paused = report.was_paused or pauses.paused_on(state, node)
            targets = {n: qs for n, qs in state["nodes"].items()
                       if (node is None or n == node) and qs and sent.get(n) != qs}
            # Consumers are added before the record changes: if this command dies in between, the record
            # still names every paused worker and another resume finishes the job.
            ok, no_reply = _per_queue("add_consumer", targets, queues)
            answered, silent = (answered | ok) - no_reply, (silent - ok) | no_reply
            sent.update(targets)
            new = copy.deepcopy(state)
            if node is None:
                new.update(pauses.empty())
            else:
                new["nodes"].pop(node, None)
                if new["all"] and node not in new["resumed"]:
                    new["resumed"].append(node)
            if new == state or pauses.store(mc, key, new, token):
                break
            state, token = pauses.gets(mc, key)  # a worker starting up recorded itself meanwhile
        else:
            raise FatalError(f"the pause record {key} keeps changing under this command; try again")
    except pauses.MC_ERRORS as exc:
        raise _memcached_down(settings, exc) from None
    # A worker starting up while the consumers were added may have missed the broadcast (its control
    # queue did not exist yet) and read the old record: ask the silent ones once more, now that the record
    # says resumed. A worker that reads the record after this takes its queues back by itself.
    if silent:
        ok, silent = _per_queue("add_consumer", {n: sent[n] for n in silent}, queues)
        answered |= ok
    report.resumed = {n: sent[n] for n in sorted(answered)}
    report.silent = sorted(silent - answered)
    return report


def wait_idle(kind: str, nodes: list[str] | None = None, timeout: float = 60.0, poll: float = 0.5) -> int:
    """Wait until no task of pass ``kind`` runs or waits in the workers ``nodes`` (None: every worker that
    answers); return how many still do.

    Counts what the workers hold (``inspect active`` and ``reserved``): the tasks a pause lets finish.
    Naming the workers (:attr:`PauseReport.workers`) saves waiting out the reply timeout at each look.
    """
    names = _task_names(_kind(kind))
    if nodes is not None and not nodes:
        return 0
    deadline = time.monotonic() + timeout
    while True:
        inspect = appmod.app.control.inspect(timeout=REPLY_TIMEOUT, destination=nodes)
        held = 0
        for query in (inspect.active, inspect.reserved):
            for tasks in (_broker(query) or {}).values():
                held += sum(1 for t in tasks or [] if t.get("name") in names)
        if held == 0 or time.monotonic() >= deadline:
            return held
        time.sleep(poll)


# -- pool size ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeAnswer:
    node: str
    ok: bool
    message: str


def pool_grow(n: int, node: str | None = None) -> list[NodeAnswer]:
    """Add ``n`` pool processes to every worker (or ``node``); what each worker answered."""
    return _resize("pool_grow", n, node)


def pool_shrink(n: int, node: str | None = None) -> list[NodeAnswer]:
    """Take ``n`` idle pool processes from every worker (or ``node``); a worker keeps at least one.

    The check counts the processes a worker reports (``inspect stats``): best effort, since a grown pool
    starts its new processes within about 5 s and a shrunk one lets them exit when they are done.
    """
    return _resize("pool_shrink", n, node)


def _resize(command: str, n: int, node: str | None) -> list[NodeAnswer]:
    if n <= 0:
        raise ConfigError(f"N must be a positive number of pool processes, got {n}")
    workers = _ping()
    if not workers:
        raise ConfigError("no worker answered on the broker; start workers (scripts/workers.sh PASS start)")
    nodes = [resolve_node(node, workers)] if node is not None else workers
    answers: list[NodeAnswer] = []
    if command == "pool_shrink":
        # A prefork pool shrunk to no process takes no task and never grows back by itself.
        stats = _broker(appmod.app.control.inspect(timeout=REPLY_TIMEOUT, destination=nodes).stats) or {}
        for w in list(nodes):
            size = len(((stats.get(w) or {}).get("pool") or {}).get("processes") or [])
            if size - n < 1:
                answers.append(NodeAnswer(w, False, f"has {size} pool process(es); shrinking by {n} would leave none"))
                nodes.remove(w)
    replies = _replies(_broker(lambda: getattr(appmod.app.control, command)(
        n, destination=nodes, reply=True, timeout=REPLY_TIMEOUT))) if nodes else {}
    for w in nodes:
        reply = replies.get(w)
        if reply is None:
            answers.append(NodeAnswer(w, False, "no answer"))
        elif "ok" in reply:
            answers.append(NodeAnswer(w, True, str(reply["ok"])))
        else:
            answers.append(NodeAnswer(w, False, str(reply.get("error", reply))))
    return sorted(answers, key=lambda a: a.node)


__all__ = ["pause", "resume", "is_paused", "wait_idle", "pool_grow", "pool_shrink", "PauseReport",
           "ResumeReport", "NodeAnswer"]
