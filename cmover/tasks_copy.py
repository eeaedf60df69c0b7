"""Copy-pass tasks: thin adapters from messages to :class:`cmover.engine.copypass.CopyPass`.

``cmover.copy.dir(spec, rel, mdt[, also[, made]])`` handles a directory (and small subtrees inline) and publishes
the rest; ``cmover.copy.files(spec, rel, names[, also[, made]])`` copies one batch of a large directory (with
``also``, the few changed names of further directories: journal-driven passes). ``made`` true: the target
directory was created by the pass just before (the root task of a new target root, the batches of a directory
its task created), and its names are not looked up there first;
``cmover.copy.chunk(spec, rel, index, chunk)`` writes one chunk of a huge file (see :mod:`cmover.engine.chunks`).
Arguments are JSON: the pass spec, wire-encoded relative paths (see :mod:`cmover.core.paths`), an MDT index
or null, a chunk index and the file's chunk description.
"""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.worker import bodies
from cmover.worker.passtask import PassTask
from cmover.worker.taskbase import run_pass_task


@app.task(name="cmover.copy.dir", base=PassTask, bind=True)
def copy_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None, also: Any = None, made: Any = False) -> None:
    run_pass_task(self, spec, rel, bodies.copy_dir(self.request.id, rel, mdt, also, made))


@app.task(name="cmover.copy.files", base=PassTask, bind=True)
def copy_files(self: PassTask, spec: Any, rel: Any, names: Any, also: Any = None, made: Any = False) -> None:
    run_pass_task(self, spec, rel, bodies.copy_files(self.request.id, rel, names, also, made))


@app.task(name="cmover.copy.chunk", base=PassTask, bind=True)
def copy_chunk(self: PassTask, spec: Any, rel: Any, index: Any, chunk: Any) -> None:
    run_pass_task(self, spec, rel, bodies.copy_chunk(self.request.id, rel, index, chunk))
