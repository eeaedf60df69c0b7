"""Planning a pass: build its :class:`PassSpec` from settings and options, and check it is safe to run.

Every check here runs before anything is written; a failed check raises :class:`ConfigError` or
:class:`PreflightError` with a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

from cmover import lustre
from cmover.errors import ConfigError, ConfinementError, PreflightError
from cmover.lustre.layout import POLICIES
from cmover.passes import PassKind, PassSpec, age_cutoffs, new_run_id, read_excludes
from cmover.paths import check_rel, is_within
from cmover.settings import Settings, check_chunking


@dataclass(frozen=True, slots=True, kw_only=True)
class PassOptions:
    """Command-line overrides of config.py for one pass (None = take the config value)."""

    oldest_date: float | None = None
    newest_date: float | None = None
    exclude_file: str | None = None
    batch: int | None = None
    chunk_threshold: int | None = None
    chunk_size: int | None = None
    dry_run: bool = False  # delete pass: list and count, delete nothing
    max_delete: int = 0  # delete pass: stop deleting after this many entries (0: no limit)
    layout: str | None = None  # Lustre layout policy (config LUSTRE_LAYOUT)
    restripe: bool | None = None  # rewrite identical files whose layout differs (config LUSTRE_RESTRIPE)


def _abs(path: str, what: str) -> bytes:
    if not path:
        raise ConfigError(f"{what} is empty; give a directory path")
    return os.fsencode(os.path.normpath(os.path.abspath(path)))


def plan(kind: PassKind, settings: Settings, src: str, dst: str, start: str = "",
         options: PassOptions | None = None) -> PassSpec:
    """Build the spec of a pass copying ``src`` to ``dst`` (mount roots), starting at sub-path ``start``."""
    o = options or PassOptions()
    src_root = os.fsencode(os.path.realpath(_abs(src, "source")))
    dst_root = _abs(dst, "target")
    parent = os.path.realpath(os.path.dirname(dst_root))
    dst_root = os.path.join(parent, os.path.basename(dst_root)) if dst_root != b"/" else dst_root
    if os.path.islink(dst_root):
        dst_root = os.fsencode(os.path.realpath(dst_root))
    start_b = os.fsencode(start).strip(b"/")
    try:
        start_b = check_rel(os.path.normpath(start_b) if start_b else b"")
    except ConfinementError as exc:
        raise ConfigError(f"start path {start!r}: {exc}; give a path relative to the source root") from None
    oldest, newest = age_cutoffs(
        settings.oldest_date if o.oldest_date is None else o.oldest_date,
        settings.newest_date if o.newest_date is None else o.newest_date,
        time.time_ns(),
    )
    batch = settings.batch if o.batch is None else o.batch
    if batch < 1:
        raise ConfigError(f"--batch {batch} must be at least 1")
    threshold = settings.chunk_threshold if o.chunk_threshold is None else o.chunk_threshold
    chunk = settings.chunk_size if o.chunk_size is None else o.chunk_size
    check_chunking(threshold, chunk, "--chunk-threshold", "--chunk-size", "give other sizes")
    excludes = read_excludes(settings.exclude_file if o.exclude_file is None else o.exclude_file, src_root)
    if o.max_delete < 0:
        raise ConfigError(f"--max-delete {o.max_delete} must be >= 0 (0: no limit)")
    layout = settings.lustre_layout if o.layout is None else o.layout
    if layout not in POLICIES:
        raise ConfigError(f"--layout {layout!r} is not a layout policy; choose one of {', '.join(POLICIES)}")
    extra: dict[str, object] = {}
    if kind is PassKind.DELETE:
        extra = {"dry_run": o.dry_run, "max_delete": o.max_delete,
                   "src_must_be_mount": settings.source_is_mount}
        try:
            st = os.stat(src_root)
            # The identity every delete task re-checks: an unmount or another mount over it changes it.
            extra["src_id"] = [st.st_dev, st.st_ino]
        except OSError:
            pass  # the preflight reports it
    return PassSpec(
        options=extra,
        run_id=new_run_id(kind), kind=kind, src_root=src_root, dst_root=dst_root, start=start_b,
        oldest_atime_ns=oldest, newest_mtime_ns=newest, excludes=excludes, batch=batch,
        inline_entries=settings.inline_entries, inline_seconds=settings.inline_seconds,
        batch_seconds=float(settings.batch_seconds), chunk_threshold=threshold, chunk_size=chunk,
        mds_striped=settings.mds_is_striped and kind is PassKind.COPY, max_deliveries=settings.max_deliveries,
        mdt_list=placement(settings, dst_root) if settings.mds_is_striped and kind is PassKind.COPY else (),
        layout=layout, restripe=settings.lustre_restripe if o.restripe is None else o.restripe,
    )


def placement(settings: Settings, dst_root: bytes) -> tuple[int, ...]:
    """MDTs for first-level target directories: MDT_LIST, or every MDT of the target when it is empty.

    Empty (no placement) when the target is not Lustre or has a single MDT and nothing was listed.
    """
    if settings.mdt_list:
        return settings.mdt_list
    n = lustre.mdt_count(dst_root, settings.lustreapi)
    return tuple(range(n)) if n > 1 else ()


def preflight(spec: PassSpec, *, create_target: bool = False) -> None:
    """Check pass ``spec`` can run safely; PreflightError with the reason and the fix otherwise.

    Nothing is written. Copy: see :func:`preflight_copy`. Delete: also refuses a source root that is not
    a mount point while config says it must be, or that is empty while the target is not (an unmounted
    or failed source would otherwise look like "everything was deleted"). Dirtime: the target must exist.
    """
    if spec.kind is PassKind.COPY:
        preflight_copy(spec, create_target=create_target)
        return
    preflight_copy(spec, create_target=False)
    if spec.kind is PassKind.DELETE:
        from cmover.deletepass import source_root_problem

        problem = source_root_problem(spec)
        if problem is not None:
            raise PreflightError(problem)
        if os.path.samestat(os.stat(spec.src_root), os.stat(spec.dst_root)):
            raise PreflightError("source and target are the same filesystem object; refusing to delete")


def preflight_copy(spec: PassSpec, *, create_target: bool) -> None:
    """Check a copy pass can run. With ``create_target`` a missing target root may be created later
    (its parent must exist); nothing is created here."""
    src, dst = spec.src_root, spec.dst_root
    try:
        sst = os.stat(src)
    except FileNotFoundError:
        raise PreflightError(f"source {os.fsdecode(src)} does not exist; check the path or mount it") from None
    except OSError as exc:
        raise PreflightError(f"source {os.fsdecode(src)} cannot be read ({exc.strerror}); check the mount") from None
    if not stat.S_ISDIR(sst.st_mode):
        raise PreflightError(f"source {os.fsdecode(src)} is not a directory; give the directory to copy")
    if src == dst:
        raise PreflightError("source and target are the same directory; give two different directories")
    if is_within(dst, src):
        raise PreflightError(f"target {os.fsdecode(dst)} is inside the source; choose a target outside it")
    if is_within(src, dst):
        raise PreflightError(f"source {os.fsdecode(src)} is inside the target; choose a target outside it")
    try:
        dstst = os.stat(dst)
    except FileNotFoundError:
        if not create_target:
            raise PreflightError(f"target {os.fsdecode(dst)} does not exist; create or mount it first") from None
        if not os.path.isdir(os.path.dirname(dst)):
            raise PreflightError(f"parent of target {os.fsdecode(dst)} does not exist; create it first") from None
        dstst = None
    except OSError as exc:
        raise PreflightError(f"target {os.fsdecode(dst)} cannot be read ({exc.strerror}); check the mount") from None
    if dstst is not None:
        if not stat.S_ISDIR(dstst.st_mode):
            raise PreflightError(f"target {os.fsdecode(dst)} is not a directory; give a directory")
        if (dstst.st_dev, dstst.st_ino) == (sst.st_dev, sst.st_ino):
            raise PreflightError("source and target are the same directory (same inode); give two different ones")
    if spec.start:
        start = os.path.join(src, spec.start)
        try:
            st = os.lstat(start)
        except OSError as exc:
            raise PreflightError(f"start path {os.fsdecode(start)} cannot be read ({exc.strerror}); "
                                 "give an existing directory under the source") from None
        if not stat.S_ISDIR(st.st_mode):
            raise PreflightError(f"start path {os.fsdecode(start)} is not a directory; give a directory")


def create_target_root(spec: PassSpec) -> None:
    """Create the target root (only its last component) when missing, after preflight passed."""
    try:
        os.mkdir(spec.dst_root, 0o700)
    except FileExistsError:
        pass
