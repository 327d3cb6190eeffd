# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Time every call of one forward pass by hooks on the units' modules, and split a pass into calls.

The planner replays a pass call by call, so it needs each call's time with its weights in place
(busy) and the weight-free work before it (gap). Forward pre/post hooks stamp every unit module
call (host clock on a CPU, CUDA events on the current stream of the model's own GPU, which need
not be the current device); `split_calls` turns the stamps into busy, gap
and tail times, and `call_waits` takes the executor's waits for weights out of a streamed pass.
"""

import time


class CallClock:
    """Forward pre/post hooks on the unit modules that time every call of one pass."""

    def __init__(self, model, module_names, device):
        """Put hooks on the modules (canonical names, like the pack trace); time on `device`."""
        import torch
        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == 'cuda'
        self.events = []                 # (stamp, +1 pre / -1 post, module name)
        self.enabled = True
        first = {}
        for name, m in model.named_modules(remove_duplicate=False):
            first.setdefault(id(m), (name, m))
        wanted = set(module_names)
        self.handles = []
        for name, m in first.values():
            if name in wanted:
                self.handles.append(m.register_forward_pre_hook(self._hook(name, +1)))
                self.handles.append(m.register_forward_hook(self._post(name)))

    def _stamp(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record(self.torch.cuda.current_stream(self.device))
            return e
        return time.perf_counter()

    def _hook(self, name, sign):
        def pre(module, args):
            if self.enabled:
                self.events.append((self._stamp(), sign, name))
        return pre

    def _post(self, name):
        def post(module, args, output):
            if self.enabled:
                self.events.append((self._stamp(), -1, name))
        return post

    def remove(self):
        """Take the hooks off the modules."""
        for h in self.handles:
            h.remove()

    def run(self, model, x):
        """Run one pass; return (events with ms from pass start, total ms)."""
        self.events = []
        t0 = self._stamp()
        with self.torch.no_grad():
            model(x)
        t1 = self._stamp()
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            ev = [(t0.elapsed_time(e), s, n) for e, s, n in self.events]
            return ev, t0.elapsed_time(t1)
        return [(1e3 * (t - t0), s, n) for t, s, n in self.events], 1e3 * (t1 - t0)


def call_waits(calls, steps):
    """
    Return per-step ms waited for weights (before the call, within it) from an executor log.

    calls: stats()['calls'], [unit, start, wait (s), chunk] per call (chunk None) followed by
    one entry per chunk of a split layer. The wait of the call itself happens in the
    executor's pre-hook, before the profile's clock starts (gap); chunk waits happen inside
    the call (busy). A log that does not have `steps` calls gives zeros.
    """
    before, within = [], []
    for _, _, wait, chunk in calls:
        if chunk is None:
            before.append(1e3 * wait)
            within.append(0.0)
        elif within:
            within[-1] += 1e3 * wait
    if len(before) != steps:
        return [0.0] * steps, [0.0] * steps
    return before, within


def split_calls(events, total_ms, steps):
    """
    Split one timed pass into per-call busy and gap times (ms) and the tail.

    Between two hook events the time belongs to the call that started last while any hooked
    module is running (its weights are needed), and otherwise to the gap before the next call
    (weight-free work that may overlap the wait for the next unit), or to the tail after the
    last call.
    """
    busy = [0.0] * steps
    gap = [0.0] * steps
    tail = 0.0
    depth, cur, prev = 0, -1, 0.0
    for t, sign, _ in events:
        dt = max(t - prev, 0.0)
        if depth > 0:
            busy[cur] += dt
        elif cur + 1 < steps:
            gap[cur + 1] += dt
        else:
            tail += dt
        if sign > 0:
            cur += 1
            depth += 1
        else:
            depth -= 1
        prev = t
    tail += max(total_ms - prev, 0.0)
    return busy, gap, tail
