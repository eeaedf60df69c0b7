"""Which processes of one machine's pool wait for work: one byte per process, in memory they share.

The embedded pool (:mod:`cmover.embedded.pool`) and a distributed worker's pool processes
(:mod:`cmover.worker.hooks`) each make one board before they fork. A process sets its byte while it waits
for a task and clears it when it has one. A task deciding whether to walk a subdirectory inline asks
:meth:`IdleBoard.claim` first (:func:`cmover.engine.walker.share_with`): when a byte is set, the task clears it
and hands a subdirectory out as a job, which the waiting process takes. So a big subtree found by one task
spreads over the processes that have nothing to do as soon as they have nothing to do, instead of after the
task's inline budget (10,000 entries walked alone by default). A distributed worker sees only its own
processes; the job it hands out goes to the broker, where any worker may take it.

Advisory only, hence no lock: a byte read a moment late hands out one job too many or walks one subdirectory
more inline, and either is copied the same way. A process whose byte was claimed for a job another process
took waits unseen until it sets the byte again (its next wait in the embedded hub, after
:data:`~cmover.embedded.hub.CONSUMER_WAIT`; its next task in a worker).
"""

from __future__ import annotations

import mmap


class IdleBoard:
    """``size`` bytes (one per pool slot) of anonymous shared memory, made before the pool forks: every forked
    process reads and writes the same bytes. Slot ``i`` is 1 while the process in it waits for a task."""

    __slots__ = ("size", "_map")

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, max(size, 1))  # MAP_SHARED | MAP_ANONYMOUS: shared across fork

    def waiting(self, slot: int) -> None:
        """The process in ``slot`` waits for a message."""
        self._map[slot] = 1

    def busy(self, slot: int) -> None:
        """The process in ``slot`` has a message (or is not there: a new one, or one that died)."""
        self._map[slot] = 0

    def claim(self) -> bool:
        """True when a process waits; its byte is then cleared, for the one job the caller hands out to it."""
        found = self._map.find(b"\x01")
        if found < 0:
            return False
        self._map[found] = 0
        return True

    def anyone_waits(self) -> bool:
        """Whether a process waits now; its byte stays set (see :meth:`claim`)."""
        return self._map.find(b"\x01") >= 0

    def waiting_count(self) -> int:
        """How many processes wait now (for tests and diagnostics)."""
        return self._map[:].count(1)
