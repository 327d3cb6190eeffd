# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The runtime's entry points: a pack demand-layered or fully resident; several packs shared."""

from demand_layering_ros.pack import Pack
from demand_layering_ros.runtime import allocator, group
from demand_layering_ros.runtime.binding import compute_dtype, landed_state
from demand_layering_ros.runtime.model import DemandLayeredModel
import torch


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
                              staging=staging, **opts)


def load_resident(pack_dir, device='cpu', dtype=None):
    """
    Return the pack's plain model with every weight loaded (the oracle and the baseline).

    Its dtypes are the demand-layered model's: a float16 pack computes in float16 on CUDA and
    is converted to the model's float32 on the CPU, by the same conversion (`landed_state`);
    dtype: the compute dtype, as load()'s.
    """
    allocator.limit_arenas()           # the same process settings as a demand-layered model
    pack = pack_dir if isinstance(pack_dir, Pack) else Pack.open(pack_dir)
    det = pack.build_detector(device=device, meta=True)
    dtype = compute_dtype(pack, device, dtype)
    if dtype is not None:
        det.set_dtype(dtype)
    model = det.model
    state = pack.load_state_dict()
    state.update(pack.extra_buffers())
    model.load_state_dict(landed_state(model, state), strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    if torch.device(device).type != 'cpu':
        model.to(device)
    return model.eval()


def load_shared(packs, device='cpu', budget_mb=None, plan=None, staging='copy', **opts):
    """
    Open several packs as models sharing one arena, one reader and one loader under one budget.

    packs: {model name: pack directory}; returns {name: model} (each as load() returns it) with
    the group's stats(), prefetch(name), reconfigure() and close(); see runtime.group.
    """
    return group.load_shared(packs, device=device, budget_mb=budget_mb, plan=plan,
                             staging=staging, **opts)
