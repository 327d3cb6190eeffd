# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The part of a frame's latency spent outside the network's forward pass, measured online.

A deadline runs from the image's header stamp to the published detections, but the planner
predicts only the forward pass. Before the pass the frame travelled to the node (its age at
arrival) and was decoded; around it the detector pre- and post-processes; after it the
detections are built and published. `Slack` keeps the recent measurements of each part, so a
deadline plan can target the deadline minus what the rest of the frame's path takes here, and
diagnostics can say where the time went. Parts not measured yet count as zero (or the guess
the warm-up gave), so a plan made at configure is refined once frames have been seen.
"""

from collections import deque

from demand_layering_ros.quantiles import median, percentile

PARTS = ('age', 'decode', 'prepost', 'publish')


class Slack:
    """Recent seconds of each part outside the forward pass; `total` is what a plan leaves."""

    def __init__(self, window=64):
        self.samples = {p: deque(maxlen=window) for p in PARTS}
        self.guess = dict.fromkeys(PARTS, 0.0)

    def add(self, part, seconds):
        """Record one measurement of `part` (one of PARTS), in seconds."""
        self.samples[part].append(max(0.0, float(seconds)))

    def part(self, name):
        """
        Return the typical seconds of one part: the median, the 90th percentile for the age.

        Ages at arrival vary with the sender's and the network's load, and a plan that leaves
        room for the typical age only would see every other frame arrive too old.
        """
        xs = self.samples[name].copy()   # a copy in C: the inference thread may append
        if not xs:
            return self.guess[name]
        return percentile(xs, 90) if name == 'age' else median(xs)

    def parts_ms(self):
        """Return {part: milliseconds} for every part."""
        return {p: self.part(p) * 1e3 for p in PARTS}

    def total(self):
        """Return the seconds a frame typically spends outside the forward pass."""
        return sum(self.part(p) for p in PARTS)

    def measured(self):
        """Return the number of frames measured: the smallest count of any part."""
        return min(len(xs) for xs in self.samples.values())

    def describe(self):
        """Return the parts as one line: 'age at arrival 12 ms, decode 6 ms, ...'."""
        ms = self.parts_ms()
        return (f'age at arrival {ms["age"]:.0f} ms, decode {ms["decode"]:.0f} ms, '
                f'pre/post-processing {ms["prepost"]:.0f} ms, publish {ms["publish"]:.0f} ms')
