# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Preemption across models (`preempt`): a small model's tail beside a large one in one node.

yolov3-tiny (real COCO weights) on /front every 100 ms and seeded yolov3 on /rear every
500 ms, both at one input size, served by the detector node executable over real DDS
(bench_shared_node's publisher and timing: real photos, reliable depth 1, latency from the
header stamp), in three configurations run one after the other: yolov3-tiny in a node of its
own, then both models in one node with `preempt: false` and with `preempt: true`. Each node
runs with its default torch threads (one on 2 cores) and the same deadlines.

Usage: python -m bench.bench_preempt [--duration S] [--size 256x256] [--budget-mb B]
       [--front-deadline-ms D] [--rear-deadline-ms D] [--json OUT.json]
"""

import argparse
import functools
import json
import os
from pathlib import Path
import re
import statistics
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bench_shared_node as node_bench  # noqa: E402
from bench.bench_shared import prepare_pack  # noqa: E402
from demand_layering_ros import quantiles  # noqa: E402
from demand_layering_ros.pack.format import WEIGHTS_FILE  # noqa: E402
from tools import cgroups  # noqa: E402

CAMERAS = {'front': ('yolov3-tiny', 100.0), 'rear': ('yolov3', 500.0)}


def params_yaml(path, names, packs, args, preempt):
    """Write a node parameter file serving `names` with the benchmark's deadlines."""
    import yaml
    deadline = {'front': args.front_deadline_ms, 'rear': args.rear_deadline_ms}
    p = {'memory_budget_mb': float(args.budget_mb), 'device': 'cpu', 'autostart': True,
         'qos_reliability': 'reliable', 'max_batch': 1, 'preempt': preempt}
    if len(names) == 1:
        cam = names[0]
        p.update(pack_path=str(packs[cam]), image_topics=[f'/{cam}/image_raw'],
                 deadline_ms=deadline[cam])
    else:
        p['models'] = list(names)
        for cam in names:
            p[cam] = {'pack_path': str(packs[cam]), 'image_topics': [f'/{cam}/image_raw'],
                      'deadline_ms': deadline[cam]}
    Path(path).write_text(yaml.safe_dump({node_bench.NODE: {'ros__parameters': p}}))
    return path


def pass_times(packs, size, budget_mb, n=8):
    """
    Return {camera: (resident ms, in the group ms)}: median passes with one torch thread.

    'front_inside_rear' is a yolov3-tiny pass run inside a yolov3 pass (preemption), median ms.

    Measured in this process before the nodes start, for the arithmetic: a camera needs its
    rate times its pass of the one inference thread.
    """
    import demand_layering_ros as dlr
    import torch
    torch.set_num_threads(1)
    h, w = map(int, size.split('x'))
    x = torch.rand(1, 3, h, w)

    def median_ms(f, k=n):
        f()
        ts = []
        for _ in range(k):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3
    out = {}
    with torch.inference_mode():
        for cam, p in packs.items():
            out[cam] = [median_ms(functools.partial(dlr.load_resident(p), x))]
        group = dlr.load_shared({c: str(p) for c, p in packs.items()}, budget_mb=budget_mb)
        for cam in packs:
            out[cam].append(median_ms(functools.partial(group[cam], x)))
        inside, armed = [], []

        def boundary(name, done, units):     # one yolov3-tiny pass halfway through yolov3's
            if name == 'rear' and armed and done >= units // 2:
                armed.clear()
                t = time.perf_counter()
                group['front'](x)
                inside.append((time.perf_counter() - t) * 1e3)

        def rear():
            armed.append(True)
            group['rear'](x)
        group.set_boundary(boundary)
        median_ms(rear, n // 2)
        group.close()
    times = {cam: tuple(v) for cam, v in out.items()}
    times['front_inside_rear'] = statistics.median(inside) if inside else None
    return times


def demand(times, column):
    """Return the inference threads the cameras need: rate x pass time, summed."""
    return sum(1e3 / CAMERAS[c][1] * times[c][column] / 1e3 for c in CAMERAS)


def figures(lat, offered, deadline_ms):
    """Return one camera's figures: answered, offered, p50 / p99 ms, answered within deadline."""
    return {'offered': offered, 'answered': len(lat),
            'p50_ms': statistics.median(lat) if lat else None,
            'p99_ms': quantiles.nearest_rank(lat, 99) if lat else None,
            'on_time': sum(1 for v in lat if v <= deadline_ms)}


def markdown(rows, meta):
    """Return the table."""
    lines = [f"`{meta['command']}` — {meta['started']}, {meta['seconds'] / 60:.1f} min; 2 "
             f"cores, load average {meta['load'][0]:.1f} before, {meta['load'][1]:.1f} after. "
             f"Inputs {meta['size']}, budget {meta['budget_mb']:g} MiB per node, deadlines "
             f"{meta['front_deadline_ms']:g} ms (yolov3-tiny) and {meta['rear_deadline_ms']:g} "
             'ms (yolov3).', '',
             '| configuration | frames run inside another pass | yolov3-tiny every 100 ms: '
             'answered (on time) / offered, p50 / p99 ms | yolov3 every 500 ms: answered (on '
             'time) / offered, p50 / p99 ms |',
             '|---|---:|---:|---:|']
    times = meta['pass_ms']
    lines[1:1] = ['', 'Passes with one torch thread (median of 8, ms), resident / in the group: ' +
                  ', '.join(f'{CAMERAS[c][0]} {times[c][0]:.0f} / {times[c][1]:.0f}'
                            for c in CAMERAS)
                  + f"; yolov3-tiny inside a yolov3 pass {times['front_inside_rear'] or 0:.0f}"
                  + '; inference threads needed (rate x pass, summed): '
                  f'{demand(times, 0):.2f} resident, {demand(times, 1):.2f} in the group.']
    for r in rows:
        cells = []
        for cam in CAMERAS:
            c = r.get(cam)
            cells.append('—' if c is None else
                         f"{c['answered']} ({c['on_time']}) / {c['offered']}, "
                         f"{c['p50_ms'] or 0:.0f} / {c['p99_ms'] or 0:.0f}")
        lines.append(f"| {r['configuration']} | {r['preempted']} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Run the three configurations one after the other; print the table."""
    ap = argparse.ArgumentParser(prog='python -m bench.bench_preempt')
    ap.add_argument('--duration', type=float, default=60.0)
    ap.add_argument('--size', default='256x256')
    ap.add_argument('--budget-mb', type=float, default=24.0)
    ap.add_argument('--front-deadline-ms', type=float, default=200.0)
    ap.add_argument('--rear-deadline-ms', type=float, default=1000.0)
    ap.add_argument('--work', default=str(ROOT / 'bench' / 'out' / 'preempt'))
    ap.add_argument('--json', default=None)
    ap.add_argument('--domain', type=int, default=78)
    args = ap.parse_args(argv)
    avail = cgroups.cgroups_available()
    if not avail:
        print(f'bench_preempt: memory cgroups unavailable: {avail.reason}', file=sys.stderr)
        return 2
    work = Path(args.work)
    packs = {cam: prepare_pack(model, work, False, args.size)
             for cam, (model, _) in CAMERAS.items()}
    started, load0, t0 = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), os.getloadavg()[0], \
        time.time()
    times = pass_times(packs, args.size, args.budget_mb)
    print(json.dumps({'pass_ms': times}), file=sys.stderr)
    deadline = {'front': args.front_deadline_ms, 'rear': args.rear_deadline_ms}
    configs = {'yolov3-tiny in a node of its own': (['front'], False),
               'one node, both models, preempt: false': (list(CAMERAS), False),
               'one node, both models, preempt: true': (list(CAMERAS), True)}
    rows = []
    for i, (name, (names, preempt)) in enumerate(configs.items()):
        node_bench.CAMERAS = {c: CAMERAS[c] for c in names}   # what serve() publishes
        y = params_yaml(work / f'node_{i}.yaml', names, packs, args, preempt)
        for f in packs.values():
            cgroups.evict_file(Path(f) / WEIGHTS_FILE)
        results, lat, offered = node_bench.serve([y], args.duration, args.domain)
        said = re.search(r'preempt: (\d+) frames.*', results[0].stderr)
        row = {'configuration': name, 'exit': [r.returncode for r in results],
               'preempted': int(said.group(1)) if said else 0,
               'said': said.group(0) if said else None}
        row.update({c: figures(lat[c], offered[c], deadline[c]) for c in names})
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    meta = {'command': 'python -m bench.bench_preempt ' + ' '.join(argv or sys.argv[1:]),
            'started': started, 'seconds': time.time() - t0,
            'load': (load0, os.getloadavg()[0]), 'budget_mb': args.budget_mb,
            'size': args.size, 'front_deadline_ms': args.front_deadline_ms,
            'rear_deadline_ms': args.rear_deadline_ms, 'pass_ms': times}
    if args.json:
        Path(args.json).write_text(json.dumps({'meta': meta, 'rows': rows}, indent=1))
    print(markdown(rows, meta))
    return 0


if __name__ == '__main__':
    sys.exit(main())
