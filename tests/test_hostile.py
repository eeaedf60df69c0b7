"""Hostile messages: paths outside the roots, forged specs, bad indices and target-side symlinks.

Every message goes through the real task functions (``cmover.copy.*``, ``cmover.delete.*``,
``cmover.dirtime.dir``) in this process, with a worker context whose configured mounts are the tmp
``s/src`` (source) and ``d/dst`` (target). Next to them, ``s/outside`` holds what a path escaping the
source would read and ``d/outside`` is the sentinel a path escaping the target would write to, delete in
or re-time. Every test compares the whole tree outside the target root (sentinel, source, lookalike
directories; contents, modes, owners, mtimes, inodes) before and after, and checks that the message was
rejected (``Reject``, not requeued) or recorded as a failure, with no traceback logged.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.snap import Snapshot, snapshot, unchanged
from support.worker import InProcessWorker

from cmover.core import fsio
from cmover.core.counters import C
from cmover.core.errors import ConfigError
from cmover.core.failure import Failure
from cmover.core.passes import PassKind, PassSpec
from cmover.core.paths import to_wire
from cmover.core.settings import from_mapping
from cmover.engine.chunks import ChunkSpec, part_name
from cmover.lustre.base import PosixFs
from cmover.tasks_copy import copy_chunk, copy_dir, copy_files
from cmover.tasks_delete import delete_dir, delete_files, delete_purge
from cmover.tasks_dirtime import dirtime_dir
from cmover.worker import bodies
from cmover.worker.taskbase import Rejected, run_message

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode()}


@dataclass
class Site:
    top: Path
    src: Path  # source mount
    dst: Path  # target mount
    outside: Path  # sentinel next to the target
    src_outside: Path  # next to the source: what an escaping source path would read
    worker: InProcessWorker
    runs: int = 0

    def spec(self, kind: str = "copy", **over: Any) -> dict[str, Any]:
        """A well-formed spec dict on the site's mounts; ``over`` replaces raw message fields."""
        self.runs += 1
        d = PassSpec(run_id=f"{kind}-hostile-{self.runs}", kind=PassKind(kind), src_root=os.fsencode(self.src),
                     dst_root=os.fsencode(self.dst), inline_seconds=3600.0).as_dict()
        d.update(over)
        return d

    def state(self) -> Snapshot:
        """Everything outside the target root."""
        return snapshot(self.top, include_root=True, skip=(self.dst,))

    def target(self) -> Snapshot:
        return snapshot(self.dst, include_root=True)

    def deliver(self, task: Any, spec: dict[str, Any], *args: Any) -> Outcome:
        rej = self.worker.deliver(task, spec, *args)
        run_id = spec.get("run_id") if isinstance(spec, dict) else None
        fails = self.worker.failures(run_id) if isinstance(run_id, str) else []
        return Outcome(rej, fails)


@dataclass
class Outcome:
    reject: Any
    failures: list[Failure]

    @property
    def rejected(self) -> bool:
        return self.reject is not None and self.reject.requeue is False

    def failed_as_rejected(self) -> bool:
        """Recorded as one failure naming the refused message (not an internal error)."""
        return self.reject is None and len(self.failures) == 1 and self.failures[0].message.startswith("rejected:")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    src, dst = tmp_path / "s" / "src", tmp_path / "d" / "dst"
    outside, src_outside = tmp_path / "d" / "outside", tmp_path / "s" / "outside"
    for d in (src / "a", dst, outside / "sub", src_outside, tmp_path / "d" / "dst-lookalike"):
        d.mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"source data")
    (src / "top.txt").write_bytes(b"top")
    (outside / "victim").write_bytes(b"must survive")
    (outside / "sub" / "deep").write_bytes(b"must survive too")
    os.utime(outside, ns=(10**18, 10**18))  # a dirtime pass escaping the root would change these
    (src_outside / "secret").write_bytes(b"outside the source mount")
    (src_outside / "victim").write_bytes(b"the source side of the sentinel")
    worker = InProcessWorker(os.fsencode(src), os.fsencode(dst))
    worker.install(monkeypatch)
    s = Site(tmp_path, src, dst, outside, src_outside, worker)
    yield s
    worker.uninstall()
    # Whatever a test delivered: no traceback in the log, no failure recorded as an internal error.
    assert [r.getMessage() for r in worker.tracebacks.records] == [], "a traceback was logged"
    assert not [f for n in range(1, s.runs + 1) for k in ("copy", "delete", "dirtime")
                for f in worker.failures(f"{k}-hostile-{n}") if "internal error" in f.message]


# -- relative paths and batch names ----------------------------------------------------------------------


def _hostile_rels(top: Path) -> list[Any]:
    abs_outside = str(top / "d" / "outside")
    return [
        "..", "../outside", "a/../../outside", "a/../..", "../../d/outside/sub", "/etc", "/", abs_outside,
        abs_outside + "/sub", ".", "./a", "a/.", "a//f", "a/", "a\0b", "\0", "x" * (64 * 1024 + 1),
        "lone \udce9 surrogate",
        b64(b"../outside"), b64(b"\xff/../../outside"), b64(os.fsencode(abs_outside)), b64(b"a\0"),
        {"b64": "not base64!"}, {"b64": 1}, {"B64": "YQ=="}, {"b64": "YQ==", "extra": 1},
        None, 5, 1.5, True, ["a"], {"a": "b"},
    ]


REL_IDS = ["dotdot", "dotdot-outside", "a-dotdot-dotdot-outside", "a-up-up", "up-up-d-outside", "abs-etc", "abs-root",
           "abs-outside", "abs-outside-sub", "dot", "dot-a", "a-dot", "double-slash", "trailing-slash", "nul",
           "only-nul", "too-long", "surrogate", "b64-dotdot", "b64-nonutf8-dotdot", "b64-abs", "b64-nul",
           "b64-invalid", "b64-int", "b64-wrong-key", "b64-extra-key", "null", "int", "float", "bool", "list",
           "object"]


def _chunk_for(site: Site) -> dict[str, int]:
    st = os.stat(site.src / "a" / "f")
    return ChunkSpec(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, MiB).as_wire()


# (label, task, spec kind, message arguments after the spec given the hostile value and the site)
TASKS: list[tuple[str, Any, str, Callable[[Any, Site], list[Any]]]] = [
    ("copy.dir", copy_dir, "copy", lambda r, s: [r, None]),
    ("copy.files", copy_files, "copy", lambda r, s: [r, ["f", "victim"]]),
    ("copy.chunk", copy_chunk, "copy", lambda r, s: [r, 0, _chunk_for(s)]),
    ("delete.dir", delete_dir, "delete", lambda r, s: [r, None]),
    ("delete.files", delete_files, "delete", lambda r, s: [r, ["f", "victim"]]),
    ("delete.purge-rel", delete_purge, "delete", lambda r, s: [r, r]),
    ("delete.purge-root", delete_purge, "delete", lambda r, s: ["a", r]),
    ("dirtime.dir", dirtime_dir, "dirtime", lambda r, s: [r, None]),
]


@pytest.mark.parametrize("rel_index", range(len(REL_IDS)), ids=REL_IDS)
@pytest.mark.parametrize("label, task, kind, args", TASKS, ids=[t[0] for t in TASKS])
def test_hostile_relative_path_is_refused(site: Site, rel_index: int, label: str, task: Any, kind: str,
                                          args: Callable[[Any, Site], list[Any]]) -> None:
    rel = _hostile_rels(site.top)[rel_index]
    (site.dst / "a").mkdir()
    (site.dst / "a" / "victim").write_bytes(b"a target entry the source lacks")
    before, target = site.state(), site.target()
    out = site.deliver(task, site.spec(kind), *args(rel, site))
    assert out.failed_as_rejected(), (out.reject, out.failures)
    assert unchanged(before, site.state()) == []
    assert unchanged(target, site.target()) == []


HOSTILE_NAMES: list[tuple[str, Any]] = [
    ("dotdot", [".."]), ("dot", ["."]), ("empty", [""]), ("slash", ["a/f"]), ("dotdot-outside", ["../outside"]),
    ("dotdot-victim", ["../outside/victim"]), ("abs-etc", ["/etc/passwd"]), ("abs-victim", None),
    ("b64-dotdot", [b64(b"../outside/victim")]), ("b64-slash", [b64(b"x/\xff")]), ("b64-empty", [b64(b"")]),
    ("nul", ["f\0"]), ("null-entry", [None]), ("int-entry", [1]), ("list-entry", [["f"]]),
    ("good-then-bad", ["f", "../outside/victim"]), ("not-a-list", "f"), ("object", {"f": 1}), ("null", None),
]


@pytest.mark.parametrize("names_index", range(len(HOSTILE_NAMES)), ids=[n[0] for n in HOSTILE_NAMES])
@pytest.mark.parametrize("task", [copy_files, delete_files], ids=["copy.files", "delete.files"])
def test_hostile_batch_names_are_refused(site: Site, task: Any, names_index: int) -> None:
    label, names = HOSTILE_NAMES[names_index]
    if label == "abs-victim":
        names = [str(site.outside / "victim")]
    (site.dst / "a").mkdir()
    (site.dst / "a" / "victim").write_bytes(b"a target entry the source lacks")
    before, target = site.state(), site.target()
    out = site.deliver(task, site.spec("copy" if task is copy_files else "delete"), "a", names)
    assert out.failed_as_rejected(), (out.reject, out.failures)
    assert unchanged(before, site.state()) == []
    assert unchanged(target, site.target()) == [], "the whole batch is refused: not even its good names are handled"


@pytest.mark.parametrize("task", [copy_files, copy_dir], ids=["copy.files", "copy.dir"])
@pytest.mark.parametrize("also, made", [(None, "yes"), (None, 1), (None, None), (None, [True]), ([["b", ["g"]]], True)],
                         ids=["string", "int", "null", "list", "with-further-directories"])
def test_a_forged_made_flag_is_refused(site: Site, task: Any, also: Any, made: Any) -> None:
    """``made`` (the target directory was just created: no lookups) is true or false, for one directory only."""
    (site.dst / "a").mkdir()
    (site.dst / "a" / "victim").write_bytes(b"a target entry the source lacks")
    before, target = site.state(), site.target()
    if task is copy_dir and also:
        also = [["b", None]]
    out = site.deliver(task, site.spec("copy"), "a", ["f"] if task is copy_files else None, also, made)
    assert out.failed_as_rejected(), (out.reject, out.failures)
    assert unchanged(before, site.state()) == []
    assert unchanged(target, site.target()) == []


# -- forged pass specs -----------------------------------------------------------------------------------


def _spec_cases(s: Site) -> list[tuple[str, str, dict[str, Any] | Any]]:
    """(label, kind, fields replaced in a good spec of that kind; or a whole non-dict message)."""
    dst, top = str(s.dst), s.top
    return [
        ("src-outside-source-mount", "copy", {"src_root": str(s.src_outside)}),
        ("dst-outside-target-mount", "copy", {"dst_root": str(s.outside)}),
        ("dst-prefix-lookalike", "copy", {"dst_root": str(top / "d" / "dst-lookalike")}),
        ("dst-root-of-fs", "copy", {"dst_root": "/"}),
        ("src-root-of-fs", "copy", {"src_root": "/"}),
        ("dst-dotdot", "copy", {"dst_root": dst + "/../outside"}),
        ("dst-trailing-dotdot", "copy", {"dst_root": dst + "/.."}),
        ("dst-relative", "copy", {"dst_root": "d/dst"}),
        ("dst-nul", "copy", {"dst_root": dst + "\0/x"}),
        ("dst-b64-outside", "copy", {"dst_root": b64(os.fsencode(s.outside))}),
        ("dst-null", "copy", {"dst_root": None}),
        ("dst-list", "copy", {"dst_root": [dst]}),
        ("src-missing", "copy", {"src_root": KeyError}),
        ("src-equals-dst", "copy", {"src_root": dst}),
        ("kind-unknown", "copy", {"kind": "pickle"}),
        ("kind-null", "copy", {"kind": None}),
        ("kind-other-pass", "copy", {"kind": "dirtime"}),
        ("delete-spec-to-copy-task", "copy", {"kind": "delete"}),
        ("run-id-empty", "copy", {"run_id": ""}),
        ("run-id-spaces", "copy", {"run_id": "a b"}),
        ("run-id-newline", "copy", {"run_id": "copy\nx"}),
        ("run-id-path", "copy", {"run_id": "../../x"}),
        ("run-id-int", "copy", {"run_id": 5}),
        ("start-dotdot", "copy", {"start": "../outside"}),
        ("start-abs", "copy", {"start": "/etc"}),
        ("excludes-dotdot", "copy", {"excludes": ["../x"]}),
        ("excludes-not-list", "copy", {"excludes": "a"}),
        ("mdt-list-str", "copy", {"mdt_list": ["0"]}),
        ("mdt-list-below-minus-one", "copy", {"mdt_list": [-2]}),
        ("mdt-list-huge", "copy", {"mdt_list": [2**40]}),
        ("batch-zero", "copy", {"batch": 0}),
        ("batch-bool", "copy", {"batch": True}),
        ("batch-float", "copy", {"batch": 1.5}),
        ("chunk-size-tiny", "copy", {"chunk_size": 1}),
        ("chunk-threshold-negative", "copy", {"chunk_threshold": -1}),
        ("inline-seconds-huge-int", "copy", {"inline_seconds": 10**400}),
        ("inline-seconds-nan", "copy", {"inline_seconds": float("nan")}),
        ("inline-seconds-negative", "copy", {"inline_seconds": -1}),
        ("inline-seconds-text", "copy", {"inline_seconds": "soon"}),
        ("batch-seconds-inf", "copy", {"batch_seconds": float("inf")}),
        ("layout-unknown", "copy", {"layout": "x"}),
        ("layout-list", "copy", {"layout": ["keep"]}),
        ("restripe-text", "copy", {"restripe": "yes"}),
        ("max-deliveries-zero", "copy", {"max_deliveries": 0}),
        ("options-text", "delete", {"options": "x"}),
        ("options-max-delete-text", "delete", {"options": {"max_delete": "x"}}),
        ("options-max-delete-negative", "delete", {"options": {"max_delete": -1}}),
        ("options-src-id-int", "delete", {"options": {"src_id": 5}}),
        ("options-dry-run-text", "delete", {"options": {"dry_run": "no"}}),
        ("copy-spec-to-delete-task", "delete", {"kind": "copy"}),
        ("spec-null", "copy", None),
        ("spec-list", "copy", ["copy"]),
        ("spec-text", "copy", "spec"),
        ("spec-int", "copy", 7),
    ]


SPEC_IDS = [c[0] for c in _spec_cases(Site(Path("/t"), Path("/t/s/src"), Path("/t/d/dst"), Path("/t/d/outside"),
                                           Path("/t/s/outside"), InProcessWorker(None, None)))]


@pytest.mark.parametrize("case", range(len(SPEC_IDS)), ids=SPEC_IDS)
def test_forged_spec_is_rejected_before_any_work(site: Site, case: int) -> None:
    label, kind, over = _spec_cases(site)[case]
    if isinstance(over, dict):
        spec = site.spec(kind)
        for k, v in over.items():
            if v is KeyError:
                del spec[k]
            else:
                spec[k] = v
    else:
        spec = over
    task = copy_dir if kind == "copy" else delete_dir
    before, target = site.state(), site.target()
    out = site.deliver(task, spec, "", None)
    assert out.rejected, f"{label}: expected Reject(requeue=False), got {out}"
    assert out.failures == []
    assert unchanged(before, site.state()) == []
    assert unchanged(target, site.target()) == []
    assert site.worker.sent == []  # nothing published


def test_forged_spec_control_a_good_spec_copies(site: Site) -> None:
    """The fixture's good spec is accepted: the rejections above come from the forged fields."""
    spec = site.spec("copy")
    before = site.state()
    out = site.deliver(copy_dir, spec, "", None)
    assert out.reject is None and out.failures == []
    assert (site.dst / "a" / "f").read_bytes() == b"source data"
    assert unchanged(before, site.state()) == []


@pytest.mark.parametrize("roots", [("m/a", "m/a/b"), ("m/a/b", "m/a"), ("m/a", "m/a")],
                         ids=["target-inside-source", "source-inside-target", "same"])
def test_overlapping_roots_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        roots: tuple[str, str]) -> None:
    """Mounts that share a tree (config.py refuses them, see below; the worker check is the second line): a
    spec whose roots overlap would copy a tree into itself, i.e. write into the source."""
    mount = tmp_path / "m"
    (mount / "a" / "b").mkdir(parents=True)
    (mount / "a" / "f").write_bytes(b"x")
    worker = InProcessWorker(os.fsencode(mount), os.fsencode(mount))
    worker.install(monkeypatch)
    try:
        before = snapshot(tmp_path, include_root=True)
        spec = PassSpec(run_id="copy-overlap", kind=PassKind.COPY, src_root=os.fsencode(tmp_path / roots[0]),
                        dst_root=os.fsencode(tmp_path / roots[1])).as_dict()
        rej = worker.deliver(copy_dir, spec, "", None)
        assert rej is not None and rej.requeue is False and "overlap" in str(rej.reason)
        assert unchanged(before, snapshot(tmp_path, include_root=True)) == []
        assert worker.tracebacks.records == []
    finally:
        worker.uninstall()


@pytest.mark.parametrize("mounts", [("/mnt/a", "/mnt/a/b"), ("/mnt/a/b", "/mnt/a"), ("/mnt/a", "/mnt/a/"),
                                    ("/", "/mnt")])
def test_nested_mounts_are_refused_by_the_config(mounts: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="overlap; they must be separate trees"):
        from_mapping({"source_mount": mounts[0], "target_mount": mounts[1]})
    assert from_mapping({"source_mount": "/mnt/a", "target_mount": "/mnt/ab"}).target_mount == "/mnt/ab"


# -- roots reached through symlinks ----------------------------------------------------------------------


ROOT_TASKS: list[tuple[str, Any, str, list[Any]]] = [
    ("copy.dir", copy_dir, "copy", ["", None]),
    ("copy.dir-sub", copy_dir, "copy", ["a", None]),
    ("copy.files", copy_files, "copy", ["a", ["f"]]),
    ("copy.chunk", copy_chunk, "copy", ["a/f", 0, None]),
    ("delete.dir", delete_dir, "delete", ["", None]),
    ("delete.files", delete_files, "delete", ["", ["victim", "sub"]]),
    ("delete.purge", delete_purge, "delete", ["sub", "sub"]),
    ("dirtime.dir", dirtime_dir, "dirtime", ["", None]),
]


@pytest.mark.parametrize("label, task, kind, args", ROOT_TASKS, ids=[t[0] for t in ROOT_TASKS])
@pytest.mark.parametrize("depth", ["root", "ancestor"])
def test_target_root_through_a_symlink_is_not_followed(site: Site, label: str, task: Any, kind: str, args: list[Any],
                                                       depth: str) -> None:
    """A symlink on the target (e.g. copied from the source) named as, or above, the pass's target root.

    The string check against target_mount passes; the open of the root must refuse the link.
    """
    os.symlink(site.outside, site.dst / "evil")
    (site.outside / "a").mkdir()  # so that the sub-directory tasks would find their way outside
    os.utime(site.outside, ns=(10**18, 10**18))
    dst_root = site.dst / "evil" if depth == "root" else site.dst / "evil" / "a"
    if depth == "ancestor":
        (site.outside / "a" / "victim").write_bytes(b"x")
        (site.outside / "a" / "sub").mkdir()
    if label == "copy.chunk":
        args = [args[0], 0, _chunk_for(site)]
    before = site.state()
    out = site.deliver(task, site.spec(kind, dst_root=str(dst_root)), *args)
    assert out.reject is None
    assert len(out.failures) == 1 and out.failures[0].side == "target", out.failures
    assert out.failures[0].errno in (errno.ELOOP, errno.ENOTDIR), out.failures
    assert unchanged(before, site.state()) == []


@pytest.mark.parametrize("label, task, kind, args", ROOT_TASKS[:4] + ROOT_TASKS[-1:],
                         ids=[t[0] for t in ROOT_TASKS[:4] + ROOT_TASKS[-1:]])
def test_source_root_through_a_symlink_is_not_followed(site: Site, label: str, task: Any, kind: str,
                                                       args: list[Any]) -> None:
    """A symlink inside source_mount named as the source root would read outside the source mount."""
    os.symlink(site.src_outside, site.src / "evil")
    (site.src_outside / "a").mkdir()
    (site.src_outside / "a" / "f").write_bytes(b"outside the source mount")
    (site.dst / "x" / "a").mkdir(parents=True)
    if label == "copy.chunk":
        st = os.stat(site.src_outside / "a" / "f")
        args = [args[0], 0, ChunkSpec(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, MiB).as_wire()]
    before, target = site.state(), site.target()
    out = site.deliver(task, site.spec(kind, src_root=str(site.src / "evil"), dst_root=str(site.dst / "x")), *args)
    assert out.reject is None
    assert len(out.failures) == 1 and out.failures[0].side == "source", out.failures
    assert out.failures[0].errno in (errno.ELOOP, errno.ENOTDIR), out.failures
    assert unchanged(before, site.state()) == []
    assert unchanged(target, site.target()) == [], "nothing read outside the source mount reached the target"


# -- MDT index and chunk descriptions ----------------------------------------------------------------------


@pytest.mark.parametrize("mdt", ["1", 1.5, True, False, [0], {"mdt": 0}, -2, 2**31, 2**70],
                         ids=["text", "float", "true", "false", "list", "object", "minus-two", "2^31", "2^70"])
def test_mdt_index_that_is_not_an_mdt_is_refused(site: Site, mdt: Any) -> None:
    before, target = site.state(), site.target()
    out = site.deliver(copy_dir, site.spec(), "", mdt)
    assert out.failed_as_rejected(), out
    assert unchanged(before, site.state()) + unchanged(target, site.target()) == []


@pytest.mark.parametrize("mdt", [None, -1, 0, 7])
def test_mdt_index_control_good_values_copy(site: Site, mdt: Any) -> None:
    out = site.deliver(copy_dir, site.spec(), "a", mdt)
    assert out.reject is None and out.failures == []
    assert (site.dst / "a" / "f").read_bytes() == b"source data"


def _chunk_cases(good: dict[str, int]) -> list[tuple[str, Any, Any]]:
    """(label, index, chunk description)."""
    return [
        ("index-negative", -1, good), ("index-past-end", 1, good), ("index-huge", 2**64, good),
        ("index-text", "0", good), ("index-bool", True, good), ("index-null", None, good), ("index-float", 0.0, good),
        ("chunk-null", 0, None), ("chunk-list", 0, [1, 2]), ("chunk-empty", 0, {}),
        ("size-zero", 0, {**good, "size": 0}), ("size-negative", 0, {**good, "size": -5}),
        ("size-text", 0, {**good, "size": "1"}), ("size-bool", 0, {**good, "size": True}),
        ("chunk-zero", 0, {**good, "chunk": 0}), ("chunk-negative", 0, {**good, "chunk": -(2**40)}),
        ("too-many-chunks", 0, {**good, "size": 2**40, "chunk": 1}),
        ("mtime-float", 0, {**good, "mtime_ns": 1.5}),
        ("ino-missing", 0, {k: v for k, v in good.items() if k != "ino"}),
    ]


CHUNK_IDS = [c[0] for c in _chunk_cases({"size": 1, "mtime_ns": 0, "ctime_ns": 0, "ino": 0, "chunk": 1})]


@pytest.mark.parametrize("case", range(len(CHUNK_IDS)), ids=CHUNK_IDS)
def test_malformed_chunk_message_is_refused(site: Site, case: int) -> None:
    (site.dst / "a").mkdir()
    label, index, chunk = _chunk_cases(_chunk_for(site))[case]
    before, target = site.state(), site.target()
    out = site.deliver(copy_chunk, site.spec(), "a/f", index, chunk)
    assert out.failed_as_rejected(), (label, out)
    assert unchanged(before, site.state()) + unchanged(target, site.target()) == []


@pytest.mark.parametrize("chunk", [
    {"size": 2**62, "mtime_ns": 0, "ctime_ns": 0, "ino": 1, "chunk": 2**52},  # offsets far past the file
    {"size": 2**200, "mtime_ns": -(2**63), "ctime_ns": 2**100, "ino": -1, "chunk": 2**190},
], ids=["offsets-2^62", "offsets-2^200"])
@pytest.mark.parametrize("index", [0, 1000])
def test_well_formed_chunk_of_another_file_writes_nothing(site: Site, chunk: dict[str, int], index: int) -> None:
    """A chunk description that does not match the source file (huge offsets): nothing is written anywhere."""
    (site.dst / "a").mkdir()
    before, target = site.state(), site.target()
    out = site.deliver(copy_chunk, site.spec(), "a/f", index, chunk)
    assert out.reject is None and out.failures == []
    assert unchanged(before, site.state()) + unchanged(target, site.target()) == []


# -- target-side symlinks ------------------------------------------------------------------------------------


def test_target_directory_symlink_is_replaced_never_followed(site: Site) -> None:
    """A pre-existing target directory that is a symlink out of the root: the walk replaces it."""
    os.symlink(site.outside, site.dst / "a")
    before = site.state()
    out = site.deliver(copy_dir, site.spec(), "", None)
    assert out.reject is None and out.failures == []
    assert stat.S_ISDIR(os.lstat(site.dst / "a").st_mode)
    assert (site.dst / "a" / "f").read_bytes() == b"source data"
    assert unchanged(before, site.state()) == []


TARGET_DIR_TASKS: list[tuple[str, Any, str, list[Any]]] = [
    ("copy.dir-child", copy_dir, "copy", ["a/sub", None]),
    ("copy.files", copy_files, "copy", ["a", ["f"]]),
    ("copy.chunk", copy_chunk, "copy", ["a/f", 0, None]),
    ("delete.dir", delete_dir, "delete", ["a", None]),
    ("delete.files", delete_files, "delete", ["a", ["victim", "sub"]]),
    ("delete.purge", delete_purge, "delete", ["gone", "gone"]),
    ("dirtime.dir", dirtime_dir, "dirtime", ["a", None]),
]


@pytest.mark.parametrize("label, task, kind, args", TARGET_DIR_TASKS, ids=[t[0] for t in TARGET_DIR_TASKS])
def test_tasks_refuse_a_target_directory_that_is_a_symlink(site: Site, label: str, task: Any, kind: str,
                                                          args: list[Any]) -> None:
    """Tasks that open a target directory by path (not the walk that repairs it) fail on the link."""
    (site.src / "a" / "sub").mkdir()
    os.symlink(site.outside, site.dst / "a")
    os.symlink(site.outside, site.dst / "gone")  # no source counterpart: a purge candidate
    if label == "copy.chunk":
        args = [args[0], 0, _chunk_for(site)]
    before = site.state()
    out = site.deliver(task, site.spec(kind), *args)
    assert out.reject is None
    assert len(out.failures) == 1 and out.failures[0].errno in (errno.ELOOP, errno.ENOTDIR), out.failures
    assert unchanged(before, site.state()) == []
    assert os.readlink(site.dst / "a") == os.fspath(site.outside)


def test_delete_pass_unlinks_target_symlinks_without_following(site: Site) -> None:
    """Target symlinks (to a directory and to a file outside) whose source is gone are removed, not followed."""
    os.symlink(site.outside, site.dst / "dirlink")
    os.symlink(site.outside / "victim", site.dst / "filelink")
    before = site.state()
    out = site.deliver(delete_dir, site.spec("delete"), "", None)
    assert out.reject is None and out.failures == []
    assert not os.path.lexists(site.dst / "dirlink") and not os.path.lexists(site.dst / "filelink")
    assert unchanged(before, site.state()) == []


def _swap_for_link(path: Path, to: Path) -> None:
    """What a concurrent writer does: move the directory away (inside the target) and put a link in its place."""
    os.rename(path, path.with_name(path.name + ".moved"))
    os.symlink(to, path)


def test_target_directory_swapped_after_mkdir(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk creates target directory "a" (FsApi.mkdir); it is swapped for a link before it is opened."""
    real = PosixFs.mkdir

    def mkdir_then_swap(self: PosixFs, dir_fd: int, name: str, mdt: int | None) -> None:
        real(self, dir_fd, name, mdt)
        if name == "a":
            _swap_for_link(site.dst / "a", site.outside)

    monkeypatch.setattr(PosixFs, "mkdir", mkdir_then_swap)
    before = site.state()
    out = site.deliver(copy_dir, site.spec(), "", None)
    assert [(f.path, f.errno in (errno.ELOOP, errno.ENOTDIR)) for f in out.failures] == [(b"a", True)]
    assert unchanged(before, site.state()) == []
    assert (site.dst / "top.txt").read_bytes() == b"top"  # the rest of the walk went on


def _swap_at_open(monkeypatch: pytest.MonkeyPatch, site: Site, fn: str, rel: bytes | str) -> list[bool]:
    """Swap target directory ``rel`` for a link the first time the engine opens it on the target side
    through ``fsio.<fn>`` (after the source side was opened and listed)."""
    real = getattr(fsio, fn)
    swapped: list[bool] = []

    def opener(*a: Any, source: bool) -> int:
        if not source and a[-1] == rel and not swapped:
            swapped.append(True)
            _swap_for_link(site.dst / os.fsdecode(rel), site.outside)
        return real(*a, source=source)

    monkeypatch.setattr(fsio, fn, opener)
    return swapped


@pytest.mark.parametrize("label, task, kind, args, fn, rel", [
    ("copy.files", copy_files, "copy", ["a", ["f"]], "open_dir", b"a"),
    ("copy.chunk", copy_chunk, "copy", ["a/f", 0, None], "open_dir", b"a"),
    ("copy.dir-inline-child", copy_dir, "copy", ["", None], "open_subdir", "a"),
    ("delete.files", delete_files, "delete", ["a", ["victim"]], "open_dir", b"a"),
    ("delete.dir", delete_dir, "delete", ["a", None], "open_dir", b"a"),
    ("dirtime.dir", dirtime_dir, "dirtime", ["a", None], "open_dir", b"a"),
], ids=["copy.files", "copy.chunk", "copy.dir-inline-child", "delete.files", "delete.dir", "dirtime.dir"])
def test_target_directory_swapped_between_source_listing_and_target_open(
        site: Site, monkeypatch: pytest.MonkeyPatch, label: str, task: Any, kind: str, args: list[Any], fn: str,
        rel: bytes | str) -> None:
    (site.dst / "a").mkdir()
    (site.dst / "a" / "victim").write_bytes(b"target only")
    if label == "copy.chunk":
        args = [args[0], 0, _chunk_for(site)]
    before = site.state()
    swapped = _swap_at_open(monkeypatch, site, fn, rel)
    out = site.deliver(task, site.spec(kind), *args)
    assert swapped, "the seam was not reached"
    assert out.reject is None
    assert [f.errno in (errno.ELOOP, errno.ENOTDIR) for f in out.failures] == [True], out.failures
    assert unchanged(before, site.state()) == []


def _make_source(site: Site, kind: str) -> None:
    p = site.src / "a" / "g"
    if kind == "file":
        p.write_bytes(b"new data")
    elif kind == "symlink":
        os.symlink("f", p)
    elif kind == "fifo":
        os.mkfifo(p, 0o640)
    elif kind == "hardlink":
        os.link(site.src / "a" / "f", p)


@pytest.mark.parametrize("kind", ["file", "symlink", "fifo", "hardlink"])
@pytest.mark.parametrize("points_to", ["victim-file", "outside-dir", "dangling"])
@pytest.mark.parametrize("task", ["copy.dir", "copy.files"])
def test_target_file_symlink_is_replaced_never_written_through(site: Site, kind: str, points_to: str,
                                                               task: str) -> None:
    (site.dst / "a").mkdir()
    _make_source(site, kind)
    link = {"victim-file": site.outside / "victim", "outside-dir": site.outside, "dangling": site.outside / "new"}
    os.symlink(link[points_to], site.dst / "a" / "g")
    before = site.state()
    if task == "copy.dir":
        out = site.deliver(copy_dir, site.spec(), "a", None)
    else:
        out = site.deliver(copy_files, site.spec(), "a", ["f", "g"])
    assert out.reject is None and out.failures == []
    got = os.lstat(site.dst / "a" / "g")
    want = os.lstat(site.src / "a" / "g")
    assert stat.S_IFMT(got.st_mode) == stat.S_IFMT(want.st_mode)
    if kind == "symlink":
        assert os.readlink(site.dst / "a" / "g") == "f"
    if kind in ("file", "hardlink"):
        assert (site.dst / "a" / "g").read_bytes() == (site.src / "a" / "g").read_bytes()
    if kind == "hardlink":
        assert got.st_ino == os.lstat(site.dst / "a" / "f").st_ino
    assert unchanged(before, site.state()) == []


def test_target_file_symlink_swapped_in_before_create(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target name was absent at compare time; a link to outside appears before the create (FsApi seam)."""
    real = PosixFs.create_file
    planted: list[str] = []

    def plant_then_create(self: PosixFs, dir_fd: int, name: str, src_fd: int, mode: int = 0o600) -> int:
        if name == "f" and not planted:
            planted.append(name)
            os.symlink(site.outside / "victim", name, dir_fd=dir_fd)
        return real(self, dir_fd, name, src_fd, mode)

    monkeypatch.setattr(PosixFs, "create_file", plant_then_create)
    before = site.state()
    out = site.deliver(copy_dir, site.spec(), "", None)
    assert planted and out.failures == []
    assert stat.S_ISREG(os.lstat(site.dst / "a" / "f").st_mode)
    assert (site.dst / "a" / "f").read_bytes() == b"source data"
    assert unchanged(before, site.state()) == []


def test_forged_hard_link_leader_in_the_ledger_cannot_leave_the_root(site: Site) -> None:
    """The leader of a hard-link group is a path read back from the ledger (memcached, no authentication).

    A forged leader ``../outside/victim`` (made to look complete: same size and mtime as the source) is
    refused like a message path; the target name is not linked to the file outside.
    """
    os.link(site.src / "a" / "f", site.src / "a" / "g")
    st = os.stat(site.src / "a" / "f")
    victim = site.outside / "victim"
    victim.write_bytes(b"x" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    spec = site.spec()
    forged = json.dumps(to_wire(b"../outside/victim"))
    site.worker.ctx.ledger.claim(spec["run_id"], f"hl:{st.st_dev}:{st.st_ino}", forged)
    before = site.state()
    out = site.deliver(copy_dir, spec, "", None)
    assert sorted((f.path, "not allowed" in f.message) for f in out.failures) == [(b"a/f", True), (b"a/g", True)]
    assert not os.path.lexists(site.dst / "a" / "f") and not os.path.lexists(site.dst / "a" / "g")
    assert os.stat(victim).st_nlink == 1
    assert unchanged(before, site.state()) == []


def test_chunk_part_file_symlink_is_not_written_through(site: Site) -> None:
    """The part file of a chunked copy has a predictable name: a link planted there is never followed."""
    big = site.src / "a" / "big"
    big.write_bytes(os.urandom(3 * MiB))
    (site.dst / "a").mkdir()
    st = os.stat(big)
    cs = ChunkSpec(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, MiB)
    spec = site.spec(chunk_threshold=2 * MiB, chunk_size=MiB)
    part = part_name(spec["run_id"], b"a/big", cs)
    os.symlink(site.outside / "victim", site.dst / "a" / part)
    before = site.state()
    out = site.deliver(copy_files, spec, "a", ["big"])  # the split: creates (opens) the part file
    assert [(f.path, f.errno) for f in out.failures] == [(b"a/big", errno.ELOOP)], out.failures
    out = site.deliver(copy_chunk, spec, "a/big", 1, cs.as_wire())  # a chunk task writing into it
    assert [(f.path, f.errno) for f in out.failures] == [(b"a/big", errno.ELOOP)] * 2, out.failures
    assert unchanged(before, site.state()) == []
    assert site.worker.ctx.stats.totals(spec["run_id"]).get(C.CHUNKS, 0) == 0


# -- credentials on disk -------------------------------------------------------------------------------------


def test_broker_credentials_files_are_git_ignored() -> None:
    """The password file rabbitmq_init.sh writes, its temporary file and the broker host file never get committed."""
    script = (REPO / "rabbitmq" / "rabbitmq_init.sh").read_text()
    assert 'passfile="$dir/rabbitmq_${username}.conf"' in script
    assert 'mktemp "$dir/.rabbitmq_${username}.conf.XXXXXX"' in script
    assert 'chmod 0400 -- "$tmp"' in script and "umask 077" in script
    assert script.index("umask 077") < script.index('printf \'%s\\n\' "$password" >"$tmp"')
    for path in ("rabbitmq/rabbitmq_cmover.conf", "rabbitmq/rabbitmq_site-2.conf", "rabbitmq/rabbitmq.conf",
                 "rabbitmq/.rabbitmq_cmover.conf.Ab12Cd", "rabbitmq/.rabbitmq.conf.Xy34Zw",
                 "rabbitmq/rabbitmq-api.conf"):
        r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path], capture_output=True)
        assert r.returncode == 0, f"{path} is not git-ignored"
    for path in ("rabbitmq/rabbitmq_init.sh", "rabbitmq/rabbitmq.conf.example",
                 "rabbitmq/rabbitmq_USERNAME.conf.example"):
        r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path], capture_output=True)
        assert r.returncode == 1, f"{path} must stay tracked"


@pytest.mark.parametrize("task", [copy_dir, copy_files, copy_chunk, delete_dir, delete_files, delete_purge,
                                  dirtime_dir], ids=lambda t: t.name)
@pytest.mark.parametrize("shape", ["none", "one", "too many", "unknown keyword"])
def test_wrong_number_of_arguments_is_rejected_not_a_traceback(site: Site, task: Any, shape: str) -> None:
    from celery.exceptions import Reject

    spec = site.spec(task.name.split(".")[1])
    args, kwargs = {"none": ((), {}), "one": ((spec,), {}), "too many": ((spec, "", None, 1, 2, 3), {}),
                    "unknown keyword": ((spec, ""), {"evil": 1})}[shape]
    before, target = site.state(), site.target()
    with pytest.raises(Reject) as info:
        task(*args, **kwargs)  # Task.__call__: what the worker's tracer calls
    assert info.value.requeue is False and "wrong arguments" in str(info.value.reason)
    assert unchanged(before, site.state()) + unchanged(target, site.target()) == []
    assert site.worker.sent == []


@pytest.mark.parametrize("name", sorted(bodies.TASKS))
@pytest.mark.parametrize("shape", ["spec only", "too many"])
def test_embedded_message_with_wrong_arguments_is_rejected_not_run(name: str, shape: str) -> None:
    """The embedded pool's messages are checked against their task's arguments before anything runs."""
    spec = {"not": "read"}  # the arguments are refused before the spec is looked at
    args = {"spec only": [spec], "too many": [spec, "", None, 1, 2, 3]}[shape]

    def send(messages: Any) -> None:
        raise AssertionError(f"a refused message sent {messages}")

    with pytest.raises(Rejected) as info:
        run_message((name, args, "t1"), "embedded@test", send)
    assert info.value.requeue is False and info.value.reason.startswith("wrong arguments: ")


def test_a_type_error_inside_a_task_factory_is_a_bug_not_a_refused_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the call's own refusal of the arguments rejects a message: a TypeError the factory raises itself
    goes on as the error it is (the message is not dropped as malformed)."""
    def broken(tid: str, rel: Any) -> Any:
        raise TypeError("a bug in the factory")

    monkeypatch.setitem(bodies.TASKS, "cmover.copy.dir", broken)
    with pytest.raises(TypeError, match="a bug in the factory"):
        run_message(("cmover.copy.dir", [{}, ""], "t1"), "embedded@test", lambda messages: None)
