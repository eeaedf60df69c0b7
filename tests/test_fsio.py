"""The pass roots a process keeps open (cmover.core.fsio): only inside keeping_roots(), reused only while the
root's path still names the same directory, never listed through, never shared with a forked child, bounded
in number, all closed when the scope ends (a long-lived worker keeps no mount busy)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmover.core import fsio


def _names(fd: int) -> set[str]:
    with os.scandir(fd) as it:
        return {e.name for e in it}


@pytest.fixture(autouse=True)
def _keeping() -> Iterator[None]:
    fsio._forget_kept()
    with fsio.keeping_roots():
        yield


def _ino(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_a_root_opened_again_is_reached_through_its_kept_descriptor_with_an_offset_of_its_own(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    for i in range(50):
        (root / f"f{i}").write_bytes(b"")
    broot = os.fsencode(root)
    first = fsio.open_root(broot, source=True)
    assert (os.getpid(), broot, True) in fsio._kept
    # Two listings at once, each through its own descriptor: neither sees a part of the other's offset.
    second = fsio.open_root(broot, source=True)
    try:
        assert _names(first) == _names(second) == {"sub", *(f"f{i}" for i in range(50))}
    finally:
        os.close(first)
        os.close(second)
    assert _ino(fsio.open_dir(broot, b"sub", source=False)) == (root / "sub").stat().st_ino


def test_a_root_replaced_or_turned_into_a_link_is_opened_from_the_top_again(tmp_path: Path) -> None:
    root, outside = tmp_path / "dst", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "sub").mkdir(parents=True)
    broot = os.fsencode(root)
    os.close(fsio.open_dir(broot, b"sub", source=False))  # kept now

    root.rename(tmp_path / "old")  # the kept directory lives on elsewhere; a new one takes the path
    (root / "sub").mkdir(parents=True)
    assert _ino(fsio.open_dir(broot, b"sub", source=False)) == (root / "sub").stat().st_ino
    assert _ino(fsio.open_root(broot, source=False)) == root.stat().st_ino

    os.rename(root, tmp_path / "older")
    root.symlink_to(outside)  # the root's path is a link now: never followed, kept descriptor or not
    with pytest.raises(OSError):
        fsio.open_dir(broot, b"sub", source=False)
    with pytest.raises(OSError):
        fsio.open_root(broot, source=False)
    root.unlink()
    with pytest.raises(FileNotFoundError):
        fsio.open_dir(broot, b"sub", source=False)


def test_a_link_above_the_root_leads_nowhere_else(tmp_path: Path) -> None:
    (tmp_path / "a" / "root" / "sub").mkdir(parents=True)
    (tmp_path / "b" / "root" / "sub").mkdir(parents=True)
    broot = os.fsencode(tmp_path / "a" / "root")
    os.close(fsio.open_dir(broot, b"sub", source=True))
    (tmp_path / "a").rename(tmp_path / "a-gone")
    (tmp_path / "a").symlink_to(tmp_path / "b")  # the path resolves to another directory through a link
    with pytest.raises(OSError):  # not the kept one (another inode), and the link refused from the top
        fsio.open_dir(broot, b"sub", source=True)


def test_kept_roots_are_bounded_and_not_inherited_by_a_forked_child(tmp_path: Path) -> None:
    roots = []
    for i in range(fsio.KEPT_ROOTS + 3):
        (tmp_path / f"r{i}").mkdir()
        roots.append(os.fsencode(tmp_path / f"r{i}"))
    before = len(os.listdir("/proc/self/fd"))
    for r in roots:
        os.close(fsio.open_root(r, source=False))
    assert len(fsio._kept) == fsio.KEPT_ROOTS
    assert len(os.listdir("/proc/self/fd")) == before + fsio.KEPT_ROOTS  # the evicted ones are closed

    pid = os.fork()
    if pid == 0:  # the child: nothing kept, nothing to keep until it asks, then roots of its own
        ok = not fsio._kept
        os.close(fsio.open_root(roots[-1], source=False))
        ok = ok and not fsio._kept
        with fsio.keeping_roots():
            fd = fsio.open_root(roots[-1], source=False)
            ok = ok and os.fstat(fd).st_ino == os.stat(roots[-1]).st_ino and len(fsio._kept) == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_nothing_is_kept_outside_the_scope_and_the_scope_closes_what_it_kept(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    broot = os.fsencode(tmp_path / "r")
    fsio._forget_kept()  # leave the fixture's scope: as a distributed worker runs
    before = len(os.listdir("/proc/self/fd"))
    os.close(fsio.open_root(broot, source=False))
    assert not fsio._kept and len(os.listdir("/proc/self/fd")) == before
    with fsio.keeping_roots():
        os.close(fsio.open_root(broot, source=False))
        with fsio.keeping_roots():  # nested: the outer scope decides
            os.close(fsio.open_root(broot, source=True))
        assert len(fsio._kept) == 2
    assert not fsio._kept and len(os.listdir("/proc/self/fd")) == before


def test_a_process_that_keeps_roots_while_busy_lets_them_go_when_idle(tmp_path: Path) -> None:
    """A forked child (as an embedded pool process) keeps a root while it works and closes it once idle."""
    (tmp_path / "r").mkdir()
    broot = os.fsencode(tmp_path / "r")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        fsio.IDLE_ROOT_SECONDS = 0.4
        fsio.keep_roots_while_busy()
        os.close(fsio.open_root(broot, source=False))
        kept = len(fsio._kept)
        time.sleep(1.2)
        os.write(w, b"%d %d" % (kept, len(fsio._kept)))
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 100) == b"1 0"
    os.close(r)


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _count_openat(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record the name of every directory fsio opens inside a parent (one openat each)."""
    opened: list[bytes] = []
    real = fsio.open_subdir

    def counting(parent_fd: int, name: str | bytes, *, source: bool) -> int:
        opened.append(os.fsencode(name))
        return real(parent_fd, name, source=source)

    monkeypatch.setattr(fsio, "open_subdir", counting)
    return opened


def test_sorted_directories_opened_in_one_scope_share_their_way_and_everything_is_closed_at_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "src"
    for d in ("a/b/c", "a/b/d", "a/e", "f"):
        (root / d).mkdir(parents=True)
        (root / d / "x").write_bytes(b"")
    broot = os.fsencode(root)
    before = _fds()
    opened = _count_openat(monkeypatch)
    seen: list[int] = []
    with fsio.sharing_dirs():
        for rel in (b"a/b/c", b"a/b/d", b"a/e", b"f", b"", b"f"):
            fd = fsio.open_dir(broot, rel, source=True, on_open=lambda fd: seen.append(os.fstat(fd).st_ino))
            try:
                assert os.fstat(fd).st_ino == (root / os.fsdecode(rel)).stat().st_ino
                assert _names(fd) == ({"x"} if rel else {"a", "f"})
                assert _names(fd) == ({"x"} if rel else {"a", "f"})  # an offset of its own, listed twice
            finally:
                os.close(fd)
        # The root's own way once (from /), then a once, a/b once: the shared way; each directory asked for
        # opened anew (a descriptor of its own).
        assert opened == [*(os.fsencode(p) for p in root.parts[1:]), b"a", b"b", b"c", b"d", b"e", b"f", b"f"]
        # on_open saw the root and every directory on the way, kept or new: 4 + 4 + 3 + 2 + 1 + 2.
        assert len(seen) == 16 and seen[:4] == [(root / p).stat().st_ino for p in ("", "a", "a/b", "a/b/c")]
    fsio._release_kept()
    assert _fds() == before


def test_a_scope_refuses_a_link_on_the_way_and_goes_on_from_what_it_could_open(tmp_path: Path) -> None:
    root, outside = tmp_path / "dst", tmp_path / "outside"
    for d in ("a/b", "c"):
        (root / d).mkdir(parents=True)
    (outside / "b").mkdir(parents=True)
    (root / "l").symlink_to(outside)
    broot = os.fsencode(root)
    with fsio.sharing_dirs():
        os.close(fsio.open_dir(broot, b"a/b", source=False))
        for rel in (b"l/b", b"l", b"c/nope"):
            with pytest.raises(OSError):
                fsio.open_dir(broot, rel, source=False)
        assert _ino(fsio.open_dir(broot, b"a/b", source=False)) == (root / "a/b").stat().st_ino
        with fsio.sharing_dirs():  # nested: the same scope
            assert _ino(fsio.open_dir(broot, b"c", source=False)) == (root / "c").stat().st_ino
        assert fsio._shared.chains is not None
    assert fsio._shared.chains is None


def test_copy_file_range_is_not_tried_again_between_filesystems_where_it_failed(tmp_path, monkeypatch):
    """Between two filesystems where ``copy_file_range`` fails with EXDEV (this test's directory and a tmpfs
    of /dev/shm), the first file finds out and the next ones go straight to the next method, with the same
    data; without the devices, every file tries it again."""
    import errno
    import tempfile

    attempts: list[int] = []
    real = os.copy_file_range

    def counted(*args, **kw):
        try:
            return real(*args, **kw)
        except OSError as exc:
            attempts.append(exc.errno)
            raise

    monkeypatch.setattr(os, "copy_file_range", counted)
    monkeypatch.setattr(fsio, "_cross", set())
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        data = os.urandom(20000)
        (tmp_path / "src").write_bytes(data)
        fin = os.open(tmp_path / "src", os.O_RDONLY)
        try:
            dev_in = os.fstat(fin).st_dev
            for i, devices in enumerate([True, True, True, None, None]):
                fout = os.open(os.path.join(shm, f"out{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    pair = (dev_in, os.fstat(fout).st_dev) if devices else None
                    assert fsio.copy_data(fin, fout, len(data), devices=pair) == len(data)
                finally:
                    os.close(fout)
                assert Path(shm, f"out{i}").read_bytes() == data
        finally:
            os.close(fin)
    assert attempts == [errno.EXDEV] * 3, "once with the devices known, then once per file without them"


def test_a_directory_is_known_a_leaf_by_its_link_count_and_nothing_else_is(tmp_path: Path) -> None:
    (tmp_path / "leaf").mkdir()
    (tmp_path / "leaf" / "file").write_bytes(b"x")
    (tmp_path / "parent" / "child").mkdir(parents=True)
    (tmp_path / "to-leaf").symlink_to("leaf")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fsio.leaf_dir(fd, "leaf") and fsio.leaf_dir(fd, b"parent/child")
        assert not fsio.leaf_dir(fd, "parent")  # a subdirectory: 3 links
        assert not fsio.leaf_dir(fd, "to-leaf")  # not followed: a symlink has 1 link
        assert not fsio.leaf_dir(fd, "gone")  # cannot be told
    finally:
        os.close(fd)
