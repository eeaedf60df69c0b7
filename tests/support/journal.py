"""What the change-journal tests share: a scratch ext4 filesystem, a running `cmover watch`, random mutations
(support.mutations, made plainly) and a scenario of renames of every shape.

fanotify filesystem marks see every change of a filesystem: the tests watch a loop-mounted ext4 of
their own (root only), never the machine's.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cmover.journal.store import journal_dir, read_state
from support import mutations
from support.mutations import PlainFs


@contextmanager
def loop_fs(where: Path, size_mb: int = 256) -> Iterator[Path]:
    """A fresh ext4 filesystem mounted at ``where/mnt`` for the duration; skips when it cannot be made."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("fanotify filesystem marks and loop mounts need root and mkfs.ext4")
    img = where / "fs.img"
    mnt = where / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount a scratch filesystem: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        img.unlink(missing_ok=True)


class WatchProcess:
    """``cmover watch SRC`` as a child process, with the environment of ``env``."""

    def __init__(self, src: Path, changes_dir: Path, env: dict[str, str]) -> None:
        self.src = src
        self.dir = Path(journal_dir(str(changes_dir), os.fsencode(src)))
        self.log = changes_dir / "watch.log"
        changes_dir.mkdir(parents=True, exist_ok=True)
        old = read_state(self.dir)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cmover", "watch", str(src), "--heartbeat", "0.2"],
                                         env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = read_state(self.dir)
            if st and st.get("pid") == self.proc.pid and st.get("running") and (old is None or st != old):
                self.state = st
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"the watcher did not start: {self.log.read_text()}")

    def drain(self) -> None:
        """Wait until the watcher has read every event the kernel queued before this call: the drain a reader
        asks for (SIGUSR1, then the state's ``drained_ns`` reaches the time asked; see cmover.journal.watch)."""
        asked = time.time_ns()
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while int((read_state(self.dir) or {}).get("drained_ns", 0)) < asked:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def mutate(root: bytes, rng: random.Random, n: int) -> list[str]:
    """``n`` random changes of every kind below ``root``, made plainly (the watcher sees them)."""
    return mutations.mutate(PlainFs(root), rng, n, mutations.FANOTIFY_OPS)


#: Directories of :func:`rename_setup` and the files each holds.
_RENAME_DIRS = (b"d1", b"d1/s", b"d2", b"p", b"p/q", b"m", b"x", b"y", b"o", b"t", b"z")
_RENAME_FILLED = (b"d1", b"d1/s", b"d2", b"p/q", b"m", b"x", b"y", b"o", b"z")


def rename_setup(fs: Any, base: bytes) -> None:
    """Directories with files under ``base`` (which must not exist), for :func:`rename_scenario`."""
    fs.mkdir(base)
    for d in _RENAME_DIRS:
        fs.mkdir(os.path.join(base, d))
    for d in _RENAME_FILLED:
        for i in range(3):
            fs.write(os.path.join(base, d, b"f%d" % i), b"%s %d " % (d, i) * 300)
    fs.write(os.path.join(base, b"ff"), b"a file renamed " * 100)


def rename_scenario(fs: Any, base: bytes) -> dict[bytes, bytes]:
    """Renames of every shape under ``base`` (after :func:`rename_setup` and a pass); returns, for the files
    whose target copy a replayed rename keeps (same inode), new relative path -> old relative path."""
    def j(*parts: bytes) -> bytes:
        return os.path.join(base, *parts)

    fs.rename(j(b"d1"), j(b"d1r"))  # a plain rename, then changes inside (the walk of d1r fixes them)
    fs.write(j(b"d1r", b"f0"), b"rewritten after the rename")
    fs.unlink(j(b"d1r", b"s", b"f1"))
    fs.write(j(b"d1r", b"new"), b"created after the rename")
    fs.rename(j(b"d2"), j(b"d2b"))  # a chain of one object
    fs.rename(j(b"d2b"), j(b"d2c"))
    fs.rename(j(b"p", b"q"), j(b"p", b"q2"))  # inside a directory renamed afterwards
    fs.rename(j(b"p"), j(b"p2"))
    fs.mkdir(j(b"N"))  # into a directory that is itself new
    fs.rename(j(b"m"), j(b"N", b"m"))
    fs.rename(j(b"x"), j(b"tmp"))  # a swap: each new name is taken on the target, copied instead
    fs.rename(j(b"y"), j(b"x"))
    fs.rename(j(b"tmp"), j(b"y"))
    fs.rename(j(b"o"), j(b"t"))  # over an existing (empty) directory: copied instead
    fs.rename(j(b"z"), j(b"zz"))  # the old name used again by a new directory
    fs.mkdir(j(b"z"))
    fs.write(j(b"z", b"f0"), b"a new z")
    fs.rename(j(b"ff"), j(b"d2c", b"ffr"))  # a file moved into a renamed directory
    kept = {b"d1r/f1": b"d1/f1", b"d1r/f2": b"d1/f2", b"d1r/s/f0": b"d1/s/f0", b"d1r/s/f2": b"d1/s/f2",
            b"d2c/ffr": b"ff"}
    for i in range(3):
        kept.update({b"d2c/f%d" % i: b"d2/f%d" % i, b"p2/q2/f%d" % i: b"p/q/f%d" % i,
                     b"N/m/f%d" % i: b"m/f%d" % i, b"zz/f%d" % i: b"z/f%d" % i})
    return kept
