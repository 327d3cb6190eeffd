# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The plain model with every weight resident: the oracle the executor is checked against."""

import os
from typing import Optional, Union

from demand_layering_ros.pack import Pack
from demand_layering_ros.runtime import malloc
from demand_layering_ros.runtime.binding import compute_dtype, landed_state
import torch


def load_resident(pack_dir: Union[str, os.PathLike, Pack], device: str = 'cpu',
                  dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
    """
    Return the pack's plain model with every weight loaded (the oracle and the baseline).

    Its dtypes are the demand-layered model's: a float16 pack computes in float16 on CUDA and
    is converted to the model's float32 on the CPU, by the same conversion (`landed_state`);
    dtype: the compute dtype, as load()'s.
    """
    malloc.limit_arenas()           # the same process settings as a demand-layered model
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
