"""The pause record of a pass: what `cmover pause` remembers in memcached for `resume` and for workers.

Kept under ``cm:<USERNAME>:paused:<pass>`` (:func:`cmover.state.keys.paused`) as JSON (see :func:`empty`):

* ``nodes``: the queues of the pass each paused worker consumed, so that resume gives every worker back
  exactly the queues it had (a worker started with ``-Q cmover.copy.files`` never starts consuming
  ``cmover.copy.dirs``);
* ``all``: the pass is paused on every worker, so that a worker started (or restarted) during the pause
  leaves the pass's queues out before its consumer starts;
* ``resumed``: workers resumed one by one (``--node``) while ``all`` holds;
* ``since``: when the pause began (Unix time).

Every read-modify-write of the record is a memcached ``gets``/``cas`` loop (:func:`update`), because the
operator's commands and workers starting up write it concurrently.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from pymemcache.exceptions import MemcacheError

from cmover.core.errors import FatalError
from cmover.core.settings import Settings
from cmover.state import keys

#: Tries of a ``gets``/``cas`` round before giving up on a record that keeps changing.
CAS_ATTEMPTS = 50
#: What a memcached call raises when the server is down, slow or holds garbage under the key.
MC_ERRORS = (OSError, MemcacheError, ValueError)

State = dict[str, Any]


def record_key(settings: Settings, kind: str) -> str:
    """The key of pass ``kind``'s pause record for the site of ``settings``."""
    return keys.paused(settings.username, kind)


def empty() -> State:
    return {"all": False, "nodes": {}, "resumed": [], "since": 0.0}


def paused_on(state: State | None, node: str) -> bool:
    """Whether ``state`` pauses the pass on worker ``node``."""
    if not state:
        return False
    return node in state["nodes"] or (bool(state["all"]) and node not in state["resumed"])


def decode(raw: Any) -> State | None:
    """The record stored as ``raw`` (None: no record). Raises ValueError for malformed JSON."""
    if not raw:
        return None
    state = json.loads(raw)
    return {**empty(), **state} if isinstance(state, dict) else None


def gets(mc: Any, key: str) -> tuple[State | None, Any]:
    """The record under ``key`` and its ``cas`` token."""
    raw, token = mc.gets(key)
    return decode(raw), token


def store(mc: Any, key: str, state: State, token: Any) -> bool:
    """Write ``state`` if the record is still the one read with ``token`` (None: there was none)."""
    value = json.dumps(state, sort_keys=True)
    if token is None:
        return bool(mc.add(key, value, expire=keys.TTL, noreply=False))
    return bool(mc.cas(key, value, token, expire=keys.TTL, noreply=False))


def update(mc: Any, key: str, change: Callable[[State | None], State | None]) -> State | None:
    """Apply ``change`` (current state -> new state, or None for "leave it") atomically; return the result.

    ``change`` may run several times (a concurrent writer made the ``cas`` fail) and must not act.
    Raises FatalError when the record keeps changing, and what memcached raises (:data:`MC_ERRORS`).
    """
    for _ in range(CAS_ATTEMPTS):
        current, token = gets(mc, key)
        new = change(copy.deepcopy(current))
        if new is None:
            return current
        if store(mc, key, new, token):
            return new
    raise FatalError(f"the pause record {key} keeps changing under this command; try again")


def read(settings: Settings, kind: str) -> State | None:
    """Pass ``kind``'s record now (None: no pause). Raises what memcached raises (:data:`MC_ERRORS`)."""
    return decode(keys.memcache_client(settings).get(record_key(settings, kind)))


def is_paused(settings: Settings, kind: str) -> bool:
    """True while ``cmover pause KIND`` (every worker) is in effect and no worker was resumed on its own.

    A pause of single workers (``--node``) leaves the pass running elsewhere: False. Never raises:
    False when memcached cannot be read.
    """
    try:
        state = read(settings, kind)
    except Exception:
        return False
    return bool(state and state["all"] and not state["resumed"])
