# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Where a process's memory goes, piece by piece: the resident model against streamed ones.

`python bench/bench_memory.py [--pack P | --model SPEC --input-size HxW] [--budgets 4,0]
[--markdown BENCHMARKS.md]` runs each configuration in its own subprocess and fresh memory
cgroup (libraries imported once outside it, so their pages are not charged) and records the
cgroup's usage after each step (imports, skeleton, load/configure, first pass, later passes),
its peak, and what the process holds at the end by kind (/proc/self/smaps: the main heap, other
malloc arenas, thread stacks, shared mappings such as the arena; glibc's arena count from
malloc_info; OS threads; Python objects from tracemalloc), plus the activation peak (stats()
and the torch profiler). Passes run in a thread of their own, as in the node. A few seconds per
configuration; the table goes to stdout and, with --markdown, into its own section.
"""

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, os, re, sys, threading, tracemalloc
import torch
from demand_layering_ros import loading
from demand_layering_ros.pack import Pack
from demand_layering_ros.process_memory import own_cgroup_usage
from demand_layering_ros.runtime import malloc
mode, pack_dir, passes = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
out, t0 = {'steps': []}, threading.active_count()

def step(name):
    out['steps'].append((name, own_cgroup_usage()['usage_bytes']))

def smaps():
    kinds, regions, cur = {}, [], None
    for line in open('/proc/self/smaps'):
        m = re.match(r'^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$', line)
        if m:
            cur = [int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4).strip(), 0]
            regions.append(cur)
        elif cur is not None and line.startswith('Rss:'):
            cur[4] = int(line.split()[1]) * 1024
    for i, (lo, hi, perm, name, rss) in enumerate(regions):
        guard = i and regions[i - 1][2].startswith('---')
        if name == '[heap]':
            k = 'main heap'
        elif name.startswith('/dev/zero') or name.startswith('/memfd'):
            k = 'shared anonymous (arena, resident weights)'
        elif name.startswith('/') or name.startswith('['):
            continue
        elif lo % (64 << 20) == 0 and hi - lo <= 64 << 20 and 'rw' in perm:
            k = 'other malloc arenas'
        elif guard and 'rw' in perm and hi - lo in (8 << 20, (8 << 20) - 4096):
            k = 'thread stacks'
        else:
            k = 'other anonymous (large blocks, libraries)'
        kinds[k] = kinds.get(k, 0) + rss
    return kinds


step('imports')
tracemalloc.start()
pk = Pack.open(pack_dir)
det = pk.build_detector(meta=True)
x = det.timing_input(1)
step('skeleton')
model = loading.load_resident(pack_dir) if mode == 'resident' else \
    loading.load(pack_dir, budget_mb=float(mode) or None)
step('load (configure)')
py0 = tracemalloc.get_traced_memory()[0]

def run():
    with torch.no_grad():
        for i in range(passes):
            model(x)
            if i == 0:
                step('first pass')
t = threading.Thread(target=run)
t.start()
t.join()
step(f'{passes} passes')
kind, cg = __import__('demand_layering_ros.process_memory').process_memory.own_cgroup_dir()
out['peak_bytes'] = int(open(cg / ('memory.max_usage_in_bytes' if kind == 1 else 'memory.peak'))
                        .read())                  # before the profiler below adds its own
out['python_objects_bytes'] = tracemalloc.get_traced_memory()[0] - py0
tracemalloc.stop()
out['kinds'] = smaps()
out['arenas'] = malloc.arena_count()
out['threads'] = threading.active_count() - t0
st = model.stats() if hasattr(model, 'stats') else {}
out['weights_bytes'] = st.get('peak_weight_bytes', pk.total_bytes)
out['activation_peak_bytes'] = st.get('activation_peak_bytes')
from demand_layering_ros.measure.activation import activation_peak_cpu
out['profiler_activation_bytes'] = activation_peak_cpu(model, x)
print(json.dumps(out))
"""


def measure(mode, pack, passes, threads):
    """Run one configuration in a fresh memory cgroup; return its figures and peak."""
    from demand_layering_ros.pack.format import WEIGHTS_FILE
    from tools import cgroups
    cgroups.evict_file(Path(pack) / WEIGHTS_FILE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p))
    r = cgroups.run_in_cgroup([sys.executable, '-c', CHILD, mode, str(pack), str(passes),
                               str(threads)], timeout=600, env=env, cwd=str(ROOT))
    if not r.ok:
        raise RuntimeError(f'{mode}: {r.summary()}\n{r.stderr[-2000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(results, pack_mb):
    """Return the markdown table: one column per configuration, MiB."""
    def mb(v):
        return '–' if v is None else f'{v / (1 << 20):.1f}'
    names = list(results)
    rows = ['| | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]

    def row(label, values):
        rows.append(f'| {label} | ' + ' | '.join(values) + ' |')
    base = {n: dict(r['steps'])['imports'] for n, r in results.items()}
    steps = [s for s, _ in next(iter(results.values()))['steps']][1:]
    for s in steps:
        row(f'cgroup usage after the {s}, above the imports (MiB)',
            [mb(dict(r['steps'])[s] - base[n]) for n, r in results.items()])
    row('**cgroup peak over load and passes, above the imports (MiB)**',
        [mb(r['peak_bytes'] - base[n]) for n, r in results.items()])
    row('peak weight memory (MiB)', [mb(r['weights_bytes']) for r in results.values()])
    row('peak minus weights: everything else (MiB)',
        [mb(r['peak_bytes'] - base[n] - r['weights_bytes']) for n, r in results.items()])
    kinds = sorted({k for r in results.values() for k in r['kinds']})
    for k in kinds:
        row(f'at the end, {k} (MiB RSS)', [mb(r['kinds'].get(k, 0)) for r in results.values()])
    row('malloc arenas (glibc)', [str(r['arenas']) for r in results.values()])
    row('threads the model started', [str(r['threads']) for r in results.values()])
    row('Python objects kept over the passes (MiB)',
        [mb(r['python_objects_bytes']) for r in results.values()])
    row('activation peak, stats() (MiB)',
        [mb(r['activation_peak_bytes']) for r in results.values()])
    row('activation peak, torch profiler (MiB)',
        [mb(r['profiler_activation_bytes']) for r in results.values()])
    return '\n'.join(rows) + f'\n\nModel weights: {pack_mb:.1f} MiB.'


def main(argv=None):
    """Measure and print (and write) the table; return the exit status."""
    p = argparse.ArgumentParser(prog='python bench/bench_memory.py', description=__doc__)
    p.add_argument('--pack', default=None, help='an existing pack (default: write one)')
    p.add_argument('--model', default='darknet:yolov3-tiny',
                   help='spec to pack when --pack is not given (default darknet:yolov3-tiny, '
                        'the real COCO weights)')
    p.add_argument('--input-size', default='416x416')
    p.add_argument('--budgets', default='4,0',
                   help='streamed configurations: budgets in MiB (0: no budget, the smallest '
                        'unsplit arena); default 4,0')
    p.add_argument('--passes', type=int, default=5)
    p.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    p.add_argument('--markdown', default=None,
                   help="write the table into this file's bench:memory section")
    args = p.parse_args(argv)
    from bench.jobs import _prime_libraries
    from demand_layering_ros import pack as packmod
    from demand_layering_ros.models import registry
    pack = args.pack
    if pack is None:
        pack = Path(tempfile.mkdtemp(prefix='dlr-bench-memory-')) / 'pack'
        spec, weights = args.model, None
        if args.model == 'darknet:yolov3-tiny':
            from demand_layering_ros.models import assets
            cfg, weights, _ = assets.yolov3_tiny()
            spec, weights = f'darknet:{cfg}', str(weights)
        packmod.write_pack(spec, pack, weights=weights, seed=None if weights else 0,
                           input_size=registry.parse_input_size(args.input_size),
                           progress=False)
    pk = packmod.Pack.open(pack)
    _prime_libraries()
    t0 = time.time()
    results = {'resident': measure('resident', pack, args.passes, args.threads)}
    for b in [float(v) for v in args.budgets.split(',') if v.strip()]:
        name = f'streamed, budget {b:g} MiB' if b else 'streamed, smallest unsplit arena'
        results[name] = measure(str(b), pack, args.passes, args.threads)
    load = os.getloadavg()[0]
    text = (f'`python bench/bench_memory.py {" ".join(argv if argv is not None else sys.argv[1:])}'
            f'` — {args.model if args.pack is None else pk.path}, input {args.input_size}, '
            f'{args.passes} '
            f'passes in a thread, {args.threads} torch threads; {time.time() - t0:.0f} s, load '
            f'average {load:.1f} on {os.cpu_count()} cores.\n\n'
            + table(results, pk.total_bytes / (1 << 20)))
    print(text)
    if args.markdown:
        from bench.report import write_markdown_block
        write_markdown_block(args.markdown, 'memory', text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
