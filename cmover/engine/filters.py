"""Selection: which source entries a copy pass leaves out, and why. Pure functions, no I/O."""

from __future__ import annotations

from cmover.core.frozen import NamedTuple
from cmover.core.passes import PassSpec
from cmover.core.record import Kind, Record


class Filter(NamedTuple):
    """Exclusion prefixes, age window and size window of a pass.

    A prefix excludes the entry with exactly that relative path and everything below it (whole
    components: ``a/b`` excludes ``a/b`` and ``a/b/c``, not ``a/bc``). Age cutoffs and size bounds
    apply to regular files only; directories, symlinks and special files are always copied, so that
    the tree's shape stays complete. Whether a pass leaves anything out at all is
    :attr:`cmover.core.passes.PassSpec.leaves_entries_out`.

    A tuple of its fields: each task builds its own from its pass spec (:meth:`from_spec`); none is sent in a
    message.
    """

    excludes: frozenset[bytes]
    oldest_atime_ns: int
    newest_mtime_ns: int
    min_size: int = 0  # bytes; 0: no lower bound
    max_size: int = 0  # bytes; 0: no upper bound

    @classmethod
    def from_spec(cls, spec: PassSpec) -> Filter:
        return cls(frozenset(spec.excludes), spec.oldest_atime_ns, spec.newest_mtime_ns, spec.min_size,
                   spec.max_size)

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

    @property
    def has_size_window(self) -> bool:
        """True when a size bound is set (the copier reads it once per task, not once per file)."""
        return bool(self.min_size or self.max_size)

    def age_skip(self, rec: Record) -> str | None:
        """The reason a regular file falls outside the age window, or None when it is selected."""
        if rec.kind is not Kind.REG:
            return None
        if self.oldest_atime_ns and rec.atime_ns < self.oldest_atime_ns:
            return "atime older than OLDEST_DATE"
        if self.newest_mtime_ns and rec.mtime_ns > self.newest_mtime_ns:
            return "mtime newer than NEWEST_DATE"
        return None

    def size_skip(self, size: int) -> bool:
        """True when a regular file of ``size`` bytes falls outside the size window (the caller checks the
        type: only regular files are filtered by size). The bounds are inclusive: ``max_size`` bytes is kept."""
        return size < self.min_size or bool(self.max_size) and size > self.max_size
