# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Running the benchmark: every configuration of every model, each in its own subprocess.

Every configuration of every model runs in the same session, in alternating order across
repetitions (drift hits all alike), each in its own subprocess placed in its own memory cgroup:
the kernel's peak charge then includes the page cache a configuration pulls in, which `ps` would
hide. `run_all` writes results.json after every model, so an interrupted run keeps what it has.
"""

import json
import math
import os
from pathlib import Path
import subprocess
import sys
import time

from bench.configs import (config_list, kind_of, LIMITED, rep_order, resolve_models,
                           runs_as, STREAMING)
from bench.machine import disk_bandwidth, machine
from bench.plans import executor_plan
from bench.prepare import prepare_model
from bench.summary import model_results
from bench.worker import weight_files
from demand_layering_ros import atomic
from demand_layering_ros.pack.format import WEIGHTS_FILE
from demand_layering_ros.sizes import mib


REPO_ROOT = Path(__file__).resolve().parent.parent
FORMAT = 'demand_layering_ros.bench'
VERSION = 1


def _evict(job):
    from tools import cgroups
    for p in weight_files(job):
        try:
            cgroups.evict_file(p)
        except OSError:
            pass


def _read_pack_files(pack):
    """
    Read a pack's small files (manifest, cfg) here, so no configuration is charged their cache.

    Whichever worker read them first after drop_caches paid ~0.1-1 MiB of page cache at its
    import baseline: noise in the whole-process peaks of small models. Once per model, after
    the caches are dropped: only the weights file is evicted before each configuration.
    """
    for p in Path(pack).iterdir():
        if p.is_file() and p.name != WEIGHTS_FILE:
            p.read_bytes()


def _prime_libraries(spec=''):
    """Import what a worker imports, outside any measured cgroup, so library pages are cached."""
    code = ('import torch, torchvision, accelerate, safetensors; '
            'import demand_layering_ros.loading, demand_layering_ros.planning.planner, '
            'bench.harness, tools.cgroups')
    if spec.startswith('ultralytics:'):     # the family's workers build Ultralytics' network
        code += '; import ultralytics.nn.tasks'
    subprocess.run([sys.executable, '-c', code], cwd=str(REPO_ROOT), env=_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _env():
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env.setdefault('PYTHONUNBUFFERED', '1')
    return env


def run_job(job, work, timeout=None, use_cgroup=True):
    """Run one configuration in its own subprocess (and memory cgroup); return its result."""
    from tools import cgroups
    job = dict(job, cgroup=bool(use_cgroup))
    stem = f'{job["model"]}-{job["config"]}-r{job["rep"]}'
    job_path = Path(work) / f'job-{stem}.json'
    job['result'] = str(Path(work) / f'result-{stem}.json')
    if os.path.exists(job['result']):
        os.unlink(job['result'])
    atomic.write_json(job_path, job)
    argv = [sys.executable, '-m', 'bench.harness', '--worker', str(job_path)]
    out = {}
    if use_cgroup:
        r = cgroups.run_in_cgroup(argv, timeout=timeout, env=_env(), cwd=str(REPO_ROOT))
        out.update(peak_bytes=r.peak_bytes, peak_cache_sampled_bytes=r.peak_cache_bytes,
                   peak_rss_sampled_bytes=r.peak_rss_bytes, exit_cache_bytes=r.cache_bytes,
                   returncode=r.returncode, oom_killed=r.oom_killed,
                   timed_out=r.timed_out, wall_s=round(r.wall_s, 2))
        stderr = r.stderr
    else:
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, env=_env(), cwd=str(REPO_ROOT), timeout=timeout,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            out.update(returncode=p.returncode, timed_out=False, oom_killed=False)
            stderr = p.stderr
        except subprocess.TimeoutExpired as e:
            out.update(returncode=None, timed_out=True, oom_killed=False)
            stderr = e.stderr or ''
        out.update(wall_s=round(time.monotonic() - t0, 2), peak_bytes=None)
    try:
        with open(job['result']) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {'status': 'oom' if out.get('oom_killed') else
               'timeout' if out.get('timed_out') else 'error',
               'error': (stderr or '').strip()[-1500:] or f'exit {out.get("returncode")}'}
    if out.get('oom_killed') and res.get('status') != 'ok':
        res['status'] = 'oom'
    res.update(out)
    if job.get('limit_above_base') is not None:
        res['limit_above_base'] = job['limit_above_base']
    res['rep'] = job['rep']
    res.setdefault('kind', job['kind'])          # also when the process died before writing
    return res


def bench_model(key, info, args, work, bar, log):
    """Run every configuration of one model over the repetitions; return per-config results."""
    from tools import cgroups
    configs = config_list(info, args.configs)
    runs = {c: [] for c in configs}
    use_cgroup = bool(cgroups.cgroups_available()) and not args.no_cgroup
    bw = disk_bandwidth(Path(info['pack']) / WEIGHTS_FILE)
    info['disk_mb_per_s'] = mib(bw, 0)
    if args.drop_caches == 'all':
        try:
            cgroups.drop_caches()
            _prime_libraries(info['spec'])
        except (PermissionError, OSError) as e:
            log(f'drop_caches: {e}; evicting the weight files only')
            args.drop_caches = 'weights'
    _read_pack_files(info['pack'])
    for rep in range(args.reps):
        for config in rep_order(configs, rep):
            bar.set_postfix_str(f'{key} {config} r{rep}', refresh=True)
            res = _run_config(key, info, config, rep, runs, args, work, use_cgroup, log)
            if res is not None:
                runs[config].append(res)
            bar.update(1)
    return model_results(info, configs, runs, bw)


def _run_config(key, info, config, rep, runs, args, work, use_cgroup, log):
    """Run one repetition of one configuration; return its result (None: same as another)."""
    kind = kind_of(config)
    base = runs_as(kind)
    plan = (info.get('plans') or {}).get(base if kind in LIMITED else config) \
        if base in STREAMING else None
    why = info['errors'].get(base)
    if why is None and plan is not None and 'infeasible' in plan:
        why = f'infeasible: {plan["infeasible"]}'
    if why is None and plan is not None and 'same_as' in plan and kind not in LIMITED:
        return None
    above = None
    if kind in LIMITED:
        peaks = [r['peak_bytes'] - r['base_bytes'] for r in runs.get('dl-smallest', [])
                 if r.get('status') == 'ok' and r.get('peak_bytes')
                 and r.get('base_bytes')]
        if not peaks:
            why = why or 'needs the measured peak of dl-smallest (cgroup)'
        above = max(peaks) if peaks else None
        if kind == 'mmap' and args.device.startswith('cuda'):
            why = 'CPU only: a discrete GPU cannot use a file mapping in place'
    if why is not None:
        return {'status': 'skipped', 'error': why, 'rep': rep}
    job = {'model': key, 'config': config, 'kind': base, 'rep': rep,
           'pack': info['pack'], 'device': args.device, 'passes': args.passes_per_rep,
           'warmup': args.warmup, 'threads': args.threads,
           'plan': executor_plan(plan) if plan else None,
           'offload_dir': info.get('offload_dir'),
           'accelerate_weight_bytes': info['largest_module_param_bytes']
           + info['buffer_bytes'], 'limit_above_base': above}
    if args.drop_caches != 'none':
        _evict(job)
    res = run_job(job, work, timeout=args.timeout, use_cgroup=use_cgroup)
    if res.get('status') != 'ok':
        log(f'{key} {config} rep {rep}: {res.get("status")}: '
            f'{str(res.get("error"))[-300:]}')
    return res


def run_all(args):
    """Prepare and measure every model; write results.json, plots and markdown; return dict."""
    from tqdm import tqdm
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out / 'work')
    work.mkdir(parents=True, exist_ok=True)
    models = resolve_models(args.models, args.device, args.input_size)
    args.passes_per_rep = max(1, math.ceil(args.passes / args.reps))
    per_model = 3 + sum(args.reps * (args.budgets if k == 'dl-budget' else 1)
                        for k in args.configs)
    started = time.time()
    results = {'format': FORMAT, 'version': VERSION, 'section': args.section,
               'command': args.command_line,
               'started': time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started)),
               'settings': {'device': args.device, 'passes': args.passes_per_rep * args.reps,
                            'passes_per_rep': args.passes_per_rep, 'warmup': args.warmup,
                            'reps': args.reps, 'budgets': args.budgets,
                            'configs': list(args.configs), 'drop_caches': args.drop_caches,
                            'threads': args.threads, 'profile_repeats': args.profile_repeats},
               'models': {}, 'machine': machine(args.device, [])}
    bar = tqdm(total=per_model * len(models), desc='bench', unit='step',
               disable=args.quiet)

    def log(msg):
        (tqdm.write if not args.quiet else print)(f'[bench] {msg}', file=sys.stderr)

    if args.threads:    # profiles and plans hold at the thread count the workers run with
        import torch
        torch.set_num_threads(args.threads)
    bws = []
    for key, src in models:
        bar.set_postfix_str(f'{key} prepare', refresh=True)
        try:
            info = prepare_model(key, src, work, args.device, args.configs, args.budgets,
                                 args.profile_repeats, log)
        except Exception as e:  # noqa: B902 - one broken model must not stop the others
            log(f'{key}: preparation failed: {e!r}')
            results['models'][key] = {'key': key, 'spec': src['spec'], 'error': repr(e)}
            bar.update(per_model)
            continue
        bar.update(3)
        configs = bench_model(key, info, args, work, bar, log)
        bws.append(info.get('disk_mb_per_s'))
        info['configs'] = configs
        results['models'][key] = info
        atomic.write_json(out / 'results.json', results)
        bar.update(max(0, per_model - 3 - len(config_list(info, args.configs)) * args.reps))
    bar.close()
    results['machine'] = machine(args.device, bws)
    results['seconds'] = round(time.time() - started, 1)
    atomic.write_json(out / 'results.json', results)
    return results
