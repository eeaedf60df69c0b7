"""Planning a pass: build its :class:`PassSpec` from settings and options, and check it is safe to run.

Every check here runs before anything is written; a failed check raises :class:`ConfigError` or
:class:`PreflightError` with a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import os
import stat
import time

from cmover import lustre
from cmover.core.errors import ConfigError, ConfinementError, PreflightError
from cmover.core.frozen import NamedTuple
from cmover.core.idmap import IdMap, Pairs, parse_text
from cmover.core.passes import (
    DeleteOptions,
    NoOptions,
    Options,
    PassKind,
    PassSpec,
    VerifyOptions,
    age_cutoffs,
    new_run_id,
    read_excludes,
)
from cmover.core.paths import check_rel, is_within
from cmover.core.policies import HSM_POLICIES, POLICIES
from cmover.core.settings import Settings
from cmover.core.sizes import check_chunking, check_sizes
from cmover.engine import cleanrecord


class PassOptions(NamedTuple):
    """Command-line overrides of config.py for one pass (None = take the config value), given by keyword."""

    oldest_date: float | None = None
    newest_date: float | None = None
    exclude_file: str | None = None
    min_size: int | None = None  # bytes: regular files smaller than this are left out (config MIN_SIZE)
    max_size: int | None = None  # bytes: regular files larger than this are left out (config MAX_SIZE)
    batch: int | None = None
    chunk_threshold: int | None = None
    chunk_size: int | None = None
    dry_run: bool = False  # delete pass: list and count, delete nothing
    max_delete: int = 0  # delete pass: stop deleting after this many entries (0: no limit)
    layout: str | None = None  # Lustre layout policy (config LUSTRE_LAYOUT)
    restripe: bool | None = None  # rewrite identical files whose layout differs (config LUSTRE_RESTRIPE)
    hsm: str | None = None  # HSM policy (config HSM_POLICY)
    usermap: str | None = None  # --usermap as written: FROM:TO pairs, @FILE or a mapping file (config UID_MAP)
    groupmap: str | None = None  # --groupmap (config GID_MAP)
    verify: VerifyOptions = VerifyOptions()  # verify pass: --content, --manifest (a path as given), --all, ...
    full_compare: bool = False  # copy pass: use no clean-pass proof, compare every entry in full


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
    now_ns = time.time_ns()  # before any task of the pass looks at an entry: what a clean finish records
    oldest, newest = age_cutoffs(
        settings.oldest_date if o.oldest_date is None else o.oldest_date,
        settings.newest_date if o.newest_date is None else o.newest_date,
        now_ns,
    )
    batch = settings.batch if o.batch is None else o.batch
    if batch < 1:
        raise ConfigError(f"--batch {batch} must be at least 1")
    threshold = settings.chunk_threshold if o.chunk_threshold is None else o.chunk_threshold
    chunk = settings.chunk_size if o.chunk_size is None else o.chunk_size
    check_chunking(threshold, chunk, "--chunk-threshold", "--chunk-size", "give other sizes")
    min_size = settings.min_size if o.min_size is None else o.min_size
    max_size = settings.max_size if o.max_size is None else o.max_size
    check_sizes(min_size, max_size, "--min-size", "--max-size", "give a smaller --min-size or a larger --max-size")
    excludes = read_excludes(settings.exclude_file if o.exclude_file is None else o.exclude_file, src_root)
    if o.max_delete < 0:
        raise ConfigError(f"--max-delete {o.max_delete} must be >= 0 (0: no limit)")
    layout = settings.lustre_layout if o.layout is None else o.layout
    if layout not in POLICIES:
        raise ConfigError(f"--layout {layout!r} is not a layout policy; choose one of {', '.join(POLICIES)}")
    hsm = settings.hsm_policy if o.hsm is None else o.hsm
    if hsm not in HSM_POLICIES:
        raise ConfigError(f"--hsm {hsm!r} is not an HSM policy; choose one of {', '.join(HSM_POLICIES)}")
    idmap = IdMap(_map(settings.uid_map, o.usermap, "UID_MAP", "--usermap"),
                  _map(settings.gid_map, o.groupmap, "GID_MAP", "--groupmap"))
    kind_options: Options = NoOptions()
    if kind is PassKind.DELETE:
        try:
            st = os.stat(src_root)
            # The identity every delete task re-checks: an unmount or another mount over it changes it.
            src_id: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            src_id = None  # the preflight reports it
        kind_options = DeleteOptions(dry_run=o.dry_run, max_delete=o.max_delete,
                                     src_must_be_mount=settings.source_is_mount, src_id=src_id)
    elif kind is PassKind.VERIFY:
        kind_options = _verify_options(o.verify, src_root, dst_root)
    spec = PassSpec(
        options=kind_options, planned_ns=now_ns,
        run_id=new_run_id(kind), kind=kind, src_root=src_root, dst_root=dst_root, start=start_b,
        oldest_atime_ns=oldest, newest_mtime_ns=newest, excludes=excludes, batch=batch,
        min_size=min_size, max_size=max_size,
        inline_entries=settings.inline_entries, inline_seconds=settings.inline_seconds,
        batch_seconds=float(settings.batch_seconds), chunk_threshold=threshold, chunk_size=chunk,
        mds_striped=settings.mds_is_striped and kind is PassKind.COPY, max_deliveries=settings.max_deliveries,
        mdt_list=placement(settings, dst_root) if settings.mds_is_striped and kind is PassKind.COPY else (),
        layout=layout, restripe=settings.lustre_restripe if o.restripe is None else o.restripe, hsm=hsm,
        idmap=idmap,
    )
    return cleanrecord.attach(spec, settings, full_compare=o.full_compare)


def _verify_options(v: VerifyOptions, src_root: bytes, dst_root: bytes) -> VerifyOptions:
    """The verify options with the manifest directory made absolute and checked (created when missing)."""
    if not v.manifest:
        if v.reread_all:
            raise ConfigError("--all only matters with --manifest DIR (it reads every file again); add --manifest")
        return v
    path = os.path.normpath(os.path.abspath(v.manifest))
    mine = os.fsencode(os.path.realpath(path))
    for root, what in ((src_root, "source"), (os.fsencode(os.path.realpath(dst_root)), "target")):
        if is_within(mine, root):
            raise ConfigError(f"--manifest {v.manifest} lies inside the {what} tree, whose verify would list it; "
                              "choose a directory outside both trees")
    if not os.path.isdir(path):
        if not os.path.isdir(os.path.dirname(path)):
            raise ConfigError(f"--manifest {v.manifest}: its parent directory does not exist; create it first")
        if os.path.exists(path):
            raise ConfigError(f"--manifest {v.manifest} is not a directory; give a directory")
    return VerifyOptions(content=True, manifest=path, reread_all=v.reread_all, atime=v.atime,
                         skip_dir_times=v.skip_dir_times)


def _map(configured: Pairs, given: str | None, setting: str, flag: str) -> Pairs:
    """The pairs of one identity map: config.py's, or the command line's. Both at once is refused: whether
    the second should replace or extend the first cannot be guessed, and a wrong guess changes owners."""
    if given is None:
        return configured
    if configured:
        raise ConfigError(f"{setting} is set in config.py and {flag} was given; use one of them: remove {setting} "
                          f"from config.py or drop {flag}")
    return parse_text(given, flag, f"e.g. {flag} 1000:5000,1001:5001 or {flag} @FILE (one FROM:TO per line)")


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
        from cmover.engine.safety import source_root_problem

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


def create_target_root(spec: PassSpec) -> bool:
    """Create the target root (only its last component) when missing, after preflight passed; True when this
    call created it (empty: its names need no lookup, :attr:`cmover.engine.jobs.DirJob.made`).

    PreflightError (nothing written) when it cannot be created, e.g. a parent this user may not write.
    """
    try:
        os.mkdir(spec.dst_root, 0o700)
    except FileExistsError:
        return False
    except OSError as exc:
        parent = os.fsdecode(os.path.dirname(spec.dst_root))
        raise PreflightError(f"cannot create target {os.fsdecode(spec.dst_root)} ({exc.strerror}); create it "
                             f"first or give a target whose parent {parent} this user may write") from None
    return True
