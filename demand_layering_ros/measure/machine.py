# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The machine a profile was measured on, and waiting for its accelerator before reading a clock.

A plan is only as good as the match between the machine it was profiled on and the machine it
runs on, so every profile (and benchmark) records the CPU, cores, OS, torch and its thread
count, and the accelerator.
"""

import os
import platform

from demand_layering_ros.sizes import MB


def machine_info(device='cpu'):
    """Describe this machine: CPU model, cores, OS, and the accelerator when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    info = {'cpu': cpu, 'cores': os.cpu_count(), 'os': platform.platform(),
            'python': platform.python_version()}
    try:
        import torch
        info['torch'] = str(torch.__version__)
        info['torch_threads'] = torch.get_num_threads()
        if str(device).startswith('cuda') and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(device))
            info['device_name'] = props.name
            info['device_memory_mb'] = round(props.total_memory / MB)
            info['integrated'] = bool(getattr(props, 'is_integrated', False))
        else:
            info['device_name'] = cpu
    except ImportError:
        pass
    return info


def sync(device):
    """Wait for the device's queued work (CUDA), so a host clock read after it is meaningful."""
    if str(device).startswith('cuda'):
        import torch
        torch.cuda.synchronize(torch.device(device))   # that GPU, not the current one
