"""cmover.core.passes: PassSpec wire round trip and validation, age cutoffs, the exclusions file."""

import json

import pytest
from kombu import serialization

from cmover.core.errors import ConfigError, ConfinementError
from cmover.core.passes import DeleteOptions, NoOptions, PassKind, PassSpec, age_cutoffs, new_run_id, read_excludes


def make_spec(**kw) -> PassSpec:
    base = dict(run_id="copy-1", kind=PassKind.COPY, src_root=b"/mnt/src", dst_root=b"/mnt/dst")
    base.update(kw)
    return PassSpec(**base)


FULL = make_spec(
    src_root=b"/mnt/caf\xe9 src", dst_root=b"/mnt/dst\nx", start=b"a/\xff\xfe",
    oldest_atime_ns=1_700_000_000_123_456_789, newest_mtime_ns=1_800_000_000_000_000_001,
    excludes=(b"scratch/tmp", b"caf\xe9/x", b"trailing ", b"nl\nname"), batch=7, inline_entries=0,
    inline_seconds=1.25, mds_striped=True, mdt_list=(2, 0, -1), max_deliveries=3, min_size=1, max_size=10 << 40,
)
DELETE = make_spec(kind=PassKind.DELETE, options=DeleteOptions(dry_run=True, max_delete=7, src_must_be_mount=True,
                                                               src_id=(64769, 2)))


@pytest.mark.parametrize("spec", [make_spec(), FULL, DELETE], ids=["defaults", "full", "delete"])
def test_round_trip(spec):
    assert PassSpec.from_dict(spec.as_dict()) == spec


def test_round_trip_through_kombu_json():
    ct, enc, data = serialization.dumps({"spec": FULL.as_dict()}, serializer="json")
    back = serialization.loads(data, ct, enc)["spec"]
    assert PassSpec.from_dict(back) == FULL
    assert PassSpec.from_dict(json.loads(json.dumps(FULL.as_dict()))) == FULL


def test_defaults_when_optional_keys_missing():
    d = {"run_id": "r", "kind": "copy", "src_root": "/s", "dst_root": "/d"}
    spec = PassSpec.from_dict(d)
    assert spec == PassSpec(run_id="r", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d")


def _with(**changes):
    d = make_spec().as_dict()
    d.update(changes)
    return d


def _without(key):
    d = make_spec().as_dict()
    del d[key]
    return d


@pytest.mark.parametrize("d", [
    None, [], "spec",
    _without("run_id"), _without("kind"), _without("src_root"), _without("dst_root"),
    _with(run_id=""), _with(run_id=5), _with(run_id="x" * 201),
    _with(kind="destroy"),
    _with(src_root="relative/src"), _with(dst_root="dst"), _with(src_root=""),
    _with(src_root="/mnt/src/"), _with(dst_root="/mnt/./dst"), _with(dst_root="/mnt/x/../dst"),
    _with(src_root="/mnt/a\0b"), _with(src_root={"b64": "!!"}), _with(src_root=1),
    _with(start="../x"), _with(start="/abs"), _with(start="a//b"),
    _with(excludes=["ok", ".."]), _with(excludes=["a/../../b"]), _with(excludes="a"), _with(excludes=["/etc"]),
    _with(excludes=[{"b64": "Li4="}]),  # b".." in base64
    _with(batch=True), _with(batch=0), _with(batch="10"), _with(batch=1.5),
    _with(oldest_atime_ns=False), _with(oldest_atime_ns=-1), _with(newest_mtime_ns=2.5),
    _with(inline_entries=True), _with(max_deliveries=0), _with(max_deliveries=True),
    _with(mdt_list=[0, True]), _with(mdt_list=[-2]), _with(mdt_list=0),
    _with(inline_seconds="soon"),
    _with(min_size=-1), _with(max_size="1G"), _with(max_size=True), _with(min_size=1.0),
    _with(min_size=11, max_size=10),
])
def test_from_dict_rejects_malformed(d):
    with pytest.raises(ConfinementError):
        PassSpec.from_dict(d)


def test_leaves_entries_out_names_every_filter():
    """The one place that says a pass may leave source entries out (then no proof of a complete target)."""
    assert make_spec().leaves_entries_out is False
    assert make_spec(kind=PassKind.DELETE, options=DeleteOptions(dry_run=True)).leaves_entries_out is False
    for kw in ({"excludes": (b"x",)}, {"oldest_atime_ns": 1}, {"newest_mtime_ns": 1}, {"min_size": 1},
               {"max_size": 1}):
        assert make_spec(**kw).leaves_entries_out is True, kw
        assert PassSpec.from_dict(make_spec(**kw).as_dict()).leaves_entries_out is True, kw
    # A spec from before the size window (no such keys): no bound.
    d = make_spec().as_dict()
    del d["min_size"], d["max_size"]
    assert PassSpec.from_dict(d) == make_spec()


def test_delete_options_on_the_wire():
    """The same "options" object as before options were typed: mixed versions read each other's specs."""
    assert DELETE.as_dict()["options"] == {"dry_run": True, "max_delete": 7, "src_must_be_mount": True,
                                           "src_id": [64769, 2]}
    assert make_spec(kind=PassKind.DELETE).as_dict()["options"] == {"dry_run": False, "max_delete": 0,
                                                                     "src_must_be_mount": False}
    assert make_spec().as_dict()["options"] == {}
    # Keys a newer version may add are ignored; a missing or null options object means the defaults.
    spec = PassSpec.from_dict({**DELETE.as_dict(), "options": {"dry_run": True, "later": [1]}})
    assert spec.options == DeleteOptions(dry_run=True)
    assert PassSpec.from_dict({**DELETE.as_dict(), "options": None}).options == DeleteOptions()
    del_d = DELETE.as_dict()
    del del_d["options"]
    assert PassSpec.from_dict(del_d).options == DeleteOptions()


def test_options_record_follows_the_pass_kind():
    assert make_spec().options == NoOptions() and make_spec(kind=PassKind.DELETE).options == DeleteOptions()
    assert DeleteOptions.of(DELETE).max_delete == 7
    with pytest.raises(TypeError):
        DeleteOptions.of(make_spec())
    with pytest.raises(TypeError):
        make_spec(kind=PassKind.DIRTIME, options=DeleteOptions())
    # A copy spec's delete keys are still checked (a forged message), then left out.
    assert PassSpec.from_dict(_with(options={"dry_run": True, "src_id": [1, 2]})).options == NoOptions()
    with pytest.raises(ConfinementError):
        PassSpec.from_dict(_with(options={"dry_run": "yes"}))


@pytest.mark.parametrize("options", [
    "x", 5, {"dry_run": "no"}, {"dry_run": 1}, {"src_must_be_mount": 0}, {"max_delete": -1},
    {"max_delete": "3"}, {"max_delete": True}, {"max_delete": 1.0}, {"src_id": 5}, {"src_id": [1]},
    {"src_id": [1, 2, 3]}, {"src_id": [1, "x"]}, {"src_id": [True, 1]}, {"src_id": (1, 2)},
])
def test_delete_options_rejected_as_strictly_as_ever(options):
    with pytest.raises(ConfinementError):
        PassSpec.from_dict({**DELETE.as_dict(), "options": options})


def test_from_dict_empty_mdt_list_means_no_placement():
    assert PassSpec.from_dict(_with(mdt_list=[])).mdt_list == ()


@pytest.mark.parametrize("field,value", [("layout", "stripe-all"), ("layout", 3), ("restripe", "yes"),
                                         ("restripe", 1)])
def test_from_dict_rejects_bad_layout_fields(field, value):
    with pytest.raises(ConfinementError):
        PassSpec.from_dict(_with(**{field: value}))


def test_layout_fields_round_trip():
    spec = PassSpec.from_dict(_with(layout="classic", restripe=True))
    assert (spec.layout, spec.restripe) == ("classic", True)
    assert PassSpec.from_dict(spec.as_dict()) == spec


def test_new_run_id_unique_and_prefixed():
    a, b = new_run_id(PassKind.COPY), new_run_id(PassKind.COPY)
    assert a != b and a.startswith("copy-") and new_run_id(PassKind.DELETE).startswith("delete-")


def test_age_cutoffs():
    now = 2_000_000_000_000_000_000
    assert age_cutoffs(0, 0, now) == (0, 0)
    assert age_cutoffs(10, 0, now) == (now - 10_000_000_000, 0)
    assert age_cutoffs(0, 1.5, now) == (0, now - 1_500_000_000)
    assert age_cutoffs(90 * 86400, 3600, now) == (now - 90 * 86400 * 10**9, now - 3600 * 10**9)
    oldest, newest = age_cutoffs(5, 5, now)
    assert isinstance(oldest, int) and isinstance(newest, int)


# -- exclusions file -----------------------------------------------------------------------------------

def test_read_excludes_empty_path():
    assert read_excludes("", b"/src") == ()


def test_read_excludes(tmp_path):
    f = tmp_path / "ex"
    f.write_bytes(b"# comment\n\n   \n  # indented comment\nscratch/tmp\n/src/abs/path/\n/src/x\r\n"
                  b"caf\xe9/d\nname#with hash\ntrailing/slash//\n")
    assert read_excludes(str(f), b"/src") == (
        b"scratch/tmp", b"abs/path", b"x", b"caf\xe9/d", b"name#with hash", b"trailing/slash")


def test_read_excludes_root_with_trailing_slash(tmp_path):
    f = tmp_path / "ex"
    f.write_bytes(b"/src/a\n")
    assert read_excludes(str(f), b"/src/") == (b"a",)


@pytest.mark.parametrize("line", [b"/other/a", b"/srcfoo/a", b"/"])
def test_read_excludes_absolute_outside_root(tmp_path, line):
    f = tmp_path / "ex"
    f.write_bytes(b"# c\nok\n" + line + b"\n")
    with pytest.raises(ConfigError) as ei:
        read_excludes(str(f), b"/src")
    assert f"{f}:3:" in str(ei.value)


@pytest.mark.parametrize("line", [b"../up", b"a/../b", b"./a", b"a//b", b"/src/../etc", b"a\0b"])
def test_read_excludes_invalid_prefix(tmp_path, line):
    f = tmp_path / "ex"
    f.write_bytes(b"fine\n" + line + b"\n")
    with pytest.raises(ConfigError) as ei:
        read_excludes(str(f), b"/src")
    assert f"{f}:2:" in str(ei.value)


def test_read_excludes_source_root_itself_rejected(tmp_path):
    f = tmp_path / "ex"
    f.write_bytes(b"/src/\n")
    with pytest.raises(ConfigError, match=":1:"):
        read_excludes(str(f), b"/src")


def test_read_excludes_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read exclusions file"):
        read_excludes(str(tmp_path / "missing"), b"/src")
