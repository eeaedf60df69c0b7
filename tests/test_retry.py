"""cmover.ops.retry.plan_retry: which jobs redo the failed items of a pass (lstat of real tmp trees)."""

from __future__ import annotations

import os

from support.tree import put

from cmover.core.failure import Failure
from cmover.core.passes import PassKind
from cmover.engine.jobs import DirJob, FilesJob


def _f(path: bytes) -> Failure:
    return Failure(path, "open", 13, "Permission denied")


def test_copy_failures_become_dir_and_batch_jobs(roots, make_spec):
    from cmover.ops.retry import plan_retry

    src, _ = roots
    for rel in (b"a/f1", b"a/f2", b"a/b/f3", b"c/d/f4", b"e/f5", b"n\xffon-utf8"):
        put(src, rel)
    os.makedirs(os.path.join(src, b"empty"))
    spec = make_spec(batch=2)
    failures = [_f(b"a/f1"), _f(b"a/f2"), _f(b"e/f5"), _f(b"c/d"), _f(b"c/d/f4"), _f(b"n\xffon-utf8"),
                _f(b"gone/file"), _f(b"../escape"), _f(b"a/b/f3"), _f(b"empty/")]
    plan = plan_retry(spec, failures)
    assert plan.jobs == [DirJob(b"c/d"), DirJob(b"empty"),
                         FilesJob(b"", (b"n\xffon-utf8",)),
                         FilesJob(b"a", (b"f1", b"f2")),
                         FilesJob(b"a/b", (b"f3",)),
                         FilesJob(b"e", (b"f5",))]
    assert [f.path for f in plan.gone] == [b"gone/file"]
    assert [f.path for f in plan.unusable] == [b"../escape"]
    assert plan.retried == 8  # c/d/f4 is covered by the job of c/d


def test_batches_split_and_root_covers_everything(roots, make_spec):
    from cmover.ops.retry import plan_retry

    src, _ = roots
    for i in range(5):
        put(src, b"big/f%d" % i)
    spec = make_spec(batch=2)
    plan = plan_retry(spec, [_f(b"big/f%d" % i) for i in range(5)])
    assert [(j.kind, j.rel, j.names, j.index) for j in plan.jobs] == [
        ("files", b"big", (b"f0", b"f1"), 0), ("files", b"big", (b"f2", b"f3"), 1), ("files", b"big", (b"f4",), 2)]
    plan = plan_retry(spec, [_f(b""), _f(b"big/f1")])
    assert plan.jobs == [DirJob(b"")]  # the root's walk redoes all of it


def test_delete_and_dirtime_retries(roots, make_spec):
    from cmover.ops.retry import plan_retry

    src, dst = roots
    put(dst, b"old/sub/file")  # a tree whose source is gone: purged through its parent's batch
    put(dst, b"kept/x")
    put(src, b"kept/y")
    delete = make_spec(kind=PassKind.DELETE, run_id="delete-test")
    plan = plan_retry(delete, [_f(b"old/sub"), _f(b"old/sub/file"), _f(b"kept/x"), _f(b"kept"),
                               _f(b"already/deleted")])
    assert plan.jobs == [DirJob(b"kept"), FilesJob(b"", (b"old",))]
    assert [f.path for f in plan.gone] == [b"already/deleted"]
    dirtime = make_spec(kind=PassKind.DIRTIME, run_id="dirtime-test")
    plan = plan_retry(dirtime, [_f(b"kept/y"), _f(b"kept")])
    assert plan.jobs == [DirJob(b"kept")]
