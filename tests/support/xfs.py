"""A real XFS filesystem for tests (the ``xfs`` fixture of tests/conftest.py): a sparse file, ``mkfs.xfs``,
``mount -o loop`` under a temporary directory.

Root only (mount). A missing ``mkfs.xfs`` fails the test that asks for one (install xfsprogs:
``scripts/services.sh ensure_test_tools``), it never skips. The mount asks for ``prjquota`` and falls back
to a plain mount on a kernel without XFS quota support: project ids are inode fields and are read and set
the same way without quotas.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = 320 << 20  # mkfs.xfs refuses filesystems under 300 MiB; the file is sparse and costs a few MiB


@contextlib.contextmanager
def mounted_xfs(where: Path) -> Iterator[Path]:
    """Make and mount an XFS in ``where`` (its image and mount point); unmount it on exit."""
    mkfs = shutil.which("mkfs.xfs")
    if mkfs is None:
        pytest.fail("mkfs.xfs is missing: install xfsprogs (bash scripts/services.sh ensure_test_tools)")
    if os.geteuid() != 0:
        pytest.fail("a loop-mounted XFS needs root")
    img, mnt = where / "xfs.img", where / "mnt"
    with open(img, "wb") as fh:
        fh.truncate(SIZE)
    subprocess.run([mkfs, "-q", str(img)], check=True, capture_output=True, timeout=120)
    mnt.mkdir()
    r = subprocess.run(["mount", "-o", "loop,prjquota", str(img), str(mnt)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True, capture_output=True, timeout=120)
    try:
        yield mnt
    finally:
        _unmount(mnt)
        img.unlink()


def _unmount(mnt: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=120)
        if r.returncode == 0 or not os.path.ismount(mnt):
            return
        if time.monotonic() > deadline:  # something still holds it: detach it lazily, never leave it mounted
            subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=120)
            return
        time.sleep(0.2)  # a process of the test is still closing files on it
