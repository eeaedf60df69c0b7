"""Run ``celery`` with test-only fault seams: ``python tests/faults/seams.py CELERY_SCRIPT ARGS...``.

The fault tests start every worker through this file. It wraps :meth:`cmover.engine.copier.Copier.copy_entry`
and :meth:`cmover.engine.copypass.CopyPass._new_file` (the engine's "handle one non-directory entry", the
second for a new file in a directory the pass has just made) before Celery starts, so the prefork pool children
inherit the wrapper; with no ``CMFAULT_*`` variable set it changes nothing. Nothing of this lives in
cmover itself.

* ``CMFAULT_POISON=<relative path>``: copying that entry kills the pool process with SIGKILL, on every
  delivery (a file that always crashes its worker, e.g. one that drives it out of memory).
* ``CMFAULT_SLOW=<relative path>=<seconds>``: copying that entry first sleeps that long, on every delivery
  (a copy that takes longer than the broker's consumer timeout).
* ``CMFAULT_PACE=<seconds>``: copying any entry first sleeps that long (a slow filesystem): a pass whose
  workers are killed mid-pass is still running when the test reaches for them, however fast the machine.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time


def install() -> None:
    poison = os.environ.get("CMFAULT_POISON")
    slow = os.environ.get("CMFAULT_SLOW")
    pace = float(os.environ.get("CMFAULT_PACE") or 0)
    if not poison and not slow and not pace:
        return
    from cmover.engine import copier, copypass

    poison_rel = os.fsencode(poison) if poison else None
    slow_rel, slow_s = None, 0.0
    if slow:
        rel, _, secs = slow.rpartition("=")
        slow_rel, slow_s = os.fsencode(rel), float(secs)
    log = logging.getLogger("cmover.faultseam")

    def before(rel: bytes | None) -> None:
        if rel is not None and rel == poison_rel:
            log.warning("fault seam: %r kills its worker process %d", rel, os.getpid())
            for h in logging.getLogger().handlers:
                h.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if rel is not None and rel == slow_rel:
            log.warning("fault seam: copying %r takes %.1f s more", rel, slow_s)
            time.sleep(slow_s)
        if pace:
            time.sleep(pace)

    original = copier.Copier.copy_entry

    def copy_entry(self, src_dir_fd, dst_dir_fd, name, st, rel=None, *more):  # type: ignore[no-untyped-def]
        before(rel)
        return original(self, src_dir_fd, dst_dir_fd, name, st, rel, *more)

    copier.Copier.copy_entry = copy_entry  # type: ignore[method-assign]

    # A new file of a directory the pass has just made is copied through CopyPass._new_file instead.
    new_file = copypass.CopyPass._new_file

    def _new_file(self, rel, src_fd, dst_fd, name, *more):  # type: ignore[no-untyped-def]
        before((rel + b"/" if rel else b"") + os.fsencode(name))
        return new_file(self, rel, src_fd, dst_fd, name, *more)

    copypass.CopyPass._new_file = _new_file  # type: ignore[method-assign]

def main() -> None:
    install()
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *sys.argv[2:]]  # argv[1] is the celery script the worker command names
    celery_main()


if __name__ == "__main__":
    main()
