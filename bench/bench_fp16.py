# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
fp16 weight packs against fp32: bytes read, latency, weight memory, and what the photos show.

One model (default: the real COCO yolov3-tiny at 416x416) is packed three times (float32,
float16, bfloat16) and run in these configurations, in interleaved blocks so that load drift
on a shared machine hits all of them alike (medians reported):

  fp32 resident       load_resident(fp32 pack): the reference
  fp32 streamed       load(fp32 pack): every unit streamed through the smallest arena
  fp16 streamed       load(fp16 pack): half the bytes read; on the CPU each unit is converted
                      to float32 as it lands (on CUDA it computes in float16 from the arena)
  fp16 in memory      load(fp16 pack, budget = everything): units stay float16 in memory and
                      are converted each pass as they land (CPU only)
  fp16 resident       load_resident(fp16 pack): converted once (the fp16 pack's oracle)
  bf16 streamed/resident (bf16 compute)  a bfloat16 pack computed in bfloat16, no conversion
                      (CPU only: fast where the CPU has bf16 instructions, e.g. AVX512-BF16)
  fp32 pack as fp16   load(fp32 pack, dtype=float16): converted as it lands (CUDA only)

Per configuration: median pass latency, its ratio to fp32 resident, peak weight memory
(stats()['peak_weight_bytes'], or the model's tensors for a plain model), bytes read per pass.
The photo table compares each distinct computation with fp32 on Debian's photos: same classes,
smallest IoU of matched boxes, largest score change (the fp16 tests require IoU >= 0.9 and
0.02). The header says what the machine was doing (cores, load average before and after).

Usage: python bench/bench_fp16.py [--model NAME|SPEC] [--input-size HxW] [--device cpu|cuda]
       [--threads N] [--blocks N] [--repeats N] [--work DIR] [--json OUT.json]
       [--markdown OUT.md] [--no-photos]
About 1-2 minutes on two quiet cores (yolov3-tiny, 416x416, --threads 1, 5 blocks x 5 passes).
On CUDA (--device cuda) the float16 pack computes in float16 and the CPU-only rows are skipped.
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import configs  # noqa: E402
from demand_layering_ros import load, load_resident  # noqa: E402
from demand_layering_ros import pack as P  # noqa: E402
from demand_layering_ros.measure.machine import machine_info  # noqa: E402
from demand_layering_ros.models import assets  # noqa: E402
from demand_layering_ros.models.detector import read_image  # noqa: E402
from demand_layering_ros.sizes import MB  # noqa: E402
import torch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

# configuration -> (pack dtype, how it runs, compute dtype or None, devices)
CONFIGS = {
    'fp32 resident': (None, 'resident', None, ('cpu', 'cuda')),
    'fp32 streamed': (None, 'streamed', None, ('cpu', 'cuda')),
    'fp16 streamed': ('float16', 'streamed', None, ('cpu', 'cuda')),
    'fp16 in memory': ('float16', 'budget', None, ('cpu',)),
    'fp16 resident': ('float16', 'resident', None, ('cpu', 'cuda')),
    'bf16 streamed (bf16 compute)': ('bfloat16', 'streamed', torch.bfloat16, ('cpu',)),
    'bf16 resident (bf16 compute)': ('bfloat16', 'resident', torch.bfloat16, ('cpu',)),
    'fp32 pack as fp16 streamed': (None, 'streamed', torch.float16, ('cuda',)),
}


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def write_packs(entry, work):
    """Write the model's float32, float16 and bfloat16 packs (reused when present)."""
    packs = {}
    for dtype in (None, 'float16', 'bfloat16'):
        out = work / (dtype or 'float32')
        try:
            pack = P.Pack.open(out)
            if pack.stored_dtype != dtype or pack.manifest['source'].get('spec') != entry['spec']:
                raise P.PackError('another pack')
        except P.PackError:
            pack = P.write_pack(entry['spec'], out, weights=entry['weights'], seed=1,
                                input_size=entry['input_size'], progress=False, dtype=dtype)
        packs[dtype] = pack
    return packs


def build(name, packs, device):
    """Return (callable model, stats function or None, weight bytes of a plain model)."""
    dtype, how, compute, _ = CONFIGS[name]
    pack = packs[dtype]
    if how == 'resident':
        model = load_resident(pack.path, device=device, dtype=compute)
        held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return model, None, held
    budget = None
    if how == 'budget':
        probe = load(pack.path, device=device, dtype=compute)
        budget = (probe._engine.binding.convert_reserve + 2 * pack.total_bytes) / MB
        probe.close()
    model = load(pack.path, device=device, budget_mb=budget, dtype=compute)
    return model, model.stats, None


def model_input(det, device, dtype):
    x = det.timing_input().to(device)
    return x.to(dtype) if dtype is not None else x


def run_blocks(models, inputs, device, blocks, repeats):
    """Run every configuration `repeats` passes per block, blocks interleaved; return times."""
    times = {name: [] for name in models}
    with torch.no_grad():
        for name, (model, _, _) in models.items():
            model(inputs[name])                                    # warm-up
        for b in range(blocks):
            order = list(models) if b % 2 == 0 else list(reversed(models))
            for name in order:
                model = models[name][0]
                for _ in range(repeats):
                    sync(device)
                    t0 = time.perf_counter()
                    model(inputs[name])
                    sync(device)
                    times[name].append(time.perf_counter() - t0)
    return times


def photo_check(det, models, inputs_dtype, device):
    """Compare each distinct computation with fp32 resident on Debian's photos."""
    distinct = [n for n in models if n in ('fp16 resident', 'bf16 resident (bf16 compute)')]
    rows = {n: {'classes_same': True, 'min_iou': 1.0, 'max_score_change': 0.0, 'objects': 0}
            for n in distinct}
    with torch.no_grad():
        for photo in assets.DARKNET_PHOTOS:
            x, meta = det.preprocess([read_image(assets.photo(photo))])
            x = x.to(device)
            ref = det.postprocess([o.float() for o in models['fp32 resident'][0](x)], meta)[0]
            for n in distinct:
                xin = x.to(inputs_dtype[n]) if inputs_dtype[n] is not None else x
                got = det.postprocess([o.float() for o in models[n][0](xin)], meta)[0]
                r = rows[n]
                r['objects'] += len(ref)
                if sorted(ref.class_names) != sorted(got.class_names):
                    r['classes_same'] = False
                    continue
                if not len(ref):
                    continue
                iou = box_iou(ref.boxes, got.boxes)
                for i in range(len(ref)):
                    match = iou[i] * (got.class_ids == ref.class_ids[i])
                    j = int(match.argmax())
                    r['min_iou'] = min(r['min_iou'], float(match[j]))
                    r['max_score_change'] = max(r['max_score_change'],
                                                abs(float(ref.scores[i] - got.scores[j])))
    return rows


def tables(result):
    """Return the markdown tables of a result."""
    m = result['machine']
    size = 'x'.join(str(v) for v in result['input_size'])
    lines = [f"{result['model']} at {size}, {result['device']}, "
             f"{result['threads']} torch thread(s); {m['cpu']} ({m['cores']} cores), load "
             f"average {m['load_before']:.1f} before, {m['load_after']:.1f} after; "
             f"{result['blocks']} blocks x {result['repeats']} passes per configuration.", '',
             '| configuration | pack MB | read per pass MB | median ms | vs fp32 resident '
             '| peak weight MB |', '|---|---:|---:|---:|---:|---:|']
    base = result['rows']['fp32 resident']['median_ms']
    for name, r in result['rows'].items():
        lines.append(f"| {name} | {r['pack_mb']:.1f} | {r['read_mb_per_pass']:.1f} | "
                     f"{r['median_ms']:.1f} | {r['median_ms'] / base:.2f}x | "
                     f"{r['peak_weight_mb']:.1f} |")
    if result['photos']:
        lines += ['', "| against fp32 on Debian's photos | objects | same classes | "
                  'smallest IoU | largest score change |', '|---|---:|---|---:|---:|']
        for name, r in result['photos'].items():
            lines.append(f"| {name} | {r['objects']} | {'yes' if r['classes_same'] else 'NO'} "
                         f"| {r['min_iou']:.4f} | {r['max_score_change']:.4f} |")
    return '\n'.join(lines) + '\n'


def bench(args):
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    load_before = os.getloadavg()[0]
    size = [int(v) for v in args.input_size.lower().split('x')] if args.input_size else None
    key, entry = configs.resolve_models([args.model], args.device, size)[0]
    work = Path(args.work or tempfile.mkdtemp(prefix='bench_fp16_')) / key
    packs = write_packs(entry, work)
    names = [n for n, c in CONFIGS.items() if device.type in c[3]]
    models, inputs, inputs_dtype = {}, {}, {}
    det = packs[None].build_detector(meta=True)
    for name in names:
        models[name] = build(name, packs, device)
        compute = CONFIGS[name][2]
        if compute is None and device.type == 'cuda' and CONFIGS[name][0] == 'float16':
            compute = torch.float16                    # CUDA computes in the stored dtype
        inputs_dtype[name] = compute
        inputs[name] = model_input(det, device, compute)
    before = {n: (m[1]()['io_bytes'], m[1]()['passes']) for n, m in models.items() if m[1]}
    times = run_blocks(models, inputs, device, args.blocks, args.repeats)
    rows = {}
    for name in names:
        model, stats, held = models[name]
        pack = packs[CONFIGS[name][0]]
        read = 0.0
        if stats is not None:
            st = stats()
            io0, n0 = before[name]
            read = (st['io_bytes'] - io0) / max(1, st['passes'] - n0) / MB
            held = st['peak_weight_bytes']
        rows[name] = {'median_ms': statistics.median(times[name]) * 1e3,
                      'min_ms': min(times[name]) * 1e3, 'passes': len(times[name]),
                      'pack_mb': pack.file_size / MB, 'read_mb_per_pass': read,
                      'peak_weight_mb': held / MB}
    photos = photo_check(det, models, inputs_dtype, device) \
        if entry.get('real_weights') and not args.no_photos else {}
    return {'model': key, 'spec': entry['spec'], 'input_size': entry['input_size'],
            'device': str(device), 'threads': args.threads, 'blocks': args.blocks,
            'repeats': args.repeats, 'rows': rows, 'photos': photos,
            'machine': dict(machine_info(device), load_before=load_before,
                            load_after=os.getloadavg()[0])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default='yolov3-tiny',
                    help='a bench/configs.py model name or FAMILY:ARG (default: the real '
                         'yolov3-tiny); its input size comes from bench/configs.py')
    ap.add_argument('--input-size', default='416x416',
                    help="HxW (default 416x416; '' : the model's bench/configs.py size)")
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--blocks', type=int, default=5)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--work', default=None, help='where packs are written (kept, reused)')
    ap.add_argument('--no-photos', action='store_true', help='skip the photo comparison')
    ap.add_argument('--json', default=None)
    ap.add_argument('--markdown', default=None)
    args = ap.parse_args(argv)
    result = bench(args)
    text = tables(result)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
