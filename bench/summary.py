# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The numbers of each configuration, pooled over its repetitions, and the goals they are held to.

Latency is the median and the nearest-rank p99 over every timed pass; memory is the worst
repetition's; the goals compare this project with accelerate's disk_offload, the resident model
and the pipeline bound.
"""

import statistics

from bench.configs import kind_of, STREAMING
from bench.plans import pipeline_bound_ms
from demand_layering_ros.quantiles import nearest_rank
from demand_layering_ros.sizes import mib


def model_results(info, configs, runs, bw):
    """Return {config: {'summary', 'runs', 'timeline'}} of one model (same plans: one entry)."""
    plans = info.get('plans') or {}
    prof = None
    if info.get('profile'):
        from demand_layering_ros.planning import timing
        prof = timing.load_profile(info['profile'])
    out = {}
    for config in configs:
        plan = plans.get(config) if kind_of(config) in STREAMING else None
        if plan and 'same_as' in plan:
            out[config] = {'same_as': plan['same_as']}
            continue
        summary = summarise(runs[config], info, config, bw, prof)
        timeline = next((r.get('timeline') for r in reversed(runs[config])
                         if r.get('timeline')), None)
        slim = [{k: v for k, v in r.items() if k not in ('timeline', 'traceback')}
                for r in runs[config]]
        out[config] = {'summary': summary, 'runs': slim}
        if timeline:
            out[config]['timeline'] = timeline
    for config, v in out.items():
        if 'same_as' in v and v['same_as'] in out:
            out[config] = dict(out[v['same_as']], same_as=v['same_as'])
    return out


def summarise(runs, info, config, bw, prof):
    """Pool the repetitions of one configuration into the numbers the tables show."""
    ok = [r for r in runs if r.get('status') == 'ok']
    s = {'runs': len(runs), 'ok_runs': len(ok),
         'status': 'ok' if ok else (runs[-1].get('status', 'error') if runs else 'skipped')}
    if not ok:
        s['error'] = runs[-1].get('error') if runs else None
        return s
    lat = [v for r in ok for v in r['latencies_ms']]
    s.update(passes=len(lat), median_ms=round(statistics.median(lat), 3),
             p99_ms=round(nearest_rank(lat, 99), 3), mean_ms=round(statistics.fmean(lat), 3))

    def worst(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        return max(vals) if vals else None

    s['peak_weight_mb'] = mib(worst('peak_weight_bytes'), 2)
    s['peak_mb'] = mib(worst('peak_bytes'), 1)
    s['base_mb'] = mib(worst('base_bytes'), 1)
    s['cache_growth_mb'] = mib(worst('cache_growth_bytes'), 2)
    s['weights_cached_mb'] = mib(worst('weights_cached_bytes'), 2)
    per_pass = [r['read_bytes_passes'] / max(len(r['latencies_ms']), 1) for r in ok
                if r.get('read_bytes_passes') is not None]
    s['read_mb_per_pass'] = mib(statistics.median(per_pass), 2) if per_pass else None
    s['read_mb_load'] = mib(worst('read_bytes_load'), 2)
    if ok[0].get('limit_bytes'):
        s['limit_mb'] = mib(ok[0]['limit_bytes'], 1)
    loads = [v for r in ok for v in r.get('load_average') or []]
    if loads:
        s['load_average_max'] = max(loads)
    stalls = [v for r in ok for v in r.get('stall_ms') or []]
    if stalls:
        s['stall_ms'] = round(statistics.median(stalls), 3)
    ex = ok[-1].get('executor')
    if ex:
        acts = [(r.get('executor') or {}).get('activation_peak_bytes') for r in ok]
        acts = [v for v in acts if v is not None]
        s['activation_mb'] = mib(max(acts), 1) if acts else None
        s['io_mode'] = ex.get('io_mode')
        s['demand_misses'] = ex.get('demand_misses')
        s['split_units'] = ex.get('split_units')
    plan = (info.get('plans') or {}).get(config)
    if plan and 'predicted_latency_ms' in plan:
        s['predicted_ms'] = plan['predicted_latency_ms']
        s['predicted_weight_mb'] = plan['predicted_peak_weight_mb']
    if plan and (config in STREAMING or config.startswith('dl-')) and prof and bw:
        try:
            b = pipeline_bound_ms(open_pack(info), prof, bw, plan.get('resident_units') or [])
            s['bound_ms'] = round(b, 3)
            s['bound_ratio'] = round(s['median_ms'] / b, 3) if b > 0 else None
        except Exception as e:  # noqa: B902 - a missing bound is reported, not fatal
            s['bound_error'] = repr(e)
    return s


_PACKS = {}


def open_pack(info):
    """Return the opened pack of a model (opened once per process)."""
    from demand_layering_ros.pack import Pack
    if info['pack'] not in _PACKS:
        _PACKS[info['pack']] = Pack.open(info['pack'])
    return _PACKS[info['pack']]


def ok_summary(model, config):
    """Return the summary of a configuration that ran, else None."""
    c = (model.get('configs') or {}).get(config) or {}
    s = c.get('summary') or {}
    return s if s.get('status') == 'ok' else None


def status_of(model, config):
    """Return a configuration's summary status ('ok', 'oom', 'timeout', ...) or None."""
    c = (model.get('configs') or {}).get(config) or {}
    return (c.get('summary') or {}).get('status')


def equal_memory(model, g, small):
    """
    Compare the smallest plan with disk_offload and the naive loader at the same memory.

    Both ran under a cgroup limit of the memory the smallest plan was measured to need
    (LIMITED configurations): their median over ours, or their status when the limit killed
    them (OOM) or they ran out of time. The goal: disk_offload at least 2x slower.
    """
    for config, key in (('accelerate-disk-limited', 'disk_equal'),
                        ('naive-limited', 'naive_equal')):
        other, status = ok_summary(model, config), status_of(model, config)
        if other and small:
            g[key] = round(other['median_ms'] / small['median_ms'], 2)
            g[key + '_limit_mb'] = other.get('limit_mb')
        elif status and status != 'skipped':
            g[key] = status                  # 'oom': it cannot run in that memory at all
    if 'disk_equal' in g:
        g['disk_equal_ok'] = g['disk_equal'] in ('oom', 'timeout') or \
            (not isinstance(g['disk_equal'], str) and g['disk_equal'] >= 2.0)


def whole_process(model, g, res, small):
    """
    Hold the smallest plan's whole-process peak against the resident one's.

    Goal: at most the resident peak minus 90% of the weight bytes the plan does not hold (the
    rest of the process must not grow back what streaming saves).
    """
    if not (res and small) or None in (res.get('peak_mb'), small.get('peak_mb'),
                                       res.get('peak_weight_mb'), small.get('peak_weight_mb')):
        return
    unheld = res['peak_weight_mb'] - small['peak_weight_mb']
    g['whole_peak_mb'] = small['peak_mb']
    g['whole_bound_mb'] = round(res['peak_mb'] - 0.9 * unheld, 1)
    g['whole_saved_pct_of_unheld'] = round(100.0 * (res['peak_mb'] - small['peak_mb'])
                                           / unheld, 1) if unheld > 0 else None
    g['whole_ok'] = small['peak_mb'] <= g['whole_bound_mb']


def goals(model):
    """
    Hold one model's numbers against the project's goals; return a dict (None: not measured).

    speedup: accelerate disk_offload's median over the fastest of this project's configurations
    whose peak memory (cgroup, page cache included) is not above disk_offload's; disk_equal:
    disk_offload's median over the smallest plan's, both within the smallest plan's memory.
    """
    g = {}
    res = ok_summary(model, 'resident')
    disk = ok_summary(model, 'accelerate-disk')
    small = ok_summary(model, 'dl-smallest')
    dls = [(n, ok_summary(model, n)) for n in (model.get('configs') or {}) if n.startswith('dl-')]
    dls = [(n, s) for n, s in dls if s]
    if disk and dls:
        peak = disk.get('peak_mb')
        fits = [(n, s) for n, s in dls if peak is None or s.get('peak_mb') is None
                or s['peak_mb'] <= peak]
        if fits:
            name, best = min(fits, key=lambda ns: ns[1]['median_ms'])
            g['speedup_vs_disk_offload'] = round(disk['median_ms'] / best['median_ms'], 2)
            g['speedup_config'] = name
            g['speedup_ok'] = g['speedup_vs_disk_offload'] >= 2.0
        g['disk_offload_cache_growth_mb'] = disk.get('cache_growth_mb')
    if small:
        g['cache_growth_mb'] = small.get('cache_growth_mb')
        g['cache_ok'] = (small.get('cache_growth_mb') is not None
                         and small['cache_growth_mb'] < 5.0)
        weights = (res or {}).get('peak_weight_mb') or mib(model.get('total_bytes'), 2)
        if weights and small.get('peak_weight_mb') is not None:
            g['weight_reduction_pct'] = round(100.0 * (1 - small['peak_weight_mb'] / weights), 2)
        if small.get('bound_ratio') is not None:
            g['bound_ratio'] = small['bound_ratio']
            g['bound_ok'] = small['bound_ratio'] <= 1.10
        if res:
            g['overhead_pct'] = round(100.0 * (small['median_ms'] / res['median_ms'] - 1), 1)
    equal_memory(model, g, small)
    whole_process(model, g, res, small)
    one = ok_summary(model, 'dl-1ms')
    if one and res:
        g['onems_overhead_ms'] = round(one['median_ms'] - res['median_ms'], 2)
        if one.get('peak_weight_mb') is not None and res.get('peak_weight_mb'):
            g['onems_reduction_pct'] = round(
                100.0 * (1 - one['peak_weight_mb'] / res['peak_weight_mb']), 2)
    return g
