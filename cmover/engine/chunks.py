"""Huge files copied in chunks by several workers at once.

A regular file of ``spec.chunk_threshold`` bytes or more is not copied by the task that finds it. That
task (:meth:`Chunker.split`) creates a *part file* ``.cmover.<hash>.part`` next to the target name, sets
its length and publishes one chunk job per ``chunk`` bytes. Each chunk task (:meth:`Chunker.run_chunk`)
writes its byte range, flushes it to stable storage, re-checks the source and marks its chunk done in
the run's ledger. The task that then finds every chunk done, and wins the file's *finish* claim,
re-checks the source once more, applies owner, mode, xattrs and times (mtime last) to the part file and
renames it over the target name.

Why nothing incomplete can look complete:

* The target name only ever holds a whole file: until the rename it is absent or the previous version.
  A chunk whose worker died is redelivered by the broker and rewritten; until it is marked done (after
  ``fdatasync``) the file cannot finish.
* The part name and the chunk task ids derive from the run, the path and the source identity (inode,
  size, ctime, mtime): a redelivered split reuses the same part and ids; a source that changed gets a
  new part. A part left behind by an abandoned run has no source counterpart, so the delete pass
  removes it.
* The finish claim's value is the id of the chunk task that won it: only that task finishes the file,
  and its own redelivery (killed while finishing) can finish it again.
* A changed source (identity differs) at any step removes the part and counts "changed during copy";
  the next pass copies the file again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from cmover.core import fsio, projid, xattrs
from cmover.core.counters import C
from cmover.core.errors import ConfinementError, SourceChangedError
from cmover.core.frozen import Frozen, NamedTuple
from cmover.core.idmap import NO_MAP, IdMap
from cmover.core.paths import to_wire
from cmover.core.privileges import current
from cmover.core.record import Record
from cmover.engine import metadata
from cmover.engine.claims import Claims
from cmover.lustre.base import FsApi

log = logging.getLogger(__name__)

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_PART_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# More chunks than this per file would make the finish check (one ledger read per chunk) the bottleneck.
MAX_CHUNKS = 100_000


class ChunkSpec(NamedTuple):
    """Identity of a source file when it was split, and the chunk geometry; carried by every chunk job."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    chunk: int

    @property
    def count(self) -> int:  # type: ignore[override]  # the number of chunks; hides tuple.count
        return -(-self.size // self.chunk)

    def extent(self, index: int) -> tuple[int, int]:
        """Offset and length of chunk ``index`` (the last one may be shorter)."""
        offset = index * self.chunk
        return offset, min(self.chunk, self.size - offset)

    def ident(self) -> bytes:
        """The source identity alone (names the part file, whatever the chunk geometry)."""
        return f"{self.size}:{self.mtime_ns}:{self.ctime_ns}:{self.ino}".encode()

    def key(self) -> bytes:
        """Identity and geometry (part of every chunk task's id)."""
        return self.ident() + f":{self.chunk}".encode()

    def matches(self, st: os.stat_result) -> bool:
        """True when ``st`` is still the file that was split (same inode, size, ctime and mtime)."""
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == \
            (self.ino, self.size, self.mtime_ns, self.ctime_ns)

    def as_wire(self) -> dict[str, int]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "ctime_ns": self.ctime_ns, "ino": self.ino,
                "chunk": self.chunk}

    @classmethod
    def from_wire(cls, d: Any) -> ChunkSpec:
        """Rebuild from a message; raise ConfinementError on anything malformed."""
        if not isinstance(d, dict):
            raise ConfinementError("chunk description in message is not an object")
        vals = {}
        for name in ("size", "mtime_ns", "ctime_ns", "ino", "chunk"):
            v = d.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name in ("size", "chunk") else -(2**63)):
                raise ConfinementError(f"chunk field {name} in message is not a valid integer: {v!r}")
            vals[name] = v
        cs = cls(**vals)
        if cs.count > MAX_CHUNKS:
            raise ConfinementError(f"chunk description in message makes {cs.count} chunks (at most {MAX_CHUNKS})")
        return cs


def aligned(chunk: int, stripe: int) -> int:
    """``chunk`` rounded up to a whole number of stripes (unchanged when there is no stripe size)."""
    return chunk if stripe <= 0 else -(-chunk // stripe) * stripe


def part_name(run_id: str, rel: bytes, cs: ChunkSpec) -> str:
    """Deterministic temporary name of a chunked file's copy (fixed length: fits beside any 255-byte name)."""
    h = hashlib.sha1(run_id.encode() + b"\0" + rel + b"\0" + cs.ident()).hexdigest()[:16]
    return f".cmover.{h}.part"


def chunk_geometry(size: int, chunk: int, stripe: int) -> int:
    """Chunk size for a file of ``size`` bytes: stripe-aligned, and large enough for at most MAX_CHUNKS."""
    c = max(aligned(chunk, stripe), -(-size // MAX_CHUNKS))
    return aligned(c, stripe)


class ChunkJob(Frozen):
    """Chunk ``index`` of the file ``rel`` split as ``cs``: a copy-pass job (see :mod:`cmover.engine.jobs`)."""

    __slots__ = ("rel", "index", "cs")
    kind: ClassVar[str] = "chunk"
    rel: bytes
    index: int
    cs: ChunkSpec

    def __init__(self, rel: bytes, index: int, cs: ChunkSpec) -> None:
        object.__setattr__(self, "rel", rel)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "cs", cs)

    def ident(self) -> tuple[bytes, ...]:
        # The source identity and geometry: a changed source gets new chunk tasks, never ones marked done.
        return (self.cs.key(),)

    def wire_args(self) -> list[Any]:
        return [to_wire(self.rel), self.index, self.cs.as_wire()]


class Chunker:
    """Splitting huge files into chunk jobs, and running one chunk job. One per task, not thread-safe."""

    def __init__(self, run_id: str, fs: FsApi, tally: Counter[str], emit: Callable[[ChunkJob], None],
                 claims: Claims, chunk_size: int, idmap: IdMap = NO_MAP) -> None:
        self.run_id = run_id
        self.fs = fs
        self.tally = tally
        self.emit = emit
        self.claims = claims
        self.idmap = idmap  # owners and ACL ids of the finished file (cmover.core.idmap)
        self.chunk_size = chunk_size

    # -- the task that found the file ---------------------------------------------------------------

    def split(self, src_dir_fd: int, dst_dir_fd: int, name: str, rel: bytes, src: Record) -> None:
        """Create the part file of source ``name`` (lstat ``src``) and publish its chunk jobs.

        The target name is left as it is until the last chunk finishes the file. Raises
        SourceChangedError if the source is no longer the file that was listed, OSError on I/O errors.
        """
        fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
        try:
            st = os.fstat(fin)
            if st.st_ino != src.ino or st.st_dev != src.dev or st.st_size != src.size \
                    or st.st_mtime_ns != src.mtime_ns:
                raise SourceChangedError("source replaced or changed between listing and copy", op="open")
            probe = ChunkSpec(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, self.chunk_size)
            part = part_name(self.run_id, rel, probe)
            try:
                fout = self.fs.create_file(dst_dir_fd, part, fin)
            except FileExistsError:
                # A redelivery of the task that split it: same part, same chunks (done ones are no-ops).
                fout = os.open(part, _PART_FLAGS, dir_fd=dst_dir_fd)
            try:
                if os.fstat(fout).st_size != st.st_size:
                    os.ftruncate(fout, st.st_size)  # holes until written
                cs = ChunkSpec(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                               chunk_geometry(st.st_size, self.chunk_size, self.fs.stripe_size(fout)))
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        self.tally[C.CHUNKED] += 1
        for i in range(cs.count):
            self.emit(ChunkJob(rel, i, cs))

    # -- a chunk task -------------------------------------------------------------------------------

    def run_chunk(self, src_dir_fd: int, dst_dir_fd: int, name: str, job: ChunkJob, task_id: str) -> None:
        """Write chunk ``job.index``; finish the file when it is the last one done.

        ``task_id`` identifies this chunk task across redeliveries (the finish claim's value).
        Raises SourceChangedError (part removed) or OSError.
        """
        cs = job.cs
        part = part_name(self.run_id, job.rel, cs)
        fin = fsio.open_noatime(name, _READ_FLAGS, dir_fd=src_dir_fd)
        try:
            st = os.fstat(fin)
            if not cs.matches(st):
                self._abandon(dst_dir_fd, part, "source changed after it was split")
            try:
                fout = os.open(part, _PART_FLAGS, dir_fd=dst_dir_fd)
            except FileNotFoundError:
                # Finished by another delivery of the last chunk, or abandoned: nothing left to do here.
                log.debug("part %s of %r is gone; chunk %d not needed", part, name, job.index)
                return
            try:
                # A redelivery of a chunk that was written and marked before its worker died does not
                # write again: the file may be finished meanwhile, and a write would move its mtime.
                if not self.claims.claimed([_done_key(part, job.index)]):
                    offset, length = cs.extent(job.index)
                    try:
                        got = fsio.copy_extent(fin, fout, offset, length, sparse=st.st_blocks * 512 < st.st_size)
                        # On stable storage before it counts as done: a crashed node's page cache is lost.
                        os.fdatasync(fout)
                    except OSError:
                        # This chunk fails (a per-item failure, e.g. ENOSPC) and is never marked done, so
                        # this run cannot finish the file: remove the part instead of leaving it (and the
                        # space it holds) on the target. Other chunks of it then find no part.
                        _remove_part(dst_dir_fd, part)
                        raise
                    if got != length or not cs.matches(os.fstat(fin)):
                        self._abandon(dst_dir_fd, part, "source changed during chunked copy")
                    self.tally[C.CHUNKS] += 1
                    self.tally[C.BYTES] += length
                    self.claims.claim(_done_key(part, job.index), "1")
                keys = [_done_key(part, i) for i in range(cs.count)]
                if self.claims.claimed(keys) < cs.count:
                    return
                if self.claims.claim(f"finish:{part}", task_id) != task_id:
                    return  # another chunk task saw all chunks done first and finishes the file
                self._finish(fin, fout, dst_dir_fd, part, name, cs)
            finally:
                os.close(fout)
        finally:
            os.close(fin)

    def _finish(self, fin: int, fout: int, dst_dir_fd: int, part: str, name: str, cs: ChunkSpec) -> None:
        st = os.fstat(fin)
        if not cs.matches(st):
            self._abandon(dst_dir_fd, part, "source changed during chunked copy")
        src = self.idmap.record(Record.from_stat(st))
        can = current()
        metadata.apply_fd(fout, src, xattrs=self.idmap.xattrs(xattrs.read_all(fin, can)), times=False, can=can)
        projid.count(self.tally, projid.sync(fin, fout, False), name)
        if not cs.matches(os.fstat(fin)):
            self._abandon(dst_dir_fd, part, "source changed during chunked copy")
        os.utime(fout, ns=(src.atime_ns, src.mtime_ns))  # last: marks the copy complete
        os.rename(part, name, src_dir_fd=dst_dir_fd, dst_dir_fd=dst_dir_fd)
        self.tally[C.COPIED] += 1
        if can.loses(src.uid, src.gid):
            self.tally[C.NOT_PRESERVED] += 1

    def _abandon(self, dst_dir_fd: int, part: str, why: str) -> None:
        _remove_part(dst_dir_fd, part)
        raise SourceChangedError(why, op="copy")


def _remove_part(dst_dir_fd: int, part: str) -> None:
    try:
        os.unlink(part, dir_fd=dst_dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove part file %s: %s", part, exc)


def _done_key(part: str, index: int) -> str:
    return f"chunk:{part[8:24]}:{index}"
