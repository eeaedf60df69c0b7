"""Identity maps (cmover.core.idmap): parsing and validation, ACL rewriting on real ACLs, the pass spec, the
copy decision with a map, and config.py / command-line resolution (cmover.core.settings, cmover.engine.planner)."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from cmover.core.errors import ConfigError, ConfinementError
from cmover.core.idmap import ACL_ACCESS, ACL_DEFAULT, NO_MAP, IdMap, from_config, parse_text, read_map_file
from cmover.core.passes import PassKind, PassSpec
from cmover.core.privileges import ALL, Privileges
from cmover.core.record import Record
from cmover.core.settings import from_mapping, load_settings
from cmover.engine.compare import Action, decide_copy, unchanged
from cmover.engine.planner import PassOptions, plan

FIX = "the fix"


# -- parsing and validation ---------------------------------------------------------------------------------

def test_pairs_text_parsed_sorted():
    assert parse_text("1001:5001, 1000:5000,", "--usermap", FIX) == ((1000, 5000), (1001, 5001))
    assert parse_text(" 7 : 8 ", "--usermap", FIX) == ((7, 8),)


@pytest.mark.parametrize("text, words", [
    ("1000:abc", ["'abc'", "not a numeric id"]),
    ("alice:5000", ["'alice'", "numeric"]),
    ("1000", ["neither FROM:TO pairs"]),
    ("", ["neither FROM:TO pairs"]),
    ("1000:5000,1000:6000", ["1000 is mapped twice", "1000:5000 and 1000:6000"]),
    ("1000:-5", ["'-5'", "not a numeric id"]),
    ("1000:4294967295", ["4294967295 is not a numeric id"]),
    ("1000:5000,,:7", ["':7' is not a FROM:TO pair"]),
    ("1:2:3", ["'2:3'", "not a numeric id"]),
])
def test_malformed_pairs_one_line_naming_the_problem(text, words):
    with pytest.raises(ConfigError) as ei:
        parse_text(text, "--usermap", FIX)
    msg = str(ei.value)
    assert msg.startswith("--usermap") and msg.endswith(FIX) and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_mapping_file_with_comments(tmp_path):
    f = tmp_path / "users.map"
    f.write_text("# site A -> site B\n1000:5000\n\n  1001 : 5001  # bob\n")
    want = ((1000, 5000), (1001, 5001))
    assert read_map_file(str(f), FIX) == want
    assert parse_text(f"@{f}", "--usermap", FIX) == want
    assert parse_text(str(f), "--usermap", FIX) == want
    assert parse_text("@users.map", "--usermap", FIX, base_dir=str(tmp_path)) == want
    f.write_text("1000:5000\nbob:5001\n")
    with pytest.raises(ConfigError, match=r"users.map:2: 'bob' in 'bob:5001' is not a numeric id"):
        parse_text(f"@{f}", "--usermap", FIX)
    f.write_text("1000:5000\n1000:5000\n")
    with pytest.raises(ConfigError, match="id 1000 is mapped twice"):
        parse_text(f"@{f}", "--usermap", FIX)
    with pytest.raises(ConfigError, match=r"cannot read mapping file .*missing.map: No such file"):
        parse_text(f"@{tmp_path}/missing.map", "--usermap", FIX)


def test_config_forms(tmp_path):
    (tmp_path / "g.map").write_text("100:200\n")
    want = ((1000, 5000), (1001, 5001))
    assert from_config({1001: 5001, 1000: 5000}, "UID_MAP", "") == want
    assert from_config(["1000:5000", (1001, 5001)], "UID_MAP", "") == want
    assert from_config("1000:5000,1001:5001", "UID_MAP", "") == want
    assert from_config("g.map", "GID_MAP", str(tmp_path)) == ((100, 200),)
    for bad, word in (({"1000": 5000}, "'1000' is not a numeric id"), ({True: 1}, "True is not a numeric id"),
                      ([1000], "1000 is not a FROM:TO pair"), ({1: 2.5}, "2.5 is not a numeric id")):
        with pytest.raises(ConfigError, match=word):
            from_config(bad, "UID_MAP", "")


def test_settings_read_maps_relative_to_config(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "groups.map").write_text("10:20\n")
    cfg = site / "config.py"
    cfg.write_text('UID_MAP = {1000: 5000}\nGID_MAP = "@groups.map"\n')
    s = load_settings(str(cfg))
    assert (s.uid_map, s.gid_map) == (((1000, 5000),), ((10, 20),))
    cfg.write_text('UID_MAP = {1000: 5000, 1001: "x"}\n')
    with pytest.raises(ConfigError, match=r"config.py: UID_MAP: 'x' is not a numeric id .*fix it in config.py"):
        load_settings(str(cfg))
    with pytest.raises(ConfigError, match="UID_MAP = 5 must be a dict or list or tuple or str"):
        from_mapping({"UID_MAP": 5})


def test_planner_takes_config_or_command_line_never_both(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "d"
    src.mkdir()
    base = from_mapping({"UID_MAP": {1: 2}})
    spec = plan(PassKind.COPY, base, str(src), str(dst))
    assert spec.idmap == IdMap(((1, 2),), ())
    spec = plan(PassKind.DIRTIME, from_mapping({}), str(src), str(dst), options=PassOptions(groupmap="3:4"))
    assert spec.idmap == IdMap((), ((3, 4),))
    with pytest.raises(ConfigError, match="UID_MAP is set in config.py and --usermap was given; use one of them"):
        plan(PassKind.COPY, base, str(src), str(dst), options=PassOptions(usermap="1:3"))
    # The other map is independent: config's UID_MAP with --groupmap is fine.
    spec = plan(PassKind.DELETE, base, str(src), str(dst), options=PassOptions(groupmap="3:4"))
    assert spec.idmap == IdMap(((1, 2),), ((3, 4),))


# -- the pass spec ------------------------------------------------------------------------------------------

def test_spec_carries_the_map_and_refuses_forged_ones():
    m = IdMap(((1000, 5000), (7, 7)), ((100, 200),))
    spec = PassSpec(run_id="copy-x", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d", idmap=m)
    d = spec.as_dict()
    assert d["idmap"] == {"uid": [7, 7, 1000, 5000], "gid": [100, 200]}
    assert PassSpec.from_dict(d) == spec and PassSpec.from_dict(d).idmap.uid(1000) == 5000
    plain = PassSpec(run_id="copy-x", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d")
    assert not plain.idmap and plain.idmap == NO_MAP
    old = plain.as_dict()
    del old["idmap"]  # a message of a version without maps
    assert PassSpec.from_dict(old) == plain
    for bad in ([1, 2], {"uid": [1]}, {"uid": [1, 2, 1, 3]}, {"gid": [1, -2]}, {"uid": [True, 1]},
                {"uid": "1:2"}, {"gid": [1, 2**32]}):
        with pytest.raises(ConfinementError, match="malformed pass spec"):
            PassSpec.from_dict({**d, "idmap": bad})


# -- owners: the record and the copy decision ---------------------------------------------------------------

def _rec(uid: int, gid: int, perm: int = 0o6755) -> Record:
    from cmover.core.record import Kind
    return Record(Kind.REG, perm, uid, gid, 10, 1, 2, 3, 4, 5, 1, 0, 8)


def test_record_mapped_and_decision_says_identical():
    m = IdMap(((1000, 5000),), ((100, 500),))
    src = _rec(1000, 100)
    assert m.record(src) == _rec(5000, 500)
    assert m.record(_rec(1, 2)) is not None and m.record(_rec(1, 2)) == _rec(1, 2)  # ids not in the map kept
    assert decide_copy(m.record(src), _rec(5000, 500)).action is Action.SKIP
    assert decide_copy(m.record(src), _rec(1000, 100)).action is Action.UPDATE_META  # the unmapped owner differs
    # A regular user who is uid 5000 in group 500 keeps the set-id bits of the mapped owner, not the source's.
    user = Privileges(uid=5000, groups=frozenset({500}), chown=False, fsetid=False, mknod=False, dac=False,
                      sys_admin=False, setfcap=False)
    assert decide_copy(m.record(src), _rec(5000, 500), user).action is Action.SKIP


@pytest.mark.parametrize("can", [ALL, Privileges(uid=5000, groups=frozenset({500}), chown=False, fsetid=False,
                                                 mknod=False, dac=False, sys_admin=False, setfcap=False)])
def test_unchanged_agrees_with_decide_copy_under_a_map(tmp_path, can):
    m = IdMap(((1000, 5000),), ((100, 500),))
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        p.write_bytes(b"x")
        os.utime(p, ns=(1, 2))
    os.chown(a, 1000, 100)
    for owner in ((5000, 500), (1000, 100), (5000, 100), (1, 500)):
        os.chown(b, *owner)
        for mode in (0o644, 0o2755):
            os.chmod(a, mode)
            os.chmod(b, mode)
            sa, sb = os.lstat(a), os.lstat(b)
            want = decide_copy(m.record(Record.from_stat(sa)), Record.from_stat(sb), can).action is Action.SKIP
            assert unchanged(sa, sb, can, m) is want, (owner, oct(mode))
            assert want is (owner == (5000, 500))


# -- POSIX ACLs ---------------------------------------------------------------------------------------------

def _setfacl(path: Path, *args: str) -> None:
    subprocess.run(["setfacl", *args, str(path)], check=True)


def _getfacl(path: Path) -> list[str]:
    out = subprocess.run(["getfacl", "-n", "-c", str(path)], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def test_acls_rewritten_in_kernel_format(tmp_path):
    """Real ACLs written by setfacl, rewritten, set back through the kernel (which validates them)."""
    m = IdMap(((4242, 5242), (4243, 5242), (9, 9)), ((4343, 100),))
    d = tmp_path / "d"
    d.mkdir()
    _setfacl(d, "-m", "u:4243:r--,u:4242:-w-,u:77:rwx,g:4343:r-x,g:50:r--")
    _setfacl(d, "-d", "-m", "u:4242:rwx,g:4343:r--")
    values = {ACL_ACCESS: os.getxattr(d, ACL_ACCESS), ACL_DEFAULT: os.getxattr(d, ACL_DEFAULT), "user.k": b"v"}
    out = m.xattrs(values)
    assert out["user.k"] == b"v" and values[ACL_ACCESS] == os.getxattr(d, ACL_ACCESS)  # input left as it was
    t = tmp_path / "t"
    t.mkdir()
    for name in (ACL_ACCESS, ACL_DEFAULT):
        os.setxattr(t, name, out[name])
    acl = _getfacl(t)
    # 4242 and 4243 meet on 5242: one entry, the union of -w- and r--; 50 and 77 kept; sorted by id.
    assert [e for e in acl if e.startswith(("user:", "group:"))] == [
        "user::rwx", "user:77:rwx", "user:5242:rw-", "group::r-x", "group:50:r--", "group:100:r-x"], acl
    assert "default:user:5242:rwx" in acl and "default:group:100:r--" in acl, acl
    # Nothing mapped in it: the very same object and bytes come back.
    assert NO_MAP.xattrs(values) is values
    assert IdMap(((1, 2),), ()).xattrs({"user.k": b"v"}) == {"user.k": b"v"}
    plain = values[ACL_ACCESS]
    assert IdMap(((1, 2),), ()).acl(plain) is plain


def test_malformed_acl_values_pass_through():
    m = IdMap(((1, 2),), ())
    for value in (b"", b"\x02\x00\x00", b"\x01\x00\x00\x00" + struct.pack("<HHI", 2, 7, 1),
                  b"\x02\x00\x00\x00" + b"\x02\x00\x07"):
        assert m.acl(value) == value
    good = b"\x02\x00\x00\x00" + struct.pack("<HHI", 2, 7, 1)
    assert m.acl(good) == b"\x02\x00\x00\x00" + struct.pack("<HHI", 2, 7, 2)
