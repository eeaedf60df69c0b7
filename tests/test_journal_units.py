"""The pure parts of the change journals: the fanotify event parser, the reduction to touched names, the
``--changes`` argument rewriting, and the journal lines of the watcher."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cmover.cli.changes import changes_argv
from cmover.journal import fanotify, local
from cmover.journal.base import CHANGED, ENTERED, REMOVED, Change, Rename, Untrusted, What, touched
from cmover.journal.local import LocalJournal, changes_of
from cmover.journal.store import STATE, write_json_atomic
from cmover.journal.watch import event_record


def _info(itype: int, fsid: bytes, htype: int, handle: bytes, name: bytes | None) -> bytes:
    body = fsid + struct.pack("=Ii", len(handle), htype) + handle + (name + b"\0" if name is not None else b"")
    rec = struct.pack("=BBH", itype, 0, 0) + body
    pad = (-len(rec)) % 4
    rec += b"\0" * pad
    return struct.pack("=BBH", itype, 0, len(rec)) + rec[4:]


def _event(mask: int, infos: list[bytes]) -> bytes:
    body = b"".join(infos)
    return struct.pack("=IBBHQii", 24 + len(body), 3, 0, 24, mask, -1, 1234) + body


def test_parse_events_reads_directory_name_and_object_of_packed_events() -> None:
    fsid = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    buf = (_event(fanotify.FAN_CREATE | fanotify.FAN_ONDIR,
                  [_info(fanotify.INFO_DFID_NAME, fsid, 1, b"\xaa" * 8, b"caf\xe9"),
                   _info(fanotify.INFO_FID, fsid, 1, b"\xbb" * 8, None)])
           + _event(fanotify.FAN_Q_OVERFLOW, [])
           + _event(fanotify.FAN_ATTRIB, [_info(fanotify.INFO_DFID_NAME, fsid, 1, b"\xcc" * 12, b".")]))
    evs = fanotify.parse_events(buf)
    assert [e.mask for e in evs] == [fanotify.FAN_CREATE | fanotify.FAN_ONDIR, fanotify.FAN_Q_OVERFLOW,
                                     fanotify.FAN_ATTRIB]
    assert evs[0].dir == fanotify.Handle(fsid, 1, b"\xaa" * 8) and evs[0].name == b"caf\xe9"
    assert evs[0].obj == fanotify.Handle(fsid, 1, b"\xbb" * 8)
    assert evs[1].dir is None and evs[1].name is None
    assert evs[2].name == b"." and evs[2].obj is None
    assert fanotify.Handle.from_hex(evs[0].dir.hex()) == evs[0].dir
    with pytest.raises(OSError):
        fanotify.parse_events(struct.pack("=IBBHQii", 24, 2, 0, 24, 1, -1, 0))  # another metadata version


def test_journal_lines_become_normalized_changes_merged_masks_included() -> None:
    ev = fanotify.Event(fanotify.FAN_CREATE | fanotify.FAN_DELETE | fanotify.FAN_ONDIR,
                        fanotify.Handle(b"f" * 8, 1, b"d"), b"x\xff", fanotify.Handle(b"f" * 8, 1, b"o"))
    rec = {"i": 7, **event_record(ev, 42)}
    chs = changes_of(rec, "fanotify:x")
    assert [(c.what, c.name, c.is_dir, c.index, c.time_ns) for c in chs] == [
        (What.CREATED, b"x\xff", True, 7, 42), (What.REMOVED, b"x\xff", True, 7, 42)]
    assert event_record(fanotify.Event(fanotify.FAN_Q_OVERFLOW, None, None, None), 5) == {"ev": "overflow", "t": 5}
    link_count = {"i": 8, **event_record(fanotify.Event(fanotify.FAN_ATTRIB, None, None, ev.obj), 43)}
    assert changes_of(link_count, "s") == []


def test_touched_resolves_each_directory_once_and_keeps_what_lies_below_the_root() -> None:
    paths = {"a": b"/src", "b": b"/src/d", "gone": None, "out": b"/elsewhere"}
    asked: list[str] = []

    def resolve(key: str) -> bytes | None:
        asked.append(key)
        return paths[key]

    chs = [Change(What.CREATED, "b", b"n", False, 1, "s"), Change(What.CHANGED, "b", b"n", False, 2, "s"),
           Change(What.RENAMED_FROM, "a", b"old", True, 3, "s"), Change(What.CHANGED, "a", b".", True, 4, "s"),
           Change(What.REMOVED, "gone", b"x", False, 5, "s"), Change(What.CHANGED, "out", b"y", False, 6, "s"),
           Change(What.CHANGED, "b", None, False, 7, "s")]
    t = touched(chs, resolve, b"/src")
    assert t.names == {b"d": {b"n": ENTERED | CHANGED}, b"": {b"old": REMOVED}}
    assert t.own == {b""} and t.recheck == {b"d"}
    assert (t.unresolved, t.outside, t.records) == (1, 1, 7)
    assert sorted(asked) == ["a", "b", "gone", "out"]
    assert touched(chs, resolve, b"/src", start=b"d").names == {b"d": {b"n": ENTERED | CHANGED}}


def test_bare_changes_option_is_rewritten_so_that_it_never_takes_src_for_its_value() -> None:
    assert changes_argv(["sync", "--changes", "/a", "/b"]) == ["sync", "--changes=yes", "/a", "/b"]
    assert changes_argv(["sync", "--changes=auto", "/a", "--", "--changes"]) == [
        "sync", "--changes=auto", "/a", "--", "--changes"]


@pytest.mark.skipif(os.geteuid() != 0, reason="open_by_handle_at needs CAP_DAC_READ_SEARCH")
def test_handles_resolve_byte_exact_and_a_stale_generation_is_refused(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    mount_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(20):
            d = os.path.join(root, b"d%d" % i)
            os.mkdir(d)
            h = fanotify.handle_of(d)
            fd = fanotify.open_handle(mount_fd, h)
            try:
                assert os.readlink(f"/proc/self/fd/{fd}".encode()) == d
            finally:
                os.close(fd)
            # Every byte counts (inode numbers hold NUL bytes): another generation is another object.
            stale = fanotify.Handle(h.fsid, h.type, h.data[:-1] + bytes([h.data[-1] ^ 0x5A]))
            with pytest.raises(OSError) as exc:
                os.close(fanotify.open_handle(mount_fd, stale))
            assert exc.value.errno == errno.ESTALE
    finally:
        os.close(mount_fd)


def test_clean_passes_keep_changelog_marks_and_the_lowest_is_what_may_be_cleared(tmp_path: Path) -> None:
    from cmover.core.cleanpasses import last_clean, lowest_marks, record_clean

    tree = (b"/src", b"/dst", b"")
    kinds = ("copy", "delete", "dirtime")
    assert lowest_marks(tmp_path, kinds, *tree) == {}
    record_clean(tmp_path, "copy", *tree, "r1", 100, {"fs-MDT0000": 7, "fs-MDT0001": 3})
    record_clean(tmp_path, "delete", *tree, "r2", 200, {"fs-MDT0000": 9, "fs-MDT0001": 2})
    record_clean(tmp_path, "dirtime", *tree, "r3", 300)  # no marks (not a Lustre source then): does not count
    record_clean(tmp_path, "copy", b"/src", b"/other", b"", "r4", 400, {"fs-MDT0000": 1})  # another tree
    assert last_clean(tmp_path, "copy", *tree).marks == {"fs-MDT0000": 7, "fs-MDT0001": 3}
    assert last_clean(tmp_path, "dirtime", *tree).marks == {}
    assert lowest_marks(tmp_path, kinds, *tree) == {"fs-MDT0000": 7, "fs-MDT0001": 2}
    assert lowest_marks(tmp_path, kinds, *tree, highest=True) == {"fs-MDT0000": 9, "fs-MDT0001": 3}
    record_clean(tmp_path, "copy", *tree, "r0", 50, {"fs-MDT0000": 1})  # older than the record: ignored
    assert last_clean(tmp_path, "copy", *tree).run_id == "r1"


def test_a_fan_rename_event_is_a_departure_and_an_arrival_of_one_object() -> None:
    fsid = b"\x01" * 8
    buf = _event(fanotify.FAN_RENAME | fanotify.FAN_ONDIR,
                 [_info(fanotify.INFO_OLD_DFID_NAME, fsid, 1, b"\xaa" * 8, b"old"),
                  _info(fanotify.INFO_NEW_DFID_NAME, fsid, 1, b"\xcc" * 8, b"new"),
                  _info(fanotify.INFO_FID, fsid, 1, b"\xbb" * 8, None)])
    (ev,) = fanotify.parse_events(buf)
    assert (ev.old_dir, ev.old_name) == (fanotify.Handle(fsid, 1, b"\xaa" * 8), b"old")
    assert (ev.dir, ev.name) == (fanotify.Handle(fsid, 1, b"\xcc" * 8), b"new")
    chs = changes_of({"i": 3, **event_record(ev, 9)}, "s")
    obj = fanotify.Handle(fsid, 1, b"\xbb" * 8).hex()
    assert [(c.what, c.dir, c.name, c.is_dir, c.obj) for c in chs] == [
        (What.RENAMED_FROM, ev.old_dir.hex(), b"old", True, obj), (What.RENAMED_TO, ev.dir.hex(), b"new", True, obj)]


def test_touched_pairs_a_departure_with_the_next_arrival_of_the_same_object() -> None:
    paths = {"r": b"/src", "a": b"/src/a", "out": b"/elsewhere"}
    chs = [Change(What.RENAMED_FROM, "r", b"x", True, 1, "s", 10, "X"),  # paired by identity (MOVED_FROM/TO)
           Change(What.RENAMED_FROM, "r", b"y", True, 2, "s", 11, "Y"),
           Change(What.RENAMED_TO, "a", b"x2", True, 3, "s", 12, "X"),
           Change(What.RENAMED_TO, "out", b"y2", True, 4, "s", 13, "Y"),  # moved out of the tree: no rename
           Change(What.RENAMED_TO, "r", b"z2", True, 5, "s", 14, "Z"),  # no departure of Z: no rename
           Change(What.RENAMED_FROM, "out", b"w", False, 6, "s", 15, "W"),  # moved in from outside: no rename
           Change(What.RENAMED_TO, "r", b"w", False, 6, "s", 15, "W")]
    t = touched(chs, paths.__getitem__, b"/src")
    assert [(r.old, r.new, r.obj, r.index) for r in t.renames] == [(b"x", b"a/x2", "X", 3)]
    assert t.names == {b"": {b"x": REMOVED, b"y": REMOVED, b"z2": ENTERED, b"w": ENTERED}, b"a": {b"x2": ENTERED}}


def test_chains_of_one_object_compose_and_a_chain_back_to_its_start_is_nothing() -> None:
    from cmover.engine.renames import chains

    def rn(old: bytes, new: bytes, obj: str, i: int) -> Rename:
        (od, _, on), (nd, _, nn) = old.rpartition(b"/"), new.rpartition(b"/")
        return Rename(od, on, nd, nn, obj, i, "s", i)

    got = chains([rn(b"b", b"c", "A", 2), rn(b"a", b"b", "A", 1), rn(b"d/x", b"y", "B", 3), rn(b"y", b"d/x", "B", 4),
                  rn(b"p", b"q", "C", 5), rn(b"r", b"s", "C", 6)])
    assert [(r.old, r.new, r.index) for r in got] == [(b"a", b"c", 2), (b"p", b"q", 5), (b"r", b"s", 6)]


def test_clean_starts_lists_every_start_path_of_a_tree(tmp_path: Path) -> None:
    from cmover.core.cleanpasses import clean_starts, record_clean

    record_clean(tmp_path, "delete", b"/src", b"/dst", b"", "r1", 100)
    record_clean(tmp_path, "delete", b"/src", b"/dst", b"sub/\xff", "r2", 200, {"fs-MDT0000": 4})
    record_clean(tmp_path, "copy", b"/src", b"/dst", b"", "r3", 300)
    record_clean(tmp_path, "delete", b"/src", b"/other", b"", "r4", 400)
    got = sorted((s, p.run_id, p.marks) for s, p in clean_starts(tmp_path, "delete", b"/src", b"/dst"))
    assert got == [(b"", "r1", {}), (b"sub/\xff", "r2", {"fs-MDT0000": 4})]
    assert clean_starts(tmp_path / "none", "delete", b"/src", b"/dst") == []


def test_a_rename_is_replayed_only_when_the_next_delete_and_dirtime_passes_read_its_record(tmp_path: Path) -> None:
    """Otherwise a delete pass that began after it would never walk the new name, and what the target's copy
    held beyond the source there would stay."""
    from types import SimpleNamespace

    from cmover.cli.changes import _read_by_later_passes
    from cmover.core.cleanpasses import record_clean

    settings = SimpleNamespace(changes_path=lambda: tmp_path)
    spec = SimpleNamespace(src_root=b"/src", dst_root=b"/dst")
    tree = (b"/src", b"/dst")
    r = Rename(b"a", b"x", b"b", b"y", "X", 7, "fs-MDT0001", 1000)
    fan = _read_by_later_passes(settings, spec, SimpleNamespace(source="fanotify:1"))
    chl = _read_by_later_passes(settings, spec, SimpleNamespace(source="changelog:fs"))
    assert fan(r) and chl(r)  # no clean pass of those kinds: they walk next time
    record_clean(tmp_path, "delete", *tree, b"", "d", 900, {"fs-MDT0001": 6})
    record_clean(tmp_path, "dirtime", *tree, b"", "t", 1000, {"fs-MDT0001": 6})
    fan = _read_by_later_passes(settings, spec, SimpleNamespace(source="fanotify:1"))
    chl = _read_by_later_passes(settings, spec, SimpleNamespace(source="changelog:fs"))
    assert fan(r) and chl(r)
    record_clean(tmp_path, "delete", *tree, b"b", "d2", 1001, {"fs-MDT0001": 7})  # a sub-tree holding the new name
    fan = _read_by_later_passes(settings, spec, SimpleNamespace(source="fanotify:1"))
    chl = _read_by_later_passes(settings, spec, SimpleNamespace(source="changelog:fs"))
    assert not fan(r) and not chl(r)
    assert fan(Rename(b"a", b"x", b"c", b"y", "X", 7, "fs-MDT0001", 1000))  # a new name outside that sub-tree
    assert chl(Rename(b"a", b"x", b"b", b"y", "X", 8, "fs-MDT0001", 1000))  # a later record of that MDT
    assert chl(Rename(b"a", b"x", b"b", b"y", "X", 2, "fs-MDT0002", 1000))  # an MDT the pass has no mark of


def test_segments_of_earlier_watcher_runs_are_pruned_once_every_trees_clean_pass_is_past_them(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cmover.cli.changes import prune_segments
    from cmover.core.cleanpasses import record_clean
    from cmover.journal.store import journal_dir, segments, write_json_atomic

    src = b"/srv/src"
    jdir = Path(journal_dir(str(tmp_path), src))
    jdir.mkdir(parents=True)
    names = ["seg-100-a.jsonl", "seg-200-b.jsonl", "seg-300-c.jsonl", "seg-400-d.jsonl"]
    for name, written in zip(names, (1_000, 2_000, 3_000, 500), strict=True):
        (jdir / name).write_text('{"i":0}\n')
        os.utime(jdir / name, ns=(written, written))
    write_json_atomic(jdir / "state.json", {"segment": names[3]})  # the running one: kept, however old
    settings = SimpleNamespace(changes_path=lambda: tmp_path)
    assert prune_segments(settings, src) == []  # no clean pass recorded: nothing is known to be past
    record_clean(tmp_path, "copy", src, b"/dst", b"", "r1", 2_500)
    record_clean(tmp_path, "delete", src, b"/dst", b"", "r2", 2_100)
    record_clean(tmp_path, "copy", src, b"/dst2", b"sub", "r3", 1_500)  # another tree of the source
    record_clean(tmp_path, "copy", b"/srv/other", b"/dst", b"", "r4", 10)  # another source: does not count
    assert prune_segments(settings, src) == [names[0]]
    record_clean(tmp_path, "copy", src, b"/dst2", b"sub", "r5", 2_200)
    assert prune_segments(settings, src) == [names[1]]
    assert segments(jdir) == [names[2], names[3]]


def test_replay_renames_only_what_the_trees_agree_on(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cmover.engine.renames import replay
    from cmover.journal.base import Touched

    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        (root / "a").mkdir(parents=True)
        (root / "a" / "f").write_bytes(b"x")
        (root / "x").mkdir()
    (src / "x" / "s").mkdir()
    (dst / "x" / "s").write_bytes(b"")  # the target holds another type at the old name
    os.symlink("/", dst / "x" / "s2")  # a symbolic link at the old name on the target, never followed
    (src / "s3").mkdir()
    (dst / "x" / "q").mkdir()
    (src / "q2").mkdir()
    (src / "a").rename(src / "b")
    (src / "x" / "s").rename(src / "b" / "g")
    spec = SimpleNamespace(src_root=os.fsencode(src), dst_root=os.fsencode(dst), start=b"")

    def rn(od: bytes, on: bytes, nd: bytes, nn: bytes) -> Rename:
        return Rename(od, on, nd, nn, od + on, 1, "s", 1)

    t = Touched(renames=[rn(b"", b"a", b"", b"b"), rn(b"x", b"s", b"b", b"g"), rn(b"x", b"s2", b"", b"s3"),
                         rn(b"x", b"s/..", b"", b"y"), rn(b"", b"nothing", b"", b"b"),
                         rn(b"", b"x/q", b"", b"q2")])  # not one entry name: a damaged journal
    done = replay(spec, t, lambda r: True)
    assert done.done == [(b"a", b"b")] and done.not_replayed == 5
    assert sorted(os.listdir(dst)) == ["b", "x"] and sorted(os.listdir(dst / "x")) == ["q", "s", "s2"]
    assert (dst / "b" / "f").read_bytes() == b"x"
    (dst / "b").rename(dst / "a")
    assert replay(spec, t, lambda r: False).done == []  # the later passes would not read the records
    assert (dst / "a" / "f").exists()


def test_a_plan_from_what_an_earlier_plan_saw_asks_the_source_nothing_and_names_the_same_entries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmover.core import fsio
    from cmover.core.passes import PassKind, PassSpec
    from cmover.engine import changeplan
    from cmover.journal.base import Touched

    src = tmp_path / "src"
    for d in ("a/b", "c"):
        (src / d).mkdir(parents=True)
    (src / "a/b/kept").write_bytes(b"x")
    (src / "c/new").write_bytes(b"y")
    t = Touched()
    t.add(b"a/b", b"kept", CHANGED)
    t.add(b"a/b", b"gone", REMOVED)
    t.add(b"c", b"new", ENTERED)

    def spec(kind: PassKind) -> PassSpec:
        return PassSpec(run_id=f"{kind.value}-1", kind=kind, src_root=os.fsencode(src),
                        dst_root=os.fsencode(tmp_path / "dst"), changes=True)

    def named(plan: changeplan.Plan) -> list[tuple[bytes, tuple[bytes, ...]]]:
        return [(r, n) for j in plan.jobs for r, n in [(j.rel, j.names), *getattr(j, "also", ())]]

    seen: changeplan.Seen = {}
    copy = changeplan.plan_changes(spec(PassKind.COPY), t, seen)
    assert named(copy) == [(b"a/b", (b"kept",)), (b"c", (b"new",))] and len(copy.jobs) == 1  # one task
    asked = len(seen)
    monkeypatch.setattr(fsio, "lstat_at", lambda fd, name: pytest.fail("the source was asked again"))
    delete = changeplan.plan_changes(spec(PassKind.DELETE), t, seen)
    assert named(delete) == [(b"a/b", (b"gone",))] and len(seen) == asked == 3


def test_a_live_watcher_that_has_not_beaten_is_waited_for_and_a_dead_one_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped or starved watcher (alive, no heartbeat for STALE_BEATS beats) is running as soon as it beats
    again; one that never beats again within the bound is refused as stopped or hung, and a dead one at once."""
    journal = LocalJournal(str(tmp_path), b"/src")
    os.makedirs(journal.directory)
    state_file = os.path.join(journal.directory, STATE)
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = {"pid": live.pid, "running": True, "heartbeat_s": 0.1, "heartbeat_ns": time.time_ns() - 10**10}
        write_json_atomic(state_file, stale)
        beat = threading.Timer(0.5, write_json_atomic, (state_file, dict(stale, heartbeat_ns=time.time_ns() + 10**9)))
        beat.start()
        t0 = time.monotonic()
        assert journal._running(stale, "/src")["heartbeat_ns"] > stale["heartbeat_ns"]
        assert 0.4 < time.monotonic() - t0 < 5
        beat.join()

        write_json_atomic(state_file, stale)
        monkeypatch.setattr(local, "DRAIN_TIMEOUT", 0.5)
        with pytest.raises(Untrusted, match=r"has not beaten for 0 s .*stopped or hung"):
            journal._running(stale, "/src")
        assert live.poll() is None  # waited for without a signal
    finally:
        live.kill()
        live.wait()
    monkeypatch.setattr(local, "DRAIN_TIMEOUT", 30.0)
    t0 = time.monotonic()
    with pytest.raises(Untrusted, match="is not running"):
        journal._running(stale, "/src")
    assert time.monotonic() - t0 < 5  # not waited for
    # A watcher that ended and that its parent has not reaped yet (a zombie) is gone all the same.
    ended = subprocess.Popen(["true"])
    try:
        while Path(f"/proc/{ended.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
            time.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(Untrusted, match="is not running"):
            journal._running(dict(stale, pid=ended.pid), "/src")
        assert time.monotonic() - t0 < 5
    finally:
        ended.wait()
