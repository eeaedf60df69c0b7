"""``cmover sync SRC DST``: the copy, delete and dirtime passes in order, in this process."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Any

from cmover.cli._common import load
from cmover.cli.passes import (
    check_jobs,
    exit_now,
    jobs_of,
    options_of,
    pass_distributed,
    pass_embedded,
    stop_on_signals,
)
from cmover.core.counters import C
from cmover.core.errors import EXIT_FATAL, EXIT_OK, CmoverError
from cmover.core.passes import PassKind


def cmd_sync(args: argparse.Namespace) -> int:
    """copy, delete, dirtime (and with ``--verify`` a verify pass) in order; stops at the first pass that fails.

    Embedded, the passes share one hub and one worker (:class:`cmover.embedded.runner.EmbeddedSession`);
    with a broker configured, each pass is started on it and waited for, as ``cmover PASS`` does. A second
    copy pass runs when the first one left work for "the next pass" (hard links to chunked files, files
    that changed while copied), so that the trees compare identical at the end.
    """
    settings = load(args, optional=True)  # a broken config is one line and exit 2 here, before any pass runs
    base = options_of(args)
    options = {
        PassKind.COPY: base._replace(dry_run=False, max_delete=0),
        PassKind.DELETE: base._replace(layout=None, restripe=None),
        PassKind.DIRTIME: base._replace(dry_run=False, max_delete=0, layout=None, restripe=None),
        PassKind.VERIFY: base._replace(dry_run=False, max_delete=0, layout=None, restripe=None),
    }
    steps = [PassKind.COPY, PassKind.DELETE, PassKind.DIRTIME]
    if args.verify:
        steps.append(PassKind.VERIFY)  # the proof at the end: exit 1 when anything differs
    if args.dry_run:
        steps = [PassKind.DELETE]  # a dry run only shows what the delete pass would remove
    embedded = not (settings.broker_configured and not args.embedded)
    from cmover.embedded.runner import EmbeddedSession

    copies = 0
    rc = EXIT_OK
    with contextlib.ExitStack() as stack:
        if embedded:
            stop = stop_on_signals(stack)
        else:
            stack.callback(signal.signal, signal.SIGHUP, signal.signal(signal.SIGHUP, signal.SIG_IGN))
        sessions: list[Any] = []

        def session() -> Any:
            if not sessions:
                sessions.append(stack.enter_context(EmbeddedSession(jobs_of(args, settings), settings)))
            return sessions[0]

        while steps:
            kind = steps.pop(0)
            totals: dict[str, int] = {}
            try:
                check_jobs(args)
                if embedded:
                    rc, totals = pass_embedded(kind, args, settings, options[kind], stop, session)
                else:
                    rc, totals = pass_distributed(kind, args, settings, options[kind])
            except CmoverError as exc:
                print(f"cmover: {exc}", file=sys.stderr)
                rc = EXIT_FATAL
            sys.stdout.flush()
            if rc != EXIT_OK:
                print(f"cmover sync: the {kind.value} pass exited with {rc}; later passes not run", file=sys.stderr)
                break
            if kind is PassKind.COPY:
                copies += 1
                if copies == 1 and (totals.get(C.LINK_DEFERRED) or totals.get(C.CHANGED)):
                    steps.insert(0, PassKind.COPY)
    exit_now(rc)
