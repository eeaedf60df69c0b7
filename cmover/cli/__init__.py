"""The ``cmover`` command (see :mod:`cmover.cli.main`).

Importing this package imports nothing else, and it is written for any Python 3: the classic shims import
:mod:`cmover.cli.pyenv` before they know that the interpreter is the project's (RHEL 8's is 3.6).
"""


def main(argv=None):  # type: (list[str] | None) -> int
    """The ``cmover`` entry point (:func:`cmover.cli.main.main`). Ctrl-C while the command is still importing
    (about 0.1 s) ends it like Ctrl-C later: one line and exit 130, no traceback."""
    import gc
    import os
    import sys

    # Python puts the script's directory first on the path: the venv's bin, or /usr/local/bin, where a stray
    # json.py would be imported in place of the library by a command that runs as root. Dropped, as -P
    # (PYTHONSAFEPATH) would; cmover itself is imported already. It was also a stat per top-level import.
    if sys.path and sys.argv and sys.argv[0] and sys.path[0] == os.path.dirname(os.path.realpath(sys.argv[0])):
        del sys.path[0]

    # The command's imports allocate a few hundred thousand objects and free none of them: the cyclic
    # collector, triggered by the allocations, walks them for nothing (importing the copy path: 90 -> 82 ms of
    # CPU with it off). It runs again once the command has imported what it runs (a pass: its mode's modules
    # too), with what was imported out of its sight (cmover.cli._common.collect_from_now).
    gc.disable()
    try:
        try:
            from cmover.cli.main import main as run
        except KeyboardInterrupt:
            sys.stderr.write("cmover: interrupted\n")
            return 130
        return run(argv)
    finally:
        gc.enable()  # for a caller that goes on (tests); the command itself turned it on again already


__all__ = ["main"]
