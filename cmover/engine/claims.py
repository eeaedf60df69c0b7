"""What the engine needs from the run's shared state: first-writer-wins claims and counters.

The engine never talks to memcached or the embedded hub itself. It is given a :class:`Claims` object,
normally a :class:`RunClaims` that binds whatever ledger the worker uses (anything with the run-keyed
``claim``/``claimed``/``incr`` of :class:`RunLedger`, e.g. the completion ledgers of
:mod:`cmover.state.ledger`) to one run id. Tests may pass any object with the three methods.

Who uses what:

* hard-link groups elect the name that copies the data with ``claim`` (:mod:`cmover.engine.hardlinks`);
* chunked copies mark chunks done with ``claim`` and count them with ``claimed`` (:mod:`cmover.engine.chunks`);
* the delete pass shares its ``--max-delete`` budget between tasks with ``incr`` (:mod:`cmover.engine.deletepass`).
"""

from __future__ import annotations

from typing import Protocol


class Claims(Protocol):
    """A run's first-writer-wins claims and counters, shared by every task of the run."""

    def claim(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there already; return the stored value."""
        ...

    def claimed(self, keys: list[str]) -> int:
        """How many of ``keys`` hold a claim."""
        ...

    def incr(self, key: str, n: int = 1) -> int:
        """Add ``n`` (may be negative or 0) to counter ``key`` (created at 0); return the new value."""
        ...


class RunLedger(Protocol):
    """The run-keyed calls :class:`RunClaims` makes (a subset of the completion ledger's protocol)."""

    def claim(self, run_id: str, key: str, value: str) -> str: ...

    def claimed(self, run_id: str, keys: list[str]) -> int: ...

    def incr(self, run_id: str, key: str, n: int) -> int: ...


class RunClaims:
    """:class:`Claims` of run ``run_id`` kept in ``ledger``."""

    __slots__ = ("ledger", "run_id")

    def __init__(self, ledger: RunLedger, run_id: str) -> None:
        self.ledger = ledger
        self.run_id = run_id

    def claim(self, key: str, value: str) -> str:
        return str(self.ledger.claim(self.run_id, key, value))

    def claimed(self, keys: list[str]) -> int:
        return int(self.ledger.claimed(self.run_id, keys))

    def incr(self, key: str, n: int = 1) -> int:
        return int(self.ledger.incr(self.run_id, key, n))
