"""Pure layout decisions: derive, satisfied, needs_restripe, alignment (no library involved)."""

import pytest

from cmover.lustre.layout import (
    ALL_OSTS,
    EOF,
    FLAG_EXTENSION,
    FLAG_INIT,
    Component,
    Layout,
    alignment,
    cap_count,
    check_policy,
    derive,
    needs_restripe,
    satisfied,
    without_pool,
)

M = 1 << 20
PLAIN4 = Layout((Component(stripe_count=4, stripe_size=4 * M, pool="fast", ost_indices=(3, 4, 5, 6),
                           flags=FLAG_INIT),))
PFL = Layout((
    Component(0, 64 * M, stripe_count=1, stripe_size=M, ost_indices=(0,), flags=FLAG_INIT),
    Component(64 * M, 1 << 30, stripe_count=4, stripe_size=4 * M),
    Component(1 << 30, EOF, stripe_count=ALL_OSTS, stripe_size=16 * M, pool="slow"),
), composite=True)
DOM = Layout((Component(0, M, pattern="mdt", stripe_size=M), Component(M, EOF, stripe_count=2, stripe_size=M)),
             composite=True)


def test_keep_copies_count_size_pool_never_osts():
    want = derive(PLAIN4, "keep", ost_count=8)
    assert want == Layout((Component(stripe_count=4, stripe_size=4 * M, pool="fast"),))
    assert all(not c.ost_indices and not c.flags for c in want.components)


def test_keep_rebuilds_pfl_component_by_component():
    want = derive(PFL, "keep", ost_count=8)
    assert want is not None and want.composite
    assert [(c.start, c.end, c.stripe_count, c.stripe_size, c.pool) for c in want.components] == [
        (0, 64 * M, 1, M, None), (64 * M, 1 << 30, 4, 4 * M, None), (1 << 30, EOF, ALL_OSTS, 16 * M, "slow")]


def test_keep_caps_counts_at_target_osts():
    want = derive(PLAIN4, "keep", ost_count=2)
    assert want is not None and want.components[0].stripe_count == 2
    assert derive(PFL, "keep", ost_count=3).components[1].stripe_count == 3  # type: ignore[union-attr]
    assert cap_count(ALL_OSTS, "raid0", 2) == ALL_OSTS
    assert cap_count(None, "raid0", 2) is None
    assert cap_count(40, "overstriping", 4) == 40  # overstriping may exceed the OST count
    assert cap_count(7, "raid0", 0) == 7  # unknown OST count: nothing capped


def test_keep_keeps_dom_component():
    want = derive(DOM, "keep", 4)
    assert want is not None and want.components[0].pattern == "mdt" and want.components[0].end == M


@pytest.mark.parametrize("count,expected", [(1, 1), (4, 4), (15, 15), (16, ALL_OSTS), (200, ALL_OSTS),
                                            (ALL_OSTS, ALL_OSTS)])
def test_classic_rule(count, expected):
    src = Layout((Component(stripe_count=count, stripe_size=8 * M, pool="fast"),))
    want = derive(src, "classic", ost_count=400)
    assert want == Layout((Component(stripe_count=expected),))  # size and pool left to the target


def test_classic_on_pfl_takes_the_widest_count():
    assert derive(PFL, "classic", 8) == Layout((Component(stripe_count=ALL_OSTS),))
    narrow = Layout((Component(0, M, stripe_count=1), Component(M, EOF, stripe_count=6)), composite=True)
    assert derive(narrow, "classic", 8) == Layout((Component(stripe_count=6),))
    assert derive(narrow, "classic", 4) == Layout((Component(stripe_count=4),))  # and capped


def test_nothing_requested():
    assert derive(PLAIN4, "target-default", 8) is None
    assert derive(None, "keep", 8) is None
    assert derive(Layout(), "keep", 8) is None  # no layout of its own
    assert derive(Layout((Component(stripe_size=M),)), "classic", 8) is None  # classic: only counts matter
    sel = Layout((Component(0, M, stripe_count=1), Component(M, EOF, stripe_count=1, flags=FLAG_EXTENSION)),
                 composite=True)
    assert not sel.rebuildable and derive(sel, "keep", 8) is None
    foreign = Layout((Component(pattern="raw:0x400"),))
    assert derive(foreign, "keep", 8) is None


def test_satisfied_compares_only_what_was_asked():
    want = Layout((Component(stripe_count=4, stripe_size=4 * M),))
    got = Layout((Component(stripe_count=4, stripe_size=4 * M, pool="any", ost_indices=(1, 2, 3, 4), flags=FLAG_INIT),))
    assert satisfied(want, got, 8)
    assert not satisfied(want, Layout((Component(stripe_count=1, stripe_size=M),)), 8)  # setstripe ignored
    assert not satisfied(Layout((Component(stripe_count=2, pool="fast"),)),
                         Layout((Component(stripe_count=2),)), 8)  # pool lost
    assert satisfied(Layout((Component(stripe_count=None, stripe_size=2 * M),)),
                     Layout((Component(stripe_count=3, stripe_size=2 * M),)), 8)


def test_satisfied_all_osts_reads_back_as_the_ost_count_or_wide():
    want = Layout((Component(stripe_count=ALL_OSTS),))
    assert satisfied(want, Layout((Component(stripe_count=8),)), 8)
    assert satisfied(want, Layout((Component(stripe_count=ALL_OSTS),)), 8)
    assert not satisfied(want, Layout((Component(stripe_count=7),)), 8)


def test_satisfied_composite_shape_must_match():
    want = derive(PFL, "keep", 8)
    assert want is not None
    assert not satisfied(want, Layout((Component(stripe_count=1),)), 8)
    shifted = Layout(tuple(Component(c.start, c.end + (1 if c.end != EOF else 0), c.stripe_count, c.stripe_size,
                                     pool=c.pool) for c in want.components), composite=True)
    assert not satisfied(want, shifted, 8)
    assert satisfied(want, want, 8)


def test_needs_restripe():
    dst_default = Layout((Component(stripe_count=1, stripe_size=M, ost_indices=(0,)),))
    assert needs_restripe(PLAIN4, dst_default, "keep", 8)
    assert not needs_restripe(PLAIN4, dst_default, "target-default", 8)
    matching = Layout((Component(stripe_count=4, stripe_size=4 * M, pool="fast", ost_indices=(0, 1, 2, 3)),))
    assert not needs_restripe(PLAIN4, matching, "keep", 8)
    assert not needs_restripe(None, dst_default, "keep", 8)


def test_alignment_is_lcm_of_stripe_sizes():
    assert alignment(PFL, 1 << 30) == 16 * M
    assert alignment(Layout(), 1 << 30) == 0
    odd = Layout((Component(0, M, stripe_size=3 * 65536), Component(M, EOF, stripe_size=4 * 65536)), composite=True)
    assert alignment(odd, 1 << 30) == 12 * 65536
    assert alignment(odd, 65536) == 0  # beyond the limit: no alignment rather than absurd chunks


def test_without_pool_and_describe():
    assert all(c.pool is None for c in without_pool(PFL).components)
    assert PLAIN4.describe() == "count=4 size=4M pool=fast osts=3,4,5,6"
    assert PFL.describe() == ("PFL: [0, 64M) count=1 size=1M osts=0; [64M, 1G) count=4 size=4M; "
                              "[1G, EOF) count=all size=16M pool=slow")
    assert Layout().describe() == "count=default size=default"


def test_check_policy():
    assert check_policy("classic") == "classic"
    with pytest.raises(ValueError, match="keep, classic, target-default"):
        check_policy("wide")
