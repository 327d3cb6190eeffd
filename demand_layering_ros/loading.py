# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The package's entry points: a pack demand-layered or fully resident; several packs shared.

They sit above both planning and the runtime: a budget no plan fixes is fitted by planning's
fit (`fit_budget`, `fit_group`), which they hand to the runtime, so the runtime runs the plan it
is given and never imports planning (also for a later `reconfigure(budget_mb=...)`).
"""

from demand_layering_ros.planning import fit_budget, fit_group
from demand_layering_ros.runtime import group
from demand_layering_ros.runtime.model import DemandLayeredModel
from demand_layering_ros.runtime.resident import load_resident

__all__ = ['load', 'load_resident', 'load_shared']


def load(pack_dir, device='cpu', budget_mb=None, plan=None, staging=None, **opts):
    """
    Open a pack as a DemandLayeredModel.

    budget_mb: weight memory (MiB) for resident units plus the arena; plan: a Plan, a dict or a
    PLAN.yaml path (resident_units, arena_bytes, split_bytes, prefetch_depth, staging); neither:
    fully streamed, the smallest arena the recorded schedule allows. staging ('copy' or
    'zero_copy') matters on CUDA only; a plan's staging wins, and with neither an integrated
    GPU gets 'zero_copy' and a discrete one 'copy' (`options.default_staging`). opts: threads,
    direct, split_bytes, prefetch_depth, timeline, sync, throttle_bytes_per_s, fault_injector,
    staging_bytes, dtype (the compute dtype; default: a float16/bfloat16 pack computes in its
    dtype on CUDA and in float32 on the CPU, converted as each unit lands).
    """
    return DemandLayeredModel(pack_dir, device=device, budget_mb=budget_mb, plan=plan,
                              staging=staging, fit=fit_budget, **opts)


def load_shared(packs, device='cpu', budget_mb=None, plan=None, staging='copy', **opts):
    """
    Open several packs as models sharing one arena, one reader and one loader under one budget.

    packs: {model name: pack directory}; returns {name: model} (each as load() returns it) with
    the group's stats(), prefetch(name), reconfigure() and close(); see runtime.group.
    """
    return group.load_shared(packs, device=device, budget_mb=budget_mb, plan=plan,
                             staging=staging, fit=fit_group, **opts)
