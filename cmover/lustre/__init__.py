"""The platform layer for Lustre: layouts and MDT placement.

The rest of cmover calls only what is here and in :mod:`cmover.lustre.base`:

* :func:`get_fs` -- the :class:`~cmover.lustre.base.FsApi` a task creates target entries through:
  :class:`~cmover.lustre.fs.LustreFs` when the target is on Lustre and liblustreapi can be loaded,
  :class:`~cmover.lustre.base.PosixFs` (plain POSIX, the target's defaults) everywhere else;
* :func:`probe` -- what is known of the filesystem holding a path (cached per process);
* :func:`describe` -- the one line a pass prints at start about layout handling;
* :func:`mdt_count` -- for the planner's "all MDTs";
* :func:`get_hsm` -- the HSM functions (:mod:`cmover.lustre.hsm`) when the source is Lustre and the
  library has them, else None: then nothing HSM is done or said;
* :func:`get_changelogs` -- the changelog journal of a Lustre source (:mod:`cmover.lustre.chjournal`).

Only :mod:`cmover.lustre.llapi` loads the library (lazily, on first use); it and the HSM binding are imported
when a filesystem needs them, not by every command (their ctypes structures and prototypes are most of this
package's import time).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import TYPE_CHECKING

from cmover.lustre import detect
from cmover.lustre.base import FsApi, FsInfo, PosixFs
from cmover.lustre.layout import POLICIES, Layout, check_policy

if TYPE_CHECKING:  # imported when a Lustre filesystem is met: not every command's cost
    from cmover.lustre.chjournal import LustreJournal
    from cmover.lustre.hsm import Hsm
    from cmover.lustre.llapi import Library

#: The environment variable that names the library to load (wins over config's ``LUSTREAPI``).
ENV_LIBRARY = "CMOVER_LUSTREAPI"


def named_library(configured: str) -> str:
    """The library named for this process: ``$CMOVER_LUSTREAPI``, else ``configured`` (config ``LUSTREAPI``),
    else "" (the system's, searched for)."""
    return os.environ.get(ENV_LIBRARY) or configured


def _load(library: str) -> tuple[Library | None, str]:
    """:func:`cmover.lustre.llapi.load`, the binding imported on first use."""
    from cmover.lustre import llapi

    return llapi.load(library)

__all__ = ["FsApi", "FsInfo", "Layout", "POLICIES", "PosixFs", "check_policy", "describe", "get_changelogs",
           "get_fs", "get_hsm", "mdt_count", "path_layout", "probe"]

_probed: dict[bytes, FsInfo] = {}
_probe_lock = threading.Lock()


def _reset_in_child() -> None:
    global _probe_lock
    _probe_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_in_child)


def _existing(path: bytes) -> bytes:
    p = os.path.abspath(path)
    while p != b"/" and not os.path.exists(p):
        p = os.path.dirname(p)
    return p


def probe(path: bytes, library: str = "") -> FsInfo:
    """What cmover knows of the filesystem holding ``path`` (or its nearest existing parent).

    ``library`` is config's ``LUSTREAPI`` (``$CMOVER_LUSTREAPI`` wins). Cached per process and path;
    never raises: what could not be learnt is said in ``note``.
    """
    with _probe_lock:
        hit = _probed.get(path)
    if hit is not None:
        return hit
    info = _probe(path, library)
    with _probe_lock:
        _probed[path] = info
    return info


def _probe(path: bytes, library: str) -> FsInfo:
    where = _existing(path)
    kernel_says = detect.is_lustre_mount(where)
    if not kernel_says and not named_library(library):
        # Not a Lustre client mount and no library named (a named one may answer for paths the kernel does not
        # call Lustre: the stand-in): nothing to ask, so no search for the library, which costs a hundred
        # failed opens through the loader's directories on a machine without Lustre.
        return FsInfo(path, lustre=False, handled=False, note=f"{os.fsdecode(path)} is not on Lustre")
    lib, how = _load(library)
    if lib is None:
        note = f"{os.fsdecode(path)} is on Lustre but {how}" if kernel_says \
            else f"{os.fsdecode(path)} is not on Lustre; {how}"
        return FsInfo(path, lustre=kernel_says, handled=False, note=note)
    try:
        fsname = lib.fsname(where)
    except OSError as exc:
        return FsInfo(path, lustre=kernel_says, handled=False, note=f"{how}: {exc}")
    if fsname is None:
        return FsInfo(path, lustre=kernel_says, handled=False, note=f"{os.fsdecode(path)} is not on Lustre")
    try:
        mount = lib.mount_point(where)
        osts = lib.obd_count(mount, mdt=False)  # asked of a directory: the mount point
        mdts = lib.obd_count(mount, mdt=True)
    except OSError as exc:
        return FsInfo(path, lustre=True, handled=False, fsname=fsname, note=f"{how}: {exc}")
    root_default = None
    try:
        fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            root_default = lib.read_layout(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # only used to tell inherited directory defaults from explicit ones
    return FsInfo(path, lustre=True, handled=True, fsname=fsname, ost_count=osts, mdt_count=mdts, mount=mount,
                  root_default=root_default, note=how)


def reset() -> None:
    """Forget probes and the loaded library (tests switch environments)."""
    from cmover.lustre import llapi

    with _probe_lock:
        _probed.clear()
    llapi.reset()


def get_fs(src_root: bytes, dst_root: bytes, policy: str, restripe: bool, tally: Counter[str],
           library: str = "") -> FsApi:
    """The filesystem API for one task of a pass from ``src_root`` to ``dst_root`` (see module doc)."""
    dst = probe(dst_root, library)
    if not dst.handled:
        return PosixFs()
    from cmover.lustre.fs import LustreFs

    lib, _ = _load(library)
    assert lib is not None
    return LustreFs(lib, probe(src_root, library), dst, policy, restripe, tally)


def get_hsm(src_root: bytes, dst_root: bytes, library: str = "") -> tuple[Hsm, bool] | None:
    """The HSM functions for a pass from ``src_root``, and whether the target is Lustre too (stubs can be
    imported and files marked there); None when the source is not Lustre or the library lacks them."""
    if not probe(src_root, library).handled:
        return None
    from cmover.lustre import hsm

    lib, _ = _load(library)
    h = hsm.bind(lib) if lib is not None else None
    if h is None:
        return None
    return h, probe(dst_root, library).handled


def get_changelogs(src_root: bytes, users: dict[str, str], library: str = "") -> LustreJournal | str | None:
    """The changelog journal of source ``src_root`` read with ``users`` (CHANGELOG_USERS); a one-line reason
    when the source is on Lustre but its changelogs cannot be read here; None when it is not on Lustre."""
    info = probe(src_root, library)
    if not info.handled:
        return f"the source is on Lustre but {info.note}" if info.lustre else None
    from cmover.lustre import changelog
    from cmover.lustre.chjournal import LustreJournal

    lib, _ = _load(library)
    chl = changelog.bind(lib) if lib is not None else None
    if chl is None:
        return f"the source is on Lustre but {info.note} lacks the changelog functions"
    assert info.fsname is not None and info.mount is not None  # a handled filesystem has both
    return LustreJournal(chl, info.fsname, info.mount, info.mdt_count, users)


def describe(src_root: bytes, dst_root: bytes, policy: str, library: str = "") -> str:
    """One line for the start of a pass: whether layouts and MDT placement are handled, and why not."""
    src, dst = probe(src_root, library), probe(dst_root, library)
    if not dst.handled:
        return f"Lustre layouts and MDT placement not handled: {dst.note}"
    target = f"target {dst.fsname} ({dst.ost_count} OSTs, {dst.mdt_count} MDTs)"
    if policy == "target-default":
        return f"Lustre layouts: target-default (left to the target directories); {target}; {dst.note}"
    if not src.handled:
        return f"Lustre layouts: the target's defaults (source is not Lustre: {src.note}); {target}"
    return f"Lustre layouts: {policy} from source {src.fsname} ({src.ost_count} OSTs) to {target}; {dst.note}"


def mdt_count(path: bytes, library: str = "") -> int:
    """MDTs of the Lustre filesystem holding ``path``; 0 when not Lustre or not handled."""
    info = probe(path, library)
    return info.mdt_count if info.handled else 0


def path_layout(path: bytes, library: str = "") -> tuple[FsInfo, Layout | None, int | None]:
    """For ``cmover lustre-info``: the filesystem, the layout of ``path`` and the MDT it lives on."""
    info = probe(path, library)
    if not info.handled:
        return info, None, None
    lib, _ = _load(library)
    assert lib is not None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return info, lib.read_layout(fd, path), lib.mdt_index(fd, path)
    finally:
        os.close(fd)
