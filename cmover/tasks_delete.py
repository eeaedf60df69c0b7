"""Delete-pass tasks: thin adapters from messages to :class:`cmover.deletepass.DeletePass`.

``cmover.delete.dir(spec, rel, mdt)`` compares target directory ``rel`` with its source and walks on;
``cmover.delete.files(spec, rel, names)`` handles one batch of a large target directory;
``cmover.delete.purge(spec, rel, root)`` removes part of a target tree whose source is gone. A task that
finds the source root unsafe (gone, unmounted, replaced, empty) deletes nothing and fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cmover.app import app
from cmover.deletepass import DeletePass
from cmover.errorlist import deleted_list
from cmover.errors import Failure
from cmover.ledger import RunClaims
from cmover.paths import names_from_wire, rel_from_wire
from cmover.taskbase import PassTask, run_pass_task


def _run(spec: Any, ctx: Any, tally: Any, fail: Any, emit: Any, work: Callable[[DeletePass], None]) -> None:
    """Run ``work`` on a DeletePass; what it deleted goes to the run's deletion list in one record."""
    deleted: list[Failure] = []
    try:
        work(DeletePass(spec, tally, fail, emit, RunClaims(ctx.ledger, spec.run_id), deleted.append))
    finally:
        if deleted:
            ctx.errors.record(deleted_list(spec.run_id), deleted)


@app.task(name="cmover.delete.dir", base=PassTask, bind=True)
def delete_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None) -> None:
    def body(spec_, ctx, tally, fail, emit):
        _run(spec_, ctx, tally, fail, emit, lambda d: d.run_dir(rel_from_wire(rel)))

    run_pass_task(self, spec, rel, body)


@app.task(name="cmover.delete.files", base=PassTask, bind=True)
def delete_files(self: PassTask, spec: Any, rel: Any, names: Any) -> None:
    def body(spec_, ctx, tally, fail, emit):
        batch = names_from_wire(names)
        _run(spec_, ctx, tally, fail, emit, lambda d: d.run_files(rel_from_wire(rel), batch))

    run_pass_task(self, spec, rel, body)


@app.task(name="cmover.delete.purge", base=PassTask, bind=True)
def delete_purge(self: PassTask, spec: Any, rel: Any, root: Any) -> None:
    def body(spec_, ctx, tally, fail, emit):
        _run(spec_, ctx, tally, fail, emit, lambda d: d.run_purge(rel_from_wire(rel), rel_from_wire(root)))

    run_pass_task(self, spec, rel, body)
