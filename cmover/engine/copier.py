"""Bringing one non-directory target entry in line with its source entry.

:func:`copy_entry` is called with open descriptors of the source and target parent directories (both
opened without following symlinks, see :mod:`cmover.core.fsio`), so every operation is relative to them
and nothing here can leave the roots. It decides with :func:`cmover.engine.compare.decide_copy` and acts:

* a missing regular file is created in place (no extra rename: at 10^9 files every MDS operation
  counts) and becomes complete only when its mtime is set last;
* an existing entry that must change data is rebuilt under a temporary name in the same directory and
  renamed over, so other hard links to the old inode are never written through and the old version
  stays whole until the new one is complete;
* after copying data the source is re-checked; a file that changed meanwhile is not given the
  source's mtime (the next pass copies it again) and is reported as "changed during copy";
* a file with ``chunk_threshold`` bytes or more of data is handed to the :class:`~cmover.engine.chunks.Chunker`,
  which has other tasks copy it in chunks into a part file renamed over the name when complete;
* what the process may not set (``can``: owners and set-id bits, device nodes, privileged attributes for
  a regular user, see :mod:`cmover.core.privileges`) is neither compared nor attempted: device nodes are
  counted as skipped, entries written with another owner or group than their source's are counted as
  ``not_preserved``, and neither is a failure;
* with identity maps (``idmap``) the source is taken as its copy should look: owner, group and the ids
  of its POSIX ACLs mapped, for the decision and for what is written;
* a regular file's project id (:mod:`cmover.core.projid`) is copied whenever the file is written or its
  metadata updated, and compared on files otherwise identical in directories that have a project
  (``projects``); a changed one is applied as a metadata update.
"""

from __future__ import annotations

import enum
import os
import stat
from collections import Counter

from cmover.core import fsio, projid, xattrs
from cmover.core.cleanpass import Proof
from cmover.core.counters import C
from cmover.core.errors import SourceChangedError
from cmover.core.idmap import NO_MAP, IdMap
from cmover.core.privileges import Privileges, current
from cmover.core.record import Kind, Record
from cmover.engine import metadata
from cmover.engine.chunks import Chunker
from cmover.engine.compare import Action, decide_copy, unchanged
from cmover.engine.filters import Filter
from cmover.engine.hardlinks import HardLinker, LinkDeferred
from cmover.engine.hsmcopy import Act, HsmCopier
from cmover.lustre.base import FsApi
from cmover.lustre.hsmstate import NONE, HsmState

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Seen(enum.Enum):
    """What :meth:`Copier.try_skip` knows of an entry's target besides its ``lstat``."""

    UNSEEN = "not looked at"  # Copier.copy_entry looks
    SKIPPED = "skipped"  # proven unchanged and counted: nothing else to do


class Copier:
    """Per-task state for copying entries: filesystem API, filter, the task's tally, hard-link handling.

    ``fs``: how target entries are created; ``filt``: the pass's selection; ``tally``: the task's counters;
    ``links``: hard-link groups (None: each name is copied as a file of its own); ``chunker``: where regular files
    of ``chunk_threshold`` bytes or more go (0: none does); ``can``: what this process may set on the target
    (default: :func:`~cmover.core.privileges.current`); ``idmap``: identity maps, the source as its copy should
    look; ``projects``: compare the project ids of otherwise identical files; ``hsm``: a Lustre HSM source, each
    regular file's state decides first; ``proof``: the clean-pass proof for the entries of the directory being
    handled. The copy pass sets ``projects`` and ``proof`` for each directory.
    """

    __slots__ = ("fs", "filt", "tally", "links", "chunker", "chunk_threshold", "can", "idmap", "projects", "hsm",
                 "_proof", "_cut", "_fast_map", "_size_window", "_plain", "opens_first")

    def __init__(self, fs: FsApi, filt: Filter, tally: Counter[str], links: HardLinker | None = None,
                 chunker: Chunker | None = None, chunk_threshold: int = 0, can: Privileges | None = None,
                 idmap: IdMap = NO_MAP, projects: bool = False, hsm: HsmCopier | None = None,
                 proof: Proof | None = None) -> None:
        self.fs = fs
        self.filt = filt
        self.tally = tally
        self.links = links
        self.chunker = chunker
        self.chunk_threshold = chunk_threshold  # regular files of this size or more go to the chunker (0: never)
        self.can = current() if can is None else can  # what this process may set on the target
        self.idmap = idmap  # identity maps: the source as its copy should look (owners, ACL ids)
        # Compare the project ids of files that are otherwise identical: set by the copy pass for each directory
        # whose source has a project and whose target can store one (see _project_differs).
        self.projects = projects
        self.hsm = hsm  # a Lustre HSM source: each regular file's state decides first
        self._fast_map = idmap if idmap else None  # idmap, or None when empty (the no-change path)
        # Whether a size bound is set: a plain attribute, read once per file on the copy hot path.
        self._size_window = filt.has_size_window
        # Whether an entry may be skipped by try_skip: no filter, HSM source or layout comparison to consult first.
        self._plain = not (self._size_window or filt.has_age_window or hsm is not None or fs.compares_layouts)
        # Whether a new regular file may be opened before it is looked at (copy_new): no filter or HSM source
        # to consult on its lstat first.
        self.opens_first = not (self._size_window or filt.has_age_window or hsm is not None)
        self.proof = proof

    @property
    def proof(self) -> Proof | None:
        """The clean-pass proof for the entries of the directory being handled (:mod:`cmover.core.cleanpass`);
        None when that directory is not proven: every entry's attributes are compared in full."""
        return self._proof

    @proof.setter
    def proof(self, proof: Proof | None) -> None:
        self._proof = proof
        # What try_skip needs of it, once per directory rather than per entry: None when it does not apply.
        self._cut = proof if proof is not None and self._plain else None

    def try_skip(self, dst_dir_fd: int, name: str, st: os.stat_result) -> os.stat_result | None | Seen:
        """The no-change path of non-directory entry ``name`` (fresh source ``lstat`` ``st``), before any
        per-entry bookkeeping: :data:`SKIPPED` (counted; nothing else to do) when its target ``lstat`` is
        :func:`~cmover.engine.compare.unchanged` and the clean-pass proof covers both sides (exactly the skip
        :meth:`copy_entry` would make); otherwise what the target ``lstat`` found (None: no entry), or
        :data:`UNSEEN` when this path does not apply (no proof, a filter, an HSM source, a layout policy to
        compare, a hard link) or the ``lstat`` failed. Either is for :meth:`copy_entry`, which then does not
        look at the target again."""
        proof = self._cut
        if proof is None or (st.st_nlink > 1 and stat.S_ISREG(st.st_mode)):
            return Seen.UNSEEN
        try:
            dst_st = os.stat(name, dir_fd=dst_dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError:
            return Seen.UNSEEN  # copy_entry looks again, under the per-entry guard that handles the error
        if proof.covers(st.st_ctime_ns, dst_st.st_ctime_ns) and unchanged(st, dst_st, self.can, self._fast_map):
            self.tally[C.SKIPPED] += 1
            return Seen.SKIPPED
        return dst_st

    def absent(self, dst_dir_fd: int, name: str, st: os.stat_result) -> os.stat_result | None | Seen:
        """:meth:`try_skip` in a target directory that this pass has just created, whose names are all its own
        to create: None (no entry; creation is exclusive, and a name made meanwhile, by an earlier delivery of
        the same task, is rebuilt and renamed over, see :meth:`_create`). :data:`UNSEEN` (looked up as usual) for
        a regular file with several names, whose group a rebuild of one name would split, for a file that goes
        to the chunker (its chunks rename over the name at the end: a lookup costs nothing beside its copy),
        and for an HSM source."""
        if self.hsm is not None or (stat.S_ISREG(st.st_mode) and not self.plain_new(st)):
            return Seen.UNSEEN
        return None

    def plain_new(self, st: os.stat_result) -> bool:
        """Whether source entry ``st`` may be copied by :meth:`copy_new` into a directory this pass has just made:
        a regular file with one name (a rebuild of one name of several would split their group, see
        :meth:`absent`) that is not for the chunker."""
        return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and not self._to_chunker(st.st_size, st.st_blocks)

    def copy_new(self, src_dir_fd: int, dst_dir_fd: int, name: str,
                 st: os.stat_result | None = None) -> os.stat_result | None:
        """Copy new file ``name`` of a source directory whose target this pass has just made (:meth:`absent`:
        nothing is looked up there) the short way: no decision to take, the file is created. Only
        :data:`opens_first` copiers may (no filter, no HSM source).

        Without ``st``, ``name`` is a regular file by its directory's listing, and it is opened before any
        ``lstat``: the ``fstat`` of the open file stands for the ``lstat`` :meth:`copy_entry` needs first. One
        lookup less per new file (a metadata server round trip on Lustre). What is then not a
        :meth:`plain_new` file -- a file with several names, one for the chunker, an entry that is no longer a
        regular file (opened, it is closed at once: ``O_NONBLOCK``, and ``O_NOFOLLOW`` fails on a symlink) or
        cannot be opened -- is left alone and its ``lstat`` returned, for the caller to handle as any listed
        entry. With ``st``, the caller's ``lstat`` of a :meth:`plain_new` file (a batch's names carry no type),
        the file opened must be that one (:class:`SourceChangedError` otherwise, as in :meth:`copy_entry`).

        Returns None once it is copied. Raises as :meth:`copy_entry` does; FileNotFoundError when the entry is
        gone.
        """
        # Without st, the type is the one this task's own listing read: an entry replaced by a device node since
        # then would be opened, as one replaced between an lstat and its open would be. The window is longer
        # (up to the handling of the directory's entries listed before it), the risk of the same kind.
        try:
            fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
        except OSError as exc:
            if st is not None or isinstance(exc, FileNotFoundError):
                raise
            # ELOOP (a symlink now), ENXIO (a socket), EACCES...: looked at as any entry
            return os.stat(name, dir_fd=src_dir_fd, follow_symlinks=False)
        try:
            now = os.fstat(fin)
            if st is not None:
                if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino or now.st_dev != st.st_dev:
                    raise SourceChangedError("source replaced between listing and copy", op="open")
                src = self._src(st)
            elif self.plain_new(now):
                src = self._src(now)
            else:
                return now if stat.S_ISREG(now.st_mode) else os.stat(name, dir_fd=src_dir_fd, follow_symlinks=False)
            try:
                self._write_file(fin, now, dst_dir_fd, name, name, src)
                return None
            except FileExistsError:
                pass  # made meanwhile: rebuilt below, as _create does
        finally:
            os.close(fin)
        self._taken(src_dir_fd, dst_dir_fd, name, src)
        return None

    def _src(self, st: os.stat_result) -> Record:
        """The record of source entry ``st`` as its copy should be: owner and group mapped."""
        return self.idmap.record(Record.from_stat(st))

    def copy_entry(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
                   rel: bytes | None = None, dst_st: os.stat_result | None | Seen = Seen.UNSEEN) -> None:
        """Copy non-directory entry ``name`` whose fresh source ``lstat`` is ``st``.

        ``rel`` (the entry's relative path) enables hard-link handling for regular files with more than
        one name. ``dst_st``: the target's ``lstat`` as :meth:`try_skip` found it (None: no entry); by
        default (``Seen.UNSEEN``) it is looked at here. Raises OSError or ItemError (the caller records a
        per-item failure) or SourceChangedError.
        """
        if self._size_window and stat.S_ISREG(st.st_mode) and self.filt.size_skip(st.st_size):
            # Before any look at the target: whatever the target holds under this name is left as it is
            # (never replaced, never removed; the delete pass keeps it too, the source entry exists).
            self.tally[C.SIZE_FILTERED] += 1
            return
        if self.links is not None and rel is not None and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            if self.hsm is not None and self.hsm.skips_group(src_dir_fd, name, st, rel):
                return  # a released group left out: no name of it is linked to a leader that is not copied
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
                self._copy_entry(src_dir_fd, dst_dir_fd, name, st, rel, dst_st)
            except BaseException:
                self.links.leader_failed(st)
                raise
            return
        self._copy_entry(src_dir_fd, dst_dir_fd, name, st, rel, dst_st)

    def _copy_entry(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
                    rel: bytes | None, seen: os.stat_result | None | Seen) -> None:
        if seen is Seen.SKIPPED:
            return
        dst_st = fsio.lstat_at(dst_dir_fd, name) if seen is Seen.UNSEEN else seen
        hsm_act, state = Act.COPY, NONE
        if self.hsm is not None and stat.S_ISREG(st.st_mode):
            # Before anything reads a byte of it: a released file's data is only in the archive.
            hsm_act, state = self.hsm.plan(src_dir_fd, dst_dir_fd, name, st, dst_st)
            if hsm_act is not Act.COPY and self.hsm.act(hsm_act, state, src_dir_fd, dst_dir_fd, name, st,
                                                        rel if rel is not None else os.fsencode(name),
                                                        dst_st is not None):
                return
        restripe = hsm_act is Act.COPY and self.fs.compares_layouts \
            and self._layout_differs(src_dir_fd, dst_dir_fd, name, st, dst_st)
        if dst_st is not None and not restripe and not self.filt.has_age_window \
                and unchanged(st, dst_st, self.can, self._fast_map):
            # The common case of a re-run: no record, no decision object; only the xattrs to compare (and,
            # in a directory with a project, the project ids), unless the last clean pass proves them.
            if self._same_attrs(src_dir_fd, dst_dir_fd, name, st, dst_st):
                self.tally[C.SKIPPED] += 1
            else:
                self._update_meta(src_dir_fd, dst_dir_fd, name, self._src(st))
                self.tally[C.META] += 1
            return
        src = self._src(st)
        if src.kind in (Kind.CHR, Kind.BLK) and not self.can.mknod:
            self.tally[C.DEVICES] += 1  # only root creates device nodes (said once, see cmover.core.privileges)
            return
        if self.filt.age_skip(src):
            self.tally[C.FILTERED] += 1
            return
        decision = decide_copy(src, Record.from_stat(dst_st) if dst_st is not None else None, self.can)
        action = decision.action
        if restripe and action in (Action.SKIP, Action.UPDATE_META):
            action = Action.REPLACE  # rebuilt under a temporary name, with the layout it should have
            self.tally[C.RESTRIPED] += 1
        if hsm_act is not Act.COPY:
            self._hsm_copy(hsm_act, state, action, src_dir_fd, dst_dir_fd, name, src, st, dst_st, rel)
            return
        if rel is not None and self._chunked(src) and action in (Action.CREATE, Action.REPLACE, Action.CLEAR_DIR):
            if action is Action.CLEAR_DIR:
                fsio.remove_tree(name, dst_dir_fd)
            # The target name keeps its old version (or stays absent) until the last chunk renames over it.
            assert self.chunker is not None
            self.chunker.split(src_dir_fd, dst_dir_fd, name, rel, src)
            return
        self._act(action, src_dir_fd, dst_dir_fd, name, src, st, dst_st)

    def _act(self, action: Action, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record,
             st: os.stat_result, dst_st: os.stat_result | None) -> None:
        if action is Action.SKIP and dst_st is not None and not self._same_attrs(src_dir_fd, dst_dir_fd, name, st,
                                                                                 dst_st):
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
            fsio.remove_tree(name, dst_dir_fd)
            self._create(src_dir_fd, dst_dir_fd, name, src)
        else:  # RETYPE_TO_DIR is handled by the directory walker, never reached for a non-directory
            raise AssertionError(action)

    def _hsm_copy(self, act: Act, state: HsmState, action: Action, src_dir_fd: int, dst_dir_fd: int, name: str,
                  src: Record, st: os.stat_result, dst_st: os.stat_result | None, rel: bytes | None) -> None:
        """The ordinary action for an HSM file: never chunked (a file is marked once, whole), no data moved
        for KEEP and MARK, the copy counted for RECALL and marked archived for COPY_MARK."""
        assert self.hsm is not None
        data = action in (Action.CREATE, Action.REPLACE, Action.CLEAR_DIR)
        if data and act in (Act.KEEP, Act.MARK):
            raise SourceChangedError("target changed while its HSM state was read", op="hsm")
        self._act(action, src_dir_fd, dst_dir_fd, name, src, st, dst_st)
        if data and act is Act.RECALL:
            self.tally[C.HSM_RECALLED] += 1
        elif data and act is Act.COPY_MARK:
            self.hsm.mark(state, src_dir_fd, dst_dir_fd, name, rel if rel is not None else os.fsencode(name))

    # -- actions ------------------------------------------------------------------------------------

    def _create(self, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record) -> None:
        try:
            self._build(src_dir_fd, dst_dir_fd, name, name, src)
        except FileExistsError:
            self._taken(src_dir_fd, dst_dir_fd, name, src)

    def _taken(self, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record) -> None:
        """Creating ``name`` found it taken: another delivery of this task (or a user) created it meanwhile, or
        it was not looked up (a directory this pass has just made, see :meth:`absent`). Rebuild and rename over;
        a directory in its place is removed first, as for CLEAR_DIR: the source holds a non-directory there."""
        now = fsio.lstat_at(dst_dir_fd, name)
        if now is not None and stat.S_ISDIR(now.st_mode):
            fsio.remove_tree(name, dst_dir_fd)
        self._replace(src_dir_fd, dst_dir_fd, name, src)

    def _replace(self, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record) -> None:
        tmp = fsio.temp_name()
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
        src_x = self.idmap.xattrs(xattrs.read_all(xattrs.at(src_dir_fd, name), self.can))
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
        elif src.kind is Kind.SOCK:
            # The socket node only (as ``rsync -D`` makes it): no process listens on it; a server that
            # binds the name on the new site replaces it. Needs no privilege, unlike a device node.
            os.mknod(into, stat.S_IFSOCK | 0o600, dir_fd=dst_dir_fd)
        else:  # pragma: no cover - directories never reach here
            raise AssertionError(src.kind)
        metadata.apply_at(dst_dir_fd, into, src, xattrs=src_x, can=self.can)
        self.tally[C.COPIED] += 1
        self._count_lost(src)

    def _copy_file(self, src_dir_fd: int, dst_dir_fd: int, name: str, into: str, src: Record) -> None:
        fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
        try:
            before = os.fstat(fin)
            if not stat.S_ISREG(before.st_mode) or before.st_ino != src.ino or before.st_dev != src.dev:
                raise SourceChangedError("source replaced between listing and copy", op="open")
            self._write_file(fin, before, dst_dir_fd, name, into, src)
        finally:
            os.close(fin)

    def _write_file(self, fin: int, before: os.stat_result, dst_dir_fd: int, name: str, into: str,
                    src: Record) -> None:
        """Create ``into`` as a copy of open source file ``fin`` (``before``: its ``fstat`` since it was opened,
        ``src``: the record to copy, taken from it or from the ``lstat`` of the same file); ``fin`` stays open."""
        src_x = self.idmap.xattrs(xattrs.read_all(fin, self.can))
        fout = self.fs.create_file(dst_dir_fd, into, fin,
                                   metadata.create_mode(self.can.perm(src.perm, src.uid, src.gid)))
        try:
            # Taken before the data, for the copy method and for apply_fd: writing changes neither the
            # owner nor the mode of a file created without a set-id bit (metadata.create_mode).
            out = os.fstat(fout)
            # Fewer allocated blocks than the size means holes: copy only the data ranges.
            copied = fsio.copy_data(fin, fout, src.size, sparse=src.blocks * 512 < src.size,
                                    devices=(before.st_dev, out.st_dev))
            metadata.apply_fd(fout, src, xattrs=src_x, times=False, can=self.can, st=out)
            projid.count(self.tally, projid.sync(fin, fout, False), name)
            after = os.fstat(fin)
            if (after.st_mtime_ns, after.st_size, after.st_ctime_ns) != (src.mtime_ns, src.size, src.ctime_ns) \
                    or copied != src.size:
                raise SourceChangedError("source changed during copy", op="copy")
            os.utime(fout, ns=(src.atime_ns, src.mtime_ns))  # last: marks the copy complete
        finally:
            os.close(fout)
        self.tally[C.COPIED] += 1
        self.tally[C.BYTES] += copied
        self._count_lost(src)

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
        """Whether the copy of ``src`` goes to the chunker."""
        return src.kind is Kind.REG and self._to_chunker(src.size, src.blocks)

    def _to_chunker(self, size: int, blocks: int) -> bool:
        """Whether a regular file of ``size`` bytes and ``blocks`` 512-byte blocks goes to the chunker. Allocated
        bytes decide, not the size: a sparse file with little data is one quick task."""
        return self.chunker is not None and self.chunk_threshold > 0 and min(size, blocks * 512) >= self.chunk_threshold

    def _update_meta(self, src_dir_fd: int, dst_dir_fd: int, name: str, src: Record) -> None:
        src_x = self.idmap.xattrs(xattrs.read_all(xattrs.at(src_dir_fd, name), self.can))
        if src.kind is Kind.REG:
            fd = os.open(name, _READ_FLAGS, dir_fd=dst_dir_fd)
            try:
                fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
                try:
                    projid.count(self.tally, projid.sync(fin, fd, False), name)
                finally:
                    os.close(fin)
                metadata.apply_fd(fd, src, xattrs=src_x, can=self.can)
            finally:
                os.close(fd)
        else:
            metadata.apply_at(dst_dir_fd, name, src, xattrs=src_x, can=self.can)
        self._count_lost(src)

    def _count_lost(self, src: Record) -> None:
        """Count an entry just written with another owner or group than its source's (not root)."""
        if self.can.loses(src.uid, src.gid):
            self.tally[C.NOT_PRESERVED] += 1

    def _same_attrs(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result,
                    dst_st: os.stat_result) -> bool:
        """Whether the entry's attributes (xattrs, ACLs, project id) are the same on both sides: proven by the
        last clean pass (:meth:`cmover.core.cleanpass.Proof.covers`; the caller has matched the target
        ``lstat``), else compared."""
        proof = self.proof
        if proof is not None and proof.covers(st.st_ctime_ns, dst_st.st_ctime_ns):
            return True
        return self._same_xattrs(src_dir_fd, dst_dir_fd, name) \
            and not self._project_differs(src_dir_fd, dst_dir_fd, name, st)

    def _project_differs(self, src_dir_fd: int, dst_dir_fd: int, name: str, st: os.stat_result) -> bool:
        """Whether regular file ``name`` must be given its source's project id (only in a directory that
        has a project: ``projects``; elsewhere a file's project id is copied whenever the file is written
        or its metadata updated). Costs an open and an ioctl on each side."""
        if not self.projects or not stat.S_ISREG(st.st_mode):
            return False
        fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
        try:
            src = projid.read(fin)
        finally:
            os.close(fin)
        if src is None or not src.present:
            return False
        fd = os.open(name, _READ_FLAGS, dir_fd=dst_dir_fd)
        try:
            return projid.decide(src, projid.read(fd)) == projid.SET
        finally:
            os.close(fd)

    def _same_xattrs(self, src_dir_fd: int, dst_dir_fd: int, name: str) -> bool:
        return xattrs.same(xattrs.at(src_dir_fd, name), xattrs.at(dst_dir_fd, name), self.can, self.idmap)
