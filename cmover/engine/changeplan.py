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


class _Source:
    """``lstat`` of names on the source, through directory descriptors opened one component at a time (no
    symlink followed on the way). The descriptors of the last directory asked for and of its ancestors stay
    open: directories asked for in sorted order cost one ``openat`` each."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.chain: list[tuple[bytes, int | None]] = []  # (rel, fd) from the root down to the last directory

    def lstat(self, rel: bytes, name: bytes) -> os.stat_result | None:
        fd = self.dir(rel)
        if fd is None:
            return None
        try:
            return fsio.lstat_at(fd, name)
        except OSError:
            return None

    def dir(self, rel: bytes) -> int | None:
        parts = components(rel)
        keep = 0
        while keep < min(len(self.chain) - 1, len(parts)) and self.chain[keep + 1][0] == b"/".join(parts[:keep + 1]):
            keep += 1
        if not self.chain:
            try:
                self.chain.append((b"", fsio.open_root(self.root, source=True)))
            except OSError:
                self.chain.append((b"", None))
        self._truncate(keep + 1)
        for i in range(keep, len(parts)):
            parent = self.chain[-1][1]
            fd: int | None = None
            if parent is not None:
                try:
                    fd = fsio.open_subdir(parent, parts[i], source=True)
                except OSError:
                    fd = None
            self.chain.append((b"/".join(parts[:i + 1]), fd))
        return self.chain[-1][1]

    def _truncate(self, n: int) -> None:
        while len(self.chain) > n:
            fd = self.chain.pop()[1]
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        self._truncate(0)


def plan_changes(spec: PassSpec, t: Touched) -> Plan:
    """The jobs of pass ``spec`` for the changes ``t`` (see the module doc); Untrusted when the changes
    cannot be mapped to names exactly (a hard-link group only partly named, for a copy pass)."""
    src = _Source(spec.src_root)
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
