"""The dirtime pass engine: give every target directory its source's atime and mtime (nanoseconds).

It also gives each its source's mode when it differs: a copy pass without CAP_DAC_OVERRIDE (a regular
user) leaves owner ``rwx`` on directories whose source denies it, so that it can fill them; as root
the copy pass sets the exact mode and nothing changes here. The set-id bits a directory keeps depend on
its owner: with identity maps, the mapped one (the spec's ``idmap``).

It runs last, after copy and delete, because creating or removing an entry changes its directory's
mtime. It walks the source and the target together with the shared walker (:mod:`cmover.engine.walker`),
one directory per task (small subtrees inline, as the copy pass does), and never creates or removes
anything: a directory present on one side only is counted and listed (the copy or the delete pass is
missing), and its subtree is skipped.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.errors import ItemError
from cmover.core.failure import Failure
from cmover.core.passes import PassSpec
from cmover.core.paths import join
from cmover.core.privileges import current
from cmover.engine import metadata
from cmover.engine.jobs import Job, dir_hand_outs, retry_transient, run_groups
from cmover.engine.walker import Walker

log = logging.getLogger(__name__)


class DirtimePass:
    """Dirtime work of one task. Not thread-safe: build one per task."""

    def __init__(self, spec: PassSpec, tally: Counter[str], on_failure: Callable[[Failure], None],
                 emit: Callable[[Job], None]) -> None:
        self.spec = spec
        self.tally = tally
        self.emit = emit
        self._hand_out, self._group = dir_hand_outs(emit)
        self.can = current()
        self.walk = Walker(spec, tally, on_failure, log)

    def run_dir(self, rel: bytes) -> None:
        """Set the times of target directory ``rel`` and of its subtree (inline or as new jobs)."""
        self.walk.start()
        self._dir(rel)

    def run_dirs(self, rels: list[bytes]) -> None:
        """Set the times of each directory of ``rels`` as :meth:`run_dir` does, within one budget: the ones it
        does not reach are handed out again (:meth:`Walker.members`)."""
        for rel in self.walk.members(rels, self._hand_out, self._group):
            self._dir(rel)

    def run_files(self, rel: bytes, names: Iterable[bytes]) -> None:
        """Set the times of subdirectories ``names`` of target directory ``rel`` -- of ``rel`` itself when
        ``names`` is empty -- and nothing below them (a journal-driven pass: ``spec.changes``)."""
        todo = list(names)
        with self.walk.pair(rel, src_missing=lambda r: self._missing(r, "source", "run the delete pass first"),
                            dst_missing=lambda r: self._missing(r, "target", "run the copy pass first")) as fds:
            if fds is None:
                return
            if not todo:
                self.tally[C.DIRS] += 1
                self._times(rel, *fds)
                return
            for name in todo:  # each opened inside its parent: one openat per side
                child = join(rel, name)
                src_fd = self._child(fds[0], child, "source", "run the delete pass first")
                if src_fd is None:
                    continue
                try:
                    dst_fd = self._child(fds[1], child, "target", "run the copy pass first")
                    if dst_fd is None:
                        continue
                    try:
                        self.tally[C.DIRS] += 1
                        self._times(child, src_fd, dst_fd)
                    finally:
                        os.close(dst_fd)
                finally:
                    os.close(src_fd)

    def run_groups(self, groups: list[tuple[bytes, list[bytes]]]) -> None:
        """:meth:`run_files` for each (directory, names) pair of a batch job (:func:`cmover.engine.jobs.run_groups`)."""
        run_groups(groups, self.spec.batch_seconds, self.emit, self.run_files)

    def _child(self, parent_fd: int, rel: bytes, side: str, fix: str) -> int | None:
        """Subdirectory ``rel`` (its last component) opened inside ``parent_fd``; None when missing (counted and
        listed, as the walk does) or not openable (reported)."""
        try:
            return fsio.open_subdir(parent_fd, rel.rpartition(b"/")[2], source=side == "source")
        except FileNotFoundError:
            self._missing(rel, side, fix)
        except OSError as exc:
            self.walk.fail(rel, "open directory" if side == "source" else "open target directory", exc, side=side)
        return None

    def _dir(self, rel: bytes) -> None:
        with self.walk.pair(rel, src_missing=lambda r: self._missing(r, "source", "run the delete pass first"),
                            dst_missing=lambda r: self._missing(r, "target", "run the copy pass first")) as fds:
            if fds is None:
                return
            src_fd, dst_fd = fds
            self.tally[C.DIRS] += 1
            src = self.walk.scan(rel, src_fd, side="source")  # subdirectories only
            dst = self.walk.scan(rel, dst_fd, side="target")
            if src.complete and dst.complete:
                src_dirs, dst_dirs = set(src.subdirs), set(dst.subdirs)
                for name in sorted(dst_dirs - src_dirs):
                    self._missing(join(rel, name), "source", "run the delete pass first")
                for name in sorted(src_dirs - dst_dirs):
                    self._missing(join(rel, name), "target", "run the copy pass first")
                children = sorted(src_dirs & dst_dirs)
                self.tally[C.DIRS_FOUND] += len(children)
                self.walk.charge(len(children))
                # broker trouble handing one out propagates: the task runs again
                for child in self.walk.subdirs([join(rel, name) for name in children], self._hand_out,
                                               self._group):
                    self._dir(child)
            # Read the source times last: nothing of this pass changes them, but a walk inline may have
            # taken a while on a live source.
            self._times(rel, src_fd, dst_fd)

    def _times(self, rel: bytes, src_fd: int, dst_fd: int) -> None:
        try:
            try:
                self._set(src_fd, dst_fd)
            except OSError as exc:
                retry_transient(lambda: self._set(src_fd, dst_fd), exc, rel)
            self.tally[C.DIRTIMES] += 1
        except OSError as exc:
            self.walk.fail(rel, "set mode and times", exc, side="target")

    def _set(self, src_fd: int, dst_fd: int) -> None:
        st = os.fstat(src_fd)
        metadata.final_dir_mode(dst_fd, st, self.can, self.spec.idmap)
        os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _missing(self, rel: bytes, side: str, fix: str) -> None:
        self.tally[C.DIRS_MISSING] += 1
        self.walk.fail(rel, "dirtime", ItemError(f"directory missing on the {side}; {fix}", op="dirtime"), side=side)
