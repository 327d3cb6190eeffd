# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The package's entry points: a pack demand-layered or fully resident; several packs shared.

They sit above both planning and the runtime: a budget no plan fixes is fitted by planning's
fit (`fit_budget`, `fit_group`), which they hand to the runtime, so the runtime runs the plan it
is given and never imports planning (also for a later `reconfigure(budget_mb=...)`).
"""

import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Union
import weakref

from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.memory_following import MemoryFollowing
from demand_layering_ros.pack import Pack
from demand_layering_ros.planning import fit_budget, fit_group
from demand_layering_ros.runtime import group
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.runtime.model import DemandLayeredModel
from demand_layering_ros.runtime.resident import load_resident
from demand_layering_ros.sizes import MB

__all__ = ['follow_free_memory', 'load', 'load_resident', 'load_shared']

PackLike = Union[str, os.PathLike, Pack]               # a pack directory, or an open Pack
PlanLike = Union[None, str, os.PathLike, Mapping, Plan]  # PLAN.yaml, its keys, or a Plan


def load(pack_dir: PackLike, device: str = 'cpu', budget_mb: Optional[float] = None,
         plan: PlanLike = None, staging: Optional[str] = None, keep_free_mb: float = 0,
         **opts: Any) -> DemandLayeredModel:
    """
    Open a pack as a DemandLayeredModel.

    budget_mb: weight memory (MiB) for resident units plus the arena; plan: a Plan, a dict or a
    PLAN.yaml path (resident_units, arena_bytes, split_bytes, prefetch_depth, staging); neither:
    fully streamed, the smallest arena the recorded schedule allows. staging ('copy' or
    'zero_copy') matters on CUDA only; a plan's staging wins, and with neither an integrated
    GPU gets 'zero_copy' and a discrete one 'copy' (`options.default_staging`). opts: threads,
    direct, split_bytes, prefetch_depth, timeline, sync, throttle_bytes_per_s, fault_injector,
    staging_bytes, dtype (the compute dtype; default: a float16/bfloat16 pack computes in its
    dtype on CUDA and in float32 on the CPU, converted as each unit lands). keep_free_mb: leave
    this much memory free to the rest of the machine: the budget follows free memory between
    frames, capped by budget_mb, never below the smallest plan (0: a fixed budget; see
    `follow_free_memory`).
    """
    check_keep_free(keep_free_mb, plan)
    model = DemandLayeredModel(pack_dir, device=device, budget_mb=budget_mb, plan=plan,
                               staging=staging, fit=fit_budget, **opts)
    if keep_free_mb:
        follow_free_memory(model, keep_free_mb, budget_mb)
    return model


def load_shared(packs: Dict[str, PackLike], device: str = 'cpu',
                budget_mb: Optional[float] = None, plan: PlanLike = None, staging: str = 'copy',
                keep_free_mb: float = 0, **opts: Any) -> group.GroupModels:
    """
    Open several packs as models sharing one arena, one reader and one loader under one budget.

    packs: {model name: pack directory}; returns {name: model} (each as load() returns it) with
    the group's stats(), prefetch(name), reconfigure() and close(); see runtime.group.
    keep_free_mb: the group's shared budget follows free memory, as load()'s.
    """
    check_keep_free(keep_free_mb, plan)
    models = group.load_shared(packs, device=device, budget_mb=budget_mb, plan=plan,
                               staging=staging, fit=fit_group, **opts)
    if keep_free_mb:
        follow_free_memory(models, keep_free_mb, budget_mb)
    return models


def follow_free_memory(models: Any, keep_free_mb: float, budget_mb: Optional[float] = None,
                       log: Any = None, apply: Optional[Callable[[int], None]] = None,
                       splits: Iterable[Optional[int]] = (None,)) -> MemoryFollowing:
    """
    Make a model's (or a group's) weight budget follow free memory, leaving keep_free_mb free.

    The budget shrinks at once and grows back after free memory has stayed up for a while,
    each change a `reconfigure(budget_mb=...)` between two frames; it is capped by budget_mb
    (and the whole model) and never below the smallest plan at the split sizes given (default:
    none; chunked layers may differ in the last bits, so only split sizes a profile measured
    exact belong here: outputs stay those of the resident model). Returns the MemoryFollowing,
    also kept as `models.following` (its figures join `stats()`; `close()` stops it). The thread
    holds the models weakly: dropping them stops it. apply(budget_bytes): how a new budget is
    applied (default: the models' reconfigure; the node's service re-plans with its profile).
    """
    check_keep_free(keep_free_mb)
    ref = weakref.ref(models)

    def held():
        m = ref()
        return m.held_bytes() if m is not None else 0

    def reconfigure(budget_bytes):
        m = ref()
        if m is None:
            raise ExecutorError('the models were dropped')
        m.reconfigure(budget_mb=budget_bytes / MB)

    whole = models.whole_bytes()
    cap = whole if budget_mb is None else min(int(budget_mb * MB), whole)
    following = MemoryFollowing(int(keep_free_mb * MB), models.smallest_plan_bytes(splits), held,
                                apply or reconfigure, budget_bytes=models.held_bytes(),
                                cap_bytes=cap, log=log)
    weakref.finalize(models, following.close)
    models.following = following
    return following


def check_keep_free(keep_free_mb: float, plan: PlanLike = None) -> None:
    """Raise ExecutorError unless keep_free_mb is a number >= 0 that no fixed plan contradicts."""
    if isinstance(keep_free_mb, bool) or not isinstance(keep_free_mb, (int, float)) or \
            not 0 <= keep_free_mb < float('inf'):
        raise ExecutorError(f'keep_free_mb must be a number >= 0, got {keep_free_mb!r}')
    if keep_free_mb and plan is not None:
        raise ExecutorError('keep_free_mb re-plans as free memory changes, and a plan fixes the '
                            'configuration: give one of them')
