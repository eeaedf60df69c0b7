"""cmover.core.paths: wire encoding of names, relative-path validation, display and confinement tests."""

import json

import pytest
from kombu import serialization

from cmover.core.errors import ConfinementError
from cmover.core.paths import check_rel, components, display, from_wire, is_within, join, rel_from_wire, to_wire

NAMES = [
    b"plain.txt",
    "caf\u00e9-\u65e5\u672c".encode(),  # valid multi-byte UTF-8
    b"caf\xe9",  # latin-1: not UTF-8
    b"\xff\xfe\x80",
    b"line\nbreak",
    b"trailing space ",
    b" leading",
    b"tab\there",
    b"a" * 255,
    b"\xe9" * 255,
    b"",
    b"sub/dir/name",
    b"back\\slash\"quote",
]


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_wire_round_trip(name):
    assert from_wire(to_wire(name)) == name


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_wire_round_trip_through_json_and_kombu(name):
    msg = {"rel": to_wire(name), "names": [to_wire(name), to_wire(b"x")]}
    content_type, encoding, data = serialization.dumps(msg, serializer="json")
    back = serialization.loads(data, content_type, encoding)
    assert from_wire(back["rel"]) == name
    assert [from_wire(n) for n in back["names"]] == [name, b"x"]
    assert from_wire(json.loads(json.dumps(to_wire(name)))) == name


def test_to_wire_shapes():
    assert to_wire(b"abc") == "abc"
    assert to_wire("\u00e9".encode()) == "\u00e9"
    assert to_wire(b"caf\xe9") == {"b64": "Y2Fm6Q=="}


@pytest.mark.parametrize("garbage", [
    None, 1, 1.5, True, b"bytes", ["a"], {}, {"b64": 1}, {"b64": "Y2Fm6Q==", "x": "y"}, {"B64": "YQ=="},
    {"b64": "not base64!"}, {"b64": "YQ"}, {"b64": "AAAA="}, {"b64": "YQ==="}, {"b64": "\u00e9\u00e9\u00e9\u00e9"},
    "lone \udce9 surrogate", "\ud800",
])
def test_from_wire_rejects_garbage(garbage):
    with pytest.raises(ConfinementError):
        from_wire(garbage)


@pytest.mark.parametrize("rel", [b"", b"a", b"a/b/c", b"...", b"a/..b", b".hidden/x", b"caf\xe9/\n", b"a" * 255])
def test_check_rel_accepts(rel):
    assert check_rel(rel) is rel


@pytest.mark.parametrize("rel", [
    b"..", b"a/..", b"../a", b"a/../b", b".", b"./a", b"a/.", b"a//b", b"a/", b"/", b"/a", b"//a",
    b"a\0b", b"\0", b"a" * (64 * 1024 + 1),
])
def test_check_rel_rejects(rel):
    with pytest.raises(ConfinementError):
        check_rel(rel)


@pytest.mark.parametrize("rel", ["a", bytearray(b"a"), None])
def test_check_rel_rejects_non_bytes(rel):
    with pytest.raises(ConfinementError):
        check_rel(rel)


def test_rel_from_wire_validates():
    assert rel_from_wire({"b64": "Y2Fm6Q=="}) == b"caf\xe9"
    with pytest.raises(ConfinementError):
        rel_from_wire("../etc")
    with pytest.raises(ConfinementError):
        rel_from_wire(to_wire(b"a/\xe9/../../x"))


def test_join_and_components():
    assert join(b"", b"x") == b"x"
    assert join(b"a/b", b"x") == b"a/b/x"
    assert components(b"") == []
    assert components(b"a/b") == [b"a", b"b"]


@pytest.mark.parametrize("name, shown", [
    (b"plain", "plain"),
    ("caf\u00e9".encode(), "caf\u00e9"),
    (b"a\nb", repr(b"a\nb")),
    (b"a\rb", repr(b"a\rb")),
    (b"del\x7f", repr(b"del\x7f")),
    (b"caf\xe9", repr(b"caf\xe9")),
    (b"trailing ", repr(b"trailing ")),
    (b" leading", repr(b" leading")),
    (b"", "."),  # the pass root: never an empty path in a message
])
def test_display(name, shown):
    out = display(name)
    assert out == shown
    assert "\n" not in out and "\r" not in out


def test_display_distinguishes_escaped_lookalike():
    # A valid name that looks like the escaped rendering of another is still told apart.
    assert display(b"a\nb") != display(b"b'a\\nb'")


@pytest.mark.parametrize("path, root, inside", [
    (b"/a", b"/a", True),
    (b"/a/b", b"/a", True),
    (b"/a/b/c", b"/a/", True),
    (b"/a", b"/a/", True),
    (b"/ab", b"/a", False),
    (b"/a", b"/a/b", False),
    (b"/b", b"/a", False),
    (b"/anything", b"/", True),
    (b"/", b"/", True),
    (b"/data/src2", b"/data/src", False),
])
def test_is_within(path, root, inside):
    assert is_within(path, root) is inside
