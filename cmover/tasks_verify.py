"""Verify-pass tasks: thin adapters from messages to :class:`cmover.engine.verifypass.VerifyPass`.

``cmover.verify.dir(spec, rel, mdt[, also])`` verifies a directory (and small subtrees inline) and publishes the
rest; ``cmover.verify.files(spec, rel, names)`` verifies one batch of a large directory;
``cmover.verify.chunk(spec, rel, index, chunk)`` compares one chunk of a huge file's data. What a task
finds different goes to the run's differences list in one record (:func:`cmover.state.errorlist.differences_list`).
"""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.worker import bodies
from cmover.worker.passtask import PassTask
from cmover.worker.taskbase import run_pass_task


@app.task(name="cmover.verify.dir", base=PassTask, bind=True)
def verify_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None, also: Any = None) -> None:
    run_pass_task(self, spec, rel, bodies.verify_dir(self.request.id, rel, mdt, also))


@app.task(name="cmover.verify.files", base=PassTask, bind=True)
def verify_files(self: PassTask, spec: Any, rel: Any, names: Any) -> None:
    run_pass_task(self, spec, rel, bodies.verify_files(self.request.id, rel, names))


@app.task(name="cmover.verify.chunk", base=PassTask, bind=True)
def verify_chunk(self: PassTask, spec: Any, rel: Any, index: Any, chunk: Any) -> None:
    run_pass_task(self, spec, rel, bodies.verify_chunk(self.request.id, rel, index, chunk))
