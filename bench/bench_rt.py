# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The detector node under real camera load, against the node a user would write first.

`make bench-rt` (python -m bench.bench_rt): for every configuration of the grid, the node under
test runs as its own process (the real `detector_node`, or `bench.rt_baseline`: inference
inside the subscription callback), and a second process (`bench.rt_load`) publishes real photos
over DDS, reliable depth 1, stamped with the wall clock, and times every answer from its stamp
to its receipt. Measured: input and output rate, p50/p99/max latency, late fraction (against
the deadline, or for runs without one the deadline of the deadline runs, for comparison), drops
by reason and misses from the node's own /diagnostics (checked against the subscriber's count),
CPU use of the node and of the load. The real yolov3-tiny (COCO weights, 416x416) is packed
and profiled once; "streamed" is memory_budget_mb 8 (the runtime splits the large layers),
"resident" a budget above the model's size.

The grid (21 runs) is chosen to fit about 10-15 minutes on a 2-core machine (~30 s a run);
`--quick` runs four short configurations as a smoke test (2 minutes). The deadline of the
deadline runs is derived from the latency measured in the same run (1 camera, 30 fps raw: twice
its p50), so that it is feasible on the machine at hand; `--deadline-ms` fixes it. Writes
results.json, two plots and a markdown section of BENCHMARKS.md (between its `bench:rt`
markers).
"""

import argparse
import json
import os
from pathlib import Path
import platform
import shlex
import subprocess
import sys
import time

from bench.rt_report import fairness_report, report

ROOT = Path(__file__).resolve().parents[1]
STREAMED_MB, RESIDENT_MB = 8.0, 64.0


def config(server, cameras, fps, transport='raw', deadline=False, memory='streamed',
           together=False):
    """Return one configuration of the grid (a dict with a readable name)."""
    name = f'{server} {memory} {cameras}x{fps:g}fps {transport}' + \
        (' deadline' if deadline else '') + (' together' if together else '')
    return {'name': name, 'server': server, 'cameras': cameras, 'fps': float(fps),
            'transport': transport, 'deadline': deadline, 'memory': memory,
            'together': together}


def fairness_grid():
    """Return the scenes of camera fairness: 2-4 cameras, together and apart, +-deadline."""
    runs = []
    for cameras, fps, transport in ((2, 15, 'raw'), (3, 10, 'raw'), (4, 10, 'jpeg')):
        for together in (True, False):
            for deadline in (False, True):
                runs.append(config('node', cameras, fps, transport, deadline,
                                   together=together))
    return runs


def grid(quick=False):
    """Return the configurations, the 10 fps reference of each transport first."""
    if quick:
        return [config('node', 1, 10), config('node', 1, 30),
                config('node', 2, 15, deadline=True), config('baseline', 1, 30)]
    runs = [config('node', 1, 10), config('node', 1, 10, 'jpeg')]
    runs += [config('node', 1, f) for f in (5, 20, 30)]
    runs += [config('node', 1, 30, 'jpeg'), config('node', 1, 30, deadline=True)]
    runs += [config('node', 2, 15, deadline=True), config('node', 2, 15, 'jpeg', deadline=True),
             config('node', 2, 15), config('node', 4, 5), config('node', 4, 10, 'jpeg')]
    runs += [config('node', 1, 10, memory='resident'), config('node', 1, 30, memory='resident'),
             config('node', 2, 15, deadline=True, memory='resident')]
    runs += [config('baseline', 1, f) for f in (5, 10, 20, 30)]
    runs += [config('baseline', 1, 30, 'jpeg'), config('baseline', 2, 15)]
    names = {r['name'] for r in runs}
    return runs + [r for r in fairness_grid() if r['name'] not in names]


def prepare(out):
    """Pack the real yolov3-tiny at 416x416 and profile it once (resident): return the pack."""
    from demand_layering_ros import pack as pack_mod
    from demand_layering_ros.models import assets
    from demand_layering_ros.planning import profiler, timing
    pack = out / 'pack' / 'yolov3-tiny'
    if not (pack / 'manifest.json').is_file():
        cfg, weights, _ = assets.yolov3_tiny()
        pack_mod.write_pack('darknet:' + str(cfg), pack, weights=str(weights), progress=False,
                            input_size=(416, 416))
    if not (pack / 'PROFILE.json').is_file():
        prof = profiler.profile(str(pack), device='cpu', repeats=2, warmup=1, progress=False,
                                activation=False)
        timing.save_profile(prof, pack / 'PROFILE.json')
    return pack


def topics(cfg):
    """Return the image topics of a configuration, as rt_load publishes them."""
    suffix = '/compressed' if cfg['transport'] == 'jpeg' else ''
    return [f'/cam{i}/image_raw{suffix}' for i in range(cfg['cameras'])]


def server_command(cfg, pack, deadline_ms, extra=()):
    """Return the command line of the node under test (`extra`: more NAME:=VALUE params)."""
    budget = STREAMED_MB if cfg['memory'] == 'streamed' else RESIDENT_MB
    if cfg['server'] == 'baseline':
        return [sys.executable, '-m', 'bench.rt_baseline', '--pack', str(pack),
                '--topics', ','.join(topics(cfg)), '--budget-mb', str(budget)]
    return [sys.executable, '-m', 'demand_layering_ros.ros.node', '--ros-args',
            '-p', f'pack_path:={pack}', '-p', f'image_topics:=[{",".join(topics(cfg))}]',
            '-p', 'qos_reliability:=reliable', '-p', f'memory_budget_mb:={budget}',
            '-p', f'deadline_ms:={float(deadline_ms if cfg["deadline"] else 0.0)}'] + \
        [a for param in extra for a in ('-p', param)]


def process_tree_cpu(pid):
    """Return the CPU seconds of a process and its descendants (0 when gone)."""
    tick = os.sysconf('SC_CLK_TCK')
    parents, cpu = {}, {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, pp in parents.items() if pp == p and c not in tree]
    return sum(cpu.get(p, 0.0) for p in tree)


def run_one(cfg, pack, deadline_ms, args, out):
    """Run one configuration: the server, the load; return the load's result plus CPU."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain))
    server_env = dict(env)
    if args.node_tree:
        server_env['PYTHONPATH'] = os.pathsep.join(
            [str(Path(args.node_tree).resolve()), env.get('PYTHONPATH', '')])
    log = open(out / f'{cfg["name"].replace(" ", "_")}.log', 'w')
    server = subprocess.Popen(server_command(cfg, pack, deadline_ms, args.node_param),
                              cwd=args.node_tree or ROOT, env=server_env,
                              stdout=log, stderr=subprocess.STDOUT)
    result_path = out / 'last_load.json'
    result_path.unlink(missing_ok=True)
    load = subprocess.Popen(
        [sys.executable, '-m', 'bench.rt_load', '--cameras', str(cfg['cameras']),
         '--fps', str(cfg['fps']), '--transport', cfg['transport'], '--warmup',
         str(args.warmup), '--seconds', str(args.seconds), '--out', str(result_path)]
        + (['--together'] if cfg.get('together') else []),
        cwd=ROOT, env=env)
    samples = []
    try:
        while load.poll() is None:
            samples.append((time.time(), process_tree_cpu(server.pid),
                            process_tree_cpu(load.pid)))
            time.sleep(0.5)
    finally:
        server.send_signal(2)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    if load.returncode != 0 and not result_path.is_file():
        raise RuntimeError(f'{cfg["name"]}: the load generator failed '
                           f'(exit {load.returncode}); see {log.name}')
    result = json.loads(result_path.read_text())
    result['cpu'] = cpu_share(samples, result['measured_from'], result['measured_to'])
    result.update(cfg)
    result['deadline_ms'] = deadline_ms
    return result


def cpu_share(samples, t0, t1):
    """Return {'node': %, 'load': %} of one core over [t0, t1] from (time, node, load) samples."""
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return {'node': None, 'load': None}
    (ta, na, la), (tb, nb, lb) = inside[0], inside[-1]
    dt = max(tb - ta, 1e-6)
    return {'node': 100.0 * (nb - na) / dt, 'load': 100.0 * (lb - la) / dt}


def machine():
    """Describe what the run had: CPU, cores, load average, versions."""
    import torch
    cpu = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return {'cpu': cpu, 'cores': os.cpu_count(), 'loadavg_start': os.getloadavg(),
            'python': platform.python_version(), 'torch': torch.__version__,
            'torch_threads_default': torch.get_num_threads()}


def main(argv=None):
    """Run the grid, write results.json, the plots and the markdown section."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='four short runs (a smoke test)')
    p.add_argument('--seconds', type=float, default=None, help='measured seconds per run '
                   '(default 15; 6 with --quick)')
    p.add_argument('--warmup', type=float, default=3.0, help='unmeasured seconds per run')
    p.add_argument('--deadline-ms', type=float, default=0.0,
                   help='deadline of the deadline runs (default: 2 x the p50 at 1 camera, '
                        '30 fps raw, >= 150)')
    p.add_argument('--fairness', action='store_true', help='only the twelve scenes of camera '
                   'fairness (2-4 cameras, together and apart, with and without a deadline)')
    p.add_argument('--only', default='', help='run only configurations whose name contains '
                   'every comma-separated word')
    p.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                   help='an extra parameter of the node under test (repeatable)')
    p.add_argument('--node-tree', default='', metavar='DIR',
                   help="run the node (and baseline) of another checkout, e.g. a commit's "
                        '`git archive`, for a before/after comparison')
    p.add_argument('--out', default='bench/out_rt')
    p.add_argument('--markdown', default='BENCHMARKS.md', help="'' to skip")
    p.add_argument('--domain', type=int, default=int(os.environ.get('ROS_DOMAIN_ID', 0) or 0))
    args = p.parse_args(argv)
    args.seconds = args.seconds or (6.0 if args.quick else 15.0)
    out = Path(args.out) / ('fairness' if args.fairness else '')
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    info = machine()
    pack = prepare(out)
    runs = [c for c in (fairness_grid() if args.fairness else grid(args.quick))
            if all(w in c['name'] for w in args.only.split(',') if w)]
    deadline_ms, results = args.deadline_ms, []
    for i, cfg in enumerate(runs):
        if cfg['deadline'] and not deadline_ms:
            deadline_ms = derived_deadline(results)
        r = run_one(cfg, pack, deadline_ms or 0.0, args, out)
        results.append(r)
        print(f'[bench-rt] {i + 1}/{len(runs)} {cfg["name"]}: '
              f'{summary_line(r)}', flush=True)
    info.update({'loadavg_end': os.getloadavg(), 'minutes': (time.time() - started) / 60,
                 'command': 'python -m bench.bench_rt ' + ' '.join(
                     shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))})
    (out / 'results.json').write_text(json.dumps({'machine': info, 'runs': results}))
    (fairness_report if args.fairness else report)(results, info, out, args.markdown)
    print(f'[bench-rt] {len(results)} runs in {info["minutes"]:.1f} min; {out}/results.json')
    return 0


def derived_deadline(results):
    """
    Return 2 x the p50 latency of the node at 1 camera, 30 fps raw (else 10 fps), >= 150 ms.

    Saturated, the node serves the newest frame the moment it is free, so that p50 is its
    service time plus the frame's age: twice it is a deadline two cameras can meet.
    """
    from bench.rt_report import summarize
    refs = [r for r in results if r['server'] == 'node' and r['cameras'] == 1 and
            r['transport'] == 'raw' and not r['deadline'] and r['memory'] == 'streamed']
    ref = max(refs, key=lambda r: r['fps'], default=None)
    if ref is None:
        return 150.0
    p50 = summarize(ref)['p50_ms']
    return max(150.0, 10.0 * round(2.0 * p50 / 10.0 + 0.5))


def summary_line(r):
    """Return one line for the console."""
    from bench.rt_report import summarize
    s = summarize(r)
    return (f'in {s["in_hz"]:.1f}/s out {s["out_hz"]:.1f}/s p50 {s["p50_ms"]:.0f} ms '
            f'p99 {s["p99_ms"]:.0f} ms late {s["late_pct"]:.1f}% node CPU '
            f'{s["node_cpu"] or 0:.0f}%')


if __name__ == '__main__':
    raise SystemExit(main())
