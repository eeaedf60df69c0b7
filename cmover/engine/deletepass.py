"""The delete pass engine: remove target entries whose source counterpart is gone.

Plain Python, no Celery (the tasks are in :mod:`cmover.tasks_delete`). The pass walks the *target*
with the shared walker (:mod:`cmover.engine.walker`). An entry is deleted only on positive proof of
absence: ``lstat`` of its source counterpart raised ``FileNotFoundError`` at that moment, through a
source directory descriptor that passed every guard of :mod:`cmover.engine.safety` (source root
unchanged, mounted, not empty; source directory on the source root's filesystem).

A failed guard deletes nothing and fails loudly (:class:`~cmover.engine.safety.SourceUnsafe`); a source
directory that cannot be opened, or a source entry whose ``lstat`` fails with any other error, is
reported and nothing under it is deleted. A directory whose source is gone is removed as a *purge*
(:class:`PurgeJob`): its listing streams, its non-directories are unlinked, subdirectories are purged
inline or become purge jobs of their own (a huge deleted tree is spread over many tasks), and every
purge task, when done, removes its directory and then its ancestors up to the purge root when they are
empty -- whichever task finishes last removes the parent. Nothing follows a symlink: symlinks are
unlinked, never traversed, so their targets survive.

A regular user's pass may meet its own target directory left without owner write by the dirtime pass
(which gives directories their source's mode last): an entry that cannot be removed for that reason is
removed after giving the owner ``rwx`` back on its directory (the next dirtime pass sets the mode again).

A name that is a directory on one side and not on the other is left alone here: the copy pass repairs
type changes (it has the positive proof that the source holds the other type).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.deletion import Deletion
from cmover.core.errors import ConfinementError, ItemError
from cmover.core.failure import Failure
from cmover.core.frozen import Frozen
from cmover.core.logformat import at
from cmover.core.passes import DeleteOptions, PassSpec
from cmover.core.paths import check_rel, components, display, join, to_wire
from cmover.core.privileges import current
from cmover.engine import metadata
from cmover.engine.claims import Claims
from cmover.engine.jobs import DirJob, FilesJob, Job, retry_transient, retrying, run_groups
from cmover.engine.safety import SourceUnsafe, source_root_problem
from cmover.engine.walker import Entries, Walker

log = logging.getLogger(__name__)


class PurgeJob(Frozen):
    """Remove target directory ``rel``, part of the tree ``root`` whose source is gone (a delete-pass job)."""

    __slots__ = ("rel", "root")
    kind: ClassVar[str] = "purge"
    rel: bytes
    root: bytes

    def __init__(self, rel: bytes, root: bytes) -> None:
        object.__setattr__(self, "rel", rel)
        object.__setattr__(self, "root", root)

    @property
    def index(self) -> int:
        return 0

    def ident(self) -> tuple[bytes, ...]:
        return (self.root,)

    def wire_args(self) -> list[Any]:
        return [to_wire(self.rel), to_wire(self.root)]


class DeletePass:
    """Delete-pass work of one task. Not thread-safe: build one per task.

    ``deleted`` receives one record per deleted (or, in a dry run, deletable) top-level entry: a file
    or symlink, or the root of a purged directory tree. ``claims`` shares the ``--max-delete`` budget
    between the tasks of the run (None: no limit is applied).
    """

    def __init__(self, spec: PassSpec, tally: Counter[str], on_failure: Callable[[Failure], None],
                 emit: Callable[[Job], None], claims: Claims | None,
                 deleted: Callable[[Deletion], None]) -> None:
        self.spec = spec
        self.tally = tally
        self.emit = emit
        self.claims = claims
        self.deleted = deleted
        opts = DeleteOptions.of(spec)
        self.dry_run = opts.dry_run
        self.max_delete = opts.max_delete
        self.can = current()
        self.walk = Walker(spec, tally, on_failure, log)
        self._root_dev = -1
        self._batch = False  # handling a batch (run_files), not walking

    # -- entry points -------------------------------------------------------------------------------

    def run_dir(self, rel: bytes) -> None:
        """Compare target directory ``rel`` with its source; delete what is gone, walk or emit the rest."""
        self._guard()
        self.walk.start()
        self._dir(rel)

    def run_files(self, rel: bytes, names: Iterable[bytes]) -> None:
        """The batch variant: entries ``names`` of target directory ``rel``."""
        self._guard()
        self._files(rel, names)

    def run_groups(self, groups: list[tuple[bytes, list[bytes]]]) -> None:
        """:meth:`run_files` for each (directory, names) pair of a batch job (:func:`cmover.engine.jobs.run_groups`),
        the source root checked once for the task, as for every task."""
        self._guard()
        run_groups(groups, self.spec.batch_seconds, self.emit, self._files)

    def _files(self, rel: bytes, names: Iterable[bytes]) -> None:
        self._batch = True
        with self._pair(rel) as fds:
            if fds is None:
                return
            src_fd, dst_fd = fds
            for name in names:
                st = fsio.lstat_at(dst_fd, name)
                if st is not None:
                    self._entry(rel, src_fd, dst_fd, name, stat.S_ISDIR(st.st_mode))

    def run_purge(self, rel: bytes, root: bytes) -> None:
        """Remove target directory ``rel``, inside the purge root ``root`` whose source is gone."""
        check_rel(rel)
        check_rel(root)
        if not root:
            raise ConfinementError("a purge of the whole target root is never done")
        if rel != root and not rel.startswith(root + b"/"):
            raise ConfinementError(f"purge of {display(rel)} is outside its purge root {display(root)}")
        self._guard()
        if not self._source_still_gone(root):
            return
        self.walk.start()
        self._purge(rel, root)

    # -- walking ------------------------------------------------------------------------------------

    def _pair(self, rel: bytes) -> Any:
        # Gone from the source since its parent looked: the next delete pass removes it, with fresh proof.
        # Gone from the target: nothing left to delete.
        return self.walk.pair(rel, src_missing=self.walk.vanished, dst_missing=self.walk.ignore,
                              check_source=self._same_filesystem)

    def _dir(self, rel: bytes) -> None:
        with self._pair(rel) as fds:
            if fds is None:
                return
            src_fd, dst_fd = fds
            self.tally[C.DIRS] += 1

            def publish(batch: Entries, index: int) -> None:
                self.emit(FilesJob(rel, tuple(os.fsencode(e.name) for e in batch), index))

            # A listing that fails part-way is reported; the entries read are still handled: each
            # deletion is proven on its own.
            listing = self.walk.scan(rel, dst_fd, side="target", on_batch=publish)
            self.walk.charge(len(listing.entries) + len(listing.subdirs))
            for entry in listing.entries:
                self._entry(rel, src_fd, dst_fd, os.fsencode(entry.name), False)
            for name in listing.subdirs:
                self._entry(rel, src_fd, dst_fd, name, True)

    def _entry(self, rel: bytes, src_fd: int, dst_fd: int, name: bytes, is_dir: bool) -> None:
        path = join(rel, name)
        if not is_dir:
            self.tally[C.SCANNED] += 1
        try:
            sst = _source_lstat(src_fd, name)
        except OSError as exc:
            try:
                sst = retry_transient(functools.partial(_source_lstat, src_fd, name), exc, path)
            except OSError as last:
                self.walk.fail(path, "lstat", last)  # no proof of absence: keep it
                return
        if sst is not None:
            if is_dir and stat.S_ISDIR(sst.st_mode):
                self.tally[C.DIRS_FOUND] += 1
                if self.spec.changes and self._batch:
                    return  # a journal-driven batch names changed entries: a directory present stays as it is
                if self.walk.inline():
                    self._dir(path)
                else:
                    self.emit(DirJob(path))
            else:
                self.tally[C.KEPT] += 1
            return
        if is_dir:
            if self._limit_reached():
                self.tally[C.DEL_LIMITED] += 1
                return
            self.deleted(Deletion.now(path, "tree", self.dry_run))
            self._purge(path, path)
        elif self._may_delete() and self._unlink(path, name, dst_fd):
            self._count_deleted(False)
            self.deleted(Deletion.now(path, "file", self.dry_run))

    def _purge(self, rel: bytes, root: bytes) -> None:
        """Delete everything in target directory ``rel`` (part of the purge of ``root``), then ``rel`` itself.

        The listing streams: each full batch of non-directories is removed while the directory is read
        (entries already listed, so the rest of the listing is not disturbed), subdirectories are purged
        inline or become purge jobs. Reaching --max-delete stops it: the directory is left.
        """
        fd = self.walk.open_dir(rel, source=False, missing=self.walk.ignore)  # missing: purged by another delivery
        if fd is None:
            return
        try:
            def remove(batch: Entries, index: int) -> bool:
                self.walk.charge(len(batch))
                return self._unlink_all(rel, fd, batch)

            listing = self.walk.scan(rel, fd, side="target", on_batch=remove)
            if not listing.complete:
                return
            self.walk.charge(len(listing.entries) + len(listing.subdirs))
            if not self._unlink_all(rel, fd, listing.entries):
                return
        finally:
            os.close(fd)
        for child in self.walk.subdirs([join(rel, name) for name in listing.subdirs],
                                       lambda c: self.emit(PurgeJob(c, root))):
            self._purge(child, root)
        if self.dry_run:
            if self._may_delete():
                self._count_deleted(True)
            return
        self._remove_upwards(rel, root)

    def _unlink_all(self, rel: bytes, dir_fd: int, entries: Entries) -> bool:
        """Unlink the non-directory ``entries`` of purged directory ``rel``; False when --max-delete stopped it."""
        for entry in entries:
            name = os.fsencode(entry.name)
            if not self._may_delete():
                return False
            if self._unlink(join(rel, name), name, dir_fd):
                self._count_deleted(False)
        return True

    def _unlink(self, path: bytes, name: bytes, dir_fd: int) -> bool:
        """Unlink ``name`` (path ``path``) of target directory ``dir_fd`` (nothing in a dry run), after a
        reservation against --max-delete; False, the reservation given back, when it was not deleted."""
        if self.dry_run:
            return True
        try:
            self._remove(os.unlink, name, dir_fd, path)
        except FileNotFoundError:
            self._release()
            return False  # another delivery of this task removed it
        except OSError as exc:
            self._release()
            self.walk.fail(path, "unlink", exc, side="target")
            return False
        return True

    def _remove_upwards(self, rel: bytes, root: bytes) -> None:
        """rmdir ``rel``, then its ancestors up to ``root``, while they are empty.

        Every purge task does this when it is done, so whichever finishes last removes the parent.
        """
        while True:
            parts = components(rel)
            parent = b"/".join(parts[:-1])
            try:
                pfd = fsio.open_dir(self.spec.dst_root, parent, source=False)
            except OSError:
                return
            try:
                if not self._reserve():
                    # Over the limit: only a directory that still exists and is empty was left undeleted.
                    if _is_empty_dir(pfd, parts[-1]):
                        self.tally[C.DEL_LIMITED] += 1
                    return
                try:
                    self._remove(os.rmdir, parts[-1], pfd, rel)
                except BaseException:
                    self._release()  # only a directory really removed counts against --max-delete
                    raise
                self._count_deleted(True)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # a sibling task is still purging
                    self.walk.fail(rel, "rmdir", exc, side="target")
                return
            finally:
                os.close(pfd)
            if rel == root:
                return
            rel = parent

    def _remove(self, remove: Callable[..., None], name: bytes, dir_fd: int, path: bytes) -> None:
        """``remove(name, dir_fd=dir_fd)`` (unlink or rmdir) of entry ``path``, retried on a transient errno.

        Refused for want of owner write on this process's own directory (no CAP_DAC_OVERRIDE), it is
        retried after giving the owner rwx back.
        """
        def once() -> None:
            try:
                remove(name, dir_fd=dir_fd)
            except PermissionError:
                if not metadata.open_up_dir(dir_fd, self.can):
                    raise
                remove(name, dir_fd=dir_fd)

        try:
            once()
        except OSError as exc:
            retry_transient(once, exc, path)

    # -- guards and bookkeeping ---------------------------------------------------------------------

    def _guard(self) -> None:
        problem = source_root_problem(self.spec)
        if problem is not None:
            raise SourceUnsafe(problem + "; nothing was deleted by this task")
        self._root_dev = os.stat(self.spec.src_root).st_dev

    def _same_filesystem(self, rel: bytes, src_fd: int) -> bool:
        """Whether source directory ``rel`` lives on the source root's filesystem (else reported)."""
        if os.fstat(src_fd).st_dev == self._root_dev:
            return True
        self.walk.fail(rel, "check source", ItemError(
            "another filesystem is mounted here on the source; nothing under it is deleted", op="check"))
        return False

    def _source_still_gone(self, root: bytes) -> bool:
        """Whether the source of purge root ``root`` is still absent (the proof, taken again by every purge task)."""
        parts = components(root)
        try:
            pfd = fsio.open_dir(self.spec.src_root, b"/".join(parts[:-1]), source=True)
        except FileNotFoundError:
            return True  # its parent is gone too
        except OSError as exc:
            self.walk.fail(root, "open directory", exc)
            return False
        try:
            if not self._same_filesystem(root, pfd):
                return False
            if retrying(functools.partial(_source_lstat, pfd, parts[-1]), root) is None:
                return True
        except OSError as exc:
            self.walk.fail(root, "lstat", exc)
            return False
        finally:
            os.close(pfd)
        self.tally[C.KEPT] += 1
        log.info("%s is back on the source; not deleted", display(root), extra=at(root))
        return False

    def _may_delete(self) -> bool:
        """Reserve one deletion against --max-delete; count it as left undeleted when over the limit."""
        if self._reserve():
            return True
        self.tally[C.DEL_LIMITED] += 1
        return False

    def _reserve(self) -> bool:
        """Reserve one deletion against --max-delete (a counter shared by every task of the run)."""
        if not self.max_delete or self.claims is None:
            return True
        if self.claims.incr("deletes", 1) <= self.max_delete:
            return True
        self._release()
        return False

    def _release(self) -> None:
        """Give back a reservation whose deletion did not happen (already gone, not empty, error)."""
        if self.max_delete and self.claims is not None:
            self.claims.incr("deletes", -1)

    def _limit_reached(self) -> bool:
        return bool(self.max_delete and self.claims is not None and self.claims.incr("deletes", 0) >= self.max_delete)

    def _count_deleted(self, is_dir: bool) -> None:
        key = C.WOULD_DELETE if self.dry_run else C.DELETED
        self.tally[key] += 1
        if is_dir:
            self.tally[C.DIRS_DELETED if not self.dry_run else C.DIRS_WOULD_DELETE] += 1


def _source_lstat(src_fd: int, name: bytes) -> os.stat_result | None:
    """``lstat`` of source entry ``name``; None only on ENOENT: the positive proof of absence."""
    try:
        return os.stat(name, dir_fd=src_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _is_empty_dir(dir_fd: int, name: bytes) -> bool:
    try:
        fd = fsio.open_subdir(dir_fd, name, source=False)
    except OSError:
        return False
    try:
        with os.scandir(fd) as it:
            return next(it, None) is None
    finally:
        os.close(fd)

