"""The checksum manifest of a verify pass: BLAKE3 sums that ``b3sum --check`` reads, built from shards.

Files in the manifest directory ``DIR``:

``manifest.b3``
    One line per regular file of the source, exactly as ``b3sum`` prints it: 64 hex digits, two spaces,
    the path relative to the pass root. A path holding a backslash or a newline is escaped as ``b3sum``
    does (``\\`` -> ``\\\\``, newline -> ``\\n``) and its line starts with a backslash. Checked with
    ``cd SRC && b3sum --check DIR/manifest.b3`` (or from the target root). A name that is not UTF-8 cannot
    be written so that ``b3sum`` reads it back: it is compared all the same but left out of the
    manifest (counted as ``manifest_left_out``).
``manifest.index``
    The side index, in the same order: ``SIZE MTIME_NS CTIME_NS TARGET_CTIME_NS HASH PATH`` per line,
    decimal integers, the hex hash and the path escaped as above (without the leading backslash).
    ``TARGET_CTIME_NS`` is -1 when the target's data differed. The next verify with the same ``DIR``
    reuses a file's hash without reading either side when its source size, mtime and ctime and its
    target ctime are unchanged (``--all`` reads everything again).
``.shards/<run>/<host>-<pid>``
    While a pass runs, each worker process appends index lines for the files it handled to a shard of its
    own (one ``write`` per task, so a line is never torn by another process). When the pass is complete,
    :func:`merge` sorts the shards into the two files above in bounded memory (sorted runs of
    :data:`RUN_LINES` lines on disk, then a streaming merge) and removes them. The shards an interrupted
    verify left (its manifest never merged) are removed by the next merge in the same directory, once no
    file of theirs was written since this run's first shard line (:func:`prune_stale`): a run that still
    writes them keeps them, and a stalled one that comes back finds its manifest incomplete (an error).

Order: by directory, then by name within a directory (the bytes of ``dir + NUL + name``), so that one
directory's files are consecutive: :class:`PreviousIndex` finds them with a binary search in the file,
never loading the index into memory.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MANIFEST = "manifest.b3"
INDEX = "manifest.index"
SHARDS = ".shards"
#: Lines sorted in memory at once by :func:`merge` (a run of about 100 MB for typical paths).
RUN_LINES = 500_000
_FAN_IN = 64

log = logging.getLogger(__name__)


def escape(path: bytes) -> bytes:
    """``b3sum``'s escaping of a path: backslash and newline."""
    return path.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")


def unescape(text: bytes) -> bytes:
    """The inverse of :func:`escape`."""
    if b"\\" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == 0x5C and i + 1 < n:
            nxt = text[i + 1]
            out += b"\n" if nxt == 0x6E else bytes([nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def sort_key(path: bytes) -> bytes:
    """Directory, NUL, name: one directory's entries sort together (no path holds a NUL)."""
    d, _, n = path.rpartition(b"/")
    return d + b"\0" + n


def checker_line(digest: str, path: bytes) -> bytes:
    """The ``b3sum`` line of a file (ValueError for a path that is not UTF-8: the checker cannot read it)."""
    path.decode("utf-8")
    esc = escape(path)
    return (b"\\" if esc != path else b"") + digest.encode() + b"  " + esc + b"\n"


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the side index."""

    size: int
    mtime_ns: int
    ctime_ns: int
    target_ctime_ns: int
    digest: str
    path: bytes

    def line(self) -> bytes:
        return (f"{self.size} {self.mtime_ns} {self.ctime_ns} {self.target_ctime_ns} {self.digest} ".encode()
                + escape(self.path) + b"\n")

    @classmethod
    def parse(cls, line: bytes) -> Entry:
        """ValueError on a malformed line."""
        f = line.rstrip(b"\n").split(b" ", 5)
        if len(f) != 6 or len(f[4]) != 64:
            raise ValueError(f"malformed index line {line[:80]!r}")
        return cls(int(f[0]), int(f[1]), int(f[2]), int(f[3]), f[4].decode("ascii"), unescape(f[5]))


def _path_of(line: bytes) -> bytes:
    return unescape(line.rstrip(b"\n").split(b" ", 5)[5])


def shard_dir(directory: str, run_id: str) -> str:
    return os.path.join(directory, SHARDS, run_id)


class ShardWriter:
    """This process's shard of run ``run_id`` in manifest directory ``directory``; :meth:`add` lines, then
    :meth:`flush` once per task."""

    def __init__(self, directory: str, run_id: str) -> None:
        self.path = os.path.join(shard_dir(directory, run_id), f"{socket.gethostname()}-{os.getpid()}")
        self.pending: list[bytes] = []

    def add(self, entry: Entry) -> None:
        self.pending.append(entry.line())

    def flush(self) -> None:
        """Append what was added (one ``write``); OSError when the directory cannot be written."""
        if not self.pending:
            return
        data = b"".join(self.pending)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self.pending.clear()


class PreviousIndex:
    """The side index of the last verify, read by binary search (see the module doc)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    @classmethod
    def open(cls, directory: str) -> PreviousIndex | None:
        try:
            return cls(os.path.join(directory, INDEX))
        except FileNotFoundError:
            return None

    def close(self) -> None:
        os.close(self.fd)

    def _line_at(self, pos: int) -> tuple[int, bytes]:
        """The first whole line starting at ``pos`` or after: ``(start, line)``; ``(size, b"")`` past the end."""
        if pos > 0:
            pos -= 1  # a line starts at pos when the byte before it ends a line
            while True:
                buf = os.pread(self.fd, 8192, pos)
                if not buf:
                    return self.size, b""
                nl = buf.find(b"\n")
                if nl >= 0:
                    pos += nl + 1
                    break
                pos += len(buf)
        if pos >= self.size:
            return self.size, b""
        chunks = []
        at = pos
        while True:
            buf = os.pread(self.fd, 8192, at)
            if not buf:
                break
            nl = buf.find(b"\n")
            if nl >= 0:
                chunks.append(buf[:nl + 1])
                break
            chunks.append(buf)
            at += len(buf)
        return pos, b"".join(chunks)

    def _first(self, key: bytes) -> int:
        """Offset of the first line whose key is >= ``key`` (the file's size when none)."""
        lo, hi = 0, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            start, line = self._line_at(mid)
            if start >= self.size or sort_key(_path_of(line)) >= key:
                hi = mid
            else:
                lo = mid + 1
        return self._line_at(lo)[0]

    def get(self, path: bytes) -> Entry | None:
        """The entry of ``path``, None when it has none."""
        _, line = self._line_at(self._first(sort_key(path)))
        if not line:
            return None
        entry = Entry.parse(line)
        return entry if entry.path == path else None

    def directory(self, rel: bytes) -> Iterator[Entry]:
        """The entries of directory ``rel`` (b"" the root), in name order."""
        prefix = rel + b"\0"
        pos = self._first(prefix)
        while pos < self.size:
            start, line = self._line_at(pos)
            if not line:
                return
            entry = Entry.parse(line)
            if not sort_key(entry.path).startswith(prefix):
                return
            yield entry
            pos = start + len(line)


def _runs(lines: Iterable[bytes], workdir: str) -> list[str]:
    """Sorted runs of at most RUN_LINES lines each, as files in ``workdir``."""
    runs: list[str] = []
    buf: list[tuple[bytes, bytes]] = []

    def spill() -> None:
        buf.sort()
        path = os.path.join(workdir, f"run{len(runs)}")
        with open(path, "wb") as f:
            f.writelines(line for _, line in buf)
        runs.append(path)
        buf.clear()

    for line in lines:
        buf.append((sort_key(_path_of(line)), line))
        if len(buf) >= RUN_LINES:
            spill()
    if buf or not runs:
        spill()
    return runs


def _read_run(path: str) -> Iterator[tuple[bytes, bytes]]:
    with open(path, "rb") as f:
        for line in f:
            yield sort_key(_path_of(line)), line


def _merged(runs: list[str], workdir: str) -> Iterator[bytes]:
    """Every line of ``runs`` in order, merged at most _FAN_IN files at a time."""
    level = 0
    while len(runs) > _FAN_IN:
        nxt = []
        for i in range(0, len(runs), _FAN_IN):
            path = os.path.join(workdir, f"m{level}-{i}")
            with open(path, "wb") as f:
                f.writelines(line for _, line in heapq.merge(*(_read_run(r) for r in runs[i:i + _FAN_IN])))
            nxt.append(path)
        runs = nxt
        level += 1
    for _, line in heapq.merge(*(_read_run(r) for r in runs)):
        yield line


def _shard_lines(paths: list[str]) -> Iterator[bytes]:
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):  # a torn last line (a process killed mid-write) is left out
                    yield line


def merge(directory: str, run_id: str) -> int:
    """Merge the shards of run ``run_id`` into ``manifest.b3`` and ``manifest.index`` (replacing the previous
    ones at once, by rename) and remove the shards; return the number of files in the manifest.

    A path listed twice (a task delivered again after its worker died) is written once.
    """
    shards = shard_dir(directory, run_id)
    paths = sorted(os.path.join(shards, n) for n in os.listdir(shards)) if os.path.isdir(shards) else []
    began = min((os.stat(p).st_mtime_ns for p in paths), default=None)  # no earlier than the first line
    count = 0
    with tempfile.TemporaryDirectory(dir=directory, prefix=".merge-") as work:
        runs = _runs(_shard_lines(paths), work)
        man_tmp = os.path.join(work, MANIFEST)
        idx_tmp = os.path.join(work, INDEX)
        with open(man_tmp, "wb") as man, open(idx_tmp, "wb") as idx:
            last = None
            for line in _merged(runs, work):
                entry = Entry.parse(line)
                if entry.path == last:
                    continue
                last = entry.path
                idx.write(line)
                man.write(checker_line(entry.digest, entry.path))
                count += 1
        os.replace(idx_tmp, os.path.join(directory, INDEX))
        os.replace(man_tmp, os.path.join(directory, MANIFEST))
    shutil.rmtree(shards, ignore_errors=True)
    if began is not None:
        prune_stale(directory, began)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(directory, SHARDS))
    return count


def prune_stale(directory: str, before_ns: int) -> list[str]:
    """Remove the shard directories of other runs none of whose files was written at or after ``before_ns``
    (interrupted runs); return their run ids. One still written to since is kept."""
    top = os.path.join(directory, SHARDS)
    try:
        names = os.listdir(top)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        path = os.path.join(top, name)
        try:
            newest = max([os.stat(path).st_mtime_ns] + [os.stat(os.path.join(path, f)).st_mtime_ns
                                                        for f in os.listdir(path)])
        except OSError:
            continue
        if newest < before_ns:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        log.info("removed the manifest shards of %d interrupted verify run(s): %s", len(removed), " ".join(removed))
    return removed
