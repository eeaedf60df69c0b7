"""The liblustreapi stand-in (tests/lustre_standin/) as the Lustre tests use it.

:func:`build_standin` compiles it (normal and legacy builds) into :data:`BUILD`; :class:`LustreEnv` is one
test's fake Lustre: a source and a target directory the stand-in reports as Lustre filesystems (through
``STANDIN_FS``, see :meth:`LustreEnv.fs_env`), a plain directory beside them, files and directories made
with layouts, and what the stand-in logged. The fixtures ``standin_build`` and ``lenv`` (tests/conftest.py)
hand them out.
"""

from __future__ import annotations

import array
import fcntl
import os
import stat
import subprocess
from collections import Counter
from pathlib import Path

from cmover import lustre
from cmover.lustre import FsApi, llapi
from cmover.lustre.layout import Layout
from support import lustre_blob

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "_build" / "lustre"
FS_IOC_GETVERSION = 0x80087601


def build_standin() -> Path:
    """Build the stand-in (normal and legacy) with gcc into :data:`BUILD`; a failure raises."""
    subprocess.run(["bash", str(ROOT / "tests" / "lustre_standin" / "build.sh"), str(BUILD)], check=True)
    return BUILD


class LustreEnv:
    """One test's fake Lustre under ``tmp``: ``src`` and ``dst`` on it, ``plain`` beside it (see the module doc)."""

    def __init__(self, tmp: Path, lib_path: Path) -> None:
        self.tmp = tmp
        self.src = tmp / "lsrc"
        self.dst = tmp / "ldst"
        self.plain = tmp / "plain"  # not on the fake Lustre
        for d in (self.src, self.dst, self.plain):
            d.mkdir()
        self.lib_path = lib_path
        self.calls = tmp / "calls.log"

    def fs_env(self, src_osts: int = 8, dst_osts: int = 4, dst_mdts: int = 4, dst_pools: str = "fast") -> str:
        return f"{self.src},srcfs,{src_osts},2,fast+slow;{self.dst},dstfs,{dst_osts},{dst_mdts},{dst_pools}"

    @property
    def lib(self) -> llapi.Library:
        lib, how = llapi.load()
        assert lib is not None, how
        return lib

    def make_file(self, path: Path, layout: Layout | None, data: bytes = b"x" * 1000) -> None:
        """A source file with ``layout`` (set before any data, as on Lustre)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | llapi.O_LOV_DELAY_CREATE, 0o644)
        try:
            if layout is not None:
                self.lib.apply_layout(fd, layout)
            os.write(fd, data)
        finally:
            os.close(fd)

    def make_dir(self, path: Path, layout: Layout | None = None) -> None:
        path.mkdir()
        if layout is not None:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self.lib.apply_layout(fd, layout, directory=True)
            finally:
                os.close(fd)

    def layout(self, path: Path) -> Layout:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return self.lib.read_layout(fd)
        finally:
            os.close(fd)

    def mdt(self, path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            return self.lib.mdt_index(fd)
        finally:
            os.close(fd)

    def blob(self, path: Path):
        return lustre_blob.decode(os.getxattr(path, "trusted.lov", follow_symlinks=False))

    def fs(self, policy: str = "keep", restripe: bool = False, tally: Counter | None = None) -> FsApi:
        """The filesystem API a copy from ``src`` to ``dst`` under layout policy ``policy`` works through."""
        return lustre.get_fs(os.fsencode(self.src), os.fsencode(self.dst), policy, restripe,
                             tally if tally is not None else Counter())

    def call_lines(self, fn: str) -> list[str]:
        if not self.calls.exists():
            return []
        return [ln for ln in self.calls.read_text().splitlines() if ln.split(" ", 1)[0] == fn]


def expected_fid(path: Path) -> str:
    """The stand-in's documented FID: seq 0x200000400 + ((ino >> 32) << 32 | generation), oid = low ino bits."""
    st = os.lstat(path)
    gen = 0
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            buf = array.array("l", [0])
            fcntl.ioctl(fd, FS_IOC_GETVERSION, buf)
            gen = buf[0] & 0xFFFFFFFF
        finally:
            os.close(fd)
    return f"{0x200000400 + (((st.st_ino >> 32) << 32) | gen):#x}:{st.st_ino & 0xFFFFFFFF:#x}:0x0"
