"""Normalized change records and what a journal reading promises (shared by every change-journal backend).

The backends live in the platform layer: :mod:`cmover.journal` (fanotify) and
:mod:`cmover.lustre.changelog` (Lustre changelogs); both build these types, which is why they are here.

Every backend turns its own records into :class:`Change` values: what happened (:class:`What`) to which
name (a directory key -- a file handle or a FID, opaque here -- and the entry name), with the record's
index and source. :func:`touched` resolves directory keys to paths below the source root and folds the
changes into :class:`Touched`: per directory, the names that were entered (created, hard-linked, renamed
or moved in), changed in place, or removed (deleted, renamed or moved away), plus the directories whose
own metadata changed and those to re-check shallowly (a record that names no entry). Order does not
matter: the passes decide each name from the current state of both trees, so a name touched several
times is one entry of work.

A journal that cannot prove it is complete raises :class:`Untrusted` with a one-line reason; the caller
falls back to the walk (or refuses, as the operator asked).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cmover.core.paths import is_within


class What(enum.StrEnum):
    CREATED = "created"  # a new name (create, mkdir, symlink, mknod, hard link)
    CHANGED = "changed"  # data or attributes of the entry changed in place
    REMOVED = "removed"  # the name was unlinked or its directory removed
    RENAMED_FROM = "renamed_from"  # the name left this directory (rename or move)
    RENAMED_TO = "renamed_to"  # the name arrived in this directory (rename or move)


@dataclass(frozen=True, slots=True)
class Change:
    """One normalized record: ``what`` happened to ``name`` in directory ``dir`` (a backend key).

    ``name`` is ``b"."`` for a change of the directory itself and None when the record names no entry
    (the directory is then re-checked shallowly). ``index``: the record's position in its ``source``
    (one journal segment, one MDT), increasing without gaps as far as the source knows.
    """

    what: What
    dir: str
    name: bytes | None
    is_dir: bool
    index: int
    source: str
    time_ns: int = 0
    obj: str | None = None  # renames only: the identity of the object moved (a FID, a file handle)


@dataclass(frozen=True, slots=True)
class Rename:
    """One object moved from ``old`` to ``new`` (each a directory path relative to the source root and an
    entry name), as a journal proves it: one record naming both, or a departure and an arrival of the same
    object identity. ``index``, ``source``, ``time_ns``: those of the record of the arrival."""

    old_dir: bytes
    old_name: bytes
    new_dir: bytes
    new_name: bytes
    obj: str
    index: int
    source: str
    time_ns: int

    @property
    def old(self) -> bytes:
        return os.path.join(self.old_dir, self.old_name) if self.old_dir else self.old_name

    @property
    def new(self) -> bytes:
        return os.path.join(self.new_dir, self.new_name) if self.new_dir else self.new_name


class Untrusted(Exception):
    """The journal cannot prove it holds every change of the interval; the message says why, in one line."""


#: Flags of a touched name.
ENTERED = 1  # created, hard-linked or moved in: a directory under it is walked in full
CHANGED = 2
REMOVED = 4


@dataclass(slots=True)
class Touched:
    """The reduction of a set of changes to paths relative to the source root (see the module doc)."""

    names: dict[bytes, dict[bytes, int]] = field(default_factory=dict)  # dir -> name -> flags
    own: set[bytes] = field(default_factory=set)  # directories whose own metadata changed
    recheck: set[bytes] = field(default_factory=set)  # directories re-checked shallowly
    renames: list[Rename] = field(default_factory=list)  # proven renames, in the order of the records
    unresolved: int = 0  # records whose directory is gone (its removal is recorded in an ancestor)
    outside: int = 0  # records of directories outside the source root
    records: int = 0

    def add(self, rel: bytes, name: bytes, flags: int) -> None:
        d = self.names.setdefault(rel, {})
        d[name] = d.get(name, 0) | flags

    @property
    def entries(self) -> int:
        return sum(len(v) for v in self.names.values())


_FLAGS = {What.CREATED: ENTERED, What.RENAMED_TO: ENTERED, What.CHANGED: CHANGED,
          What.REMOVED: REMOVED, What.RENAMED_FROM: REMOVED}


def touched(changes: Iterable[Change], resolve: Callable[[str], bytes | None], src_root: bytes,
            start: bytes = b"") -> Touched:
    """Fold ``changes`` into :class:`Touched`, keeping what lies below ``src_root``/``start``.

    ``resolve(dir)`` gives the absolute path a directory key names now, or None when the directory no
    longer exists (counted as unresolved: its removal is a record of a surviving ancestor); OSError
    for anything else propagates (the caller treats the journal as untrusted). Each key is resolved
    once.

    A departure (RENAMED_FROM) followed by the next arrival (RENAMED_TO) of the same object identity
    (``obj``, from the same source) is also listed as a :class:`Rename` when both names resolve below the
    start; the names are folded into ``names`` all the same. Directory keys resolve to the path a directory
    has *now*: a rename whose parent was renamed too names that parent by its current path.
    """
    out = Touched()
    leaving: dict[tuple[str, str], tuple[bytes, bytes] | None] = {}  # (source, obj) -> where it left, if inside
    cache: dict[str, bytes | None] = {}
    root = src_root.rstrip(b"/") or b"/"
    base = os.path.join(root, start) if start else root
    for ch in changes:
        out.records += 1
        if ch.dir in cache:
            path = cache[ch.dir]
        else:
            path = cache[ch.dir] = resolve(ch.dir)
        pairing = ch.obj is not None and ch.name not in (None, b".") and ch.what in (What.RENAMED_FROM,
                                                                                        What.RENAMED_TO)
        if path is None or not is_within(path, base):
            if path is None:
                out.unresolved += 1
            else:
                out.outside += 1
            if pairing and ch.what is What.RENAMED_FROM:
                leaving[(ch.source, str(ch.obj))] = None
            elif pairing:
                leaving.pop((ch.source, str(ch.obj)), None)
            continue
        rel = b"" if path == root else path[len(root) + 1:] if root != b"/" else path[1:]
        if pairing and ch.name is not None:
            key = (ch.source, str(ch.obj))
            if ch.what is What.RENAMED_FROM:
                leaving[key] = (rel, ch.name)
            else:
                left = leaving.pop(key, None)
                if left is not None:
                    out.renames.append(Rename(left[0], left[1], rel, ch.name, str(ch.obj), ch.index, ch.source,
                                              ch.time_ns))
        if ch.name is None:
            out.recheck.add(rel)
        elif ch.name == b".":
            out.own.add(rel)
        else:
            out.add(rel, ch.name, _FLAGS[ch.what])
    return out


@dataclass(frozen=True, slots=True)
class Reading:
    """What a trusted journal holds: every change from ``since_ns`` to ``upto_ns`` (an instant before which
    every change is in ``changes``: the start of the pass it drives), and how to resolve its keys.

    ``marks`` (per source, the last record index read) are kept only by a backend whose readings start after
    such marks (Lustre changelogs); a reading of the fanotify journal starts at an instant instead: a record
    is in the reading of a pass whose last clean pass began at ``since_ns`` iff its ``time_ns >= since_ns``."""

    changes: list[Change]
    resolve: Callable[[str], bytes | None]
    upto_ns: int
    source: str
    marks: dict[str, int] = field(default_factory=dict)  # per source (an MDT): the last record index read
    #: What the passes planned from this reading learnt of the source (e.g. the ``lstat`` of a name): the same
    #: object for the readings of one process that find nothing recorded since (the source is as it was).
    memo: dict[Any, Any] = field(default_factory=dict)


class ChangeSource(Protocol):
    """A backend: reads the changes of a source since an instant, or says why it cannot be trusted."""

    def read(self, since_ns: int) -> Reading:
        """Every change since ``since_ns``; :class:`Untrusted` when completeness cannot be proven."""
        ...
