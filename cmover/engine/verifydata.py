"""The data side of the verify pass: file contents compared by checksum, and the manifest.

With ``--content`` both files are read and their BLAKE3 digests compared (:mod:`cmover.engine.checksum`).
A file of ``spec.chunk_threshold`` bytes or more is compared in chunk jobs spread over the workers
(:class:`~cmover.engine.chunks.ChunkJob`, the copy pass's chunk job on the verify pass's queue: each
reads one byte range on both sides; a file that differs is reported once,
by the first chunk task that finds it, through a run claim), except with a manifest, which needs each
file's digest in one piece: then the task that finds it reads it. With ``--manifest`` each digest goes
to this process's shard (:mod:`cmover.engine.manifest`); a file whose source size, mtime and ctime and
target ctime equal the previous manifest's record is not read again (its digest is taken from there).
The source of a file missing on the target, or of another type or size there, is still read for the
manifest (which lists every regular file of the source).

Files are opened with ``O_NOATIME`` where the process may; a source that changed while it was read
raises SourceChangedError (counted as changed, left for the next verify).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.errors import SourceChangedError
from cmover.core.logformat import at
from cmover.core.passes import PassSpec, VerifyOptions
from cmover.core.paths import display
from cmover.engine import checksum, manifest
from cmover.engine.chunks import ChunkJob, ChunkSpec, chunk_geometry
from cmover.engine.claims import Claims
from cmover.engine.jobs import Job
from cmover.engine.verifycmp import Side
from cmover.engine.walker import Walker

log = logging.getLogger("cmover.engine.verifypass")

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class DataCheck:
    """The data comparisons and manifest records of one verify task (built by its VerifyPass)."""

    def __init__(self, spec: PassSpec, tally: Counter[str], emit: Callable[[Job], None], claims: Claims,
                 walk: Walker, diff: Callable[[bytes, str, object, object], None],
                 open_dir: Callable[[bytes, bytes, str], int | None]) -> None:
        self.spec = spec
        opts = VerifyOptions.of(spec)
        self.tally = tally
        self.emit = emit
        self.claims = claims
        self.walk = walk
        self.diff = diff
        self.open_dir = open_dir
        self.shard = manifest.ShardWriter(opts.manifest, spec.run_id) if opts.manifest else None
        self.prev = manifest.PreviousIndex.open(opts.manifest) if opts.manifest and not opts.reread_all else None
        #: The previous index's records of the directory being verified, when its task handles all of it.
        self.prev_dir: dict[bytes, manifest.Entry] | None = None

    def close(self) -> None:
        """Write this task's manifest lines (one append to the process's shard)."""
        if self.prev is not None:
            self.prev.close()
            self.prev = None
        if self.shard is not None:
            try:
                self.shard.flush()
            except OSError as exc:
                self.walk.fail(self.spec.start, "write manifest shard", exc, side="manifest")

    def load_dir(self, rel: bytes) -> None:
        """Read the previous index's records of directory ``rel`` at once (a task that verifies all of it)."""
        self.prev_dir = {e.path: e for e in self.prev.directory(rel)} if self.prev is not None else None

    def content(self, path: bytes, src: Side, dst: Side, lead: bool) -> None:
        """Compare the data (``lead``: this name leads its hard-link group, else only the manifest needs
        the source's digest); record it in the manifest."""
        st = src.st
        size = st.st_size
        if not lead and self.shard is None:
            return
        threshold = self.spec.chunk_threshold
        if threshold and size >= threshold and self.shard is None:
            cs = ChunkSpec(size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                           chunk_geometry(size, self.spec.chunk_size, 0))
            self.tally[C.FILES_READ] += 1
            for i in range(cs.count):
                self.emit(ChunkJob(path, i, cs))
            return
        prev = self._previous(path)
        if prev is not None and (prev.size, prev.mtime_ns, prev.ctime_ns, prev.target_ctime_ns) == \
                (size, st.st_mtime_ns, st.st_ctime_ns, dst.st.st_ctime_ns):
            self.tally[C.HASHES_REUSED] += 1
            self._record(path, prev.digest, st, dst.st.st_ctime_ns)
            return
        sh, n1 = checksum.digest(src.fd(), 0, size)
        dh, n2 = checksum.digest(dst.fd(), 0, size) if lead else (sh, 0)
        self.tally[C.FILES_READ] += 1
        self.tally[C.BYTES_READ] += n1 + n2
        after = os.fstat(src.fd())
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (size, st.st_mtime_ns, st.st_ctime_ns):
            raise SourceChangedError("source changed while it was read", op="verify")
        if sh != dh:
            self.diff(path, "content", f"blake3 {sh}", f"blake3 {dh}")
        self._record(path, sh, st, dst.st.st_ctime_ns if sh == dh else -1)

    def source_only(self, path: bytes, src: Side) -> None:
        """The manifest's digest of a source file whose target differs in presence, type or size."""
        try:
            st = src.st
            digest, n = checksum.digest(src.fd(), 0, st.st_size)
            self.tally[C.BYTES_READ] += n
            self._record(path, digest, st, -1)
        finally:
            src.close()

    def _previous(self, path: bytes) -> manifest.Entry | None:
        if self.prev is None:
            return None
        if self.prev_dir is not None:
            return self.prev_dir.get(path)
        return self.prev.get(path)

    def _record(self, path: bytes, digest: str, st: os.stat_result, target_ctime_ns: int) -> None:
        if self.shard is None:
            return
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            self.tally[C.MANIFEST_LEFT_OUT] += 1
            log.info("%s: not UTF-8, left out of the manifest (b3sum cannot check it)", display(path), extra=at(path))
            return
        self.tally[C.MANIFEST_LISTED] += 1
        self.shard.add(manifest.Entry(st.st_size, st.st_mtime_ns, st.st_ctime_ns, target_ctime_ns, digest, path))

    def run_chunk(self, rel: bytes, index: int, cs: ChunkSpec) -> None:
        """Compare chunk ``index`` of file ``rel`` on both sides; a difference is reported once per file."""
        parent, _, bname = rel.rpartition(b"/")
        name = os.fsdecode(bname)
        src_dir = self.open_dir(self.spec.src_root, parent, "source")
        if src_dir is None or src_dir < 0:
            if src_dir is None:
                self.walk.vanished(rel)
            return
        try:
            self.walk.guard(rel, src_dir, name, lambda: self._chunk_work(rel, src_dir, parent, name, index, cs),
                            op="verify chunk")
        finally:
            os.close(src_dir)

    def _chunk_work(self, rel: bytes, src_dir: int, parent: bytes, name: str, index: int, cs: ChunkSpec) -> None:
        dirs = [fsio.open_dir(self.spec.dst_root, parent, source=True)]
        fds: list[int] = []
        try:
            fds = [fsio.open_noatime(name, _READ_FLAGS, dir_fd=d) for d in (src_dir, dirs[0])]
            if not cs.matches(os.fstat(fds[0])):
                raise SourceChangedError("source changed since the verify split it in chunks", op="verify")
            if os.fstat(fds[1]).st_size != cs.size:
                raise SourceChangedError("target changed since the verify split it in chunks", op="verify")
            offset, length = cs.extent(index)
            sh, n1 = checksum.digest(fds[0], offset, length)
            dh, n2 = checksum.digest(fds[1], offset, length)
            if not cs.matches(os.fstat(fds[0])):
                raise SourceChangedError("source changed while it was read", op="verify")
            self.tally[C.CHUNKS_VERIFIED] += 1
            self.tally[C.BYTES_READ] += n1 + n2
            if sh != dh:
                key = "vcontent:" + hashlib.sha1(rel + b"\0" + cs.key()).hexdigest()
                if self.claims.claim(key, str(index)) == str(index):
                    self.diff(rel, "content", f"chunk {index} blake3 {sh}", f"blake3 {dh}")
        finally:
            for fd in fds + dirs:
                os.close(fd)
