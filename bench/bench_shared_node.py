# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Several models in one detector node against one node per model, as a robot runs them.

bench_shared.py compares processes that call `load_shared`; this runs the detector node
executable itself over real DDS: one node with `models: [front, rear]` under one
memory_budget_mb B, against two nodes (one model each, budgets B / 2), every node process in a
fresh memory cgroup (tools/cgroups.py: the kernel's peak charge, page cache included; the
weight files evicted first). A publisher in this process sends real photos to both cameras
(front every 300 ms, rear every 600 ms, reliable, depth 1) and times each answer from the
image's header stamp. Both configurations serve the same frames for the same seconds.

Models: the real yolov3-tiny (COCO weights, 416x416) on /front and seeded yolov3 (256x256) on
/rear, the packs of bench_shared.py (written there, or here when missing).

Usage: python -m bench.bench_shared_node [--duration S] [--budget-mb B] [--json OUT.json]
"""

import argparse
import json
import os
from pathlib import Path
import signal
import statistics
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_shared import prepare_pack  # noqa: E402
from demand_layering_ros import quantiles  # noqa: E402
from demand_layering_ros.pack.format import WEIGHTS_FILE  # noqa: E402
from demand_layering_ros.sizes import MB  # noqa: E402
from tools import cgroups  # noqa: E402

CAMERAS = {'front': ('yolov3-tiny', 300.0), 'rear': ('yolov3', 600.0)}
NODE = 'demand_layering_detector'


def params_yaml(path, names, packs, budget_mb):
    """Write a node parameter file serving `names` (camera names) under `budget_mb`."""
    import yaml
    p = {'memory_budget_mb': float(budget_mb), 'device': 'cpu', 'autostart': True,
         'qos_reliability': 'reliable'}
    if len(names) == 1:
        cam = names[0]
        p.update(pack_path=str(packs[cam]), image_topics=[f'/{cam}/image_raw'])
    else:
        p['models'] = list(names)
        for cam in names:
            p[cam] = {'pack_path': str(packs[cam]), 'image_topics': [f'/{cam}/image_raw']}
    Path(path).write_text(yaml.safe_dump({NODE: {'ros__parameters': p}}))
    return path


def photo():
    """Return Debian's darknet dog.jpg at 416x416 as RGB bytes, height, width."""
    import numpy as np
    from PIL import Image
    from demand_layering_ros.models import assets
    img = Image.open(assets.photo('dog')).convert('RGB').resize((416, 416))
    return np.asarray(img).tobytes(), 416, 416


def serve(nodes, duration, domain):
    """Start the node processes, offer frames for `duration` s; return (results, latencies)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p))
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    client = rclpy.create_node('bench_shared_node', context=ctx)
    spin = SingleThreadedExecutor(context=ctx)
    spin.add_node(client)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    lat = {cam: [] for cam in CAMERAS}
    offered = dict.fromkeys(CAMERAS, 0)

    def got(msg, cam):
        sent = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        lat[cam].append((time.time() - sent) * 1e3)
    for cam in CAMERAS:
        client.create_subscription(Detection2DArray, f'/{cam}/detections',
                                   lambda m, c=cam: got(m, c), qos)
    pubs = {cam: client.create_publisher(Image, f'/{cam}/image_raw', qos) for cam in CAMERAS}
    data, h, w = photo()
    procs = [cgroups.start_in_cgroup([sys.executable, '-m', 'demand_layering_ros.ros.node',
                                      '--ros-args', '--params-file', str(y)], env=env,
                                     cwd=str(ROOT)) for y in nodes]
    results = []
    try:
        _wait_ready(spin, client, pubs, lat, data, h, w, procs)
        for cam in lat:
            lat[cam].clear()
        start = time.monotonic()
        due = {cam: start for cam in CAMERAS}
        while time.monotonic() < start + duration and all(p.running() for p in procs):
            now = time.monotonic()
            for cam, (_, period) in CAMERAS.items():
                if now >= due[cam]:
                    _publish(pubs[cam], client, data, h, w, cam)
                    offered[cam] += 1
                    due[cam] += period / 1e3
            spin.spin_once(timeout_sec=0.005)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            spin.spin_once(timeout_sec=0.05)
    finally:
        for p in procs:
            if p.running():
                p.send_signal(signal.SIGINT)
        grace = time.monotonic() + 60.0      # wait(timeout) counts from the start: not here
        while any(p.running() for p in procs) and time.monotonic() < grace:
            time.sleep(0.1)
        for p in procs:
            results.append(p.wait(timeout=0.001 if p.running() else None))   # hung: killed
            p.__exit__(None, None, None)      # removes the cgroup
        spin.shutdown()
        client.destroy_node()
        ctx.try_shutdown()
    return results, lat, offered


def _publish(pub, client, data, h, w, cam):
    from sensor_msgs.msg import Image
    msg = Image(height=h, width=w, encoding='rgb8', step=w * 3, data=data)
    msg.header.stamp = client.get_clock().now().to_msg()
    msg.header.frame_id = cam
    pub.publish(msg)


def _wait_ready(spin, client, pubs, lat, data, h, w, procs, timeout=240.0):
    """Offer a frame a second to every camera until each has answered once."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not all(lat.values()):
        if not all(p.running() for p in procs):
            raise RuntimeError('a node died while starting: ' + '; '.join(
                p.wait(timeout=10).summary() for p in procs if not p.running()))
        for cam, pub in pubs.items():
            if not lat[cam]:
                _publish(pub, client, data, h, w, cam)
        t = time.monotonic() + 1.0
        while time.monotonic() < t:
            spin.spin_once(timeout_sec=0.05)
    if not all(lat.values()):
        raise RuntimeError(f'no answer within {timeout:.0f} s')


def row(name, results, lat, offered):
    """Return one configuration's figures."""
    out = {'configuration': name, 'processes': len(results),
           'peak_mb': sum(r.peak_bytes for r in results) / MB,
           'exit': [r.returncode for r in results]}
    for cam, v in lat.items():
        out[cam] = {'offered': offered[cam], 'answered': len(v),
                    'p50_ms': statistics.median(v) if v else None,
                    'p99_ms': quantiles.nearest_rank(v, 99) if v else None}
    return out


def markdown(rows, meta):
    """Return the table."""
    lines = [f"`{meta['command']}` — {meta['started']}, {meta['seconds'] / 60:.1f} min; 2 "
             f"cores, load average {meta['load'][0]:.1f} before, {meta['load'][1]:.1f} after. "
             f"Budget {meta['budget_mb']:g} MiB for the group; *two nodes* get "
             f"{meta['budget_mb'] / 2:g} MiB each.", '',
             '| configuration | processes | whole-process peak MiB (cgroups, page cache incl.) '
             '| front (yolov3-tiny, 300 ms): answered / offered, p50 / p99 ms | rear (yolov3, '
             '600 ms): answered / offered, p50 / p99 ms |', '|---|---:|---:|---:|---:|']
    for r in rows:
        cells = []
        for cam in CAMERAS:
            c = r[cam]
            cells.append(f"{c['answered']} / {c['offered']}, {c['p50_ms'] or 0:.0f} / "
                         f"{c['p99_ms'] or 0:.0f}")
        lines.append(f"| {r['configuration']} | {r['processes']} | {r['peak_mb']:.1f} | "
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Run both configurations one after the other; print the table."""
    ap = argparse.ArgumentParser(prog='python -m bench.bench_shared_node')
    ap.add_argument('--duration', type=float, default=45.0)
    ap.add_argument('--budget-mb', type=float, default=24.0)
    ap.add_argument('--work', default=str(ROOT / 'bench' / 'out' / 'shared'))
    ap.add_argument('--json', default=None)
    ap.add_argument('--domain', type=int, default=77)
    args = ap.parse_args(argv)
    avail = cgroups.cgroups_available()
    if not avail:
        print(f'bench_shared_node: memory cgroups unavailable: {avail.reason}', file=sys.stderr)
        return 2
    work = Path(args.work)
    packs = {cam: prepare_pack(model, work, False) for cam, (model, _) in CAMERAS.items()}
    started, load0, t0 = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), os.getloadavg()[0], \
        time.time()
    rows = []
    configs = {'one node, models [front, rear]': [params_yaml(
                   work / 'node_group.yaml', list(CAMERAS), packs, args.budget_mb)],
               'two nodes, one model each': [params_yaml(
                   work / f'node_{cam}.yaml', [cam], packs, args.budget_mb / 2)
                   for cam in CAMERAS]}
    for name, yamls in configs.items():
        for f in packs.values():
            cgroups.evict_file(Path(f) / WEIGHTS_FILE)
        results, lat, offered = serve(yamls, args.duration, args.domain)
        rows.append(row(name, results, lat, offered))
        print(json.dumps(rows[-1]), file=sys.stderr)
    meta = {'command': 'python -m bench.bench_shared_node ' + ' '.join(argv or sys.argv[1:]),
            'started': started, 'seconds': time.time() - t0,
            'load': (load0, os.getloadavg()[0]), 'budget_mb': args.budget_mb}
    if args.json:
        Path(args.json).write_text(json.dumps({'meta': meta, 'rows': rows}, indent=1))
    print(markdown(rows, meta))
    return 0


if __name__ == '__main__':
    sys.exit(main())
