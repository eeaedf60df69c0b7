"""The operator commands of distributed runs -- status, errors, deleted, retry-failed, stop, pause, resume, pool,
exporter -- and ``lustre-info``, the first diagnostic of the Lustre layer.

Each command that works on "the pass's current run unless --run names one" lets
:func:`cmover.ops.runs.resolve` decide which run that is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from cmover import lustre
from cmover.cli._common import EXIT_UNKNOWN, load
from cmover.cli.render import status_lines, status_view
from cmover.core.errors import EXIT_FATAL, EXIT_ITEMS_FAILED, EXIT_OK, ConfigError
from cmover.core.passes import PassKind
from cmover.core.paths import display

PASSES = [k.value for k in PassKind]


def add_parsers(sub: Any) -> None:
    """The parsers of status, errors, retry-failed, deleted, stop, pause, resume, pool, lustre-info and exporter,
    in that order (``sub``: the subparsers action)."""
    st = sub.add_parser("status", help="each pass: running, paused or complete, queues, counts, rates, nodes, "
                        "errors and what is left")
    st.add_argument("pass_", metavar="PASS", nargs="?", choices=[k.value for k in PassKind],
                    help="copy, delete or dirtime (default: every pass that has been started)")
    st.add_argument("--run", help="a run id (default: the pass's current run)")
    st.add_argument("--json", action="store_true", help="machine-readable: one object (PASS or --run given) or "
                    '{"passes": [...]}')
    st.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                    help="refresh the view live every SECONDS (default 2) until Ctrl-C")
    st.set_defaults(func=cmd_status)

    e = sub.add_parser("errors", help="list the failures recorded by a distributed pass")
    e.add_argument("pass_", metavar="PASS", nargs="?", default="copy")
    e.add_argument("--run", help="a run id (default: the pass's current run)")
    e.add_argument("--json", action="store_true", help="every field: path, op, errno, message, side, worker, time")
    e.set_defaults(func=cmd_errors)

    rf = sub.add_parser("retry-failed", help="run the failed items of a distributed pass again (after fixing the "
                        "cause); they leave the error list, what fails again is listed again")
    rf.add_argument("pass_", metavar="PASS", nargs="?", default="copy", choices=[k.value for k in PassKind])
    rf.add_argument("--run", help="a run id (default: the pass's current run)")
    rf.add_argument("--no-wait", action="store_true", help="publish the retries and return")
    rf.add_argument("--json", action="store_true", help="print the summary as JSON")
    rf.set_defaults(func=cmd_retry_failed)

    df = sub.add_parser("differences", help="list what a distributed verify pass found different (path, category, "
                        "source value, target value); exit 1 when there is any")
    df.add_argument("--run", help="a run id (default: the current verify run)")
    df.add_argument("--json", action="store_true", help="one object: run_id, count, differences (every field)")
    df.set_defaults(func=_cmd_differences)

    d = sub.add_parser("deleted", help="list what a distributed delete pass deleted (or would delete: --dry-run)")
    d.add_argument("--run", help="a run id (default: the current delete run)")
    d.set_defaults(func=cmd_deleted)

    sub.add_parser("stop", help="shut the workers down gracefully (running tasks finish)").set_defaults(func=cmd_stop)

    pa = sub.add_parser("pause", help="workers stop taking new tasks of PASS; running ones finish (see resume)")
    pa.add_argument("pass_", metavar="PASS", nargs="?", default="copy", choices=[k.value for k in PassKind],
                    help="copy (default), delete or dirtime")
    pa.add_argument("--node", metavar="NODE", help="pause only this worker (e.g. w1@host; default: every worker)")
    pa.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="wait up to this long for the running tasks of PASS to finish (default 60)")
    pa.add_argument("--no-wait", action="store_true", help="return without waiting for the running tasks")
    pa.set_defaults(func=cmd_pause)
    re_ = sub.add_parser("resume", help="paused workers take tasks of PASS again, where the pass stopped")
    re_.add_argument("pass_", metavar="PASS", nargs="?", default="copy", choices=[k.value for k in PassKind],
                     help="copy (default), delete or dirtime")
    re_.add_argument("--node", metavar="NODE", help="resume only this worker (default: every paused worker)")
    re_.set_defaults(func=cmd_resume)
    po = sub.add_parser("pool", help="grow or shrink the pool of every worker (or of NODE) by N processes")
    po.add_argument("action", choices=["grow", "shrink"])
    po.add_argument("n", type=int, metavar="N", help="how many pool processes to add or take away")
    po.add_argument("node", metavar="NODE", nargs="?", help="only this worker (default: every worker)")
    po.set_defaults(func=cmd_pool)

    li = sub.add_parser("lustre-info", help="what cmover sees of PATH: Lustre or not, fsname, OSTs/MDTs, layout")
    li.add_argument("path", metavar="PATH")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_lustre_info)

    ex = sub.add_parser("exporter", help="Prometheus endpoint: serve the counters and queue depths of every "
                        "pass's current run over HTTP, in the foreground until SIGTERM")
    ex.add_argument("--listen", metavar="HOST", help="address to listen on (default 127.0.0.1: the endpoint has "
                    "no authentication, so only this machine can scrape until you choose; 0.0.0.0 or :: for every "
                    "interface)")
    ex.add_argument("--port", type=int, metavar="PORT", help="TCP port to listen on (default 9477)")
    ex.set_defaults(func=cmd_exporter)


def _cmd_differences(args: argparse.Namespace) -> int:
    from cmover.cli.verify import cmd_differences

    return cmd_differences(args)


def cmd_status(args: argparse.Namespace) -> int:
    """``cmover status``: styled and fitted to the width on a terminal, plain text otherwise (see status_lines)."""
    from cmover.ops.broker import check_broker
    from cmover.ops.status import status

    settings = load(args)
    kind = args.pass_ or (args.run.split("-", 1)[0] if args.run else None)
    if args.run and kind not in PASSES:
        raise ConfigError(f"run id {args.run!r} does not start with a pass name (copy-..., delete-..., dirtime-...); "
                          "give the pass too: cmover status PASS --run ID")
    kinds = [kind] if kind else PASSES
    if args.watch is not None and args.watch <= 0:
        raise ConfigError(f"--watch {args.watch} must be a positive number of seconds")

    def read() -> list[Any]:
        got = [status(settings, k, args.run) for k in kinds]
        if all(st.state == "none" for st in got):
            check_broker(settings)  # nothing to report on: a broker that cannot be reached is what to fix
        return got if kind else [st for st in got if st.state != "none"]

    if args.watch is not None:
        return _watch_status(read, args.watch)
    sts = read()
    if args.json:
        doc = {**sts[0].as_dict(), "config": settings.config_path} if kind else \
            {"config": settings.config_path, "passes": [st.as_dict() for st in sts]}
        print(json.dumps(doc))
    elif not sts or sts[0].state == "none":
        print(f"no {kind or ''}{' ' if kind else ''}pass has been started")
    elif sys.stdout.isatty():
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
        console.print(*[status_view(st, console.width) for st in sts])
    else:
        print("\n".join(line for st in sts for line in [*status_lines(st, None), ""]))
    worst = EXIT_UNKNOWN if any(st.state == "unknown" for st in sts) else EXIT_OK
    return worst


def _watch_status(read: Any, every: float) -> int:
    """Redraw the status of the passes every ``every`` seconds until Ctrl-C (exit 0)."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    console = Console(highlight=False)
    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                sts = read()
                stamp = Text(time.strftime("%H:%M:%S") + f"  (every {every:g} s, Ctrl-C to leave)", style="dim")
                body = [status_view(st, console.width) for st in sts] or [Text("no pass has been started")]
                live.update(Group(stamp, *body), refresh=True)
                time.sleep(every)
    except KeyboardInterrupt:
        return EXIT_OK


def _list_of(args: argparse.Namespace, kind: str, *, deletions: bool = False) -> tuple[str, list[Any], int] | None:
    """The run a listing command means (:func:`cmover.ops.runs.resolve`) and its error list, or its deletion list:
    ``(run id, first records, count)``; None when no run of pass ``kind`` was started (nor named)."""
    from cmover.ops import runs
    from cmover.ops.broker import check_broker, read_deleted, read_list

    settings = load(args)
    check_broker(settings)
    run = runs.resolve(settings, kind, args.run)
    if run is None:
        return None
    return run.run_id, *(read_deleted(run.run_id) if deletions else read_list(run.run_id))


def cmd_errors(args: argparse.Namespace) -> int:
    """``cmover errors [PASS] [--run ID]``: the failures on the run's error list, oldest first."""
    got = _list_of(args, args.pass_)
    if got is None:
        print(f"no {args.pass_} pass has been started")
        return EXIT_OK
    run_id, failures, count = got
    if args.json:
        print(json.dumps({"run_id": run_id, "count": count, "failures": [f.as_dict() for f in failures]}, indent=1))
        return EXIT_OK
    for f in failures:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.at)) if f.at else "?"
        print(f"{f.line()}  [{f.worker or '?'} {when}]")
    print(f"{count:,} failure(s) in {run_id}", file=sys.stderr)
    return EXIT_OK


def cmd_deleted(args: argparse.Namespace) -> int:
    """``cmover deleted [--run ID]``: what the delete run deleted (or would delete), one path a line."""
    got = _list_of(args, PassKind.DELETE.value, deletions=True)
    if got is None:
        print("no delete pass has been started")
        return EXIT_OK
    run_id, items, count = got
    for d in items:
        print(d.line())
    print(f"{count:,} entries in the deletion list of {run_id}", file=sys.stderr)
    return EXIT_OK


def cmd_retry_failed(args: argparse.Namespace) -> int:
    """``cmover retry-failed [PASS]``: publish the failed items again under the same run, then wait."""
    from cmover.cli.passes import wait_and_report
    from cmover.ops.retry import retry_failed

    settings = load(args)
    if not settings.broker_configured:
        raise ConfigError("retry-failed works on distributed passes (no broker is configured); an embedded pass "
                          "is retried by running it again: it copies only what differs")
    spec, plan = retry_failed(settings, args.pass_, args.run)
    for f in plan.gone:
        where = "target" if spec.kind is PassKind.DELETE else "source"
        print(f"not retried (no longer on the {where}): {display(f.path)}", file=sys.stderr)
    for f in plan.unusable:
        print(f"not retried (not a path below the pass root; kept on the list): {f.line()}", file=sys.stderr)
    if not plan.jobs:
        print(f"nothing to retry in {spec.run_id}"
              + (f" ({len(plan.gone):,} record(s) dropped)" if plan.gone else ""), file=sys.stderr)
        return EXIT_OK if not plan.unusable else EXIT_ITEMS_FAILED
    print(f"retrying {plan.retried:,} failed item(s) of {spec.run_id} in {len(plan.jobs):,} task(s)", file=sys.stderr)
    if args.no_wait:
        return EXIT_OK
    return wait_and_report(settings, spec.kind.value, spec.run_id, args.json)[0]


def cmd_stop(args: argparse.Namespace) -> int:
    """``cmover stop``: warm shutdown of every worker of the site."""
    from cmover.ops.broker import check_broker, stop

    settings = load(args)
    check_broker(settings)
    stop()
    print("shutdown sent: workers finish their running tasks, then exit; queued work stays on the broker")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    """``cmover pause [PASS] [--node NODE]``: workers stop taking tasks of PASS; waits for the running ones."""
    from cmover.ops import steer
    from cmover.ops.broker import check_broker

    settings = load(args)
    check_broker(settings)
    rep = steer.pause(settings, args.pass_, args.node)
    kind = rep.kind
    if rep.paused:
        print(f"paused {kind} on " + ", ".join(f"{n} ({', '.join(qs)})" for n, qs in sorted(rep.paused.items())))
    else:
        print(f"paused {kind}: no worker{' ' + rep.node if rep.node else ''} consumes it now")
    if rep.silent:
        print(f"cmover: no answer from {', '.join(rep.silent)}: they may still take {kind} tasks", file=sys.stderr)
    if rep.node is None:
        print(f"workers that start now do not consume {kind} either, until `cmover resume {kind}`")
    if args.no_wait:
        return EXIT_OK
    left = steer.wait_idle(kind, rep.workers, timeout=max(args.timeout, 0.0))
    if left:
        print(f"{left} {kind} task(s) still running after {args.timeout:g} s; they finish on their own")
    else:
        print(f"no {kind} task is running")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """``cmover resume [PASS] [--node NODE]``: paused workers take tasks of PASS again."""
    from cmover.ops import steer
    from cmover.ops.broker import check_broker

    settings = load(args)
    check_broker(settings)
    rep = steer.resume(settings, args.pass_, args.node)
    where = f" on {rep.node}" if rep.node else ""
    if not rep.was_paused:
        print(f"{rep.kind} was not paused{where}; nothing to resume")
        return EXIT_OK
    if rep.resumed:
        print(f"resumed {rep.kind} on " + ", ".join(f"{n} ({', '.join(qs)})" for n, qs in rep.resumed.items()))
    else:
        print(f"resumed {rep.kind}{where}: workers that start consume it again")
    if rep.silent:
        print(f"cmover: no answer from {', '.join(rep.silent)} (stopped?): they consume {rep.kind} again when "
              "they start", file=sys.stderr)
    return EXIT_OK


def cmd_pool(args: argparse.Namespace) -> int:
    """``cmover pool grow|shrink N [NODE]``: resize the worker pools; exit 2 when a worker refused."""
    from cmover.ops import steer
    from cmover.ops.broker import check_broker

    settings = load(args)
    check_broker(settings)
    resize = steer.pool_grow if args.action == "grow" else steer.pool_shrink
    answers = resize(args.n, args.node)
    for a in answers:
        print(f"{a.node}: {a.message}", file=sys.stdout if a.ok else sys.stderr)
    return EXIT_OK if all(a.ok for a in answers) else EXIT_FATAL


def cmd_lustre_info(args: argparse.Namespace) -> int:
    """``cmover lustre-info PATH``: the administrator's first diagnostic of the Lustre layer."""
    settings = load(args, optional=True)
    path = os.fsencode(os.path.abspath(args.path))
    if not os.path.lexists(path):
        raise ConfigError(f"{args.path} does not exist; give a file or directory to inspect")
    try:
        info, layout, mdt = lustre.path_layout(path, settings.lustreapi)
    except OSError as exc:
        raise ConfigError(f"cannot read the layout of {args.path}: {exc.strerror}; check permissions") from None
    if args.json:
        print(json.dumps({
            "path": os.fsdecode(path), "lustre": info.lustre, "handled": info.handled, "fsname": info.fsname,
            "mount": os.fsdecode(info.mount) if info.mount else None, "ost_count": info.ost_count,
            "mdt_count": info.mdt_count, "mdt_index": mdt, "note": info.note,
            "layout": None if layout is None else {
                "composite": layout.composite, "mirror_count": layout.mirror_count,
                "components": [{"start": c.start, "end": c.end, "stripe_count": c.stripe_count,
                                "stripe_size": c.stripe_size, "pattern": c.pattern, "pool": c.pool,
                                "flags": c.flags, "osts": list(c.ost_indices)} for c in layout.components]},
        }, indent=2))
        return EXIT_OK
    rows = [("path", os.fsdecode(path)),
            ("lustre", "yes" if info.lustre else "no"),
            ("handled", ("yes: " if info.handled else "no: ") + info.note)]
    if info.handled:
        rows += [("fsname", str(info.fsname)), ("mount", os.fsdecode(info.mount or b"")),
                 ("OSTs", str(info.ost_count)), ("MDTs", str(info.mdt_count)), ("MDT index", str(mdt)),
                 ("layout", layout.describe() if layout is not None else "-")]
    for k, v in rows:
        print(f"{k:<10} {v}")
    return EXIT_OK


def cmd_exporter(args: argparse.Namespace) -> int:
    """``cmover exporter [--listen HOST] [--port PORT]``: the Prometheus endpoint (:mod:`cmover.ops.exporter`)."""
    from cmover.ops import exporter

    settings = load(args)
    return exporter.run(settings, exporter.DEFAULT_LISTEN if args.listen is None else args.listen,
                        exporter.DEFAULT_PORT if args.port is None else args.port)

