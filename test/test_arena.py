# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The arena allocator and layout replay: no overlap, clear refusals, no run-time deadlock."""

import random

from demand_layering_ros.layout.arena import Allocator, ArenaTooSmall, Item, live_lower_bound
from demand_layering_ros.layout.arena import load_order, min_layout, plan_layout
from hypothesis import given, settings, strategies as st
import pytest

P = 4096


def test_allocator_first_fit_and_merge():
    a = Allocator(10 * P)
    x = a.alloc(3 * P)
    y = a.alloc(1)                      # rounded up to one page
    z = a.alloc(4 * P)
    assert (x, y, z) == (0, 3 * P, 4 * P)
    assert a.alloc(3 * P) is None and a.largest_free() == 2 * P
    a.free(y)
    assert a.alloc(2 * P) == 8 * P      # the one-page hole is too small: first fit goes on
    a.free(x)
    assert a.largest_free() == 4 * P    # [0, 3P) merged with [3P, 4P)
    assert a.claim(P, 2 * P) and not a.claim(0, 2 * P) and a.claim(0, P)
    assert a.used == 9 * P and a.peak_used == 9 * P and a.high_water == 10 * P
    for off in (0, P, z, 8 * P):
        a.free(off)
    assert a.free_bytes() == 10 * P and a.largest_free() == 10 * P
    with pytest.raises(ValueError, match='no allocation starts at offset'):
        a.free(5 * P)
    with pytest.raises(ValueError, match='not a multiple'):
        a.claim(5, P)


def chain(sizes):
    """Items used one after another, each for one step."""
    return [Item(f'u{i}', n, i, i) for i, n in enumerate(sizes)]


def test_chain_floor_is_largest_unit():
    items = chain([8 * P, 2 * P, 6 * P, 1 * P, 3 * P])
    assert live_lower_bound(items) == 8 * P
    lay = min_layout(items)
    # While a unit runs, the reader may hold nothing else: the floor is the largest unit.
    assert lay.capacity == 8 * P
    with pytest.raises(ArenaTooSmall) as err:
        plan_layout(items, 7 * P, budget_text='budget 1.0 MB')
    assert err.value.item == 'u0' and err.value.needed == 8 * P
    assert 'budget 1.0 MB' in str(err.value) and "'u0'" in str(err.value)


def test_long_lived_unit_and_prefetch():
    # u0 is used at steps 0 and 3 (like a head called per FPN level): it stays in the arena.
    items = [Item('head', 2 * P, 0, 3), Item('a', 3 * P, 1, 1), Item('b', 3 * P, 2, 2),
             Item('c', 1 * P, 4, 4)]
    lay = plan_layout(items, 100 * P)
    assert lay.claim_step == [0, 0, 0, 0]            # unlimited prefetch: all placed at once
    lay = plan_layout(items, 100 * P, prefetch_depth=1)
    assert lay.claim_step == [0, 0, 1, 2]
    with pytest.raises(ArenaTooSmall, match="'a'"):
        plan_layout(items, 4 * P)
    assert min_layout(items).capacity == 5 * P


def occupancy_ok(items, lay):
    for i, a in enumerate(items):
        sa = max(-(-a.nbytes // P), 1) * P
        assert lay.offsets[i] % P == 0 and lay.offsets[i] + sa <= lay.capacity
        assert lay.claim_step[i] <= a.first_step
        for j in range(i):
            b = items[j]
            sb = max(-(-b.nbytes // P), 1) * P
            overlap_t = (lay.claim_step[i] <= b.last_step and lay.claim_step[j] <= a.last_step)
            overlap_b = (lay.offsets[i] < lay.offsets[j] + sb
                         and lay.offsets[j] < lay.offsets[i] + sa)
            # a step frees after it runs and places before the next: placing at s after a
            # release at s - 1 is fine, so the time intervals are [claim, last] inclusive.
            assert not (overlap_t and overlap_b), (a, b)


def runtime_replay(items, lay, rng):
    """
    Play the executor's run-time policy with a reader of random speed.

    The reader claims items in load order at their planned offsets when the range is free and
    the prefetch gate is open; compute runs a step once its items are in. Either may be slow.
    Returns False if both get stuck (a deadlock), True when the pass completes.
    """
    order = load_order(items)
    alloc = Allocator(lay.capacity)
    steps = max(it.last_step for it in items) + 1
    need = [[] for _ in range(steps)]
    for i, it in enumerate(items):
        for s in range(it.first_step, it.last_step + 1):
            need[s].append(i)
    placed = set()
    k = s = started = 0
    while s < steps:
        while started < len(order) and items[order[started]].first_step <= s:
            started += 1
        reader_can = (k < len(order)
                      and (lay.prefetch_depth is None or k < started + lay.prefetch_depth)
                      and alloc.is_free(lay.offsets[order[k]], items[order[k]].nbytes))
        compute_can = all(i in placed for i in need[s])
        if not reader_can and not compute_can:
            return False
        if reader_can and (not compute_can or rng.random() < 0.5):
            i = order[k]
            assert alloc.claim(lay.offsets[i], items[i].nbytes)
            placed.add(i)
            k += 1
        else:
            for i in need[s]:
                if items[i].last_step == s:
                    alloc.free(lay.offsets[i])
            s += 1
    return alloc.used == 0


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 14))
    items = []
    step = 0
    for i in range(n):
        span = draw(st.integers(0, 4)) if draw(st.booleans()) else 0
        items.append(Item(f'u{i}', draw(st.integers(1, 9)) * P - draw(st.integers(0, 100)),
                          step, step + span))
        step += draw(st.integers(0, 1))        # two units may start at the same step
    return items


@settings(max_examples=150, deadline=None)
@given(schedules(), st.sampled_from([None, 1, 2, 4]), st.integers(0, 6), st.integers(0, 1 << 30))
def test_layout_properties(items, depth, extra_pages, seed):
    lb = live_lower_bound(items)
    best = min_layout(items)
    assert lb <= best.capacity <= sum(max(-(-it.nbytes // P), 1) * P for it in items)
    occupancy_ok(items, best)
    try:
        lay = plan_layout(items, best.capacity + extra_pages * P, depth)
    except ArenaTooSmall as e:
        assert e.item is not None and e.needed > 0
        return
    occupancy_ok(items, lay)
    assert lay.peak_used <= lay.high_water <= lay.capacity
    rng = random.Random(seed)
    for _ in range(3):
        assert runtime_replay(items, lay, rng)


def test_deterministic():
    rng = random.Random(7)
    items = []
    for i in range(60):
        f = i
        items.append(Item(f'u{i}', rng.randint(1, 50) * P, f, f + rng.choice([0, 0, 0, 5])))
    a = min_layout(items)
    b = min_layout(list(items))
    assert a == b
    assert plan_layout(items, a.capacity, a.prefetch_depth) == a


def test_runtime_replay_detects_deadlock():
    # A hand-made layout that puts B where A still lives: the replay must report the deadlock.
    from demand_layering_ros.layout.arena import Layout
    items = [Item('A', P, 0, 2), Item('B', P, 1, 1)]
    bad = Layout(capacity=2 * P, prefetch_depth=None, offsets=[0, 0], claim_step=[0, 0])
    assert not runtime_replay(items, bad, random.Random(0))
    assert runtime_replay(items, plan_layout(items, 2 * P), random.Random(0))
