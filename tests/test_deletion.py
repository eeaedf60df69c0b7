"""cmover.core.deletion.Deletion: the deletion list's record, its wire form, and records of older lists."""

from __future__ import annotations

import json
import os
import socket

import pytest

from cmover.core.deletion import Deletion
from cmover.core.failure import Failure
from cmover.state.errorlist import MemoryErrors, deleted_list


@pytest.mark.parametrize("d", [Deletion(b"a/b", "file"), Deletion(b"caf\xe9/\n t", "tree", True, "h:1", 5.5)])
def test_round_trip_through_json(d):
    back = Deletion.from_dict(json.loads(json.dumps(d.as_dict())))
    assert back == d and (back.worker, back.at, back.dry_run) == (d.worker, d.at, d.dry_run)


def test_wire_form():
    assert Deletion(b"x/\xff", "tree", True, "host:7", 1.25).as_dict() == {
        "path": {"b64": "eC//"}, "what": "tree", "dry_run": True, "worker": "host:7", "time": 1.25}


def test_now_names_this_process():
    d = Deletion.now(b"f", "file", False)
    assert d.worker.endswith(f":{os.getpid()}") and d.at > 0
    assert d == Deletion(b"f", "file")  # where and when are not part of what was deleted


def test_who_and_when_are_left_out_of_equality_and_hash_of_every_list_record():
    from cmover.core.difference import Difference
    from cmover.core.hsmrecord import HsmRecord

    for rec in (Deletion(b"f", "file", True), Failure(b"f", "lstat", 2, "gone", "target"),
                Difference(b"f", "size", "1", "2"), HsmRecord(b"f", "imported", "0x1:0x2:0x0", "0x3:0x4:0x0", 1)):
        other = rec._replace(worker="elsewhere:9", at=99.5)
        assert rec == other and (rec != other) is False and hash(rec) == hash(other) and len({rec, other}) == 1
        changed = rec._replace(path=b"g")
        assert rec != changed and (rec == changed) is False
    assert Deletion(b"f", "file") != Failure(b"f", "file", 0, "")  # records of two lists never compare equal


def test_a_forked_child_names_itself_not_its_parent():
    """The ``host:pid`` of records is worked out once per process (cmover.core.origin), and again in a forked
    child (a pool process): a deletion made there names the child."""
    from cmover.core.difference import Difference
    from cmover.core.failure import item_failure

    parent = Deletion.now(b"f", "file", False).worker
    assert parent == f"{socket.gethostname()}:{os.getpid()}"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        made = [Deletion.now(b"f", "file", False).worker, Difference.now(b"f", "size", 1, 2).worker,
                item_failure(b"f", "copy", OSError(5, "EIO")).worker]
        os.write(w, json.dumps(made).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    got = json.loads(os.read(r, 4096))
    os.close(r)
    assert got == [f"{socket.gethostname()}:{pid}"] * 3
    assert Deletion.now(b"f", "file", False).worker == parent


def test_line_shows_a_tree_with_a_slash_and_escapes_names():
    assert Deletion(b"d/gone", "tree").line() == "d/gone/"
    assert Deletion(b"d/gone", "file").line() == "d/gone"
    assert Deletion(b"caf\xe9", "file").line() == "b'caf\\xe9'"
    assert Deletion(b"caf\xe9", "tree").line() == "b'caf\\xe9/'"  # as listed before deletions had a record


def test_records_of_an_older_list_still_read():
    """Lists written when deletions were error-list records: op "delete tree" and a "/" mark a tree."""
    tree = Failure(b"gone/", "delete tree", 0, "directory tree", "target").as_dict()
    entry = Failure(b"d/f\xff", "delete", 0, "file", "target").as_dict()
    assert Deletion.from_dict(tree) == Deletion(b"gone", "tree")
    assert Deletion.from_dict(entry) == Deletion(b"d/f\xff", "file")
    assert [Deletion.from_dict(d).line() for d in (tree, entry)] == ["gone/", "b'd/f\\xff'"]


def test_memory_list_keeps_deletions_apart_from_failures():
    lists = MemoryErrors()
    lists.record("delete-1", [Failure(b"x", "lstat", 13, "Permission denied")])
    lists.record(deleted_list("delete-1"), [Deletion(b"a", "file"), Deletion(b"t", "tree")])
    assert lists.read_deleted("delete-1") == ([Deletion(b"a", "file"), Deletion(b"t", "tree")], 2)
    assert [f.path for f in lists.read("delete-1")[0]] == [b"x"]
