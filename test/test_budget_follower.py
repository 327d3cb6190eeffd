# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The budget that follows free memory: shrink at once, grow only after a hold, never oscillate.

The controller is pure (time and readings are passed in), so every decision is checked exactly:
the target on a shrink, the hold and the margin before a grow, the dead band that keeps noise
from re-planning, the cap, the floor, the counters and the time pinned at the smallest plan.
"""

from demand_layering_ros.budget_follower import BudgetFollower
import pytest

MIB = 1 << 20
KEEP = 500 * MIB
FLOOR = 50 * MIB


def follower(**kw):
    args = {'keep_free_bytes': KEEP, 'floor_bytes': FLOOR, 'budget_bytes': 300 * MIB,
            'cap_bytes': None, 'hold_s': 2.0, 'margin_bytes': 32 * MIB,
            'dead_band_bytes': 4 * MIB}
    args.update(kw)
    return BudgetFollower(**args)


def test_shrinks_at_once_by_the_deficit():
    f = follower()
    assert f.update(0.0, KEEP + 10 * MIB, 300 * MIB) is None
    assert f.update(0.05, KEEP - 100 * MIB, 300 * MIB) == 200 * MIB
    assert (f.budget_bytes, f.auto_shrinks, f.auto_grows, f.last_change) == \
        (200 * MIB, 1, 0, 'shrink')
    # the same reading before the caller has applied it: no second re-plan
    assert f.update(0.1, KEEP - 100 * MIB, 300 * MIB) is None
    # applied: the weights went down and free memory came back by as much: steady
    assert f.update(0.15, KEEP, 200 * MIB) is None
    assert f.auto_shrinks == 1


def test_shrink_never_below_the_smallest_plan_and_counts_time_pinned():
    f = follower()
    assert f.update(10.0, 100 * MIB, 300 * MIB) == FLOOR     # want 300 + 100 - 500 < 0
    assert f.pinned and f.auto_shrinks == 1
    assert f.update(10.5, 100 * MIB, FLOOR) is None           # already at the floor
    assert f.update(11.25, 120 * MIB, FLOOR) is None
    assert f.pinned_s == pytest.approx(1.25)
    assert f.update(12.0, KEEP, FLOOR) is None                # room again: not pinned
    assert not f.pinned
    assert f.update(13.0, KEEP, FLOOR) is None
    assert f.pinned_s == pytest.approx(2.0)                   # 10.0 -> 12.0 only
    assert f.stats()['pinned_s'] == pytest.approx(2.0)


def test_grow_waits_for_the_hold_time_and_leaves_keep_free():
    f = follower(budget_bytes=100 * MIB)
    free = KEEP + 200 * MIB
    assert f.update(0.0, free, 100 * MIB) is None
    assert f.update(1.0, free + 50 * MIB, 100 * MIB) is None
    assert f.update(1.99, free, 100 * MIB) is None
    target = f.update(2.0, free, 100 * MIB)
    # the least free over the hold, less keep_free and one dead band
    assert target == 100 * MIB + 200 * MIB - 4 * MIB
    assert (f.auto_grows, f.auto_shrinks, f.last_change) == (1, 0, 'grow')
    # applied: held = target, free = keep + one dead band. Neither shrinks nor grows.
    for t in range(3, 20):
        assert f.update(float(t), KEEP + 4 * MIB, target) is None
    assert (f.auto_grows, f.auto_shrinks) == (1, 0)


def test_a_dip_restarts_the_hold():
    f = follower(budget_bytes=100 * MIB)
    big = KEEP + 300 * MIB
    assert f.update(0.0, big, 100 * MIB) is None
    assert f.update(1.5, KEEP + 10 * MIB, 100 * MIB) is None  # under keep + margin: reset
    assert f.update(2.0, big, 100 * MIB) is None
    assert f.update(3.9, big, 100 * MIB) is None
    assert f.update(4.0, big, 100 * MIB) == 100 * MIB + 300 * MIB - 4 * MIB


def test_grow_takes_the_least_free_seen_during_the_hold():
    f = follower(budget_bytes=100 * MIB)
    assert f.update(0.0, KEEP + 400 * MIB, 100 * MIB) is None
    assert f.update(1.0, KEEP + 100 * MIB, 100 * MIB) is None
    assert f.update(2.0, KEEP + 400 * MIB, 100 * MIB) == 100 * MIB + 100 * MIB - 4 * MIB


def test_noise_around_keep_free_never_replans():
    f = follower(budget_bytes=200 * MIB)
    held = 200 * MIB
    noise = [-3, 3, -4, 31, -2, 20, 0, -3.9, 31.9, 1]    # MiB: inside (-dead band, +margin)
    for i, n in enumerate(noise * 10):
        assert f.update(i * 0.1, KEEP + int(n * MIB), held) is None
    assert (f.auto_shrinks, f.auto_grows, f.budget_bytes) == (0, 0, held)


def test_no_oscillation_after_a_shrink_and_grow_cycle():
    f = follower(budget_bytes=400 * MIB)
    held, t, changes = 400 * MIB, 0.0, []
    other = 0                       # what the rest of the robot takes
    for step in range(200):
        other = 300 * MIB if 20 <= step < 60 else 0
        free = 1000 * MIB - held - other + (step % 3 - 1) * 2 * MIB     # +-2 MiB noise
        new = f.update(t, free, held)
        if new is not None:
            changes.append((step, f.last_change))
            held = new              # the caller re-plans to exactly the budget
        t += 0.1
    # one shrink when the other process arrives, one grow 2 s after it left, nothing else
    assert [c[1] for c in changes] == ['shrink', 'grow']
    assert changes[0][0] == 20 and 60 + 20 <= changes[1][0] <= 60 + 22
    assert (f.auto_shrinks, f.auto_grows) == (1, 1)


def test_cap_limits_grow_and_a_lowered_cap_shrinks_at_once():
    f = follower(budget_bytes=100 * MIB, cap_bytes=150 * MIB)
    huge = KEEP + 2000 * MIB
    assert f.update(0.0, huge, 100 * MIB) is None
    assert f.update(2.0, huge, 100 * MIB) == 150 * MIB
    assert f.update(4.0, huge, 150 * MIB) is None           # at the cap: nothing to take
    f.set_limits(FLOOR, 120 * MIB)
    assert f.update(4.1, huge, 150 * MIB) == 120 * MIB      # no hold for a shrink
    assert (f.auto_grows, f.auto_shrinks) == (1, 1)


def test_floor_wins_over_a_cap_below_it():
    f = follower(budget_bytes=100 * MIB, cap_bytes=20 * MIB)
    assert f.clamp(10 * MIB) == FLOOR
    assert f.update(0.0, 0, 100 * MIB) == FLOOR


def test_unlimited_budget_shrinks_on_pressure_and_never_grows_past_unlimited():
    f = follower(budget_bytes=None)
    assert f.update(0.0, KEEP + 900 * MIB, 300 * MIB) is None
    assert f.update(5.0, KEEP + 900 * MIB, 300 * MIB) is None     # nothing above unlimited
    assert f.update(6.0, KEEP - 50 * MIB, 300 * MIB) == 250 * MIB


def test_keep_free_changes_at_run_time_and_zero_turns_it_off():
    f = follower(budget_bytes=300 * MIB)
    assert f.update(0.0, KEEP + 10 * MIB, 300 * MIB) is None
    f.set_keep_free(KEEP + 110 * MIB)                    # raised: now 100 MiB short
    assert f.update(0.1, KEEP + 10 * MIB, 300 * MIB) == 200 * MIB
    f.set_keep_free(0)
    assert not f.active
    assert f.update(0.2, 0, 200 * MIB) is None           # off: never re-plans
    assert f.stats()['keep_free_bytes'] == 0


def test_a_shrink_smaller_than_the_dead_band_is_not_a_replan():
    f = follower(budget_bytes=300 * MIB, dead_band_bytes=4 * MIB)
    assert f.update(0.0, KEEP - 4 * MIB, 300 * MIB) is None
    assert f.update(0.1, KEEP - 5 * MIB, 300 * MIB) == 295 * MIB


def test_a_deficit_within_the_dead_band_is_noise_even_with_room_under_the_budget():
    f = follower(budget_bytes=300 * MIB)
    # the plan holds less than the budget allows; 3 MiB short is still noise
    assert f.update(0.0, KEEP - 3 * MIB, 200 * MIB) is None
    assert f.update(0.1, KEEP - 5 * MIB, 200 * MIB) == 195 * MIB


def test_stats_keys_and_values():
    f = follower()
    f.update(0.0, KEEP - 100 * MIB, 300 * MIB, source='cgroup v1 + psi')
    s = f.stats()
    assert {'keep_free_bytes', 'free_bytes', 'memory_source', 'auto_shrinks', 'auto_grows',
            'budget_bytes'} <= set(s)
    assert (s['keep_free_bytes'], s['free_bytes'], s['memory_source'], s['auto_shrinks'],
            s['budget_bytes']) == (KEEP, KEEP - 100 * MIB, 'cgroup v1 + psi', 1, 200 * MIB)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        follower(margin_bytes=8 * MIB, dead_band_bytes=4 * MIB)     # grow undone by noise
    with pytest.raises(ValueError):
        follower(keep_free_bytes=-1)
    f = follower()
    f.update(5.0, KEEP, 300 * MIB)
    with pytest.raises(ValueError):
        f.update(4.0, KEEP, 300 * MIB)
