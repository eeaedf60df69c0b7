"""Dirtime-pass task: ``cmover.dirtime.dir(spec, rel, mdt)`` sets the times of target directory ``rel``
and its subtree (see :mod:`cmover.dirtimepass`)."""

from __future__ import annotations

from typing import Any

from cmover.app import app
from cmover.dirtimepass import DirtimePass
from cmover.paths import rel_from_wire
from cmover.taskbase import PassTask, run_pass_task


@app.task(name="cmover.dirtime.dir", base=PassTask, bind=True)
def dirtime_dir(self: PassTask, spec: Any, rel: Any, mdt: Any = None) -> None:
    def body(spec_, ctx, tally, fail, emit):
        DirtimePass(spec_, tally, fail, emit).run_dir(rel_from_wire(rel))

    run_pass_task(self, spec, rel, body)
