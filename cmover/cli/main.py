"""The ``cmover`` command (and ``python cmover_control.py start|stop|status``): the parser and the dispatch.

Each command module adds its parsers and holds its ``cmd_*`` functions: :mod:`cmover.cli.passes` (copy,
delete, dirtime, sync, start), :mod:`cmover.cli.operate` (status, errors, retry-failed, deleted, stop,
pause, resume, pool, lustre-info, exporter), :mod:`cmover.cli.hsm` (hsm-rebind-list), :mod:`cmover.cli.changes`
(watch, ``--changes``).
:mod:`cmover.cli.render` formats, :mod:`cmover.cli.output` handles a reader that goes away.

Exit codes: 0 all good; 1 the pass finished but some items failed (they are listed); 2 bad input,
configuration or preflight failure (nothing was written); 3 the pass state is unknown (ledger lost, a
task the ledger could not count, broker unreadable); 130 interrupted; 141 (128 + SIGPIPE, what a shell
reports for a command whose reader went away) a listing whose output was closed before it was complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, NoReturn

from cmover.cli import changes, hsm, operate, output, passes, sync
from cmover.cli._common import EXIT_UNKNOWN, collect_from_now
from cmover.cli.output import EXIT_OUTPUT_GONE
from cmover.core.errors import EXIT_FATAL, EXIT_INTERRUPTED, CmoverError
from cmover.core.settings import PACKAGE_CONFIG


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout, as wide as the terminal. argparse makes a formatter for every option it adds (to
    check its metavar) and, given no width, asks ``shutil.get_terminal_size``: an import of shutil (with bz2 and
    lzma, 2 ms) and an ``ioctl`` per option of every command. The width is read here once, the same way: $COLUMNS,
    else standard output's terminal, else 80."""

    _columns: int | None = None

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        width = self.terminal_width() if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)

    @classmethod
    def terminal_width(cls) -> int:
        if cls._columns is None:
            try:
                cls._columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    cls._columns = os.get_terminal_size(1).columns
                except OSError:  # not a terminal
                    cls._columns = 80
        return cls._columns - 2  # argparse's own margin


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line and exit 2, as for every other bad input
        self.exit(EXIT_FATAL, f"cmover: {message}; see `{self.prog} --help`\n")


CONFIG_HELP = (
    "Configuration: the file named by --config, else by $CMOVER_CONFIG (either must exist), else ./config.py "
    f"in the current directory, else {PACKAGE_CONFIG} (beside the cmover package); the first found is read, "
    "no other. A file that is found is always validated: an unknown or mistyped setting is an error (exit 2), "
    "whatever the command. Only when no file exists at all do copy, delete, dirtime, sync and lustre-info "
    "run on the default settings (embedded). -v names the file used."
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; each subcommand's parser sets ``func``, the function that runs it.

    With ``command`` (the subcommand the command line names), only that subcommand's parser is built: the
    others are neither listed nor parsed, and building all 19 with their 190 options took 6.7 ms and about 400
    of a 10-file pass's 4,500 syscalls (argparse sizes a help formatter per option and looks up translations
    per parser). A name that builds nothing (a typo) needs the whole parser to say so.
    """
    p = _Parser(prog="cmover", description="Clone very large filesystems: copy, then delete and dirtime passes.",
                epilog=CONFIG_HELP)
    p.add_argument("--config", metavar="FILE", help="the config file to read (see below)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output, and say which config file is used (-vv: debug)")
    action = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub: Any = action if command is None else _Only(action, command)
    passes.add_parsers(sub, sync=sync.cmd_sync)
    operate.add_parsers(sub)
    hsm.add_parsers(sub)
    changes.add_watch_parser(sub)
    if command is not None and command not in action.choices:
        return build_parser()
    return p


class _Only:
    """The subparsers action as the command modules see it when one subcommand is parsed: every other
    subcommand's parser is a :class:`_Unbuilt` that takes what is added to it and keeps nothing."""

    def __init__(self, action: Any, command: str) -> None:
        self._action = action
        self._command = command

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name == self._command:
            return self._action.add_parser(name, **kwargs)
        return _Unbuilt()


class _Unbuilt:
    """A subcommand parser not built (see :class:`_Only`): its options, defaults and groups go nowhere."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def _named_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word after the global options), or None (help, none, unsure)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif word.startswith("--config=") or word == "--verbose" or (word[:2] == "-v" and set(word[1:]) == {"v"}):
            continue
        elif word.startswith("-"):
            return None  # -h, --help, or anything the parser must explain
        else:
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv); return its exit code."""
    return output.guarded(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    t0 = time.monotonic()
    try:
        words = changes.changes_argv(sys.argv[1:] if argv is None else argv)
        args = build_parser(_named_command(words)).parse_args(words)
        if not getattr(args, "collects_later", False):
            collect_from_now()
        output.for_command(args.command)
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.func(args))
    except CmoverError as exc:
        print(f"cmover: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print(f"cmover: interrupted after {time.monotonic() - t0:.1f} s", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = ["main", "build_parser", "EXIT_UNKNOWN", "EXIT_OUTPUT_GONE"]

if __name__ == "__main__":
    raise SystemExit(main())
