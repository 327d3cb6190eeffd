# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What a configuration costs besides its weights: activations, pinned staging, the whole process.

A budget bounds weights, but a robot's DRAM holds everything: the tensors a pass creates, the
pinned host memory CUDA staging goes through (torch's caching host allocator hands out a power
of two for every request and keeps freed blocks), the process's RSS and the page cache it
causes. stats() reports all of them next to peak_weight_bytes:

  activation_peak_bytes: the most memory a pass held beyond its weights, over the first
      MEASURED_PASSES passes after each configure (later passes reuse what the first one
      allocated). CUDA: the caching allocator's peak above the pass start. CPU: the process's
      anonymous resident memory (RSS less file-backed and shared pages, so the arena and the
      resident weights, shared mappings, do not count) sampled after every module call,
      above its value at the pass start; it includes other threads' allocations meanwhile.
  process_rss_bytes, page_cache_growth_bytes (this process's memory cgroup's page cache now
      less at configure; None without a readable cgroup), weights_cached_bytes (pages of the
      pack's weights file in the page cache: O_DIRECT streaming leaves none): refreshed at
      most once every PROCESS_REFRESH_S, so stats() stays cheap per frame.
"""

import time

from demand_layering_ros import process_memory
import torch

MEASURED_PASSES = 2
PROCESS_REFRESH_S = 1.0


class ActivationProbe:
    """Measures activation_peak_bytes (see the module docstring) on the passes it is asked to."""

    def __init__(self, device):
        """Measure on `device` (a torch.device)."""
        self.cuda = device.type == 'cuda'
        self.device = device
        self.peak = 0
        self.left = MEASURED_PASSES
        self._start = 0
        self._high = 0
        self._handle = None

    def reset(self):
        """Start over for a new configuration: measure its next passes afresh."""
        self.peak = 0
        self.left = MEASURED_PASSES

    def begin(self):
        """Start measuring a pass (when it is one of the measured ones)."""
        if self.left <= 0:
            return
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return
        self._start = self._high = process_memory.anon_bytes()
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._sample)

    def _sample(self, module, args, output):
        self._high = max(self._high, process_memory.anon_bytes())

    def end(self):
        """Finish a pass; fold its figure into the peak."""
        if self.left <= 0:
            return
        self.left -= 1
        if self.cuda:
            used = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._handle.remove()
            self._handle = None
            used = max(self._high, process_memory.anon_bytes()) - self._start
        self.peak = max(self.peak, used)


class ProcessFigures:
    """process_rss_bytes, page_cache_growth_bytes and weights_cached_bytes, cached briefly."""

    def __init__(self, weights_path):
        """Watch the pack file `weights_path`; the page-cache baseline is taken by mark()."""
        self.weights_path = weights_path
        self.cache0 = None
        self.figures = {}
        self.when = None

    def mark(self):
        """Take the page-cache baseline (at configure) and forget the cached figures."""
        usage = process_memory.own_cgroup_usage()
        self.cache0 = usage['cache_bytes'] if usage else None
        self.when = None

    def get(self):
        """Return the three figures, read again when older than PROCESS_REFRESH_S."""
        now = time.monotonic()
        if self.when is None or now - self.when >= PROCESS_REFRESH_S:
            usage = process_memory.own_cgroup_usage()
            try:
                cached = process_memory.file_cached_bytes(self.weights_path)
            except OSError:
                cached = None
            self.figures = {
                'process_rss_bytes': process_memory.rss_bytes(),
                'page_cache_growth_bytes': usage['cache_bytes'] - self.cache0
                if usage is not None and self.cache0 is not None else None,
                'weights_cached_bytes': cached}
            self.when = now
        return dict(self.figures)
