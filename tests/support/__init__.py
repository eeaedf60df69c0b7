"""What the tests share: one way to build trees, one way to compare them, one way to run a pass's jobs.

* :mod:`support.tree` -- :func:`~support.tree.build` makes a tree from a declarative spec (every entry
  type and attribute cmover copies); :func:`~support.tree.random_tree` generates a large deterministic
  one; :func:`~support.tree.add_fidelity` adds one of everything an exact copy must keep.
* :mod:`support.snap` -- :func:`~support.snap.snapshot` records a tree, :func:`~support.snap.diff`
  describes every difference between two records, :func:`~support.snap.compare_trees` does both.
* :mod:`support.runner` -- :class:`~support.runner.Run` runs a copy, delete or dirtime pass in this
  process, job by job, in random order with duplicate deliveries, as a pool of workers could.
* :mod:`support.worker` -- :class:`~support.worker.InProcessWorker` delivers Celery messages to the
  real task functions in this process (hostile-message and fuzz tests).

Test modules import from here (``from support import tree``: ``tests/`` is on ``sys.path`` under
pytest) or take conftest fixtures; they never import from each other.
"""
