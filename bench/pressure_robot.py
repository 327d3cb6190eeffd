# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The rest of the robot in the memory-pressure benchmark: a process that takes memory in steps.

Another node starting, a map growing: after `--delay` s it takes `--step-mb` MiB every
`--every` s up to `--max-mb`, holds it for `--hold` s, frees all of it at once, and lives on for
`--linger` s (so that its survival is seen), then exits 0. Each step is a private anonymous
mapping with every page written, so the kernel charges exactly those bytes to its cgroup, and
unmapping returns them at once. One JSON line per event on stdout, timed by CLOCK_MONOTONIC
(the same clock in every process): the benchmark lines them up with the node's memory. Standard
library only, run with `python -I -S`: its own footprint stays a few MiB.
"""

import argparse
import json
import mmap
import sys
import time

PAGE = mmap.PAGESIZE
MIB = 1 << 20


def say(event, held, **extra):
    """Print one event line (monotonic time, MiB held) and flush it."""
    print(json.dumps(dict(t=time.monotonic(), event=event, held_mb=held / MIB, **extra)),
          flush=True)


def take(nbytes):
    """Return a private anonymous mapping of `nbytes` with every page written (charged)."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, nbytes, PAGE):
        m[off] = 1
    return m


def run(args):
    """Follow the schedule; return 0."""
    held, maps = 0, []
    say('start', held)
    time.sleep(args.delay)
    step = int(args.step_mb * MIB)
    while held + step <= int(args.max_mb * MIB):
        t0 = time.monotonic()
        maps.append(take(step))
        held += step
        say('step', held, started=t0)
        time.sleep(max(0.0, args.every - (time.monotonic() - t0)))
    say('hold', held)
    time.sleep(max(0.0, args.hold - args.every))
    t0 = time.monotonic()
    for m in maps:
        m.close()
    maps, held = [], 0
    say('free', held, started=t0)
    time.sleep(args.linger)
    say('done', held)
    return 0


def main(argv=None):
    """Parse the schedule and run it."""
    p = argparse.ArgumentParser(prog='pressure_robot', description=__doc__.split('\n\n')[0])
    p.add_argument('--delay', type=float, default=0.0, help='seconds before the first step')
    p.add_argument('--step-mb', type=float, required=True, help='MiB taken per step')
    p.add_argument('--every', type=float, default=2.0, help='seconds between steps')
    p.add_argument('--max-mb', type=float, required=True, help='MiB held at most')
    p.add_argument('--hold', type=float, default=6.0,
                   help='seconds from the last step to freeing everything')
    p.add_argument('--linger', type=float, default=10.0, help='seconds alive after freeing')
    return run(p.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
