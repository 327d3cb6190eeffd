# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Benchmarks against what a user would pick instead, measured side by side in one run.

A robotics engineer deciding whether to use this package asks what it saves, what it costs and
whether it beats loading the model normally or Hugging Face accelerate's offloading. So every
configuration of every model runs in the same session, in alternating order across repetitions
(drift hits all alike), each in its own subprocess placed in its own memory cgroup: the kernel's
peak charge then includes the page cache a configuration pulls in, which `ps` would hide.

Configurations: the plain resident model; naive demand loading (each unit read right before it
runs, no read-ahead: the executor with prefetch depth 0, the paper's sequential baseline);
accelerate `disk_offload` and `cpu_offload`; the operating system's demand paging (the pack's
safetensors file memory-mapped and used in place, in a cgroup whose limit leaves it the memory
this project's smallest plan was measured to need above the same import baseline, so the kernel
must evict and re-read pages); this project at the
smallest-memory plan, at the plan whose predicted overhead is <= 1 ms, and at budgets between.
The pipeline bound each streaming configuration is held against is the planner's discrete-event
replay of the pass with the profiled per-call compute times, an unlimited arena and the disk's
O_DIRECT bandwidth measured in the same run. `run` writes results.json, PNG plots and a markdown
section (`--markdown`) that replaces only its own block of the file.

This module is the command line (`make bench`, and `--worker JOB` for one configuration); the
parts: configs (models, configurations), prepare (pack, offload folder, profile), plans, jobs
(running every configuration), worker (one configuration in its cgroup), machine, summary and
goals, plots, report (markdown).
"""

import argparse
import json
import os
from pathlib import Path
import shlex
import sys

from bench.configs import CONFIGS, DEFAULT_MODELS, MODELS, ORDER
from bench.jobs import run_all
from bench.report import report
from bench.worker import worker


def _csv(value):
    return [v.strip() for v in value.split(',') if v.strip()]


def add_arguments(parser, command):
    """Add the `bench` command's options."""
    root = os.geteuid() == 0 if hasattr(os, 'geteuid') else False
    parser.add_argument('--models', type=_csv, default=list(DEFAULT_MODELS),
                        help='comma-separated model keys or specs FAMILY:ARG (default: '
                             f'{len(DEFAULT_MODELS)}: {", ".join(DEFAULT_MODELS)}; also '
                             f'{", ".join(k for k in MODELS if k not in DEFAULT_MODELS)})')
    parser.add_argument('--configs', type=_csv, default=list(ORDER),
                        help=f'comma-separated configurations (default all: {", ".join(ORDER)})')
    parser.add_argument('--passes', type=int, default=20,
                        help='timed passes per configuration, split over the repetitions '
                             '(default 20)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed passes before each repetition (default 2)')
    parser.add_argument('--reps', type=int, default=2,
                        help='repetitions; odd ones run the configurations in reverse order '
                             '(default 2)')
    parser.add_argument('--budgets', type=int, default=1,
                        help='budgets between the smallest and the <= 1 ms plan (default 1)')
    parser.add_argument('--profile-repeats', type=int, default=3,
                        help="timed passes of the planner's profile (default 3)")
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    parser.add_argument('--input-size', default=None,
                        help='HxW for every model (default: small per-model sizes, see MODELS)')
    parser.add_argument('--threads', type=int, default=None,
                        help="torch threads in each configuration (default: torch's own)")
    parser.add_argument('--out', default='bench/out',
                        help='results.json and PNGs (default bench/out)')
    parser.add_argument('--work', default=None,
                        help='packs, offload folders, profiles, plans (default OUT/work)')
    parser.add_argument('--markdown', default=None,
                        help='markdown file whose bench section is (re)written')
    parser.add_argument('--section', default=None,
                        help='section name in the markdown and PNG prefix (default: cpu or gpu)')
    parser.add_argument('--figures', default=None,
                        help="where the markdown's PNGs go (default: MARKDOWN_DIR/bench)")
    parser.add_argument('--drop-caches', choices=('all', 'weights', 'none'),
                        default='all' if root else 'weights',
                        help='before each model drop the whole page cache (all, root only; '
                             'default when root) and before each configuration evict its '
                             'weight files (all, weights)')
    parser.add_argument('--no-cgroup', action='store_true',
                        help='run configurations without memory cgroups (no peak memory)')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='seconds one configuration may take before it is recorded as '
                             'timed out (default 300: OS paging under a tight limit can thrash '
                             'for many minutes)')
    parser.add_argument('--report-only', action='store_true',
                        help='only redraw plots and markdown from OUT/results.json')
    parser.add_argument('--results', default=None,
                        help='report from this results.json (e.g. from the GPU machine) '
                             'instead of measuring; plots go to OUT')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    parser.set_defaults(bench_defaults=vars(parser.parse_args([])))


def _check(args):
    from demand_layering_ros.models import registry
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f'bench: unknown configurations {unknown}; known: {", ".join(ORDER)}')
    for name in ('passes', 'reps', 'profile_repeats'):
        if getattr(args, name) < 1:
            raise SystemExit(f'bench: --{name.replace("_", "-")} must be at least 1')
    if args.warmup < 0 or args.budgets < 0:
        raise SystemExit('bench: --warmup and --budgets must be >= 0')
    args.configs = [c for c in ORDER if c in args.configs]
    args.input_size = registry.parse_input_size(args.input_size)


def command_line(args):
    """
    Return the command that reproduces this run.

    The process's own argv when it is the bench command line, else the options that differ
    from their defaults (when called through main(argv) from Python).
    """
    if Path(sys.argv[0]).name == 'harness.py':
        return 'python -m bench.harness ' + shlex.join(sys.argv[1:])
    words = []
    defaults = getattr(args, 'bench_defaults', None) or {}
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if value == default or key in ('command', 'bench_defaults', 'worker'):
            continue
        flag = '--' + key.replace('_', '-')
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, ','.join(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return 'python -m bench.harness ' + shlex.join(words)


def run(args, command):
    """Run the benchmark (or one worker); return the exit status."""
    if args.worker:
        return worker(args.worker)
    args.command_line = command_line(args)
    _check(args)
    if args.report_only or args.results:
        with open(args.results or Path(args.out) / 'results.json') as f:
            results = json.load(f)
        args.section = args.section or results.get('section') or 'cpu'
    else:
        args.section = args.section or ('gpu' if args.device.startswith('cuda') else 'cpu')
        results = run_all(args)
    pngs = report(results, args)
    ok = sum(1 for m in results['models'].values() for c in (m.get('configs') or {}).values()
             if (c.get('summary') or {}).get('status') == 'ok')
    print(json.dumps({'results': str(args.results or Path(args.out) / 'results.json'),
                      'markdown': args.markdown, 'plots': [str(p) for p in pngs.values()],
                      'configurations_ok': ok, 'seconds': results.get('seconds')}))
    return 0 if ok else 1


def main(argv=None):
    """Parse the command line (`python -m bench.harness ...`) and run; return the status."""
    parser = argparse.ArgumentParser(prog='python -m bench.harness',
                                     description='The benchmarks of BENCHMARKS.md.')
    add_arguments(parser, 'bench')
    return int(run(parser.parse_args(argv), 'bench') or 0)


if __name__ == '__main__':
    sys.exit(main())
