"""Lustre layouts as plain values, and the pure decisions made about them.

A :class:`Layout` is what cmover knows of a file's layout or a directory's default layout: its
components (one for a plain layout), each with stripe count, stripe size, pattern and pool. OST indices
are read for display only and never carried to a target: copying them is how a whole migration ends
up with every first component on OST 0.

The decisions are pure functions, so every policy is tested without Lustre:

* :func:`derive` -- the layout to request for a new target entry, from its source's layout, the policy
  and the target's OST count;
* :func:`satisfied` -- whether the layout read back from the target is the one requested;
* :func:`needs_restripe` -- whether an existing target file must be rewritten for its layout.

Policies (``LUSTRE_LAYOUT`` in config.py, ``--layout`` on the command line):

``keep``
    Same stripe count, size and pool as the source, component by component for composite (PFL)
    layouts; stripe counts above the target's OST count are capped to it.
``classic``
    The rule of the original tool: the stripe count is kept when below 16, otherwise all OSTs;
    stripe size and pool are left to the target. A composite source gives a plain layout with the
    largest count among its components.
``target-default``
    No layout is requested: the target directory's default decides.
"""

from __future__ import annotations

import math

from cmover.core.frozen import NamedTuple
from cmover.core.policies import POLICIES, check_policy  # noqa: F401 (re-exported)

EOF = (1 << 64) - 1  # end of the last extent (LUSTRE_EOF)
ALL_OSTS = -1  # stripe count "every OST of the filesystem"
MAX_STRIPE_COUNT = 2000  # LOV_MAX_STRIPE_COUNT
CLASSIC_WIDE = 16  # classic policy: counts from here on become "all OSTs"


# Component flags worth knowing here (LCME_FL_*).
FLAG_INIT = 0x10  # instantiated: objects allocated
FLAG_EXTENSION = 0x40  # self-extending (SEL) placeholder

PATTERNS = ("raid0", "overstriping", "mdt")  # what can be rebuilt; anything else is "raw:<n>"


class Component(NamedTuple):
    """One extent ``[start, end)`` of a layout. ``None`` means "unset: the filesystem default"."""

    start: int = 0
    end: int = EOF
    stripe_count: int | None = None  # None default, -1 all OSTs, otherwise 1..2000
    stripe_size: int | None = None  # bytes
    pattern: str = "raid0"  # raid0 | overstriping | mdt (Data-on-MDT) | raw:<n>
    pool: str | None = None
    flags: int = 0  # LCME_FL_* as read; never requested
    ost_indices: tuple[int, ...] = ()  # as read, for display; never requested

    @property
    def is_default(self) -> bool:
        return self.stripe_count is None and self.stripe_size is None and self.pool is None \
            and self.pattern == "raid0" and (self.start, self.end) == (0, EOF)

    def describe(self) -> str:
        count = "default" if self.stripe_count is None else "all" if self.stripe_count == ALL_OSTS \
            else str(self.stripe_count)
        parts = [f"count={count}", f"size={_size(self.stripe_size)}"]
        if self.pattern != "raid0":
            parts.append(f"pattern={self.pattern}")
        if self.pool:
            parts.append(f"pool={self.pool}")
        if self.ost_indices:
            parts.append("osts=" + ",".join(str(i) for i in self.ost_indices))
        return " ".join(parts)


class Layout(NamedTuple):
    """A file's layout or a directory's default layout. ``composite`` marks a PFL layout."""

    components: tuple[Component, ...] = (Component(),)
    composite: bool = False
    mirror_count: int = 1

    @property
    def is_default(self) -> bool:
        """Nothing set: a directory without its own default, a file the filesystem will decide for."""
        return not self.composite and len(self.components) == 1 and self.components[0].is_default

    @property
    def rebuildable(self) -> bool:
        """Whether :func:`derive` can rebuild it (no foreign, raw-pattern or self-extending components)."""
        return all(c.pattern in PATTERNS and not c.flags & FLAG_EXTENSION for c in self.components)

    def stripe_sizes(self) -> list[int]:
        return [c.stripe_size for c in self.components if c.stripe_size]

    def describe(self) -> str:
        if not self.composite:
            return self.components[0].describe()
        parts = [f"[{_size(c.start)}, {'EOF' if c.end == EOF else _size(c.end)}) {c.describe()}"
                 for c in self.components]
        mirrors = f" (first of {self.mirror_count} mirrors)" if self.mirror_count > 1 else ""
        return f"PFL{mirrors}: " + "; ".join(parts)


def _size(n: int | None) -> str:
    if n is None:
        return "default"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def cap_count(count: int | None, pattern: str, ost_count: int) -> int | None:
    """A stripe count the target can honour: at most its OST count (overstriping may exceed it)."""
    if count is None or count == ALL_OSTS:
        return count
    if pattern == "overstriping":
        return min(count, MAX_STRIPE_COUNT)
    return min(count, ost_count) if ost_count > 0 else count


def derive(src: Layout | None, policy: str, ost_count: int) -> Layout | None:
    """The layout to request for a new target entry whose source has layout ``src``.

    ``ost_count`` is the target filesystem's (0 when unknown: nothing is capped). Returns None when
    nothing is to be requested (policy ``target-default``, no or default source layout, or a layout
    that cannot be rebuilt); the target directory's default then decides.
    """
    if src is None or src.is_default or policy == "target-default" or not src.rebuildable:
        return None
    if policy == "classic":
        counts = [c.stripe_count for c in src.components if c.pattern != "mdt" and c.stripe_count is not None]
        if not counts:
            return None
        widest = ALL_OSTS if ALL_OSTS in counts else max(counts)
        count = widest if widest == ALL_OSTS or widest < CLASSIC_WIDE else ALL_OSTS
        return Layout((Component(stripe_count=cap_count(count, "raid0", ost_count)),))
    comps = tuple(
        Component(start=c.start, end=c.end, stripe_count=cap_count(c.stripe_count, c.pattern, ost_count),
                  stripe_size=c.stripe_size, pattern=c.pattern, pool=c.pool)
        for c in src.components
    )
    return Layout(comps, composite=src.composite)


def _count_ok(asked: int | None, got: int | None, pattern: str, ost_count: int) -> bool:
    if asked is None or asked == got:
        return True
    # "All OSTs" reads back as the wide marker (not instantiated) or as the number of OSTs.
    return asked == ALL_OSTS and pattern == "raid0" and got is not None and ost_count > 0 and got == ost_count


def satisfied(asked: Layout, got: Layout, ost_count: int) -> bool:
    """Whether ``got`` (read back from the target) is the layout ``asked`` for.

    Only what was asked is compared: an unset field may be anything, OST indices and instantiation
    flags are ignored. A target that ignored the request (sites can restrict setstripe) fails here.
    """
    if len(asked.components) != len(got.components) or asked.composite != got.composite:
        return False
    for a, g in zip(asked.components, got.components, strict=True):
        if (a.start, a.end, a.pattern) != (g.start, g.end, g.pattern):
            return False
        if not _count_ok(a.stripe_count, g.stripe_count, a.pattern, ost_count):
            return False
        if a.stripe_size is not None and a.pattern != "mdt" and a.stripe_size != g.stripe_size:
            return False
        if a.pool and a.pool != g.pool:
            return False
    return True


def needs_restripe(src: Layout | None, dst: Layout, policy: str, ost_count: int) -> bool:
    """Whether an existing, otherwise identical target file has a layout the policy would not give it."""
    want = derive(src, policy, ost_count)
    return want is not None and not satisfied(want, dst, ost_count)


def alignment(layout: Layout, limit: int) -> int:
    """Bytes to align parallel chunk writes to: the least common multiple of the stripe sizes (0 when
    none is known or it exceeds ``limit``, i.e. alignment cannot be had at a sensible chunk size)."""
    sizes = layout.stripe_sizes()
    if not sizes:
        return 0
    lcm = math.lcm(*sizes)
    return lcm if lcm <= limit else 0


def without_pool(layout: Layout) -> Layout:
    """``layout`` with every pool dropped (the retry when the target lacks a source pool)."""
    return layout._replace(components=tuple(c._replace(pool=None) for c in layout.components))
