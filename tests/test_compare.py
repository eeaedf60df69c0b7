"""cmover.engine.compare.decide_copy: the full decision table, on records built directly."""

import os
import stat

import pytest

from cmover.core.privileges import ALL, Privileges
from cmover.core.record import Kind, Record
from cmover.engine.compare import Action, decide_copy, unchanged


def rec(kind=Kind.REG, **kw) -> Record:
    base = dict(kind=kind, perm=0o644, uid=1000, gid=1000, size=10, atime_ns=111, mtime_ns=1_600_000_000_123_456_789,
                ctime_ns=5, ino=7, dev=1, nlink=1, rdev=0, blocks=8)
    base.update(kw)
    return Record(**base)


def with_(r: Record, **kw) -> Record:
    return r._replace(**kw)


ALL_KINDS = [Kind.REG, Kind.DIR, Kind.LNK, Kind.FIFO, Kind.CHR, Kind.BLK, Kind.SOCK]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_missing_target_creates(kind):
    assert decide_copy(rec(kind), None).action is Action.CREATE


@pytest.mark.parametrize("kind", [Kind.REG, Kind.LNK, Kind.FIFO, Kind.CHR, Kind.BLK, Kind.DIR])
def test_identical_skips(kind):
    r = rec(kind, rdev=0x103 if kind in (Kind.CHR, Kind.BLK) else 0)
    # Target differs only in what is not compared: inode, device, ctime, atime, nlink, blocks.
    d = with_(r, ino=99, dev=2, ctime_ns=123, atime_ns=999, nlink=3, blocks=0)
    assert decide_copy(r, d).action is Action.SKIP


@pytest.mark.parametrize("src_kind", [Kind.REG, Kind.LNK, Kind.FIFO, Kind.CHR, Kind.BLK])
def test_directory_on_target_is_cleared(src_kind):
    assert decide_copy(rec(src_kind), rec(Kind.DIR)).action is Action.CLEAR_DIR


@pytest.mark.parametrize("dst_kind", [Kind.REG, Kind.LNK, Kind.FIFO, Kind.CHR, Kind.BLK])
def test_non_directory_on_target_retyped_to_dir(dst_kind):
    assert decide_copy(rec(Kind.DIR), rec(dst_kind)).action is Action.RETYPE_TO_DIR


@pytest.mark.parametrize("src_kind, dst_kind", [
    (Kind.REG, Kind.LNK), (Kind.LNK, Kind.REG), (Kind.REG, Kind.FIFO), (Kind.FIFO, Kind.CHR),
    (Kind.CHR, Kind.BLK), (Kind.BLK, Kind.REG),
])
def test_type_change_replaces(src_kind, dst_kind):
    # Everything else equal: the type alone forces a rebuild.
    assert decide_copy(rec(src_kind), rec(dst_kind)).action is Action.REPLACE


@pytest.mark.parametrize("kind", [Kind.REG, Kind.LNK])
def test_size_differs_replaces(kind):
    r = rec(kind)
    dec = decide_copy(r, with_(r, size=11))
    assert dec.action is Action.REPLACE and "size" in dec.reason


@pytest.mark.parametrize("kind", [Kind.REG, Kind.LNK])
@pytest.mark.parametrize("delta", [1, -1])
def test_mtime_one_ns_replaces(kind, delta):
    r = rec(kind)
    dec = decide_copy(r, with_(r, mtime_ns=r.mtime_ns + delta))
    assert dec.action is Action.REPLACE and "mtime" in dec.reason


def test_data_change_wins_over_owner_change():
    r = rec()
    assert decide_copy(r, with_(r, size=1, uid=0, perm=0o600)).action is Action.REPLACE


@pytest.mark.parametrize("field, value", [("uid", 0), ("gid", 0)])
@pytest.mark.parametrize("kind", [Kind.REG, Kind.LNK, Kind.DIR, Kind.FIFO, Kind.CHR])
def test_owner_differs_updates_meta(kind, field, value):
    r = rec(kind)
    dec = decide_copy(r, with_(r, **{field: value}))
    assert dec.action is Action.UPDATE_META and "owner" in dec.reason


@pytest.mark.parametrize("src_perm, dst_perm", [
    (0o644, 0o600), (0o4755, 0o755), (0o2755, 0o755), (0o1777, 0o777), (0o6755, 0o4755), (0o755, 0o4755),
])
@pytest.mark.parametrize("kind", [Kind.REG, Kind.DIR, Kind.FIFO, Kind.CHR])
def test_mode_differs_updates_meta(kind, src_perm, dst_perm):
    dec = decide_copy(rec(kind, perm=src_perm), rec(kind, perm=dst_perm))
    assert dec.action is Action.UPDATE_META and "mode" in dec.reason


def test_symlink_mode_ignored():
    assert decide_copy(rec(Kind.LNK, perm=0o777), rec(Kind.LNK, perm=0o755)).action is Action.SKIP


@pytest.mark.parametrize("kind", [Kind.CHR, Kind.BLK])
def test_device_number_differs_replaces(kind):
    dec = decide_copy(rec(kind, rdev=0x103, size=0), rec(kind, rdev=0x105, size=0))
    assert dec.action is Action.REPLACE and "device" in dec.reason


@pytest.mark.parametrize("kind", [Kind.FIFO, Kind.CHR, Kind.BLK])
def test_special_file_mtime_updates_meta(kind):
    r = rec(kind, rdev=0x103 if kind is not Kind.FIFO else 0, size=0)
    dec = decide_copy(r, with_(r, mtime_ns=r.mtime_ns + 1))
    assert dec.action is Action.UPDATE_META and "mtime" in dec.reason


def test_special_file_size_ignored():
    assert decide_copy(rec(Kind.FIFO, size=0), rec(Kind.FIFO, size=5)).action is Action.SKIP


def test_directory_times_and_size_not_compared():
    r = rec(Kind.DIR, size=4096)
    assert decide_copy(r, with_(r, mtime_ns=1, size=8192, atime_ns=2)).action is Action.SKIP


def test_record_from_stat(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    os.chmod(p, 0o4750)
    os.utime(p, ns=(1_000_000_001, 2_000_000_003))
    st = os.lstat(p)
    r = Record.from_stat(st)
    assert r.kind is Kind.REG and r.perm == 0o4750 and r.size == 3
    assert (r.atime_ns, r.mtime_ns) == (1_000_000_001, 2_000_000_003)
    assert (r.ino, r.dev, r.nlink) == (st.st_ino, st.st_dev, 1)
    assert Kind.of_mode(stat.S_IFLNK | 0o777) is Kind.LNK and Kind.of_mode(stat.S_IFSOCK) is Kind.SOCK


# -- the no-change fast path must agree with decide_copy ---------------------------------------------------

_FMT = {Kind.REG: stat.S_IFREG, Kind.LNK: stat.S_IFLNK, Kind.DIR: stat.S_IFDIR, Kind.FIFO: stat.S_IFIFO,
        Kind.CHR: stat.S_IFCHR, Kind.BLK: stat.S_IFBLK, Kind.SOCK: stat.S_IFSOCK}


def as_stat(r: Record) -> os.stat_result:
    seq = (_FMT[r.kind] | r.perm, r.ino, r.dev, r.nlink, r.uid, r.gid, r.size,
           r.atime_ns // 10**9, r.mtime_ns // 10**9, r.ctime_ns // 10**9)
    extra = {"st_atime": r.atime_ns / 1e9, "st_mtime": r.mtime_ns / 1e9, "st_ctime": r.ctime_ns / 1e9,
             "st_atime_ns": r.atime_ns, "st_mtime_ns": r.mtime_ns, "st_ctime_ns": r.ctime_ns,
             "st_blksize": 4096, "st_blocks": r.blocks, "st_rdev": r.rdev}
    return os.stat_result(seq, extra)


_VARIANTS = [{}, {"size": 11}, {"mtime_ns": 1_600_000_000_123_456_790}, {"uid": 0}, {"gid": 0}, {"perm": 0o4644},
             {"perm": 0o600}, {"ino": 1, "dev": 9, "ctime_ns": 1, "atime_ns": 1, "nlink": 2, "blocks": 99},
             {"rdev": 5}]


def test_record_from_synthetic_stat_round_trips():
    r = rec(Kind.CHR, rdev=0x103)
    assert Record.from_stat(as_stat(r)) == r
    # Every field a value of its own: from_stat builds the record positionally, and no two may trade places.
    r = Record(Kind.FIFO, 0o1640, 11, 12, 13, 14_000_000_001, 15_000_000_002, 16_000_000_003, 17, 18, 19, 20, 21)
    assert Record.from_stat(as_stat(r))._asdict() == r._asdict()


@pytest.mark.parametrize("variant", _VARIANTS, ids=str)
@pytest.mark.parametrize("dst_kind", ALL_KINDS)
@pytest.mark.parametrize("src_kind", ALL_KINDS)
def test_unchanged_never_skips_what_decide_copy_would_act_on(src_kind, dst_kind, variant):
    perm = 0o777 if src_kind is Kind.LNK else 0o644
    s = rec(src_kind, perm=perm)
    d = with_(rec(dst_kind, perm=0o777 if dst_kind is Kind.LNK else 0o644), **variant)
    fast = unchanged(as_stat(s), as_stat(d))
    skip = decide_copy(s, d).action is Action.SKIP
    if fast:
        assert skip
    if src_kind in (Kind.REG, Kind.LNK) and src_kind is dst_kind and (src_kind is Kind.REG or d.perm == 0o777):
        assert fast == skip  # the fast path takes every regular-file and symlink skip
    if src_kind not in (Kind.REG, Kind.LNK):
        assert not fast


# -- a regular user's compare: only what the process can set ----------------------------------------------

USER = Privileges(uid=1000, groups=frozenset({1000, 50}), chown=False, fsetid=False, mknod=False, dac=False,
                  sys_admin=False, setfcap=False)


@pytest.mark.parametrize("src_owner, dst_owner, action", [
    ((0, 0), (1000, 1000), Action.SKIP),  # another user's file: the copy can only be this user's
    ((2000, 2000), (1000, 1000), Action.SKIP),
    ((2000, 50), (1000, 50), Action.SKIP),  # a group of this user's is kept...
    ((2000, 50), (1000, 1000), Action.UPDATE_META),  # ...and compared
    ((1000, 1000), (1000, 50), Action.UPDATE_META),
])
def test_user_compares_only_the_owner_it_can_set(src_owner, dst_owner, action):
    s = rec(uid=src_owner[0], gid=src_owner[1])
    d = with_(s, uid=dst_owner[0], gid=dst_owner[1])
    assert decide_copy(s, d, USER).action is action
    assert decide_copy(s, d).action is (Action.SKIP if src_owner == dst_owner else Action.UPDATE_META)


@pytest.mark.parametrize("owner, src_perm, kept_perm", [
    ((0, 0), 0o4755, 0o755),  # another user's setuid program does not become this user's
    ((1000, 0), 0o4755, 0o4755),  # this user's own: kept
    ((1000, 0), 0o2755, 0o755),  # setgid of a group it is not a member of: the kernel would clear it
    ((2000, 50), 0o2750, 0o2750),  # a group of its own: kept
    ((2000, 50), 0o6755, 0o2755),
    ((0, 0), 0o1777, 0o1777),  # sticky stays
])
def test_user_compares_set_id_bits_it_can_keep(owner, src_perm, kept_perm):
    assert USER.perm(src_perm, *owner) == kept_perm
    s = rec(uid=owner[0], gid=owner[1], perm=src_perm)
    copy = with_(s, uid=1000, gid=owner[1] if owner[1] in USER.groups else 1000, perm=kept_perm)
    assert decide_copy(s, copy, USER).action is Action.SKIP
    assert decide_copy(s, with_(copy, perm=0o700), USER).action is Action.UPDATE_META
    assert unchanged(as_stat(s), as_stat(copy), USER)


@pytest.mark.parametrize("variant", _VARIANTS + [{"uid": 1000, "gid": 50}, {"perm": 0o4755}], ids=str)
@pytest.mark.parametrize("src", [rec(), rec(uid=0, gid=0, perm=0o4755), rec(uid=2000, gid=50, perm=0o2750),
                                 rec(Kind.LNK, perm=0o777, uid=0)], ids=["own", "root-setuid", "member-setgid", "link"])
def test_unchanged_agrees_with_decide_copy_for_a_user(src, variant):
    d = with_(src, **variant)
    assert unchanged(as_stat(src), as_stat(d), USER) == (decide_copy(src, d, USER).action is Action.SKIP)


def test_user_xattr_namespaces():
    assert [USER.xattr(n) for n in ("user.a", "system.posix_acl_access", "trusted.a", "security.selinux",
                                    "security.capability")] == [True, True, False, False, False]
    assert all(ALL.xattr(n) for n in ("trusted.a", "security.capability"))
    assert ALL.notice() == "" and "CAP_CHOWN" in USER.notice() and "uid 1000" in USER.notice()
