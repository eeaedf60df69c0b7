"""How the ``cmover`` command shows a pass: summaries, failure and deletion lists, live progress, status views.

Everything here formats what it is given and writes it to stdout or stderr; nothing reads the site.
A status view (:func:`status_lines`) is plain text with two or more spaces between label and value, so
``awk -F '  +'`` splits it; on a terminal (:func:`status_view`) it is fitted to the width and styled.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from cmover.core.counters import C
from cmover.core.deletion import Deletion
from cmover.core.passes import PassKind

if TYPE_CHECKING:
    from cmover.ops.status import PassStatus


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


#: A summary shows a pass's average rates only when they mean something: the pass ran at least
#: RATE_MIN_SECONDS and moved at least RATE_MIN_BYTES (the bytes rate) or handled RATE_MIN_ENTRIES
#: entries, files and directories (the entries rate). A tiny pass (one file in 0.1 s) shows none.
RATE_MIN_SECONDS = 1.0
RATE_MIN_BYTES = 1 << 20
RATE_MIN_ENTRIES = 100


def _rate_means_something(amount: float, seconds: float, minimum: float) -> bool:
    return seconds >= RATE_MIN_SECONDS and amount >= minimum


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
    if kind == PassKind.VERIFY.value:
        return _verify_summary(state, t, seconds)
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
        f"  left out  {t.get(C.FILTERED, 0):,} by age filters, {t.get(C.SIZE_FILTERED, 0):,} by size, "
        f"{t.get(C.EXCLUDED, 0):,} excluded; {t.get(C.CHANGED, 0):,} changed during copy, "
        f"{t.get(C.VANISHED, 0):,} vanished",
        f"  bytes     {fmt_bytes(t.get(C.BYTES, 0))}"
        + (f" ({fmt_bytes(t.get(C.BYTES, 0) / secs)}/s)" if _rate_means_something(t.get(C.BYTES, 0), seconds,
                                                                                   RATE_MIN_BYTES) else ""),
    ]
    if _rate_means_something(entries, seconds, RATE_MIN_ENTRIES):
        lines.append(f"  rate      {entries / secs:,.0f} entries/s")
    if t.get(C.CHUNKED, 0):
        lines.insert(3, f"  huge      {t[C.CHUNKED]:,} files copied in {t.get(C.CHUNKS, 0):,} chunks")
    lustre_line = _lustre_summary(t)
    if lustre_line:
        lines.append(lustre_line)
    hsm_keys = (C.HSM_IMPORTED, C.HSM_ARCHIVED_KEPT, C.HSM_RECALLED, C.HSM_SKIPPED, C.HSM_LOST)
    if any(t.get(k) for k in hsm_keys):
        lines.append(f"  hsm       {t.get(C.HSM_IMPORTED, 0):,} released files imported as stubs, "
                     f"{t.get(C.HSM_ARCHIVED_KEPT, 0):,} marked archived, {t.get(C.HSM_RECALLED, 0):,} recalled, "
                     f"{t.get(C.HSM_SKIPPED, 0):,} skipped, {t.get(C.HSM_LOST, 0):,} lost (failed)")
    if t.get(C.PROJECTS_SET, 0) or t.get(C.PROJECTS_UNSUPPORTED, 0):
        line = f"  projects  {t.get(C.PROJECTS_SET, 0):,} project ids set"
        if t.get(C.PROJECTS_UNSUPPORTED, 0):
            line += (f"; WARNING: {t[C.PROJECTS_UNSUPPORTED]:,} entries keep no project id: the target filesystem "
                     "cannot store one (project quotas are lost there)")
        lines.append(line)
    if t.get(C.LINK_DEFERRED, 0):
        lines.append(f"  note      {t[C.LINK_DEFERRED]:,} hard links to chunked files are made by the next copy pass")
    if t.get(C.NOT_PRESERVED, 0) or t.get(C.DEVICES, 0):
        lines.append(f"  not root  {t.get(C.NOT_PRESERVED, 0):,} entries written without their owner or group, "
                     f"{t.get(C.DEVICES, 0):,} device nodes not created (not failures)")
    return lines


def _verify_summary(state: str, t: dict[str, int], seconds: float) -> list[str]:
    from cmover.core.difference import CATEGORIES, counter

    found = ", ".join(f"{t[counter(c)]:,} {c}" for c in CATEGORIES if t.get(counter(c)))
    lines = [
        f"cmover verify: {state} in {seconds:.1f} s",
        f"  compared  {t.get(C.DIRS, 0):,} dirs, {t.get(C.SCANNED, 0):,} other entries; "
        f"{t.get(C.VERIFIED, 0):,} present on both sides",
        f"  differ    {t.get(C.DIFFERENCES, 0):,}" + (f" ({found})" if found else " (identical)" if state == "complete"
                                                       and not t.get(C.FAILED) else ""),
        f"  failed    {t.get(C.FAILED, 0):,}; {t.get(C.CHANGED, 0):,} changed while read, "
        f"{t.get(C.VANISHED, 0):,} vanished, {t.get(C.EXCLUDED, 0):,} excluded",
    ]
    if t.get(C.FILES_READ) or t.get(C.HASHES_REUSED):
        lines.append(f"  content   {t.get(C.FILES_READ, 0):,} files read ({fmt_bytes(t.get(C.BYTES_READ, 0))}, both "
                     f"sides), {t.get(C.HASHES_REUSED, 0):,} unchanged since the last manifest, "
                     f"{t.get(C.CHUNKS_VERIFIED, 0):,} chunks of huge files")
    if t.get(C.MANIFEST_LEFT_OUT):
        lines.append(f"  manifest  {t[C.MANIFEST_LEFT_OUT]:,} names left out (not UTF-8: b3sum cannot check them)")
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


def print_failures(failures: list[Any], count: int) -> None:
    if not count:
        return
    print(f"Failed items ({count:,}):", file=sys.stderr)
    for f in failures:
        print(f"  {f.line()}", file=sys.stderr)
    if count > len(failures):
        print(f"  ... and {count - len(failures):,} more (see the log)", file=sys.stderr)


class Progress:
    """Live progress on a terminal (rich): files, bytes, dirs and rates."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.live: Any = None

    def __enter__(self) -> Progress:
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
        tab.add_row("bytes", fmt_bytes(t.get(C.BYTES, 0)), f"{fmt_bytes(t.get(C.BYTES, 0) / secs)}/s")
        self.live.update(tab)

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.__exit__(None, None, None)



def print_deleted(items: list[Deletion], count: int, *, dry_run: bool) -> None:
    verb = "would delete" if dry_run else "deleted"
    for d in items:
        print(f"{verb}: {d.line()}")
    if count > len(items):
        print(f"... and {count - len(items):,} more (see `cmover deleted`)")



def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


#: A word that belongs to the number before it ("16.6 MiB", "8.4 MiB/s", "3 s", "281 dirs/s"): never a line break
#: between them.
_UNIT_WORD = re.compile(r"(?:[KMGTP]i)?B(?:/s)?|s|\S+/s")


def _wrap(text: str, width: int | None) -> list[str]:
    """``text`` in lines of at most ``width`` columns (None: one line, never wrapped).

    Lines break after a clause (", " or "; ") where one fits; a clause longer than the width breaks
    between words, never between a number and its unit. A single word wider than the width stays whole.
    """
    if width is None or len(text) <= width:
        return [text]
    atoms: list[str] = []
    for clause in re.split(r"(?<=[,;]) ", text):
        if len(clause) <= width:
            atoms.append(clause)
            continue
        for word in clause.split(" "):
            if atoms and atoms[-1] != "" and _UNIT_WORD.fullmatch(word.rstrip(",;)")):
                atoms[-1] += " " + word
            else:
                atoms.append(word)
    lines: list[str] = []
    line = ""
    for atom in atoms:
        if line and len(line) + 1 + len(atom) > width:
            lines.append(line)
            line = atom
        else:
            line = f"{line} {atom}" if line else atom
    lines.append(line)
    return lines


def _node_columns(st: PassStatus) -> list[tuple[str, Any]]:
    """The node table's columns for the pass of ``st``: (header, cell of a node) -- each pass its own counters."""

    def tot(key: str) -> Any:
        return lambda n: f"{int(n['totals'].get(key, 0)):,}"

    def rate(key: str) -> Any:
        return lambda n: f"{n['rates'].get(key, 0):,.0f}"

    head: list[tuple[str, Any]] = [("node", lambda n: n["host"]), ("processes", lambda n: str(n["processes"])),
                                   ("active", lambda n: str(n["active"]))]
    tail: list[tuple[str, Any]] = [("last report", lambda n: f"{n['last_report_s']:.0f} s ago")]
    if st.kind == PassKind.DELETE.value:
        if st.totals.get(C.WOULD_DELETE):  # a dry run: nothing is deleted, so no deletion rate either
            own = [("would delete", tot(C.WOULD_DELETE))]
        else:
            own = [("deleted", tot(C.DELETED))]
        cols = [("dirs", tot(C.DIRS)), ("scanned", tot(C.SCANNED)), *own, ("kept", tot(C.KEPT)),
                ("failed", tot(C.FAILED)), ("dirs/s", rate(C.DIRS))]
        if not st.totals.get(C.WOULD_DELETE):
            cols.append(("deleted/s", rate(C.DELETED)))
    elif st.kind == PassKind.VERIFY.value:
        cols = [("dirs", tot(C.DIRS)), ("entries", tot(C.SCANNED)), ("differences", tot(C.DIFFERENCES)),
                ("read", tot(C.FILES_READ)), ("failed", tot(C.FAILED)), ("files/s", rate(C.SCANNED))]
    elif st.kind == PassKind.DIRTIME.value:
        cols = [("dirs", tot(C.DIRS)), ("times set", tot(C.DIRTIMES)), ("missing", tot(C.DIRS_MISSING)),
                ("failed", tot(C.FAILED)), ("dirs/s", rate(C.DIRS))]
    else:
        cols = [("dirs", tot(C.DIRS)), ("files", tot(C.SCANNED)), ("copied", tot(C.COPIED)),
                ("bytes", lambda n: fmt_bytes(n["totals"].get(C.BYTES, 0))), ("files/s", rate(C.SCANNED)),
                ("bytes/s", lambda n: f"{fmt_bytes(n['rates'].get(C.BYTES, 0))}/s")]
    return head + cols + tail


def status_lines(st: PassStatus, width: int | None) -> list[str]:
    """One pass's status as lines of text: head, one ``label  value`` line per field, then the node table.

    Labels and values, and the node table's columns, are separated by two or more spaces; no value
    holds two spaces in a row, so ``awk -F '  +'`` splits them. ``width`` None (not a terminal): nothing
    is wrapped or shortened. Otherwise every line fits in ``width`` columns: values wrap after a clause
    (continuation lines indented under the value), and a node table wider than ``width`` becomes one
    ``node  HOST: header value, ...`` field per node. Nothing is ever cut off.
    """
    if st.state == "none":
        return [f"{st.kind}: no pass has been started"]
    took = f"ran for {_duration(st.seconds)}" if st.state == "complete" else f"started {_duration(st.seconds)} ago"
    queues = "unknown (the broker could not be read)" if st.broker_unreadable else \
        ", ".join(f"{q} {n:,}" for q, n in st.queues.items())
    rows: list[tuple[str, str]] = [
        ("queues", queues + f"; outstanding tasks {'unknown' if st.outstanding is None else f'{st.outstanding:,}'}")]
    if st.note:
        rows.append(("why", st.note))
    if st.how:
        rows.append(("changes", st.how))
    for line in summary_lines(st.kind, st.state, st.totals, st.seconds)[1:]:
        label, rest = (re.split(r"\s{2,}", line.strip(), maxsplit=1) + [""])[:2]  # labels may hold one space
        rows.append((label, rest))
    r = st.rates
    if st.state in ("running", "paused"):
        rows.append(("rates", f"{r.get(C.DIRS, 0):,.0f} dirs/s, {r.get(C.SCANNED, 0):,.0f} files scanned/s, "
                     f"{r.get(C.COPIED, 0):,.0f} copied/s, {fmt_bytes(r.get(C.BYTES, 0))}/s, "
                     f"{r.get(C.DELETED, 0):,.0f} deleted/s, {r.get(C.DIRTIMES, 0):,.0f} dir times/s "
                     "(last minute)"))
    errors, retried = int(st.totals.get(C.FAILED, 0)), int(st.totals.get(C.RETRIED, 0))
    rows.append(("errors", f"{errors:,} so far" + (f", {retried:,} taken by retry-failed" if retried else "")
                 + (f"; {st.open_errors:,} listed by `cmover errors {st.kind}`" if st.open_errors else "")
                 + (f"; {st.dead_letters:,} message(s) in cmover.{st.kind}.dead" if st.dead_letters else "")))
    e = st.estimate
    if e:
        left = f"~{_duration(e['seconds_left'])} at the current rate" if e["seconds_left"] is not None else \
            "no rate yet"
        rows.append(("left", f"{e['dirs_processed']:,} of {e['dirs_discovered']:,} directories found so far are "
                     f"done ({100 * e['fraction_done']:.0f}%); {e['dirs_left']:,} to go, {left} (more may be found)"))
    table: list[str] = []
    if st.nodes:
        cols = _node_columns(st)
        cells = [[h for h, _ in cols]] + [[cell(n) for _, cell in cols] for n in st.nodes]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        table = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in cells]
        if width is not None and max(len(t) for t in table) > width:
            table = []
            for row in cells[1:]:
                pairs = zip(cells[0][1:], row[1:], strict=True)
                rows.append(("node", f"{row[0]}: " + ", ".join(f"{h} {c}" for h, c in pairs)))
    label_w = max(10, max(len(label) for label, _ in rows) + 2)
    lines = _wrap(f"{st.kind} {st.state}  run {st.run_id}, {took}", width)
    for label, value in rows:
        wrapped = _wrap(value, None if width is None else max(20, width - label_w))
        lines.append(f"{label:<{label_w}}{wrapped[0]}".rstrip())
        lines += [" " * label_w + more for more in wrapped[1:]]
    return lines + table


def status_view(st: PassStatus, width: int) -> Any:
    """One pass's status for a terminal of ``width`` columns (rich): :func:`status_lines`, head styled."""
    from rich.console import Group
    from rich.text import Text

    lines = status_lines(st, width)
    head = Text(lines[0])
    if st.state != "none":
        style = {"running": "bold green", "paused": "bold yellow", "complete": "bold", "unknown": "bold red"}
        head.stylize("bold", 0, len(st.kind))
        head.stylize(style.get(st.state, ""), len(st.kind) + 1, len(st.kind) + 1 + len(st.state))
    return Group(head, *[Text(line) for line in lines[1:]], Text(""))
