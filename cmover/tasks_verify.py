"""Verify-pass tasks: thin adapters from messages to :class:`cmover.engine.verifypass.VerifyPass`.

``cmover.verify.dir(spec, rel, mdt)`` verifies a directory (and small subtrees inline) and publishes the
rest; ``cmover.verify.files(spec, rel, names)`` verifies one batch of a large directory;
``cmover.verify.chunk(spec, rel, index, chunk)`` compares one chunk of a huge file's data. What a task
finds different goes to the run's differences list in one record (:func:`cmover.state.errorlist.differences_list`).
"""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.core.errors import ConfinementError
from cmover.core.paths import names_from_wire, rel_from_wire
from cmover.engine.chunks import ChunkSpec
from cmover.worker import bodies
from cmover.worker.passtask import PassTask
from cmover.worker.taskbase import run_pass_task


@app.task(name="cmover.verify.dir", base=PassTask, bind=True)
def verify_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None) -> None:
    run_pass_task(self, spec, rel, bodies.verify_dir(rel, mdt))


@app.task(name="cmover.verify.files", base=PassTask, bind=True)
def verify_files(self: PassTask, spec: Any, rel: Any, names: Any) -> None:
    def body(spec_, ctx, tally, fail, emit):
        batch = names_from_wire(names)
        bodies.verify_run(spec_, ctx, tally, fail, emit, lambda v: v.run_files(rel_from_wire(rel), batch))

    run_pass_task(self, spec, rel, body)


@app.task(name="cmover.verify.chunk", base=PassTask, bind=True)
def verify_chunk(self: PassTask, spec: Any, rel: Any, index: Any, chunk: Any) -> None:
    def body(spec_, ctx, tally, fail, emit):
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConfinementError(f"chunk index in message is not an integer: {index!r}")
        cs = ChunkSpec.from_wire(chunk)
        if index >= cs.count:
            raise ConfinementError(f"chunk index {index} in message is past the file's {cs.count} chunks")
        bodies.verify_run(spec_, ctx, tally, fail, emit, lambda v: v.run_chunk(rel_from_wire(rel), index, cs))

    run_pass_task(self, spec, rel, body)
