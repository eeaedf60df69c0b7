"""Send the counters of every pass's current run to Graphite: ``python send_graphite.py [-v] [--config FILE]``.

Meant for cron, once a minute (see "Graphite" in README.md), e.g.
``* * * * * cd /opt/cmover && .venv/bin/python send_graphite.py``. Prints nothing and exits 0 on success
(one summary line with -v); exits 2 with one line on stderr naming the problem and the fix when memcached,
the broker or Graphite cannot be reached. The work is done by :mod:`cmover.graphite`.
"""

import sys

from cmover.graphite import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
