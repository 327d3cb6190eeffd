# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The torch thread count a profile was measured at and a plan was made for, and its check.

On a small CPU the executor's reader threads and checksum compete with torch's compute threads,
so compute, the disk and their interference measured at one thread count do not predict
another: a pass at 2 threads on 2 cores ran 20-50% slower than planned from a 1-thread profile.
A profile records `threads`; a plan records the `threads` it was made for. Planning from a
profile of another count, or running a plan made for another count, is refused with the reason
(`ThreadMismatch`); the node measures a new profile instead. Files written before the count was
recorded carry none (a profile may carry it as `machine.torch_threads`) and are not checked.
"""

from demand_layering_ros.layout.plan import PlanError


class ThreadMismatch(PlanError):
    """A profile or plan was made for another torch thread count than the one running now."""

    def __init__(self, message, have=None, want=None):
        """Keep the two thread counts as attributes."""
        super().__init__(message)
        self.have = have
        self.want = want


def running_threads():
    """Return the torch intra-op thread count of this process (what a pass runs with)."""
    import torch
    return torch.get_num_threads()


def profile_threads(profile):
    """Return the thread count a profile dict was measured at, or None when it does not say."""
    n = profile.get('threads')
    if n is None:
        n = (profile.get('machine') or {}).get('torch_threads')
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def plan_threads(plan):
    """Return the thread count a Plan (or plan mapping) was made for, or None."""
    details = plan if isinstance(plan, dict) else getattr(plan, 'details', None) or {}
    n = details.get('threads')
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _plural(n):
    return f'{n} torch thread' + ('' if n == 1 else 's')


def check_profile(profile, threads=None, where='the profile'):
    """
    Return the thread count to plan for; raise ThreadMismatch if the profile has another.

    threads: the count the plan will run with (None: this process's count).
    """
    want = running_threads() if threads is None else int(threads)
    have = profile_threads(profile)
    if have is not None and have != want:
        raise ThreadMismatch(
            f'{where} was measured at {_plural(have)}, the plan is for {_plural(want)}: '
            f'profile again at {want} (profile --threads {want}), or run at {have}',
            have=have, want=want)
    return want


def check_plan(plan, threads=None, where='the plan'):
    """Raise ThreadMismatch when a plan was made for another count than `threads` (now)."""
    have = plan_threads(plan)
    if have is None:
        return
    want = running_threads() if threads is None else int(threads)
    if have != want:
        raise ThreadMismatch(
            f'{where} was made for {_plural(have)}, this process runs {_plural(want)}: its '
            f'predicted latency does not hold here; plan again at {want} threads '
            f'(profile and plan --threads {want}) or run at {have} '
            f'(torch.set_num_threads({have}) or the node parameter num_threads)',
            have=have, want=want)
