# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The demo's last phase: the budget follows the robot (`keep_free_mb`).

`make bench-pressure`'s yolov3 scene, run as its own process (it owns rclpy and the cgroups):
the detector node serving a 30 fps camera in one memory cgroup beside a robot process that
takes memory in steps, holds it and frees it. Two of its three phases, under the same limit:
the model resident, then demand-layered with `keep_free_mb`. The demo prints what became of
each process and of the budget, and fails when the keep_free node or the robot did not survive.
"""

import json
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
PHASES = 'resident,keep_free'


def run(pack_dir, out_dir):
    """Run the scene (output streamed); return its phases' summaries, or None if it failed."""
    out = Path(out_dir) / 'keep_free'
    cmd = [sys.executable, '-m', 'bench.bench_pressure', '--models', 'yolov3', '--phases',
           PHASES, '--pack-dir', str(pack_dir), '--out', str(out)]
    print(f'[demo] phase keep_free: {" ".join(cmd[1:])}', flush=True)
    proc = subprocess.run(cmd, cwd=str(ROOT))
    results = out / 'results.json'
    if proc.returncode != 0 or not results.exists():
        return None
    return json.loads(results.read_text())['summaries']


def table(summaries):
    """Return the benchmark's table of the phases (one column per phase)."""
    from bench.pressure_report import table as pressure_table
    return '\n'.join(pressure_table(summaries))


def failure(summaries):
    """Return why the phase failed (one line), or None when keep_free did what it shows."""
    if summaries is None:
        return 'the keep_free phase did not run to its end (see its output above)'
    keep = next((s for s in summaries if s['phase'] == 'keep_free'), None)
    if keep is None:
        return 'the keep_free phase has no result'
    if keep['oom_kills'] or keep['node'] != 'survived' or keep['robot'] != 'survived':
        return f'with keep_free_mb: {keep["line"]}'
    if not keep['auto_shrinks'] or not keep['published_in_every_stage']:
        return f'with keep_free_mb the node did not shrink or stopped publishing: {keep["line"]}'
    return None
