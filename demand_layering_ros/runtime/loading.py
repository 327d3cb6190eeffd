# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The runtime's two entry points: a pack as a demand-layered model, or fully resident."""

from demand_layering_ros.pack import Pack
from demand_layering_ros.runtime import allocator
from demand_layering_ros.runtime.model import DemandLayeredModel
import torch


def load(pack_dir, device='cpu', budget_mb=None, plan=None, staging='copy', **opts):
    """
    Open a pack as a DemandLayeredModel.

    budget_mb: weight memory (MiB) for resident units plus the arena; plan: a Plan, a dict or a
    PLAN.yaml path (resident_units, arena_bytes, split_bytes, prefetch_depth, staging); neither:
    fully streamed, the smallest arena the recorded schedule allows. staging ('copy' or
    'zero_copy') matters on CUDA only. opts: threads, direct, split_bytes, prefetch_depth,
    timeline, sync, throttle_bytes_per_s, fault_injector, staging_bytes.
    """
    return DemandLayeredModel(pack_dir, device=device, budget_mb=budget_mb, plan=plan,
                              staging=staging, **opts)


def load_resident(pack_dir, device='cpu'):
    """Return the pack's plain model with every weight loaded (the oracle and the baseline)."""
    allocator.limit_arenas()           # the same process settings as a demand-layered model
    pack = pack_dir if isinstance(pack_dir, Pack) else Pack.open(pack_dir)
    det = pack.build_detector(device=device, meta=True)
    model = det.model
    state = pack.load_state_dict()
    state.update(pack.extra_buffers())
    model.load_state_dict(state, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    if torch.device(device).type != 'cpu':
        model.to(device)
    return model.eval()
