"""Hard-link groups: one name copies the data, every other name of the group becomes a link to it.

A group is identified by the source ``(st_dev, st_ino)``. Its names may live in different directories
handled by different workers at the same moment, so the choice of the name that copies (the
*leader*) is made in the run's ledger with a first-writer-wins claim. Every other name waits until the
leader's target is complete -- its mtime equals the source's, the copy's commit marker -- and then
links to it under a temporary name that is renamed over its own, so an existing target file is never
written through. A name whose target is already the leader's inode is left alone, which is what keeps
the links on later passes; a name added to a group on the source is linked by the next copy pass.

A leader big enough to be copied in chunks (:mod:`cmover.engine.chunks`) takes longer than a task should
wait: its other names are *deferred* (counted, not failed) and linked by the next copy pass.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable

from cmover.core import fsio
from cmover.core.errors import ItemError
from cmover.core.paths import components, from_wire, to_wire
from cmover.core.record import Record


class LinkDeferred(Exception):
    """The group's leader is copied in chunks: this name is linked by the next copy pass."""


class HardLinker:
    """Leader election and linking for one task. ``claim(key, value)`` is the ledger's first-writer-wins."""

    def __init__(self, claim: Callable[[str, str], str], dst_root: bytes, wait_seconds: float = 60.0) -> None:
        self.claim = claim
        self.dst_root = dst_root
        self.wait_seconds = wait_seconds

    def leader(self, st: os.stat_result, rel: bytes) -> bytes:
        """The relative path of the group's leader (``rel`` itself when this name won the claim)."""
        won = self.claim(f"hl:{st.st_dev}:{st.st_ino}", json.dumps(to_wire(rel)))
        return from_wire(json.loads(won))

    def leader_failed(self, st: os.stat_result) -> None:
        """Tell the group's other names that the leader's copy failed, so they stop waiting for it."""
        self.claim(f"hlfail:{st.st_dev}:{st.st_ino}", "1")

    def leader_chunked(self, st: os.stat_result) -> None:
        """Tell the group's other names not to wait: the leader is copied in chunks by other tasks."""
        self.claim(f"hlchunk:{st.st_dev}:{st.st_ino}", "1")

    def _chunked(self, src: Record) -> bool:
        return self.claim(f"hlchunk:{src.dev}:{src.ino}", "0") == "1"

    def _failed(self, src: Record) -> bool:
        return self.claim(f"hlfail:{src.dev}:{src.ino}", "0") == "1"

    def link(self, dst_dir_fd: int, name: str, leader_rel: bytes, src: Record) -> bool:
        """Make target ``name`` a link to the leader's target; False when it already was one.

        Raises ItemError when the leader's target is not complete within ``wait_seconds`` (the next
        pass links it) and OSError from the filesystem.
        """
        parts = components(leader_rel)
        leader_dir = fsio.open_dir(self.dst_root, b"/".join(parts[:-1]), source=False)
        try:
            leader_name = os.fsdecode(parts[-1])
            lst = self._wait_complete(leader_dir, leader_name, src, leader_rel)
            dst = fsio.lstat_at(dst_dir_fd, name)
            if dst is not None and (dst.st_dev, dst.st_ino) == (lst.st_dev, lst.st_ino):
                return False
            if dst is not None and stat.S_ISDIR(dst.st_mode):
                # Positive proof: the source holds a file under this name now.
                fsio.remove_tree(name, dst_dir_fd)
            tmp = fsio.temp_name()
            os.link(leader_name, tmp, src_dir_fd=leader_dir, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
            try:
                os.rename(tmp, name, src_dir_fd=dst_dir_fd, dst_dir_fd=dst_dir_fd)
            except BaseException:
                os.unlink(tmp, dir_fd=dst_dir_fd)
                raise
            return True
        finally:
            os.close(leader_dir)

    def _wait_complete(self, leader_dir: int, leader_name: str, src: Record, leader_rel: bytes) -> os.stat_result:
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.01
        while True:
            lst = fsio.lstat_at(leader_dir, leader_name)
            if lst is not None and stat.S_ISREG(lst.st_mode) and lst.st_mtime_ns == src.mtime_ns \
                    and lst.st_size == src.size:
                return lst
            if self._chunked(src):
                raise LinkDeferred(f"hard link: the group's first name {leader_rel!r} is copied in chunks")
            if self._failed(src):
                raise ItemError(f"hard link: copying the group's first name {leader_rel!r} failed; "
                                "the next pass links it", op="link")
            if time.monotonic() >= deadline:
                raise ItemError(f"hard link: the group's first name {leader_rel!r} was not complete after "
                                f"{self.wait_seconds:.0f} s; the next pass links it", op="link")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
