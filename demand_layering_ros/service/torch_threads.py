# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Torch's CPU thread count for one service: taken at configure, re-asserted, given back at close.

The count is process-wide, and passes, profiles and plans must agree on it (`layout.threads`:
a plan holds only at the count it was made for), so a service sets its own before each use:
services sharing a process (tests, a tool, several models) then do not undo each other.
"""

import os
import sys


def cpu_threads(cores=None):
    """
    Return the torch CPU threads to use by default: every core but one, at least one.

    The node shares the machine with its camera, DDS and its own receiving thread. Measured on
    a 2-core machine shared with other processes, yolov3-tiny with a torch thread per core ran
    a pass 3-10x slower (median) than with one thread: torch's threads wait for each other
    whenever one of them is descheduled.
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores - 1)


class TorchThreads:
    """The thread count one service runs with, and the count it found (given back at close)."""

    def __init__(self):
        """Nothing taken yet."""
        self.before = None      # torch's count before the first take()
        self.count = None       # the count this service runs with (None: torch's own)

    def take(self, device, num_threads):
        """Remember torch's count and take this service's (CPU, or num_threads given)."""
        if device == 'cpu' or num_threads:
            import torch
            if self.before is None:
                self.before = torch.get_num_threads()
            self.count = num_threads or cpu_threads()
        return self.use()

    def use(self):
        """Set torch's count to this service's (when it has one) and return the count now."""
        import torch
        if self.count is not None and torch.get_num_threads() != self.count:
            torch.set_num_threads(self.count)
        return torch.get_num_threads()

    def give_back(self):
        """Restore the count found at the first take() (idempotent)."""
        torch = sys.modules.get('torch')
        if torch is not None and self.before is not None:
            torch.set_num_threads(self.before)
            self.before = None
        self.count = None
