"""The fanotify backend: reading the journal ``cmover watch`` keeps for a local source, and its trust rule.

:meth:`LocalJournal.read` returns every change since an instant, or raises
:class:`~cmover.journal.base.Untrusted` with the reason, when any of these fails:

* a journal exists for this source root (``cmover watch SRC`` was run), for the same root;
* its watcher is running now (state marked running, its process alive, a heartbeat within
  ``STALE_BEATS`` beats, waited for up to ``DRAIN_TIMEOUT`` while the process is alive) -- a watcher that
  died and was restarted started a new segment;
* the current segment started before the instant (the watcher ran the whole interval: one process,
  beating all along);
* the watcher drains on request (:mod:`cmover.journal.watch`), so the reading is exact up to the moment
  it was asked for, which becomes the start of the pass it drives;
* the segment is whole: indices from 0 without a gap, no damaged line;
* no queue overflow was recorded after the instant.

Directory handles are resolved with ``open_by_handle_at`` on the source root and read back as the path
the directory has now; a handle whose directory is gone (ESTALE) resolves to None.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import weakref
from collections.abc import Callable
from typing import Any

from cmover.core.paths import display, from_wire
from cmover.journal import fanotify
from cmover.journal.base import Change, Reading, Untrusted, What
from cmover.journal.store import journal_dir, read_segment, read_state

#: The last reading's resolved directories and memo: ((source root, watcher generation, index of the newest change),
#: key -> path, :attr:`Reading.memo`); see :meth:`LocalJournal._remembering`.
_memo: tuple[tuple[bytes, str, int], dict[str, bytes | None], dict[Any, Any]] | None = None
#: A watcher whose last heartbeat is older than this many heartbeats is taken for dead.
STALE_BEATS = 5
#: How long a reading waits for the watcher to drain its queue.
DRAIN_TIMEOUT = 30.0

_WHAT = ((fanotify.FAN_CREATE, What.CREATED), (fanotify.FAN_MOVED_TO, What.RENAMED_TO),
         (fanotify.FAN_DELETE, What.REMOVED), (fanotify.FAN_MOVED_FROM, What.RENAMED_FROM),
         (fanotify.FAN_MODIFY | fanotify.FAN_ATTRIB | fanotify.FAN_CLOSE_WRITE, What.CHANGED))


def changes_of(rec: dict[str, Any], source: str) -> list[Change]:
    """The normalized changes of one event record (several when the kernel merged events); none for an
    event that names no directory (a link count, a file open after its last name went).

    A FAN_RENAME event is a departure from its old directory and name and an arrival at the new ones, both
    with the moved object's handle (``obj``): a proven rename. A departure or an arrival of its own
    (FAN_MOVED_FROM, FAN_MOVED_TO: a watcher on a kernel without FAN_RENAME) carries the object's handle
    too, which pairs a departure with the next arrival of the same object."""
    d = rec.get("d")
    if d is None:
        return []
    mask = int(rec["m"])
    name = from_wire(rec["n"]) if rec.get("n") is not None else None
    is_dir = bool(mask & fanotify.FAN_ONDIR)
    i, t = int(rec["i"]), int(rec["t"])
    obj = rec.get("o") or None
    out = []
    if mask & fanotify.FAN_RENAME and rec.get("od") is not None:
        old = from_wire(rec["on"]) if rec.get("on") is not None else None
        out += [Change(What.RENAMED_FROM, rec["od"], old, is_dir, i, source, t, obj),
                Change(What.RENAMED_TO, d, name, is_dir, i, source, t, obj)]
    for bits, what in _WHAT:
        if mask & bits:
            moved = what in (What.RENAMED_FROM, What.RENAMED_TO)
            out.append(Change(what, d, name, is_dir, i, source, t, obj if moved else None))
    return out


class LocalJournal:
    """The journal of source root ``src_root`` kept under CHANGES_DIR ``changes_dir``."""

    def __init__(self, changes_dir: str, src_root: bytes) -> None:
        self.src_root = src_root
        self.directory = journal_dir(changes_dir, src_root)

    def read(self, since_ns: int) -> Reading:
        """See the module doc."""
        src = display(self.src_root)
        state = read_state(self.directory)
        if state is None:
            raise Untrusted(f"no change journal for {src}: start `cmover watch {src}` before a full pass")
        if from_wire(state.get("src")) != self.src_root:
            raise Untrusted(f"the journal in {self.directory} is of another source root")
        state = self._running(state, src)
        pid = int(state["pid"])
        started = int(state["started_ns"])
        if started > since_ns:
            raise Untrusted(f"the watcher of {src} started {_ago(started)}, after the last clean pass began "
                            f"{_ago(since_ns)}: changes in between are not recorded")
        upto = self._drain(pid, str(state["generation"]))
        name = str(state["segment"])
        seg = os.path.join(self.directory, name)
        source = f"fanotify:{state.get('fsid', '')}"
        changes: list[Change] = []
        latest = 0  # the index of the newest change recorded, whatever the instant asked for
        try:
            for n, rec in enumerate(read_segment(seg)):
                if rec.get("i") != n:
                    raise Untrusted(f"the journal of {src} has a gap at record {n}: damaged")
                if n == 0:
                    if rec.get("ev") != "start" or rec.get("gen") != state["generation"]:
                        raise Untrusted(f"the journal segment {name} does not belong to the running watcher")
                    continue
                t = int(rec.get("t", 0))
                ev = rec.get("ev")
                if ev == "overflow":
                    if t >= since_ns:
                        raise Untrusted(f"the kernel dropped events of {src} {_ago(t)} (fanotify queue overflow)")
                    continue
                if ev is not None:
                    continue
                latest = n
                if t >= since_ns:
                    changes.extend(changes_of(rec, source))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Untrusted(f"the journal of {src} cannot be read ({exc})") from None
        resolve, memo = self._remembering(str(state["generation"]), latest)
        return Reading(changes, resolve, upto, source, memo=memo)

    def _remembering(self, generation: str, latest: int) -> tuple[Callable[[str], bytes | None], dict[Any, Any]]:
        """:meth:`resolver`, remembering what it resolves for the next reading of this process (the passes of one
        ``sync``): a directory's path stays what it was while the source records no change -- the journal,
        trusted, says so -- so a reading of the same watcher whose newest change is the newest the last reading
        had (``latest``, its index: nothing recorded since, the watcher drained both times) resolves with the
        same answers, and only the keys it has not seen cost ``open_by_handle_at``; such readings share their
        :attr:`~cmover.journal.base.Reading.memo` too (returned with the resolver). Only paths and answers are
        remembered (no descriptor: nothing holds the source mount busy between passes)."""
        global _memo
        key = (self.src_root, generation, latest)
        if _memo is None or _memo[0] != key:
            _memo = (key, {}, {})
        known = _memo[1]
        fresh: list[Callable[[str], bytes | None]] = []  # the resolver, opened at the first key not known

        def resolve(dkey: str) -> bytes | None:
            if dkey not in known:
                if not fresh:
                    fresh.append(self.resolver())
                known[dkey] = fresh[0](dkey)
            return known[dkey]

        return resolve, _memo[2]

    def _running(self, state: dict[str, Any], src: str) -> dict[str, Any]:
        """``state`` when its watcher is running; else the state once its process beats again; else Untrusted.

        A process that is alive but has not beaten for ``STALE_BEATS`` beats is stopped, starved of CPU or
        catching up with a long queue -- the kernel keeps its events (or records an overflow) meanwhile, so its
        journal stays whole -- or it died and its pid went to another process. It is waited for, without a
        signal (the default action of SIGUSR1 would end a stranger), up to ``DRAIN_TIMEOUT``."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            pid = int(state.get("pid", 0))
            beat = float(state.get("heartbeat_s", 1.0))
            if not state.get("running") or not _alive(pid):
                raise Untrusted(f"the watcher of {src} is not running (last heartbeat "
                                f"{_ago(state.get('heartbeat_ns'))}); restart `cmover watch {src}`")
            if time.time_ns() - int(state.get("heartbeat_ns", 0)) <= STALE_BEATS * beat * 1e9:
                return state
            if time.monotonic() >= deadline:
                raise Untrusted(f"the watcher of {src} (pid {pid}) has not beaten for {DRAIN_TIMEOUT:.0f} s (last "
                                f"heartbeat {_ago(state.get('heartbeat_ns'))}): it is stopped or hung; restart "
                                f"`cmover watch {src}`")
            time.sleep(min(beat / 4, 0.25))
            state = read_state(self.directory) or {}

    def _drain(self, pid: int, generation: str) -> int:
        asked = time.time_ns()
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError as exc:
            raise Untrusted(f"the watcher (pid {pid}) cannot be asked to drain its queue: {exc.strerror}") from None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            state = read_state(self.directory) or {}
            if state.get("generation") != generation:
                raise Untrusted("the watcher was restarted while the journal was read")
            if int(state.get("drained_ns", 0)) >= asked:
                return asked
            time.sleep(0.01)
        raise Untrusted(f"the watcher (pid {pid}) did not drain its queue within {DRAIN_TIMEOUT:.0f} s")

    def resolver(self) -> Callable[[str], bytes | None]:
        """Directory key -> its current absolute path (None: gone). One descriptor on the source root."""
        mount_fd = os.open(self.src_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fsid = fanotify.fsid_of(self.src_root)

        def resolve(key: str) -> bytes | None:
            h = fanotify.Handle.from_hex(key)
            if h.fsid != fsid:
                return None
            try:
                fd = fanotify.open_handle(mount_fd, h)
            except OSError as exc:
                # ESTALE: the object is gone; ELOOP/ENOTDIR: the handle names a non-directory now (a
                # symlink or file, never the directory the record was about).
                if exc.errno in (errno.ESTALE, errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    return None
                raise
            try:
                path = os.readlink(f"/proc/self/fd/{fd}".encode())
            finally:
                os.close(fd)
            return None if path.endswith(b" (deleted)") or not path.startswith(b"/") else path

        weakref.finalize(resolve, os.close, mount_fd)
        return resolve


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited: a zombie (ended, not yet reaped by its parent) is gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc to tell: kill() found it


def _ago(ns: Any) -> str:
    try:
        secs = (time.time_ns() - int(ns)) / 1e9
    except (TypeError, ValueError):
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ns) / 1e9)) + f" ({secs:.0f} s ago)"
