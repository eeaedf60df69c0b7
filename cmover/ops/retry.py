"""`cmover retry-failed`: run the failed items of a distributed pass again, and only those.

The pass's error list (:mod:`cmover.state.errorlist`) names each failed item by its path relative to the
pass root. :func:`plan_retry` turns the list into the same jobs the pass publishes itself: a directory
that failed is walked again (with everything below it), a file (or other non-directory) is handed to
a one-directory batch task with the other failed names of its directory. Items that are no longer
there (gone from the source in a copy or dirtime pass, from the target in a delete pass) are not
failures any more and are only reported.

The jobs run under the same run id, so `cmover status`, the counters and the error list stay those of
the pass; their task ids carry the retry's number (a retry is never mistaken for a task already done).
The records are taken off the error list only after every job is published: a crash in between
leaves the list whole (the next retry may repeat some work, which finds the files identical). What
fails again is recorded again.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass, field

from cmover import app as appmod
from cmover.core.counters import C
from cmover.core.errors import ConfinementError, FatalError
from cmover.core.failure import Failure
from cmover.core.passes import PassKind, PassSpec
from cmover.core.paths import check_rel, join
from cmover.core.settings import Settings
from cmover.engine.jobs import DirJob, FilesJob, Job
from cmover.ops import runs
from cmover.ops.broker import check_broker
from cmover.state.ledger import LedgerLost
from cmover.state.runstats import MemcacheStats
from cmover.worker.context import get_context

log = logging.getLogger(__name__)


@dataclass
class RetryPlan:
    """What a retry publishes (``jobs``), and the records it drops (``gone``) or cannot use (``unusable``)."""

    jobs: list[Job] = field(default_factory=list)
    gone: list[Failure] = field(default_factory=list)
    unusable: list[Failure] = field(default_factory=list)
    retried: int = 0  # records covered by the jobs


def _lstat(root: bytes, rel: bytes) -> os.stat_result | None:
    try:
        return os.lstat(os.path.join(root, rel) if rel else root)
    except FileNotFoundError:
        return None
    except OSError:
        # Unreadable right now (e.g. the permission problem that made it fail): let a task find out.
        return os.stat_result((stat.S_IFREG,) + (0,) * 9)


def plan_retry(spec: PassSpec, failures: list[Failure]) -> RetryPlan:
    """The jobs that redo ``failures`` of pass ``spec`` (reads only ``lstat`` of the named items).

    A directory job covers its whole subtree, so failed items below a retried directory add nothing.
    Names of one directory are batched by ``spec.batch``.
    """
    plan = RetryPlan()
    # The side where the item must still exist: the source for copy and dirtime, the target for delete.
    root = spec.dst_root if spec.kind is PassKind.DELETE else spec.src_root
    dirs: set[bytes] = set()
    names: dict[bytes, set[bytes]] = {}
    for f in failures:
        rel = f.path.rstrip(b"/")
        try:
            check_rel(rel)
        except ConfinementError:
            plan.unusable.append(f)
            continue
        st = _lstat(root, rel)
        if st is None:
            plan.gone.append(f)
            continue
        plan.retried += 1
        if spec.kind is PassKind.DELETE and rel and _lstat(spec.src_root, rel) is None:
            # Its source is gone: the batch of the highest directory whose source still exists removes it
            # (a delete task only works inside directories present on both sides).
            while b"/" in rel and _lstat(spec.src_root, rel.rpartition(b"/")[0]) is None:
                rel = rel.rpartition(b"/")[0]
            parent, _, name = rel.rpartition(b"/")
            names.setdefault(parent, set()).add(name)
            continue
        parent, _, name = rel.rpartition(b"/")
        if stat.S_ISDIR(st.st_mode):
            dirs.add(rel)
        elif spec.kind is PassKind.DIRTIME or not rel:
            dirs.add(parent)  # dirtime works on directories only
        else:
            names.setdefault(parent, set()).add(name)

    def covered(rel: bytes) -> bool:
        """True when a retried directory is ``rel`` or one of its ancestors."""
        parts = rel.split(b"/") if rel else []
        return b"" in dirs or any(b"/".join(parts[:i]) in dirs for i in range(1, len(parts) + 1))

    for d in sorted(dirs):
        if not any(covered(a) for a in _ancestors(d)):
            plan.jobs.append(DirJob(d))
    for parent in sorted(names):
        if covered(parent):
            continue
        todo = sorted(names[parent])
        for i in range(0, len(todo), spec.batch):
            plan.jobs.append(FilesJob(parent, tuple(todo[i:i + spec.batch]), index=i // spec.batch))
    return plan


def _ancestors(rel: bytes) -> list[bytes]:
    """The proper ancestors of ``rel``, the pass root (b"") first."""
    if not rel:
        return []
    parts = rel.split(b"/")
    return [b""] + [join(b"", b"/".join(parts[:i])) for i in range(1, len(parts))]


def retry_failed(settings: Settings, kind: str, run_id: str | None = None) -> tuple[PassSpec, RetryPlan]:
    """Publish the failed items of the run again (:func:`plan_retry`); return the run's spec and the plan.

    The run is the given one, else the current run of pass ``kind`` (:func:`cmover.ops.runs.resolve`).
    """
    from cmover.state.errorlist import BrokerErrors
    from cmover.worker.taskbase import job_task_id, publish

    check_broker(settings)
    spec = runs.spec_of(settings, kind, run_id)
    ctx = get_context()
    errors_ = BrokerErrors(appmod.app)
    with errors_.take(spec.run_id) as (failures, commit):
        plan = plan_retry(spec, failures)
        if plan.jobs:
            try:
                attempt = ctx.ledger.incr(spec.run_id, "retries", 1)
                runs.client(settings).delete(runs.complete_key(spec.run_id), noreply=False)
            except (TimeoutError, OSError, LedgerLost) as exc:
                raise FatalError(f"memcached at {settings.memcached} is unreachable ({exc}); start it "
                                 "(memcached -M): a retry cannot be tracked without it") from None
            retry = spec._replace(attempt=attempt)
            spec_d = retry.as_dict()
            for job in plan.jobs:
                tid = job_task_id(retry, job)
                ctx.ledger.enqueue(spec.run_id, tid)
                publish(appmod.app, [(appmod.TASK_NAMES[(spec.kind.value, job.kind)], [spec_d, *job.wire_args()], tid)])
        if plan.unusable:
            errors_.record(spec.run_id, plan.unusable)  # kept on the list as they were
        commit()
    resolved = plan.retried + len(plan.gone)
    if resolved:
        try:
            MemcacheStats(lambda: runs.client(settings)).add_to_run(spec.run_id, Counter({C.RETRIED: resolved}))
        except Exception as exc:  # the retry is published: only the display of what it settled is off
            log.warning("could not count %d retried failure(s) in memcached: %s", resolved, exc)
    return spec, plan
