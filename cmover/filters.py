"""Selection: which source entries a copy pass leaves out, and why. Pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from cmover.passes import PassSpec
from cmover.record import Kind, Record


@dataclass(frozen=True, slots=True)
class Filter:
    """Exclusion prefixes and age window of a pass.

    A prefix excludes the entry with exactly that relative path and everything below it (whole
    components: ``a/b`` excludes ``a/b`` and ``a/b/c``, not ``a/bc``). Age cutoffs apply to regular
    files only; directories, symlinks and special files are always copied, so that the tree's shape
    stays complete.
    """

    excludes: frozenset[bytes]
    oldest_atime_ns: int
    newest_mtime_ns: int

    @classmethod
    def from_spec(cls, spec: PassSpec) -> Filter:
        return cls(frozenset(spec.excludes), spec.oldest_atime_ns, spec.newest_mtime_ns)

    def excluded(self, rel: bytes) -> bool:
        """True when ``rel`` or one of its parent paths is an exclusion prefix."""
        if not self.excludes:
            return False
        if rel in self.excludes:
            return True
        pos = rel.find(b"/")
        while pos != -1:
            if rel[:pos] in self.excludes:
                return True
            pos = rel.find(b"/", pos + 1)
        return False

    @property
    def has_age_window(self) -> bool:
        return bool(self.oldest_atime_ns or self.newest_mtime_ns)

    def age_skip(self, rec: Record) -> str | None:
        """The reason a regular file falls outside the age window, or None when it is selected."""
        if rec.kind is not Kind.REG:
            return None
        if self.oldest_atime_ns and rec.atime_ns < self.oldest_atime_ns:
            return "atime older than OLDEST_DATE"
        if self.newest_mtime_ns and rec.mtime_ns > self.newest_mtime_ns:
            return "mtime newer than NEWEST_DATE"
        return None
