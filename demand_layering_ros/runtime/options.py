# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The runtime's fixed settings and the check of `load()` options, before anything is opened."""

from demand_layering_ros.layout.plan import STAGINGS
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.sizes import MB
import torch

READER_THREADS = 2                # O_DIRECT worker threads per open pack file
PIECE_BYTES = 4 * MB              # a slot's range is claimed and read piece by piece
WAIT_TIMEOUT_S = 300.0            # a wait this long for one unit is reported, not endured


def check_options(device='cpu', staging=None, threads=READER_THREADS, split_bytes=None,
                  prefetch_depth=None, staging_bytes=None):
    """Validate load() options before anything is opened; return the torch.device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ExecutorError(f'device {device!r} is not a torch device: {e}') from None
    if dev.type not in ('cpu', 'cuda'):
        raise ExecutorError(f'device {device!r}: only cpu and cuda are supported')
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ExecutorError(f'device {device!r}: CUDA is not available on this machine')
    if staging is not None and staging not in STAGINGS:
        raise ExecutorError(f'staging must be one of {STAGINGS} or None, got {staging!r}')
    for name, value, low in (('threads', threads, 1), ('split_bytes', split_bytes, 0),
                             ('prefetch_depth', prefetch_depth, 0),
                             ('staging_bytes', staging_bytes, 0)):
        if value is None and name != 'threads':
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ExecutorError(f'{name} must be an integer >= {low}'
                                f'{" or None" if name != "threads" else ""}, got {value!r}')
    return dev


def default_staging(device):
    """
    Return the staging a device gets when neither the plan nor load() names one.

    An integrated GPU (a Jetson) reads the same DRAM as the CPU, so a device arena fed by a
    pinned copy ring would only hold every streamed byte twice: 'zero_copy'. A discrete GPU
    would read mapped host memory over PCIe on every use: 'copy'. The CPU has one staging;
    'copy' is what a plan records for it.
    """
    dev = torch.device(device)
    if dev.type != 'cuda':
        return 'copy'
    props = torch.cuda.get_device_properties(dev)
    return 'zero_copy' if getattr(props, 'is_integrated', False) else 'copy'
