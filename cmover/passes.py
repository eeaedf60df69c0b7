"""What one pass does: :class:`PassSpec`, decided once when the pass starts and carried by every task.

Relative paths in a pass are relative to the *mount roots* (``src_root``/``dst_root``); ``start`` is the
sub-path the pass begins at (``b""`` for the whole tree). Age cutoffs are absolute nanosecond
timestamps computed once at planning time, so every worker applies the same cut whatever its clock
says when it runs.
"""

from __future__ import annotations

import enum
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cmover.errors import ConfigError, ConfinementError
from cmover.lustre.layout import check_policy
from cmover.paths import check_rel, from_wire, to_wire


class PassKind(enum.StrEnum):
    COPY = "copy"
    DELETE = "delete"
    DIRTIME = "dirtime"


@dataclass(frozen=True, slots=True, kw_only=True)
class PassSpec:
    """Immutable description of one pass; JSON-able through :meth:`as_dict` / :meth:`from_dict`.

    ``oldest_atime_ns``: regular files with an atime before it are skipped (0 = no cut).
    ``newest_mtime_ns``: regular files with an mtime after it are skipped (0 = no cut).
    ``excludes``: relative path prefixes (whole components) that are left out.
    """

    run_id: str
    kind: PassKind
    src_root: bytes
    dst_root: bytes
    start: bytes = b""
    oldest_atime_ns: int = 0
    newest_mtime_ns: int = 0
    excludes: tuple[bytes, ...] = ()
    batch: int = 1000
    inline_entries: int = 2000
    inline_seconds: float = 0.5
    batch_seconds: float = 120.0
    chunk_threshold: int = 0
    chunk_size: int = 256 << 20
    mds_striped: bool = False
    mdt_list: tuple[int, ...] = ()  # first-level directories round-robin over these (-1: MDS balancing)
    layout: str = "keep"  # Lustre layout policy, see cmover.lustre.layout
    restripe: bool = False  # rewrite otherwise identical files whose layout differs
    max_deliveries: int = 5
    attempt: int = 0  # n-th `retry-failed` of the run: task ids and part files differ from earlier attempts
    options: dict[str, Any] = field(default_factory=dict)

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
            "max_deliveries": self.max_deliveries,
            "attempt": self.attempt,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, d: Any) -> PassSpec:
        """Rebuild a spec from a message; raise ConfinementError on any malformed field."""
        if not isinstance(d, dict):
            raise ConfinementError("pass spec in message is not an object")
        try:
            spec = cls(
                run_id=_str(d["run_id"]),
                kind=PassKind(d["kind"]),
                src_root=from_wire(d["src_root"]),
                dst_root=from_wire(d["dst_root"]),
                start=check_rel(from_wire(d.get("start", ""))),
                oldest_atime_ns=_int(d.get("oldest_atime_ns", 0)),
                newest_mtime_ns=_int(d.get("newest_mtime_ns", 0)),
                excludes=tuple(check_rel(from_wire(e)) for e in _list(d.get("excludes", []))),
                batch=_int(d.get("batch", 1000), lo=1),
                inline_entries=_int(d.get("inline_entries", 2000)),
                inline_seconds=_seconds(d.get("inline_seconds", 0.5)),
                batch_seconds=_seconds(d.get("batch_seconds", 120.0)),
                chunk_threshold=_int(d.get("chunk_threshold", 0)),
                chunk_size=_int(d.get("chunk_size", 256 << 20), lo=1 << 20),
                mds_striped=bool(d.get("mds_striped", False)),
                mdt_list=tuple(_mdt(m) for m in _list(d.get("mdt_list", []))),
                layout=check_policy(d.get("layout", "keep")),
                restripe=_bool(d.get("restripe", False)),
                max_deliveries=_int(d.get("max_deliveries", 5), lo=1),
                attempt=_int(d.get("attempt", 0)),
                options=_options(d.get("options") or {}),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfinementError(f"malformed pass spec in message: {type(exc).__name__}: {exc}") from None
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


def _options(v: Any) -> dict[str, Any]:
    """Pass options (the delete pass's): an object whose known keys have the types the engine relies on."""
    if not isinstance(v, dict):
        raise ValueError("options must be an object")
    for key, ok in (("dry_run", lambda x: isinstance(x, bool)),
                    ("src_must_be_mount", lambda x: isinstance(x, bool)),
                    ("max_delete", lambda x: not isinstance(x, bool) and isinstance(x, int) and x >= 0),
                    ("src_id", lambda x: isinstance(x, list) and len(x) == 2
                     and all(isinstance(i, int) and not isinstance(i, bool) for i in x))):
        if key in v and not ok(v[key]):
            raise ValueError(f"option {key} has an invalid value {v[key]!r}")
    return dict(v)


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
    return f"{kind.value}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


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
