"""The classic entry point: ``python cmover_control.py start|stop|status|... [PASS] [options]``.

A shim over the ``cmover`` command so that operators of the original tool keep their habits:
``start`` seeds the copy pass (or the pass named next) for config.py's source_mount/target_mount. Any
Python 3 will do: without cmover's dependencies it re-executes itself with the project's ``.venv``
(:mod:`cmover.cli.pyenv`).

Imported, it is the Celery app for Celery's own commands: ``celery -A cmover_control inspect active``,
``celery -A cmover_control control pool_grow 2`` (the same app as ``-A cmover.app``). Importing it has no
side effect.
"""

import sys

COMMANDS = ("start", "stop", "status", "errors", "deleted", "differences", "retry-failed", "pause", "resume", "pool")


def _main() -> None:
    from cmover.cli.pyenv import use_project_python

    use_project_python(__file__)
    from cmover.cli.main import main

    args = sys.argv[1:]
    if not args or args[0] not in COMMANDS:
        print(f"usage: python cmover_control.py {'|'.join(COMMANDS)} [PASS] [options]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(args))


if __name__ == "__main__":
    _main()
else:
    from cmover.app import app  # noqa: F401  `celery -A cmover_control` finds the app under this name
