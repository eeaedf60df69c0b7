"""The delete pass engine: remove target entries whose source counterpart is gone.

Plain Python, no Celery (the tasks are in :mod:`cmover.tasks_delete`). The pass walks the *target*.
An entry is deleted only on positive proof of absence: ``lstat`` of its source counterpart raised
``FileNotFoundError`` at that moment, through a source directory descriptor that passed every guard:

* the source root is still the directory the pass was planned on (same device and inode: an unmount
  or an empty filesystem mounted over it changes them), still a mount point when the site requires
  one, and not empty;
* the source directory was opened without following symlinks and lives on the source root's device
  (a different filesystem mounted inside the source is never taken as proof of anything).

A failed guard deletes nothing and fails loudly (:class:`SourceUnsafe`); a source directory that
cannot be opened, or a source entry whose ``lstat`` fails with any other error, is reported and nothing
under it is deleted. A directory whose source is gone is removed as a *purge*: its non-directories
are unlinked, subdirectories become purge jobs of their own (a huge deleted tree is spread over many
tasks), and every purge task, when done, removes its directory and then its ancestors up to the
purge root when they are empty -- whichever task finishes last removes the parent. Nothing follows a
symlink: symlinks are unlinked, never traversed, so their targets survive.

A name that is a directory on one side and not on the other is left alone here: the copy pass repairs
type changes (it has the positive proof that the source holds the other type).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable

from cmover import fsio
from cmover.copypass import Job, report_failure
from cmover.errors import ConfinementError, Failure, ItemError, PreflightError
from cmover.ledger import RunClaims
from cmover.passes import PassSpec
from cmover.paths import check_rel, components, display, join
from cmover.stats import C

log = logging.getLogger(__name__)


class SourceUnsafe(PreflightError):
    """The source root no longer looks like the one the pass was planned on: delete nothing."""


def source_root_problem(spec: PassSpec) -> str | None:
    """Why the source root cannot prove anything right now, or None when it can.

    Checked by the preflight and again by every delete task (a mount can vanish mid-pass).
    """
    root = spec.src_root
    try:
        st = os.stat(root)
    except OSError as exc:
        return f"source root {display(root)} is not accessible ({exc.strerror}); mount it"
    if not stat.S_ISDIR(st.st_mode):
        return f"source root {display(root)} is not a directory"
    ident = spec.options.get("src_id")
    if ident and [st.st_dev, st.st_ino] != list(ident):
        return (f"source root {display(root)} is not the directory the pass was planned on (unmounted or "
                "another filesystem mounted over it); remount the source")
    if spec.options.get("src_must_be_mount") and not os.path.ismount(root):
        return f"source root {display(root)} is not a mount point (SOURCE_IS_MOUNT is set); mount the source"
    try:
        with os.scandir(root) as it:
            empty = next(it, None) is None
    except OSError as exc:
        return f"source root {display(root)} cannot be listed ({exc.strerror}); check the mount"
    if empty:
        try:
            with os.scandir(spec.dst_root) as it:
                target_empty = next(it, None) is None
        except OSError:
            target_empty = False
        if not target_empty:
            return (f"source root {display(root)} is empty while the target is not; refusing to delete "
                    "everything (is the source mounted?)")
    return None


class DeletePass:
    """Delete-pass work of one task. Not thread-safe: build one per task.

    ``deleted`` receives one record per deleted (or, in a dry run, deletable) top-level entry: a file
    or symlink, or the root of a purged directory tree.
    """

    def __init__(self, spec: PassSpec, tally: Counter[str], on_failure: Callable[[Failure], None],
                 emit: Callable[[Job], None], claims: RunClaims | None,
                 deleted: Callable[[Failure], None]) -> None:
        self.spec = spec
        self.tally = tally
        self.on_failure = on_failure
        self.emit = emit
        self.claims = claims
        self.deleted = deleted
        self.dry_run = bool(spec.options.get("dry_run"))
        self.max_delete = int(spec.options.get("max_delete") or 0)
        self._root_dev = -1
        self._budget = 0
        self._deadline = 0.0

    # -- entry points -------------------------------------------------------------------------------

    def run_dir(self, rel: bytes) -> None:
        """Compare target directory ``rel`` with its source; delete what is gone, walk or emit the rest."""
        self._guard()
        self._budget = self.spec.inline_entries
        self._deadline = time.monotonic() + self.spec.inline_seconds
        self._dir(rel)

    def run_files(self, rel: bytes, names: Iterable[bytes]) -> None:
        """The batch variant: entries ``names`` of target directory ``rel``."""
        self._guard()
        fds = self._open_pair(rel)
        if fds is None:
            return
        src_fd, dst_fd = fds
        try:
            for name in names:
                st = fsio.lstat_at(dst_fd, name)
                if st is not None:
                    self._entry(rel, src_fd, dst_fd, name, stat.S_ISDIR(st.st_mode))
        finally:
            os.close(src_fd)
            os.close(dst_fd)

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
        self._budget = self.spec.inline_entries
        self._deadline = time.monotonic() + self.spec.inline_seconds
        self._purge(rel, root)

    # -- walking ------------------------------------------------------------------------------------

    def _dir(self, rel: bytes) -> None:
        fds = self._open_pair(rel)
        if fds is None:
            return
        src_fd, dst_fd = fds
        self.tally[C.DIRS] += 1
        subdirs: list[bytes] = []
        pending: list[bytes] = []
        batch = self.spec.batch
        index = 0
        try:
            try:
                with os.scandir(dst_fd) as it:
                    for entry in it:
                        name = os.fsencode(entry.name)
                        if fsio.entry_is_dir(entry):
                            subdirs.append(name)
                            continue
                        pending.append(name)
                        if len(pending) > batch:
                            self.emit(Job("files", rel, tuple(pending[:batch]), index))
                            index += 1
                            del pending[:batch]
            except OSError as exc:
                self._fail(rel, "list directory", exc, side="target")
                # Entries already read are still handled: each deletion is proven on its own.
            self._budget -= len(pending) + len(subdirs)
            for name in pending:
                self._entry(rel, src_fd, dst_fd, name, False)
            for name in subdirs:
                self._entry(rel, src_fd, dst_fd, name, True)
        finally:
            os.close(src_fd)
            os.close(dst_fd)

    def _entry(self, rel: bytes, src_fd: int, dst_fd: int, name: bytes, is_dir: bool) -> None:
        path = join(rel, name)
        if not is_dir:
            self.tally[C.SCANNED] += 1
        try:
            sst = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        except FileNotFoundError:
            sst = None
        except OSError as exc:
            self._fail(path, "lstat", exc)  # no proof of absence: keep it
            return
        if sst is not None:
            if is_dir and stat.S_ISDIR(sst.st_mode):
                self.tally[C.DIRS_FOUND] += 1
                self._descend(path)
            else:
                self.tally[C.KEPT] += 1
            return
        if is_dir:
            if self._limit_reached():
                self.tally[C.DEL_LIMITED] += 1
                return
            self.deleted(Failure(path + b"/", "delete tree", 0, "directory tree", "target"))
            self._purge(path, path)
        elif self._may_delete(path):
            if not self.dry_run:
                try:
                    os.unlink(name, dir_fd=dst_fd)
                except FileNotFoundError:
                    self._release()
                    return  # another delivery of this task removed it
                except OSError as exc:
                    self._release()
                    self._fail(path, "unlink", exc, side="target")
                    return
            self._count_deleted(False)
            self.deleted(Failure(path, "delete", 0, "file", "target"))

    def _descend(self, path: bytes) -> None:
        if self._budget > 0 and time.monotonic() < self._deadline:
            self._dir(path)
        else:
            self.emit(Job("dir", path))

    def _purge(self, rel: bytes, root: bytes) -> None:
        """Delete everything in target directory ``rel`` (part of the purge of ``root``), then ``rel`` itself."""
        try:
            fd = fsio.open_dir(self.spec.dst_root, rel, source=False)
        except FileNotFoundError:
            return  # purged already by another delivery
        except OSError as exc:
            self._fail(rel, "open target directory", exc, side="target")
            return
        subdirs: list[bytes] = []
        try:
            try:
                with os.scandir(fd) as it:
                    entries = [(os.fsencode(e.name), fsio.entry_is_dir(e)) for e in it]
            except OSError as exc:
                self._fail(rel, "list directory", exc, side="target")
                return
            self._budget -= len(entries)
            for name, is_dir in entries:
                if is_dir:
                    subdirs.append(name)
                    continue
                if not self._may_delete(join(rel, name)):
                    return
                if not self.dry_run:
                    try:
                        os.unlink(name, dir_fd=fd)
                    except FileNotFoundError:
                        self._release()
                        continue
                    except OSError as exc:
                        self._release()
                        self._fail(join(rel, name), "unlink", exc, side="target")
                        continue
                self._count_deleted(False)
        finally:
            os.close(fd)
        for name in subdirs:
            child = join(rel, name)
            if self._budget > 0 and time.monotonic() < self._deadline:
                self._purge(child, root)
            else:
                self.emit(Job("purge", child, root=root))
        if self.dry_run:
            if self._may_delete(rel):
                self._count_deleted(True)
            return
        self._remove_upwards(rel, root)

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
                    os.rmdir(parts[-1], dir_fd=pfd)
                except BaseException:
                    self._release()  # only a directory really removed counts against --max-delete
                    raise
                self._count_deleted(True)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # a sibling task is still purging
                    self._fail(rel, "rmdir", exc, side="target")
                return
            finally:
                os.close(pfd)
            if rel == root:
                return
            rel = parent

    # -- guards and bookkeeping ---------------------------------------------------------------------

    def _guard(self) -> None:
        problem = source_root_problem(self.spec)
        if problem is not None:
            raise SourceUnsafe(problem + "; nothing was deleted by this task")
        self._root_dev = os.stat(self.spec.src_root).st_dev

    def _open_pair(self, rel: bytes) -> tuple[int, int] | None:
        """Source and target directory ``rel``, or None (reported) when either cannot be used as proof."""
        try:
            src_fd = fsio.open_dir(self.spec.src_root, rel, source=True)
        except FileNotFoundError:
            # Gone since its parent looked: the next delete pass removes it, with fresh proof.
            self.tally[C.VANISHED] += 1
            return None
        except OSError as exc:
            self._fail(rel, "open directory", exc)
            return None
        if os.fstat(src_fd).st_dev != self._root_dev:
            os.close(src_fd)
            self._fail(rel, "check source", ItemError(
                "another filesystem is mounted here on the source; nothing under it is deleted", op="check"))
            return None
        try:
            dst_fd = fsio.open_dir(self.spec.dst_root, rel, source=False)
        except OSError as exc:
            os.close(src_fd)
            if isinstance(exc, FileNotFoundError):
                return None
            self._fail(rel, "open target directory", exc, side="target")
            return None
        return src_fd, dst_fd

    def _source_still_gone(self, root: bytes) -> bool:
        parts = components(root)
        try:
            pfd = fsio.open_dir(self.spec.src_root, b"/".join(parts[:-1]), source=True)
        except FileNotFoundError:
            return True  # its parent is gone too
        except OSError as exc:
            self._fail(root, "open directory", exc)
            return False
        try:
            if os.fstat(pfd).st_dev != self._root_dev:
                self._fail(root, "check source", ItemError(
                    "another filesystem is mounted here on the source; nothing under it is deleted", op="check"))
                return False
            os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._fail(root, "lstat", exc)
            return False
        finally:
            os.close(pfd)
        self.tally[C.KEPT] += 1
        log.info("%s is back on the source; not deleted", display(root))
        return False

    def _may_delete(self, path: bytes) -> bool:
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

    def _fail(self, rel: bytes, op: str, exc: BaseException, side: str = "source") -> None:
        report_failure(self.tally, self.on_failure, rel, op, exc, side)


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

