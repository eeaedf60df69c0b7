"""Running a pass's jobs in this process, as a pool of workers could: any order, some delivered twice.

:class:`Run` holds what one pass run shares (its spec, one ledger for hard-link and chunk claims and the
``--max-delete`` budget, the collected counters, failures and deletion records) and delivers jobs to a
fresh engine object each time, exactly as a task would (:class:`~cmover.engine.copypass.CopyPass`,
:class:`~cmover.engine.deletepass.DeletePass`, :class:`~cmover.engine.dirtimepass.DirtimePass`,
:class:`~cmover.engine.verifypass.VerifyPass`, chosen by the spec's kind)::

    run = Run(spec).drain()                 # the root task, then every job emitted, until none is left
    assert run.failures == [] and run.tally[C.COPIED] == 5

:meth:`Run.drain` picks the next job at random (``seed``; ``None``: in the order emitted) and delivers a
fraction ``redeliver`` of the jobs a second time, later, after other jobs ran: the worker that ran it
died after it reported and before the ledger marked it done, so the message comes back and the engine
runs it again on a tree where its work is already done. Both deliveries report, as they would. What the
duplicate finds done it does not do again, so the counters of work done (copied, deleted, dirs created)
stay exact; the counters of what was looked at (scanned, dirs, kept, skipped) grow, and a failure, a
deletion record or a verify difference may be listed twice (compare sets): tests that assert those exactly
pass ``redeliver=0``.
A ``before`` hook sees each delivery, duplicates included, so it must be idempotent. A job equal to one
already queued or run (same task id) is not queued again: the ledger makes a second publication a no-op.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmover.core.deletion import Deletion
from cmover.core.difference import Difference
from cmover.core.failure import Failure
from cmover.core.passes import PassKind, PassSpec
from cmover.engine.chunks import ChunkJob
from cmover.engine.claims import RunClaims
from cmover.engine.copypass import CopyPass
from cmover.engine.deletepass import DeletePass, PurgeJob
from cmover.engine.dirtimepass import DirtimePass
from cmover.engine.jobs import DirJob, FilesJob, Job
from cmover.engine.verifypass import VerifyPass
from cmover.lustre.base import FsApi, PosixFs
from cmover.state.ledger import MemoryLedger, task_id


def job_key(spec: PassSpec, job: Job) -> str:
    """The task id the job's message gets (what the ledger deduplicates on)."""
    return task_id(spec.run_id, job.kind, job.rel, job.index, job.ident())


@dataclass
class Report:
    """What the deliveries handed on: counters, failures, deletion records, verify differences."""

    tally: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    deleted: list[Deletion] = field(default_factory=list)
    diffs: list[Difference] = field(default_factory=list)


class Run:
    """One pass run in this process (see the module doc).

    ``fs``: a function of a delivery's tally returning the :class:`~cmover.lustre.base.FsApi` a copy task
    creates target entries through and a verify task compares layouts with (default: POSIX). ``ledger``: the
    run's claims ledger (default: a new
    in-memory one). ``before(job)``, when given, is called before each delivery (tests swap a directory
    or mount something there).
    """

    def __init__(self, spec: PassSpec, *, fs: Callable[[Counter[str]], FsApi] | None = None,
                 ledger: MemoryLedger | None = None, before: Callable[[Job], None] | None = None) -> None:
        self.spec = spec
        self.fs = fs
        self.ledger = ledger if ledger is not None else MemoryLedger()
        self.claims = RunClaims(self.ledger, spec.run_id)
        self.before = before
        self.report = Report()
        self.delivered: list[Job] = []  # every delivery, in order, duplicates included
        self.emitted: list[Job] = []  # every job published, in order, duplicates included

    # -- results --------------------------------------------------------------------------------------------

    @property
    def tally(self) -> Counter[str]:
        return self.report.tally

    @property
    def failures(self) -> list[Failure]:
        return self.report.failures

    @property
    def deleted(self) -> list[Deletion]:
        return self.report.deleted

    @property
    def diffs(self) -> list[Difference]:
        return self.report.diffs

    def found(self) -> list[tuple[bytes, str]]:
        """A verify pass's differences as sorted (path, category) pairs."""
        return sorted((d.path, d.category) for d in self.diffs)

    def failed(self) -> dict[bytes, Failure]:
        """The failures by path."""
        return {f.path: f for f in self.failures}

    def deleted_paths(self) -> list[bytes]:
        """The deleted paths, sorted, a purged tree's with a trailing "/"."""
        return sorted(d.path + b"/" if d.what == "tree" else d.path for d in self.deleted)

    # -- running --------------------------------------------------------------------------------------------

    def deliver(self, job: Job, *, task_id: str | None = None) -> list[Job]:
        """Run one delivery of ``job`` on a fresh engine object, as a task does; return the jobs it emitted.

        ``task_id``: the delivering task's id where the engine uses it (a chunk's finish claim; default: the
        job's own, :func:`job_key`). Exceptions the engine raises propagate (a task would record them as a
        failure of the task).
        """
        if self.before is not None:
            self.before(job)
        self.delivered.append(job)
        out = self.report
        emitted: list[Job] = []
        kind = self.spec.kind
        if kind is PassKind.COPY:
            fs = self.fs(out.tally) if self.fs else PosixFs()
            cp = CopyPass(self.spec, fs, out.tally, out.failures.append, emitted.append, self.claims)
            if isinstance(job, DirJob):
                cp.run_dir(job.rel, job.mdt, made=job.made)
            elif isinstance(job, FilesJob):
                cp.run_files(job.rel, job.names, made=job.made)
            elif isinstance(job, ChunkJob):
                cp.run_chunk(job.rel, job.index, job.cs, task_id or job_key(self.spec, job))
            else:
                raise AssertionError(f"a copy pass has no {job!r}")
        elif kind is PassKind.DELETE:
            dp = DeletePass(self.spec, out.tally, out.failures.append, emitted.append, self.claims,
                            out.deleted.append)
            if isinstance(job, DirJob):
                dp.run_dir(job.rel)
            elif isinstance(job, FilesJob):
                dp.run_files(job.rel, job.names)
            elif isinstance(job, PurgeJob):
                dp.run_purge(job.rel, job.root)
            else:
                raise AssertionError(f"a delete pass has no {job!r}")
        elif kind is PassKind.VERIFY:
            vp = VerifyPass(self.spec, out.tally, out.failures.append, emitted.append, self.claims, out.diffs.append,
                            self.fs(out.tally) if self.fs else None)
            try:
                if isinstance(job, DirJob):
                    vp.run_dir(job.rel)
                elif isinstance(job, FilesJob):
                    vp.run_files(job.rel, list(job.names))
                elif isinstance(job, ChunkJob):
                    vp.run_chunk(job.rel, job.index, job.cs)
                else:
                    raise AssertionError(f"a verify pass has no {job!r}")
            finally:
                vp.close()  # the task's manifest lines
        else:
            if not isinstance(job, DirJob):
                raise AssertionError(f"a dirtime pass has no {job!r}")
            DirtimePass(self.spec, out.tally, out.failures.append, emitted.append).run_dir(job.rel)
        self.emitted.extend(emitted)
        return emitted

    def drain(self, first: Job | None = None, *, seed: int | None = 0, redeliver: float = 0.25,
              follow: bool = True) -> Run:
        """Deliver ``first`` (default: the root directory job of the spec's start), then every job emitted
        until none is left; return self.

        ``seed``: the random order (None: first emitted, first delivered). ``redeliver``: the fraction of
        jobs delivered twice (see the module doc; each job at most twice). ``follow=False``: deliver
        ``first`` only (its jobs are in :attr:`emitted`).
        """
        rng = random.Random(seed)
        ordered = seed is None
        start = first if first is not None else DirJob(self.spec.start)
        pending: list[tuple[Job, bool]] = [(start, True)]  # (job, may still be delivered twice)
        seen = {job_key(self.spec, start)}
        while pending:
            job, first_delivery = pending.pop(0 if ordered else rng.randrange(len(pending)))
            emitted = self.deliver(job)
            if not follow:
                break
            for child in emitted:
                key = job_key(self.spec, child)
                if key not in seen:
                    seen.add(key)
                    pending.append((child, True))
            if first_delivery and redeliver > 0 and rng.random() < redeliver:
                pending.append((job, False))
        return self


def drain(spec: PassSpec, first: Job | None = None, *, seed: int | None = 0, redeliver: float = 0.25,
          follow: bool = True, **run_options: Any) -> Run:
    """``Run(spec, **run_options).drain(first, ...)``: a whole pass (see :meth:`Run.drain`)."""
    return Run(spec, **run_options).drain(first, seed=seed, redeliver=redeliver, follow=follow)
