# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The benchmark's markdown section: machine, method, goals and one table per model.

`write_markdown` replaces only the block between this section's markers, so BENCHMARKS.md keeps
the text people wrote around it; `report` also copies the plots next to the markdown.
"""

import os
from pathlib import Path
import shutil
import statistics

from bench.configs import CONFIGS, kind_of, PAPER_FAMILY
from bench.plots import plot_all
from bench.summary import goals, ok_summary
from demand_layering_ros import atomic


def _f(v, nd=1, dash='–'):
    if v is None:
        return dash
    if isinstance(v, float):
        return f'{v:.{nd}f}'
    return str(v)


def _mark(ok):
    return '' if ok is None else (' ✔' if ok else ' ✘')


def model_table(model):
    """Return the markdown table of one model's configurations."""
    res = ok_summary(model, 'resident')
    rows = ['| configuration | median ms | p99 ms | × resident | peak weight MB | '
            'activation peak MB | peak memory MB (cgroup, incl. cache) | page-cache growth MB '
            '| disk read MB/pass | predicted ms | pipeline bound ms | × bound |',
            '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for name, c in (model.get('configs') or {}).items():
        kind = kind_of(name)
        label = CONFIGS[kind][0]
        if kind == 'dl-budget':
            label += f' {name.rpartition("-")[2]} MB'
        if c.get('same_as'):
            label += f' (= {c["same_as"]})'
        s = c.get('summary') or {}
        if s.get('status') != 'ok':
            err = str(s.get('error') or '').replace('|', '/').replace('\n', ' ')
            rows.append(f'| {label} | {s.get("status", "–")}: {err[:160]} |'
                        + ' |' * 11)
            continue
        rel = round(s['median_ms'] / res['median_ms'], 2) if res else None
        weight = _f(s.get('peak_weight_mb'), 1)
        if kind == 'mmap':
            weight = 'page cache'
        peak = _f(s.get('peak_mb'), 0)
        if s.get('limit_mb'):
            peak += f' (limit {s["limit_mb"]:.0f})'
        rows.append(f'| {label} | {_f(s["median_ms"])} | {_f(s["p99_ms"])} | {_f(rel, 2)} | '
                    f'{weight} | {_f(s.get("activation_mb"), 1)} | {peak} | '
                    f'{_f(s.get("cache_growth_mb"), 1)} | '
                    f'{_f(s.get("read_mb_per_pass"), 1)} | {_f(s.get("predicted_ms"))} | '
                    f'{_f(s.get("bound_ms"))} | {_f(s.get("bound_ratio"), 2)} |')
    return '\n'.join(rows)


def _times(v, limit=None):
    """Format an equal-memory comparison: a ratio, or what happened under the limit."""
    if v is None:
        return '–'
    if isinstance(v, str):
        return {'oom': 'OOM-killed', 'timeout': 'timed out'}.get(v, v)
    return f'{v:.2f}'


def goals_table(results):
    """Return (markdown table, paper-family average weight reduction or None)."""
    rows = ['| model | disk_offload at the smallest plan’s memory: × our time (goal ≥ 2) | '
            'naive loader at that memory: × our time | whole process MB: smallest plan / '
            'resident − 90% of weights not held (goal ≤) | page-cache growth MB: ours / '
            'disk_offload | weight reduction, smallest plan | smallest plan × bound (goal ≤ '
            '1.10) | smallest plan overhead | ≤ 1 ms plan: overhead, reduction | × faster than '
            'disk_offload at ≤ its own peak (ours) |',
            '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    red = []
    for key, m in results['models'].items():
        if not m.get('configs'):
            rows.append(f'| {key} | preparation failed: {str(m.get("error"))[:120]} |'
                        + ' |' * 8)
            continue
        g = goals(m)
        if key in PAPER_FAMILY and g.get('weight_reduction_pct') is not None:
            red.append(g['weight_reduction_pct'])
        one = '–'
        if g.get('onems_overhead_ms') is not None:
            one = f'{g["onems_overhead_ms"]:+.1f} ms, {_f(g.get("onems_reduction_pct"))}%'
        whole = '–'
        if g.get('whole_bound_mb') is not None:
            whole = (f'{g["whole_peak_mb"]:.0f} / {g["whole_bound_mb"]:.0f}'
                     f'{_mark(g.get("whole_ok"))}')
        old = '–'
        if g.get('speedup_vs_disk_offload') is not None:
            old = f'{g["speedup_vs_disk_offload"]:.2f} ({g.get("speedup_config")})'
        rows.append(
            f'| {key} | {_times(g.get("disk_equal"))}{_mark(g.get("disk_equal_ok"))} | '
            f'{_times(g.get("naive_equal"))} | {whole} | '
            f'{_f(g.get("cache_growth_mb"))} / {_f(g.get("disk_offload_cache_growth_mb"))}'
            f'{_mark(g.get("cache_ok"))} | {_f(g.get("weight_reduction_pct"))}% | '
            f'{_f(g.get("bound_ratio"), 2)}{_mark(g.get("bound_ok"))} | '
            f'{_f(g.get("overhead_pct"))}% | {one} | {old} |')
    avg = round(statistics.fmean(red), 2) if red else None
    return '\n'.join(rows), avg


def markdown(results, figures, section=None):
    """Return the markdown section for one results dict; figures: {name: relative path}."""
    m = results.get('machine') or {}
    st = results.get('settings') or {}
    dev = st.get('device', 'cpu')
    title = 'CPU' if not dev.startswith('cuda') else f'GPU: {m.get("device_name", dev)}'
    if section and section not in ('cpu', 'gpu'):      # a partial run beside the full one
        title += f' ({section})'
    disk = m.get('disk_o_direct_mb_per_s') or {}
    lines = [f'## Side by side: {title}', '',
             f'Measured {results.get("started", "?")} in one run of `{results["command"]}` '
             f'({_f((results.get("seconds") or 0) / 60.0)} min).', '',
             f'- **Machine**: {m.get("cpu", "?")}, {m.get("cores", "?")} cores, '
             f'{_f(m.get("memory_mb"), 0)} MB RAM; {m.get("os", "")}.',
             f'- **Disk**: sequential O_DIRECT read (4 MiB requests, measured on each pack '
             f'during the run): {_f(disk.get("min"), 0)}–{_f(disk.get("max"), 0)} MB/s, median '
             f'{_f(disk.get("median"), 0)} MB/s.',
             f'- **GPU**: {m.get("device_name") if dev.startswith("cuda") else "none"}.',
             f'- **Software**: Python {m.get("python", "?")}, torch {m.get("torch", "?")}, '
             f'accelerate {m.get("accelerate", "?")}.',
             f'- **Settings**: {st.get("passes")} timed passes per configuration '
             f'({st.get("reps")} repetitions × {st.get("passes_per_rep")}, each after '
             f'{st.get("warmup")} warm-up passes), batch 1, fp32, seeded random weights except '
             'yolov3-tiny (real COCO weights); input sizes per model below.',
             '- **Knobs**: `--models`, `--configs`, `--passes`, `--reps`, `--budgets`, '
             '`--input-size`, `--threads` (`python -m bench.harness --help`); '
             '`--results` redraws this section from a results.json measured elsewhere.',
             '', _method(st.get('drop_caches')), '']
    table, avg = goals_table(results)
    lines += ['### Goals', '', table, '']
    if avg is not None:
        lines += ['Weight-memory reduction at the smallest plan, averaged over the paper’s '
                  f'family ({", ".join(k for k in PAPER_FAMILY if k in results["models"])}): '
                  f'**{avg:.1f}%** (paper: 96.5%).', '']
    for key, model in results['models'].items():
        lines += [f'### {key}', '']
        if not model.get('configs'):
            lines += [f'Preparation failed: `{model.get("error")}`', '']
            continue
        size = model.get('input_size')
        lines += [f'`{model["spec"].split("/")[-1]}`, input '
                  f'{"x".join(str(v) for v in size) if size else "default"}, '
                  f'{_f(model.get("weights_mb"))} MB of weights in {model.get("units")} units '
                  f'(largest {_f(model.get("largest_unit_mb"))} MB), disk '
                  f'{_f(model.get("disk_mb_per_s"), 0)} MB/s in this run{_load_note(model)}.',
                  '',
                  model_table(model), '']
    if figures:
        lines += ['### Plots', '']
        for name, rel in figures.items():
            lines += [f'![{name}]({rel})', '']
    return '\n'.join(lines).rstrip() + '\n'


def _load_note(model):
    loads = [(c.get('summary') or {}).get('load_average_max')
             for c in (model.get('configs') or {}).values()]
    loads = [v for v in loads if v is not None]
    if not loads:
        return ''
    return (f'; 1-minute load average during its runs up to {max(loads):.1f} (other work on '
            'the machine slows the configurations it overlaps)')


def _method(drop_caches):
    """Return the method paragraph; it says what this run did to the page cache."""
    if drop_caches == 'all':
        return _METHOD
    done = ('Before each configuration the weight files it reads are evicted from the page '
            'cache (`POSIX_FADV_DONTNEED`); the rest of the page cache was left as it was '
            '(`--drop-caches weights`: libraries cached by earlier runs are charged to no '
            'configuration).'
            if drop_caches == 'weights' else 'Nothing was evicted from the page cache between '
            'configurations (`--drop-caches none`).')
    return _METHOD.replace(_DROP_ALL, done)


_METHOD = """\
How each number is taken: every configuration runs in its own subprocess placed in a fresh \
memory cgroup (v1, a child of the benchmark's own); *peak memory* is the cgroup's \
`memory.max_usage_in_bytes` over the whole process (interpreter and libraries included, the \
same for every configuration), so page cache the configuration pulls in counts; *page-cache \
growth* is the cgroup's `cache` after the timed passes minus its value after the imports; \
*disk read* is `/proc/self/io` `read_bytes` over the timed passes. Before each configuration the \
weight files it reads are evicted from the page cache (`POSIX_FADV_DONTNEED`), and before each \
model the whole page cache is dropped (`drop_caches`) and the libraries re-imported outside the \
measured memory. Repetitions alternate the order of the configurations. *Peak weight memory*: \
the executor's `stats()` for this project and the naive loader; the whole model for resident \
and cpu_offload; the largest module's parameters plus all buffers for disk_offload (it copies \
one module's weights out of its memmap at a time); nothing but page cache for the mmap \
configuration. That one, and disk_offload and the naive loader a second time (rows "…, \
smallest plan’s memory"), run under a cgroup limit set once their imports are done: their \
usage then plus the most this project's smallest plan was measured to use above the same \
point, so they get the same memory for weights, activations and page cache as the smallest \
plan (over it the kernel evicts their page cache or OOM-kills them). Every configuration runs \
with the runtime's malloc settings (`runtime.malloc`: two glibc arenas). *Activation peak*: \
the executor's `stats()` (the most anonymous memory a pass held beyond its weights, over the \
first passes after configure; see `runtime.footprint`). *Whole process*: \
the smallest plan's cgroup peak against the resident one's minus 90% of the weight bytes the \
plan does not hold (streaming's own costs may eat at most a tenth of what it saves). \
*Pipeline bound*: the \
planner's replay of one pass with the profiled per-call compute times (model resident), \
units not resident arriving in first-use order at the disk bandwidth measured in this run, \
an arena that never blocks and no executor overhead."""
_DROP_ALL = ('Before each configuration the weight files it reads are evicted from the page cache '
             '(`POSIX_FADV_DONTNEED`), and before each model the whole page cache is dropped '
             '(`drop_caches`) and the libraries re-imported outside the measured memory.')


def write_markdown(results, path, section, figures):
    """Replace (or append) the block between this section's markers in `path`."""
    return write_markdown_block(path, section, markdown(results, figures, section))


def write_markdown_block(path, section, body):
    """Replace (or append) the block between `section`'s markers in `path` with `body`."""
    path = Path(path)
    begin, end = f'<!-- bench:{section}:begin -->', f'<!-- bench:{section}:end -->'
    block = f'{begin}\n{body}{end}\n'
    text = path.read_text() if path.exists() else '# Benchmarks\n\n'
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block.rstrip('\n') + tail
    else:
        text = text.rstrip('\n') + '\n\n' + block
    return atomic.write_bytes(path, lambda f: f.write(text))


def report(results, args):
    """Write the plots (out dir, copied next to the markdown) and the markdown section."""
    out = Path(args.out)
    pngs = plot_all(results, out, args.section)
    figures = {}
    if args.markdown:
        md = Path(args.markdown)
        fig_dir = Path(args.figures) if args.figures else md.parent / 'bench'
        fig_dir.mkdir(parents=True, exist_ok=True)
        for name, p in pngs.items():
            dest = fig_dir / p.name
            if dest.resolve() != p.resolve():
                shutil.copyfile(p, dest)
            figures[name] = os.path.relpath(dest, md.parent)
        write_markdown(results, md, args.section, figures)
    return pngs
