"""The normalized change records, re-exported from :mod:`cmover.core.changes` (where both backends find them)."""

from cmover.core.changes import (
    CHANGED,
    ENTERED,
    REMOVED,
    Change,
    ChangeSource,
    Reading,
    Rename,
    Touched,
    Untrusted,
    What,
    touched,
)

__all__ = ["CHANGED", "ENTERED", "REMOVED", "Change", "ChangeSource", "Reading", "Rename", "Touched", "Untrusted",
           "What", "touched"]
