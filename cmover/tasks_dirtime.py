"""Dirtime-pass tasks: ``cmover.dirtime.dir(spec, rel, mdt[, also])`` sets the times of target directory ``rel``
and its subtree; ``cmover.dirtime.files(spec, rel, names[, also])`` (journal-driven passes) those of the
subdirectories ``names`` of ``rel`` only, or of ``rel`` itself when ``names`` is empty, then the same for each
further [directory, names] pair of ``also`` (see :mod:`cmover.engine.dirtimepass`)."""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.worker import bodies
from cmover.worker.passtask import PassTask
from cmover.worker.taskbase import run_pass_task


@app.task(name="cmover.dirtime.dir", base=PassTask, bind=True)
def dirtime_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None, also: Any = None) -> None:
    run_pass_task(self, spec, rel, bodies.dirtime_dir(self.request.id, rel, mdt, also))


@app.task(name="cmover.dirtime.files", base=PassTask, bind=True)
def dirtime_files(self: PassTask, spec: Any, rel: Any, names: Any, also: Any = None) -> None:
    run_pass_task(self, spec, rel, bodies.dirtime_files(self.request.id, rel, names, also))
