"""Copy-pass tasks: thin adapters from messages to :class:`cmover.copypass.CopyPass`.

``cmover.copy.dir(spec, rel, mdt)`` handles a directory (and small subtrees inline) and publishes the
rest; ``cmover.copy.files(spec, rel, names)`` copies one batch of a large directory;
``cmover.copy.chunk(spec, rel, index, chunk)`` writes one chunk of a huge file (see :mod:`cmover.chunks`).
Arguments are JSON: the pass spec, wire-encoded relative paths (see :mod:`cmover.paths`), an MDT index
or null, a chunk index and the file's chunk description.
"""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.chunks import ChunkSpec
from cmover.copypass import CopyPass
from cmover.errors import ConfinementError
from cmover.ledger import RunClaims
from cmover.paths import names_from_wire, rel_from_wire
from cmover.taskbase import PassTask, run_pass_task


@app.task(name="cmover.copy.dir", base=PassTask, bind=True)
def copy_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None) -> None:
    def body(spec_, ctx, tally, fail, emit):
        if mdt is not None and (isinstance(mdt, bool) or not isinstance(mdt, int) or not -1 <= mdt < 2**31):
            raise ConfinementError(f"MDT index in message is not -1 or an MDT index: {mdt!r}")
        _engine(spec_, ctx, tally, fail, emit).run_dir(rel_from_wire(rel), mdt)

    run_pass_task(self, spec, rel, body)


@app.task(name="cmover.copy.files", base=PassTask, bind=True)
def copy_files(self: PassTask, spec: Any, rel: Any, names: Any) -> None:
    def body(spec_, ctx, tally, fail, emit):
        batch = names_from_wire(names)
        _engine(spec_, ctx, tally, fail, emit).run_files(rel_from_wire(rel), batch)

    run_pass_task(self, spec, rel, body)


@app.task(name="cmover.copy.chunk", base=PassTask, bind=True)
def copy_chunk(self: PassTask, spec: Any, rel: Any, index: Any, chunk: Any) -> None:
    def body(spec_, ctx, tally, fail, emit):
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfinementError(f"chunk index in message is not an integer: {index!r}")
        cs = ChunkSpec.from_wire(chunk)
        _engine(spec_, ctx, tally, fail, emit).run_chunk(
            rel_from_wire(rel), index, cs, self.request.id)

    run_pass_task(self, spec, rel, body)


def _engine(spec: Any, ctx: Any, tally: Any, fail: Any, emit: Any) -> CopyPass:
    """The copy engine for one task: the pass's filesystem API (Lustre layouts or POSIX) and the run's
    first-writer-wins claims (hard-link leaders, chunks done)."""
    return CopyPass(spec, ctx.fs_for(spec, tally), tally, fail, emit, RunClaims(ctx.ledger, spec.run_id))
