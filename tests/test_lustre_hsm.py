"""HSM state, import and FIDs: the stand-in's binary formats and return conventions, through the binding.

``trusted.hsm`` is checked byte for byte against ``struct hsm_attrs`` (24 bytes, little-endian), FIDs
against the stand-in's documented derivation from inode number and generation (see
tests/lustre_standin/standin_hsm.c).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support.lustre import LustreEnv, expected_fid

from cmover import lustre
from cmover.lustre import hsm as H
from cmover.lustre import llapi

FS_IOC_GETVERSION = 0x80087601
TIB = 1 << 40


def _hsm(lenv: LustreEnv) -> H.Hsm:
    h = H.bind(lenv.lib)
    assert h is not None
    return h


def set_hsm(path: Path, flags: int, archive_id: int) -> None:
    os.setxattr(path, "trusted.hsm", struct.pack("<IIQQ", 0, flags, archive_id, 0))


def test_fids_are_stable_and_derived_from_inode_and_generation(lenv):
    h = _hsm(lenv)
    a, b = lenv.src / "a", lenv.src / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    fd = os.open(a, os.O_RDONLY)
    try:
        fa = h.fid(fd)
    finally:
        os.close(fd)
    assert fa == expected_fid(a)
    fd = os.open(b, os.O_PATH)  # O_PATH takes no ioctl: the stand-in asks a real descriptor
    try:
        fb = h.fid(fd)
    finally:
        os.close(fd)
    assert fb == expected_fid(b) and fb != fa
    os.rename(a, lenv.src / "renamed")
    fd = os.open(lenv.src / "renamed", os.O_RDONLY)
    try:
        assert h.fid(fd) == fa  # a rename keeps the FID
    finally:
        os.close(fd)
    # path2fid: a symlink's own FID (generation 0), the same derivation.
    (lenv.src / "ln").symlink_to("renamed")
    fid = H.LuFid()
    assert lenv.lib._lib.llapi_path2fid(os.fsencode(lenv.src / "ln"), ctypes_ref(fid)) == 0
    assert H.fid_text(fid) == expected_fid(lenv.src / "ln")
    # Off Lustre: -ENOTTY; missing: -ENOENT (negative errno, the fid zeroed).
    (lenv.plain / "p").write_bytes(b"")
    assert lenv.lib._lib.llapi_path2fid(os.fsencode(lenv.plain / "p"), ctypes_ref(fid)) == -errno.ENOTTY
    assert (fid.f_seq, fid.f_oid, fid.f_ver) == (0, 0, 0)
    assert lenv.lib._lib.llapi_path2fid(os.fsencode(lenv.src / "nope"), ctypes_ref(fid)) == -errno.ENOENT


def ctypes_ref(obj):
    import ctypes

    return ctypes.byref(obj)


def test_state_round_trip_in_the_real_hsm_attrs_format(lenv):
    h = _hsm(lenv)
    f = lenv.src / "f"
    f.write_bytes(b"data")
    fd = os.open(f, os.O_RDWR)
    try:
        assert h.state(fd) == H.NONE  # never archived: state 0, not an error
        h.set_state(fd, H.HS_EXISTS | H.HS_ARCHIVED | H.HS_NORELEASE, 0, 7)
        assert os.getxattr(f, "trusted.hsm") == struct.pack("<IIQQ", 0, 0x19, 7, 0)
        assert h.state(fd) == H.HsmState(0x19, 7)
        h.set_state(fd, H.HS_DIRTY, 0, 0)  # archive id 0: unchanged
        assert h.state(fd) == H.HsmState(0x1B, 7)
        # The MDT's invariants: released needs archived and not dirty; lost needs archived.
        with pytest.raises(OSError) as exc:
            h.set_state(fd, H.HS_RELEASED, 0, 0)
        assert exc.value.errno == errno.EINVAL and "llapi_hsm_state_set_fd" in str(exc.value)
        with pytest.raises(OSError) as exc:
            h.set_state(fd, 0x80, 0, 0)  # a PCC bit: outside a 2.11 server's flags mask
        assert exc.value.errno == errno.EINVAL
        assert h.state(fd) == H.HsmState(0x1B, 7)  # nothing saved by a refused change
    finally:
        os.close(fd)
    # Without HS_EXISTS the MDT saves nothing and says success.
    g = lenv.src / "g"
    g.write_bytes(b"")
    fd = os.open(g, os.O_RDWR)
    try:
        h.set_state(fd, H.HS_NORELEASE, 0, 3)
        assert h.state(fd) == H.NONE and "trusted.hsm" not in os.listxattr(g)
    finally:
        os.close(fd)
    # Failure paths: a directory and a non-Lustre file say ENOTTY; a bad length is EPROTO.
    for path in (lenv.src, lenv.plain):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as exc:
                h.state(fd)
            assert exc.value.errno == errno.ENOTTY
        finally:
            os.close(fd)
    os.setxattr(g, "trusted.hsm", b"\0" * 16)
    with pytest.raises(OSError) as exc:
        h.state_at(os.open(lenv.src, os.O_RDONLY), "g")
    assert exc.value.errno == errno.EPROTO


def test_flags_beyond_the_user_mask_need_cap_sys_admin(lenv, tmp_path):
    f = lenv.src / "f"
    f.write_bytes(b"x")
    set_hsm(f, H.HS_EXISTS | H.HS_ARCHIVED, 1)
    script = tmp_path / "child.py"
    script.write_text(
        "import os, sys\n"
        "from cmover.lustre import llapi, hsm\n"
        "h = hsm.bind(llapi.load()[0])\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    h.set_state(fd, hsm.HS_RELEASED, 0, 0)\n"
        "except OSError as e:\n"
        "    print(e.errno)\n")
    out = subprocess.run(["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable,
                          str(script), str(f)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == str(errno.EPERM), out
    assert os.getxattr(f, "trusted.hsm") == struct.pack("<IIQQ", 0, 0x09, 1, 0)


def test_import_makes_a_released_stub_with_a_new_fid(lenv):
    h = _hsm(lenv)
    src = lenv.src / "big"
    fd = os.open(src, os.O_WRONLY | os.O_CREAT, 0o4751)
    os.truncate(fd, TIB)
    os.fchown(fd, 1234, 5678)
    os.fchmod(fd, 0o4751)
    os.utime(fd, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.close(fd)
    sfd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    dfd = os.open(lenv.dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        new = h.import_stub(dfd, "stub", sfd, 5, 4 << 20, 2, "fast")
        st = os.lstat(lenv.dst / "stub")
        assert (st.st_size, st.st_uid, st.st_gid) == (TIB, 1234, 5678)
        probe = os.open(lenv.dst / "stub", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as exc:  # no data at all (the xattr block is all it occupies)
                os.lseek(probe, 0, os.SEEK_DATA)
            assert exc.value.errno == errno.ENXIO
        finally:
            os.close(probe)
        assert stat.S_IMODE(st.st_mode) == 0o751  # set-id bits are dropped by the import
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_600_000_000_123_456_789, 1_500_000_000_987_654_321)
        assert new == expected_fid(lenv.dst / "stub")
        assert h.state_at(dfd, "stub") == H.HsmState(H.HS_EXISTS | H.HS_ARCHIVED | H.HS_RELEASED, 5)
        # A released V3 layout: pattern RAID0|RELEASED, the count and size asked, the pool, no objects.
        blob = os.getxattr(lenv.dst / "stub", "trusted.lov")
        magic, pattern = struct.unpack_from("<II", blob)
        size, count = struct.unpack_from("<IH", blob, 24)
        assert (magic, pattern, size, count, blob[32:36], len(blob)) == \
            (0x0BD30BD0, 0x80000001, 4 << 20, 2, b"fast", 48)
        assert lenv.layout(lenv.dst / "stub").components[0].stripe_count == 2  # readable by the layout API
        with pytest.raises(FileExistsError):
            h.import_stub(dfd, "stub", sfd, 5, 0, 0, None)
        pdfd = os.open(lenv.plain, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(OSError) as exc:
                h.import_stub(pdfd, "stub", sfd, 5, 0, 0, None)
            assert exc.value.errno == errno.ENOTTY
        finally:
            os.close(pdfd)
    finally:
        os.close(sfd)
        os.close(dfd)
    calls = lenv.call_lines("llapi_hsm_import")
    assert "archive=5 stripe_size=4194304 stripe_offset=-1 stripe_count=2 pattern=0x0 pool=fast" in calls[0]
    assert f"size={TIB} uid=1234 gid=5678 mode=4751" in calls[0]


def test_legacy_library_has_no_hsm(lenv, standin_build, monkeypatch):
    monkeypatch.setenv(llapi.ENV_LIBRARY, str(standin_build / "legacy" / "liblustreapi.so.1"))
    lustre.reset()
    lib, _ = llapi.load()
    assert lib is not None and H.bind(lib) is None


# -- the copy pass's decision (pure) ----------------------------------------------------------------

def test_hsm_decisions():
    from cmover.engine.hsmcopy import Act, decide

    arch, rel, dirty, lost = H.HS_EXISTS | H.HS_ARCHIVED, H.HS_RELEASED, H.HS_DIRTY, H.HS_LOST
    stub = H.HsmState(arch | rel, 2)
    marked = H.HsmState(arch, 2)
    cases = [
        # policy, source state, target holds the same data, target state -> action
        ("import", H.NONE, False, None, Act.COPY),
        ("import", H.HsmState(H.HS_EXISTS, 2), False, None, Act.COPY),  # partly archived: not HSM's business
        ("import", H.HsmState(arch | rel | lost, 2), False, None, Act.LOST),
        ("recall", H.HsmState(arch | lost, 2), True, marked, Act.LOST),
        ("import", stub, False, None, Act.IMPORT),
        ("import", stub, True, stub, Act.KEEP),
        ("import", stub, True, H.HsmState(arch | rel, 3), Act.MARK),  # another archive: re-marked
        ("import", stub, True, H.NONE, Act.MARK),  # released since the last pass, the target holds the data
        ("recall", stub, False, None, Act.RECALL),
        ("recall", stub, True, None, Act.COPY),
        ("skip", stub, False, None, Act.SKIP),
        ("skip", stub, True, marked, Act.SKIP),
        ("import", marked, False, None, Act.COPY_MARK),
        ("import", marked, True, marked, Act.KEEP),
        ("import", marked, True, H.HsmState(arch | dirty, 2), Act.MARK),
        ("import", H.HsmState(arch | dirty, 2), False, None, Act.COPY),
        ("recall", marked, False, None, Act.COPY),
        ("skip", marked, False, None, Act.COPY),
    ]
    for policy, src, same, dst, want in cases:
        assert decide(policy, src, same, dst) is want, (policy, src, same, dst)


def test_rebind_list_command_reads_an_embedded_runs_file(tmp_path, monkeypatch, capsys):
    """``cmover hsm-rebind-list`` on a site without broker: the newest run's JSON-lines file, one pair per
    file (a file recorded twice keeps its last target FID), skipped files with --skipped; a bad id is exit 2."""
    from cmover.cli.main import main
    from cmover.core.hsmrecord import HsmRecord
    from cmover.state.hsmlist import HsmFile

    (tmp_path / "config.py").write_text(f'LOG_DIR = "{tmp_path / "log"}"\n')
    monkeypatch.setenv("CMOVER_CONFIG", str(tmp_path / "config.py"))
    monkeypatch.setenv("CMOVER_RABBITMQ_DIR", str(tmp_path / "no-broker"))
    files = HsmFile(tmp_path / "log")
    files.record("copy-1", [HsmRecord.now(b"a", "imported", "0x200000400:0x1:0x0", "0x200000401:0x9:0x0", 2),
                            HsmRecord.now(b"s\xff", "skipped", archive_id=3)])
    files.record("copy-1", [HsmRecord.now(b"b", "archived", "0x200000400:0x2:0x0", "0x200000401:0xa:0x0", 2),
                            HsmRecord.now(b"a", "imported", "0x200000400:0x1:0x0", "0x200000401:0xb:0x0", 2)])
    assert main(["hsm-rebind-list"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["0x200000400:0x1:0x0 0x200000401:0xb:0x0",
                                    "0x200000400:0x2:0x0 0x200000401:0xa:0x0"]
    assert "2 files to rebind in copy-1" in out.err
    assert main(["hsm-rebind-list", "--run", "copy-1", "--skipped"]) == 0
    assert capsys.readouterr().out.splitlines() == ["b's\\xff'"]  # a name that is not UTF-8, escaped
    assert main(["hsm-rebind-list", "--run", "../etc"]) == 2
    assert "is not a run id" in capsys.readouterr().err
