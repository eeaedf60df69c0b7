"""Byte sizes and the checks of size settings, shared by config.py (:mod:`cmover.core.settings`) and the
command line (:mod:`cmover.engine.planner`, :mod:`cmover.cli.passes`).

Each check names the two settings it compares and ends its one-line :class:`ConfigError` with ``fix``,
the caller's advice ("fix config.py", "give other sizes"), so the same rule reads right wherever it is
broken.
"""

from __future__ import annotations

from cmover.core.errors import ConfigError

MIN_CHUNK = 1 << 20  # the smallest chunk of a chunked copy (1 MiB)

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int:
    """A byte count: an int, or text with an optional binary suffix: 4096, 64K, 256M, 1G, 2T (KiB, MiB, 1GB
    also accepted). ValueError for anything else, negative sizes included; its message ("is not a size
    (examples: ...)") follows the value, which the caller shows as it sees fit."""
    if isinstance(value, bool):
        raise ValueError("is not a size (examples: 0, 4096, 64K, 256M, 1G)")
    if isinstance(value, int):
        n = value
    else:
        t = value.strip().upper().removesuffix("IB").removesuffix("B")
        unit = t[-1:] if t[-1:] in _UNITS else ""
        digits = t[: len(t) - len(unit)].strip()
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError("is not a size (examples: 0, 4096, 64K, 256M, 1G)")
        n = int(digits) * _UNITS[unit]
    if n < 0:
        raise ValueError("is not a size (a size is 0 or more bytes)")
    return n


def check_sizes(min_size: int, max_size: int, min_name: str, max_name: str, fix: str) -> None:
    """Raise ConfigError unless the size window keeps some files: ``min_size <= max_size`` (0 = no bound)."""
    if max_size and min_size > max_size:
        raise ConfigError(f"{min_name} = {min_size} is above {max_name} = {max_size}: no file would be copied; {fix}")


def check_chunking(threshold: int, size: int, t_name: str, s_name: str, fix: str) -> None:
    """Raise ConfigError unless ``threshold`` (0 = never chunk) and chunk ``size`` make sense together."""
    if threshold < 0:
        raise ConfigError(f"{t_name} = {threshold} must be >= 0 bytes (0 disables chunked copies); {fix}")
    if size < MIN_CHUNK:
        raise ConfigError(f"{s_name} = {size} must be at least {MIN_CHUNK} bytes (1 MiB); {fix}")
    if threshold and threshold < size:
        raise ConfigError(f"{t_name} = {threshold} is below {s_name} = {size}: a chunked file must have more "
                          f"than one chunk; {fix}")
