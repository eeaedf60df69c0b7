"""The worker context: what a task needs besides its message, and the one factory tasks get it from.

A :class:`WorkerContext` holds a process's completion ledger, counters sink and error sink, and the
worker's confinement roots. :data:`contexts` builds it once per process, on first use (pool processes
build their own after fork: clients and sockets are never shared across a fork). What it builds is
chosen explicitly by the process's entry point:

* a distributed worker (``celery -A cmover.app worker``): the default, :func:`distributed_context`, from
  the site settings of :func:`cmover.app.settings` (memcached ledger and counters, broker error list);
* the embedded runner: :meth:`ContextFactory.building` with a builder of hub-backed state;
* tests: :meth:`ContextFactory.building` with a builder returning their own context.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cmover.core.errors import ConfinementError
from cmover.core.hsmrecord import HsmRecord
from cmover.core.origin import pid
from cmover.core.passes import PassSpec
from cmover.core.paths import is_within
from cmover.core.privileges import current
from cmover.core.settings import Settings
from cmover.lustre import FsApi, get_fs, get_hsm
from cmover.state import keys
from cmover.state.errorlist import BrokerErrors, ErrorSink
from cmover.state.hsmlist import BrokerHsm, HsmSink
from cmover.state.ledger import Ledger, MemcacheLedger
from cmover.state.runstats import MemcacheStats
from cmover.state.stats import BatchedStats, NullStats, StatsSink

if TYPE_CHECKING:  # imported when a Lustre source has the HSM functions: not every task's cost
    from cmover.engine.hsmcopy import HsmCopier
    from cmover.lustre.hsm import Hsm


class WorkerContext:
    """What a task needs besides its message: built once per process (after fork), passed to the engine.

    ``ledger``, ``stats``, ``errors``: the process's completion ledger, counters sink and error sink;
    ``lustreapi``: the liblustreapi to load; ``hsm``: where copy runs keep their HSM lists; ``src_mount`` and
    ``dst_mount``: the confinement roots (:meth:`check_spec`); ``pid``: the process the context was built in
    (default: this one; :class:`ContextFactory` builds a new context in a process of another pid).
    """

    __slots__ = ("ledger", "stats", "errors", "lustreapi", "hsm", "src_mount", "dst_mount", "pid")

    def __init__(self, ledger: Ledger, stats: StatsSink, errors: ErrorSink, lustreapi: str = "",
                 hsm: HsmSink | None = None, src_mount: bytes | None = None, dst_mount: bytes | None = None,
                 pid: int | None = None) -> None:
        self.ledger = ledger
        self.stats = stats
        self.errors = errors
        self.lustreapi = lustreapi  # config LUSTREAPI: the liblustreapi to load ("" = the system's)
        self.hsm = hsm  # where copy runs keep their HSM lists; None: with the error lists (tests)
        self.src_mount = src_mount  # confinement roots; None in the embedded mode (spec built in-process)
        self.dst_mount = dst_mount
        self.pid = os.getpid() if pid is None else pid

    def fs_for(self, spec: PassSpec, tally: Counter[str]) -> FsApi:
        """How one task of pass ``spec`` creates target entries (Lustre layouts or plain POSIX)."""
        return get_fs(spec.src_root, spec.dst_root, spec.layout, spec.restripe, tally, self.lustreapi)

    def hsm_for(self, spec: PassSpec, fs: FsApi, tally: Counter[str],
                record: Callable[[HsmRecord], None]) -> HsmCopier | None:
        """The HSM side of one copy task: None unless the source is Lustre with the HSM functions."""
        got = get_hsm(spec.src_root, spec.dst_root, self.lustreapi)
        if got is None:
            return None
        from cmover.engine.hsmcopy import HsmCopier

        return HsmCopier(got[0], fs, spec.hsm, tally, record, current(), target_lustre=got[1], idmap=spec.idmap)

    def hsm_lib(self, spec: PassSpec) -> Hsm | None:
        """The HSM functions for a verify task: None unless the source is Lustre with them."""
        got = get_hsm(spec.src_root, spec.dst_root, self.lustreapi)
        return got[0] if got is not None else None

    def check_spec(self, spec: PassSpec) -> None:
        """Refuse a message whose pass roots lie outside this worker's configured mounts."""
        if self.src_mount is None or self.dst_mount is None:
            return
        if not is_within(spec.src_root, self.src_mount) or not is_within(spec.dst_root, self.dst_mount):
            raise ConfinementError(
                f"pass roots {spec.src_root!r} -> {spec.dst_root!r} are outside the configured "
                f"source_mount/target_mount {self.src_mount!r} -> {self.dst_mount!r}"
            )
        if is_within(spec.dst_root, spec.src_root) or is_within(spec.src_root, spec.dst_root):
            raise ConfinementError("pass source and target roots overlap")


def distributed_context(settings: Settings | None = None) -> WorkerContext:
    """A distributed worker's context: ledger and counters in memcached, failures on the broker.

    ``settings``: the site (default: the one the Celery app is configured for, :func:`cmover.app.settings`).
    """
    from cmover import app as appmod  # the Celery app: a distributed worker has it; an embedded run needs none

    s = settings or appmod.settings()
    # Every entry cmover creates gets an explicit mode; a umask would only distort mkdir/mknod.
    os.umask(0)
    return WorkerContext(
        ledger=MemcacheLedger(lambda: keys.memcache_client(s)),
        stats=(BatchedStats(MemcacheStats(lambda: keys.memcache_client(s)), s.report_interval)
               if s.stats_enabled else NullStats()),
        errors=BrokerErrors(appmod.app),
        lustreapi=s.lustreapi,
        hsm=BrokerHsm(BrokerErrors(appmod.app)),
        src_mount=os.fsencode(s.source_mount),
        dst_mount=os.fsencode(s.target_mount),
    )


Builder = Callable[[], WorkerContext]


class ContextFactory:
    """Where tasks get their :class:`WorkerContext`: one per process, built by the installed builder.

    Thread-safe; a forked child builds its own on first use (the parent's lock and context are not
    inherited).
    """

    def __init__(self, default: Builder) -> None:
        self._default = default
        self._build = default
        self._ctx: WorkerContext | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A pool child must not inherit a lock another thread of its parent held at fork time.
        self._lock = threading.Lock()

    def get(self) -> WorkerContext:
        """This process's context, built on first use in each process."""
        with self._lock:
            if self._ctx is None or self._ctx.pid != pid():
                self._ctx = self._build()
                self._ctx.pid = pid()
            return self._ctx

    def current(self) -> WorkerContext | None:
        """This process's context if it has been built (nothing is built here)."""
        ctx = self._ctx
        return ctx if ctx is not None and ctx.pid == pid() else None

    @contextmanager
    def building(self, build: Builder) -> Iterator[None]:
        """Within the block, this process (and children it forks) get contexts from ``build``.

        The context built before is dropped on entry and on exit, so nothing built by one builder is
        handed out under another.
        """
        with self._lock:
            previous, self._build, self._ctx = self._build, build, None
        try:
            yield
        finally:
            with self._lock:
                self._build, self._ctx = previous, None


#: The process's context factory (default: a distributed worker's context).
contexts = ContextFactory(distributed_context)


def get_context() -> WorkerContext:
    """This process's worker context (see :data:`contexts`)."""
    return contexts.get()
