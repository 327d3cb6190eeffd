# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Several detectors under one memory budget: one process sharing it, against one per model.

Two sets of models (yolov3-tiny + yolov3, then + densenet201) are each served three ways, with
frames offered at a fixed period per model and a deadline per model (the next frame's arrival):

  shared:    one process, `load_shared` under a budget B smaller than the smallest model's
             weights; frames of all models served earliest-deadline-first by one thread, which
             tells the group the model expected next (`prefetch`);
  separate:  one process per model, each `load(budget_mb=B / n)` (the budgets sum to B), each
             serving its own frames (the newest wins), all at once on the same cores and disk;
  resident:  one process, every model fully resident, served like `shared`.

Per model: latency from a frame's arrival to its detections (p50, p99), the pass itself,
deadline misses (late, or dropped because a newer frame of the model arrived or its deadline
passed before it started). Per configuration: the peak weight memory (`stats()`; the group's
`group_peak_weight_bytes` for shared, the sum of the processes' for separate, the weights for
resident) and the whole-process memory the kernel charged: every process in a fresh memory
cgroup (tools/cgroups.py; page cache included; the libraries imported once outside the cgroups
first, weight files evicted from the page cache before each configuration), summed over the
processes of a configuration. Each worker loads its models, warms up, then waits for a common
start, so the processes of `separate` compete for the same seconds.

Models and input sizes (chosen to keep the whole run near 12 minutes on a 2-core CPU): the real
yolov3-tiny (COCO weights) at 416x416, seeded yolov3 at 256x256 and seeded densenet201 at
160x160 from Debian's Darknet cfgs; periods 300, 600, 600 ms; 60 s per configuration.

Usage: python -m bench.bench_shared [--quick] [--duration S] [--budget-mb B] [--sets 2,3]
       [--threads N] [--work DIR] [--json OUT.json] [--markdown BENCHMARKS.md]
       [--plot bench/shared.png]
--quick: small inputs and 6 s per configuration (a smoke run of the whole path, ~3 minutes).
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import write_markdown_block  # noqa: E402
from demand_layering_ros import atomic  # noqa: E402
from demand_layering_ros.sizes import MB, mib  # noqa: E402

# name: (spec, real weights, input size, quick input size, period ms)
MODELS = {
    'yolov3-tiny': ('darknet:yolov3-tiny', True, '416x416', '128x128', 300.0),
    'yolov3': ('darknet:yolov3', False, '256x256', '96x96', 600.0),
    'densenet201': ('darknet:densenet201', False, '160x160', '64x64', 600.0),
}
SETS = {2: ['yolov3-tiny', 'yolov3'], 3: ['yolov3-tiny', 'yolov3', 'densenet201']}
CONFIGS = ('shared', 'separate', 'resident')
SECTION = 'shared'


# ----------------------------------------------------------------------------- packs


def prepare_pack(name, work, quick, size=None):
    """Write (or reuse) the pack of one model (at its MODELS size unless given); return it."""
    from demand_layering_ros import pack as P
    from demand_layering_ros.models import assets
    spec, real, own, quick_size, _ = MODELS[name]
    size = size or (quick_size if quick else own)
    out = Path(work) / 'packs' / f'{name}-{size}'
    if (out / 'manifest.json').is_file():
        return out
    weights, seed = None, 1
    if real:
        cfg, weights, _ = assets.yolov3_tiny()
        spec, weights, seed = f'darknet:{cfg}', str(weights), None
    print(f'bench_shared: packing {name} at {size} into {out}', file=sys.stderr)
    P.write_pack(spec, out, weights=weights, seed=seed, input_size=size, progress=False,
                 verify=False)
    return out


# ----------------------------------------------------------------------------- the worker


def _strip(stats):
    """Drop the per-pass timeline and call log from stats (they are large)."""
    if isinstance(stats, dict):
        return {k: _strip(v) for k, v in stats.items() if k not in ('timeline', 'calls')}
    return stats


def _build(job):
    """Return ({name: detector}, group or None, weight-peak function) for a worker's job."""
    import demand_layering_ros as dlr
    from demand_layering_ros.pack import Pack
    models = job['models']
    if job['mode'] == 'shared':
        group = dlr.load_shared({m['name']: m['pack'] for m in models},
                                budget_mb=job['budget_mb'])
        return ({m['name']: group[m['name']].detector for m in models}, group,
                lambda: _strip(group.stats()))
    if job['mode'] == 'separate':
        (m,) = models
        model = dlr.load(m['pack'], budget_mb=job['budget_mb'])
        return {m['name']: model.detector}, None, lambda: _strip(model.stats())
    dets, total = {}, 0
    for m in models:
        pack = Pack.open(m['pack'])
        det = pack.build_detector(meta=True)
        det.model = dlr.load_resident(m['pack'])
        dets[m['name']] = det
        total += sum(u.length for u in pack.units)
    return dets, None, lambda: {'peak_weight_bytes': total}


class Server:
    """One inference thread serving frames earliest-deadline-first (the newest per model)."""

    def __init__(self, dets, models, image, group=None):
        """Serve `dets` ({name: detector}) on `image`; models: name, period_ms, deadline_ms."""
        self.dets, self.image, self.group = dets, image, group
        self.period = {m['name']: m['period_ms'] / 1e3 for m in models}
        self.deadline = {m['name']: m['deadline_ms'] / 1e3 for m in models}
        self.records = []
        self.pending = {}

    def _arrivals(self, now):
        """Queue the frames that have arrived (a newer frame drops the pending one)."""
        for name, t in self.next.items():
            while t <= now:
                old = self.pending.get(name)
                if old is not None:
                    self.records.append({'model': name, 'arrival': old, 'outcome': 'dropped'})
                self.pending[name] = t
                t += self.period[name]
            self.next[name] = t

    def _hint(self, after_pass=False):
        """Tell the group which model runs next: the earliest deadline, else the next frame."""
        if self.group is None:
            return
        if self.pending:
            name = min(self.pending, key=lambda n: self.pending[n] + self.deadline[n])
        else:
            name = min(self.next, key=lambda n: self.next[n])
        self.group.prefetch(name, after_pass=after_pass)

    def run(self, t0, duration):
        """Serve from wall-clock time t0 for `duration` seconds; return the records."""
        self.next = {n: t0 for n in self.dets}
        end = t0 + duration
        while True:
            now = time.time()
            if now >= end:
                break
            self._arrivals(now)
            self._hint()
            if not self.pending:
                time.sleep(max(0.0, min(min(self.next.values()), end) - now))
                continue
            name = min(self.pending, key=lambda n: self.pending[n] + self.deadline[n])
            arrival = self.pending.pop(name)
            deadline = arrival + self.deadline[name]
            if now > deadline:
                self.records.append({'model': name, 'arrival': arrival, 'outcome': 'expired'})
                continue
            self._hint(after_pass=True)          # the model expected after this one
            start = time.time()
            self.dets[name].detect([self.image])
            done = time.time()
            self.records.append({'model': name, 'arrival': arrival, 'start': start,
                                 'end': done, 'outcome': 'late' if done > deadline
                                 else 'on_time'})
        for name, arrival in self.pending.items():
            self.records.append({'model': name, 'arrival': arrival, 'outcome': 'unserved'})
        return self.records


def worker(job_path):
    """Run one process of a configuration (inside its memory cgroup); write its result."""
    with open(job_path) as f:
        job = json.load(f)
    import torch
    from demand_layering_ros.models.detector import read_image
    from tools import cgroups
    if job.get('threads'):
        torch.set_num_threads(job['threads'])
    image = read_image(job['image'])
    dets, group, stats = _build(job)
    with torch.no_grad():
        for _ in range(2):
            for det in dets.values():
                det.detect([image])
    Path(job['ready']).write_text('1')
    while not os.path.exists(job['go']):
        time.sleep(0.01)
    t0 = float(Path(job['go']).read_text())
    while time.time() < t0:
        time.sleep(0.001)
    with torch.no_grad():
        records = Server(dets, job['models'], image, group).run(t0, job['duration_s'])
    result = {'records': records, 'stats': stats(), 't0': t0,
              'process': cgroups.process_snapshot(), 'torch_threads': torch.get_num_threads()}
    atomic.write_json(job['result'], result)
    return 0


# ----------------------------------------------------------------------------- the parent


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + ([env['PYTHONPATH']]
                                                       if env.get('PYTHONPATH') else []))
    env.setdefault('PYTHONUNBUFFERED', '1')
    return env


def run_config(mode, names, packs, args, work):
    """Run one configuration's processes at once, each in its own cgroup; return results."""
    from tools import cgroups
    for name in names:
        for f in Path(packs[name]).glob('*.safetensors'):
            cgroups.evict_file(f)
    models = [{'name': n, 'pack': str(packs[n]), 'period_ms': MODELS[n][4],
               'deadline_ms': MODELS[n][4]} for n in names]
    groups = [models] if mode != 'separate' else [[m] for m in models]
    budget = args.budget_mb if mode == 'shared' else args.budget_mb / len(names)
    stem = Path(work) / f'{mode}-{len(names)}'
    go = Path(f'{stem}.go')
    go.unlink(missing_ok=True)
    procs, jobs = [], []
    for k, ms in enumerate(groups):
        job = {'mode': mode, 'models': ms, 'budget_mb': budget, 'duration_s': args.duration,
               'image': args.image, 'threads': args.threads, 'go': str(go),
               'ready': f'{stem}-{k}.ready', 'result': f'{stem}-{k}.json'}
        for key in ('ready', 'result'):
            Path(job[key]).unlink(missing_ok=True)
        atomic.write_json(f'{stem}-{k}.job.json', job)
        jobs.append(job)
        argv = [sys.executable, '-m', 'bench.bench_shared', '--worker', f'{stem}-{k}.job.json']
        procs.append(cgroups.start_in_cgroup(argv, env=_env(), cwd=str(ROOT)))
    try:
        t_wait = time.time()
        while not all(os.path.exists(j['ready']) for j in jobs):
            if not all(p.running() for p in procs) or time.time() - t_wait > 900:
                break
            time.sleep(0.05)
        atomic.write_bytes(go, lambda f: f.write(f'{time.time() + 1.0:.6f}'))
        outs = [p.wait(timeout=args.duration + 900) for p in procs]
    finally:
        for p in procs:
            p.__exit__(None, None, None)
    results = []
    for job, r in zip(jobs, outs):
        try:
            with open(job['result']) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = {'error': (r.stderr or '').strip()[-1500:] or f'exit {r.returncode}'}
        res.update(peak_bytes=r.peak_bytes, cache_bytes=r.cache_bytes,
                   peak_rss_bytes=r.peak_rss_bytes, returncode=r.returncode,
                   oom_killed=r.oom_killed, models=[m['name'] for m in job['models']])
        results.append(res)
    return results


def _pct(values, q):
    from demand_layering_ros.quantiles import percentile
    return round(percentile(values, q), 1) if values else None


def summarise(mode, names, results):
    """Return one configuration's figures: memory, and per model latency and misses."""
    errors = [r['error'] for r in results if 'error' in r]
    out = {'mode': mode, 'processes': len(results), 'errors': errors,
           'process_peak_mb': mib(sum(r['peak_bytes'] for r in results), 1),
           'page_cache_mb': mib(sum(r['cache_bytes'] for r in results), 1), 'models': {}}
    if errors:
        return out
    weight = 0
    for r in results:
        st = r['stats']
        weight += st.get('group_peak_weight_bytes', st.get('peak_weight_bytes', 0))
    out['weight_peak_mb'] = mib(weight, 1)
    out['torch_threads'] = results[0].get('torch_threads')
    records = [rec for r in results for rec in r['records']]
    for name in names:
        mine = [rec for rec in records if rec['model'] == name]
        done = [rec for rec in mine if 'end' in rec]
        lat = [1e3 * (rec['end'] - rec['arrival']) for rec in done]
        run = [1e3 * (rec['end'] - rec['start']) for rec in done]
        mine = [rec for rec in mine if rec['outcome'] != 'unserved']   # still queued at the end
        out['models'][name] = {
            'offered': len(mine), 'served': len(done),
            'missed': sum(1 for rec in mine if rec['outcome'] != 'on_time'),
            'p50_ms': _pct(lat, 50), 'p99_ms': _pct(lat, 99),
            'pass_ms': round(statistics.median(run), 1) if run else None}
    return out


# ----------------------------------------------------------------------------- report


def markdown(summary):
    """Return the BENCHMARKS.md section of a run."""
    m = summary['machine']
    lines = ['## Several detectors under one memory budget', '',
             f'Measured {m["date"]} with `{summary["command"]}` ({m["minutes"]:.1f} min). '
             f'Machine: {m["cores"]} cores, 1-minute load average {m["load_before"]:.1f} '
             f'before and {m["load_after"]:.1f} after the run (other work on the machine '
             f'slows the configurations it overlaps); torch threads per process: '
             f'{summary.get("torch_threads")}. Budget B = '
             f'{summary["budget_mb"]:g} MiB for each set, below the smallest model\'s weights; '
             '*separate* gives each process B / n. Deadline = period; a frame is missed when '
             'late, or dropped because a newer frame of its model arrived or its deadline '
             'passed before it started.', '']
    for key, s in summary['sets'].items():
        names = s['names']
        desc = ', '.join(f'{n} {s["sizes"][n]} every {MODELS[n][4]:g} ms' for n in names)
        lines += [f'### {len(names)} models: {desc}', '',
                  '| configuration | processes | whole-process peak MiB (cgroups, page cache '
                  'incl.) | peak weight MiB | ' + ' | '.join(
                      f'{n}: p50 / p99 ms, pass ms, missed / offered' for n in names) + ' |',
                  '|---|---:|---:|---:|' + '---:|' * len(names)]
        for c in s['configs']:
            if c['errors']:
                lines.append(f'| {c["mode"]} | {c["processes"]} | error: '
                             f'{c["errors"][0][-120:]!r} |' + ' |' * (1 + len(names)))
                continue
            cells = [f'{v["p50_ms"]} / {v["p99_ms"]}, {v["pass_ms"]}, '
                     f'{v["missed"]} / {v["offered"]}' for v in
                     (c['models'][n] for n in names)]
            lines.append(f'| {c["mode"]} | {c["processes"]} | {c["process_peak_mb"]} | '
                         f'{c["weight_peak_mb"]} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    if summary.get('plot'):
        lines += [f'![shared budget]({summary["plot"]})', '']
    return '\n'.join(lines) + '\n'


def plot(summary, path):
    """Draw whole-process memory and p99 latency per model for each set and configuration."""
    from demand_layering_ros import plots
    plt = plots.pyplot()
    sets = list(summary['sets'].values())
    fig, axes = plt.subplots(2, len(sets), figsize=(5.2 * len(sets), 6.4), squeeze=False)
    for j, s in enumerate(sets):
        ok = [c for c in s['configs'] if not c['errors']]
        modes = [c['mode'] for c in ok]
        ax = axes[0][j]
        ax.bar(modes, [c['process_peak_mb'] for c in ok], color='#8da0cb',
               label='whole process (cgroups)')
        ax.bar(modes, [c['weight_peak_mb'] for c in ok], color='#fc8d62', width=0.5,
               label='weights')
        ax.axhline(summary['budget_mb'], color='k', lw=0.8, ls='--', label='budget B')
        ax.set_title(f'{len(s["names"])} models: peak memory (MiB)')
        ax.legend(fontsize=7)
        ax = axes[1][j]
        width = 0.8 / len(s['names'])
        for k, n in enumerate(s['names']):
            xs = [i + (k - (len(s['names']) - 1) / 2) * width for i in range(len(ok))]
            ax.bar(xs, [c['models'][n]['p99_ms'] or 0 for c in ok], width, label=n)
        ax.set_xticks(range(len(ok)))
        ax.set_xticklabels(modes)
        ax.set_title('p99 latency, arrival to detections (ms)')
        ax.legend(fontsize=7)
    fig.tight_layout()
    return plots.save(fig, path)


def main(argv=None):
    """Run the benchmark (or, with --worker, one of its processes)."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--quick', action='store_true', help='small inputs, 6 s per configuration')
    ap.add_argument('--duration', type=float, default=None, help='seconds per configuration')
    ap.add_argument('--budget-mb', type=float, default=24.0)
    ap.add_argument('--sets', default='2,3', help='model counts to run: 2, 3 or 2,3')
    ap.add_argument('--threads', type=int, default=None, help='torch threads per process')
    ap.add_argument('--work', default=str(ROOT / 'bench' / 'out' / 'shared'))
    ap.add_argument('--json', default=None)
    ap.add_argument('--markdown', default=None)
    ap.add_argument('--plot', default=str(ROOT / 'bench' / 'shared.png'))
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    return bench(args, argv)


def bench(args, argv):
    """Prepare the packs, run every set and configuration, write the report."""
    import torch  # noqa: F401 - the libraries' pages are cached outside the measured cgroups
    import demand_layering_ros.loading  # noqa: F401
    from demand_layering_ros.models import assets
    from tools import cgroups
    if not cgroups.cgroups_available():
        print(f'bench_shared: {cgroups.cgroups_available().reason}', file=sys.stderr)
        return 2
    args.duration = args.duration or (6.0 if args.quick else 60.0)
    args.image = str(assets.photo('dog'))
    work = Path(args.work + ('-quick' if args.quick else ''))
    work.mkdir(parents=True, exist_ok=True)
    t_start, load0 = time.time(), os.getloadavg()[0]
    summary = {'budget_mb': args.budget_mb, 'sets': {},
               'command': 'python -m bench.bench_shared ' + ' '.join(argv or sys.argv[1:])}
    for count in (int(c) for c in args.sets.split(',')):
        names = SETS[count]
        packs = {n: prepare_pack(n, work, args.quick) for n in names}
        smallest = min(_weights(packs[n]) for n in names)
        if args.budget_mb * MB >= smallest:
            print(f'bench_shared: budget {args.budget_mb} MiB is not below the smallest '
                  f"model's weights ({mib(smallest)} MiB)", file=sys.stderr)
        s = {'names': names, 'configs': [],
             'sizes': {n: (MODELS[n][3] if args.quick else MODELS[n][2]) for n in names}}
        for mode in CONFIGS:
            print(f'bench_shared: {count} models, {mode}', file=sys.stderr)
            results = run_config(mode, names, packs, args, work)
            s['configs'].append(summarise(mode, names, results))
            print(json.dumps(s['configs'][-1]), file=sys.stderr)
        summary['sets'][str(count)] = s
        summary['torch_threads'] = next((c.get('torch_threads') for c in s['configs']
                                         if c.get('torch_threads')), None)
    summary['machine'] = {'cores': os.cpu_count(), 'load_before': load0,
                          'load_after': os.getloadavg()[0],
                          'minutes': (time.time() - t_start) / 60,
                          'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    if args.plot:
        p = plot(summary, args.plot)
        summary['plot'] = os.path.relpath(p, Path(args.markdown).parent) if args.markdown \
            else str(p)
    text = markdown(summary)
    print(text)
    if args.json:
        atomic.write_json(args.json, summary)
    if args.markdown:
        write_markdown_block(args.markdown, SECTION, text)
    return 0


def _weights(pack_dir):
    with open(Path(pack_dir) / 'manifest.json') as f:
        return sum(u['length'] for u in json.load(f)['units'])


if __name__ == '__main__':
    sys.exit(main())
