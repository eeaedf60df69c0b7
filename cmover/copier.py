"""Bringing one non-directory target entry in line with its source entry.

:func:`copy_entry` is called with open descriptors of the source and target parent directories (both
opened without following symlinks, see :mod:`cmover.fsio`), so every operation is relative to them
and nothing here can leave the roots. It decides with :func:`cmover.compare.decide_copy` and acts:

* a missing regular file is created in place (no extra rename: at 10^9 files every MDS operation
  counts) and becomes complete only when its mtime is set last;
* an existing entry that must change data is rebuilt under a temporary name in the same directory and
  renamed over, so other hard links to the old inode are never written through and the old version
  stays whole until the new one is complete;
* after copying data the source is re-checked; a file that changed meanwhile is not given the
  source's mtime (the next pass copies it again) and is reported as "changed during copy";
* a file with ``chunk_threshold`` bytes or more of data is handed to the :class:`~cmover.chunks.Chunker`,
  which has other tasks copy it in chunks into a part file renamed over the name when complete.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections import Counter
from dataclasses import dataclass

from cmover import fsio, metadata, xattrs
from cmover.chunks import Chunker
from cmover.compare import Action, decide_copy, unchanged
from cmover.errors import SourceChangedError
from cmover.filters import Filter
from cmover.hardlinks import HardLinker, LinkDeferred
from cmover.lustre.base import FsApi
from cmover.record import Kind, Record
from cmover.stats import C

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(slots=True)
class Copier:
    """Per-task state for copying entries: filesystem API, filter, the task's tally, hard-link handling."""

    fs: FsApi
    filt: Filter
    tally: Counter[str]
    links: HardLinker | None = None
    chunker: Chunker | None = None
    chunk_threshold: int = 0  # regular files of this size or more go to the chunker (0: never)

    def copy_entry(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
                   rel: bytes | None = None) -> None:
        """Copy non-directory entry ``name`` whose fresh source ``lstat`` is ``st``.

        ``rel`` (the entry's relative path) enables hard-link handling for regular files with more than
        one name. Raises OSError or ItemError (the caller records a per-item failure) or
        SourceChangedError.
        """
        if self.links is not None and rel is not None and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            src = Record.from_stat(st)
            if self.filt.age_skip(src):
                self.tally[C.FILTERED] += 1
                return
            leader = self.links.leader(st, rel)
            if leader != rel:
                try:
                    linked = self.links.link(dst_dir_fd, name, leader, src)
                except LinkDeferred:
                    self.tally[C.LINK_DEFERRED] += 1
                    return
                self.tally[C.LINKED if linked else C.SKIPPED] += 1
                return
            if self._chunked(src):
                self.links.leader_chunked(st)
            try:
                self._copy_entry(src_dir_fd, dst_dir_fd, name, st, rel)
            except BaseException:
                self.links.leader_failed(st)
                raise
            return
        self._copy_entry(src_dir_fd, dst_dir_fd, name, st, rel)

    def _copy_entry(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
                    rel: bytes | None) -> None:
        dst_st = fsio.lstat_at(dst_dir_fd, name)
        restripe = self.fs.compares_layouts and self._layout_differs(src_dir_fd, dst_dir_fd, name, st, dst_st)
        if dst_st is not None and not restripe and not self.filt.has_age_window and unchanged(st, dst_st):
            # The common case of a re-run: no record, no decision object; only the xattrs to compare.
            if self._same_xattrs(src_dir_fd, dst_dir_fd, name):
                self.tally[C.SKIPPED] += 1
            else:
                self._update_meta(src_dir_fd, dst_dir_fd, name, Record.from_stat(st))
                self.tally[C.META] += 1
            return
        src = Record.from_stat(st)
        if src.kind is Kind.SOCK:
            self.tally[C.SOCKETS] += 1  # a socket is recreated by its server, never by a copy
            return
        if self.filt.age_skip(src):
            self.tally[C.FILTERED] += 1
            return
        decision = decide_copy(src, Record.from_stat(dst_st) if dst_st is not None else None)
        action = decision.action
        if restripe and action in (Action.SKIP, Action.UPDATE_META):
            action = Action.REPLACE  # rebuilt under a temporary name, with the layout it should have
            self.tally[C.RESTRIPED] += 1
        if rel is not None and self._chunked(src) and action in (Action.CREATE, Action.REPLACE, Action.CLEAR_DIR):
            if action is Action.CLEAR_DIR:
                shutil.rmtree(name, dir_fd=dst_dir_fd)
            # The target name keeps its old version (or stays absent) until the last chunk renames over it.
            assert self.chunker is not None
            self.chunker.split(src_dir_fd, dst_dir_fd, name, rel, src)
            return
        if action is Action.SKIP and not self._same_xattrs(src_dir_fd, dst_dir_fd, name):
            action = Action.UPDATE_META
        if action is Action.SKIP:
            self.tally[C.SKIPPED] += 1
        elif action is Action.UPDATE_META:
            self._update_meta(src_dir_fd, dst_dir_fd, name, src)
            self.tally[C.META] += 1
        elif action is Action.CREATE:
            self._create(src_dir_fd, dst_dir_fd, name, src)
        elif action is Action.REPLACE:
            self._replace(src_dir_fd, dst_dir_fd, name, src)
        elif action is Action.CLEAR_DIR:
            # Positive proof: the source holds a non-directory under this name right now, so the
            # target directory tree has no source counterpart. Removed with descriptors, no symlink followed.
            shutil.rmtree(name, dir_fd=dst_dir_fd)
            self._create(src_dir_fd, dst_dir_fd, name, src)
        else:  # RETYPE_TO_DIR is handled by the directory walker, never reached for a non-directory
            raise AssertionError(action)

    # -- actions ------------------------------------------------------------------------------------

    def _create(self, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record) -> None:
        try:
            self._build(src_dir_fd, dst_dir_fd, name, name, src)
        except FileExistsError:
            # Another delivery of this task (or a user) created it meanwhile: rebuild and rename over.
            self._replace(src_dir_fd, dst_dir_fd, name, src)

    def _replace(self, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record) -> None:
        # Fixed length, so that a 255-byte name still gets a valid temporary name.
        tmp = ".cmover." + secrets.token_hex(8) + ".tmp"
        try:
            self._build(src_dir_fd, dst_dir_fd, name, tmp, src)
            os.rename(tmp, name, src_dir_fd=dst_dir_fd, dst_dir_fd=dst_dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dst_dir_fd)
            except OSError:
                pass
            raise

    def _build(self, src_dir_fd: int, dst_dir_fd: int, name: str, into: str, src: Record) -> None:
        """Create ``into`` in the target directory as a complete copy of source entry ``name``."""
        if src.kind is Kind.REG:
            self._copy_file(src_dir_fd, dst_dir_fd, name, into, src)
            return
        src_x = xattrs.read_all(xattrs.at(src_dir_fd, name))
        if src.kind is Kind.LNK:
            link = os.readlink(name, dir_fd=src_dir_fd)
            if len(link) != src.size:
                raise SourceChangedError("symlink changed while copied", op="readlink")
            os.symlink(link, into, dir_fd=dst_dir_fd)
        elif src.kind is Kind.FIFO:
            os.mkfifo(into, 0o600, dir_fd=dst_dir_fd)
        elif src.kind in (Kind.CHR, Kind.BLK):
            fmt = stat.S_IFCHR if src.kind is Kind.CHR else stat.S_IFBLK
            os.mknod(into, fmt | 0o600, src.rdev, dir_fd=dst_dir_fd)
        else:  # pragma: no cover - sockets and directories never reach here
            raise AssertionError(src.kind)
        metadata.apply_at(dst_dir_fd, into, src, xattrs=src_x)
        self.tally[C.COPIED] += 1

    def _copy_file(self, src_dir_fd: int, dst_dir_fd: int, name: str, into: str, src: Record) -> None:
        fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
        try:
            before = os.fstat(fin)
            if not stat.S_ISREG(before.st_mode) or before.st_ino != src.ino or before.st_dev != src.dev:
                raise SourceChangedError("source replaced between listing and copy", op="open")
            src_x = xattrs.read_all(fin)
            fout = self.fs.create_file(dst_dir_fd, into, fin)
            try:
                # Fewer allocated blocks than the size means holes: copy only the data ranges.
                copied = fsio.copy_data(fin, fout, src.size, sparse=src.blocks * 512 < src.size)
                metadata.apply_fd(fout, src, xattrs=src_x, times=False)
                after = os.fstat(fin)
                if (after.st_mtime_ns, after.st_size, after.st_ctime_ns) != (src.mtime_ns, src.size, src.ctime_ns) \
                        or copied != src.size:
                    raise SourceChangedError("source changed during copy", op="copy")
                os.utime(fout, ns=(src.atime_ns, src.mtime_ns))  # last: marks the copy complete
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        self.tally[C.COPIED] += 1
        self.tally[C.BYTES] += copied

    def _layout_differs(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
                        dst_st: os.stat_result | None) -> bool:
        """Whether an existing single-link target file must be rewritten for its layout (``--restripe``).

        Files with several names are left alone: rewriting one name would split the group.
        """
        if dst_st is None or not stat.S_ISREG(st.st_mode) or not stat.S_ISREG(dst_st.st_mode) \
                or st.st_nlink > 1 or dst_st.st_nlink > 1:
            return False
        try:
            fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
        except OSError:
            return False  # the copy decision reports what is wrong with the source
        try:
            fout = os.open(name, _READ_FLAGS, dir_fd=dst_dir_fd)
        except OSError:
            os.close(fin)
            return False
        try:
            return self.fs.layout_differs(fin, fout)
        finally:
            os.close(fout)
            os.close(fin)

    def _chunked(self, src: Record) -> bool:
        """Whether the copy of ``src`` goes to the chunker. Allocated bytes decide, not the size: a
        sparse file with little data is one quick task."""
        return self.chunker is not None and self.chunk_threshold > 0 and src.kind is Kind.REG \
            and min(src.size, src.blocks * 512) >= self.chunk_threshold

    def _update_meta(self, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record) -> None:
        src_x = xattrs.read_all(xattrs.at(src_dir_fd, name))
        if src.kind is Kind.REG:
            fd = os.open(name, _READ_FLAGS, dir_fd=dst_dir_fd)
            try:
                metadata.apply_fd(fd, src, xattrs=src_x)
            finally:
                os.close(fd)
        else:
            metadata.apply_at(dst_dir_fd, name, src, xattrs=src_x)

    @staticmethod
    def _same_xattrs(src_dir_fd: int, dst_dir_fd: int, name: str) -> bool:
        return xattrs.same(xattrs.at(src_dir_fd, name), xattrs.at(dst_dir_fd, name))
