"""What each pass's tasks do with their engine, without Celery: :data:`TASKS`, the body of every task message,
which :func:`~cmover.worker.taskbase.run_pass_task` runs under Celery (the task modules, ``cmover.tasks_*``,
adapt messages to them) and :func:`~cmover.worker.taskbase.run_message` without it (the embedded runner and
its pool).

A body is called as ``body(spec, ctx, tally, fail, emit)`` (:data:`~cmover.worker.taskbase.Body`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cmover.core.deletion import Deletion
from cmover.core.difference import Difference
from cmover.core.errors import ConfinementError
from cmover.core.hsmrecord import HsmRecord
from cmover.core.paths import dirs_from_wire, groups_from_wire, mdt_from_wire, names_from_wire, rel_from_wire
from cmover.engine.chunks import ChunkSpec
from cmover.engine.claims import RunClaims
from cmover.engine.copypass import CopyPass
from cmover.engine.jobs import DirJob
from cmover.state.errorlist import deleted_list, differences_list
from cmover.state.hsmlist import BrokerHsm

if TYPE_CHECKING:
    from cmover.engine.deletepass import DeletePass
    from cmover.engine.dirtimepass import DirtimePass
    from cmover.engine.verifypass import VerifyPass

Body = Callable[..., None]


@contextmanager
def copy_engine(spec: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> Iterator[CopyPass]:
    """The copy engine for one task: the pass's filesystem API (Lustre layouts or POSIX), the HSM side
    (a Lustre HSM source) and the run's first-writer-wins claims (hard-link leaders, chunks done).
    What the task imported or marked goes to the run's HSM list, in one record, whatever the task's end."""
    fs = ctx.fs_for(spec, tally)
    records: list[HsmRecord] = []
    try:
        yield CopyPass(spec, fs, tally, fail, emit, RunClaims(ctx.ledger, spec.run_id),
                       hsm=ctx.hsm_for(spec, fs, tally, records.append))
    finally:
        if records:
            (ctx.hsm or BrokerHsm(ctx.errors)).record(spec.run_id, records)


def delete_run(spec: Any, ctx: Any, tally: Any, fail: Any, emit: Any, work: Callable[[DeletePass], None]) -> None:
    """Run ``work`` on a DeletePass; what it deleted goes to the run's deletion list in one record."""
    from cmover.engine.deletepass import DeletePass  # here, as the dirtime and verify engines: not by a copy pass

    deleted: list[Deletion] = []
    try:
        work(DeletePass(spec, tally, fail, emit, RunClaims(ctx.ledger, spec.run_id), deleted.append))
    finally:
        if deleted:
            ctx.errors.record(deleted_list(spec.run_id), deleted)


def dirtime_engine(spec: Any, tally: Any, fail: Any, emit: Any) -> DirtimePass:
    """A DirtimePass for one task."""
    from cmover.engine.dirtimepass import DirtimePass

    return DirtimePass(spec, tally, fail, emit)


def verify_run(spec: Any, ctx: Any, tally: Any, fail: Any, emit: Any, work: Callable[[VerifyPass], None]) -> None:
    """Run ``work`` on a VerifyPass; what it found different goes to the run's differences list."""
    from cmover.engine.verifypass import VerifyPass  # and its hashing: 3 ms of every other command's start

    found: list[Difference] = []
    # The filesystem API as a --restripe copy has it: the one that compares a file's layout with the policy's.
    engine = VerifyPass(spec, tally, fail, emit, RunClaims(ctx.ledger, spec.run_id), found.append,
                        ctx.fs_for(spec._replace(restripe=True), tally), ctx.hsm_lib(spec))
    try:
        work(engine)
    finally:
        engine.close()
        if found:
            ctx.errors.record(differences_list(spec.run_id), found)


def batch_groups(rel: Any, names: Any, also: Any) -> list[tuple[bytes, list[bytes]]]:
    """The (directory, names) pairs of a batch message: its own, then those of ``also`` (None: none); every
    path checked before any is handled (ConfinementError)."""
    return [(rel_from_wire(rel), names_from_wire(names)), *groups_from_wire(also)]


def dir_job(rel: Any, mdt: Any, also: Any, made: Any = False) -> DirJob:
    """The directory job of a directory message: its directory and MDT, then those of ``also`` (None: none),
    and whether the command has just made its target (:attr:`DirJob.made`, a copy pass's root task only);
    every path, MDT and flag checked before any is handled (ConfinementError)."""
    return DirJob(rel_from_wire(rel), mdt_from_wire(mdt), tuple(dirs_from_wire(also)), made_from_wire(made, also))


def made_from_wire(made: Any, also: Any) -> bool:
    """The ``made`` flag of a copy pass's directory or batch message: true or false, true for one directory."""
    if not isinstance(made, bool) or (made and also):
        raise ConfinementError(f"'made' of a message is not true or false for one directory: {made!r}")
    return made


def copy_dir(tid: str, rel: Any, mdt: Any = None, also: Any = None, made: Any = False) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        job = dir_job(rel, mdt, also, made)
        with copy_engine(spec_, ctx, tally, fail, emit) as engine:
            engine.run_dirs(job)
    return body


def copy_files(tid: str, rel: Any, names: Any, also: Any = None, made: Any = False) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        groups = batch_groups(rel, names, also)
        made_ = made_from_wire(made, also)
        with copy_engine(spec_, ctx, tally, fail, emit) as engine:
            if made_:
                engine.run_files(*groups[0], made=True)
            else:
                engine.run_groups(groups)
    return body


def copy_chunk(tid: str, rel: Any, index: Any, chunk: Any) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfinementError(f"chunk index in message is not an integer: {index!r}")
        cs = ChunkSpec.from_wire(chunk)
        with copy_engine(spec_, ctx, tally, fail, emit) as engine:
            engine.run_chunk(rel_from_wire(rel), index, cs, tid)
    return body


def delete_dir(tid: str, rel: Any, mdt: Any = None) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        delete_run(spec_, ctx, tally, fail, emit, lambda d: d.run_dir(rel_from_wire(rel)))
    return body


def delete_files(tid: str, rel: Any, names: Any, also: Any = None) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        groups = batch_groups(rel, names, also)
        delete_run(spec_, ctx, tally, fail, emit, lambda d: d.run_groups(groups))
    return body


def delete_purge(tid: str, rel: Any, root: Any) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        delete_run(spec_, ctx, tally, fail, emit, lambda d: d.run_purge(rel_from_wire(rel), rel_from_wire(root)))
    return body


def dirtime_dir(tid: str, rel: Any, mdt: Any = None, also: Any = None) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        job = dir_job(rel, mdt, also)
        dirtime_engine(spec_, tally, fail, emit).run_dirs([one.rel for one in job.members()])
    return body


def dirtime_files(tid: str, rel: Any, names: Any, also: Any = None) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        groups = batch_groups(rel, names, also)
        dirtime_engine(spec_, tally, fail, emit).run_groups(groups)
    return body


def verify_dir(tid: str, rel: Any, mdt: Any = None, also: Any = None) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        rels = [one.rel for one in dir_job(rel, mdt, also).members()]
        verify_run(spec_, ctx, tally, fail, emit, lambda v: v.run_dirs(rels))
    return body


def verify_files(tid: str, rel: Any, names: Any) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        batch = names_from_wire(names)
        verify_run(spec_, ctx, tally, fail, emit, lambda v: v.run_files(rel_from_wire(rel), batch))
    return body


def verify_chunk(tid: str, rel: Any, index: Any, chunk: Any) -> Body:
    def body(spec_: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConfinementError(f"chunk index in message is not an integer: {index!r}")
        cs = ChunkSpec.from_wire(chunk)
        if index >= cs.count:
            raise ConfinementError(f"chunk index {index} in message is past the file's {cs.count} chunks")
        verify_run(spec_, ctx, tally, fail, emit, lambda v: v.run_chunk(rel_from_wire(rel), index, cs))
    return body


#: Task name -> the factory of the body of one of its messages: called with the task id and the message's
#: arguments after the pass spec (the signature of the factory is the message's, checked before the call).
#: The Celery tasks (``cmover.tasks_*``) and the embedded pool (:mod:`cmover.embedded.pool`) run the same.
TASKS: dict[str, Callable[..., Body]] = {
    "cmover.copy.dir": copy_dir, "cmover.copy.files": copy_files, "cmover.copy.chunk": copy_chunk,
    "cmover.delete.dir": delete_dir, "cmover.delete.files": delete_files, "cmover.delete.purge": delete_purge,
    "cmover.dirtime.dir": dirtime_dir, "cmover.dirtime.files": dirtime_files,
    "cmover.verify.dir": verify_dir, "cmover.verify.files": verify_files, "cmover.verify.chunk": verify_chunk,
}
