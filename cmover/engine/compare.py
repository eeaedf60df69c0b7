"""The copy decision: what to do with one source entry given its target counterpart. Pure.

:func:`decide_copy` compares type, size, mtime (ns), uid, gid and permission bits. It is the only
place that says whether data must move; it never looks at the disk. With identity maps the source
record it is given is the mapped one (:meth:`cmover.core.idmap.IdMap.record`): a target owned by the
mapped owner is identical. Owner, group and set-id bits are
compared as far as the copying process can set them (:class:`~cmover.core.privileges.Privileges`): a regular
user's copy of another user's file is identical when everything it can set is.
"""

from __future__ import annotations

import enum
import os
import stat

from cmover.core.frozen import NamedTuple
from cmover.core.idmap import IdMap
from cmover.core.privileges import ALL, Privileges
from cmover.core.record import Kind, Record


class Action(enum.Enum):
    SKIP = "skip"  # target is identical
    CREATE = "create"  # nothing at the target name
    REPLACE = "replace"  # target differs in data (or is another non-directory type): build anew, rename over
    UPDATE_META = "meta"  # same data, different owner or mode
    CLEAR_DIR = "clear-dir"  # a directory stands where the source now has a non-directory
    RETYPE_TO_DIR = "retype-to-dir"  # a non-directory stands where the source now has a directory


class Decision(NamedTuple):
    action: Action
    reason: str


def decide_copy(src: Record, dst: Record | None, can: Privileges = ALL) -> Decision:
    """Decide how to bring the target entry in line with the source entry, for a process that may set ``can``.

    Regular files and symlinks differ in data when size or mtime differ (a symlink's size is the
    length of its target; its mtime is set by cmover, so a changed link shows a new mtime). Special
    files differ in data when their device number differs. Directories never need data; their times
    belong to the dirtime pass and are not compared here.
    """
    if dst is None:
        return Decision(Action.CREATE, "missing on target")
    if src.kind is not dst.kind:
        if dst.kind is Kind.DIR:
            return Decision(Action.CLEAR_DIR, f"target is a directory, source a {src.kind.value}")
        if src.kind is Kind.DIR:
            return Decision(Action.RETYPE_TO_DIR, f"target is a {dst.kind.value}, source a directory")
        return Decision(Action.REPLACE, f"type changed from {dst.kind.value} to {src.kind.value}")
    if src.kind in (Kind.REG, Kind.LNK):
        if src.size != dst.size:
            return Decision(Action.REPLACE, "size differs")
        if src.mtime_ns != dst.mtime_ns:
            return Decision(Action.REPLACE, "mtime differs")
    elif src.kind in (Kind.CHR, Kind.BLK) and src.rdev != dst.rdev:
        return Decision(Action.REPLACE, "device number differs")
    elif src.kind is not Kind.DIR and src.mtime_ns != dst.mtime_ns:
        return Decision(Action.UPDATE_META, "mtime differs")  # fifo, device: nothing to copy but times
    uid, gid = can.owner(src.uid, src.gid)
    if (uid >= 0 and uid != dst.uid) or (gid >= 0 and gid != dst.gid):
        return Decision(Action.UPDATE_META, "owner differs")
    # Linux has no lchmod: a symlink's mode is always 0777 and never compared.
    if src.kind is not Kind.LNK and can.perm(src.perm, src.uid, src.gid) != dst.perm:
        return Decision(Action.UPDATE_META, "mode differs")
    return Decision(Action.SKIP, "identical")


def unchanged(src: os.stat_result, dst: os.stat_result, can: Privileges = ALL, idmap: IdMap | None = None) -> bool:
    """True when a regular file or symlink is identical on both sides, read straight from ``lstat``.

    The no-change pass is what the final downtime costs, so this check runs before any
    :class:`~cmover.core.record.Record` is built. It is exactly
    ``decide_copy(idmap.record(Record.from_stat(src)), ..., can).action is Action.SKIP`` for regular files and
    symlinks (the tests pin the equivalence); anything else returns False and takes the full decision.
    ``idmap`` (None: no identity maps) gives the owner and group the source's copy should have.
    """
    mode = src.st_mode
    if idmap is None:
        src_uid, src_gid = src.st_uid, src.st_gid
    else:
        src_uid, src_gid = idmap.uid(src.st_uid), idmap.gid(src.st_gid)
    if can.chown and can.fsetid:  # root: plain equality, the fastest test
        return (
            mode == dst.st_mode
            and (stat.S_ISREG(mode) or stat.S_ISLNK(mode))
            and src.st_size == dst.st_size
            and src.st_mtime_ns == dst.st_mtime_ns
            and src_uid == dst.st_uid
            and src_gid == dst.st_gid
        )
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) or stat.S_IFMT(mode) != stat.S_IFMT(dst.st_mode) \
            or src.st_size != dst.st_size or src.st_mtime_ns != dst.st_mtime_ns:
        return False
    uid, gid = can.owner(src_uid, src_gid)
    if (uid >= 0 and uid != dst.st_uid) or (gid >= 0 and gid != dst.st_gid):
        return False
    return stat.S_ISLNK(mode) or can.perm(stat.S_IMODE(mode), src_uid, src_gid) == stat.S_IMODE(dst.st_mode)
