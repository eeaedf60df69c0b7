"""Shared fixtures of the unit tests: pass specs on tmp trees, a copy-pass runner, tree snapshots."""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field

import pytest

from cmover.copypass import CopyPass, Job
from cmover.errors import Failure
from cmover.ledger import MemoryLedger, RunClaims
from cmover.lustre.base import PosixFs
from cmover.passes import PassKind, PassSpec


@dataclass
class CopyResult:
    tally: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)


@pytest.fixture
def roots(tmp_path):
    """(src, dst) roots as bytes; both exist, side by side in tmp_path."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    return os.fsencode(src), os.fsencode(dst)


@pytest.fixture
def make_spec(roots):
    """Build a copy PassSpec on ``roots``; a generous time budget keeps inline walking deterministic."""

    def make(**kw) -> PassSpec:
        base = dict(run_id="copy-test", kind=PassKind.COPY, src_root=roots[0], dst_root=roots[1],
                    inline_seconds=3600.0)
        base.update(kw)
        return PassSpec(**base)

    return make


@pytest.fixture
def run_copy():
    """Run one copy-pass task: ``run_copy(spec)`` walks the root, ``names=`` runs a file batch."""

    def run(spec: PassSpec, rel: bytes = b"", names: list[bytes] | None = None, fs=None) -> CopyResult:
        """``fs``: a function of the task's tally returning its FsApi (default: POSIX)."""
        res = CopyResult()
        ledger = MemoryLedger()  # a fresh run each call, as every pass has its own run id
        cp = CopyPass(spec, fs(res.tally) if fs else PosixFs(), res.tally, res.failures.append, res.jobs.append,
                      RunClaims(ledger, spec.run_id))
        if names is None:
            cp.run_dir(rel)
        else:
            cp.run_files(rel, names)
        return res

    return run


def read_noatime(path: bytes) -> bytes:
    """File content, read without moving the file's atime (tests compare atimes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _entry_state(path: bytes, st: os.stat_result) -> dict:
    d = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "ino": st.st_ino}
    if stat.S_ISREG(st.st_mode):
        d["data"] = read_noatime(path)
        d["mtime_ns"] = st.st_mtime_ns
        d["atime_ns"] = st.st_atime_ns
    elif stat.S_ISLNK(st.st_mode):
        d["link"] = os.readlink(path)
        d["mtime_ns"] = st.st_mtime_ns
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        d["rdev"] = st.st_rdev
        d["mtime_ns"] = st.st_mtime_ns
    elif stat.S_ISFIFO(st.st_mode):
        d["mtime_ns"] = st.st_mtime_ns
    return d


@pytest.fixture
def snapshot():
    """``snapshot(root)``: {relative path: type, mode, owner, inode, data/link target, times} of a tree."""

    def snap(root: bytes, *, inodes: bool = True) -> dict[bytes, dict]:
        out: dict[bytes, dict] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                st = os.lstat(path)
                state = _entry_state(path, st)
                if not inodes:
                    del state["ino"]
                out[rel] = state
        return out

    return snap
