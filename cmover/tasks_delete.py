"""Delete-pass tasks: thin adapters from messages to :class:`cmover.engine.deletepass.DeletePass`.

``cmover.delete.dir(spec, rel, mdt)`` compares target directory ``rel`` with its source and walks on;
``cmover.delete.files(spec, rel, names[, also])`` handles one batch of a large target directory (or of several
directories: journal-driven passes);
``cmover.delete.purge(spec, rel, root)`` removes part of a target tree whose source is gone. A task that
finds the source root unsafe (gone, unmounted, replaced, empty) deletes nothing and fails loudly.
"""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.worker import bodies
from cmover.worker.passtask import PassTask
from cmover.worker.taskbase import run_pass_task


@app.task(name="cmover.delete.dir", base=PassTask, bind=True)
def delete_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None) -> None:
    run_pass_task(self, spec, rel, bodies.delete_dir(self.request.id, rel, mdt))


@app.task(name="cmover.delete.files", base=PassTask, bind=True)
def delete_files(self: PassTask, spec: Any, rel: Any, names: Any, also: Any = None) -> None:
    run_pass_task(self, spec, rel, bodies.delete_files(self.request.id, rel, names, also))


@app.task(name="cmover.delete.purge", base=PassTask, bind=True)
def delete_purge(self: PassTask, spec: Any, rel: Any, root: Any) -> None:
    run_pass_task(self, spec, rel, bodies.delete_purge(self.request.id, rel, root))
