"""The ``cmover`` command (see :mod:`cmover.cli.main`).

Importing this package imports nothing else, and it is written for any Python 3: the classic shims import
:mod:`cmover.cli.pyenv` before they know that the interpreter is the project's (RHEL 8's is 3.6).
"""


def main(argv=None):  # type: (list[str] | None) -> int
    """The ``cmover`` entry point (:func:`cmover.cli.main.main`). Ctrl-C while the command is still importing
    (about 0.1 s) ends it like Ctrl-C later: one line and exit 130, no traceback."""
    import gc

    # The command's imports allocate a few hundred thousand objects and free none of them: the cyclic
    # collector, triggered by the allocations, walks them for nothing (importing the copy path: 90 -> 82 ms of
    # CPU with it off; a 10-file pass, whose later imports run with it on again: about 3 ms). It runs again
    # once the command is parsed (cmover.cli.main), with what was imported out of its sight.
    gc.disable()
    try:
        try:
            from cmover.cli.main import main as run
        except KeyboardInterrupt:
            import sys

            sys.stderr.write("cmover: interrupted\n")
            return 130
        return run(argv)
    finally:
        gc.enable()  # for a caller that goes on (tests); the command itself turned it on again already


__all__ = ["main"]
