# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
fp16 (and bf16) weight packs against fp32 on one model: what half the bytes buys on a device.

For each stored dtype the pack is written with the `pack` command (`--dtype`; a dtype it does
not support is reported as skipped), and the model is timed resident and fully streamed (the
smallest arena) on one device, median of the passes after a warm-up. Each row also has the
disk's sequential O_DIRECT bandwidth over that pack and the simple bound of a streamed pass,
max(reading every byte once at that bandwidth, the resident pass): on a GPU a streamed pass is
bound by the disk, so half the bytes should be close to half the time.

Usage: python -m bench.gpu_dtype --model yolov3 [--input-size HxW] [--device cuda:0]
       [--dtypes float32,float16,bfloat16] [--fp32-pack DIR] [--work DIR] [--passes 10]
       [--json OUT.json] [--markdown FILE (the table is appended)]
"""

import argparse
import json
from pathlib import Path
import statistics
import subprocess
import sys
import time

from bench.configs import resolve_models
from bench.machine import disk_bandwidth
from demand_layering_ros import atomic, load, load_resident
from demand_layering_ros.pack import Pack
from demand_layering_ros.sizes import mib


def pack_supports_dtype():
    """Return True when the `pack` command has --dtype (fp16/bf16 packs)."""
    out = subprocess.run([sys.executable, '-m', 'demand_layering_ros', 'pack', '--help'],
                         capture_output=True, text=True, check=False)
    return '--dtype' in out.stdout


def write(src, dtype, out):
    """Write the pack of `src` stored as `dtype` (None: the model's own) with the CLI."""
    argv = [sys.executable, '-m', 'demand_layering_ros', 'pack', '--model', src['spec'],
            '--seed', '0', '--out', str(out), '--no-verify']
    if src.get('weights'):
        argv += ['--weights', src['weights']]
    if src.get('input_size'):
        argv += ['--input-size', 'x'.join(str(v) for v in src['input_size'])]
    if dtype is not None:
        argv += ['--dtype', dtype]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return Pack.open(out)


def model_dtype(model):
    """Return the dtype the model computes in (its first floating parameter's)."""
    import torch
    for p in getattr(model, 'module', model).parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def timed(model, x, device, warmup, passes):
    """Return the median ms of model(x) after `warmup` passes (synchronised on CUDA)."""
    import torch
    from demand_layering_ros.measure.machine import sync
    x = x.to(device=device, dtype=model_dtype(model)) if x.is_floating_point() else x
    times = []
    with torch.no_grad():
        for i in range(warmup + passes):
            sync(device)
            t = time.perf_counter()
            model(x)
            sync(device)
            if i >= warmup:
                times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def measure(pk, device, warmup, passes):
    """Return one row: bytes, disk bandwidth, resident and fully streamed pass medians."""
    x = pk.build_detector(device=device, meta=True).timing_input(1)
    bw = disk_bandwidth(pk.weights_path)
    row = {'stored_dtype': sorted({t.dtype for u in pk.units for t in u.tensors
                                   if t.kind == 'parameter'}),
           'pack_mb': mib(pk.total_bytes, 1), 'disk_mb_per_s': mib(bw, 0) if bw else None}
    ref = load_resident(pk.path, device=device)
    row['resident_ms'] = round(timed(ref, x, device, warmup, passes), 2)
    del ref
    m = load(pk.path, device=device)
    row['streamed_ms'] = round(timed(m, x, device, warmup, passes), 2)
    st = m.stats()
    m.close()
    row.update(stall_ms=round(st['stall_ms'], 2), peak_weight_mb=mib(st['peak_weight_bytes'], 1),
               staging=st['staging'])
    if bw:
        row['read_all_ms'] = round(1e3 * pk.total_bytes / bw, 2)
        row['bound_ms'] = max(row['read_all_ms'], row['resident_ms'])
        row['streamed_over_bound'] = round(row['streamed_ms'] / row['bound_ms'], 2)
    return row


def table(model, device, rows):
    """Return the markdown table of the rows."""
    lines = [f'\n### fp16 against fp32 packs: {model} on {device}\n',
             '| stored | pack MB | disk MB/s | read all ms | resident ms | streamed ms | '
             'stall ms | × max(read all, resident) | peak weight MB |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["dtype"]} | {r["error"]} |||||||')
            continue
        lines.append(f'| {r["dtype"]} | {r["pack_mb"]} | {r["disk_mb_per_s"]} | '
                     f'{r.get("read_all_ms")} | {r["resident_ms"]} | {r["streamed_ms"]} | '
                     f'{r["stall_ms"]} | {r.get("streamed_over_bound")} | '
                     f'{r["peak_weight_mb"]} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Write and time each dtype's pack; print the table; return 0 (1 if nothing was timed)."""
    ap = argparse.ArgumentParser(prog='python -m bench.gpu_dtype', description=__doc__)
    ap.add_argument('--model', default='yolov3', help='a bench model key or a spec')
    ap.add_argument('--input-size', default=None)
    ap.add_argument('--device', default='cuda:0')
    ap.add_argument('--dtypes', default='float32,float16,bfloat16')
    ap.add_argument('--fp32-pack', default=None, help='reuse this fp32 pack of the model')
    ap.add_argument('--work', default='/tmp/dlr-gpu-dtype')
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--passes', type=int, default=10)
    ap.add_argument('--json', default=None)
    ap.add_argument('--markdown', default=None)
    args = ap.parse_args(argv)
    from demand_layering_ros.models import registry
    size = registry.parse_input_size(args.input_size)
    key, src = resolve_models([args.model], args.device, size)[0]
    halves = pack_supports_dtype()
    rows = []
    for dtype in [d.strip() for d in args.dtypes.split(',') if d.strip()]:
        row = {'dtype': dtype}
        t0 = time.perf_counter()
        try:
            if dtype != 'float32' and not halves:
                raise RuntimeError('skipped: this `pack` has no --dtype')
            if dtype == 'float32' and args.fp32_pack:
                pk = Pack.open(args.fp32_pack)
            else:
                pk = write(src, None if dtype == 'float32' else dtype,
                           Path(args.work) / f'{key}-{dtype}')
            row.update(measure(pk, args.device, args.warmup, args.passes))
        except Exception as e:  # noqa: B902 - one dtype failing must not hide the others
            row['error'] = f'{type(e).__name__}: {e}'[:300]
        row['seconds'] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    text = table(key, args.device, rows)
    print(text)
    result = {'model': key, 'spec': src['spec'], 'input_size': src['input_size'],
              'device': args.device, 'passes': args.passes, 'rows': rows}
    if args.json:
        atomic.write_json(args.json, result)
    if args.markdown:
        with open(args.markdown, 'a') as f:
            f.write(text)
    return 0 if any('error' not in r for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
