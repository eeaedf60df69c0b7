"""cmover.engine.jobs and the pass-declared jobs: task ids and message arguments pinned to their values.

The ledger counts a pass's tasks by deterministic id (cmover.state.ledger.task_id): a job must get the same
id and the same message arguments for the same work in every version, or a redelivered parent published by
one version would be counted again by another. The ids below were computed before jobs had types of their
own (when one Job class carried every kind) and must never change.
"""

from __future__ import annotations

import dataclasses
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
    (FilesJob(b"a", (b"x", b"caf\xc3\xa9", b"\xfe"), 2), "c7eeb809-8738-5496-b905-1f2323e4baab",
     "781d42d2-a8b8-5586-b276-7af0303d275e", ["a", ["x", "caf\u00e9", {"b64": "/g=="}]]),
    (ChunkJob(b"a/big", 7, CS), "fb15e2aa-5532-56c5-94b4-2b0da2677ba1", "a1ff0b93-d3b6-5b8a-b093-564451b670d5",
     ["a/big", 7, {"size": 10485760, "mtime_ns": 1700000000123456789, "ctime_ns": 1700000000987654321,
                   "ino": 4242, "chunk": 1048576}]),
    (PurgeJob(b"gone/sub", b"gone"), "88c76473-3aa7-5033-a7f3-f36339082e0d", "cdfb223d-86c4-5a54-8ab9-67bca93842b1",
     ["gone/sub", "gone"]),
]


@pytest.mark.parametrize("job, tid, retry_tid, wire", CASES, ids=[c[0].kind for c in CASES])
def test_task_ids_and_message_arguments_never_change(job, tid, retry_tid, wire):
    assert job_task_id(SPEC, job) == tid
    assert job_task_id(dataclasses.replace(SPEC, attempt=2), job) == retry_tid
    assert json.loads(json.dumps(job.wire_args())) == wire


def test_each_job_kind_names_its_task():
    assert [type(c[0]).kind for c in CASES] == ["dir", "dir", "files", "chunk", "purge"]
    assert [c[0].index for c in CASES] == [0, 0, 2, 7, 0]
