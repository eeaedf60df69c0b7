"""Replaying on the target the renames a change journal proves, before a journal-driven copy pass.

Without this, a directory renamed on the source is copied again in full under its new name (every file's
data) and its old name deleted. :func:`replay` renames the target's copy instead, when the journal proves
the pairing (:class:`cmover.core.changes.Rename`: one record naming both names of one object, or a
departure and an arrival of the same object identity) and the trees agree with it. The renamed entry is
still decided in full by every pass -- a directory arrived (``ENTERED``) is walked in full by the copy,
delete and dirtime passes, a file is a batch entry the copy pass compares -- so a difference inside is
fixed as for any other entry: the rename only spares the data copies of what is already right.

A rename ``old -> new`` is replayed only when all of these hold (otherwise the pass does what it did
before: the new name is copied, the old one deleted by the delete pass):

* the source has an entry at ``new`` now, a directory or a regular file, and none at ``old`` -- or one
  that arrived there since (``ENTERED``: the pass copies it, a directory walked in full);
* the target has an entry at ``old`` of that same type (a regular file with one name only: a file with
  several names is re-linked by the copy pass from the source's groups), reached from the target root
  one component at a time without following a symlink, and nothing at ``new``, whose parent exists as a
  directory reached the same way (``renameat2(RENAME_NOREPLACE)``: never over an entry). A parent missing
  on the target that arrived on the source since (a new directory, walked in full by the pass) is made
  first, empty and private (mode 0700), when its own parent exists on the target;
* ``may(rename)`` -- the caller's check that every later pass of another kind that starts from the
  journal reads the rename's record, and therefore walks ``new`` in full (the delete pass removes what
  the copy under ``old`` held that the source under ``new`` does not).

Chains of one object (``a -> b``, ``b -> c``) are replayed as one rename ``a -> c``; a chain back to its
start is nothing. Paths are those of the directories *now*, so a rename inside a directory that was
renamed too only matches the target once that directory's own rename is replayed: renames are tried in
rounds until one round replays nothing. A swap (``a -> t``, ``b -> a``, ``t -> b``) finds each new name
taken and falls back, as does a rename over an existing name.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from cmover.core import fsio
from cmover.core.errors import ConfinementError
from cmover.core.passes import PassSpec
from cmover.core.paths import check_rel, display, is_within
from cmover.journal.base import ENTERED, Rename, Touched

RENAME_NOREPLACE = 1


@dataclass(slots=True)
class Replayed:
    """What :func:`replay` did: the renames replayed on the target, and how many proven ones it did not."""

    done: list[tuple[bytes, bytes]] = field(default_factory=list)
    not_replayed: int = 0


def chains(renames: list[Rename]) -> list[Rename]:
    """The renames of each object composed: ``a -> b`` then ``b -> c`` is ``a -> c`` (the record of the last
    arrival kept); a composition back to its start is dropped. In the order of the records."""
    ordered = sorted(renames, key=lambda r: (r.time_ns, r.index))
    last: dict[str, int] = {}  # object -> position in out of its last rename (identities are unique in a reading)
    out: list[Rename] = []
    for r in ordered:
        at = last.get(r.obj)
        if at is not None and out[at].new == r.old:
            prev = out[at]
            out[at] = Rename(prev.old_dir, prev.old_name, r.new_dir, r.new_name, r.obj, r.index, r.source, r.time_ns)
            continue
        last[r.obj] = len(out)
        out.append(r)
    return [r for r in out if r.old != r.new]


def replay(spec: PassSpec, t: Touched, may: Callable[[Rename], bool]) -> Replayed:
    """Replay on the target of ``spec`` the renames of ``t`` (relative to the roots) that are proven and
    safe (see the module doc). Per-rename failures are renames not replayed, never errors."""
    out = Replayed()
    base = b"/" + spec.start if spec.start else b"/"

    def entered(rel_dir: bytes, name: bytes) -> bool:
        return bool(t.names.get(rel_dir, {}).get(name, 0) & ENTERED)

    pending = []
    for r in chains(t.renames):
        try:
            check_rel(r.old)
            check_rel(r.new)
        except ConfinementError:
            out.not_replayed += 1
            continue
        if any(b"/" in n or n in (b"", b".", b"..") for n in (r.old_name, r.new_name)):
            out.not_replayed += 1  # not one entry name (a damaged journal): never handed to renameat
            continue
        if r.old == spec.start or not is_within(b"/" + r.old, base) or not is_within(b"/" + r.new, base) \
                or not may(r):
            out.not_replayed += 1
            continue
        pending.append(r)
    while pending:
        waiting = []
        for r in pending:
            verdict = _try(spec, r, entered)
            if verdict is _DONE:
                out.done.append((r.old, r.new))
            elif verdict is _WAIT:
                waiting.append(r)
            else:
                out.not_replayed += 1
        if len(waiting) == len(pending):
            out.not_replayed += len(waiting)
            break
        pending = waiting
    return out


_DONE, _WAIT, _NO = object(), object(), object()


def _lstat(root: bytes, rel_dir: bytes, name: bytes, *, source: bool) -> os.stat_result | None:
    try:
        fd = fsio.open_dir(root, rel_dir, source=source)
    except OSError:
        return None
    try:
        return fsio.lstat_at(fd, name)
    except OSError:
        return None
    finally:
        os.close(fd)


def _try(spec: PassSpec, r: Rename, entered: Callable[[bytes, bytes], bool]) -> object:
    """Replay ``r`` now: _DONE; _WAIT when the target does not match yet (another rename may make it match);
    _NO when it never will in this pass."""
    if _lstat(spec.src_root, r.old_dir, r.old_name, source=True) is not None and not entered(r.old_dir, r.old_name):
        return _NO  # the old name holds what the pass would not copy in full: the target's copy stays
    now = _lstat(spec.src_root, r.new_dir, r.new_name, source=True)
    if now is None or not (stat.S_ISDIR(now.st_mode) or stat.S_ISREG(now.st_mode)):
        return _NO
    try:
        old_fd = fsio.open_dir(spec.dst_root, r.old_dir, source=False)
    except OSError:
        return _WAIT
    try:
        was = fsio.lstat_at(old_fd, r.old_name)
        if was is None:
            return _WAIT
        if stat.S_IFMT(was.st_mode) != stat.S_IFMT(now.st_mode) or stat.S_ISREG(was.st_mode) and was.st_nlink > 1:
            return _NO
        try:
            new_fd = fsio.open_dir(spec.dst_root, r.new_dir, source=False)
        except FileNotFoundError:
            if not _make_parent(spec, r.new_dir, entered):
                return _WAIT
            try:
                new_fd = fsio.open_dir(spec.dst_root, r.new_dir, source=False)
            except OSError:
                return _WAIT
        except OSError:
            return _WAIT
        try:
            rename_noreplace(old_fd, r.old_name, new_fd, r.new_name)
        except FileExistsError:
            return _WAIT
        except OSError:
            return _NO
        finally:
            os.close(new_fd)
    except OSError:
        return _NO
    finally:
        os.close(old_fd)
    return _DONE


def _make_parent(spec: PassSpec, rel: bytes, entered: Callable[[bytes, bytes], bool]) -> bool:
    """Make directory ``rel`` on the target, empty and private, when it arrived on the source since (the pass
    walks it in full and gives it its metadata) and its parent exists on the target; whether it was made."""
    if not rel:
        return False
    parent, _, name = rel.rpartition(b"/")
    st = _lstat(spec.src_root, parent, name, source=True)
    if st is None or not stat.S_ISDIR(st.st_mode) or not entered(parent, name):
        return False
    try:
        fd = fsio.open_dir(spec.dst_root, parent, source=False)
    except OSError:
        return False
    try:
        os.mkdir(name, 0o700, dir_fd=fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


_renameat2: Callable[..., int] | None = None


def rename_noreplace(old_fd: int, old: bytes, new_fd: int, new: bytes) -> None:
    """Rename ``old`` in directory ``old_fd`` to ``new`` in ``new_fd``, never over an existing entry
    (FileExistsError) and never following a symlink (rename acts on names). Where the filesystem has no
    ``RENAME_NOREPLACE`` (EINVAL), the absence of ``new`` is checked first and the rename is plain: the
    target tree is cmover's own, nothing else creates names in it meanwhile."""
    global _renameat2
    if _renameat2 is None:
        # The C library is already loaded in this process: its symbols, without looking for its file
        # (ctypes.util.find_library runs ldconfig, and importing it costs 5 ms of every command's start).
        lib = ctypes.CDLL(None, use_errno=True)
        fn = lib.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _renameat2 = fn
    if _renameat2(old_fd, old, new_fd, new, RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err), display(new))
    if fsio.lstat_at(new_fd, new) is not None:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), display(new))
    os.rename(old, new, src_dir_fd=old_fd, dst_dir_fd=new_fd)
