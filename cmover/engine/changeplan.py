"""Turning the changes a journal recorded into the least work of one pass, at the level of names.

Input: :class:`cmover.journal.base.Touched` (per directory, the names entered, changed or removed; the
directories whose own metadata changed; the directories to re-check shallowly). Output: the jobs of
the pass, the same :class:`~cmover.engine.jobs.DirJob` and :class:`~cmover.engine.jobs.FilesJob` the walk
publishes, run by the same tasks with ``spec.changes`` set (see :class:`cmover.core.passes.PassSpec`); the
batches of consecutive directories with few names each are gathered into one task (:func:`gather`).

Each name is decided from the source as it is now (one ``lstat`` per name, one directory open per
directory): a directory that was entered (created, renamed or moved in) is walked in full by every
pass; nothing below it is handled on its own. Otherwise:

* **copy**: every touched name present on the source is one batch entry (a directory only shallowly:
  its own metadata), and so is each directory whose own metadata changed; a batch with no names is the
  directory itself (the root).
* **delete**: every touched name absent from the source is one batch entry; the delete task proves the
  absence again before deleting (``lstat`` raising ``FileNotFoundError`` at that moment).
* **dirtime**: the directories whose entries or own times changed get their times, shallowly.

A directory to re-check shallowly (a record that named no entry) is listed: copy takes all its source
entries, delete the target entries its source lacks, dirtime its times. Nothing here writes anything.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from cmover.core import fsio
from cmover.core.passes import PassKind, PassSpec
from cmover.core.paths import components, display, join
from cmover.engine.jobs import DirJob, FilesJob, Job
from cmover.journal.base import ENTERED, Touched, Untrusted


@dataclass(slots=True)
class Plan:
    """The jobs of a journal-driven pass and what they cover (for the pass's one-line note)."""

    jobs: list[Job] = field(default_factory=list)
    walked: int = 0  # directories walked in full (entered)
    entries: int = 0  # names handed to batch jobs
    dirs: int = 0  # directories handled shallowly
    rechecked: int = 0  # directories re-checked shallowly because a record named no entry
    unresolved: int = 0  # records whose directory no longer exists
    renamed: int = 0  # renames replayed on the target (:mod:`cmover.engine.renames`)
    not_renamed: int = 0  # proven renames not replayed (their new names are copied, old ones deleted)

    def line(self, kind: PassKind, records: int) -> str:
        tail = f"; {self.renamed} renamed on the target, {self.not_renamed} not" if self.renamed or self.not_renamed \
            else ""
        return (f"{kind.value} pass from the change journal: {records} records -> {self.entries} entries, "
                f"{self.dirs} directories shallowly, {self.walked} walked in full, {self.rechecked} re-checked, "
                f"{self.unresolved} records of removed directories{tail}")


def _ancestors(rel: bytes) -> Iterable[bytes]:
    parts = components(rel)
    for i in range(len(parts), 0, -1):
        yield b"/".join(parts[:i])


#: What a plan learnt of the source: (source root, directory, name) -> its ``lstat`` (None: absent).
Seen = dict[tuple[bytes, bytes, bytes], os.stat_result | None]


class _Source:
    """``lstat`` of names on the source, through directories opened without following a symlink on the way and
    sharing it (:func:`cmover.core.fsio.sharing_dirs`: directories asked for in sorted order cost about one
    ``openat`` each). The last directory stays open for its next names. ``seen`` answers what an earlier plan
    of the same source state asked (see :func:`plan_changes`)."""

    def __init__(self, root: bytes, seen: Seen) -> None:
        self.root = root
        self.seen = seen
        self.last: tuple[bytes, int | None] | None = None
        self.scope = contextlib.ExitStack()
        self.scope.enter_context(fsio.sharing_dirs())

    def lstat(self, rel: bytes, name: bytes) -> os.stat_result | None:
        key = (self.root, rel, name)
        if key not in self.seen:
            fd = self.dir(rel)
            st = None
            if fd is not None:
                try:
                    st = fsio.lstat_at(fd, name)
                except OSError:
                    st = None
            self.seen[key] = st
        return self.seen[key]

    def dir(self, rel: bytes) -> int | None:
        if self.last is None or self.last[0] != rel:
            self._close_last()
            fd: int | None
            try:
                fd = fsio.open_dir(self.root, rel, source=True)
            except OSError:
                fd = None
            self.last = (rel, fd)
        return self.last[1]

    def _close_last(self) -> None:
        if self.last is not None and self.last[1] is not None:
            os.close(self.last[1])
        self.last = None

    def close(self) -> None:
        self._close_last()
        self.scope.close()


def plan_changes(spec: PassSpec, t: Touched, seen: Seen | None = None) -> Plan:
    """The jobs of pass ``spec`` for the changes ``t`` (see the module doc); Untrusted when the changes
    cannot be mapped to names exactly (a hard-link group only partly named, for a copy pass).

    ``seen``: the source's answers of an earlier plan, kept while they hold (the journal reading's
    :attr:`~cmover.core.changes.Reading.memo`: the passes of one ``sync`` while the source records no change),
    filled with this plan's."""
    src = _Source(spec.src_root, {} if seen is None else seen)
    try:
        return _plan(spec, t, src)
    finally:
        src.close()


def _plan(spec: PassSpec, t: Touched, src: _Source) -> Plan:
    plan = Plan(unresolved=t.unresolved)
    # Directories entered: walked in full, and the topmost of them only.
    entered: set[bytes] = set()
    for d, names in sorted(t.names.items()):
        for name, flags in names.items():
            if flags & ENTERED:
                st = src.lstat(d, name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    entered.add(join(d, name))
    full = {r for r in entered if not any(a in entered for a in _ancestors(r) if a != r)}

    def covered(rel: bytes) -> bool:
        return any(a in full for a in _ancestors(rel))

    for r in sorted(full):
        plan.jobs.append(DirJob(r))
    plan.walked = len(full)
    batches: dict[bytes, set[bytes]] = {}
    itself: set[bytes] = set()  # directories handled as themselves (a batch with no names)
    kind = spec.kind
    groups: dict[tuple[int, int], tuple[int, set[bytes]]] = {}  # hard-link groups: nlink, names in the plan
    for d, names in sorted(t.names.items()):
        if covered(d):
            continue
        if kind is PassKind.DIRTIME:
            _own(d, batches, itself)
            continue
        for name, _flags in names.items():
            path = join(d, name)
            if covered(path):
                continue
            st = src.lstat(d, name)
            if kind is PassKind.COPY and st is not None or kind is PassKind.DELETE and st is None:
                batches.setdefault(d, set()).add(name)
            if kind is PassKind.COPY and st is not None and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                groups.setdefault((st.st_dev, st.st_ino), (st.st_nlink, set()))[1].add(path)
    if kind is PassKind.COPY:
        for r in full:
            _linked_files(spec.src_root, r, groups)
    partial = [names for nlink, names in groups.values() if len(names) < nlink]
    if partial:
        # A file with several names changed or gained a name: its target copy is rebuilt and every name
        # linked to it again, but the journal names only some of them (a local filesystem cannot say
        # which names an inode has). Only the walk finds the others.
        raise Untrusted(f"{len(partial)} changed file(s) with hard links elsewhere (e.g. "
                        f"{display(min(partial[0]))}): their other names need the walk")
    if kind is not PassKind.DELETE:
        for d in t.own:
            if not covered(d):
                _own(d, batches, itself)
    for d in t.recheck:
        if covered(d):
            continue
        plan.rechecked += 1
        if kind is PassKind.DIRTIME:
            _own(d, batches, itself)
            continue
        listed = _listing(spec, d, source=kind is PassKind.COPY)
        if kind is PassKind.DELETE:
            listed = {n for n in listed if src.lstat(d, n) is None}
        batches.setdefault(d, set()).update(listed)
        if kind is PassKind.COPY:
            _own(d, batches, itself)
    files: list[FilesJob] = []
    for d in sorted(itself):
        files.append(FilesJob(d, ()))
        plan.dirs += 1
    for d in sorted(batches):
        names_sorted = sorted(batches[d])
        if kind is PassKind.DIRTIME:
            plan.dirs += len(names_sorted)
        else:
            plan.entries += len(names_sorted)
        for i in range(0, len(names_sorted), spec.batch):
            files.append(FilesJob(d, tuple(names_sorted[i:i + spec.batch]), i // spec.batch))
    files.sort(key=lambda j: (j.rel, j.index))
    plan.jobs.extend(gather(files, spec.batch))
    return plan


#: A journal-driven pass spreads its batches over at least this many tasks when it has the names for it
#: (so that every worker process gets some), with at least GATHER_MIN names per task.
GATHER_TASKS = 64
GATHER_MIN = 16


def gather(jobs: list[FilesJob], batch: int) -> list[FilesJob]:
    """The batch jobs ``jobs`` (sorted by directory) with those of consecutive directories gathered into one task
    (:attr:`FilesJob.also`) up to a share of the names (a job with no names, a directory itself, counts one):
    a change journal names a few entries in each of many directories, and a task per directory would open the
    directories on the way to each one again (per tree, per component) and pay a task's own cost for one
    name. Gathered in sorted order, a task's directories share most of their way
    (:func:`cmover.core.fsio.sharing_dirs`). A job as large as the share stays on its own."""
    total = sum(max(1, len(j.names)) for j in jobs)
    share = max(GATHER_MIN, min(batch, total // GATHER_TASKS))
    out: list[FilesJob] = []
    group: list[FilesJob] = []
    size = 0

    def flush() -> None:
        if group:
            first, rest = group[0], group[1:]
            out.append(FilesJob(first.rel, first.names, first.index, tuple((j.rel, j.names) for j in rest)))
            group.clear()

    for job in jobs:
        n = max(1, len(job.names))
        if n >= share:
            out.append(job)
            continue
        if size + n > share:
            flush()
            size = 0
        group.append(job)
        size += n
    flush()
    return out


def _own(d: bytes, batches: dict[bytes, set[bytes]], itself: set[bytes]) -> None:
    """Directory ``d`` handled shallowly: as an entry of its parent, or as itself when it is the root."""
    if not d:
        itself.add(d)
    else:
        parent, _, name = d.rpartition(b"/")
        batches.setdefault(parent, set()).add(name)


def _linked_files(root: bytes, rel: bytes, groups: dict[tuple[int, int], tuple[int, set[bytes]]]) -> None:
    """Add the regular files with several names below source directory ``rel`` (walked in full) to ``groups``."""
    for dirpath, _dirs, files in os.walk(os.path.join(root, rel)):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                groups.setdefault((st.st_dev, st.st_ino), (st.st_nlink, set()))[1].add(path[len(root) + 1:])


def _listing(spec: PassSpec, rel: bytes, *, source: bool) -> set[bytes]:
    try:
        fd = fsio.open_dir(spec.src_root if source else spec.dst_root, rel, source=source)
    except OSError:
        return set()
    try:
        return {os.fsencode(e.name) for e in os.scandir(fd)}
    finally:
        os.close(fd)
