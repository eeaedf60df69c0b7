"""The verify pass on the command line: its options, the end of a verify (the manifest merge, the differences
list) and ``cmover differences [--run ID] [--json]``.

``cmover verify SRC DST`` runs like the other passes (:func:`cmover.cli.passes.cmd_pass`, embedded or on the
broker); exit 0 when the trees are identical, 1 when something differs or failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from cmover.cli._common import load, note
from cmover.core.counters import C
from cmover.core.difference import Difference
from cmover.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, ConfigError
from cmover.core.passes import PassKind, PassSpec, VerifyOptions

#: Differences printed at the end of a verify (all of them are on the run's list).
SHOWN = 10_000


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--content", action="store_true", help="verify: also read both files and compare their BLAKE3 "
                   "checksums (huge files in chunks over every worker)")
    p.add_argument("--manifest", metavar="DIR", help="verify: write the source's checksums to DIR/manifest.b3 "
                   "(b3sum --check reads it; implies --content); files unchanged since the last verify into DIR "
                   "are not read again")
    p.add_argument("--all", dest="reread_all", action="store_true",
                   help="verify --manifest: read every file again, changed or not")
    p.add_argument("--atime", action="store_true", help="verify: compare atimes too")
    p.add_argument("--skip-dir-times", action="store_true", help="verify: do not compare directory times")


def options_of(args: argparse.Namespace) -> VerifyOptions:
    return VerifyOptions(content=bool(getattr(args, "content", False)), manifest=getattr(args, "manifest", None) or "",
                         reread_all=bool(getattr(args, "reread_all", False)), atime=bool(getattr(args, "atime", False)),
                         skip_dir_times=bool(getattr(args, "skip_dir_times", False)))


def prepare(spec: PassSpec) -> None:
    """After the preflight: create the manifest directory (its parent exists, the planner checked)."""
    if spec.kind is PassKind.VERIFY and VerifyOptions.of(spec).manifest:
        os.makedirs(VerifyOptions.of(spec).manifest, exist_ok=True)


def finish(spec_kind: str, run_id: str, state: str, manifest_dir: str, totals: dict[str, int]) -> None:
    """At the end of a complete verify with a manifest: merge the shards into the manifest.

    Fewer lines than the workers listed (``manifest_listed``) means shards the merge could not see -- DIR
    is not the same directory on every worker node: said, and counted as a failure in ``totals`` (exit 1).
    """
    if spec_kind != PassKind.VERIFY.value or not manifest_dir:
        return
    from cmover.engine import manifest

    if state != "complete":
        note(f"the verify was not complete ({state}): manifest shards left in "
             f"{manifest.shard_dir(manifest_dir, run_id)}, {manifest.MANIFEST} unchanged (the next complete "
             "verify with this --manifest removes them)")
        return
    n = manifest.merge(manifest_dir, run_id)
    path = os.path.join(manifest_dir, manifest.MANIFEST)
    listed = int(totals.get(C.MANIFEST_LISTED, 0))
    if n < listed:
        note(f"manifest {path} is incomplete: {n:,} of the {listed:,} files the workers listed; --manifest "
             "must name the same (shared) directory on every worker node", logging.ERROR)
        totals[C.FAILED] = int(totals.get(C.FAILED, 0)) + 1
        return
    note(f"manifest: {n:,} files in {path} (check with: cd SRC && b3sum --check {path})")


def print_differences(items: list[Difference], count: int) -> None:
    if not count:
        return
    print(f"Differences ({count:,}):")
    for d in items:
        print(f"  {d.line()}")
    if count > len(items):
        print(f"  ... and {count - len(items):,} more (cmover differences --json lists them all)")


def cmd_differences(args: argparse.Namespace) -> int:
    """``cmover differences [--run ID] [--json]``: what a distributed verify pass found different."""
    from cmover.ops import runs
    from cmover.ops.broker import check_broker, read_differences

    settings = load(args)
    check_broker(settings)
    if args.run and not args.run.startswith("verify-"):
        raise ConfigError(f"run id {args.run!r} is not a verify run (verify-...); give one that `cmover status verify` "
                          "shows")
    run = runs.resolve(settings, PassKind.VERIFY.value, args.run)
    if run is None:
        print("no verify pass has been started")
        return EXIT_OK
    items, count = read_differences(run.run_id, limit=sys.maxsize if args.json else SHOWN)
    if args.json:
        # Paths as on the wire: a string, or {"b64": ...} for a name that is not UTF-8.
        doc: dict[str, Any] = {"run_id": run.run_id, "count": count, "differences": [d.as_dict() for d in items]}
        print(json.dumps(doc))
    else:
        print(f"run {run.run_id}: {count:,} difference(s)")
        print_differences(items, count)
    return EXIT_ITEMS_FAILED if count else EXIT_OK
