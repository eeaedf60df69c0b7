"""What the command modules share: the site settings of one command, and the exit code for "unknown"."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import TYPE_CHECKING

from cmover.core import logformat, site
from cmover.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from cmover.ops.status import PassStatus

#: The pass's state cannot be vouched for (ledger lost, a task it could not count, broker unreadable).
EXIT_UNKNOWN = 3


def load(args: argparse.Namespace, *, optional: bool = False) -> Settings:
    """The site settings for one command (:func:`cmover.core.settings.load_settings`), said on stderr with -v.

    A config file that is found is always validated: any problem in it is a ConfigError (exit 2),
    whatever the command. ``optional``: the embedded commands may run on the defaults, but only when
    no config file exists at all (none named by --config or $CMOVER_CONFIG, none in the usual places).
    """
    settings = load_settings(args.config, required=not optional)
    logformat.apply(settings.log_format)  # the command's log output (and its embedded pool's) from here on
    global _json_notes
    _json_notes = settings.log_format == "json"
    if args.verbose:
        if settings.config_path:
            note(f"config {settings.config_path} ({settings.config_origin})")
        else:
            note(f"no config file found ({settings.config_origin}); running on the default settings")
    site.install(settings)  # the Celery app, if the command needs it, must use the same file (broker, memcached)
    return settings


def collect_from_now() -> None:
    """Turn the cyclic collector back on (the entry point, :func:`cmover.cli.main`, turned it off for the
    imports), with every object made so far moved to its permanent generation (gc.freeze): a collection never
    walks them again, and a forked pool process never writes to their pages (copy-on-write keeps them shared).

    Called once the command has imported what it runs: by the dispatch after parsing, or, for a pass
    (``collects_later`` on its parser), by the pass once it knows its mode and has imported that mode's modules.
    Calling it again changes nothing."""
    gc.freeze()
    gc.enable()


_json_notes = False  # LOG_FORMAT = "json" in the settings the command loaded
#: The command's notes as log records: at INFO whatever -v says (a note is said when it matters).
_note_log = logging.getLogger("cmover.note")
_note_log.setLevel(logging.INFO)


def note(line: str, level: int = logging.INFO) -> None:
    """A note of the command to the operator on stderr (the config file read, how Lustre is handled, what a
    regular user does not preserve...): ``cmover: LINE``; with ``LOG_FORMAT = "json"`` a log record like
    every other line of the command's log output, so that stderr holds nothing but JSON lines. Errors that
    end the command (exit 2) stay one plain line."""
    if _json_notes:
        _note_log.log(level, line)
    else:
        print(f"cmover: {line}", file=sys.stderr)


def say_unknown(st: PassStatus) -> None:
    """On stderr, why the state of ``st`` is unknown, when the reading says more than "the ledger lost its
    count" (:attr:`PassStatus.note`)."""
    if st.note:
        print(f"cmover: the state of {st.kind} run {st.run_id} is unknown: {st.note}", file=sys.stderr)
