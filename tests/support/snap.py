"""Recording a tree and comparing two records: the one snapshot/diff of the tests.

:func:`snapshot` records every entry under a root with every category cmover copies: type, mode, uid,
gid, size, mtime and atime (ns), content digest, symlink target, device numbers, extended attributes,
POSIX ACLs, and, for comparisons rather than as values, the inode (hard-link partition, identity) and
the allocated blocks (holes). :func:`diff` describes every difference between two records, one line
each; :func:`compare_trees` snapshots two trees and diffs them. :data:`FIELDS` is the single place that
says what is recorded and when it is compared.

Two uses::

    assert compare_trees(src, dst, dir_times=True) == []          # a copy is exact
    before = snapshot(top, include_root=True)
    ...
    assert unchanged(before, snapshot(top, include_root=True)) == []   # nothing there was touched
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PathLike = str | bytes | os.PathLike
Snapshot = dict[bytes, dict[str, Any]]

_O_NOATIME = getattr(os, "O_NOATIME", 0)


def read_noatime(path: PathLike) -> bytes:
    """A file's content, read without following a symlink and without moving its atime where permitted."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | _O_NOATIME)
    except PermissionError:  # O_NOATIME is refused on files we neither own nor have CAP_FOWNER over
        fd = os.open(path, flags)
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "chr"
    if stat.S_ISBLK(mode):
        return "blk"
    return "other"


def _digest(path: bytes, st: os.stat_result) -> str:
    """blake2b hex digest of a regular file, read without following a symlink and without touching atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | _O_NOATIME)
    except PermissionError:
        # O_NOATIME is refused on files we neither own nor have CAP_FOWNER over.
        fd = os.open(path, flags)
    h = hashlib.blake2b()
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


ALL_KINDS = frozenset({"file", "dir", "symlink", "fifo", "socket", "chr", "blk", "other"})
NON_DIR_KINDS = ALL_KINDS - {"dir"}


_LUSTRE_XATTRS = {"trusted.lov", "trusted.lma", "trusted.lmv", "trusted.link", "trusted.fid", "trusted.som",
                  "trusted.hsm", "trusted.dmv", "trusted.pfid", "trusted.version"}


_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")


def _all_xattrs(path: bytes) -> dict[str, bytes]:
    """Every extended attribute but Lustre-internal ones, not following symlinks ({} when unsupported)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith("lustre.") or n in _LUSTRE_XATTRS:
            continue
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            pass
    return out


def _xattrs(path: bytes, st: os.stat_result) -> dict[str, bytes]:
    """The extended attributes (user.*, trusted.*, security.*), POSIX ACLs aside."""
    return {n: v for n, v in _all_xattrs(path).items() if n not in _ACL_XATTRS}


def _acls(path: bytes, st: os.stat_result) -> dict[str, bytes]:
    """The POSIX ACLs (access, and a directory's default), in their binary xattr form."""
    return {n: v for n, v in _all_xattrs(path).items() if n in _ACL_XATTRS}


@dataclass(frozen=True)
class Field:
    """One recorded attribute of an entry.

    extract(path, lstat_result) gives the value for entries whose type is in kinds; compare(kind, options)
    says whether diff checks it for that type under the given keyword options; show formats a
    value for a difference report.
    """

    name: str
    kinds: frozenset[str]
    extract: Callable[[bytes, os.stat_result], Any]
    compare: Callable[[str, Mapping[str, bool]], bool] = lambda kind, options: True
    show: Callable[[Any], str] = repr


# The single place that defines what snapshot records and diff checks: add a Field (and, if it
# must be optional, a keyword to diff) to cover another attribute.
FIELDS: tuple[Field, ...] = (
    Field("mode", ALL_KINDS, lambda p, st: st.st_mode, show=lambda v: oct(v)),
    Field("uid", ALL_KINDS, lambda p, st: st.st_uid),
    Field("gid", ALL_KINDS, lambda p, st: st.st_gid),
    Field("size", frozenset({"file"}), lambda p, st: st.st_size),
    Field("rdev", frozenset({"chr", "blk"}), lambda p, st: st.st_rdev),
    Field("target", frozenset({"symlink"}), lambda p, st: os.readlink(p)),
    Field(
        "mtime_ns",
        ALL_KINDS,
        lambda p, st: st.st_mtime_ns,
        # A directory's mtime changes whenever an entry is added in it, so it is only stable once a copy
        # has finished and set it last.
        compare=lambda kind, options: kind != "dir" or options["dir_times"],
    ),
    Field(
        "atime_ns",
        ALL_KINDS,
        lambda p, st: st.st_atime_ns,
        # Listing a directory or reading a symlink (readlink, which has no O_NOATIME) updates its atime, so
        # only the atimes of other entries can survive a copy and be compared.
        compare=lambda kind, options: kind not in ("dir", "symlink") and options["atimes"],
    ),
    Field("xattrs", ALL_KINDS, _xattrs, compare=lambda kind, options: options["xattrs"]),
    Field("acls", ALL_KINDS, _acls, compare=lambda kind, options: options["xattrs"]),
    # The inode: an identity (compared with inodes=True: "the very same entry, not a replacement"); for
    # files also the hard-link partition diff checks. Allocated blocks: the holes diff checks.
    Field("inode", ALL_KINDS, lambda p, st: (st.st_dev, st.st_ino), compare=lambda k, o: o["inodes"]),
    Field("blocks", frozenset({"file"}), lambda p, st: st.st_blocks, compare=lambda k, o: False),
    # Read last: stat values above come from the lstat taken before the content is read.
    Field("digest", frozenset({"file"}), _digest),
)


def _link_groups(snap: Mapping[bytes, Mapping[str, Any]]) -> dict[bytes, frozenset[bytes]]:
    """For every regular file, the set of names that share its inode."""
    by_inode: dict[Any, set[bytes]] = {}
    for rel, rec in snap.items():
        if rec["type"] == "file":
            by_inode.setdefault(rec["inode"], set()).add(rel)
    return {rel: frozenset(names) for names in by_inode.values() for rel in names}


def _record(path: bytes, st: os.stat_result) -> dict[str, Any]:
    kind = _kind(st.st_mode)
    record: dict[str, Any] = {"type": kind}
    for f in FIELDS:
        if kind in f.kinds:
            record[f.name] = f.extract(path, st)
    return record


def snapshot(root: PathLike, *, include_root: bool = False, skip: tuple[PathLike, ...] = ()) -> Snapshot:
    """Record every entry under ``root`` without following symlinks (the root itself too, as ``b""``, with
    ``include_root``); an entry at one of the paths ``skip`` (paths as given, not relative) is left out
    with everything below it.

    Keys are paths relative to root as bytes (``b"a/b"``). Each value holds ``"type"`` ("file", "dir",
    "symlink", "fifo", "socket", "chr", "blk" or "other") and every :data:`FIELDS` entry that applies to
    that type: mode (full st_mode), uid, gid, mtime_ns, atime_ns, xattrs, acls, inode; size, blocks and a
    blake2b ``digest`` for files, ``target`` (bytes) for symlinks, ``rdev`` for devices. Times are those
    lstat saw before anything in the entry was read; contents are read with O_NOATIME where permitted.
    """
    root_b = os.fsencode(root)
    skips = {os.fsencode(p) for p in skip}
    result: Snapshot = {}
    if include_root:
        result[b""] = _record(root_b, os.lstat(root_b))
    pending: list[tuple[bytes, bytes]] = [(root_b, b"")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as it:
            for entry in it:
                if entry.path in skips:
                    continue
                rel = prefix + entry.name
                record = _record(entry.path, entry.stat(follow_symlinks=False))
                result[rel] = record
                if record["type"] == "dir":
                    pending.append((entry.path, rel + b"/"))
    return result


def diff(
    src: Mapping[bytes, Mapping[str, Any]],
    dst: Mapping[bytes, Mapping[str, Any]],
    *,
    dir_times: bool = False,
    atimes: bool = False,
    xattrs: bool = True,
    inodes: bool = False,
) -> list[str]:
    """Every difference between two :func:`snapshot` records, one line each, sorted by path ([]: the same).

    Reports entries missing from ``dst``, extra in ``dst``, a different type, and for entries of the same
    type each differing field: mode, owner, size, content digest, symlink target, device numbers, file and
    symlink mtimes, xattrs and ACLs (``xattrs=False``: neither), a file whose hard-link group (the names
    sharing its inode) differs, and a file that allocates clearly more blocks than its source (holes not
    kept). Directory mtimes only with ``dir_times``; atimes only with ``atimes``, and never those of
    directories or symlinks (listing or readlink moves them); inode identity only with ``inodes``.
    """
    options = {"dir_times": dir_times, "atimes": atimes, "xattrs": xattrs, "inodes": inodes}
    problems: list[str] = []
    src_groups, dst_groups = _link_groups(src), _link_groups(dst)
    for rel in sorted(src.keys() | dst.keys()):
        if rel not in dst:
            problems.append(f"{rel!r}: missing on target ({src[rel]['type']})")
            continue
        if rel not in src:
            problems.append(f"{rel!r}: extra on target ({dst[rel]['type']})")
            continue
        a = src[rel]
        b = dst[rel]
        kind = a["type"]
        if kind != b["type"]:
            problems.append(f"{rel!r}: type differs: source={kind} target={b['type']}")
            continue
        for f in FIELDS:
            if kind not in f.kinds or not f.compare(kind, options):
                continue
            va = a.get(f.name)
            vb = b.get(f.name)
            if va != vb:
                problems.append(f"{rel!r}: {f.name} differs: source={f.show(va)} target={f.show(vb)}")
        if kind == "file":
            if src_groups.get(rel) != dst_groups.get(rel):
                problems.append(f"{rel!r}: hard-link group differs: source={sorted(src_groups.get(rel, ()))} "
                                f"target={sorted(dst_groups.get(rel, ()))}")
            # Holes kept: the copy may not allocate much more than the source (64 blocks of slack).
            if b.get("blocks", 0) > a.get("blocks", 0) + 64:
                problems.append(f"{rel!r}: allocation differs (holes not kept): source={a.get('blocks')} "
                                f"target={b.get('blocks')} blocks")
    return problems


def compare_trees(src: PathLike, dst: PathLike, *, dir_times: bool = False, atimes: bool = False,
                  xattrs: bool = True) -> list[str]:
    """:func:`diff` of the trees under ``src`` and ``dst`` (the roots themselves are not compared)."""
    return diff(snapshot(src), snapshot(dst), dir_times=dir_times, atimes=atimes, xattrs=xattrs)


def unchanged(before: Snapshot, after: Snapshot) -> list[str]:
    """:func:`diff` for "nothing here was touched": every field, directory mtimes and inode identity
    included (an entry created and removed again shows in its directory's mtime); [] when untouched."""
    return diff(before, after, dir_times=True, inodes=True)


def entries(root: PathLike) -> set[bytes]:
    """The relative paths (bytes) of every entry under ``root``, the root excluded."""
    return set(snapshot(root))
