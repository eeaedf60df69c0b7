"""The changelog binding (cmover.lustre.changelog) against the stand-in's changelog functions, and record parsing.

The records are written by tests/support/changelog.py in the real stored layout and handed back by the
stand-in repacked as a 2.16 library does; the binding must place every extension from the flags alone.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest
from support import changelog as mds_side
from support.lustre import expected_fid

from cmover.lustre import changelog
from cmover.lustre.changelog import parse


def test_parse_places_every_extension_from_the_flags() -> None:
    t = 1_700_000_000_123_456_789
    for jobid in (None, b"job.1"):
        for extra in (None, 0, mds_side.CLFE_UIDGID, mds_side.CLFE_UIDGID | mds_side.CLFE_NID):
            raw = mds_side.pack_record(mds_side.CL_RENAME, 42, (0x200000401, 7, 0), (0x200000402, 8, 0), b"new",
                                       sfid=(0x200000403, 9, 0), spfid=(0x200000404, 10, 0), sname=b"old",
                                       jobid=jobid, extra=extra, uid=1003, gid=1004, xattr=b"user.x",
                                       openflags=2, time_ns=t, flags=1)
            assert changelog.record_size(raw) == len(raw)
            rec = parse(raw)
            assert (rec.index, rec.type, rec.flags, rec.time_ns) == (42, changelog.CL_RENAME, 1, t)
            assert (rec.tfid, rec.pfid, rec.sfid, rec.spfid) == ("0x200000401:0x7:0x0", "0x200000402:0x8:0x0",
                                                                 "0x200000403:0x9:0x0", "0x200000404:0xa:0x0")
            assert (rec.name, rec.sname, rec.jobid) == (b"new", b"old", jobid or b"")
            assert rec.uid == (1003 if extra and extra & mds_side.CLFE_UIDGID else None)
            assert rec.xattr == (b"user.x" if extra is not None else b"")
    # 2.7-2.15 give every record a zero rename extension: not a rename unless CL_RENAME.
    raw = mds_side.pack_record(mds_side.CL_CREATE, 3, (0x200000401, 1, 0), (0x200000402, 2, 0), b"f",
                               sfid=(0, 0, 0), jobid=None, extra=None)
    rec = parse(raw)
    assert (rec.name, rec.sname, rec.sfid, rec.type_name) == (b"f", b"", changelog.ZERO_FID, "CREAT")
    with pytest.raises(ValueError):
        parse(raw[:-1])
    with pytest.raises(ValueError):
        parse(raw[:40])


@pytest.fixture
def chl(lenv, monkeypatch, tmp_path):
    monkeypatch.setenv("STANDIN_CHANGELOG_DIR", str(tmp_path / "mds"))
    cl = changelog.bind(lenv.lib)
    assert cl is not None
    mds = mds_side.Mds(tmp_path / "mds", "srcfs", 2)  # lenv's source: srcfs with 2 MDTs
    return lenv, cl, mds


def test_records_of_every_change_read_back_through_the_standin(chl) -> None:
    lenv, cl, mds = chl
    users = [mds.register(i) for i in range(2)]
    assert users == ["cl1", "cl1"]
    fs = mds_side.ChangingFs(mds, os.fsencode(lenv.src))
    src = os.fsencode(lenv.src)
    fs.mkdir(src + b"/d")
    fs.write(src + b"/d/f", b"data")
    fs.link(src + b"/d/f", src + b"/g")
    fs.rename(src + b"/d/f", src + b"/h")
    fs.chmod(src + b"/h", 0o600)
    fs.setxattr(src + b"/h", "user.a", b"1")
    fs.unlink(src + b"/g")
    recs = {i: list(cl.records(mds.device(i))) for i in range(2)}
    for i in range(2):
        idx = [r.index for r in recs[i]]
        assert idx == list(range(1, len(idx) + 1)) and recs[i][0].type == changelog.CL_MARK
    allrecs = sorted((r for rs in recs.values() for r in rs[1:]), key=lambda r: r.time_ns)
    kinds = [r.type_name for r in allrecs]
    assert kinds == ["MKDIR", "CREAT", "CLOSE", "HLINK", "RENME", "SATTR", "XATTR", "UNLNK"], kinds
    ren = allrecs[4]
    fid_h = expected_fid(lenv.src / "h")
    assert (ren.sfid, ren.spfid, ren.name, ren.sname, ren.tfid) == (
        fid_h, expected_fid(lenv.src / "d"), b"h", b"f", changelog.ZERO_FID)
    assert ren.pfid == expected_fid(lenv.src)
    assert allrecs[6].xattr == b"user.a" and allrecs[6].jobid == b"cmover-test" and allrecs[6].uid == 0
    assert allrecs[7].flags == 0  # the unlinked name was not the last
    # fid2path: every name, relative to the mount; the root; a removed object.
    assert cl.fid2path(os.fsencode(lenv.src), fid_h) == [b"h"]
    fs.link(src + b"/h", src + b"/d/h2")
    assert sorted(cl.fid2path(b"srcfs", fid_h)) == [b"d/h2", b"h"]
    assert cl.fid2path(os.fsencode(lenv.src), expected_fid(lenv.src)) == [b""]
    assert cl.fid2path(os.fsencode(lenv.src), "0x200000007:0x1:0x0") == [b""]
    gone = expected_fid(lenv.src / "d" / "h2")
    fs.unlink(src + b"/d/h2")
    fs.unlink(src + b"/h")
    assert cl.fid2path(os.fsencode(lenv.src), gone) == []
    with pytest.raises(OSError) as exc:
        cl.fid2path(b"nosuchfs", gone)
    assert exc.value.errno == errno.ENODEV
    # startrec skips the records below it.
    last = recs[0][-1].index
    assert [r.index for r in cl.records(mds.device(0), last)][0] == last


def test_clear_and_the_errors_of_the_real_device(chl) -> None:
    lenv, cl, mds = chl
    dev = mds.device(0)
    u1, u2 = mds.register(0), mds.register(0)
    for i in range(4):
        mds.emit(0, mds_side.CL_MKDIR, tfid=(0x200000401, i, 0), pfid=(0x200000400, 1, 0), name=b"d%d" % i)
    index, _, users = mds.state(0)
    assert index == 5
    assert users == {1: 1, 2: 1}
    for bad, code in (("srcfs-MDT0002", errno.ENOENT), ("nofs-MDT0000", errno.ENOENT), ("srcfs", errno.ENOENT)):
        with pytest.raises(OSError) as exc:
            list(cl.records(bad))
        assert exc.value.errno == code, bad
    with pytest.raises(OSError) as exc:
        cl.clear(dev, "cl9", 2)
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(OSError) as exc:
        cl.clear(dev, u1, index + 1)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        cl.clear(dev, u1, 0)
    cl.clear(dev, u1, 3)
    assert [r.index for r in cl.records(dev)][0] == 2  # u2 still holds them (both started at the mark, 1)
    cl.clear(dev, u2 + "-name", 2)  # a named user's id is cut at the '-'
    assert [r.index for r in cl.records(dev)][0] == 3
    with pytest.raises(OSError) as exc:
        cl.clear(dev, u2, 1)  # below its cleared point
    assert exc.value.errno == errno.ENOENT
    cl.clear(dev, u1, 3)  # the same point again: fine
    mds.deregister(0, u2)
    assert [r.index for r in cl.records(dev)][0] == 4
    with pytest.raises(OSError) as exc:
        cl.clear(dev, u2, 4)
    assert exc.value.errno == errno.ENOENT
    # A damaged stored record is EPROTO, never read past.
    log = mds.dir / f"{dev}.log"
    data = log.read_bytes()
    log.write_bytes(struct.pack("<H", 2000) + data[2:])
    with pytest.raises(OSError) as exc:
        list(cl.records(dev))
    assert exc.value.errno == errno.EPROTO


def _journal(lenv, cl, mds):
    from cmover.lustre.chjournal import LustreJournal

    users = {mds.device(i): mds.register(i) for i in range(2)}
    return LustreJournal(cl, "srcfs", os.fsencode(lenv.src), 2, users), users


def test_changelog_journal_normalizes_every_record_kind(chl, monkeypatch) -> None:
    from cmover.core.changes import What, touched
    from cmover.lustre import chjournal

    lenv, cl, mds = chl
    lj, _users = _journal(lenv, cl, mds)
    marks = lj.positions({})
    assert marks == {mds.device(0): 1, mds.device(1): 1}  # the CL_MARK of each log's start
    src = os.fsencode(lenv.src)
    fs = mds_side.ChangingFs(mds, src)
    fs.mkdir(src + b"/a")
    fs.mkdir(src + b"/b")
    fs.write(src + b"/a/f", b"1")
    fs.link(src + b"/a/f", src + b"/b/g")  # HLINK: the new name, and every other name changed
    fs.rename(src + b"/a/f", src + b"/b/f2")  # RENME across directories
    fs.chmod(src + b"/b", 0o700)  # SATTR on a directory: the directory itself
    fs.mkdir(src + b"/gone")
    fs.write(src + b"/gone/x", b"")
    fs.unlink(src + b"/gone/x")
    fs.rmdir(src + b"/gone")  # records in a directory that no longer exists: unresolved
    reading = lj.read(marks, marks)
    assert reading.marks == {d: mds.state(i)[0] for i, d in enumerate(lj.devices)}
    t = touched(reading.changes, reading.resolve, src)
    assert t.names[b""] == {b"a": 1, b"b": 1, b"gone": 1 | 4}
    assert t.names[b"b"][b"g"] & 1 and t.names[b"b"][b"f2"] & 1 and t.names[b"a"][b"f"] & 4
    assert b"b" in t.own and t.unresolved == 3  # CREAT + CLOSE + UNLNK in /gone
    monkeypatch.setattr(chjournal, "RANGE", 1)  # every record a range of its own: the same changes
    assert sorted(map(repr, lj.read(marks, marks).changes)) == sorted(map(repr, reading.changes))
    whats = {c.what for c in reading.changes}
    assert {What.CREATED, What.CHANGED, What.REMOVED, What.RENAMED_FROM, What.RENAMED_TO} <= whats
    # Read again from the new marks: nothing new.
    assert lj.read(reading.marks, marks).changes == []


def test_changelog_journal_trust_rule(chl) -> None:
    from cmover.core.changes import Untrusted
    from cmover.lustre.chjournal import LustreJournal

    lenv, cl, mds = chl
    lj, users = _journal(lenv, cl, mds)
    marks = lj.positions({})
    for i in range(2):
        for n in range(3):
            mds.emit(i, mds_side.CL_MKDIR, tfid=(0x200000401, n, 0), pfid=(0x200000400, 1, 0), name=b"x%d" % n)

    def refused(why: str, m=marks, journal=lj) -> None:
        with pytest.raises(Untrusted) as exc:
            journal.read(m, m)
        assert why in str(exc.value) and "\n" not in str(exc.value), str(exc.value)

    refused("MDT srcfs-MDT0001 of srcfs has no changelog user",
            journal=LustreJournal(cl, "srcfs", os.fsencode(lenv.src), 2, {mds.device(0): "cl1"}))
    refused("recorded no changelog position for srcfs-MDT0001", m={mds.device(0): 1})
    refused("it was reset", m={mds.device(0): 1, mds.device(1): 99})
    assert len(lj.read(marks, marks).changes) == 6
    assert lj.clear({mds.device(0): 3}) == []
    refused("is gone (deregistered, or cleared past record 1")  # cleared past the floor by someone
    after = {mds.device(0): 3, mds.device(1): 1}
    assert len(lj.read(after, after).changes) == 4
    mds.purge(1, 2)
    refused("records 2..2 of srcfs-MDT0001 are gone", m=after)
    mds.deregister(0, users[mds.device(0)])
    refused(f"changelog user {users[mds.device(0)]} of srcfs-MDT0000 is gone", m=after)
