"""Fuzzing the message decoder and the config loader (hypothesis).

Message side: the wire decoders, the pass-spec and chunk decoders and whole task deliveries (spec,
relative path, batch names, MDT index, chunk arguments drawn from arbitrary JSON values and from
near-miss well-formed messages) may only answer with their documented errors: ConfinementError from
a decoder; from a task, ``Reject(requeue=False)`` or a failure recorded as "rejected". Never another
exception class, never a traceback in the log, never a write anywhere (the tmp tree holding both
mounts and the sentinel stays byte-for-byte and mtime-for-mtime the same).

Config side: ``from_mapping`` with arbitrary mappings and ``load_settings`` with arbitrary config.py
text, broker host file and password file answer with Settings or a one-line ConfigError; and the
``cmover`` command exits 2 with one line on stderr for generated bad configs.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from support.snap import snapshot, unchanged
from support.worker import InProcessWorker

from cmover.core.errors import ConfigError, ConfinementError
from cmover.core.passes import PassKind, PassSpec
from cmover.core.paths import check_rel, from_wire, is_within, names_from_wire, rel_from_wire, to_wire
from cmover.core.settings import _SCHEMA, from_mapping, load_settings
from cmover.engine.chunks import MAX_CHUNKS, ChunkSpec
from cmover.tasks_copy import copy_chunk, copy_dir, copy_files
from cmover.tasks_delete import delete_dir, delete_files, delete_purge
from cmover.tasks_dirtime import dirtime_dir

REPO = Path(__file__).resolve().parents[1]
CMOVER = REPO / ".venv" / "bin" / "cmover"

FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

# Path-like text and names: mostly the characters that make paths interesting.
path_text = st.lists(st.sampled_from(list("./a\0\\ \n") + ["é", "\udce9", "..", "b64"]), max_size=12).map("".join)
wire_b64 = st.builds(lambda raw: {"b64": base64.b64encode(raw).decode()},
                     st.binary(max_size=24) | st.builds(os.fsencode, path_text.filter(lambda s: "\udce9" not in s)))
wire_like = path_text | wire_b64 | st.builds(lambda s: {"b64": s}, st.text(max_size=12)) | json_values
# Values at the edges of what the decoders check (overflowing floats, C int limits, NaN, bool-as-int).
edge_values = st.sampled_from([10**400, -(10**400), 2**31, 2**63, 2**64, -2, -1, 0, 1, float("nan"), float("inf"),
                               -0.0, 1e300, True, False, "", "0", "copy", [], {}, [0, 0], [-1, 2**31]])
options = st.dictionaries(st.sampled_from(["dry_run", "max_delete", "src_id", "src_must_be_mount", "other"]),
                          edge_values | json_values, max_size=4)
field_values = wire_like | edge_values | options


# -- decoders ------------------------------------------------------------------------------------------------


# What the wire contract of cmover.core.paths says each input means, written from the contract (not the code):
# None where the input is not a valid name, relative path or batch. The decoders must accept exactly what is
# valid, give back exactly this, and refuse everything else with a one-line ConfinementError.


def contract_bytes(obj: Any) -> bytes | None:
    """A wire name: a JSON string (its UTF-8 bytes) or ``{"b64": <standard base64>}`` and nothing else."""
    if isinstance(obj, str):
        try:
            return obj.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate is no UTF-8 text
            return None
    if isinstance(obj, dict) and list(obj) == ["b64"] and isinstance(obj["b64"], str):
        text = obj["b64"]
        if not text.isascii() or len(text) % 4 or any(c not in B64_ALPHABET for c in text.rstrip("=")) \
                or len(text) - len(text.rstrip("=")) > 2:
            return None
        return base64.b64decode(text)
    return None


B64_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def contract_rel(obj: Any) -> bytes | None:
    """A relative path: b"" (the root) or components that are not empty, "." or ".." with no NUL and no
    leading slash, at most 64 KiB."""
    raw = contract_bytes(obj)
    if raw is None or (raw and (len(raw) > 64 * 1024 or b"\0" in raw or
                                any(part in (b"", b".", b"..") for part in raw.split(b"/")))):
        return None
    return raw


def contract_names(obj: Any) -> list[bytes] | None:
    """A batch: a list of single, non-empty path components."""
    if not isinstance(obj, list):
        return None
    names = [contract_rel(n) for n in obj]
    return None if any(n is None or not n or b"/" in n for n in names) else names  # type: ignore[misc]


def refused_clearly(exc: ConfinementError, obj: Any, expected: object) -> None:
    """A refusal is a one-line message of its own, and only of what the contract calls invalid."""
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, message
    assert expected is None, f"{obj!r} is valid ({expected!r}) but was refused: {message}"


@FUZZ
@given(wire_like)
def test_from_wire_returns_bytes_or_confinement_error(obj: Any) -> None:
    expected = contract_bytes(obj)
    try:
        raw = from_wire(obj)
    except ConfinementError as exc:
        refused_clearly(exc, obj, expected)
        return
    assert raw == expected
    assert from_wire(to_wire(raw)) == raw


@FUZZ
@given(wire_like)
def test_rel_from_wire_never_leaves_the_root(obj: Any) -> None:
    expected = contract_rel(obj)
    try:
        rel = rel_from_wire(obj)
    except ConfinementError as exc:
        refused_clearly(exc, obj, expected)
        return
    assert rel == expected and check_rel(rel) is rel
    root = b"/mnt/target/root"
    joined = os.path.normpath(root + b"/" + rel) if rel else root
    assert is_within(joined, root) and b"\0" not in rel and not rel.startswith(b"/")


@FUZZ
@given(st.lists(wire_like, max_size=5) | json_values)
def test_names_from_wire_gives_single_components(obj: Any) -> None:
    expected = contract_names(obj)
    try:
        names = names_from_wire(obj)
    except ConfinementError as exc:
        refused_clearly(exc, obj, expected)
        return
    assert names == expected
    for n in names:
        assert n and b"/" not in n and n not in (b".", b"..") and b"\0" not in n


def test_the_contract_oracles_accept_and_refuse_both():
    """The oracles above are not vacuous: each accepts and refuses inputs of every shape the fuzz draws."""
    assert contract_bytes("caf\u00e9") == "caf\u00e9".encode() and contract_bytes({"b64": "/w=="}) == b"\xff"
    assert contract_bytes({"b64": "/w="}) is None and contract_bytes({"b64": 1}) is None and contract_bytes(3) is None
    assert contract_bytes("\udce9") is None and contract_bytes({"b64": "/w==", "x": 1}) is None
    assert contract_rel("a/b") == b"a/b" and contract_rel("") == b"" and contract_rel("a//b") is None
    assert contract_rel("/a") is None and contract_rel("a/..") is None and contract_rel("a\0") is None
    assert contract_names(["a", {"b64": "/w=="}]) == [b"a", b"\xff"] and contract_names([]) == []
    assert contract_names(["a/b"]) is None and contract_names([""]) is None and contract_names("a") is None


GOOD_SPEC = {**PassSpec(run_id="copy-fuzz", kind=PassKind.COPY, src_root=b"/mnt/src", dst_root=b"/mnt/dst",
                        excludes=(b"x",), mdt_list=(0, 1)).as_dict(), "options": {"dry_run": False}}


def near_miss_specs(good: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A good spec with fields replaced by arbitrary values or removed, or any JSON value at all."""
    keys = st.sampled_from(sorted(good))
    replaced = st.builds(lambda k, v: {**good, k: v}, keys, field_values)
    two = st.builds(lambda k1, v1, k2, v2: {**good, k1: v1, k2: v2}, keys, field_values, keys, field_values)
    removed = st.builds(lambda k: {key: v for key, v in good.items() if key != k}, keys)
    return replaced | two | removed | json_values


@FUZZ
@given(near_miss_specs(GOOD_SPEC))
def test_pass_spec_from_dict_returns_a_spec_or_confinement_error(d: Any) -> None:
    try:
        spec = PassSpec.from_dict(d)
    except ConfinementError as exc:
        assert "\n" not in str(exc)  # becomes the Reject reason and one log line
        return
    for root in (spec.src_root, spec.dst_root):
        assert root.startswith(b"/") and os.path.normpath(root) == root and b"\0" not in root
    assert check_rel(spec.start) == spec.start
    assert all(check_rel(e) == e for e in spec.excludes)
    assert spec.batch >= 1 and spec.chunk_size >= 1 << 20 and spec.max_deliveries >= 1
    assert 0 <= spec.inline_seconds < 1e12 and 0 <= spec.batch_seconds < 1e12
    assert all(-1 <= m < 2**31 for m in spec.mdt_list)
    assert PassSpec.from_dict(spec.as_dict()) == spec


EDGES = [10**400, -(10**400), 2**31, 2**63, 2**64, -2, -1, 0, 1, float("nan"), float("inf"), -0.0, 1e300, True, False,
         "", "0", "copy", "a b", "\n", "..", "/", "\0", None, [], {}, [0, 0], [-1, 2**31], ["x"], {"b64": "Lg=="},
         {"dry_run": "no"}, {"max_delete": -1}, {"max_delete": "x"}, {"src_id": 5}, {"src_id": [1, "x"]}]


def test_pass_spec_every_field_times_every_edge_value() -> None:
    """The systematic half of the fuzz: each field of a good spec replaced by each edge value in turn."""
    accepted = 0
    for key in sorted(GOOD_SPEC):
        for v in EDGES:
            try:
                spec = PassSpec.from_dict({**GOOD_SPEC, key: v})
            except ConfinementError as exc:
                assert "\n" not in str(exc)
                continue
            accepted += 1
            assert 0 <= spec.inline_seconds < 1e12 and 0 <= spec.batch_seconds < 1e12, (key, v)
            assert all(-1 <= m < 2**31 for m in spec.mdt_list), (key, v)
            assert PassSpec.from_dict(spec.as_dict()) == spec, (key, v)
    assert accepted > 20  # the good values among the edges (0, 1, -0.0, "copy", [] ...) pass


chunk_fields = st.dictionaries(st.sampled_from(["size", "mtime_ns", "ctime_ns", "ino", "chunk", "other"]),
                               st.integers() | json_scalars | edge_values, max_size=6)


@FUZZ
@given(chunk_fields | json_values)
def test_chunk_spec_from_wire_returns_a_spec_or_confinement_error(d: Any) -> None:
    try:
        cs = ChunkSpec.from_wire(d)
    except ConfinementError:
        return
    assert cs.size >= 1 and cs.chunk >= 1 and 1 <= cs.count <= MAX_CHUNKS
    for i in (0, cs.count - 1):
        offset, length = cs.extent(i)
        assert 0 <= offset < cs.size and 0 < length <= cs.chunk and offset + length <= cs.size


# -- whole deliveries ----------------------------------------------------------------------------------------


class FuzzSite:
    def __init__(self, top: Path) -> None:
        self.top = top
        self.src, self.dst = top / "s" / "src", top / "d" / "dst"
        for d in (self.src, self.dst, top / "s" / "outside" / "a", top / "d" / "outside" / "a"):
            d.mkdir(parents=True)
        (top / "s" / "outside" / "secret").write_bytes(b"outside the source mount")
        (top / "s" / "outside" / "a" / "f").write_bytes(b"outside the source mount")
        (top / "d" / "outside" / "victim").write_bytes(b"sentinel")
        # A symlink pointing out of its root on both sides. The two are identical, and so are the roots'
        # metadata: a legitimate message on these roots has nothing to change (see the control test).
        for d in (self.src, self.dst):
            os.symlink(top / "d" / "outside", d / "link-out")
            os.utime(d / "link-out", ns=(10**18, 10**18), follow_symlinks=False)
            os.chmod(d, 0o755)
            os.utime(d, ns=(10**18, 10**18))
        self.worker = InProcessWorker(os.fsencode(self.src), os.fsencode(self.dst))
        self.good = {kind: PassSpec(run_id=f"{kind}-fuzz", kind=PassKind(kind), src_root=os.fsencode(self.src),
                                    dst_root=os.fsencode(self.dst)).as_dict() for kind in ("copy", "delete", "dirtime")}


@pytest.fixture(scope="module")
def fuzz_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzSite]:
    site = FuzzSite(tmp_path_factory.mktemp("fuzz"))
    with pytest.MonkeyPatch.context() as mp:
        site.worker.install(mp)
        yield site
        site.worker.uninstall()


TASKS = {"copy.dir": copy_dir, "copy.files": copy_files, "copy.chunk": copy_chunk, "delete.dir": delete_dir,
         "delete.files": delete_files, "delete.purge": delete_purge, "dirtime.dir": dirtime_dir}
rels = wire_like | st.sampled_from(["", "link-out", "link-out/a", "a", "../outside", "../outside/a"])


@st.composite
def deliveries(draw: st.DrawFn, good: dict[str, dict[str, Any]]) -> tuple[str, list[Any]]:
    name = draw(st.sampled_from(sorted(TASKS)))
    kind = name.split(".")[0]
    spec = draw(st.sampled_from([good[kind]]) | near_miss_specs(good[kind]) | near_miss_specs(good["copy"]))
    rel = draw(rels)
    if name in ("copy.files", "delete.files"):
        extra = [draw(st.lists(wire_like | st.sampled_from(["victim", "secret", "link-out"]), max_size=4)
                      | json_values)]
    elif name == "copy.chunk":
        extra = [draw(st.integers() | json_scalars), draw(chunk_fields | json_values)]
    elif name == "delete.purge":
        extra = [draw(rels)]
    else:
        extra = [draw(st.none() | st.integers(min_value=-3, max_value=3) | json_values)]
    return name, [spec, rel, *extra]


@pytest.mark.parametrize("task", ["copy.dir", "delete.dir"])
def test_every_spec_field_times_every_edge_value_through_a_task(fuzz_site: FuzzSite, task: str) -> None:
    """Each field of a good spec replaced by each edge value, delivered: Reject, or runs; never a traceback."""
    kind = task.split(".")[0]
    good = fuzz_site.good[kind]
    before = snapshot(fuzz_site.top, include_root=True)
    outcomes = {"rejected": 0, "ran": 0}
    for key in sorted(good):
        for v in EDGES:
            rej = fuzz_site.worker.deliver(TASKS[task], {**good, key: v}, "", None)
            assert rej is None or (rej.requeue is False and "\n" not in str(rej.reason)), (key, v)
            outcomes["rejected" if rej else "ran"] += 1
            assert fuzz_site.worker.tracebacks.records == [], (key, v)
    for run_id in {v for v in EDGES if isinstance(v, str)} | {good["run_id"]}:
        assert not [f for f in fuzz_site.worker.failures(run_id) if "internal error" in f.message]
    assert unchanged(before, snapshot(fuzz_site.top, include_root=True)) == []
    assert outcomes["rejected"] > 300 and outcomes["ran"] > 20, outcomes


GOOD_ARGS = {"copy.dir": ["", None], "copy.files": ["", ["link-out", "gone"]], "delete.dir": ["", None],
             "delete.files": ["", ["link-out"]], "dirtime.dir": ["", None]}


@pytest.mark.parametrize("name", sorted(GOOD_ARGS))
def test_control_good_messages_run_and_change_nothing(fuzz_site: FuzzSite, name: str) -> None:
    """The fuzz below asserts "no write" for every delivery: legitimate ones on these roots write nothing too."""
    before = snapshot(fuzz_site.top, include_root=True)
    kind = name.split(".")[0]
    rej = fuzz_site.worker.deliver(TASKS[name], fuzz_site.good[kind], *GOOD_ARGS[name])
    assert rej is None
    assert fuzz_site.worker.failures(fuzz_site.good[kind]["run_id"]) == []
    assert fuzz_site.worker.ctx.stats.totals(fuzz_site.good[kind]["run_id"])["tasks"] >= 1
    assert unchanged(before, snapshot(fuzz_site.top, include_root=True)) == []


@FUZZ
@given(data=st.data())
def test_any_delivery_is_rejected_or_recorded_never_a_traceback_or_a_write(fuzz_site: FuzzSite,
                                                                          data: st.DataObject) -> None:
    name, args = data.draw(deliveries(fuzz_site.good))
    before = snapshot(fuzz_site.top, include_root=True)
    fuzz_site.worker.tracebacks.records.clear()
    rej = fuzz_site.worker.deliver(TASKS[name], *args)  # any exception but Reject fails the test
    event(f"{name}: rejected" if rej is not None else f"{name}: ran")
    if rej is not None:
        assert rej.requeue is False
        assert "\n" not in str(rej.reason)
    assert fuzz_site.worker.tracebacks.records == [], [r.getMessage() for r in fuzz_site.worker.tracebacks.records]
    spec = args[0]
    if rej is None and isinstance(spec, dict) and isinstance(spec.get("run_id"), str):
        internal = [f for f in fuzz_site.worker.failures(spec["run_id"]) if "internal error" in f.message]
        assert internal == []
    assert unchanged(before, snapshot(fuzz_site.top, include_root=True)) == []
    assert fuzz_site.worker.sent == []  # the roots hold nothing to fan out: nothing may be published


# -- config loader -------------------------------------------------------------------------------------------

SCHEMA_NAMES = sorted(_SCHEMA)
config_values = (json_values | st.floats() | st.integers() | st.text(max_size=30)
                 | st.lists(st.integers(min_value=-5, max_value=5) | json_scalars, max_size=4)
                 | st.sampled_from([float("nan"), float("inf"), -1, 0, 2**70, "", "/", "\0", "a\nb", "/abs/path",
                                    "rel/path", "127.0.0.1", "localhost", "h:0", "h:99999", "h:11211", "²"]))
config_keys = st.sampled_from(SCHEMA_NAMES) | st.text(max_size=12) | st.integers() | st.none() \
    | st.tuples(st.integers())


def _one_line(exc: ConfigError) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg and "Traceback" not in msg, msg
    assert len(msg) < 2000, msg


@FUZZ
@given(st.dictionaries(config_keys, config_values, max_size=6))
def test_from_mapping_gives_settings_or_one_line_config_error(values: dict[Any, Any]) -> None:
    try:
        s = from_mapping(values)
    except ConfigError as exc:
        _one_line(exc)
        return
    assert 1 <= s.batch <= 100_000 and s.max_deliveries >= 1 and 0 <= s.local_jobs <= 1024
    for v in (s.oldest_date, s.newest_date, s.report_interval, s.inline_seconds, s.batch_seconds):
        assert v == v and v not in (float("inf"), float("-inf"))  # finite


CONFIG_EDGES = [float("nan"), float("inf"), float("-inf"), 1e300, 10**400, 2**63, -1, 0, 1, -0.5, True, None, "",
                "\0", "/a\0b", "a\nb", "rel/path", "/abs/path", "localhost", "h:0", "h:99999", "h:²", ":11211", "²",
                "x" * 5000, [], [None], [-1, 0], [2**40], [[1]], {}, {"k": 1}, (1,), b"bytes", object()]


def test_from_mapping_every_setting_times_every_edge_value() -> None:
    """The systematic half of the config fuzz: each setting set to each edge value in turn."""
    accepted = 0
    for name in SCHEMA_NAMES:
        for v in CONFIG_EDGES:
            try:
                s = from_mapping({name: v})
            except ConfigError as exc:
                _one_line(exc)
                continue
            accepted += 1
            for f in (s.oldest_date, s.newest_date, s.report_interval, s.inline_seconds, s.batch_seconds):
                assert f == f and abs(f) != float("inf"), (name, v)
            assert "\0" not in repr(s), (name, v)
    assert accepted > 20


def _py_literal(v: Any) -> str:
    if isinstance(v, float) and v != v:
        return 'float("nan")'
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return f'float("{v}")'
    return repr(v)


assignments = st.builds(lambda k, v: f"{k} = {_py_literal(v)}", st.sampled_from(SCHEMA_NAMES)
                        | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), config_values)
garbage_lines = st.sampled_from([
    "raise ValueError('two\\nlines')", "raise SystemExit(0)", "import sys; sys.exit('bye')", "1/0", "def f(:",
    "BATCH = ", "\tBATCH = 1", "x = undefined_name",
    "class X:\n    def __repr__(self): raise RuntimeError\nBATCH = X()",
    "import os", "from os import path", "_private = object()", "BATCH = 10**100", "MDT_LIST = [None]",
]) | st.text(max_size=40)
config_texts = st.lists(assignments | garbage_lines, max_size=6).map("\n".join)


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cfg")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CMOVER_CONFIG", raising=False)
    monkeypatch.delenv("CMOVER_RABBITMQ_DIR", raising=False)


def _write_site(root: Path, text: str | bytes, host: bytes | None = None, password: bytes | None = None) -> Path:
    (root / "rabbitmq").mkdir(parents=True, exist_ok=True)
    for name in os.listdir(root / "rabbitmq"):
        os.unlink(root / "rabbitmq" / name)
    cfg = root / "config.py"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    if host is not None:
        (root / "rabbitmq" / "rabbitmq.conf").write_bytes(host)
    if password is not None:
        (root / "rabbitmq" / "rabbitmq_cmover.conf").write_bytes(password)
    return cfg


@FUZZ
@given(config_texts | st.binary(max_size=60), st.none() | st.binary(max_size=30)
       | st.sampled_from([b"127.0.0.1", b"h:5672\n", b"# c\n\nh\n", b"a b", b"amqp://u:p@h/", b"\xff\xfe"]),
       st.none() | st.binary(max_size=30) | st.sampled_from([b"", b"\n", b"s3cr:t/@x\n", b"\xff"]))
def test_load_settings_gives_settings_or_one_line_config_error(cfg_dir: Path, text: str | bytes,
                                                               host: bytes | None, password: bytes | None) -> None:
    cfg = _write_site(cfg_dir, text, host, password)
    try:
        s = load_settings(str(cfg))
    except ConfigError as exc:
        _one_line(exc)
        return
    try:
        url = s.broker_url()
    except ConfigError as exc:
        _one_line(exc)
        return
    assert url.startswith("amqp://cmover:") and url.endswith("/cmover") and "\n" not in url


bad_configs = st.one_of(
    st.builds(lambda k, v: f"{k} = {v!r}", st.sampled_from(["BATCH", "MAX_DELIVERIES", "LOCAL_JOBS"]),
              st.text(max_size=5) | st.floats() | st.sampled_from([0, -1, 10**9])),
    st.builds(lambda k: f"{k} = float('nan')", st.sampled_from(["OLDEST_DATE", "INLINE_SECONDS", "REPORT_INTERVAL"])),
    st.builds(lambda k, v: f"{k} = {v!r}", st.sampled_from(["source_mount", "target_mount", "EXCLUDE_FILE"]),
              st.sampled_from(["rel/path", "/a\0b"])),
    st.builds(lambda k: f"{k} = 1", st.from_regex(r"[A-Z][A-Z_]{2,10}", fullmatch=True).filter(
        lambda k: k not in _SCHEMA)),
    garbage_lines.filter(lambda t: t.strip() not in ("", "import os", "from os import path", "_private = object()")),
)


@settings(max_examples=12, deadline=None, database=None)
@given(bad_configs)
def test_cmover_command_exits_2_with_one_line_for_a_bad_config(cfg_dir: Path, text: str) -> None:
    cfg = _write_site(cfg_dir / "cli", text)
    try:
        load_settings(str(cfg))
    except ConfigError:
        pass
    else:
        assume(False)  # random garbage that happens to be a valid config.py
    (cfg_dir / "srcdir").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMOVER_")}
    r = subprocess.run([str(CMOVER), "--config", str(cfg), "copy", str(cfg_dir / "srcdir"), str(cfg_dir / "dstdir")],
                       capture_output=True, text=True, errors="replace", env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, (text, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmover: "), (text, r.stderr)
    assert not (cfg_dir / "dstdir").exists(), "a bad config must stop the pass before anything is written"
