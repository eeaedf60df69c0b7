"""The watcher behind ``cmover watch SRC``: records every change of SRC's filesystem into its journal.

It places a filesystem-wide fanotify mark (:mod:`cmover.journal.fanotify`), then starts a new segment
(:mod:`cmover.journal.store`) whose start record says from when the journal is complete. It then loops:
events are read as they come, appended in batches and made durable (``fdatasync``) before the state
file publishes them as acknowledged; every ``heartbeat`` seconds the state file is rewritten with the
time, which is the evidence a reader uses that the watcher has been running all along.

A *drain* makes a reading exact up to an instant: a reader takes the time, sends SIGUSR1, and waits for
the state's ``drained_ns`` to reach that time. The watcher notes the time when it starts the drain,
reads the kernel queue until it is empty, makes everything durable and publishes that noted time.
fanotify queues an event before the system call that caused it returns, so every change made before
the reader's request is in the journal once the drain is published.

A queue overflow (the kernel dropped events) is recorded as an ``overflow`` record: no reading that
covers it is trusted. SIGTERM or SIGINT stop the watcher cleanly (drain, ``stop`` record); a watcher
that dies otherwise simply stops beating, and a new run starts a new segment: the time in between is
not covered, so the journal is not trusted until a pass completes with no failure after the restart.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from typing import Any

from cmover.core.paths import to_wire
from cmover.journal import fanotify
from cmover.journal.store import STATE, SegmentWriter, write_json_atomic

log = logging.getLogger(__name__)

#: Events appended per durable batch at most (a busy source is written in batches of this size).
BATCH = 4096


def event_record(ev: fanotify.Event, now_ns: int) -> dict[str, Any]:
    """The journal line of one event (see :mod:`cmover.journal.store`)."""
    if ev.mask & fanotify.FAN_Q_OVERFLOW:
        return {"ev": "overflow", "t": now_ns}
    rec = {"t": now_ns, "m": ev.mask, "d": ev.dir.hex() if ev.dir else None,
           "n": to_wire(ev.name) if ev.name is not None else None, "o": ev.obj.hex() if ev.obj else None}
    if ev.old_dir is not None:  # FAN_RENAME: the old directory and name too
        rec["od"] = ev.old_dir.hex()
        rec["on"] = to_wire(ev.old_name) if ev.old_name is not None else None
    return rec


class Watcher:
    """One run of the watcher on source root ``src_root`` writing into journal ``directory``."""

    def __init__(self, src_root: bytes, directory: str, *, heartbeat: float = 1.0, unlimited: bool = False) -> None:
        self.src_root = src_root
        self.directory = directory
        self.state_file = os.path.join(directory, STATE)
        self.heartbeat = heartbeat
        self.fd, self.mask = fanotify.open_group(src_root, unlimited=unlimited)
        self.fsid = fanotify.fsid_of(src_root)
        self.writer = SegmentWriter(directory, {"src": to_wire(src_root), "fsid": self.fsid.hex(),
                                                "pid": os.getpid(), "mask": self.mask})
        self.stop = threading.Event()
        self._drain_asked = False
        self.events = 0
        self.overflows = 0
        self.drained_ns = self.writer.started_ns
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def state(self, *, running: bool = True) -> dict[str, Any]:
        return {"pid": os.getpid(), "generation": self.writer.generation, "segment": self.writer.name,
                "src": to_wire(self.src_root), "fsid": self.fsid.hex(), "started_ns": self.writer.started_ns,
                "heartbeat_ns": time.time_ns(), "heartbeat_s": self.heartbeat, "durable": self.writer.durable,
                "drained_ns": self.drained_ns, "events": self.events, "overflows": self.overflows,
                "running": running}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGUSR1:
            self._drain_asked = True
        else:
            self.stop.set()
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def run(self) -> None:
        """Watch until SIGTERM/SIGINT (installed here: call from the main thread)."""
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        write_json_atomic(self.state_file, self.state())
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        last_beat = time.monotonic()
        try:
            while not self.stop.is_set():
                ready = poller.poll(self.heartbeat * 1000 / 2)
                if any(fd == self._wake_r for fd, _ in ready):
                    try:
                        os.read(self._wake_r, 64)
                    except BlockingIOError:
                        pass
                if self._drain_asked:
                    self._drain_asked = False
                    self.drain()
                    last_beat = time.monotonic()
                    continue
                if ready:
                    self._read_once()
                if time.monotonic() - last_beat >= self.heartbeat:
                    write_json_atomic(self.state_file, self.state())
                    last_beat = time.monotonic()
            self.drain()
            self.writer.append([{"ev": "stop", "t": time.time_ns()}])
            write_json_atomic(self.state_file, self.state(running=False))
        finally:
            self.writer.close()
            os.close(self.fd)

    def _read_once(self) -> int:
        """Read what is queued (one read), append it durably; return the number of events."""
        events = fanotify.read_events(self.fd)
        if events:
            now = time.time_ns()
            records = [event_record(ev, now) for ev in events]
            self.overflows += sum(1 for r in records if r.get("ev") == "overflow")
            self.events += len(records)
            for i in range(0, len(records), BATCH):
                self.writer.append(records[i:i + BATCH])
        return len(events)

    def drain(self) -> None:
        """Read the kernel queue until it is empty and publish the instant the drain began (module doc)."""
        began = time.time_ns()
        while self._read_once():
            pass
        self.drained_ns = began
        write_json_atomic(self.state_file, self.state())
