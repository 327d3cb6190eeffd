# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The `profile` and `plan` commands: measure a pack here, then plan it for a budget or deadline.

`profile` writes PROFILE.json; `plan` reads it (or profiles first), writes PLAN.yaml and, unless
told not to, the trade-off and timeline pictures, and prints one JSON line. An infeasible
request exits 3 with the numbers that would be feasible; a profile measured at another torch
thread count than the plan is for exits 2 with one line that says so.

`plan --pack A --pack B ...` plans several models under one budget and writes a group
PLAN.yaml. Each pack is profiled as for one model (PACK/PROFILE.json, or --profile per pack, or
profiled now); deadlines and frame periods are given per pack in the order of --pack (one value
applies to every pack). It prints one JSON line with the group's and each model's predictions;
an infeasible request exits 3 with the numbers that would be feasible.
"""

import json
from pathlib import Path
import sys

from demand_layering_ros.layout import threads
from demand_layering_ros.planning import planner, profiler
from demand_layering_ros.planning.timing import load_profile, save_profile
from demand_layering_ros.sizes import mib


def add_arguments(parser, command):
    """Add the options of the `profile` and `plan` commands."""
    if command == 'plan':
        parser.add_argument('pack_dir', metavar='PACK_DIR', nargs='?', default=None,
                            help='weight pack directory (or --pack, repeated, for a group)')
        parser.add_argument('--pack', metavar='PACK_DIR', action='append', default=None,
                            help='plan several models under one budget: repeat per model; '
                                 '--profile, --deadline-ms and --frame-period-ms then take '
                                 'one value per --pack, in order (or one for all)')
    else:
        parser.add_argument('pack_dir', metavar='PACK_DIR', help='weight pack directory')
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    parser.add_argument('--threads', type=int, default=None,
                        help="torch threads the model will run with (default: torch's own); "
                             'a plan holds only at the thread count it was profiled at')
    if command == 'profile':
        parser.add_argument('--out', default=None,
                            help='PROFILE.json to write (default PACK_DIR/PROFILE.json)')
        parser.add_argument('--repeats', type=int, default=5,
                            help='timed passes; medians are kept (default 5)')
        parser.add_argument('--budget-mb', type=float, default=None,
                            help='weight memory the profile may use (MiB); when the weights '
                                 'exceed it the model runs streamed within it, not resident')
        parser.add_argument('--no-progress', action='store_true', help='no progress bar')
        return
    parser.add_argument('--profile', default=None, action='append',
                        help='PROFILE.json (default PACK_DIR/PROFILE.json, else profile now)')
    parser.add_argument('--budget-mb', type=float, default=None,
                        help='weight memory budget in MiB: minimise latency within it')
    parser.add_argument('--deadline-ms', type=float, default=None, action='append',
                        help='latency deadline: minimise weight memory subject to it')
    parser.add_argument('--frame-period-ms', type=float, default=None, action='append',
                        help='time between frames; idle time preloads the first units')
    parser.add_argument('--host-budget-mb', type=float, default=0,
                        help='accepted for compatibility; must be 0 (this release has no '
                             'pinned host middle tier)')
    parser.add_argument('--out', default=None,
                        help='PLAN.yaml to write (default PACK_DIR/PLAN.yaml)')
    parser.add_argument('--no-plots', action='store_true', help='do not write the PNG plots')
    parser.add_argument('--simulate-timeline', action='store_true',
                        help='draw the simulated timeline instead of running the executor')


def run(args, command):
    """Run `profile` or `plan`; return the exit status (2: bad option, 3: infeasible)."""
    if args.threads is not None:
        if args.threads < 1:
            print(f'{command}: --threads must be at least 1, got {args.threads}',
                  file=sys.stderr)
            return 2
        import torch
        torch.set_num_threads(args.threads)
    if command == 'profile':
        return _profile(args)
    try:
        return _plan_packs(args)
    except threads.ThreadMismatch as e:
        print(f'plan: {e}', file=sys.stderr)
        return 2


def _plan_packs(args):
    """Plan one pack (PACK_DIR or one --pack) or a group (several --pack)."""
    packs = ([args.pack_dir] if args.pack_dir else []) + (args.pack or [])
    if len(packs) > 1:
        return _plan_group(args, packs)
    for key in ('profile', 'deadline_ms', 'frame_period_ms'):
        values = getattr(args, key)
        if values is not None and len(values) > 1:
            print(f'plan: one pack takes one --{key.replace("_", "-")}', file=sys.stderr)
            return 2
        setattr(args, key, values[0] if values else None)
    if not packs:
        print('plan: give PACK_DIR (or --pack, repeated, for a group)', file=sys.stderr)
        return 2
    args.pack_dir = packs[0]
    return _plan(args)


def _profile(args):
    pack_dir = Path(args.pack_dir)
    prof = profiler.profile(pack_dir, device=args.device, repeats=max(1, args.repeats),
                            progress=not args.no_progress, budget_mb=args.budget_mb)
    out = Path(args.out or pack_dir / 'PROFILE.json')
    save_profile(prof, out)
    print(json.dumps({'profile': str(out), 'mode': prof['mode'], 'threads': prof['threads'],
                      'resident_latency_ms': prof['resident_latency_ms'],
                      'weight_mb': mib(prof['weight_bytes']),
                      'read_mb_per_s': [p['mb_per_s'] for p in prof['disk']['points']],
                      'disk_rounds': len(prof['disk']['rounds']),
                      'io_mode': prof['disk']['mode'],
                      'activation_peak_mb': prof['activation_peak_mb']}))
    return 0


def _plan(args):
    if args.host_budget_mb:
        print(f'plan: --host-budget-mb {args.host_budget_mb:g} is not supported: this release '
              'has no pinned host middle tier (leave it at 0)', file=sys.stderr)
        return 2
    pack_dir = Path(args.pack_dir)
    prof_path = args.profile or (pack_dir / 'PROFILE.json')
    if args.profile is None and not Path(prof_path).is_file():
        print(f'plan: no profile given and {prof_path} does not exist: profiling now',
              file=sys.stderr)
        prof = profiler.profile(pack_dir, device=args.device, progress=True,
                                budget_mb=args.budget_mb)
        save_profile(prof, prof_path)
    else:
        prof = load_profile(prof_path)
        threads.check_profile(prof, where=str(prof_path))
    try:
        result = planner.plan(pack_dir, prof, budget_mb=args.budget_mb,
                              deadline_ms=args.deadline_ms,
                              frame_period_ms=args.frame_period_ms, device=args.device)
    except planner.PlanInfeasible as e:
        print(f'plan: infeasible: {e}', file=sys.stderr)
        print(json.dumps({'infeasible': True, **e.numbers()}))
        return 3
    out = Path(args.out or pack_dir / 'PLAN.yaml')
    result.details['profile']['path'] = str(prof_path)
    result.save(out)
    pictures = {} if args.no_plots else _pictures(args, pack_dir, prof, result, out)
    d = result.to_dict()
    print(json.dumps({'plan': str(out), 'predicted_latency_ms': d['predicted_latency_ms'],
                      'predicted_latency_range_ms': d['predicted_latency_range_ms'],
                      'threads': d['threads'],
                      'predicted_peak_weight_mb': d['predicted_peak_weight_mb'],
                      'fully_resident_mb': d['fully_resident']['weight_mb'],
                      'reduction_pct': d['reduction_pct'], 'overhead_ms': d['overhead_ms'],
                      'resident_units': len(d['resident_units']),
                      'arena_mb': d['predicted_arena_mb'], **pictures}))
    return 0


def _pictures(args, pack_dir, prof, result, out):
    """Draw the trade-off and the timeline (the executor's, else simulated); return paths."""
    from demand_layering_ros import plots
    stem = out.with_suffix('')
    d = result.to_dict()
    pictures = {'tradeoff': str(plots.tradeoff(d, f'{stem}_tradeoff.png'))}
    stats, source = None, 'simulated'
    if not args.simulate_timeline:
        try:
            stats = executor_timeline(pack_dir, result, device=args.device)
            source = 'executor' if stats else 'simulated'
        except Exception as e:  # the picture must not hide the plan: say so and simulate
            print(f'plan: executor run for the timeline failed ({type(e).__name__}: {e}); '
                  'drawing the simulated timeline', file=sys.stderr)
    if stats is not None:
        rows = stats.get('timeline') or []
    else:
        rows = planner.predict(pack_dir, prof, result, frame_period_ms=args.frame_period_ms,
                               timeline=True).timeline
    measured = f', measured {stats["latency_ms"]:.1f} ms' if stats else ''
    pictures['timeline'] = str(plots.timeline(
        rows, f'{stem}_timeline.png',
        title=f'{pack_dir.name} ({d["model"]}): {source} pass, predicted '
              f'{d["predicted_latency_ms"]:.1f} ms{measured}'))
    return pictures


def executor_timeline(pack_dir, plan, device='cpu', passes=2):
    """Run the executor with a plan; return its stats() after the last pass (with timeline)."""
    import torch
    from demand_layering_ros.runtime.model import DemandLayeredModel
    model = DemandLayeredModel(pack_dir, device=device, plan=plan.to_dict())
    try:
        x = model.detector.timing_input(1)
        with torch.no_grad():
            for _ in range(passes):
                model(x)
        return model.stats()
    finally:
        model.close()


def per_pack(values, n, flag):
    """Return one value per pack: none given, one for all, or one each (else ValueError)."""
    if not values:
        return [None] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise ValueError(f'{flag} takes one value per --pack ({n}) or one for all, '
                         f'got {len(values)}')
    return list(values)


def _group_profiles(args, packs):
    """Return {pack: profile dict}: given, PACK/PROFILE.json, or measured now and saved."""
    given = per_pack(args.profile, len(packs), '--profile')
    out = {}
    for pack, path in zip(packs, given):
        prof_path = Path(path) if path else Path(pack) / 'PROFILE.json'
        if path is None and not prof_path.is_file():
            print(f'plan: {prof_path} does not exist: profiling {pack} now', file=sys.stderr)
            prof = profiler.profile(pack, device=args.device, progress=True)
            save_profile(prof, prof_path)
        else:
            prof = load_profile(prof_path)
        out[pack] = prof
    return out


def _plan_group(args, packs):
    """Plan a group (several --pack); return the exit status (2: bad option, 3: infeasible)."""
    try:
        if len(set(packs)) != len(packs):
            raise ValueError('give each pack once')
        if args.host_budget_mb:
            raise ValueError(f'--host-budget-mb {args.host_budget_mb:g} is not supported')
        if not args.out:
            raise ValueError('a group plan needs --out PLAN.yaml')
        if args.profile and len(args.profile) == 1:
            raise ValueError('--profile takes one PROFILE.json per --pack')
        deadlines = per_pack(args.deadline_ms, len(packs), '--deadline-ms')
        periods = per_pack(args.frame_period_ms, len(packs), '--frame-period-ms')
    except ValueError as e:
        print(f'plan: {e}', file=sys.stderr)
        return 2
    profiles = _group_profiles(args, packs)
    try:
        result = planner.plan_group({p: p for p in packs}, profiles, budget_mb=args.budget_mb,
                                    deadlines=dict(zip(packs, deadlines)),
                                    periods=dict(zip(packs, periods)), device=args.device)
    except planner.PlanInfeasible as e:
        print(f'plan: infeasible: {e}', file=sys.stderr)
        print(json.dumps({'infeasible': True, **e.numbers()}))
        return 3
    result.save(args.out)
    d = result.to_dict()
    print(json.dumps({
        'plan': str(args.out), 'predicted_peak_weight_mb': d['predicted_peak_weight_mb'],
        'fully_resident_mb': d['fully_resident_mb'],
        'arena_mb': round(d['arena_bytes'] / (1 << 20), 3),
        'models': {n: {k: m.get(k) for k in ('predicted_latency_ms', 'predicted_response_ms',
                                             'deadline_ms', 'split_bytes')}
                   | {'resident_units': len(m['resident_units'])}
                   for n, m in d['models'].items()}}))
    return 0
