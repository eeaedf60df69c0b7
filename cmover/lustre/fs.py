"""The Lustre implementation of :class:`~cmover.lustre.base.FsApi`.

Files are created with ``O_EXCL`` and ``O_LOV_DELAY_CREATE`` (no objects yet), given the layout the
policy derives from their source (:func:`cmover.lustre.layout.derive`) and read back before any data
is written. A layout that cannot be had -- a pool missing on the target, a feature the target lacks,
a site that ignores setstripe for everyone but ``lfs`` -- never fails the copy: the file keeps the
target's default, the event is counted (``layout_mismatches``) and logged once per process with an
example, not once per file. MDT placement refused (remote directories are for root or a configured
group) falls back to a plain mkdir the same way.

One instance per task: it adds to the task's tally. What is per filesystem (OST count, the source
root's default layout) is probed once per process by :func:`cmover.lustre.probe`.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable

from cmover.core.counters import C
from cmover.lustre.base import CREATE_FLAGS, FsInfo
from cmover.lustre.layout import Layout, alignment, derive, needs_restripe, satisfied, without_pool
from cmover.lustre.llapi import O_LOV_DELAY_CREATE, Library

log = logging.getLogger(__name__)

LAYOUTS_SET, LAYOUT_MISMATCH = C.LAYOUTS_SET, C.LAYOUT_MISMATCH
DIRS_PLACED, MDT_MISMATCH = C.DIRS_PLACED, C.MDT_MISMATCH

_ALIGN_LIMIT = 1 << 30
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(kind: str, message: str) -> None:
    with _warned_lock:
        if kind in _warned:
            return
        _warned.add(kind)
    log.warning("%s (reported once per worker process; every case is counted)", message)


def _where(fd: int, name: str | None = None) -> str:
    try:
        base = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        base = f"<fd {fd}>"
    return base if name is None else os.path.join(base, name)


class LustreFs:
    """Creates target entries on Lustre with layouts and MDT placement (see module doc)."""

    name = "lustre"

    def __init__(self, lib: Library, src: FsInfo, dst: FsInfo, policy: str, restripe: bool,
                 tally: Counter[str]) -> None:
        self.lib = lib
        self.src = src
        self.dst = dst
        self.policy = policy
        self.tally = tally
        self.reads_source = src.handled and policy != "target-default"
        self.compares_layouts = restripe and self.reads_source

    # -- files ------------------------------------------------------------------------------------

    def create_file(self, dir_fd: int, name: str, src_fd: int, mode: int = 0o600) -> int:
        fd = os.open(name, CREATE_FLAGS | O_LOV_DELAY_CREATE, mode, dir_fd=dir_fd)
        if self.reads_source:
            try:
                want = self._wanted(src_fd, lambda: _where(dir_fd, name))
                if want is not None:
                    self._apply(fd, want, lambda: _where(dir_fd, name), directory=False)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def layout_differs(self, src_fd: int, dst_fd: int) -> bool:
        if not self.compares_layouts:
            return False
        try:
            src, dst = self.lib.read_layout(src_fd), self.lib.read_layout(dst_fd)
        except OSError as exc:
            _warn_once("compare", f"layouts cannot be compared ({exc}); such files are left as they are")
            return False
        return needs_restripe(src, dst, self.policy, self.dst.ost_count)

    def stripe_size(self, fd: int) -> int:
        try:
            return alignment(self.lib.read_layout(fd), _ALIGN_LIMIT)
        except OSError:
            return 0

    def import_striping(self, src_fd: int) -> tuple[int, int, str | None]:
        if not self.reads_source:
            return 0, 0, None
        want = self._wanted(src_fd, lambda: _where(src_fd))
        if want is None:
            return 0, 0, None
        first = want.components[0]  # of a PFL layout, its first component: import takes a plain one
        count = first.stripe_count or 0
        return first.stripe_size or 0, -1 if count < 0 else count, first.pool

    # -- directories ------------------------------------------------------------------------------

    def mkdir(self, dir_fd: int, name: str, mdt: int | None) -> None:
        if mdt is None or (mdt >= 0 and self.dst.mdt_count <= 1):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            return
        try:
            self.lib.mkdir_on_mdt(dir_fd, name, mdt)
        except FileExistsError:
            raise
        except OSError as exc:
            self.tally[MDT_MISMATCH] += 1
            hint = "; run as root or add the user to mdt.*.enable_remote_dir_gid" if exc.errno == errno.EPERM else ""
            _warn_once("mdt", f"directory {_where(dir_fd, name)} could not be placed on MDT {mdt} "
                              f"({exc.strerror}); created where the filesystem puts it{hint}")
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            return
        if mdt >= 0:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                got = self.lib.mdt_index(fd)
            finally:
                os.close(fd)
            if got != mdt:
                self.tally[MDT_MISMATCH] += 1
                _warn_once("mdt-readback", f"directory {_where(dir_fd, name)} asked for MDT {mdt} is on MDT {got}")
                return
        self.tally[DIRS_PLACED] += 1

    def sync_dir_layout(self, src_fd: int, dst_fd: int) -> None:
        if not self.reads_source:
            return
        want = self._wanted(src_fd, lambda: _where(dst_fd), directory=True)
        if want is None:
            return
        try:
            if satisfied(want, self.lib.read_layout(dst_fd), self.dst.ost_count):
                return  # already right: the usual case of a re-run
        except OSError:
            pass  # set it below; a failure there is reported
        self._apply(dst_fd, want, lambda: _where(dst_fd), directory=True)

    # -- common -----------------------------------------------------------------------------------

    def _wanted(self, src_fd: int, where: Callable[[], str], directory: bool = False) -> Layout | None:
        """The layout to ask for, from the source's; None to leave it to the target (reported when the
        source had a layout that cannot be reproduced)."""
        try:
            src = self.lib.read_layout(src_fd)
        except OSError as exc:
            self.tally[LAYOUT_MISMATCH] += 1
            _warn_once("read", f"source layout of {where()} unreadable ({exc}); the target default is used")
            return None
        if directory and (src.is_default or src == self.src.root_default):
            # No default of its own: since Lustre 2.14 such a directory reads as the root's default.
            return None
        want = derive(src, self.policy, self.dst.ost_count)
        if want is None and not src.is_default and not src.rebuildable:
            self.tally[LAYOUT_MISMATCH] += 1
            _warn_once("rebuild", f"layout of {where()} ({src.describe()}) cannot be rebuilt (foreign or "
                                  "self-extending components); the target default is used")
        return want

    def _apply(self, fd: int, want: Layout, where: Callable[[], str], directory: bool) -> None:
        try:
            try:
                self.lib.apply_layout(fd, want, directory=directory)
            except OSError as exc:
                pools = any(c.pool for c in want.components)
                if not (pools and exc.errno == errno.EINVAL):
                    raise
                # Most often the pool does not exist on the target: keep count and size at least.
                self.lib.apply_layout(fd, without_pool(want), directory=directory)
            got = self.lib.read_layout(fd)
        except OSError as exc:
            self.tally[LAYOUT_MISMATCH] += 1
            _warn_once("apply", f"layout {want.describe()} could not be set on {where()} ({exc.strerror}); "
                                "the target default is used")
            return
        if not satisfied(want, got, self.dst.ost_count):
            self.tally[LAYOUT_MISMATCH] += 1
            _warn_once("readback", f"{where()} asked for layout {want.describe()} but has {got.describe()} "
                                   "(setstripe may be restricted on the target, or a pool is missing)")
            return
        self.tally[LAYOUTS_SET] += 1
