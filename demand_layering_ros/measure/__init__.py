# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What a profile measures on this machine (`planning.profiler` runs them into PROFILE.json).

Below planning and above the runtime: each module runs the runtime (or the disk) and returns
numbers; fitting the planner's replay to them is planning's (`planning.simulate`).

The modules, one per kind of measurement:
  machine         the machine a profile was measured on, and `sync` (wait for the accelerator
                  before reading a clock);
  call_clock      each call's compute time in one pass (busy, gap, tail) by hooks on the units;
  transfer        what moving a streamed slot costs: the disk's O_DIRECT reads by request size
                  (in rounds), the slot checksum, on a discrete GPU the host-to-device copy;
  contention      how much reading and computing at once slow each other down;
  executor_costs  the executor's own costs per pass and per slot, calibrated on a small
                  model, and the tight passes its hand-off is fitted to (on the small model
                  and again on the real pack);
  splits          which split sizes stay bit-exact and what computing by chunks costs;
  activation      the activation peak of one pass.
"""
