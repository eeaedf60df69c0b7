"""The ``cmover`` command (and ``python cmover_control.py start|stop|status``).

Exit codes: 0 all good; 1 the pass finished but some items failed (they are listed); 2 bad input,
configuration or preflight failure (nothing was written); 3 the pass state is unknown (ledger lost);
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, NoReturn

from cmover import lustre
from cmover.errorlist import deleted_list
from cmover.errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    CmoverError,
    ConfigError,
    Failure,
)
from cmover.lustre.layout import POLICIES
from cmover.passes import PassKind
from cmover.paths import display
from cmover.planner import PassOptions, create_target_root, plan, preflight
from cmover.settings import Settings, from_mapping, load_settings
from cmover.stats import C

EXIT_UNKNOWN = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, as for every other bad input
        self.exit(EXIT_FATAL, f"cmover: {message}; see `{self.prog} --help`\n")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--oldest-date", type=float, metavar="SECONDS",
                   help="skip files whose atime is older than this many seconds (0: off; default OLDEST_DATE)")
    p.add_argument("--newest-date", type=float, metavar="SECONDS",
                   help="skip files modified less than this many seconds ago (0: off; default NEWEST_DATE)")
    p.add_argument("--exclude-file", metavar="FILE", help="file of path prefixes to leave out (default EXCLUDE_FILE)")
    p.add_argument("--batch", type=int, metavar="N", help="entries per file task (default BATCH)")
    p.add_argument("--chunk-threshold", type=_size, metavar="SIZE",
                   help="copy files of this size or more in chunks, e.g. 1G (0: never; default CHUNK_THRESHOLD)")
    p.add_argument("--chunk-size", type=_size, metavar="SIZE", help="bytes per chunk, e.g. 256M (default CHUNK_SIZE)")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """A byte count with an optional binary suffix: 4096, 64K, 256M, 1G, 2T (KiB, MiB... also accepted)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = int(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 0, 4096, 64K, 256M, 1G)") from None
    return value * _UNITS[unit]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cmover", description="Clone very large filesystems: copy, then delete and dirtime passes.")
    p.add_argument("--config", metavar="FILE", help="config.py to use (default $CMOVER_CONFIG or ./config.py)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    helps = {
        "copy": "copy SRC to DST: what differs is copied, directories created",
        "delete": "delete pass: remove DST entries whose SRC counterpart is gone (final pass)",
        "dirtime": "dirtime pass: set DST directory atime/mtime from SRC (last of all)",
        "sync": "copy, delete and dirtime in that order: DST becomes identical to SRC",
    }
    for name, text in helps.items():
        c = sub.add_parser(name, help=text + " (embedded on this machine when no broker is configured)")
        c.add_argument("src", metavar="SRC")
        c.add_argument("dst", metavar="DST")
        c.add_argument("-j", "--jobs", type=int, default=0, help="pool processes (default LOCAL_JOBS or 2 x cores)")
        c.add_argument("--embedded", action="store_true", help="run on this machine even when a broker is configured")
        c.add_argument("-q", "--quiet", action="store_true", help="no live progress")
        c.add_argument("--json", action="store_true", help="print the summary as JSON")
        _filters(c)
        if name in ("copy", "sync"):
            _lustre_options(c)
        if name in ("delete", "sync"):
            _delete_options(c)

    s = sub.add_parser("start", help="start a pass on the broker for the configured source_mount/target_mount")
    s.add_argument("pass_", metavar="PASS", choices=[k.value for k in PassKind], nargs="?", default="copy",
                   help="copy (default), delete or dirtime")
    s.add_argument("subpath", nargs="?", default="", help="start at this directory below source_mount")
    s.add_argument("--wait", action="store_true", help="block until the pass is complete and print its summary")
    s.add_argument("--json", action="store_true")
    _filters(s)
    _lustre_options(s)
    _delete_options(s)

    st = sub.add_parser("status", help="each pass: running, paused or complete, queues, counts, rates, nodes, "
                        "errors and what is left")
    st.add_argument("pass_", metavar="PASS", nargs="?", choices=[k.value for k in PassKind],
                    help="copy, delete or dirtime (default: every pass that has been started)")
    st.add_argument("--run", help="a run id (default: the pass's current run)")
    st.add_argument("--json", action="store_true", help="machine-readable: one object (PASS or --run given) or "
                    '{"passes": [...]}')
    st.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                    help="refresh the view live every SECONDS (default 2) until Ctrl-C")

    e = sub.add_parser("errors", help="list the failures recorded by a distributed pass")
    e.add_argument("pass_", metavar="PASS", nargs="?", default="copy")
    e.add_argument("--run", help="a run id (default: the pass's current run)")
    e.add_argument("--json", action="store_true", help="every field: path, op, errno, message, side, worker, time")

    rf = sub.add_parser("retry-failed", help="run the failed items of a distributed pass again (after fixing the "
                        "cause); they leave the error list, what fails again is listed again")
    rf.add_argument("pass_", metavar="PASS", nargs="?", default="copy", choices=[k.value for k in PassKind])
    rf.add_argument("--run", help="a run id (default: the pass's current run)")
    rf.add_argument("--no-wait", action="store_true", help="publish the retries and return")
    rf.add_argument("--json", action="store_true", help="print the summary as JSON")

    d = sub.add_parser("deleted", help="list what a distributed delete pass deleted (or would delete: --dry-run)")
    d.add_argument("--run", help="a run id (default: the current delete run)")

    sub.add_parser("stop", help="shut the workers down gracefully (running tasks finish)")

    pa = sub.add_parser("pause", help="workers stop taking new tasks of PASS; running ones finish (see resume)")
    pa.add_argument("pass_", metavar="PASS", nargs="?", default="copy", choices=[k.value for k in PassKind],
                    help="copy (default), delete or dirtime")
    pa.add_argument("--node", metavar="NODE", help="pause only this worker (e.g. w1@host; default: every worker)")
    pa.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="wait up to this long for the running tasks of PASS to finish (default 60)")
    pa.add_argument("--no-wait", action="store_true", help="return without waiting for the running tasks")
    re_ = sub.add_parser("resume", help="paused workers take tasks of PASS again, where the pass stopped")
    re_.add_argument("pass_", metavar="PASS", nargs="?", default="copy", choices=[k.value for k in PassKind],
                     help="copy (default), delete or dirtime")
    re_.add_argument("--node", metavar="NODE", help="resume only this worker (default: every paused worker)")
    po = sub.add_parser("pool", help="grow or shrink the pool of every worker (or of NODE) by N processes")
    po.add_argument("action", choices=["grow", "shrink"])
    po.add_argument("n", type=int, metavar="N", help="how many pool processes to add or take away")
    po.add_argument("node", metavar="NODE", nargs="?", help="only this worker (default: every worker)")

    li = sub.add_parser("lustre-info", help="what cmover sees of PATH: Lustre or not, fsname, OSTs/MDTs, layout")
    li.add_argument("path", metavar="PATH")
    li.add_argument("--json", action="store_true")

    ex = sub.add_parser("exporter", help="Prometheus endpoint: serve the counters and queue depths of every "
                        "pass's current run over HTTP, in the foreground until SIGTERM")
    ex.add_argument("--listen", metavar="HOST", help="address to listen on (default 127.0.0.1: the endpoint has "
                    "no authentication, so only this machine can scrape until you choose; 0.0.0.0 or :: for every "
                    "interface)")
    ex.add_argument("--port", type=int, metavar="PORT", help="TCP port to listen on (default 9477)")
    return p


def _lustre_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=POLICIES, help="Lustre layout of new files and directory defaults: keep "
                   "(count, size, pool, PFL), classic (count < 16 kept, else all OSTs) or target-default "
                   "(default LUSTRE_LAYOUT)")
    p.add_argument("--restripe", action="store_true", default=None,
                   help="also rewrite identical files whose layout differs from what --layout gives "
                        "(default LUSTRE_RESTRIPE)")


def _load(args: argparse.Namespace, *, optional: bool = False) -> Settings:
    from cmover import app as appmod

    try:
        settings = load_settings(args.config)
    except ConfigError:
        if optional and not args.config and not os.environ.get("CMOVER_CONFIG"):
            return from_mapping({})  # embedded copy needs no config file
        raise
    appmod.install_settings(settings)  # the Celery app must use the same file (broker, memcached)
    return settings


def _delete_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="delete pass: list and count what would be deleted, "
                   "delete nothing")
    p.add_argument("--max-delete", type=int, default=0, metavar="N",
                   help="delete pass: stop deleting after N entries and report it (default: no limit)")


def _options(args: argparse.Namespace) -> PassOptions:
    return PassOptions(oldest_date=args.oldest_date, newest_date=args.newest_date,
                       exclude_file=args.exclude_file, batch=args.batch,
                       chunk_threshold=args.chunk_threshold, chunk_size=args.chunk_size,
                       dry_run=getattr(args, "dry_run", False), max_delete=getattr(args, "max_delete", 0),
                       layout=getattr(args, "layout", None), restripe=getattr(args, "restripe", None))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def summary_lines(kind: str, state: str, totals: dict[str, int], seconds: float) -> list[str]:
    t = {k: int(v) for k, v in totals.items()}
    entries = t.get(C.SCANNED, 0) + t.get(C.DIRS, 0)
    secs = max(seconds, 1e-9)
    if kind == PassKind.DELETE.value:
        return [
            f"cmover delete: {state} in {seconds:.1f} s",
            f"  scanned   {t.get(C.DIRS, 0):,} target dirs, {t.get(C.SCANNED, 0):,} other entries; "
            f"{t.get(C.KEPT, 0):,} present on the source",
            f"  deleted   {t.get(C.DELETED, 0):,} entries ({t.get(C.DIRS_DELETED, 0):,} directories)"
            + (f"; would delete {t.get(C.WOULD_DELETE, 0):,} entries ({t.get(C.DIRS_WOULD_DELETE, 0):,} "
               "directories) -- dry run" if t.get(C.WOULD_DELETE) else "")
            + (f"; {t.get(C.DEL_LIMITED, 0):,} left because --max-delete was reached" if t.get(C.DEL_LIMITED) else ""),
            f"  failed    {t.get(C.FAILED, 0):,} (nothing is deleted under a failed directory); "
            f"{t.get(C.VANISHED, 0):,} vanished",
        ]
    if kind == PassKind.DIRTIME.value:
        return [
            f"cmover dirtime: {state} in {seconds:.1f} s",
            f"  dirs      {t.get(C.DIRS, 0):,} visited, {t.get(C.DIRTIMES, 0):,} times set, "
            f"{t.get(C.DIRS_MISSING, 0):,} missing on one side, {t.get(C.FAILED, 0):,} failed",
        ]
    lines = [
        f"cmover {kind}: {state} in {seconds:.1f} s",
        f"  dirs      {t.get(C.DIRS, 0):,} processed, {t.get(C.DIRS_CREATED, 0):,} created",
        f"  files     {t.get(C.SCANNED, 0):,} scanned, {t.get(C.COPIED, 0):,} copied, "
        f"{t.get(C.META, 0):,} metadata updated, {t.get(C.LINKED, 0):,} hard-linked, {t.get(C.SKIPPED, 0):,} skipped, "
        f"{t.get(C.FAILED, 0):,} failed" + (f" ({t[C.RETRIED]:,} taken by retry-failed)" if t.get(C.RETRIED) else ""),
        f"  left out  {t.get(C.FILTERED, 0):,} by age filters, {t.get(C.EXCLUDED, 0):,} excluded, "
        f"{t.get(C.SOCKETS, 0):,} sockets; {t.get(C.CHANGED, 0):,} changed during copy, "
        f"{t.get(C.VANISHED, 0):,} vanished",
        f"  bytes     {_fmt_bytes(t.get(C.BYTES, 0))} ({_fmt_bytes(t.get(C.BYTES, 0) / secs)}/s)",
        f"  rate      {entries / secs:,.0f} entries/s",
    ]
    if t.get(C.CHUNKED, 0):
        lines.insert(3, f"  huge      {t[C.CHUNKED]:,} files copied in {t.get(C.CHUNKS, 0):,} chunks")
    lustre_line = _lustre_summary(t)
    if lustre_line:
        lines.append(lustre_line)
    if t.get(C.LINK_DEFERRED, 0):
        lines.append(f"  note      {t[C.LINK_DEFERRED]:,} hard links to chunked files are made by the next copy pass")
    return lines


def _lustre_summary(t: dict[str, int]) -> str:
    """The Lustre line of a copy summary; empty when nothing was done with layouts or MDTs."""
    keys = (C.LAYOUTS_SET, C.LAYOUT_MISMATCH, C.DIRS_PLACED, C.MDT_MISMATCH, C.RESTRIPED)
    if not any(t.get(k) for k in keys):
        return ""
    line = f"  lustre    {t.get(C.LAYOUTS_SET, 0):,} layouts set, {t.get(C.DIRS_PLACED, 0):,} directories placed " \
        "on MDTs"
    if t.get(C.RESTRIPED):
        line += f", {t[C.RESTRIPED]:,} files restriped"
    if t.get(C.LAYOUT_MISMATCH) or t.get(C.MDT_MISMATCH):
        line += (f"; not as asked: {t.get(C.LAYOUT_MISMATCH, 0):,} layouts, {t.get(C.MDT_MISMATCH, 0):,} placements "
                 "(target defaults kept; the log names the first case)")
    return line


def _print_failures(failures: list[Any], count: int) -> None:
    if not count:
        return
    print(f"Failed items ({count:,}):", file=sys.stderr)
    for f in failures:
        print(f"  {f.line()}", file=sys.stderr)
    if count > len(failures):
        print(f"  ... and {count - len(failures):,} more (see the log)", file=sys.stderr)


class _Progress:
    """Live progress on a terminal (rich): files, bytes, dirs and rates."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.live: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def update(self, totals: dict[str, int], seconds: float) -> None:
        if not self.live:
            return
        from rich.table import Table

        secs = max(seconds, 1e-9)
        t = totals
        tab = Table.grid(padding=(0, 2))
        tab.add_row("elapsed", f"{seconds:,.1f} s")
        tab.add_row("dirs", f"{t.get(C.DIRS, 0):,}", f"{t.get(C.DIRS, 0) / secs:,.0f}/s")
        tab.add_row("files", f"{t.get(C.SCANNED, 0):,} scanned, {t.get(C.COPIED, 0):,} copied, "
                    f"{t.get(C.SKIPPED, 0):,} skipped, {t.get(C.FAILED, 0):,} failed",
                    f"{t.get(C.SCANNED, 0) / secs:,.0f}/s")
        tab.add_row("bytes", _fmt_bytes(t.get(C.BYTES, 0)), f"{_fmt_bytes(t.get(C.BYTES, 0) / secs)}/s")
        self.live.update(tab)

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.__exit__(None, None, None)


def cmd_pass(args: argparse.Namespace) -> int:
    """``cmover copy|delete|dirtime SRC DST``: embedded, or on the broker when one is configured."""
    kind = PassKind(args.command)
    settings = _load(args, optional=True)
    if args.jobs < 0:
        raise ConfigError(f"--jobs {args.jobs} must be >= 0")
    if settings.broker_configured and not args.embedded:
        return _pass_distributed(kind, args, settings)
    spec = plan(kind, settings, args.src, args.dst, options=_options(args))
    preflight(spec, create_target=True)
    if kind is PassKind.COPY:
        create_target_root(spec)
        _say_layouts(spec, settings)
    jobs = args.jobs or settings.local_jobs or 2 * (os.cpu_count() or 1)
    from cmover.local import run_embedded

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with _Progress(sys.stderr.isatty() and not args.quiet and not args.json) as progress:
            result = run_embedded(spec, jobs, on_progress=progress.update, stop_event=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    deleted = result.extra.get("deleted")
    rc = _report(kind.value, result.state, result.totals, result.seconds, result.failures, result.failure_count,
                 args.json, spec.run_id, deleted=deleted if isinstance(deleted, tuple) else None)
    # The embedded worker's threads would take another second to wind down after the work is done;
    # everything is reported and flushed, so leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def cmd_sync(args: argparse.Namespace) -> int:
    """copy, delete, dirtime in order, each as its own ``cmover`` run; stops at the first pass that fails.

    A second copy pass runs when the first one left work for "the next pass" (hard links to chunked
    files, files that changed while copied), so that the trees compare identical at the end.
    """
    common = [*(["--config", args.config] if args.config else []), *(["-v"] * args.verbose)]
    opts: list[str] = []
    if args.jobs:
        opts += ["-j", str(args.jobs)]
    for flag in ("embedded", "quiet", "json"):
        if getattr(args, flag):
            opts.append("--" + flag)
    for name in ("oldest_date", "newest_date", "exclude_file", "batch", "chunk_threshold", "chunk_size"):
        v = getattr(args, name)
        if v is not None:
            opts += ["--" + name.replace("_", "-"), str(v)]
    del_opts = (["--dry-run"] if args.dry_run else []) + (["--max-delete", str(args.max_delete)]
                                                           if args.max_delete else [])
    copy_opts = (["--layout", args.layout] if args.layout else []) + (["--restripe"] if args.restripe else [])
    steps = [("copy", copy_opts), ("delete", del_opts), ("dirtime", [])]
    if args.dry_run:
        steps = [("delete", del_opts)]  # a dry run only shows what the delete pass would remove
    copies = 0
    while steps:
        name, extra = steps.pop(0)
        cmd = [sys.executable, "-m", "cmover", *common, name, *opts, *extra, args.src, args.dst]
        if name == "copy" and not args.json:
            cmd.append("--json")  # read its totals; printed as a summary below
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        out = proc.stdout
        data: dict[str, Any] = {}
        if name == "copy":
            try:
                data = json.loads(out)
            except ValueError:
                pass
        if name == "copy" and not args.json and data:
            print("\n".join(summary_lines("copy", data["state"], data["totals"], data["seconds"])))
            _print_failures([Failure.from_dict(d) for d in data["failures"]], data["failure_count"])
        else:
            print(out, end="")
        sys.stdout.flush()
        if proc.returncode != EXIT_OK:
            print(f"cmover sync: the {name} pass exited with {proc.returncode}; later passes not run",
                  file=sys.stderr)
            return proc.returncode
        if name == "copy":
            copies += 1
            totals = data.get("totals", {})
            if copies == 1 and (totals.get(C.LINK_DEFERRED) or totals.get(C.CHANGED)):
                steps.insert(0, ("copy", copy_opts))
    return EXIT_OK


def _report(kind: str, state: str, totals: dict[str, int], seconds: float, failures: list[Any], count: int,
            as_json: bool, run_id: str, deleted: tuple[list[Any], int] | None = None) -> int:
    if as_json:
        doc: dict[str, Any] = {"run_id": run_id, "pass": kind, "state": state, "seconds": round(seconds, 3),
                               "totals": totals, "failures": [f.as_dict() for f in failures], "failure_count": count}
        if deleted is not None:
            doc["deleted"] = [display(d.path) for d in deleted[0]]
            doc["deleted_count"] = deleted[1]
        print(json.dumps(doc))
    else:
        if deleted is not None:
            _print_deleted(*deleted, dry_run=bool(totals.get(C.WOULD_DELETE)) or not totals.get(C.DELETED))
        print("\n".join(summary_lines(kind, state, totals, seconds)))
        _print_failures(failures, count)
    if state == "interrupted":
        return EXIT_INTERRUPTED
    if state == "unknown":
        return EXIT_UNKNOWN
    # Entries left by --max-delete are work not done: a script must notice, as for failed items.
    # Failures taken by retry-failed are settled: only what is still on the error list counts.
    open_failures = totals.get(C.FAILED, 0) - totals.get(C.RETRIED, 0)
    return EXIT_ITEMS_FAILED if count or open_failures > 0 or totals.get(C.DEL_LIMITED, 0) else EXIT_OK


def _print_deleted(items: list[Any], count: int, *, dry_run: bool) -> None:
    verb = "would delete" if dry_run else "deleted"
    for d in items:
        print(f"{verb}: {display(d.path)}")
    if count > len(items):
        print(f"... and {count - len(items):,} more (see `cmover deleted`)")


def _pass_distributed(kind: PassKind, args: argparse.Namespace, settings: Settings) -> int:
    from cmover import control

    spec = plan(kind, settings, args.src, args.dst, options=_options(args))
    _confine_to_mounts(spec, settings)
    preflight(spec)
    _warn_if_busy(settings, kind)
    control.start(settings, spec)
    if kind is PassKind.COPY:
        _say_layouts(spec, settings)
    return _wait_and_report(settings, spec.kind.value, spec.run_id, args.json)


def _say_layouts(spec: Any, settings: Settings) -> None:
    """Once, at the start of a copy pass: how Lustre layouts and MDT placement are handled (or why not)."""
    line = lustre.describe(spec.src_root, spec.dst_root, spec.layout, settings.lustreapi)
    if spec.mdt_list:
        line += "; first-level directories on MDTs " + ",".join(str(m) for m in spec.mdt_list)
    print(f"cmover: {line}", file=sys.stderr)


def _warn_if_busy(settings: Settings, kind: PassKind) -> None:
    """The dirtime pass must run last: warn when copy or delete work is still queued or running."""
    if kind is not PassKind.DIRTIME:
        return
    from cmover import control

    for other in ("copy", "delete"):
        try:
            st = control.status(settings, other)
        except CmoverError:
            continue
        if st.state == "running" or any(st.queues.values()):
            print(f"cmover: warning: the {other} pass still has work queued or running ({st.run_id or 'no run'}); "
                  "directory times set now may be changed again by it", file=sys.stderr)


def _confine_to_mounts(spec: Any, settings: Settings) -> None:
    from cmover.paths import is_within

    if not settings.source_mount or not settings.target_mount:
        raise ConfigError("source_mount and target_mount must be set in config.py for a distributed pass")
    if not is_within(spec.src_root, os.fsencode(settings.source_mount)) or \
            not is_within(spec.dst_root, os.fsencode(settings.target_mount)):
        raise ConfigError("SRC/DST must lie inside source_mount/target_mount of config.py for a distributed "
                          "pass (workers refuse anything else); use --embedded to copy elsewhere")


def _wait_and_report(settings: Settings, kind: str, run_id: str, as_json: bool) -> int:
    from cmover import control

    with _Progress(sys.stderr.isatty() and not as_json) as progress:
        st = control.wait(settings, kind, run_id, on_progress=lambda s: progress.update(s.totals, s.seconds))
    failures, count = control.errors(settings, run_id)
    deleted = control.errors(settings, deleted_list(run_id)) if kind == PassKind.DELETE.value else None
    return _report(kind, st.state, st.totals, st.seconds, failures, count, as_json, run_id, deleted=deleted)


def cmd_start(args: argparse.Namespace) -> int:
    from cmover import control

    settings = _load(args)
    if not settings.broker_configured:
        raise ConfigError("no broker configured (rabbitmq/rabbitmq.conf is missing); write the broker host into "
                          "it, or copy on this machine with `cmover copy SRC DST`")
    if not settings.source_mount or not settings.target_mount:
        raise ConfigError("source_mount and target_mount must be set in config.py")
    spec = plan(PassKind(args.pass_), settings, settings.source_mount, settings.target_mount, args.subpath,
                _options(args))
    preflight(spec)
    _warn_if_busy(settings, spec.kind)
    control.start(settings, spec)
    if spec.kind is PassKind.COPY:
        _say_layouts(spec, settings)
    if not args.wait:
        print(f"started {spec.kind.value} pass {spec.run_id} at {os.fsdecode(spec.src_root)}/"
              f"{os.fsdecode(spec.start)} -> {os.fsdecode(spec.dst_root)}")
        return EXIT_OK
    return _wait_and_report(settings, spec.kind.value, spec.run_id, args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from cmover import control

    settings = _load(args)
    kind = args.pass_ or (args.run.split("-", 1)[0] if args.run else None)
    if args.run and kind not in [k.value for k in PassKind]:
        raise ConfigError(f"run id {args.run!r} does not start with a pass name (copy-..., delete-..., dirtime-...); "
                          "give the pass too: cmover status PASS --run ID")
    kinds = [kind] if kind else [k.value for k in PassKind]
    if args.watch is not None and args.watch <= 0:
        raise ConfigError(f"--watch {args.watch} must be a positive number of seconds")

    def read() -> list[Any]:
        got = [control.status(settings, k, args.run) for k in kinds]
        return got if kind else [st for st in got if st.state != "none"]

    if args.watch is not None:
        return _watch_status(read, args.watch)
    sts = read()
    if args.json:
        print(json.dumps(sts[0].as_dict() if kind else {"passes": [st.as_dict() for st in sts]}))
    elif not sts or sts[0].state == "none":
        print(f"no {kind or ''}{' ' if kind else ''}pass has been started")
    else:
        from rich.console import Console

        Console(highlight=False, soft_wrap=True).print(*[_status_view(st) for st in sts])
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
                body = [_status_view(st) for st in sts] or [Text("no pass has been started")]
                live.update(Group(stamp, *body), refresh=True)
                time.sleep(every)
    except KeyboardInterrupt:
        return EXIT_OK


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _status_view(st: Any) -> Any:
    """One pass's status as a rich renderable: state line, queues, totals, rates, errors, estimate, nodes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if st.state == "none":
        return Text(f"{st.kind}: no pass has been started")
    style = {"running": "bold green", "paused": "bold yellow", "complete": "bold", "unknown": "bold red"}
    took = f"ran for {_duration(st.seconds)}" if st.state == "complete" else f"started {_duration(st.seconds)} ago"
    head = Text.assemble((f"{st.kind} ", "bold"), (st.state, style.get(st.state, "")), f"  run {st.run_id}, {took}")
    rows = Table.grid(padding=(0, 2))
    rows.add_row("queues", ", ".join(f"{q} {n:,}" for q, n in st.queues.items())
                 + f"; outstanding tasks {'unknown' if st.outstanding is None else f'{st.outstanding:,}'}")
    for line in summary_lines(st.kind, st.state, st.totals, st.seconds)[1:]:
        label, rest = (re.split(r"\s{2,}", line.strip(), maxsplit=1) + [""])[:2]  # labels may hold one space
        rows.add_row(label, rest)
    r = st.rates
    if st.state in ("running", "paused"):
        rows.add_row("rates", f"{r.get(C.DIRS, 0):,.0f} dirs/s, {r.get(C.SCANNED, 0):,.0f} files scanned/s, "
                     f"{r.get(C.COPIED, 0):,.0f} copied/s, {_fmt_bytes(r.get(C.BYTES, 0))}/s, "
                     f"{r.get(C.DELETED, 0):,.0f} deleted/s, {r.get(C.DIRTIMES, 0):,.0f} dir times/s "
                     "(last minute)")
    errors, retried = int(st.totals.get(C.FAILED, 0)), int(st.totals.get(C.RETRIED, 0))
    rows.add_row("errors", f"{errors:,} so far" + (f", {retried:,} taken by retry-failed" if retried else "")
                 + (f"; {st.open_errors:,} listed by `cmover errors {st.kind}`" if st.open_errors else "")
                 + (f"; {st.dead_letters:,} message(s) in cmover.{st.kind}.dead" if st.dead_letters else ""))
    e = st.estimate
    if e:
        left = f"~{_duration(e['seconds_left'])} at the current rate" if e["seconds_left"] is not None else \
            "no rate yet"
        rows.add_row("left", f"{e['dirs_processed']:,} of {e['dirs_discovered']:,} directories found so far are "
                     f"done ({100 * e['fraction_done']:.0f}%); {e['dirs_left']:,} to go, {left} (more may be found)")
    parts: list[Any] = [head, rows]
    if st.nodes:
        t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for col in ("node", "processes", "active", "dirs", "files", "copied", "bytes", "files/s", "bytes/s",
                    "last report"):
            t.add_column(col, justify="left" if col == "node" else "right")
        for n in st.nodes:
            tot, rt = n["totals"], n["rates"]
            t.add_row(n["host"], str(n["processes"]), str(n["active"]), f"{tot.get(C.DIRS, 0):,}",
                      f"{tot.get(C.SCANNED, 0):,}", f"{tot.get(C.COPIED, 0):,}", _fmt_bytes(tot.get(C.BYTES, 0)),
                      f"{rt.get(C.SCANNED, 0):,.0f}", f"{_fmt_bytes(rt.get(C.BYTES, 0))}/s",
                      f"{n['last_report_s']:.0f} s ago")
        parts.append(t)
    return Group(*parts, Text(""))


def cmd_errors(args: argparse.Namespace) -> int:
    from cmover import control

    settings = _load(args)
    control.check_broker(settings)
    run_id = args.run
    if run_id is None:
        info = control.current_run(settings, args.pass_)
        if info is None:
            print(f"no {args.pass_} pass has been started")
            return EXIT_OK
        run_id = info["spec"]["run_id"]
    failures, count = control.errors(settings, run_id)
    if args.json:
        print(json.dumps({"run_id": run_id, "count": count, "failures": [f.as_dict() for f in failures]}, indent=1))
        return EXIT_OK
    for f in failures:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.at)) if f.at else "?"
        print(f"{f.line()}  [{f.worker or '?'} {when}]")
    print(f"{count:,} failure(s) in {run_id}", file=sys.stderr)
    return EXIT_OK


def cmd_retry_failed(args: argparse.Namespace) -> int:
    """``cmover retry-failed [PASS]``: publish the failed items again under the same run, then wait."""
    from cmover import control

    settings = _load(args)
    if not settings.broker_configured:
        raise ConfigError("retry-failed works on distributed passes (no broker is configured); an embedded pass "
                          "is retried by running it again: it copies only what differs")
    spec, plan = control.retry_failed(settings, args.pass_, args.run)
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
    return _wait_and_report(settings, spec.kind.value, spec.run_id, args.json)


def cmd_deleted(args: argparse.Namespace) -> int:
    from cmover import control

    settings = _load(args)
    control.check_broker(settings)
    run_id = args.run
    if run_id is None:
        info = control.current_run(settings, PassKind.DELETE.value)
        if info is None:
            print("no delete pass has been started")
            return EXIT_OK
        run_id = info["spec"]["run_id"]
    items, count = control.errors(settings, deleted_list(run_id))
    for d in items:
        print(display(d.path))
    print(f"{count:,} entries in the deletion list of {run_id}", file=sys.stderr)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from cmover import control

    settings = _load(args)
    control.check_broker(settings)
    control.stop()
    print("shutdown sent: workers finish their running tasks, then exit; queued work stays on the broker")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    from cmover import control, steer

    settings = _load(args)
    control.check_broker(settings)
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
    from cmover import control, steer

    settings = _load(args)
    control.check_broker(settings)
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
    from cmover import control, steer

    settings = _load(args)
    control.check_broker(settings)
    resize = steer.pool_grow if args.action == "grow" else steer.pool_shrink
    answers = resize(args.n, args.node)
    for a in answers:
        print(f"{a.node}: {a.message}", file=sys.stdout if a.ok else sys.stderr)
    return EXIT_OK if all(a.ok for a in answers) else EXIT_FATAL


def cmd_lustre_info(args: argparse.Namespace) -> int:
    """``cmover lustre-info PATH``: the administrator's first diagnostic of the Lustre layer."""
    settings = _load(args, optional=True)
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
    """``cmover exporter [--listen HOST] [--port PORT]``: the Prometheus endpoint (:mod:`cmover.exporter`)."""
    from cmover import exporter

    settings = _load(args)
    return exporter.run(settings, exporter.DEFAULT_LISTEN if args.listen is None else args.listen,
                        exporter.DEFAULT_PORT if args.port is None else args.port)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = {"copy": cmd_pass, "delete": cmd_pass, "dirtime": cmd_pass, "sync": cmd_sync, "start": cmd_start,
               "status": cmd_status, "errors": cmd_errors, "retry-failed": cmd_retry_failed,
               "deleted": cmd_deleted, "stop": cmd_stop, "pause": cmd_pause, "resume": cmd_resume, "pool": cmd_pool,
               "lustre-info": cmd_lustre_info, "exporter": cmd_exporter}[args.command]
    t0 = time.monotonic()
    try:
        return handler(args)
    except CmoverError as exc:
        print(f"cmover: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print(f"cmover: interrupted after {time.monotonic() - t0:.1f} s", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
