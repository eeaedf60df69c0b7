"""The Lustre layer through the C stand-in of liblustreapi (tests/lustre_standin, built by the fixture).

The stand-in exports the liblustreapi symbols cmover binds, with the real prototypes and return
conventions, keeps layouts as real lov_user_md / lov_comp_md blobs in ``trusted.lov`` of ordinary files,
hands out layout handles above 4 GiB and aborts on a bogus handle. Layout blobs are checked here with
an independent decoder (tests/support/lustre_blob.py). What real Lustre does that the stand-in does not is
listed in tests/lustre_standin/README.md.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support import lustre_blob
from support.lustre import LustreEnv
from support.snap import compare_trees

from cmover import lustre
from cmover.core.counters import C
from cmover.lustre import abi, llapi
from cmover.lustre.base import PosixFs
from cmover.lustre.fs import LustreFs
from cmover.lustre.layout import ALL_OSTS, EOF, Component, Layout

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tests" / "_build" / "lustre"
M = 1 << 20


PLAIN = Layout((Component(stripe_count=6, stripe_size=4 * M, pool="fast"),))
PFL = Layout((Component(0, 4 * M, stripe_count=1, stripe_size=M),
              Component(4 * M, 64 * M, stripe_count=2, stripe_size=M),
              Component(64 * M, EOF, stripe_count=ALL_OSTS, stripe_size=4 * M)), composite=True)


# -- the binding ------------------------------------------------------------------------------------

def test_probe_and_counts(lenv):
    info = lustre.probe(os.fsencode(lenv.dst))
    assert (info.lustre, info.handled, info.fsname, info.ost_count, info.mdt_count) == (True, True, "dstfs", 4, 4)
    assert info.mount == os.fsencode(lenv.dst)
    assert lustre.probe(os.fsencode(lenv.dst / "not-yet")).fsname == "dstfs"  # a target root to be created
    plain = lustre.probe(os.fsencode(lenv.plain))
    assert not plain.handled and "not on Lustre" in plain.note
    assert isinstance(lustre.get_fs(os.fsencode(lenv.src), os.fsencode(lenv.plain), "keep", False, Counter()),
                      PosixFs)


def test_handles_live_above_4gib_and_every_function_is_typed(lenv):
    lib = lenv.lib
    h = lib._fn.llapi_layout_alloc()
    try:
        assert h > 1 << 32  # a binding that let ctypes return int would have cut it
    finally:
        lib._fn.llapi_layout_free(h)
    for name in abi.CORE:
        fn = getattr(lib._fn, name)
        assert fn.argtypes is not None, name
    assert lib.composite and "llapi_dir_create" in lib.caps
    assert ctypes.sizeof(abi.StripeParam) == 32  # the fixed part of struct llapi_stripe_param on LP64


def test_plain_layout_round_trip_and_binary_format(lenv):
    f = lenv.src / "f"
    lenv.make_file(f, PLAIN)
    got = lenv.layout(f)
    assert not got.composite and len(got.components) == 1
    c = got.components[0]
    assert (c.stripe_count, c.stripe_size, c.pool, c.pattern) == (6, 4 * M, "fast", "raid0")
    assert len(c.ost_indices) == 6 and len(set(c.ost_indices)) == 6
    blob = lenv.blob(f)
    assert isinstance(blob, lustre_blob.Plain)
    assert (blob.magic, blob.stripe_count, blob.stripe_size, blob.pool) == (lustre_blob.LOV_MAGIC_V3, 6, 4 * M, "fast")
    assert blob.osts == list(c.ost_indices)


def test_pfl_layout_round_trip_and_binary_format(lenv):
    f = lenv.src / "pfl"
    lenv.make_file(f, PFL)
    got = lenv.layout(f)
    assert got.composite
    assert [(c.start, c.end, c.stripe_count, c.stripe_size) for c in got.components] == [
        (0, 4 * M, 1, M), (4 * M, 64 * M, 2, M), (64 * M, EOF, ALL_OSTS, 4 * M)]
    entries = lenv.blob(f)
    assert isinstance(entries, list) and len(entries) == 3
    assert entries[0].flags & lustre_blob.LCME_FL_INIT and len(entries[0].blob.osts) == 1
    assert not entries[2].flags & lustre_blob.LCME_FL_INIT and entries[2].blob.stripe_count == 0xFFFF


def test_file_without_layout_reads_as_default(lenv):
    f = lenv.src / "nolayout"
    f.write_bytes(b"abc")
    assert lenv.layout(f).is_default


def test_errors_become_oserror_with_the_path(lenv):
    lib = lenv.lib
    f = lenv.src / "f"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError) as ei:
        lib.obd_count(os.fsencode(f), mdt=False)
    assert ei.value.filename == str(f)
    os.setxattr(f, "trusted.lov", b"\xd0\x0b\xee\x0b" + b"\0" * 60)  # unknown magic
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as ei2:
            lib.read_layout(fd, os.fsencode(f))
    finally:
        os.close(fd)
    assert ei2.value.errno == errno.EPROTO and ei2.value.filename == str(f)
    g = lenv.plain / "g"
    g.write_bytes(b"x")
    fd = os.open(g, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as ei3:
            lib.read_layout(fd)
    finally:
        os.close(fd)
    assert ei3.value.errno == errno.ENOTTY


def test_library_messages_are_switched_off(lenv):
    lenv.lib  # noqa: B018 - loading it is the point
    assert lenv.call_lines("llapi_msg_set_level")[0].endswith("level=0")


# -- creating files under each policy ---------------------------------------------------------------

def _copy_one(lenv: LustreEnv, name: str, policy: str, tally: Counter | None = None) -> Path:
    tally = tally if tally is not None else Counter()
    fs = lenv.fs(policy, tally=tally)
    assert isinstance(fs, LustreFs)
    sfd = os.open(lenv.src / name, os.O_RDONLY)
    dfd = os.open(lenv.dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = fs.create_file(dfd, name, sfd)
        os.write(out, b"data")
        os.close(out)
    finally:
        os.close(sfd)
        os.close(dfd)
    return lenv.dst / name


def test_keep_caps_count_keeps_size_and_pool(lenv):
    lenv.make_file(lenv.src / "f", PLAIN)
    tally: Counter = Counter()
    got = lenv.layout(_copy_one(lenv, "f", "keep", tally)).components[0]
    assert (got.stripe_count, got.stripe_size, got.pool) == (4, 4 * M, "fast")  # 6 capped to the target's 4 OSTs
    assert tally == Counter({C.LAYOUTS_SET: 1})
    applied = lenv.call_lines("llapi_layout_file_open")
    assert applied and "/proc/self/fd/" in applied[-1]


def test_keep_rebuilds_pfl_and_never_copies_ost_indices(lenv):
    lenv.make_file(lenv.src / "pfl", PFL)
    out = _copy_one(lenv, "pfl", "keep")
    got = lenv.layout(out)
    assert [(c.start, c.end, c.stripe_count, c.stripe_size) for c in got.components] == [
        (0, 4 * M, 1, M), (4 * M, 64 * M, 2, M), (64 * M, EOF, ALL_OSTS, 4 * M)]
    # The source's OSTs were chosen by the source filesystem; the target picks its own, and the offsets
    # sent carry no index (0xffff), which is what keeps PFL copies off OST 0.
    for entry in lenv.blob(out):
        assert entry.blob.offset_or_gen in (0, 0xFFFF)
        assert all(o < 4 for o in entry.blob.osts)


def test_classic_policy(lenv):
    lenv.make_file(lenv.src / "narrow", Layout((Component(stripe_count=3, stripe_size=8 * M, pool="fast"),)))
    lenv.make_file(lenv.src / "wide", Layout((Component(stripe_count=ALL_OSTS),)))
    narrow = lenv.layout(_copy_one(lenv, "narrow", "classic")).components[0]
    assert (narrow.stripe_count, narrow.stripe_size, narrow.pool) == (3, M, None)  # size, pool: target default
    assert lenv.layout(_copy_one(lenv, "wide", "classic")).components[0].stripe_count == 4  # all 4 OSTs


def test_target_default_requests_nothing(lenv):
    lenv.make_file(lenv.src / "f", PLAIN)
    before = len(lenv.call_lines("llapi_layout_file_open"))
    tally: Counter = Counter()
    out = _copy_one(lenv, "f", "target-default", tally)
    assert len(lenv.call_lines("llapi_layout_file_open")) == before
    assert not tally and out.read_bytes() == b"data"


def test_missing_pool_keeps_count_and_size_and_is_reported_once(lenv, monkeypatch, caplog):
    monkeypatch.setenv("STANDIN_FS", lenv.fs_env(dst_pools="other"))
    lenv.make_file(lenv.src / "a", PLAIN)
    lenv.make_file(lenv.src / "b", PLAIN)
    lustre.reset()
    monkeypatch.setattr("cmover.lustre.fs._warned", set())
    tally: Counter = Counter()
    with caplog.at_level(logging.WARNING, logger="cmover.lustre.fs"):
        for name in ("a", "b"):
            got = lenv.layout(_copy_one(lenv, name, "keep", tally)).components[0]
            assert (got.stripe_count, got.stripe_size, got.pool) == (4, 4 * M, None)
    assert tally[C.LAYOUT_MISMATCH] == 2 and not tally[C.LAYOUTS_SET]
    assert len([r for r in caplog.records if "asked for layout" in r.getMessage()]) == 1


def test_restricted_setstripe_is_counted_not_fatal(lenv, monkeypatch):
    lenv.make_file(lenv.src / "f", Layout((Component(stripe_count=2, stripe_size=2 * M),)))
    monkeypatch.setenv("STANDIN_IGNORE_SETSTRIPE", "1")
    tally: Counter = Counter()
    out = _copy_one(lenv, "f", "keep", tally)
    assert tally[C.LAYOUT_MISMATCH] == 1 and out.read_bytes() == b"data"


def test_target_without_dom(lenv, monkeypatch):
    dom = Layout((Component(0, M, pattern="mdt", stripe_size=M), Component(M, EOF, stripe_count=2, stripe_size=M)),
                 composite=True)
    lenv.make_file(lenv.src / "dom", dom)
    assert lenv.layout(lenv.src / "dom").components[0].pattern == "mdt"
    assert lenv.layout(_copy_one(lenv, "dom", "keep")).components[0].pattern == "mdt"
    monkeypatch.setenv("STANDIN_NO_DOM", "1")
    (lenv.dst / "dom").unlink()
    tally: Counter = Counter()
    out = _copy_one(lenv, "dom", "keep", tally)
    assert tally[C.LAYOUT_MISMATCH] == 1 and out.read_bytes() == b"data"


def test_chunk_alignment_is_the_stripe_size(lenv):
    lenv.make_file(lenv.src / "f", Layout((Component(stripe_count=2, stripe_size=3 * 65536),)))
    out = _copy_one(lenv, "f", "keep")
    fs = lenv.fs()
    fd = os.open(out, os.O_RDONLY)
    try:
        assert fs.stripe_size(fd) == 3 * 65536
    finally:
        os.close(fd)


# -- directories ------------------------------------------------------------------------------------

def test_directory_default_layouts(lenv, make_spec, run_copy):
    lenv.make_dir(lenv.src / "striped", Layout((Component(stripe_count=2, stripe_size=2 * M),)))
    lenv.make_dir(lenv.src / "plain")
    lenv.make_dir(lenv.src / "pfl", PFL)
    spec = make_spec(src_root=os.fsencode(lenv.src), dst_root=os.fsencode(lenv.dst))
    res = run_copy(spec, fs=lambda tally: lenv.fs(tally=tally))
    assert not res.failures
    got = lenv.layout(lenv.dst / "striped").components[0]
    assert (got.stripe_count, got.stripe_size) == (2, 2 * M)
    assert lenv.layout(lenv.dst / "plain").is_default
    assert lenv.layout(lenv.dst / "pfl").composite
    assert res.tally[C.LAYOUTS_SET] == 2
    again = run_copy(spec, fs=lambda tally: lenv.fs(tally=tally))
    assert not again.tally[C.LAYOUTS_SET] and not again.tally[C.LAYOUT_MISMATCH]  # idempotent


def test_mdt_round_robin_for_first_level_directories(lenv, make_spec, run_copy):
    for i in range(6):
        (lenv.src / f"top{i}" / "deep").mkdir(parents=True)
    spec = make_spec(src_root=os.fsencode(lenv.src), dst_root=os.fsencode(lenv.dst), mds_striped=True,
                     mdt_list=(0, 1, 2, 3))
    res = run_copy(spec, fs=lambda tally: lenv.fs(tally=tally))
    assert not res.failures and res.tally[C.DIRS_PLACED] == 6
    names = sorted(os.listdir(lenv.src), key=lambda n: os.listdir(lenv.src).index(n))
    mdts = [lenv.mdt(lenv.dst / n) for n in names]
    assert mdts == [0, 1, 2, 3, 0, 1]
    for n, m in zip(names, mdts, strict=True):
        assert lenv.mdt(lenv.dst / n / "deep") == m  # deeper directories inherit


def test_mdt_minus_one_leaves_it_to_the_filesystem(lenv, make_spec, run_copy):
    (lenv.src / "a").mkdir()
    spec = make_spec(src_root=os.fsencode(lenv.src), dst_root=os.fsencode(lenv.dst), mds_striped=True,
                     mdt_list=(-1,))
    res = run_copy(spec, fs=lambda tally: lenv.fs(tally=tally))
    assert res.tally[C.DIRS_PLACED] == 1
    assert any("offset=-1" in ln for ln in lenv.call_lines("llapi_dir_create"))


def test_mdt_placement_refused_falls_back_to_mkdir(lenv, make_spec, run_copy, monkeypatch):
    monkeypatch.setenv("STANDIN_MKDIR_EPERM", "1")
    (lenv.src / "a").mkdir()
    (lenv.src / "b").mkdir()
    spec = make_spec(src_root=os.fsencode(lenv.src), dst_root=os.fsencode(lenv.dst), mds_striped=True,
                     mdt_list=(1, 2))
    res = run_copy(spec, fs=lambda tally: lenv.fs(tally=tally))
    assert not res.failures and res.tally[C.MDT_MISMATCH] == 2 and not res.tally[C.DIRS_PLACED]
    assert (lenv.dst / "a").is_dir() and (lenv.dst / "b").is_dir()


# -- restripe ---------------------------------------------------------------------------------------

def test_restripe_rewrites_only_files_with_another_layout(lenv, make_spec, run_copy):
    lenv.make_file(lenv.src / "f", Layout((Component(stripe_count=2, stripe_size=2 * M),)), data=b"f" * 5000)
    lenv.make_file(lenv.src / "g", None, data=b"g" * 10)
    spec = make_spec(src_root=os.fsencode(lenv.src), dst_root=os.fsencode(lenv.dst), layout="target-default")
    run_copy(spec, fs=lambda tally: lenv.fs("target-default", tally=tally))
    assert lenv.layout(lenv.dst / "f").components[0].stripe_count != 2
    res = run_copy(spec, fs=lambda tally: lenv.fs("keep", restripe=True, tally=tally))
    assert res.tally[C.RESTRIPED] == 1 and res.tally[C.SKIPPED] == 1
    assert lenv.layout(lenv.dst / "f").components[0].stripe_count == 2
    assert compare_trees(lenv.src, lenv.dst, atimes=True) == []
    again = run_copy(spec, fs=lambda tally: lenv.fs("keep", restripe=True, tally=tally))
    assert not again.tally[C.RESTRIPED] and again.tally[C.SKIPPED] == 2


# -- fallback ---------------------------------------------------------------------------------------

def test_missing_library_means_posix_and_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(llapi.ENV_LIBRARY, str(tmp_path / "nope.so"))
    lustre.reset()
    try:
        fs = lustre.get_fs(os.fsencode(tmp_path), os.fsencode(tmp_path / "t"), "keep", False, Counter())
        assert isinstance(fs, PosixFs)
        line = lustre.describe(os.fsencode(tmp_path), os.fsencode(tmp_path / "t"), "keep")
        assert line.startswith("Lustre layouts and MDT placement not handled") and "nope.so" in line
    finally:
        lustre.reset()


def test_a_path_off_lustre_with_no_library_named_searches_for_none(tmp_path, monkeypatch):
    """The kernel says "not Lustre" and no library is named: the probe answers without loading or looking for
    liblustreapi (a search through the loader's directories, about a hundred failed opens, for nothing)."""
    monkeypatch.delenv(llapi.ENV_LIBRARY, raising=False)
    lustre.reset()
    try:
        info = lustre.probe(os.fsencode(tmp_path))
        assert (info.lustre, info.handled, info.note) == (False, False, f"{tmp_path} is not on Lustre")
        assert llapi._loaded is None
        assert isinstance(lustre.get_fs(os.fsencode(tmp_path), os.fsencode(tmp_path), "keep", False, Counter()),
                          PosixFs)
        assert lustre.get_hsm(os.fsencode(tmp_path), os.fsencode(tmp_path)) is None and llapi._loaded is None
        # Named (config's LUSTREAPI), the library is asked even off Lustre: that is how the stand-in answers.
        lustre.reset()
        assert "nope.so" in lustre.probe(os.fsencode(tmp_path), str(tmp_path / "nope.so")).note
        assert llapi._loaded is not None
    finally:
        lustre.reset()


def _run_py(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT, text=True,
                          capture_output=True, timeout=120)


def test_legacy_library_plain_layouts_only(lenv, standin_build):
    """A pre-2.10 library (no PFL symbols): plain layouts work, a PFL source falls back to the default."""
    lenv.make_file(lenv.src / "plain", PLAIN)
    lenv.make_file(lenv.src / "pfl", PFL)
    code = f"""
import os, json
from collections import Counter
from cmover import lustre
from cmover.lustre import llapi
lib, how = llapi.load()
out = {{"caps": sorted(lib.caps), "composite": lib.composite}}
for name in ("plain", "pfl"):
    tally = Counter()
    fs = lustre.get_fs({bytes(os.fsencode(lenv.src))!r}, {bytes(os.fsencode(lenv.dst))!r}, "keep", False, tally)
    sfd = os.open({str(lenv.src)!r} + "/" + name, os.O_RDONLY)
    dfd = os.open({str(lenv.dst)!r}, os.O_RDONLY | os.O_DIRECTORY)
    fd = fs.create_file(dfd, name, sfd)
    os.write(fd, b"x"); os.close(fd)
    out[name] = dict(tally)
print(json.dumps(out))
"""
    res = _run_py(code, {llapi.ENV_LIBRARY: str(standin_build / "legacy" / "liblustreapi.so.1")})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["caps"] == [] and out["composite"] is False
    assert out["plain"] == {C.LAYOUTS_SET: 1}
    assert out["pfl"] == {C.LAYOUT_MISMATCH: 1}


def test_truncated_handle_would_abort(standin_build, tmp_path):
    """The trap is real: a binding without restype=c_void_p gets a cut pointer and the stand-in aborts."""
    code = f"""
import ctypes
lib = ctypes.CDLL({str(standin_build / 'liblustreapi.so.1')!r})
h = lib.llapi_layout_alloc()          # restype left as int: the pointer is cut to 32 bits
lib.llapi_layout_free(ctypes.c_void_p(h & 0xffffffff))
"""
    res = _run_py(code, {})
    assert res.returncode != 0


# -- the whole copy pass with the stand-in loaded ---------------------------------------------------

def test_embedded_copy_pass_and_lustre_info(lenv, tmp_path):
    for i in range(3):
        d = lenv.src / f"d{i}"
        lenv.make_dir(d, Layout((Component(stripe_count=2),)) if i == 0 else None)
        for j in range(20):
            lenv.make_file(d / f"f{j}", PLAIN if j % 2 else PFL, data=os.urandom(3000 + j))
    (lenv.src / "d1" / "link").symlink_to("f1")
    # Copied in chunks: 1 MiB chunks become 4 MiB, the stripe size of its target layout.
    lenv.make_file(lenv.src / "d2" / "huge", PLAIN, data=os.urandom(9 * M))
    env = {**os.environ, "CMOVER_CONFIG": str(tmp_path / "config.py")}
    (tmp_path / "config.py").write_text('LOG_DIR = "log"\n')
    cmd = [sys.executable, "-m", "cmover", "copy", "-j", "2", "-q", "--json", "--chunk-threshold", "8M",
           "--chunk-size", "1M", str(lenv.src), str(lenv.dst / "copy")]
    res = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Lustre layouts: keep from source srcfs (8 OSTs) to target dstfs (4 OSTs, 4 MDTs)" in res.stderr
    totals = json.loads(res.stdout)["totals"]
    assert totals[C.COPIED] == 62 and totals[C.LAYOUTS_SET] == 62 and totals[C.DIRS_PLACED] == 3
    assert (totals[C.CHUNKED], totals[C.CHUNKS]) == (1, 3)
    assert lenv.layout(lenv.dst / "copy" / "d2" / "huge").components[0].stripe_size == 4 * M
    assert compare_trees(lenv.src, lenv.dst / "copy", atimes=True) == []
    assert lenv.layout(lenv.dst / "copy" / "d0" / "f1").components[0].stripe_count == 4
    assert lenv.layout(lenv.dst / "copy" / "d0" / "f2").composite
    assert sorted(lenv.mdt(lenv.dst / "copy" / f"d{i}") for i in range(3)) == [0, 1, 2]
    info = subprocess.run([sys.executable, "-m", "cmover", "lustre-info", str(lenv.dst / "copy" / "d0" / "f2")],
                          env=env, cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "fsname     dstfs" in info.stdout and "OSTs       4" in info.stdout
    assert "layout     PFL: [0, 4M) count=1 size=1M" in info.stdout


def test_lustre_info_outside_lustre(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != llapi.ENV_LIBRARY}
    res = subprocess.run([sys.executable, "-m", "cmover", "lustre-info", "--json", str(tmp_path)], env=env,
                         cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["handled"] is False and out["layout"] is None and out["note"]
    bad = subprocess.run([sys.executable, "-m", "cmover", "lustre-info", str(tmp_path / "missing")], env=env,
                         cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr

