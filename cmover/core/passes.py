"""What one pass does: :class:`PassSpec`, decided once when the pass starts and carried by every task.

Relative paths in a pass are relative to the *mount roots* (``src_root``/``dst_root``); ``start`` is the
sub-path the pass begins at (``b""`` for the whole tree). Age cutoffs are absolute nanosecond
timestamps computed once at planning time, so every worker applies the same cut whatever its clock
says when it runs. Whether a pass may leave source entries out (exclusions, age or size window) is
:attr:`PassSpec.leaves_entries_out`: such a pass never proves that the target holds the whole source.
"""

from __future__ import annotations

import enum
import os
import re
import time
from typing import TYPE_CHECKING, Any

from cmover.core.errors import ConfigError, ConfinementError
from cmover.core.frozen import NamedTuple
from cmover.core.idmap import NO_MAP, IdMap
from cmover.core.paths import check_rel, from_wire, to_wire
from cmover.core.policies import check_hsm_policy, check_policy


class PassKind(enum.StrEnum):
    COPY = "copy"
    DELETE = "delete"
    DIRTIME = "dirtime"
    VERIFY = "verify"


class NoOptions(NamedTuple):
    """The options of a pass that has none (copy, dirtime): ``{}`` on the wire. An empty tuple, so false: a
    spec's options are told apart by their type (:data:`OPTIONS`), never by their truth."""

    def as_dict(self) -> dict[str, Any]:
        return {}


class DeleteOptions(NamedTuple):
    """What the operator asked of a delete pass, and what its tasks re-check before deleting anything.

    ``dry_run``: count and list what would be deleted, delete nothing. ``max_delete``: at most this many
    entries deleted by the whole pass (0: no limit). ``src_must_be_mount``: the source root must be a
    mount point (SOURCE_IS_MOUNT). ``src_id``: ``(st_dev, st_ino)`` of the source root when the pass
    was planned (None when it could not be read then; the preflight reports that): an unmount or
    another filesystem mounted over the root changes it.
    """

    dry_run: bool = False
    max_delete: int = 0
    src_must_be_mount: bool = False
    src_id: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dry_run": self.dry_run, "max_delete": self.max_delete,
                             "src_must_be_mount": self.src_must_be_mount}
        if self.src_id is not None:
            d["src_id"] = list(self.src_id)
        return d

    @classmethod
    def of(cls, spec: PassSpec) -> DeleteOptions:
        """The delete options of ``spec``; TypeError for a spec of another kind (a caller's bug)."""
        if not isinstance(spec.options, cls):
            raise TypeError(f"a {spec.kind.value} pass spec has no delete options")
        return spec.options


class VerifyOptions(NamedTuple):
    """What a verify pass compares besides metadata, and where it keeps its manifest.

    ``content``: read both files and compare their checksums. ``manifest``: the directory of the
    manifest (absolute path, "" for none; see :mod:`cmover.engine.manifest`); implies ``content``.
    ``reread_all``: ignore the previous manifest's index, read every file. ``atime``: compare atimes too.
    ``skip_dir_times``: do not compare directory mtimes (and atimes).
    """

    content: bool = False
    manifest: str = ""
    reread_all: bool = False
    atime: bool = False
    skip_dir_times: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"content": self.content, "manifest": self.manifest, "all": self.reread_all, "atime": self.atime,
                "skip_dir_times": self.skip_dir_times}

    @classmethod
    def of(cls, spec: PassSpec) -> VerifyOptions:
        """The verify options of ``spec``; TypeError for a spec of another kind (a caller's bug)."""
        if not isinstance(spec.options, cls):
            raise TypeError(f"a {spec.kind.value} pass spec has no verify options")
        return spec.options


#: The options of each pass, by kind (a pass with options of its own declares its record here).
Options = NoOptions | DeleteOptions | VerifyOptions
OPTIONS: dict[PassKind, type[NoOptions] | type[DeleteOptions] | type[VerifyOptions]] = {
    PassKind.COPY: NoOptions, PassKind.DELETE: DeleteOptions, PassKind.DIRTIME: NoOptions,
    PassKind.VERIFY: VerifyOptions}


class _Spec(NamedTuple):
    """The fields of :class:`PassSpec` (see there)."""

    run_id: str
    kind: PassKind
    src_root: bytes
    dst_root: bytes
    start: bytes = b""
    oldest_atime_ns: int = 0
    newest_mtime_ns: int = 0
    excludes: tuple[bytes, ...] = ()
    min_size: int = 0
    max_size: int = 0
    batch: int = 1000
    inline_entries: int = 10000
    inline_seconds: float = 0.5
    batch_seconds: float = 120.0
    chunk_threshold: int = 0
    chunk_size: int = 256 << 20
    mds_striped: bool = False
    mdt_list: tuple[int, ...] = ()  # first-level directories round-robin over these (-1: MDS balancing)
    layout: str = "keep"  # Lustre layout policy, see cmover.lustre.layout
    restripe: bool = False  # rewrite otherwise identical files whose layout differs
    hsm: str = "import"  # what a copy pass does with HSM-released source files (cmover.core.policies)
    max_deliveries: int = 5
    changes: bool = False  # driven by a change journal: see PassSpec
    attempt: int = 0  # n-th `retry-failed` of the run: task ids and part files differ from earlier attempts
    # Clean-pass proof (cmover.core.cleanpass): when the pass was planned (wall clock, ns; what a clean
    # finish records), and the cut of the last clean pass it may use (0: none, compare in full).
    planned_ns: int = 0
    proof_ns: int = 0  # source entries with a ctime below this were identical when that pass ended
    proof_end_ns: int = 0  # ... and stay so while their target ctime is below this
    proof_fp: str = ""  # the fingerprint of that pass: a worker whose own differs uses no proof
    options: Options = NoOptions()  # the kind's record (OPTIONS); its defaults when none is given
    idmap: IdMap = NO_MAP  # uid/gid maps (UID_MAP/GID_MAP, --usermap/--groupmap): every pass compares with them


class PassSpec(_Spec):
    """Immutable description of one pass; JSON-able through :meth:`as_dict` / :meth:`from_dict`.

    ``oldest_atime_ns``: regular files with an atime before it are skipped (0 = no cut).
    ``newest_mtime_ns``: regular files with an mtime after it are skipped (0 = no cut).
    ``excludes``: relative path prefixes (whole components) that are left out.
    ``min_size`` / ``max_size``: regular files smaller / larger than this many bytes are skipped (0 = no bound).
    ``changes``: the pass is driven by a change journal (:mod:`cmover.engine.changeplan`): its batch jobs name
    exactly the entries that changed, so an entry of a batch that is a directory is handled *shallowly*
    (its own metadata or times, not its contents; a directory missing on the target is walked in full),
    and a batch with no names stands for its directory itself.
    ``idmap``: the identity maps of a migration between sites (:mod:`cmover.core.idmap`), the same for every
    kind of pass: the target is compared with the source as mapped.

    Every spec carries the option record its kind declares (:data:`OPTIONS`; its defaults when none is
    given), so that an engine reads typed fields; options of another kind are a TypeError. A named tuple
    (fields in :class:`_Spec`, built with keywords): a dataclass of 30 fields cost every command 3 ms of
    generated code at start. Being a tuple, it crosses JSON only through :meth:`as_dict`.
    """

    __slots__ = ()

    if not TYPE_CHECKING:  # the type checker keeps the fields' own signature for PassSpec(...)
        def __new__(cls, *args: Any, **kwargs: Any) -> PassSpec:
            spec = super().__new__(cls, *args, **kwargs)
            want = OPTIONS[spec.kind]
            if type(spec.options) is not want:
                if type(spec.options) is not NoOptions:
                    raise TypeError(f"a {spec.kind.value} pass takes {want.__name__}, "
                                    f"not {type(spec.options).__name__}")
                spec = spec._replace(options=want())
            return spec

    @property
    def leaves_entries_out(self) -> bool:
        """True when this pass may leave source entries out: an exclusions list, an age window or a size
        window (the one place that says so). A copy pass that leaves entries out, however it ends, is no
        proof that the target holds every source entry; a clean-pass record must not be made of it."""
        return bool(self.excludes or self.oldest_atime_ns or self.newest_mtime_ns or self.min_size or self.max_size)

    @property
    def generation(self) -> str:
        """The run id, with the retry attempt when there is one: names what must not be shared between
        attempts (a retried chunked file gets a new part file and new chunk claims)."""
        return f"{self.run_id}.r{self.attempt}" if self.attempt else self.run_id

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "kind": self.kind.value,
            "src_root": to_wire(self.src_root),
            "dst_root": to_wire(self.dst_root),
            "start": to_wire(self.start),
            "oldest_atime_ns": self.oldest_atime_ns,
            "newest_mtime_ns": self.newest_mtime_ns,
            "excludes": [to_wire(e) for e in self.excludes],
            "min_size": self.min_size,
            "max_size": self.max_size,
            "batch": self.batch,
            "inline_entries": self.inline_entries,
            "inline_seconds": self.inline_seconds,
            "batch_seconds": self.batch_seconds,
            "chunk_threshold": self.chunk_threshold,
            "chunk_size": self.chunk_size,
            "mds_striped": self.mds_striped,
            "mdt_list": list(self.mdt_list),
            "layout": self.layout,
            "restripe": self.restripe,
            "hsm": self.hsm,
            "max_deliveries": self.max_deliveries,
            "attempt": self.attempt,
            "changes": self.changes,
            "planned_ns": self.planned_ns,
            "proof_ns": self.proof_ns,
            "proof_end_ns": self.proof_end_ns,
            "proof_fp": self.proof_fp,
            "options": self.options.as_dict(),
            "idmap": self.idmap.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> PassSpec:
        """Rebuild a spec from a message; raise ConfinementError on any malformed field."""
        if not isinstance(d, dict):
            raise ConfinementError("pass spec in message is not an object")
        try:
            kind = PassKind(d["kind"])
            spec = cls(
                run_id=_str(d["run_id"]),
                kind=kind,
                src_root=from_wire(d["src_root"]),
                dst_root=from_wire(d["dst_root"]),
                start=check_rel(from_wire(d.get("start", ""))),
                oldest_atime_ns=_int(d.get("oldest_atime_ns", 0)),
                newest_mtime_ns=_int(d.get("newest_mtime_ns", 0)),
                excludes=tuple(check_rel(from_wire(e)) for e in _list(d.get("excludes", []))),
                min_size=_int(d.get("min_size", 0)),
                max_size=_int(d.get("max_size", 0)),
                batch=_int(d.get("batch", 1000), lo=1),
                inline_entries=_int(d.get("inline_entries", 10000)),
                inline_seconds=_seconds(d.get("inline_seconds", 0.5)),
                batch_seconds=_seconds(d.get("batch_seconds", 120.0)),
                chunk_threshold=_int(d.get("chunk_threshold", 0)),
                chunk_size=_int(d.get("chunk_size", 256 << 20), lo=1 << 20),
                mds_striped=bool(d.get("mds_striped", False)),
                mdt_list=tuple(_mdt(m) for m in _list(d.get("mdt_list", []))),
                layout=check_policy(d.get("layout", "keep")),
                restripe=_bool(d.get("restripe", False)),
                hsm=check_hsm_policy(d.get("hsm", "import")),
                max_deliveries=_int(d.get("max_deliveries", 5), lo=1),
                attempt=_int(d.get("attempt", 0)),
                changes=_bool(d.get("changes", False)),
                planned_ns=_int(d.get("planned_ns", 0)),
                proof_ns=_int(d.get("proof_ns", 0)),
                proof_end_ns=_int(d.get("proof_end_ns", 0)),
                proof_fp=_fp(d.get("proof_fp", "")),
                options=_options(kind, d.get("options") or {}),
                idmap=IdMap.from_dict(d.get("idmap", {})),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfinementError(f"malformed pass spec in message: {type(exc).__name__}: {exc}") from None
        if spec.max_size and spec.min_size > spec.max_size:
            raise ConfinementError(f"malformed pass spec in message: min_size {spec.min_size} > max_size "
                                   f"{spec.max_size}")
        for root in (spec.src_root, spec.dst_root):
            if not root.startswith(b"/") or b"\0" in root or os.path.normpath(root) != root:
                raise ConfinementError(f"pass root {root!r} is not a normalised absolute path")
        return spec


#: A run id becomes part of memcached keys and queue names: no spaces, control characters or other syntax.
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def _str(v: Any) -> str:
    if not isinstance(v, str) or not _RUN_ID_RE.fullmatch(v):
        raise ValueError("run_id must be a short non-empty string of letters, digits, '_', '.', ':', '-'")
    return v


def _int(v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"expected an integer >= {lo}, got {v!r}")
    return v


_FP_RE = re.compile(r"[0-9a-f]{0,64}")


def _fp(v: Any) -> str:
    """A clean-pass fingerprint: hex digits (empty: none)."""
    if not isinstance(v, str) or not _FP_RE.fullmatch(v):
        raise ValueError("proof_fp must be a hex digest")
    return v


def _mdt(v: Any) -> int:
    """An MDT index (-1: the filesystem's balancing); a C int for liblustreapi."""
    if _int(v, lo=-1) >= 2**31:
        raise ValueError(f"MDT index {v} is out of range")
    return v


def _seconds(v: Any) -> float:
    """A finite, non-negative number of seconds (a huge int would overflow ``float``, NaN compares false)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e12:
        raise ValueError(f"expected a number of seconds, got {v!r}")
    return float(v)


def _options(kind: PassKind, v: Any) -> Options:
    """The pass options of a message: an object whose known keys have the types the engines rely on.

    Every known key is checked whatever the pass kind (a malformed one is a forged message); keys this
    version does not know are ignored (a newer planner may add some); the record is the kind's.
    """
    if not isinstance(v, dict):
        raise ValueError("options must be an object")
    for key, ok in (("dry_run", lambda x: isinstance(x, bool)),
                    ("src_must_be_mount", lambda x: isinstance(x, bool)),
                    ("max_delete", lambda x: not isinstance(x, bool) and isinstance(x, int) and x >= 0),
                    ("src_id", lambda x: isinstance(x, list) and len(x) == 2
                     and all(isinstance(i, int) and not isinstance(i, bool) for i in x))):
        if key in v and not ok(v[key]):
            raise ValueError(f"option {key} has an invalid value {v[key]!r}")
    for key in ("content", "all", "atime", "skip_dir_times"):
        if key in v and not isinstance(v[key], bool):
            raise ValueError(f"option {key} has an invalid value {v[key]!r}")
    if "manifest" in v and not (isinstance(v["manifest"], str) and (v["manifest"] == "" or (
            v["manifest"].startswith("/") and "\0" not in v["manifest"]))):
        raise ValueError(f"option manifest has an invalid value {v['manifest']!r}")
    if kind is PassKind.VERIFY:
        return VerifyOptions(content=v.get("content", False) or bool(v.get("manifest")),
                             manifest=v.get("manifest", ""), reread_all=v.get("all", False),
                             atime=v.get("atime", False), skip_dir_times=v.get("skip_dir_times", False))
    if kind is not PassKind.DELETE:
        return NoOptions()
    src_id = v.get("src_id")
    return DeleteOptions(dry_run=v.get("dry_run", False), max_delete=v.get("max_delete", 0),
                         src_must_be_mount=v.get("src_must_be_mount", False),
                         src_id=(src_id[0], src_id[1]) if src_id else None)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError("expected a list")
    return v


def new_run_id(kind: PassKind) -> str:
    """A unique, sortable pass id such as ``copy-20261121T203000-1a2b3c4d``."""
    return f"{kind.value}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.urandom(4).hex()}"


def age_cutoffs(oldest_date: float, newest_date: float, now_ns: int) -> tuple[int, int]:
    """Turn the classic relative ages (seconds, 0 = off) into absolute ns cutoffs (0 = off)."""
    oldest = now_ns - int(oldest_date * 1e9) if oldest_date else 0
    newest = now_ns - int(newest_date * 1e9) if newest_date else 0
    return oldest, newest


def read_excludes(path: str, src_root: bytes) -> tuple[bytes, ...]:
    """Read an exclusions file: one path prefix per line, relative or absolute under ``src_root``.

    Raises ConfigError (one line, with the line number) on an unreadable file or a prefix outside the
    source root. Blank lines and ``#`` comments are ignored. Lines are bytes: any file name works.
    """
    if not path:
        return ()
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot read exclusions file {path}: {exc.strerror}; fix EXCLUDE_FILE or --exclude-file"
        ) from None
    out: list[bytes] = []
    root = src_root.rstrip(b"/") + b"/"
    for no, raw in enumerate(lines, 1):
        line = raw.rstrip(b"\r")
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        if line.startswith(b"/"):
            if not line.startswith(root):
                raise ConfigError(f"{path}:{no}: {line!r} is not under the source root; use a path inside it")
            line = line[len(root):]
        line = line.rstrip(b"/")
        if not line:
            raise ConfigError(f"{path}:{no}: the prefix names the whole source root; remove the line")
        try:
            out.append(check_rel(line))
        except ConfinementError as exc:
            raise ConfigError(f"{path}:{no}: {exc}; write a plain path prefix") from None
    return tuple(out)
