"""The ``cmover`` command (see :mod:`cmover.cli.main`).

Importing this package imports nothing else, and it is written for any Python 3: the classic shims import
:mod:`cmover.cli.pyenv` before they know that the interpreter is the project's (RHEL 8's is 3.6).
"""


def main(argv=None):  # type: (list[str] | None) -> int
    """The ``cmover`` entry point (:func:`cmover.cli.main.main`). Ctrl-C while the command is still importing
    (about 0.15 s) ends it like Ctrl-C later: one line and exit 130, no traceback."""
    try:
        from cmover.cli.main import main as run
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("cmover: interrupted\n")
        return 130
    return run(argv)


__all__ = ["main"]
