"""Dirtime-pass tasks: ``cmover.dirtime.dir(spec, rel, mdt)`` sets the times of target directory ``rel``
and its subtree; ``cmover.dirtime.files(spec, rel, names[, also])`` (journal-driven passes) those of the
subdirectories ``names`` of ``rel`` only, or of ``rel`` itself when ``names`` is empty, then the same for each
further [directory, names] pair of ``also`` (see :mod:`cmover.engine.dirtimepass`)."""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.engine.dirtimepass import DirtimePass
from cmover.worker import bodies
from cmover.worker.passtask import PassTask
from cmover.worker.taskbase import run_pass_task


@app.task(name="cmover.dirtime.dir", base=PassTask, bind=True)
def dirtime_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None) -> None:
    run_pass_task(self, spec, rel, bodies.dirtime_dir(rel, mdt))


@app.task(name="cmover.dirtime.files", base=PassTask, bind=True)
def dirtime_files(self: PassTask, spec: Any, rel: Any, names: Any, also: Any = None) -> None:
    def body(spec_, ctx, tally, fail, emit):
        groups = bodies.batch_groups(rel, names, also)
        DirtimePass(spec_, tally, fail, emit).run_groups(groups)

    run_pass_task(self, spec, rel, body)
