"""``cmover hsm-rebind-list [--run ID] [--skipped]``: a copy run's HSM list (see :mod:`cmover.state.hsmlist`).

By default the rebind list: one ``<old FID> <new FID>`` line per file the run imported as a released
stub or marked archived, in the exact form ``lhsmtool_posix --rebind <file> <mount>`` reads (FIDs
without brackets, which every release of it parses), and nothing else on standard output; the count goes
to standard error. ``--skipped`` lists instead the released files ``--hsm skip`` left out, one path a
line. The run is ``--run ID``, else the current copy run (distributed), else the newest embedded run's
list in LOG_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cmover.cli._common import load
from cmover.core.errors import EXIT_OK, ConfigError
from cmover.core.hsmrecord import HsmRecord
from cmover.core.settings import Settings
from cmover.state.hsmlist import HsmFile, rebind_lines


def add_parsers(sub: Any) -> None:
    h = sub.add_parser("hsm-rebind-list", help="the (old FID, new FID) pairs of the files a copy run imported or "
                       "marked archived, for `lhsmtool_posix --rebind FILE MOUNT` (or --skipped: the released "
                       "files left out)")
    h.add_argument("--run", help="a copy run id (default: the current copy run, else the newest embedded one)")
    h.add_argument("--skipped", action="store_true", help="list the released files --hsm skip left out instead")
    h.set_defaults(func=cmd_hsm_rebind_list)


def _records(settings: Settings, run_id: str | None) -> tuple[str, list[HsmRecord]]:
    files = HsmFile(settings.log_path())
    if run_id is not None:
        try:
            path = files.path(run_id)
        except ValueError:
            raise ConfigError(f"--run {run_id!r} is not a run id; see `cmover status copy`") from None
        if os.path.exists(path) or not settings.broker_configured:
            return run_id, files.read(run_id)
    elif not settings.broker_configured:
        runs = files.runs()
        if not runs:
            raise ConfigError(f"no HSM list in {files.directory}: no embedded copy run met HSM files there")
        return runs[0], files.read(runs[0])
    from cmover.ops import runs as oruns
    from cmover.ops.broker import check_broker, read_hsm

    check_broker(settings)
    run = oruns.resolve(settings, "copy", run_id)
    if run is None:
        raise ConfigError("no copy pass has been started; give --run ID")
    return run.run_id, read_hsm(run.run_id)


def cmd_hsm_rebind_list(args: argparse.Namespace) -> int:
    settings = load(args)
    run_id, records = _records(settings, args.run)
    if args.skipped:
        lines = list(dict.fromkeys(r.line() for r in records if r.what == "skipped"))
        what = "released files left out"
    else:
        lines = rebind_lines(records)
        what = "files to rebind"
    for line in lines:
        print(line)
    print(f"{len(lines):,} {what} in {run_id}", file=sys.stderr)
    return EXIT_OK
