# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
`make demo` end to end, shortened: real photos over DDS, memory compared, pressure phase.

The demo's last phase (keep_free_mb beside a robot process) is make bench-pressure's scene:
test_pressure runs it, shortened, and checks the demo's verdict on it.
"""

import json
import os
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


def test_demo_detects_objects_in_the_camera_stream(tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(100 + os.getpid() % 100))
    out = tmp_path / 'demo'
    proc = subprocess.run(
        [sys.executable, '-m', 'tools.demo', '--duration', '5', '--rate', '5',
         '--pressure-duration', '8', '--out', str(out), '--pack', str(tmp_path / 'pack'),
         '--pressure-pack', str(tmp_path / 'yolov3'), '--skip-keep-free'],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r['phase']: r for r in json.loads((out / 'summary.json').read_text())}
    assert set(rows) == {'resident', 'layered', 'floor', 'yolov3 resident', 'yolov3 layered'}
    pressure = [rows.pop('yolov3 resident'), rows.pop('yolov3 layered')]
    # the floor (torch + rclpy + the camera's subscription + a publisher) ran beside the
    # layered node on the same frames, in its own cgroup: below either node
    floor = rows.pop('floor')
    assert floor['frames_in'] > 0 and [n for n, _ in floor['steps']][:2] == [
        'python', 'import torch']
    assert 0 < floor['process_peak_mb'] < min(r['process_peak_mb'] for r in rows.values())
    assert 'Goal: the layered node within floor + activations + weights held' in proc.stdout
    for row in rows.values():
        assert row['frames_out'] > 0 and row['io_mode'] == 'direct'
        # reliable by default: frames are not lost in DDS (best effort lost ~80% of ~1 MB
        # photos here); only latest-frame-wins replaces some when the node is busy
        assert row['qos'] == 'reliable' and 4 * row['frames_in'] >= row['frames_sent'] > 0
    # the real model finds the dog of dog.jpg, printed as it arrives
    assert ' dog 0.' in proc.stdout
    # demand layering holds less weight memory than the resident model, measured in one run
    assert rows['layered']['peak_weight_mb'] < rows['resident']['peak_weight_mb']
    # The whole node's peak (its cgroup's, page cache included) is measured and compared for
    # both. yolov3-tiny holds 34 MiB of weights: the layered node saves 20-35 MiB, and one run's
    # peak moves +-15 MiB with the DDS and allocator (CI once saw it 3 MiB above), so a single
    # run cannot decide the whole-process claim for it; yolov3 (236 MiB) decides it below.
    assert rows['layered']['process_peak_mb'] > 0 and rows['resident']['process_peak_mb'] > 0
    assert 'the layered node peaked' in proc.stdout
    # under the same memory limit the resident yolov3 node is killed, the layered one serves
    killed, served = pressure
    assert killed['limit_mb'] == served['limit_mb'] > rows['layered']['process_peak_mb']
    assert killed['outcome'] == 'OOM-killed' and killed['frames_out'] == 0
    assert served['outcome'] == 'served' and served['frames_out'] > 0
    # the whole process: the layered yolov3 node serves inside a limit the resident one dies at
    assert served['process_peak_mb'] <= served['limit_mb']
    assert (out / 'timeline.png').stat().st_size > 10000
    assert list(out.glob('annotated_*.jpg'))
