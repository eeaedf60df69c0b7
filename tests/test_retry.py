"""cmover.retry.plan_retry: which jobs redo the failed items of a pass (lstat of real tmp trees)."""

from __future__ import annotations

import os

from cmover.copypass import Job
from cmover.errors import Failure
from cmover.passes import PassKind


def _f(path: bytes) -> Failure:
    return Failure(path, "open", 13, "Permission denied")


def _touch(root: bytes, rel: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "wb") as f:
        f.write(b"x")


def test_copy_failures_become_dir_and_batch_jobs(roots, make_spec):
    from cmover.retry import plan_retry

    src, _ = roots
    for rel in (b"a/f1", b"a/f2", b"a/b/f3", b"c/d/f4", b"e/f5", b"n\xffon-utf8"):
        _touch(src, rel)
    os.makedirs(os.path.join(src, b"empty"))
    spec = make_spec(batch=2)
    failures = [_f(b"a/f1"), _f(b"a/f2"), _f(b"e/f5"), _f(b"c/d"), _f(b"c/d/f4"), _f(b"n\xffon-utf8"),
                _f(b"gone/file"), _f(b"../escape"), _f(b"a/b/f3"), _f(b"empty/")]
    plan = plan_retry(spec, failures)
    assert plan.jobs == [Job("dir", b"c/d"), Job("dir", b"empty"),
                         Job("files", b"", (b"n\xffon-utf8",)),
                         Job("files", b"a", (b"f1", b"f2")),
                         Job("files", b"a/b", (b"f3",)),
                         Job("files", b"e", (b"f5",))]
    assert [f.path for f in plan.gone] == [b"gone/file"]
    assert [f.path for f in plan.unusable] == [b"../escape"]
    assert plan.retried == 8  # c/d/f4 is covered by the job of c/d


def test_batches_split_and_root_covers_everything(roots, make_spec):
    from cmover.retry import plan_retry

    src, _ = roots
    for i in range(5):
        _touch(src, b"big/f%d" % i)
    spec = make_spec(batch=2)
    plan = plan_retry(spec, [_f(b"big/f%d" % i) for i in range(5)])
    assert [(j.kind, j.rel, j.names, j.index) for j in plan.jobs] == [
        ("files", b"big", (b"f0", b"f1"), 0), ("files", b"big", (b"f2", b"f3"), 1), ("files", b"big", (b"f4",), 2)]
    plan = plan_retry(spec, [_f(b""), _f(b"big/f1")])
    assert plan.jobs == [Job("dir", b"")]  # the root's walk redoes all of it


def test_delete_and_dirtime_retries(roots, make_spec):
    from cmover.retry import plan_retry

    src, dst = roots
    _touch(dst, b"old/sub/file")  # a tree whose source is gone: purged through its parent's batch
    _touch(dst, b"kept/x")
    _touch(src, b"kept/y")
    delete = make_spec(kind=PassKind.DELETE, run_id="delete-test")
    plan = plan_retry(delete, [_f(b"old/sub"), _f(b"old/sub/file"), _f(b"kept/x"), _f(b"kept"),
                               _f(b"already/deleted")])
    assert plan.jobs == [Job("dir", b"kept"), Job("files", b"", (b"old",))]
    assert [f.path for f in plan.gone] == [b"already/deleted"]
    dirtime = make_spec(kind=PassKind.DIRTIME, run_id="dirtime-test")
    plan = plan_retry(dirtime, [_f(b"kept/y"), _f(b"kept")])
    assert plan.jobs == [Job("dir", b"kept")]
