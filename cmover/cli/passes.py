"""The pass commands: ``cmover copy|delete|dirtime|sync SRC DST`` (embedded, or on the broker when one is
configured) and ``cmover start [PASS]`` (a distributed pass on the configured mounts).

An embedded pass (and ``sync``) ignores SIGHUP while it runs, so closing its terminal does not kill it;
Ctrl-C or SIGTERM stops it: the running tasks finish, the pool and the hub are torn down, exit 130. A
distributed pass is seeded on the broker and, unless ``start`` is not told to ``--wait``, waited for.
Either way the summary (or JSON) and the exit code come from :func:`report`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from cmover import lustre
from cmover.cli import verify as verify_cli
from cmover.cli._common import EXIT_UNKNOWN, collect_from_now, load, note, say_unknown
from cmover.cli.changes import add_changes_option, prepare, record_if_clean
from cmover.cli.render import Progress, print_deleted, print_failures, summary_lines
from cmover.core import privileges
from cmover.core.counters import C
from cmover.core.deletion import Deletion
from cmover.core.difference import Difference
from cmover.core.errors import (
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    CmoverError,
    ConfigError,
    FatalError,
)
from cmover.core.passes import PassKind, PassSpec
from cmover.core.policies import HSM_POLICIES, POLICIES
from cmover.core.settings import Settings
from cmover.core.sizes import parse_size
from cmover.engine import cleanrecord
from cmover.engine.planner import PassOptions, create_target_root, plan, preflight


def add_parsers(sub: Any, sync: Callable[[argparse.Namespace], int]) -> None:
    """The parsers of copy, delete, dirtime, sync and start, in that order (``sub``: the subparsers action).

    ``sync`` runs ``cmover sync`` (:func:`cmover.cli.sync.cmd_sync`); it is passed in because the sync
    command is built on this module's pass functions, so this module cannot import it."""
    helps = {
        "copy": "copy the contents of SRC into DST (created if missing; its parent must exist): what differs is "
                "copied",
        "delete": "delete pass: remove DST entries whose SRC counterpart is gone (final pass)",
        "dirtime": "dirtime pass: set DST directory atime/mtime from SRC (last of all)",
        "sync": "copy, delete and dirtime in that order: DST becomes identical to SRC",
        "verify": "verify pass: compare DST with SRC entry by entry, reading only (exit 0 identical, 1 different)",
    }
    for name, text in helps.items():
        c = sub.add_parser(name, help=text + " (embedded on this machine when no broker is configured)")
        c.add_argument("src", metavar="SRC")
        c.add_argument("dst", metavar="DST")
        c.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                       help="pool processes of an embedded run; 0 (the default): LOCAL_JOBS, or when that is 0 too, "
                       "one per core (two per core when SRC or DST is on a network filesystem: Lustre, NFS...)")
        c.add_argument("--embedded", action="store_true", help="run on this machine even when a broker is configured")
        c.add_argument("-q", "--quiet", action="store_true", help="no live progress")
        c.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "sync":
            c.set_defaults(func=sync)
        else:  # cmd_pass turns the collector on once it has imported its mode's modules
            c.set_defaults(func=cmd_pass, collects_later=True)
        _filter_options(c)
        _map_options(c)
        if name in ("copy", "sync"):
            _lustre_options(c)
        if name in ("delete", "sync"):
            _delete_options(c)
        if name == "sync":
            c.add_argument("--verify", action="store_true", help="end with a verify pass (its options below)")
        if name in ("verify", "sync"):
            verify_cli.add_options(c)
        if name != "verify":
            add_changes_option(c)

    s = sub.add_parser("start", help="start a pass on the broker for the configured source_mount/target_mount")
    s.add_argument("pass_", metavar="PASS", choices=[k.value for k in PassKind], nargs="?", default="copy",
                   help="copy (default), delete, dirtime or verify")
    s.add_argument("subpath", nargs="?", default="", help="start at this directory below source_mount")
    s.add_argument("--wait", action="store_true", help="block until the pass is complete and print its summary")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_start)
    _filter_options(s)
    _map_options(s)
    _lustre_options(s)
    _delete_options(s)
    verify_cli.add_options(s)
    add_changes_option(s)


def _filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--oldest-date", type=float, metavar="SECONDS",
                   help="skip files whose atime is older than this many seconds (0: off; default OLDEST_DATE)")
    p.add_argument("--newest-date", type=float, metavar="SECONDS",
                   help="skip files modified less than this many seconds ago (0: off; default NEWEST_DATE)")
    p.add_argument("--exclude-file", metavar="FILE", help="file of path prefixes to leave out (default EXCLUDE_FILE)")
    p.add_argument("--max-size", type=_size, metavar="SIZE",
                   help="skip regular files larger than SIZE, e.g. 10G (0: no limit; default MAX_SIZE)")
    p.add_argument("--min-size", type=_size, metavar="SIZE",
                   help="skip regular files smaller than SIZE, e.g. 4K (0: no limit; default MIN_SIZE)")
    p.add_argument("--batch", type=int, metavar="N", help="entries per file task (default BATCH)")
    p.add_argument("--chunk-threshold", type=_size, metavar="SIZE",
                   help="copy files of this size or more in chunks, e.g. 1G (0: never; default CHUNK_THRESHOLD)")
    p.add_argument("--chunk-size", type=_size, metavar="SIZE", help="bytes per chunk, e.g. 256M (default CHUNK_SIZE)")
    p.add_argument("--full-compare", action="store_true",
                   help="copy pass: compare every entry's attributes in full, whatever the last clean pass proves")


def _map_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--usermap", metavar="MAP", help="write uid FROM as TO on the target: FROM:TO[,FROM:TO...] "
                   "(numeric ids), @FILE or a file of one FROM:TO per line (default UID_MAP; not with UID_MAP set)")
    p.add_argument("--groupmap", metavar="MAP", help="the same for gids (default GID_MAP; not with GID_MAP set)")


def _size(text: str) -> int:
    """A byte count with an optional binary suffix (:func:`cmover.core.sizes.parse_size`): 4096, 64K, 1G."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def _lustre_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=POLICIES, help="Lustre layout of new files and directory defaults: keep "
                   "(count, size, pool, PFL), classic (count < 16 kept, else all OSTs) or target-default "
                   "(default LUSTRE_LAYOUT)")
    p.add_argument("--restripe", action="store_true", default=None,
                   help="also rewrite identical files whose layout differs from what --layout gives "
                        "(default LUSTRE_RESTRIPE)")
    p.add_argument("--hsm", choices=HSM_POLICIES,
                   help="HSM-released files of a Lustre source: import (stubs bound to the same archive, no data "
                        "read), recall (read, restored by the copytool) or skip (listed, left out); "
                        "default HSM_POLICY")


def _delete_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="delete pass: list and count what would be deleted, "
                   "delete nothing")
    p.add_argument("--max-delete", type=int, default=0, metavar="N",
                   help="delete pass: stop deleting after N entries and report it (default: no limit)")


def options_of(args: argparse.Namespace) -> PassOptions:
    return PassOptions(oldest_date=args.oldest_date, newest_date=args.newest_date,
                       exclude_file=args.exclude_file, batch=args.batch,
                       min_size=args.min_size, max_size=args.max_size,
                       chunk_threshold=args.chunk_threshold, chunk_size=args.chunk_size,
                       dry_run=getattr(args, "dry_run", False), max_delete=getattr(args, "max_delete", 0),
                       layout=getattr(args, "layout", None), restripe=getattr(args, "restripe", None),
                       hsm=getattr(args, "hsm", None), usermap=args.usermap, groupmap=args.groupmap,
                       verify=verify_cli.options_of(args), full_compare=getattr(args, "full_compare", False))


def cmd_pass(args: argparse.Namespace) -> int:
    """``cmover copy|delete|dirtime SRC DST``: embedded, or on the broker when one is configured."""
    kind = PassKind(args.command)
    settings = load(args, optional=True)
    check_jobs(args)
    # The mode's modules (a third of a pass's imports) are imported before the cyclic collector runs again
    # (collect_from_now), and frozen with the rest: about 1 ms of an embedded pass (alternated pairs).
    if settings.broker_configured and not args.embedded:
        import cmover.ops.start
        import cmover.ops.status  # noqa: F401 (the wait's)

        collect_from_now()
        exit_now(pass_distributed(kind, args, settings)[0])
    from cmover.embedded.runner import EmbeddedSession

    collect_from_now()
    with contextlib.ExitStack() as stack:
        stop = stop_on_signals(stack)
        rc, _ = pass_embedded(kind, args, settings, options_of(args), stop,
                              lambda: stack.enter_context(EmbeddedSession(jobs_of(args, settings), settings)))
    exit_now(rc)


def check_jobs(args: argparse.Namespace) -> None:
    if args.jobs < 0:
        raise ConfigError(f"--jobs {args.jobs} must be >= 0")


def jobs_of(args: argparse.Namespace, settings: Settings) -> int:
    """Pool processes of an embedded run: -j, else LOCAL_JOBS, else :func:`default_jobs` for this machine's cores
    and the filesystems of SRC and DST (each asked once, with ``statfs``)."""
    if args.jobs or settings.local_jobs:
        return int(args.jobs or settings.local_jobs)
    from cmover.lustre.detect import network_fs

    remote = any(network_fs(os.fsencode(root)) for root in (args.src, args.dst))
    return default_jobs(os.cpu_count() or 1, remote)


def default_jobs(cores: int, remote: bool) -> int:
    """Pool processes of an embedded run by default (pure): one per core, or two when SRC or DST is on a network
    filesystem (``remote``: Lustre, NFS...), where every metadata call leaves its process waiting for a server.
    On local disks a pass keeps its cores busy with as many: measured on 2 cores, 2 processes against 4, no-change
    passes of 20,000 and 100,000 files 4% and 3% faster, full copies into a new XFS as fast."""
    return 2 * cores if remote else cores


def stop_on_signals(stack: contextlib.ExitStack) -> threading.Event:
    """An event set by Ctrl-C or SIGTERM while ``stack`` is open; SIGHUP ignored meanwhile (cli.output).

    Both stop an embedded pass the same way (a batch system ending the job, `kill`): running tasks finish,
    the pool and the hub are torn down, the summary says "interrupted" (exit 130).
    """
    stop = threading.Event()
    for signum, handler in ((signal.SIGINT, lambda *_: stop.set()), (signal.SIGTERM, lambda *_: stop.set()),
                            (signal.SIGHUP, signal.SIG_IGN)):
        stack.callback(signal.signal, signum, signal.signal(signum, handler))
    return stop


def pass_embedded(kind: PassKind, args: argparse.Namespace, settings: Settings, options: PassOptions,
                  stop: threading.Event, session: Any) -> tuple[int, dict[str, int]]:
    """Plan, check and run one pass of ``session()`` (an EmbeddedSession, started on first call: after the
    preflight, so a refused pass starts nothing); print its report; return the exit code and the totals."""
    spec = plan(kind, settings, args.src, args.dst, options=options)
    preflight(spec, create_target=True)
    made = False  # the target root created here: its names need no lookup (a pass from a sub-path creates its own)
    if kind is PassKind.COPY:
        made = create_target_root(spec) and not spec.start
        _say_layouts(spec, settings, args.verbose)
    verify_cli.prepare(spec)
    j = prepare(kind, spec, settings, getattr(args, "changes", None))
    # Once, before the worker forks its pool (which then never says it again), and only for a copy.
    privileges.announce(lambda line: note(line, logging.WARNING) if kind is PassKind.COPY else None)
    _say_maps(spec)
    running = session()
    with Progress(sys.stderr.isatty() and not args.quiet and not args.json) as progress:
        result = running.run(j.spec, on_progress=progress.update, stop_event=stop, jobs=j.jobs,
                             made=made and j.jobs is None)
    if j.jobs is None:  # a journal-driven pass looked at changed entries only: it proves nothing of the rest
        cleanrecord.record(settings, spec, result.state, result.failure_count, result.totals)
    record_if_clean(settings, j, result.state, result.totals, result.failure_count)
    deleted = result.extra.get("deleted")
    differences = result.extra.get("differences")
    verify_cli.finish(kind.value, spec.run_id, result.state, _manifest_of(spec), result.totals)
    rc = report(kind.value, result.state, result.totals, result.seconds, result.failures, result.failure_count,
                args.json, spec.run_id, deleted=deleted if isinstance(deleted, tuple) else None,
                differences=differences if isinstance(differences, tuple) else None)
    return rc, result.totals


def _manifest_of(spec: Any) -> str:
    from cmover.core.passes import VerifyOptions

    return VerifyOptions.of(spec).manifest if spec.kind is PassKind.VERIFY else ""


def exit_now(rc: int) -> NoReturn:
    """Leave at once after a pass, its output flushed. Embedded, its pool and hub are gone already;
    distributed, the command's broker connection is closed first (the broker sees a client leave, not a
    lost one). A normal exit would then only finalize modules and threads: 30 ms after a distributed pass
    (measured), for nothing."""
    broker = sys.modules.get("cmover.ops.broker")  # loaded only by a command that talked to the broker
    if broker is not None:
        broker.close()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def report(kind: str, state: str, totals: dict[str, int], seconds: float, failures: list[Any], count: int,
           as_json: bool, run_id: str, deleted: tuple[list[Deletion], int] | None = None,
           differences: tuple[list[Difference], int] | None = None) -> int:
    """Print the result of a pass (summary and lists, or one JSON document) and return its exit code."""
    if as_json:
        doc: dict[str, Any] = {"run_id": run_id, "pass": kind, "state": state, "seconds": round(seconds, 3),
                               "totals": totals, "failures": [f.as_dict() for f in failures], "failure_count": count}
        if deleted is not None:
            doc["deleted"] = [d.line() for d in deleted[0]]
            doc["deleted_count"] = deleted[1]
        if differences is not None:
            doc["differences"] = [d.as_dict() for d in differences[0]]
            doc["difference_count"] = differences[1]
        print(json.dumps(doc))
    else:
        if deleted is not None:
            print_deleted(*deleted, dry_run=bool(totals.get(C.WOULD_DELETE)) or not totals.get(C.DELETED))
        if differences is not None:
            verify_cli.print_differences(*differences)
        print("\n".join(summary_lines(kind, state, totals, seconds)))
        print_failures(failures, count)
    if state == "interrupted":
        return EXIT_INTERRUPTED
    if state == "unknown":
        return EXIT_UNKNOWN
    # Entries left by --max-delete are work not done: a script must notice, as for failed items.
    # Failures taken by retry-failed are settled: only what is still on the error list counts.
    open_failures = totals.get(C.FAILED, 0) - totals.get(C.RETRIED, 0)
    # A verify that found differences says so as failed items do: the trees are not identical.
    found = totals.get(C.DIFFERENCES, 0) or (differences is not None and differences[1])
    return EXIT_ITEMS_FAILED if count or open_failures > 0 or totals.get(C.DEL_LIMITED, 0) or found else EXIT_OK


def pass_distributed(kind: PassKind, args: argparse.Namespace, settings: Settings,
                     options: PassOptions | None = None) -> tuple[int, dict[str, int]]:
    """Start one pass on the broker and wait for it; print its report; return the exit code and the totals."""
    from cmover.ops.start import start

    spec = plan(kind, settings, args.src, args.dst, options=options or options_of(args))
    _confine_to_mounts(spec, settings)
    preflight(spec)
    _warn_if_busy(settings, kind)
    verify_cli.prepare(spec)
    j = prepare(kind, spec, settings, getattr(args, "changes", None))
    start(settings, j.spec, j.jobs, j.how)
    if kind is PassKind.COPY:
        _say_layouts(spec, settings, args.verbose)
    _say_maps(spec)
    rc, totals = wait_and_report(settings, spec.kind.value, spec.run_id, args.json, _manifest_of(spec),
                                 spec if j.jobs is None else None)
    record_if_clean(settings, j, "complete" if rc == EXIT_OK else "not clean", totals, 0)
    return rc, totals


def _say_maps(spec: Any) -> None:
    """Once, at the start of a pass with identity maps: how many ids they translate (a map is never silent)."""
    if spec.idmap:
        note(f"identity maps: {spec.idmap.describe()} (owners and ACL entries written as mapped)")


def _say_layouts(spec: Any, settings: Settings, verbose: int) -> None:
    """Once, at the start of a copy pass: how Lustre layouts and MDT placement are handled (or why not).

    Said when it matters -- the source or the target is on Lustre (also with -q: a Lustre copy without
    layouts is worth knowing) -- or when asked with -v; a copy between other filesystems says nothing.
    """
    lib = settings.lustreapi
    if not (verbose or lustre.probe(spec.src_root, lib).lustre or lustre.probe(spec.dst_root, lib).lustre):
        return
    line = lustre.describe(spec.src_root, spec.dst_root, spec.layout, lib)
    if spec.mdt_list:
        line += "; first-level directories on MDTs " + ",".join(str(m) for m in spec.mdt_list)
    note(line)
    hsm = lustre.get_hsm(spec.src_root, spec.dst_root, lib)
    if hsm is not None:
        what = {"import": "released files imported as stubs bound to their archive, archived files marked",
                "recall": "released files read (the copytool restores each one)",
                "skip": "released files left out and listed"}[spec.hsm]
        note(f"Lustre HSM: {spec.hsm}: {what}; `cmover hsm-rebind-list --run {spec.run_id}` lists the files to "
             "rebind" + ("" if hsm[1] or spec.hsm != "import" else "; the target is not Lustre: released and "
                         "archived files will fail, use --hsm recall or skip"))


def _warn_if_busy(settings: Settings, kind: PassKind) -> None:
    """The dirtime pass must run last: warn when copy or delete work is still queued or running."""
    if kind is not PassKind.DIRTIME:
        return
    from cmover.ops.status import status

    for other in ("copy", "delete"):
        try:
            st = status(settings, other)
        except CmoverError:
            continue
        if st.state == "running" or any(st.queues.values()):
            note(f"warning: the {other} pass still has work queued or running ({st.run_id or 'no run'}); "
                 "directory times set now may be changed again by it", logging.WARNING)


def _confine_to_mounts(spec: Any, settings: Settings) -> None:
    from cmover.core.paths import is_within

    if not settings.source_mount or not settings.target_mount:
        raise ConfigError("source_mount and target_mount must be set in config.py for a distributed pass")
    if not is_within(spec.src_root, os.fsencode(settings.source_mount)) or \
            not is_within(spec.dst_root, os.fsencode(settings.target_mount)):
        raise ConfigError("SRC/DST must lie inside source_mount/target_mount of config.py for a distributed "
                          "pass (workers refuse anything else); use --embedded to copy elsewhere")


def wait_and_report(settings: Settings, kind: str, run_id: str, as_json: bool,
                    manifest_dir: str = "", spec: PassSpec | None = None) -> tuple[int, dict[str, int]]:
    """Wait for run ``run_id`` of pass ``kind`` (live progress on a terminal), then :func:`report` it.

    ``spec``: the pass as this command planned it; a copy pass that completed clean is then recorded in
    STATE_DIR (:mod:`cmover.engine.cleanrecord`).

    When its state is unknown, the error and deletion lists may be unreadable too (the broker is down):
    it is reported without them.
    """
    from cmover.ops.broker import read_deleted, read_differences, read_list
    from cmover.ops.status import PassStatus, wait

    said_stalled = False

    def on_progress(s: PassStatus) -> None:
        nonlocal said_stalled
        progress.update(s.totals, s.seconds)
        if s.state == "running" and s.note and not said_stalled:  # said once: the wait goes on (STALLED_AFTER)
            said_stalled = True
            note(s.note, logging.WARNING)

    with Progress(sys.stderr.isatty() and not as_json) as progress:
        st = wait(settings, kind, run_id, on_progress=on_progress)
    if st.state == "unknown":
        say_unknown(st)
    try:
        failures, count = read_list(run_id)
        deleted = read_deleted(run_id) if kind == PassKind.DELETE.value else None
        differences = read_differences(run_id, verify_cli.SHOWN) if kind == PassKind.VERIFY.value else None
    except FatalError as exc:
        if st.state != "unknown":
            raise
        print(f"cmover: {exc}", file=sys.stderr)
        failures, count, deleted, differences = [], 0, None, None
    verify_cli.finish(kind, run_id, st.state, manifest_dir, st.totals)
    if spec is not None:
        cleanrecord.record(settings, spec, st.state, count, st.totals)
    return report(kind, st.state, st.totals, st.seconds, failures, count, as_json, run_id, deleted=deleted,
                  differences=differences), st.totals


def cmd_start(args: argparse.Namespace) -> int:
    """``cmover start [PASS] [SUBPATH]``: seed a distributed pass on the configured mounts."""
    from cmover.ops.start import start

    if args.changes and args.pass_ == PassKind.VERIFY.value:
        raise ConfigError("--changes applies to the copy, delete and dirtime passes; a verify pass compares "
                          "everything: drop --changes")
    settings = load(args)
    if not settings.broker_configured:
        raise ConfigError("no broker configured (rabbitmq/rabbitmq.conf is missing); write the broker host into "
                          "it, or copy on this machine with `cmover copy SRC DST`")
    if not settings.source_mount or not settings.target_mount:
        raise ConfigError("source_mount and target_mount must be set in config.py")
    spec = plan(PassKind(args.pass_), settings, settings.source_mount, settings.target_mount, args.subpath,
                options_of(args))
    if _manifest_of(spec) and not args.wait:
        raise ConfigError("--manifest needs --wait: the shards are merged into the manifest when the pass is "
                          "complete; add --wait")
    preflight(spec)
    _warn_if_busy(settings, spec.kind)
    verify_cli.prepare(spec)
    j = prepare(spec.kind, spec, settings, getattr(args, "changes", None))
    start(settings, j.spec, j.jobs, j.how)
    if spec.kind is PassKind.COPY:
        _say_layouts(spec, settings, args.verbose)
    _say_maps(spec)
    if not args.wait:
        print(f"started {spec.kind.value} pass {spec.run_id} at {os.fsdecode(spec.src_root)}/"
              f"{os.fsdecode(spec.start)} -> {os.fsdecode(spec.dst_root)}")
        exit_now(EXIT_OK)
    rc, totals = wait_and_report(settings, spec.kind.value, spec.run_id, args.json, _manifest_of(spec),
                                 spec if j.jobs is None else None)
    # Only a pass waited for is recorded as clean: nobody sees the end of one started without --wait.
    record_if_clean(settings, j, "complete" if rc == EXIT_OK else "not clean", totals, 0)
    exit_now(rc)

