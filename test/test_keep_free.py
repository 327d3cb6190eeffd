# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
keep_free_mb: the budget follows free memory, measured in a real memory cgroup.

A child process loads the real yolov3-tiny (224 x 224) with `load(pack, keep_free_mb=40)` in
a fresh memory cgroup; once it is ready the cgroup gets a hard limit 60 MiB above keep_free.
Then memory is taken and given back in the same cgroup, the way another node would: the
budget must grow into the room, shrink when the room is taken (the cgroup's usage growing by
much less than what was taken: the weights' bytes really went back to the kernel), grow back
when it is freed, the outputs staying equal to the resident model's throughout.
"""

import json
import sys
import time

from demand_layering_ros import loading
from demand_layering_ros import pack as pack_mod
from demand_layering_ros.memory_following import MemoryFollowing
from demand_layering_ros.models import assets
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.sizes import MB
import pytest
from tools import cgroups

AVAIL = cgroups.cgroups_available()
KEEP_MB, ROOM_MB, TAKEN_MB = 40, 60, 60

CHILD = r"""
import json, os, sys, time
import numpy as np, torch
import demand_layering_ros as dlr
from demand_layering_ros.process_memory import cgroup_limit_usage, own_cgroup_dir
pack, go, keep, taken = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    want = dlr.load_resident(pack)(x)
m = dlr.load(pack, keep_free_mb=keep)

def usage():
    return cgroup_limit_usage(*own_cgroup_dir())[1]

def report(tag, **kw):
    with torch.no_grad():
        out = m(x)
    st = m.stats()
    print(json.dumps(dict(tag=tag, budget=st['budget_bytes'], held=m.held_bytes(),
                          usage=usage(), shrinks=st['auto_shrinks'], grows=st['auto_grows'],
                          equal=all(torch.equal(a, b) for a, b in zip(out, want)), stats={
                              k: st[k] for k in ('keep_free_bytes', 'free_bytes',
                                                 'memory_source', 'shrink_reaction_p50_ms',
                                                 'floor_bytes')}, **kw)), flush=True)

def wait_for(what, timeout=15.0):
    t0 = time.monotonic()
    while not what() and time.monotonic() - t0 < timeout:
        with torch.no_grad():
            m(x)             # frames keep flowing; each re-plan lands between two of them
        time.sleep(0.05)

def settle(quiet=1.0, timeout=15.0):
    # memory is taken and freed page by page: wait until the budget stops moving
    t0 = time.monotonic()
    last, since = None, t0
    while time.monotonic() - t0 < timeout:
        budget = m.stats()['budget_bytes']
        if budget != last:
            last, since = budget, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        with torch.no_grad():
            m(x)
        time.sleep(0.05)

report('ready')
while not os.path.exists(go):
    time.sleep(0.05)
wait_for(lambda: m.stats()['auto_grows'] >= 1)
settle()
report('grown')
grows = m.stats()['auto_grows']
hog = np.ones(taken << 20, np.uint8)          # another node takes memory
wait_for(lambda: m.stats()['auto_shrinks'] >= 1)
settle()
report('shrunk')
del hog                                      # ... and gives it back
wait_for(lambda: m.stats()['auto_grows'] > grows)
report('grown again')
m.close()
"""


@pytest.fixture(scope='module')
def pack(tmp_path_factory):
    cfg, weights, _ = assets.yolov3_tiny()
    out = tmp_path_factory.mktemp('keep_free') / 'yolov3-tiny'
    pack_mod.write_pack('darknet:' + str(cfg), out, weights=str(weights), progress=False,
                        input_size=(224, 224))
    return out


def _lines(proc):
    return [json.loads(line) for line in proc.output_so_far()[0].splitlines()
            if line.startswith('{')]


@pytest.mark.skipif(not AVAIL, reason=f'memory cgroups: {AVAIL.reason}')
def test_the_budget_follows_free_memory_in_a_cgroup_and_the_bytes_go_back(pack, tmp_path):
    go = tmp_path / 'go'
    argv = [sys.executable, '-c', CHILD, str(pack), str(go), str(KEEP_MB), str(TAKEN_MB)]
    with cgroups.start_in_cgroup(argv) as proc:
        t0 = time.monotonic()
        while not _lines(proc) and proc.running() and time.monotonic() - t0 < 120:
            time.sleep(0.1)
        ready = _lines(proc)
        assert ready, proc.output_so_far()
        proc.cgroup.set_limit(proc.cgroup.usage_bytes() + (KEEP_MB + ROOM_MB) * MB)
        go.touch()
        result = proc.wait(timeout=120)
    assert result.returncode == 0 and not result.oom_killed, result.stderr[-3000:]
    rows = {r['tag']: r for r in json.loads('[' + ','.join(
        line for line in result.stdout.splitlines() if line.startswith('{')) + ']')}
    assert set(rows) == {'ready', 'grown', 'shrunk', 'grown again'}, result.stdout
    ready, grown, shrunk, again = (rows[k] for k in ('ready', 'grown', 'shrunk', 'grown again'))
    assert all(r['equal'] for r in rows.values())           # identical to resident throughout
    assert grown['stats']['memory_source'].startswith('cgroup v')
    assert grown['stats']['keep_free_bytes'] == KEEP_MB * MB
    # room above keep_free: the budget grew from the smallest arena into it
    assert grown['grows'] >= 1 and grown['held'] > ready['held']
    # taken: the budget shrank, and the cgroup's usage grew by clearly less than what was
    # taken, because the weights the new plan does not hold went back to the kernel
    given_back = grown['held'] - shrunk['held']
    assert shrunk['shrinks'] >= 1 and given_back > 4 * MB, (grown, shrunk)   # a dead band
    grew = shrunk['usage'] - grown['usage']
    assert grew <= TAKEN_MB * MB - 0.7 * given_back, (grew / MB, given_back / MB)
    assert shrunk['stats']['shrink_reaction_p50_ms'] > 0      # timed in bench-pressure
    assert shrunk['budget'] >= shrunk['stats']['floor_bytes']
    # given back: the budget grows again
    assert again['grows'] > shrunk['grows'] and again['held'] > shrunk['held']


def test_keep_free_is_refused_with_a_fixed_plan_or_a_bad_value(pack):
    with pytest.raises(ExecutorError, match='plan fixes the configuration'):
        loading.load(pack, plan={'resident_units': []}, keep_free_mb=10)
    with pytest.raises(ExecutorError, match='keep_free_mb must be a number >= 0'):
        loading.load(pack, keep_free_mb=-1)


class Log:
    """A logger's warnings, in order."""

    def __init__(self):
        self.lines = []

    def warning(self, line):
        self.lines.append(line)


def test_a_refused_replan_keeps_the_budget_and_pinned_is_said_once():
    """The following's own bookkeeping, driven with readings (no thread, no model)."""
    applied, log = [], Log()

    def apply(budget):
        if budget < 30 * MB:
            raise ExecutorError('arena too small')
        applied.append(budget)
    f = MemoryFollowing(50 * MB, 20 * MB, lambda: 60 * MB, apply, budget_bytes=60 * MB,
                        cap_bytes=100 * MB, log=log)
    f.close()                                   # drive it by hand
    assert f.step(0.0, 30 * MB, 'meminfo') == 40 * MB and applied == [40 * MB]
    st = f.stats()
    assert st['auto_shrinks'] == 1 and st['shrink_reaction_max_ms'] is not None
    # the owner refuses a smaller plan: the budget and counters stay, the refusal is counted
    f.policy.budget_bytes = 60 * MB
    assert f.step(1.0, 5 * MB, 'meminfo') is None
    st = f.stats()
    assert st['budget_bytes'] == 60 * MB and st['auto_shrinks'] == 1
    assert st['following_refused'] == 1 and 'cannot re-plan' in log.lines[-1]
    assert st['pinned_at_floor']         # 60 + 5 - 50 MiB is below the 20 MiB floor
    # nothing fits: pinned at the floor, said once, time counted
    for t in (2.0, 3.0, 4.0):
        f.step(t, 1 * MB, 'meminfo')
    pinned = [line for line in log.lines if 'smallest plan' in line]
    assert len(pinned) == 1 and f.stats()['pinned_s'] >= 2.0
    assert f.stats()['below_keep_free_s'] >= 3.0
