"""The classic entry point: ``python cmover_control.py start|stop|status|... [PASS] [options]``.

A shim over the ``cmover`` command so that operators of the original tool keep their habits:
``start`` seeds the copy pass (or the pass named next) for config.py's source_mount/target_mount.
"""

import sys

from cmover.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    commands = ("start", "stop", "status", "errors", "deleted", "retry-failed", "pause", "resume", "pool")
    if not args or args[0] not in commands:
        print(f"usage: python cmover_control.py {'|'.join(commands)} [PASS] [options]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(args))
