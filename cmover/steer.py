"""Steering a running pass: pause and resume its consumers, grow and shrink the worker pools.

Everything goes through Celery's remote control (the vhost's ``celery.pidbox`` broadcast), so each
operation has a classic ``celery -A cmover.app control ...`` equivalent (README, "Steering a running
pass"). What the classic commands cannot do is kept in memcached under ``cm:<USERNAME>:paused:<pass>``
(JSON, see :func:`_empty`):

* ``nodes``: the queues of the pass each paused worker consumed, so that :func:`resume` gives every
  worker back exactly the queues it had (a worker started with ``-Q cmover.copy.files`` never starts
  consuming ``cmover.copy.dirs``);
* ``all``: the pass is paused on every worker, so that a worker started (or restarted) during the pause
  leaves the pass's queues out before its consumer starts (:func:`_hold_paused_queues`);
* ``resumed``: workers resumed one by one (``--node``) while ``all`` holds;
* ``since``: when the pause began (Unix time).

Pausing cancels consumers and nothing else: tasks a worker already received run to their end, queued
messages stay on the broker, the ledger and the counters are untouched, so resuming goes on where the
pass stopped. Every read-modify-write of the record is a memcached ``gets``/``cas`` loop, because workers
starting up write it too.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.signals import celeryd_after_setup, worker_ready
from pymemcache.exceptions import MemcacheError

from cmover import app as appmod
from cmover.errors import ConfigError, FatalError
from cmover.passes import PassKind
from cmover.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a broadcast waits for replies. Replies come from the workers' main processes, which answer
#: while their pool processes copy; a worker silent this long is reported as "no answer".
REPLY_TIMEOUT = 1.5
#: memcached takes expiry times of 30 days and more as absolute Unix times: stay below.
_EXPIRE = 29 * 24 * 3600
_CAS_ATTEMPTS = 50
#: What a memcached call raises when the server is down, slow or holds garbage under the key.
_MC_ERRORS = (OSError, MemcacheError, ValueError)

State = dict[str, Any]


def _key(settings: Settings, kind: str) -> str:
    # Per site (USERNAME is the vhost): several migrations may share one memcached.
    return f"cm:{settings.username}:paused:{kind}"


def _empty() -> State:
    return {"all": False, "nodes": {}, "resumed": [], "since": 0.0}


def _kind(kind: str) -> str:
    try:
        return PassKind(kind).value
    except ValueError:
        raise ConfigError(f"unknown pass {kind!r}; use copy, delete or dirtime") from None


def _task_names(kind: str) -> set[str]:
    return {name for (k, _), name in appmod.TASK_NAMES.items() if k == kind}


def _paused_on(state: State | None, node: str) -> bool:
    """Whether ``state`` pauses the pass on worker ``node``."""
    if not state:
        return False
    return node in state["nodes"] or (bool(state["all"]) and node not in state["resumed"])


def _decode(raw: Any) -> State | None:
    if not raw:
        return None
    state = json.loads(raw)
    return {**_empty(), **state} if isinstance(state, dict) else None


def _gets(mc: Any, key: str) -> tuple[State | None, Any]:
    raw, token = mc.gets(key)
    return _decode(raw), token


def _store(mc: Any, key: str, state: State, token: Any) -> bool:
    """Write ``state`` if the record is still the one read with ``token`` (None: there was none)."""
    value = json.dumps(state, sort_keys=True)
    if token is None:
        return bool(mc.add(key, value, expire=_EXPIRE, noreply=False))
    return bool(mc.cas(key, value, token, expire=_EXPIRE, noreply=False))


def _update(mc: Any, key: str, change: Callable[[State | None], State | None]) -> State | None:
    """Apply ``change`` (current state -> new state, or None for "leave it") atomically; return the result.

    ``change`` may run several times (a concurrent writer made the ``cas`` fail) and must not act.
    """
    for _ in range(_CAS_ATTEMPTS):
        current, token = _gets(mc, key)
        new = change(copy.deepcopy(current))
        if new is None:
            return current
        if _store(mc, key, new, token):
            return new
    raise FatalError(f"the pause record {key} keeps changing under this command; try again")


def _memcached_down(settings: Settings, exc: Exception) -> FatalError:
    return FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it (memcached -M) or fix "
                      "MEMCACHED in config.py: a pause must be remembered to be resumed")


def _memcache(settings: Settings, key: str, change: Callable[[State | None], State | None]) -> State | None:
    try:
        return _update(appmod.memcache_client(settings), key, change)
    except _MC_ERRORS as exc:
        raise _memcached_down(settings, exc) from None


def is_paused(settings: Settings, kind: str) -> bool:
    """True while ``cmover pause KIND`` (every worker) is in effect and no worker was resumed on its own.

    A pause of single workers (``--node``) leaves the pass running elsewhere: False. Never raises:
    False when memcached cannot be read.
    """
    try:
        state = _decode(appmod.memcache_client(settings).get(_key(settings, kind)))
    except Exception:
        return False
    return bool(state and state["all"] and not state["resumed"])


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
    key = _key(settings, kind)
    consuming = _consumers(kind)
    report = PauseReport(kind, None)
    if node is not None:
        node = resolve_node(node, set(consuming))
        report.node = node
    seen = set(consuming)

    def mark(cur: State | None) -> State:
        state = cur or _empty()
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
    key = _key(settings, kind)
    report = ResumeReport(kind, None)
    sent: dict[str, list[str]] = {}
    answered: set[str] = set()
    silent: set[str] = set()
    try:
        mc = appmod.memcache_client(settings)
        state, token = _gets(mc, key)
        if node is not None:
            # A recorded worker may be stopped: naming it still clears its record.
            node = resolve_node(node, set(_ping()) | set((state or _empty())["nodes"]))
            report.node = node
        for _ in range(_CAS_ATTEMPTS):
            if state is None:
                break
            if node is None:
                report.was_paused = report.was_paused or state["all"] or bool(state["nodes"])
            else:
                report.was_paused = report.was_paused or _paused_on(state, node)
            targets = {n: qs for n, qs in state["nodes"].items()
                       if (node is None or n == node) and qs and sent.get(n) != qs}
            # Consumers are added before the record changes: if this command dies in between, the record
            # still names every paused worker and another resume finishes the job.
            ok, no_reply = _per_queue("add_consumer", targets, queues)
            answered, silent = (answered | ok) - no_reply, (silent - ok) | no_reply
            sent.update(targets)
            new = copy.deepcopy(state)
            if node is None:
                new.update(_empty())
            else:
                new["nodes"].pop(node, None)
                if new["all"] and node not in new["resumed"]:
                    new["resumed"].append(node)
            if new == state or _store(mc, key, new, token):
                break
            state, token = _gets(mc, key)  # a worker starting up recorded itself meanwhile
        else:
            raise FatalError(f"the pause record {key} keeps changing under this command; try again")
    except _MC_ERRORS as exc:
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


# -- worker side: a worker started during a pause -------------------------------------------------------

#: Queues this worker process left out at start because their pass was paused (worker main process only).
_held: list[str] = []


@celeryd_after_setup.connect
def _hold_paused_queues(sender: str, instance: Any, **_: Any) -> None:
    """Before the consumer starts: leave out the queues of passes paused on this worker, and record them.

    Runs in ``celery worker`` only (not in the embedded runner). memcached unreachable: logged once, every
    queue is consumed.
    """
    if appmod._embedded:
        return
    queues = instance.app.amqp.queues
    consumed = set(queues.consume_from)
    held: list[str] = []
    try:
        settings = appmod.settings()
        mc = appmod.memcache_client(settings)
        for kind in PassKind:
            mine = [q for q in appmod.pass_queues(kind.value) if q in consumed]
            if not mine:
                continue

            def hold(cur: State | None, mine: list[str] = mine) -> State | None:
                if not _paused_on(cur, sender):
                    return None
                assert cur is not None
                # This start decides what the worker consumes: its record replaces an earlier run's.
                cur["nodes"][sender] = mine
                return cur

            if _paused_on(_update(mc, _key(settings, kind.value), hold), sender):
                held += mine
                log.warning("the %s pass is paused: not consuming %s until `cmover resume %s`",
                            kind.value, ", ".join(mine), kind.value)
    except Exception as exc:
        log.warning("cannot read the pause records in memcached (%s): consuming every queue given with -Q", exc)
        return
    for q in held:
        queues.deselect(q)
    _held[:] = held


@worker_ready.connect
def _release_if_resumed(sender: Any, **_: Any) -> None:
    """Once the worker listens to remote control: take back held queues of a pass resumed meanwhile.

    A resume that ran while this worker started may have broadcast before the worker listened.
    """
    if not _held:
        return
    node = sender.hostname
    try:
        settings = appmod.settings()
        mc = appmod.memcache_client(settings)
        for kind in PassKind:
            mine = [q for q in appmod.pass_queues(kind.value) if q in _held]
            if mine and not _paused_on(_decode(mc.get(_key(settings, kind.value))), node):
                for q in mine:
                    sender.call_soon(sender.add_task_queue, q)
                log.warning("the %s pass was resumed: consuming %s", kind.value, ", ".join(mine))
    except Exception as exc:
        log.warning("cannot read the pause records in memcached (%s): still not consuming %s; "
                    "`cmover resume` gives them back", exc, ", ".join(_held))


__all__ = ["pause", "resume", "is_paused", "wait_idle", "pool_grow", "pool_shrink", "PauseReport",
           "ResumeReport", "NodeAnswer"]
