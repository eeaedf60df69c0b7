"""Journal-driven passes on the command line: ``--changes`` and ``cmover watch SRC``.

``--changes`` (copy, delete, dirtime, sync, start) replaces the walk by the changes recorded since the
start of the last pass of the same kind that completed with no failure over the same source root,
target root and start path (:mod:`cmover.core.cleanpasses`), when the journal proves it holds all of
them. The journal is the source's Lustre changelogs when the source is on Lustre
(:mod:`cmover.lustre.chjournal`, users named in CHANGELOG_USERS), else the fanotify journal of
``cmover watch`` (:mod:`cmover.journal.local`). When it cannot, ``--changes`` is one line and exit 2
(nothing written); ``--changes=auto`` says why in one line and walks. Every pass over a source that has a
journal records itself when it completes with no failure, so that the next one can start from it; over a
Lustre source with changelog users it records the last changelog index of every MDT read when it began,
and once recorded the MDTs may purge what every kind of pass of the tree has read; over a watched source the
segments of earlier watcher runs that every tree's last clean pass is past are removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cmover import lustre
from cmover.cli._common import load, note
from cmover.core.cleanpasses import (
    clean_of_source,
    clean_starts,
    last_clean,
    last_walk,
    lowest_marks,
    record_clean,
    record_walk,
)
from cmover.core.counters import C
from cmover.core.errors import EXIT_OK, ConfigError, PreflightError
from cmover.core.frozen import NamedTuple
from cmover.core.passes import DeleteOptions, PassKind, PassSpec
from cmover.core.paths import display, is_within
from cmover.core.settings import Settings
from cmover.engine.jobs import Job
from cmover.journal.store import has_journal
from cmover.lustre.detect import network_fs

if TYPE_CHECKING:  # imported where a journal is read: a pass over a source without one needs none of them
    from cmover.journal.base import Reading, Rename
    from cmover.lustre.chjournal import LustreJournal


def add_changes_option(p: argparse.ArgumentParser) -> None:
    # A bare --changes is rewritten to --changes=yes before parsing (changes_argv): with an optional value
    # argparse would take the SRC that follows it for its value.
    p.add_argument("--changes", metavar="auto", type=_changes_mode,
                   help="take the work from the change journal of SRC (`cmover watch SRC`) instead of walking the "
                   "trees; refused (exit 2) when the journal cannot prove it holds every change since the last "
                   "clean pass; --changes=auto walks instead, saying why")


def changes_argv(argv: list[str]) -> list[str]:
    """``argv`` with each bare ``--changes`` written ``--changes=yes`` (see :func:`add_changes_option`)."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            return out + argv[i:]
        out.append("--changes=yes" if a == "--changes" else a)
    return out


def _changes_mode(text: str) -> str:
    if text not in ("yes", "auto"):
        raise argparse.ArgumentTypeError(f"--changes={text!r}: the only value is auto")
    return text


#: The passes a journal can drive (verify always compares everything).
JOURNAL_PASSES = (PassKind.COPY, PassKind.DELETE, PassKind.DIRTIME)


class Journaled(NamedTuple):
    """A pass about to run: its spec, its jobs when a journal drives it (None: walked), its start instant."""

    spec: PassSpec
    jobs: list[Job] | None
    start_ns: int
    journal: bool  # the source has a journal: record the pass when it completes clean
    how: str  # with --changes: the journal's one line, or "full walk: REASON" (status shows it); else ""
    marks: dict[str, int]  # Lustre: MDT -> last changelog index read at the start (empty: none)
    changelogs: LustreJournal | None  # the Lustre source's changelogs, cleared after a clean pass


def prepare(kind: PassKind, spec: PassSpec, settings: Settings, mode: str | None) -> Journaled:
    """Decide how pass ``spec`` runs (see the module doc); ConfigError when ``--changes`` cannot be honoured."""
    now = time.time_ns()
    if kind not in JOURNAL_PASSES:
        if mode and kind is not PassKind.VERIFY:  # sync --verify --changes: the verify pass always walks
            raise ConfigError(f"--changes applies to the copy, delete and dirtime passes, not {kind.value}")
        return Journaled(spec, None, now, False, "", {}, None)
    found = lustre.get_changelogs(spec.src_root, dict(settings.changelog_users), settings.lustreapi)
    chl = None if found is None or isinstance(found, str) else found
    has = chl.configured if chl is not None else has_journal(settings.changes_path(), spec.src_root)
    if not mode:
        return _walking(settings, spec, now, has, chl=chl)
    return _driven(kind, spec, settings, mode, now, has, found, chl)


def _driven(kind: PassKind, spec: PassSpec, settings: Settings, mode: str, now: int, has: bool,
            found: LustreJournal | str | None, chl: LustreJournal | None) -> Journaled:
    """The rest of :func:`prepare` for a pass run with ``--changes``: the journal's changes, or why it walks."""
    from cmover.journal.base import Untrusted, touched
    from cmover.journal.local import LocalJournal

    try:
        if isinstance(found, str):
            raise Untrusted(found)
        kind_fs = network_fs(spec.src_root) if chl is None else None
        if kind_fs is not None:
            raise Untrusted(f"the source is on {kind_fs}, whose changes a local journal cannot see")
        if spec.leaves_entries_out:
            raise Untrusted("the pass leaves entries out (exclusions, age or size filter): it must walk")
        if kind is PassKind.DELETE and DeleteOptions.of(spec).max_delete:
            raise Untrusted("--max-delete needs the walk")
        clean = last_clean(settings.changes_path(), kind.value, spec.src_root, spec.dst_root, spec.start)
        if clean is None:
            raise Untrusted(f"no {kind.value} pass of {display(spec.src_root)} -> {display(spec.dst_root)} has "
                            "completed with no failure since the journal began")
        if kind is PassKind.DIRTIME:
            for other in (PassKind.COPY, PassKind.DELETE):
                walk = last_walk(settings.changes_path(), other.value, spec.src_root, spec.dst_root, spec.start)
                if walk is not None and walk.start_ns > clean.start_ns:
                    raise Untrusted(f"a {other.value} pass walked the trees since the last clean dirtime pass: "
                                    "it may have changed directories the journal does not name")
        reading: Reading
        if chl is not None:
            floor = lowest_marks(settings.changes_path(), tuple(k.value for k in JOURNAL_PASSES), spec.src_root,
                                 spec.dst_root, spec.start)
            reading = chl.read(clean.marks, floor)
        else:
            reading = LocalJournal(settings.changes_path(), spec.src_root).read(clean.start_ns)
        from cmover.engine.changeplan import plan_changes  # only a journal-driven pass needs them
        from cmover.engine.renames import replay

        t = touched(reading.changes, reading.resolve, spec.src_root, spec.start)
        driven = spec._replace(changes=True)
        plan = plan_changes(driven, t, reading.memo.setdefault("seen", {}))
        if kind is PassKind.COPY and t.renames:
            done = replay(driven, t, _read_by_later_passes(settings, spec, reading))
            plan.renamed, plan.not_renamed = len(done.done), done.not_replayed
    except Untrusted as exc:
        if mode != "auto":
            raise ConfigError(f"--changes: {exc}; run the pass without --changes (a full walk) or with "
                              "--changes=auto") from None
        note(f"full walk: {exc}")
        return _walking(settings, spec, now, has, f"full walk: {exc}", chl)
    except OSError as exc:
        if mode != "auto":
            raise ConfigError(f"--changes: the journal's directories cannot be resolved ({exc}); run the pass "
                              "without --changes") from None
        note(f"full walk: the journal's directories cannot be resolved ({exc})")
        return _walking(settings, spec, now, has, f"full walk: the journal's directories cannot be resolved ({exc})",
                        chl)
    line = plan.line(kind, t.records)
    note(line)
    return Journaled(driven, plan.jobs, reading.upto_ns, True, line, reading.marks, chl)


def _read_by_later_passes(settings: Settings, spec: PassSpec, reading: Reading) -> Callable[[Rename], bool]:
    """Whether the next journal-driven delete and dirtime passes of the tree read a rename's record (and so walk
    its new name in full), for every start path whose sub-tree holds the new name: their last clean pass began
    before the record (fanotify: the record's time is not before that pass's start; changelogs: its index is
    past that pass's mark of its MDT). A kind with no clean pass, or no mark of the MDT, walks next time."""
    marked = reading.source.startswith("changelog:")
    clean = [(start, rec) for kind in (PassKind.DELETE, PassKind.DIRTIME)
             for start, rec in clean_starts(settings.changes_path(), kind.value, spec.src_root, spec.dst_root)]

    def read(r: Rename) -> bool:
        for start, rec in clean:
            if start and not is_within(b"/" + r.new, b"/" + start):
                continue
            if marked and r.source in rec.marks and r.index <= rec.marks[r.source]:
                return False
            if not marked and r.time_ns < rec.start_ns:
                return False
        return True

    return read


def _walking(settings: Settings, spec: PassSpec, now: int, has: bool, how: str = "",
             chl: LustreJournal | None = None) -> Journaled:
    """A pass that walks; a copy or delete pass over a watched source records that it does (see
    :func:`cmover.core.cleanpasses.record_walk`). Over a Lustre source with changelog users, the last index
    of every MDT's changelog is read now, before the walk begins: the next journal reading starts after it."""
    if has and spec.kind in (PassKind.COPY, PassKind.DELETE):
        record_walk(settings.changes_path(), spec.kind.value, spec.src_root, spec.dst_root, spec.start,
                    spec.run_id, now)
    marks: dict[str, int] = {}
    if has and chl is not None:
        # From the furthest position a clean pass of the tree read (records before it may be purged already).
        since = lowest_marks(settings.changes_path(), tuple(k.value for k in JOURNAL_PASSES), spec.src_root,
                             spec.dst_root, spec.start, highest=True)
        from cmover.journal.base import Untrusted

        try:
            marks = chl.positions(since)
        except (Untrusted, OSError) as exc:
            note(f"changelog positions not recorded, the next --changes pass will walk: {exc}")
    return Journaled(spec, None, now, has, how, marks, chl)


def record_if_clean(settings: Settings, j: Journaled, state: str, totals: dict[str, int], failures: int) -> None:
    """Record pass ``j`` as the last clean one of its tree when it completed with nothing failed or left; over a
    Lustre source, then let the MDTs purge the records every kind of pass of the tree has read."""
    spec = j.spec
    if not j.journal or state != "complete" or failures or spec.leaves_entries_out:
        return
    if any(totals.get(c, 0) for c in (C.FAILED, C.DEAD, C.LINK_DEFERRED, C.CHANGED, C.DEL_LIMITED)):
        return
    if spec.kind is PassKind.DELETE and DeleteOptions.of(spec).dry_run:
        return
    record_clean(settings.changes_path(), spec.kind.value, spec.src_root, spec.dst_root, spec.start, spec.run_id,
                 j.start_ns, j.marks)
    if j.changelogs is not None and j.marks:
        upto = lowest_marks(settings.changes_path(), tuple(k.value for k in JOURNAL_PASSES), spec.src_root,
                            spec.dst_root, spec.start)
        for line in j.changelogs.clear(upto):
            note(line)
    elif j.changelogs is None:
        prune_segments(settings, spec.src_root)


def prune_segments(settings: Settings, src_root: bytes) -> list[str]:
    """Remove the fanotify journal segments of ``src_root`` that every tree's last clean pass is past
    (:func:`cmover.journal.store.prune`); their names. A failure to remove is one line, never an error."""
    from cmover.journal.local import LocalJournal
    from cmover.journal.store import prune

    passes = clean_of_source(settings.changes_path(), tuple(k.value for k in JOURNAL_PASSES), src_root)
    if not passes:
        return []
    journal = LocalJournal(settings.changes_path(), src_root)
    try:
        return prune(journal.directory, min(p.start_ns for p in passes))
    except OSError as exc:
        note(f"old journal segments of {display(src_root)} not removed: {exc}")
        return []


def add_watch_parser(sub: Any) -> None:
    w = sub.add_parser("watch", help="record every change of SRC's filesystem into a change journal (fanotify; "
                       "root), for passes run with --changes; runs until SIGTERM or Ctrl-C")
    w.add_argument("src", metavar="SRC")
    w.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                   help="how often the watcher writes its state (evidence that it runs); default 1")
    w.add_argument("--unlimited-queue", action="store_true",
                   help="no limit on the kernel's event queue (no overflow, unbounded kernel memory)")
    w.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    """``cmover watch SRC``: see :mod:`cmover.journal.watch`."""
    from cmover.journal.local import LocalJournal
    from cmover.journal.watch import Watcher

    settings = load(args, optional=True)
    src = os.fsencode(os.path.realpath(args.src))
    if not os.path.isdir(src):
        raise ConfigError(f"SRC {args.src} is not a directory; give the source root to watch")
    if not 0.05 <= args.heartbeat <= 60:
        raise ConfigError(f"--heartbeat {args.heartbeat} must be between 0.05 and 60 seconds")
    kind = network_fs(src)
    if kind is not None:
        raise ConfigError(f"SRC {args.src} is on {kind}: a local watcher does not see changes made on other nodes; "
                          "use the filesystem's own change log")
    journal = LocalJournal(settings.changes_path(), src)
    try:
        watcher = Watcher(src, journal.directory, heartbeat=args.heartbeat, unlimited=args.unlimited_queue)
    except OSError as exc:
        raise PreflightError(f"cannot watch {args.src}: {exc.strerror or exc} (needs root, Linux >= 5.17 and a "
                             "local filesystem that reports file handles)") from None
    print(f"cmover: watching {display(src)} into {watcher.writer.path}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watcher.run()
    print(f"cmover: watcher stopped after {watcher.events} events ({watcher.overflows} overflows)", file=sys.stderr)
    return EXIT_OK
