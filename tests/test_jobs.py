"""cmover.engine.jobs and the pass-declared jobs: task ids and message arguments pinned to their values.

The ledger counts a pass's tasks by deterministic id (cmover.state.ledger.task_id): a job must get the same
id and the same message arguments for the same work in every version, or a redelivered parent published by
one version would be counted again by another. The ids below were computed before jobs had types of their
own (when one Job class carried every kind) and must never change.
"""

from __future__ import annotations

import json

import pytest

from cmover.core.passes import PassKind, PassSpec
from cmover.engine.chunks import ChunkJob, ChunkSpec
from cmover.engine.deletepass import PurgeJob
from cmover.engine.jobs import DirJob, FilesJob
from cmover.worker.taskbase import job_task_id

SPEC = PassSpec(run_id="copy-20260101T000000-0a1b2c3d", kind=PassKind.COPY, src_root=b"/s", dst_root=b"/d")
CS = ChunkSpec(size=10 << 20, mtime_ns=1700000000123456789, ctime_ns=1700000000987654321, ino=4242, chunk=1 << 20)

CASES = [
    (DirJob(b"a/\xffb", 3), "9dd478ea-0f11-5396-8c6a-bfd2e2ed6bc2", "33228c02-c56b-5c15-a435-64990c7dac87",
     [{"b64": "YS//Yg=="}, 3]),
    (DirJob(b""), "0cf8d197-4555-5cca-a0c4-d047f1ac43f8", "3fbb6b8e-bfa2-54d6-93f6-d69dbd257cff", ["", None]),
    (DirJob(b"a/x", 3, ((b"a/y", None), (b"a/\xfe", 0))), "7551358d-94f9-5011-926b-5831c29be236",
     "33711679-e627-5b16-8f6b-e8309e9f1bab", ["a/x", 3, [["a/y", None], [{"b64": "YS/+"}, 0]]]),
    (FilesJob(b"a", (b"x", b"caf\xc3\xa9", b"\xfe"), 2), "c7eeb809-8738-5496-b905-1f2323e4baab",
     "781d42d2-a8b8-5586-b276-7af0303d275e", ["a", ["x", "caf\u00e9", {"b64": "/g=="}]]),
    (FilesJob(b"a", (b"x",), 0, ((b"a/b", (b"y", b"\xfe")), (b"c", ()))), "d276fc46-e06d-51a5-82d6-3e2157843fdd",
     "b810d9e7-7c28-5edb-b997-b170c6c07fd0", ["a", ["x"], [["a/b", ["y", {"b64": "/g=="}]], ["c", []]]]),
    (ChunkJob(b"a/big", 7, CS), "fb15e2aa-5532-56c5-94b4-2b0da2677ba1", "a1ff0b93-d3b6-5b8a-b093-564451b670d5",
     ["a/big", 7, {"size": 10485760, "mtime_ns": 1700000000123456789, "ctime_ns": 1700000000987654321,
                   "ino": 4242, "chunk": 1048576}]),
    (PurgeJob(b"gone/sub", b"gone"), "88c76473-3aa7-5033-a7f3-f36339082e0d", "cdfb223d-86c4-5a54-8ab9-67bca93842b1",
     ["gone/sub", "gone"]),
]


@pytest.mark.parametrize("job, tid, retry_tid, wire", CASES, ids=[c[0].kind for c in CASES])
def test_task_ids_and_message_arguments_never_change(job, tid, retry_tid, wire):
    assert job_task_id(SPEC, job) == tid
    assert job_task_id(SPEC._replace(attempt=2), job) == retry_tid
    assert json.loads(json.dumps(job.wire_args())) == wire


def test_a_batch_of_a_directory_just_made_says_so_last_and_keeps_its_task_id():
    from cmover.worker.bodies import batch_groups

    plain, made = FilesJob(b"a", (b"x", b"\xfe"), 2), FilesJob(b"a", (b"x", b"\xfe"), 2, made=True)
    assert json.loads(json.dumps(made.wire_args())) == ["a", ["x", {"b64": "/g=="}], None, True]
    assert job_task_id(SPEC, made) == job_task_id(SPEC, plain), "a redelivery is the same task, made or not"
    assert batch_groups(*made.wire_args()[:3]) == [(b"a", [b"x", b"\xfe"])]
    with pytest.raises(ValueError, match="no further directories"):
        FilesJob(b"a", (b"x",), 0, ((b"b", (b"y",)),), made=True)


def test_the_root_task_of_a_target_just_made_says_so_last_and_keeps_its_task_id():
    from cmover.core.errors import ConfinementError
    from cmover.worker.bodies import dir_job

    made = DirJob(b"", made=True)
    assert json.loads(json.dumps(made.wire_args())) == ["", None, None, True]
    assert job_task_id(SPEC, made) == job_task_id(SPEC, DirJob(b""))
    assert dir_job(*made.wire_args()) == made and dir_job("", None, None).made is False
    with pytest.raises(ValueError, match="no further directories"):
        DirJob(b"a", None, ((b"b", None),), made=True)
    for flag, also in (("true", None), (1, None), (None, None), (True, [["b", None]])):
        with pytest.raises(ConfinementError):
            dir_job("a", None, also, flag)


def test_each_job_kind_names_its_task():
    assert [type(c[0]).kind for c in CASES] == ["dir", "dir", "dir", "files", "files", "chunk", "purge"]
    assert [c[0].index for c in CASES] == [0, 0, 0, 2, 0, 7, 0]


def test_a_batch_message_with_further_directories_is_checked_whole_before_anything_runs():
    from cmover.core.errors import ConfinementError
    from cmover.worker.bodies import batch_groups

    job = CASES[4][0]
    assert batch_groups(*json.loads(json.dumps(job.wire_args()))) == [(b"a", [b"x"]), (b"a/b", [b"y", b"\xfe"]),
                                                                       (b"c", [])]
    assert batch_groups("a", ["x"], None) == [(b"a", [b"x"])]
    for also in ([["../up", ["x"]]], [["a", ["x/y"]]], [["a"]], "a", [["a", "x"]]):
        with pytest.raises(ConfinementError):
            batch_groups("a", ["x"], also)


def test_a_directory_message_with_further_directories_is_checked_whole_before_anything_runs():
    from cmover.core.errors import ConfinementError
    from cmover.worker.bodies import dir_job

    job = CASES[2][0]
    assert dir_job(*json.loads(json.dumps(job.wire_args()))) == job
    assert dir_job("a", None, None) == DirJob(b"a")
    for mdt, also in ((True, None), ("1", None), (2**31, None), (-2, None), (None, [["../up", 0]]),
                      (None, [["a", 1.5]]), (None, [["a"]]), (None, "a"), (None, [["a", False]])):
        with pytest.raises(ConfinementError):
            dir_job("a", mdt, also)


def test_gathered_batches_are_each_handled_once_in_sorted_order_big_ones_alone_over_enough_tasks():
    from cmover.engine.changeplan import GATHER_MIN, GATHER_TASKS, gather

    jobs = [FilesJob(b"", ())] + [FilesJob(b"d%04d" % i, (b"n",)) for i in range(40)]
    jobs.insert(10, FilesJob(b"d0008x", tuple(b"f%d" % i for i in range(GATHER_MIN))))
    out = gather(jobs, 1000)
    tasks = [[(g.rel, g.names), *g.also] for g in out]
    assert sorted(p for t in tasks for p in t) == sorted((j.rel, j.names) for j in jobs)
    assert all(t == sorted(t) for t in tasks)
    assert FilesJob(b"d0008x", jobs[10].names) in out  # as large as a share: on its own
    assert [1 + len(g.also) for g in out if g.rel != b"d0008x"] == [16, 16, 9]
    # Many names: at least GATHER_TASKS tasks, each a share of about the same size; a batch bounds the share.
    many = [FilesJob(b"d%05d" % i, (b"a", b"b")) for i in range(5000)]
    assert len(gather(many, 1000)) >= GATHER_TASKS
    assert max(2 * (1 + len(g.also)) for g in gather(many, 50)) <= 50


def test_a_gathered_task_past_its_time_hands_the_directories_not_begun_to_a_new_task(monkeypatch):
    from cmover.engine import jobs as jobsmod

    clock = iter([0.0, 1.0, 99.0])
    monkeypatch.setattr(jobsmod.time, "monotonic", lambda: next(clock))
    done: list[bytes] = []
    emitted: list[FilesJob] = []
    groups = [(b"a", [b"x"]), (b"b", [b"y"]), (b"c", []), (b"d", [b"z"])]
    jobsmod.run_groups(groups, 10.0, emitted.append, lambda rel, names: done.append(rel))
    assert done == [b"a", b"b"]
    assert emitted == [FilesJob(b"c", (), 0, ((b"d", (b"z",)),))]
