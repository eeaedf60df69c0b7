"""cmover.engine.copier.Copier.copy_entry on real files: one entry at a time, every action of the decision table.

Runs as root (as CI does): ownership changes and device nodes need it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.tree import File, Link, build

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.errors import SourceChangedError
from cmover.engine import metadata
from cmover.engine.copier import Copier
from cmover.engine.filters import Filter
from cmover.lustre.base import PosixFs

T_ATIME = 1_500_000_000_123_456_789
T_MTIME = 1_600_000_000_987_654_321


@pytest.fixture
def env(roots):
    src, dst = roots
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    tally: Counter = Counter()
    ns = SimpleNamespace(src=src, dst=dst, tally=tally, filt=Filter(frozenset(), 0, 0))

    def copy(name: str, filt: Filter | None = None) -> None:
        st = os.lstat(os.path.join(src, os.fsencode(name)))
        Copier(PosixFs(), filt or ns.filt, tally).copy_entry(sfd, dfd, name, st)

    ns.copy = copy
    ns.s = lambda name: os.path.join(src, os.fsencode(name))
    ns.d = lambda name: os.path.join(dst, os.fsencode(name))
    yield ns
    os.close(sfd)
    os.close(dfd)


T = {"atime_ns": T_ATIME, "mtime_ns": T_MTIME}  # the times of every source file unless a test gives others


def no_temp_files(d: bytes) -> bool:
    return not [n for n in os.listdir(d) if n.startswith(b".cmover.")]


def test_regular_file_created(env):
    data = os.urandom(100_000)
    build(env.src, {"f": File(data, mode=0o4755, uid=1234, gid=5678, **T)})
    env.copy("f")
    st = os.lstat(env.d("f"))
    with open(env.d("f"), "rb") as f:
        assert f.read() == data
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4755  # setuid survives the chown
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns) == (T_ATIME, T_MTIME)
    assert env.tally[C.COPIED] == 1 and env.tally[C.BYTES] == len(data)


def test_create_mode_grants_nobody_more_while_the_data_is_written():
    """Every mode: a file created with create_mode(perm) gives no one, until its final chown and chmod, more than
    the finished copy gives them, and nobody but its creator may write it. Until then anyone (the final owner and
    the final group's members among them) may be a member of the group of the moment (the creator's, or a
    set-group-ID directory's) or a named entry of an ACL inherited from the directory's default ACL, limited by
    the group bits: at most group | other bits. At the end the final owner has the owner bits, a member of the
    final group the group bits, anyone else the other bits. A write before the final mtime would be hidden by
    it: no one else writes until then. And it is the file's own mode whenever that is safe: the chmod is saved
    for every such file."""
    own = 0
    for perm in range(0o10000):
        made = metadata.create_mode(perm)
        assert made in (perm, metadata.PRIVATE)
        during = (made >> 3 | made) & 0o7
        after = {"owner": perm >> 6 & 0o7, "group": perm >> 3 & 0o7, "other": perm & 0o7}
        safe = made <= 0o777 and not during & 0o2 and all(during & ~bits == 0 for bits in after.values())
        assert safe, oct(perm)
        could = (perm >> 3 | perm) & 0o7
        if perm <= 0o777 and not could & 0o2 and all(could & ~bits == 0 for bits in after.values()):
            assert made == perm, oct(perm)  # safe as it is: created with it
            own += 1
    assert own == 18  # r and x each in none, all three or the owner's alone (3 x 3); the owner's w either way
    assert [metadata.create_mode(m) for m in (0o644, 0o755, 0o600, 0o700, 0o444, 0o555, 0o711)] == \
        [0o644, 0o755, 0o600, 0o700, 0o444, 0o555, 0o711]
    assert {metadata.create_mode(m) for m in (0o640, 0o664, 0o666, 0o777, 0o750, 0o604, 0o4755, 0o2755, 0o1777,
                                              0o044)} == {0o600}


@pytest.mark.parametrize("mode,chmods", [(0o644, 0), (0o755, 0), (0o640, 1), (0o666, 1), (0o4755, 1)])
def test_new_file_is_chmodded_only_when_created_private_or_set_id(env, monkeypatch, mode, chmods):
    """A new file whose mode create_mode allows is created with it, chowned, and never chmodded (on Lustre, one
    metadata round trip less per file); a file created 0600 (group bits not the other bits, or writable by
    others), or one whose set-id bits the chown cleared, is."""
    build(env.src, {"f": File(b"data", mode=mode, uid=1234, gid=5678, **T)})
    real, calls = os.fchmod, []
    monkeypatch.setattr(os, "fchmod", lambda fd, m: (calls.append(m), real(fd, m)))
    env.copy("f")
    st = os.lstat(env.d("f"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 1234, 5678)
    assert calls == [mode] * chmods


@pytest.mark.parametrize("mode", [0o2750, 0o1777, 0o6711, 0o000])
def test_special_mode_bits_kept(env, mode):
    build(env.src, {"f": File(b"hello\n", mode=mode, uid=42, gid=43, **T)})
    env.copy("f")
    assert stat.S_IMODE(os.lstat(env.d("f")).st_mode) == mode


def test_empty_file(env):
    build(env.src, {"e": File(b"", **T)})
    env.copy("e")
    st = os.lstat(env.d("e"))
    assert st.st_size == 0 and st.st_mtime_ns == T_MTIME and env.tally[C.COPIED] == 1


def test_source_atime_not_moved(env):
    # atime before mtime: a plain read would update it under relatime; O_NOATIME must keep it.
    build(env.src, {"f": File(b"x" * 10, atime_ns=1_000_000_007, mtime_ns=T_MTIME)})
    env.copy("f")
    assert os.lstat(env.s("f")).st_atime_ns == 1_000_000_007
    assert os.lstat(env.d("f")).st_atime_ns == 1_000_000_007


def test_symlink_created(env):
    target = b"../caf\xe9/\nweird target "
    os.symlink(target, env.s("l"))
    os.chown(env.s("l"), 1234, 5678, follow_symlinks=False)
    os.utime(env.s("l"), ns=(T_ATIME, T_MTIME), follow_symlinks=False)
    env.copy("l")
    st = os.lstat(env.d("l"))
    assert stat.S_ISLNK(st.st_mode)
    assert os.readlink(env.d("l")) == target
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == T_MTIME
    assert env.tally[C.COPIED] == 1


def test_symlink_to_outside_not_followed(env, tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    os.chmod(outside, 0o600)
    os.symlink(os.fsencode(outside), env.s("l"))
    os.chown(env.s("l"), 999, 999, follow_symlinks=False)
    env.copy("l")
    st = os.stat(outside)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert os.lstat(env.d("l")).st_uid == 999


def test_fifo_created(env):
    os.mkfifo(env.s("p"), 0o600)
    os.chown(env.s("p"), 77, 88)
    os.chmod(env.s("p"), 0o640)
    os.utime(env.s("p"), ns=(T_ATIME, T_MTIME))
    env.copy("p")
    st = os.lstat(env.d("p"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (77, 88, T_MTIME)


@pytest.mark.parametrize("fmt, dev", [(stat.S_IFCHR, os.makedev(1, 3)), (stat.S_IFBLK, os.makedev(7, 200))])
def test_device_node_created(env, fmt, dev):
    os.mknod(env.s("n"), fmt | 0o600, dev)
    os.chown(env.s("n"), 5, 6)
    os.chmod(env.s("n"), 0o620)
    os.utime(env.s("n"), ns=(T_ATIME, T_MTIME))
    env.copy("n")
    st = os.lstat(env.d("n"))
    assert stat.S_IFMT(st.st_mode) == fmt and stat.S_IMODE(st.st_mode) == 0o620
    assert (st.st_rdev, st.st_uid, st.st_gid, st.st_mtime_ns) == (dev, 5, 6, T_MTIME)


def test_device_number_change_replaces(env):
    os.mknod(env.s("n"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(env.d("n"), stat.S_IFCHR | 0o600, os.makedev(1, 5))
    env.copy("n")
    assert os.lstat(env.d("n")).st_rdev == os.makedev(1, 3)


def test_socket_recreated_with_its_metadata(env, monkeypatch):
    """A socket is made on the target with mknod(S_IFSOCK), as rsync -D does: mode, owner, times, xattrs."""
    monkeypatch.chdir(env.src)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("sock")
        os.chmod("sock", 0o751)
        os.chown("sock", 5, 6)
        os.setxattr("sock", "trusted.cmover", b"sock")
        os.utime("sock", ns=(T_ATIME, T_MTIME), follow_symlinks=False)
        env.copy("sock")
        st = os.lstat(env.d("sock"))
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o751
        assert (st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns) == (5, 6, T_MTIME, T_ATIME)
        assert os.getxattr(env.d("sock"), "trusted.cmover", follow_symlinks=False) == b"sock"
        assert env.tally == Counter({C.COPIED: 1})
        env.tally.clear()
        env.copy("sock")  # identical now
        assert env.tally == Counter({C.SKIPPED: 1})
        os.utime("sock", ns=(T_ATIME, T_MTIME + 1), follow_symlinks=False)
        env.tally.clear()
        env.copy("sock")
        assert env.tally == Counter({C.META: 1}) and os.lstat(env.d("sock")).st_mtime_ns == T_MTIME + 1
        assert os.lstat(env.d("sock")).st_ino == st.st_ino  # times only: the node is kept


def test_identical_skipped_untouched(env):
    build(env.src, {"f": File(b"hello\n", mode=0o4755, uid=3, gid=4, **T)})
    env.copy("f")
    before = os.lstat(env.d("f"))
    env.copy("f")
    after = os.lstat(env.d("f"))
    assert env.tally[C.SKIPPED] == 1 and env.tally[C.COPIED] == 1
    assert (after.st_ino, after.st_ctime_ns, after.st_mtime_ns) == (before.st_ino, before.st_ctime_ns,
                                                                     before.st_mtime_ns)


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_changed_file_replaced_by_rename(env, change):
    build(env.src, {"f": File(b"old data", **T)})
    env.copy("f")
    os.link(env.d("f"), env.d("other-link"))
    old_ino = os.lstat(env.d("f")).st_ino
    if change == "size":
        build(env.src, {"f": File(b"new data, longer", **T)})
    else:
        build(env.src, {"f": File(b"NEW DATA", atime_ns=T_ATIME, mtime_ns=T_MTIME + 1)})
    env.copy("f")
    st = os.lstat(env.d("f"))
    assert st.st_ino != old_ino
    with open(env.d("f"), "rb") as f, open(env.s("f"), "rb") as g:
        assert f.read() == g.read()
    with open(env.d("other-link"), "rb") as f:
        assert f.read() == b"old data"  # never written through
    assert st.st_mtime_ns == os.lstat(env.s("f")).st_mtime_ns
    assert no_temp_files(env.dst)
    assert env.tally[C.COPIED] == 2


@pytest.mark.parametrize("change", ["owner", "mode", "setuid-owner"])
def test_metadata_only_change_in_place(env, change):
    build(env.src, {"f": File(b"data", mode=0o644, uid=10, gid=10, **T)})
    env.copy("f")
    ino = os.lstat(env.d("f")).st_ino
    if change == "owner":
        os.chown(env.s("f"), 20, 21)
    elif change == "mode":
        os.chmod(env.s("f"), 0o600)
    else:  # chown of the target would clear set-id bits: they must be set again afterwards
        os.chown(env.s("f"), 30, 31)
        os.chmod(env.s("f"), 0o6755)
        os.chmod(env.d("f"), 0o6755)
    env.copy("f")
    s, d = os.lstat(env.s("f")), os.lstat(env.d("f"))
    assert d.st_ino == ino
    assert (d.st_mode, d.st_uid, d.st_gid) == (s.st_mode, s.st_uid, s.st_gid)
    assert (d.st_atime_ns, d.st_mtime_ns) == (T_ATIME, T_MTIME)
    assert env.tally[C.META] == 1


def test_symlink_owner_change_in_place(env):
    os.symlink(b"t", env.s("l"))
    env.copy("l")
    ino = os.lstat(env.d("l")).st_ino
    os.chown(env.s("l"), 55, 66, follow_symlinks=False)
    env.copy("l")
    d = os.lstat(env.d("l"))
    assert (d.st_ino, d.st_uid, d.st_gid) == (ino, 55, 66) and env.tally[C.META] == 1


def test_fifo_mtime_change_updates_meta(env):
    os.mkfifo(env.s("p"), 0o600)
    env.copy("p")
    ino = os.lstat(env.d("p")).st_ino
    os.utime(env.s("p"), ns=(T_ATIME, T_MTIME))
    env.copy("p")
    d = os.lstat(env.d("p"))
    assert (d.st_ino, d.st_mtime_ns) == (ino, T_MTIME) and env.tally[C.META] == 1


def test_directory_on_target_replaced_by_file(env):
    os.makedirs(env.d("x/deep/er"))
    build(env.dst, {"x/deep/er/f": File(b"hello\n", **T)})
    os.symlink(b"/", env.d("x/root-link"))
    build(env.src, {"x": File(b"now a file", **T)})
    env.copy("x")
    assert stat.S_ISREG(os.lstat(env.d("x")).st_mode)
    with open(env.d("x"), "rb") as f:
        assert f.read() == b"now a file"
    assert os.path.isdir("/etc")  # the symlink inside the removed tree was not followed


def test_symlink_on_target_replaced_not_followed(env, tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    os.symlink(os.fsencode(outside), env.d("f"))
    build(env.src, {"f": File(b"source data", **T)})
    env.copy("f")
    assert outside.read_bytes() == b"precious"
    assert stat.S_ISREG(os.lstat(env.d("f")).st_mode)
    with open(env.d("f"), "rb") as f:
        assert f.read() == b"source data"


def test_age_filter(env):
    build(env.src, {"old": File(b"hello\n", atime_ns=1_000, mtime_ns=T_MTIME)})
    env.copy("old", Filter(frozenset(), oldest_atime_ns=2_000, newest_mtime_ns=0))
    build(env.src, {"new": File(b"hello\n", atime_ns=T_ATIME, mtime_ns=T_MTIME)})
    env.copy("new", Filter(frozenset(), oldest_atime_ns=0, newest_mtime_ns=T_MTIME - 1))
    assert not os.path.lexists(env.d("old")) and not os.path.lexists(env.d("new"))
    assert env.tally == Counter({C.FILTERED: 2})


def test_size_filter_only_regular_files_and_the_target_left_as_it_is(env):
    window = Filter(frozenset(), 0, 0, min_size=4, max_size=8)
    for name, size in (("small", 3), ("low", 4), ("high", 8), ("large", 9), ("empty", 0)):
        build(env.src, {name: File(b"x" * size, **T)})
    build(env.dst, {"large": File(b"older", **T)})  # an older version on the target: neither replaced nor removed
    os.mkdir(env.d("small"))  # a directory where the source holds a small file: left too
    os.symlink("large", env.s("link"))
    os.mkfifo(env.s("fifo"))
    for name in ("small", "low", "high", "large", "empty", "link", "fifo"):
        env.copy(name, window)
    assert env.tally == Counter({C.SIZE_FILTERED: 3, C.COPIED: 4, C.BYTES: 4 + 8})
    assert sorted(os.listdir(env.dst)) == [b"fifo", b"high", b"large", b"link", b"low", b"small"]
    assert Path(env.d("large").decode()).read_bytes() == b"older" and stat.S_ISDIR(os.lstat(env.d("small")).st_mode)


def test_source_changed_during_copy_not_committed(env, monkeypatch):
    build(env.src, {"f": File(b"a" * 1000, **T)})
    real = fsio.copy_data

    def copy_then_grow(src_fd, dst_fd, size, **kw):
        n = real(src_fd, dst_fd, size, **kw)
        with open(env.s("f"), "ab") as f:
            f.write(b"more")
        return n

    monkeypatch.setattr(fsio, "copy_data", copy_then_grow)
    with pytest.raises(SourceChangedError):
        env.copy("f")
    # The target never got the source's mtime, so the next compare recopies it.
    assert os.lstat(env.d("f")).st_mtime_ns != T_MTIME
    assert env.tally[C.COPIED] == 0
    monkeypatch.setattr(fsio, "copy_data", real)
    env.copy("f")
    with open(env.d("f"), "rb") as f:
        assert f.read() == b"a" * 1000 + b"more"


def test_source_replaced_after_listing(env):
    build(env.src, {"f": File(b"first", **T)})
    st = os.lstat(env.s("f"))
    os.link(env.s("f"), env.s("keep"))  # keeps the old inode alive, so the new file gets another number
    build(env.src, {"f.new": File(b"second", **T)})
    os.rename(env.s("f.new"), env.s("f"))
    sfd = os.open(env.src, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(env.dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(SourceChangedError):
            Copier(PosixFs(), env.filt, env.tally).copy_entry(sfd, dfd, "f", st)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert not os.path.lexists(env.d("f"))


def test_failed_replace_keeps_old_version(env, monkeypatch):
    build(env.src, {"f": File(b"v1", **T)})
    env.copy("f")
    old = os.lstat(env.d("f"))
    build(env.src, {"f": File(b"version 2", **T)})

    def no_space(*_a, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "copy_data", no_space)
    with pytest.raises(OSError) as ei:
        env.copy("f")
    assert ei.value.errno == errno.ENOSPC
    now = os.lstat(env.d("f"))
    assert (now.st_ino, now.st_mtime_ns) == (old.st_ino, old.st_mtime_ns)
    with open(env.d("f"), "rb") as f:
        assert f.read() == b"v1"
    assert no_temp_files(env.dst)


def test_failed_create_never_carries_source_mtime(env, monkeypatch):
    """A new file is created under its own name (no rename): a copy that fails half-way leaves what it wrote
    there, but never with the source's mtime, so the next pass sees it differs and copies it whole."""
    build(env.src, {"f": File(b"x" * 100, **T)})

    def partial(src_fd, dst_fd, size, **kw):
        os.write(dst_fd, b"x" * 10)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsio, "copy_data", partial)
    with pytest.raises(OSError) as ei:
        env.copy("f")
    assert ei.value.errno == errno.EIO
    st = os.lstat(env.d("f"))
    assert st.st_size == 10 and st.st_mtime_ns != T_MTIME
    assert env.tally[C.COPIED] == 0 and no_temp_files(env.dst)
    monkeypatch.undo()
    env.copy("f")
    st = os.lstat(env.d("f"))
    with open(env.d("f"), "rb") as f:
        assert f.read() == b"x" * 100
    assert (st.st_size, st.st_mtime_ns) == (100, T_MTIME) and env.tally[C.COPIED] == 1


def test_create_race_falls_back_to_replace(env, monkeypatch, tmp_path):
    # The target name appears between the lstat and the create (another delivery, or a planted symlink):
    # the exclusive create fails and the entry is rebuilt under a temporary name, never through the link.
    outside = tmp_path / "outside"
    os.symlink(os.fsencode(outside), env.d("f"))
    build(env.src, {"f": File(b"payload", **T)})
    monkeypatch.setattr(fsio, "lstat_at", lambda dir_fd, name: None)
    env.copy("f")
    assert not outside.exists()
    assert stat.S_ISREG(os.lstat(env.d("f")).st_mode)
    with open(env.d("f"), "rb") as f:
        assert f.read() == b"payload"
    assert no_temp_files(env.dst)


def test_posixfs_contract(env, tmp_path):
    fs = PosixFs()
    dfd = os.open(env.dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = fs.create_file(dfd, "new", dfd)
        os.close(fd)
        assert stat.S_IMODE(os.lstat(env.d("new")).st_mode) & 0o077 == 0
        with pytest.raises(FileExistsError):
            fs.create_file(dfd, "new", dfd)
        os.symlink(os.fsencode(tmp_path / "outside"), env.d("link"))
        with pytest.raises(FileExistsError):
            fs.create_file(dfd, "link", dfd)
        assert not (tmp_path / "outside").exists()
        fs.mkdir(dfd, "d", None)
        assert stat.S_IMODE(os.lstat(env.d("d")).st_mode) & 0o077 == 0
        with pytest.raises(FileExistsError):
            fs.mkdir(dfd, "d", -1)
    finally:
        os.close(dfd)


# -- fidelity (design §5) --------------------------------------------------------------------------------

def test_sparse_holes_kept(env):
    with open(env.s("sparse"), "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"x" * 4096)
    env.copy("sparse")
    src_blocks = os.lstat(env.s("sparse")).st_blocks
    assert os.lstat(env.d("sparse")).st_size == 8 << 20
    assert os.lstat(env.d("sparse")).st_blocks <= src_blocks + 64


def test_xattrs_copied(env):
    build(env.src, {"f": File(b"hello\n", **T)})
    os.setxattr(env.s("f"), b"user.cmover", b"\x00value\xff")
    env.copy("f")
    assert os.getxattr(env.d("f"), b"user.cmover") == b"\x00value\xff"


# -- the no-change path (Copier.try_skip) ----------------------------------------------------------------

def test_try_skip_skips_only_what_copy_entry_would_skip_and_never_looks_twice(env, monkeypatch):
    """try_skip skips (and counts) an entry whose target lstat matches and whose ctimes the clean-pass proof
    covers; otherwise it hands copy_entry what it found (None for no target), and copy_entry then makes no
    second lstat of the target; with no proof, a hard link or a filter it does not look at all."""
    from cmover.core.cleanpass import Proof
    from cmover.engine.copier import Seen

    build(env.src, {"same": File(b"x", **T), "xattr": File(b"y", **T), "new": File(b"z", **T),
                    "linked": File(b"l", **T)})
    os.link(env.s("linked"), env.s("linked2"))
    for name in ("same", "xattr", "new", "linked"):
        env.copy(name)
    os.unlink(env.d("new"))
    os.setxattr(env.s("xattr"), b"user.changed", b"1")  # moves the source ctime past the proof below
    now = os.lstat(env.s("xattr")).st_ctime_ns
    sfd = os.open(env.src, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(env.dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tally: Counter = Counter()
        copier = Copier(PosixFs(), env.filt, tally, proof=Proof(now, now + 10**12))
        st = {n: os.lstat(env.s(n)) for n in ("same", "xattr", "new", "linked")}
        assert copier.try_skip(dfd, "same", st["same"]) is Seen.SKIPPED and tally[C.SKIPPED] == 1
        seen = {n: copier.try_skip(dfd, n, st[n]) for n in ("xattr", "new", "linked")}
        assert isinstance(seen["xattr"], os.stat_result) and seen["new"] is None and seen["linked"] is Seen.UNSEEN
        assert Copier(PosixFs(), env.filt, tally).try_skip(dfd, "same", st["same"]) is Seen.UNSEEN  # no proof
        looked: list[str] = []
        monkeypatch.setattr(fsio, "lstat_at", lambda fd, name: looked.append(name))
        copier.copy_entry(sfd, dfd, "xattr", st["xattr"], b"xattr", seen["xattr"])
        copier.copy_entry(sfd, dfd, "new", st["new"], b"new", seen["new"])
        assert looked == [] and tally[C.META] == 1 and tally[C.COPIED] == 1 and tally[C.SKIPPED] == 1
    finally:
        os.close(sfd)
        os.close(dfd)
    assert os.getxattr(env.d("xattr"), b"user.changed") == b"1" and os.path.exists(env.d("new"))


def test_a_retried_entry_looks_at_its_target_again(make_spec, monkeypatch):
    """The guard retries an entry after a transient errno; the retry decides from a fresh target lstat, not
    from the one the no-change path handed to the first attempt (which may have changed the target)."""
    from cmover.core.errors import TRANSIENT_ERRNOS
    from cmover.engine import copier as copiermod
    from cmover.engine import jobs

    spec = make_spec()
    src, dst = spec.src_root, spec.dst_root
    build(src, {"f": File(b"data", **T)})
    build(dst, {"other": File(b"x")})  # a target root that holds something: its names are looked up
    monkeypatch.setattr(jobs, "TRANSIENT_PAUSES", (0.0,))
    calls: list[object] = []
    real = copiermod.Copier.copy_entry

    def flaky(self, src_dir_fd, dst_dir_fd, name, st, rel=None, dst_st=copiermod.Seen.UNSEEN):
        calls.append(dst_st)
        if len(calls) == 1:
            raise OSError(next(iter(TRANSIENT_ERRNOS)), "transient")
        return real(self, src_dir_fd, dst_dir_fd, name, st, rel, dst_st)

    monkeypatch.setattr(copiermod.Copier, "copy_entry", flaky)
    # As the no-change path finds it under a proof: no target yet (the first attempt creates it).
    monkeypatch.setattr(copiermod.Copier, "try_skip", lambda self, dst_dir_fd, name, st: None)
    from cmover.engine.copypass import CopyPass

    tally: Counter = Counter()
    CopyPass(spec, PosixFs(), tally, lambda f: pytest.fail(str(f)), lambda job: None).run_dir(b"")
    assert calls == [None, copiermod.Seen.UNSEEN] and tally[C.COPIED] == 1
    assert Path(os.fsdecode(os.path.join(dst, b"f"))).read_bytes() == b"data"


def test_absent_looks_up_only_what_a_rebuild_must_not_touch(env):
    """Copier.absent (in a directory the pass has just made): a plain file and a symlink are not looked up; a
    file with several names (a rebuild of one would split its group) and one for the chunker are."""
    from cmover.engine.copier import Seen

    build(env.src, {"plain": File(b"p", **T), "big": File(b"b" * 8192, **T), "one": File(b"1", **T),
                    "ln": Link(b"plain")})
    os.link(env.s("one"), env.s("two"))
    chunking = Copier(PosixFs(), env.filt, env.tally, chunker=object(), chunk_threshold=4096)  # type: ignore[arg-type]
    plain = Copier(PosixFs(), env.filt, env.tally)
    seen = {name: (chunking.absent(-1, name, os.lstat(env.s(name))), plain.absent(-1, name, os.lstat(env.s(name))))
            for name in ("plain", "big", "one", "ln")}
    assert seen == {"plain": (None, None), "big": (Seen.UNSEEN, None), "one": (Seen.UNSEEN, Seen.UNSEEN),
                    "ln": (None, None)}


def _no_lstat(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every os.stat / os.lstat call (a lookup by name) from now on."""
    calls: list[object] = []
    real_stat, real_lstat = os.stat, os.lstat
    monkeypatch.setattr(os, "stat", lambda *a, **k: (calls.append(a[0]), real_stat(*a, **k))[1])
    monkeypatch.setattr(os, "lstat", lambda *a, **k: (calls.append(a[0]), real_lstat(*a, **k))[1])
    return calls


def _new(env: SimpleNamespace, name: str, copier: Copier | None = None,
         st: os.stat_result | None = None) -> os.stat_result | None:
    sfd = os.open(env.src, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(env.dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return (copier or Copier(PosixFs(), env.filt, env.tally)).copy_new(sfd, dfd, name, st)
    finally:
        os.close(sfd)
        os.close(dfd)


def test_copy_new_copies_a_plain_file_without_looking_it_up(env, monkeypatch):
    """Copier.copy_new (a regular file by its listing, in a directory the pass has just made): opened, its fstat
    taken for its lstat; no lookup by name on either side, and the copy is the one copy_entry makes."""
    data = os.urandom(50_000)
    build(env.src, {"f": File(data, mode=0o640, uid=1234, gid=5678, xattrs={"user.k": b"v"}, **T)})
    looked = _no_lstat(monkeypatch)
    assert _new(env, "f") is None
    monkeypatch.undo()
    assert looked == []
    s, d = os.lstat(env.s("f")), os.lstat(env.d("f"))
    assert (d.st_mode, d.st_uid, d.st_gid, d.st_size, d.st_atime_ns, d.st_mtime_ns) == \
        (s.st_mode, 1234, 5678, len(data), T_ATIME, T_MTIME)
    assert Path(os.fsdecode(env.d("f"))).read_bytes() == data and os.getxattr(env.d("f"), "user.k") == b"v"
    assert env.tally[C.COPIED] == 1 and env.tally[C.BYTES] == len(data)


def test_copy_new_leaves_what_is_not_a_new_plain_file_to_copy_entry(env):
    """A name listed as a regular file that is now a symlink, a FIFO (opened without blocking, closed at once)
    or gone; a file with several names; one for the chunker: copy_new creates nothing, returns the entry's
    lstat (FileNotFoundError for the one gone) and counts nothing."""
    build(env.src, {"ln": Link(b"elsewhere"), "one": File(b"1", **T), "big": File(b"b" * 8192, **T)})
    os.mkfifo(env.s("fifo"))
    os.link(env.s("one"), env.s("two"))
    chunking = Copier(PosixFs(), env.filt, env.tally, chunker=object(), chunk_threshold=4096)  # type: ignore[arg-type]
    for name, kind in (("ln", stat.S_ISLNK), ("fifo", stat.S_ISFIFO), ("one", stat.S_ISREG), ("big", stat.S_ISREG)):
        st = _new(env, name, chunking)
        assert st is not None and kind(st.st_mode) and st.st_ino == os.lstat(env.s(name)).st_ino, name
        assert not os.path.lexists(env.d(name)), name
    with pytest.raises(FileNotFoundError):
        _new(env, "gone")
    assert sum(env.tally.values()) == 0


@pytest.mark.parametrize("there", ["file", "dir"])
def test_copy_new_over_a_name_made_meanwhile_rebuilds_it(env, there):
    """The target name exists after all (a batch delivered again, another writer): rebuilt under a temporary
    name and renamed over, a directory in its place removed first, as when copy_entry finds it so."""
    build(env.src, {"f": File(b"source data", **T)})
    if there == "file":
        Path(os.fsdecode(env.d("f"))).write_bytes(b"stale")
    else:
        os.makedirs(os.path.join(env.d("f"), b"inside"))
    assert _new(env, "f") is None
    assert Path(os.fsdecode(env.d("f"))).read_bytes() == b"source data"
    assert os.lstat(env.d("f")).st_mtime_ns == T_MTIME and no_temp_files(env.dst)
    assert env.tally[C.COPIED] == 1


def test_copy_new_with_an_lstat_copies_only_that_file(env):
    """copy_new given the caller's lstat (a batch's name): the file opened must be the one looked at; a file
    put in its place since is not copied (SourceChangedError, left for the next pass)."""
    build(env.src, {"f": File(b"first", **T), "g": File(b"second", **T)})
    st = os.lstat(env.s("f"))
    assert _new(env, "f", st=st) is None
    assert Path(os.fsdecode(env.d("f"))).read_bytes() == b"first" and env.tally[C.COPIED] == 1
    os.unlink(env.d("f"))
    os.rename(env.s("g"), env.s("f"))
    with pytest.raises(SourceChangedError):
        _new(env, "f", st=st)
    assert not os.path.lexists(env.d("f"))
