"""The dirtime pass engine: give every target directory its source's atime and mtime (nanoseconds).

It runs last, after copy and delete, because creating or removing an entry changes its directory's
mtime. It walks the source and the target together, one directory per task (small subtrees inline, as
the copy pass does), and never creates or removes anything: a directory present on one side only is
counted and listed (the copy or the delete pass is missing), and its subtree is skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

from cmover import fsio
from cmover.copypass import Job, report_failure
from cmover.errors import Failure, ItemError
from cmover.passes import PassSpec
from cmover.paths import join
from cmover.stats import C

log = logging.getLogger(__name__)


class DirtimePass:
    """Dirtime work of one task. Not thread-safe: build one per task."""

    def __init__(self, spec: PassSpec, tally: Counter[str], on_failure: Callable[[Failure], None],
                 emit: Callable[[Job], None]) -> None:
        self.spec = spec
        self.tally = tally
        self.on_failure = on_failure
        self.emit = emit
        self._budget = 0
        self._deadline = 0.0

    def run_dir(self, rel: bytes) -> None:
        """Set the times of target directory ``rel`` and of its subtree (inline or as new jobs)."""
        self._budget = self.spec.inline_entries
        self._deadline = time.monotonic() + self.spec.inline_seconds
        self._dir(rel)

    def _dir(self, rel: bytes) -> None:
        try:
            src_fd = fsio.open_dir(self.spec.src_root, rel, source=True)
        except FileNotFoundError:
            self._missing(rel, "source", "run the delete pass first")
            return
        except OSError as exc:
            self._fail(rel, "open directory", exc)
            return
        try:
            try:
                dst_fd = fsio.open_dir(self.spec.dst_root, rel, source=False)
            except FileNotFoundError:
                self._missing(rel, "target", "run the copy pass first")
                return
            except OSError as exc:
                self._fail(rel, "open target directory", exc, side="target")
                return
            try:
                self.tally[C.DIRS] += 1
                src_dirs = self._subdirs(rel, src_fd, "source")
                dst_dirs = self._subdirs(rel, dst_fd, "target")
                if src_dirs is not None and dst_dirs is not None:
                    for name in sorted(dst_dirs - src_dirs):
                        self._missing(join(rel, name), "source", "run the delete pass first")
                    for name in sorted(src_dirs - dst_dirs):
                        self._missing(join(rel, name), "target", "run the copy pass first")
                    children = sorted(src_dirs & dst_dirs)
                    self.tally[C.DIRS_FOUND] += len(children)
                    self._budget -= len(children)
                    for name in children:
                        child = join(rel, name)
                        if self._budget > 0 and time.monotonic() < self._deadline:
                            self._dir(child)
                        else:
                            self.emit(Job("dir", child))
                # Read the source times last: nothing of this pass changes them, but a walk inline may
                # have taken a while on a live source.
                st = os.fstat(src_fd)
                os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                self.tally[C.DIRTIMES] += 1
            except OSError as exc:
                self._fail(rel, "set times", exc, side="target")
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _subdirs(self, rel: bytes, fd: int, side: str) -> set[bytes] | None:
        out: set[bytes] = set()
        try:
            with os.scandir(fd) as it:
                out.update(os.fsencode(e.name) for e in it if fsio.entry_is_dir(e))
        except OSError as exc:
            self._fail(rel, "list directory", exc, side=side)
            return None
        return out

    def _missing(self, rel: bytes, side: str, fix: str) -> None:
        self.tally[C.DIRS_MISSING] += 1
        self._fail(rel, "dirtime", ItemError(f"directory missing on the {side}; {fix}", op="dirtime"), side=side)

    def _fail(self, rel: bytes, op: str, exc: BaseException, side: str = "source") -> None:
        report_failure(self.tally, self.on_failure, rel, op, exc, side)
