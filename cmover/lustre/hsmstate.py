"""A Lustre file's HSM state as a value: its flags (``HS_*``, lustre_user.h) and archive id.

Apart from :mod:`cmover.lustre.hsm`, which reads and sets it through liblustreapi, so that the copy engine can
name and test a state without the library's ctypes binding imported (it is, only where a source is Lustre).
"""

from __future__ import annotations

from cmover.core.frozen import NamedTuple

# HS_* flags (lustre_user.h)
HS_EXISTS = 0x01
HS_DIRTY = 0x02
HS_RELEASED = 0x04
HS_ARCHIVED = 0x08
HS_NORELEASE = 0x10
HS_NOARCHIVE = 0x20
HS_LOST = 0x40
CARRIED = HS_NORELEASE | HS_NOARCHIVE  # the user's flags, carried to a target that is marked
_NAMES = ((HS_EXISTS, "exists"), (HS_DIRTY, "dirty"), (HS_RELEASED, "released"), (HS_ARCHIVED, "archived"),
          (HS_NORELEASE, "norelease"), (HS_NOARCHIVE, "noarchive"), (HS_LOST, "lost"))


class HsmState(NamedTuple):
    """A file's HSM flags and archive id (0, 0: never archived)."""

    states: int = 0
    archive_id: int = 0

    @property
    def released(self) -> bool:
        return bool(self.states & HS_RELEASED)

    @property
    def lost(self) -> bool:
        return bool(self.states & HS_LOST)

    @property
    def dirty(self) -> bool:
        return bool(self.states & HS_DIRTY)

    @property
    def archived(self) -> bool:
        return bool(self.states & HS_ARCHIVED)

    @property
    def clean_archive(self) -> bool:
        """A complete, current copy is in the archive (archived, not dirty, not lost)."""
        return self.archived and not self.dirty and not self.lost

    def describe(self) -> str:
        names = [n for bit, n in _NAMES if self.states & bit]
        return (",".join(names) or "none") + (f" archive {self.archive_id}" if self.states else "")


NONE = HsmState()
