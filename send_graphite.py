"""Send the counters of every pass's current run to Graphite: ``python send_graphite.py [-v] [--config FILE]``.

Meant for cron, once a minute (see "Graphite" in README.md), e.g.
``* * * * * cd /opt/cmover && .venv/bin/python send_graphite.py``. Prints nothing and exits 0 on success
(one summary line with -v); exits 2 with one line on stderr naming the problem and the fix when memcached,
the broker or Graphite cannot be reached. The work is done by :mod:`cmover.ops.graphite`. Any Python 3 will
do: without cmover's dependencies it re-executes itself with the project's ``.venv`` (:mod:`cmover.cli.pyenv`).
"""

import sys


def _main() -> None:
    from cmover.cli.pyenv import use_project_python

    use_project_python(__file__)
    from cmover.ops.graphite import main

    raise SystemExit(main(sys.argv[1:]))


if __name__ == "__main__":
    _main()
