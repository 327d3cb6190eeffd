# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The `detect` command: run one model on image files and print one JSON line per image.

It is the quickest way to see that a model, its weights and its pre/post-processing agree with
what a person sees in a photo, and the same path the node uses (Detector.detect), so its output
is the reference for the demand-layered executor (`--pack`).
"""

import json
import sys

from demand_layering_ros import load, load_resident, load_shared
from demand_layering_ros.models.detector import read_image
from demand_layering_ros.pack import Pack
from demand_layering_ros.runtime.binding import compute_dtype


def add_arguments(parser, command):
    """Add the `detect` options."""
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files (jpg, png)')
    parser.add_argument('--model', metavar='SPEC',
                        help='torchvision:NAME, darknet:PATH_TO_CFG (or a Debian cfg name '
                             'such as darknet:yolov3), or FAMILY:ARG from an entry point')
    src = parser.add_mutually_exclusive_group()
    src.add_argument('--weights', metavar='FILE',
                     help='weights: Darknet .weights, .safetensors, or a torch state dict')
    src.add_argument('--seed', type=int, default=None,
                     help='random weights from this seed (the default without --weights: 0)')
    parser.add_argument('--input-size', metavar='HxW', default=None,
                        help='network input size, e.g. 416x416 (default: the model size)')
    parser.add_argument('--names', metavar='FILE', default=None,
                        help='class names, one per line (Darknet models)')
    parser.add_argument('--threshold', type=float, default=0.25, help='score threshold')
    parser.add_argument('--nms-iou', type=float, default=0.45, help='NMS IoU threshold')
    parser.add_argument('--max-detections', type=int, default=100)
    parser.add_argument('--batch', type=int, default=4,
                        help='images per forward pass (default 4)')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument('--fp16', action='store_true',
                        help='float16 inference (CUDA only; with --pack: whatever the pack '
                             'stores, see `pack --dtype`)')
    pack = parser.add_argument_group('demand layering (weights streamed from a pack)')
    pack.add_argument('--pack', metavar='PACK_DIR', default=None, action='append',
                      help='run from a weight pack instead of --model/--weights; repeat it to '
                           'run several models under one budget (one line per image and '
                           'model, with "model": the pack directory)')
    pack.add_argument('--budget-mb', type=float, default=None, metavar='B',
                      help='weight memory budget in MiB (with several packs: of them all)')
    pack.add_argument('--keep-free-mb', type=float, default=0.0, metavar='MB',
                      help='leave this much memory free: the budget follows free memory '
                           '(capped by --budget-mb, never below the smallest plan; 0: off)')
    pack.add_argument('--plan', metavar='PLAN', default=None,
                      help='a PLAN.yaml from `plan` (with several packs: a group plan)')
    pack.add_argument('--resident', action='store_true',
                      help='load every weight of the pack (the baseline/oracle)')
    pack.add_argument('--stats', action='store_true',
                      help='print executor statistics as JSON on stderr after each batch '
                           '(with predicted_latency_ms, measured_latency_ms, latency_ratio)')


def _load_from_pack(args):
    """
    Return (detector, stats_fn) for a weight pack (--pack); stats_fn() -> dict or None.

    The model computes in the pack's dtype on CUDA (float16 straight from the arena) and in
    float32 on the CPU; --fp16 (CUDA) asks for float16 whatever the pack stores, a float32
    pack's weights being converted as they land.
    """
    import torch
    dtype = torch.float16 if args.fp16 else None
    pack = Pack.open(args.pack)
    if args.resident:
        det = pack.build_detector(device=args.device, meta=True)
        dtype = compute_dtype(pack, args.device, dtype)
        if dtype is not None:
            det.set_dtype(dtype)
        det.model = load_resident(pack, device=args.device, dtype=dtype)
        return det, lambda: None
    model = load(pack, device=args.device, budget_mb=args.budget_mb, plan=args.plan,
                 dtype=dtype, keep_free_mb=args.keep_free_mb)
    return model.detector, model.stats


def _build(args):
    from demand_layering_ros.models import registry
    if args.pack:
        if args.model or args.weights or args.seed is not None:
            raise ValueError('--pack replaces --model/--weights/--seed; give one or the other')
        return _load_from_pack(args)
    if not args.model:
        raise ValueError('give --model SPEC (or --pack PACK_DIR)')
    if args.budget_mb is not None or args.plan or args.resident or args.keep_free_mb:
        raise ValueError('--budget-mb, --keep-free-mb, --plan and --resident need --pack')
    if args.weights is None:
        seed = 0 if args.seed is None else args.seed
        print(f'detect: no --weights, using random weights (seed {seed})', file=sys.stderr)
    else:
        seed = None
    kwargs = {'names': args.names} if args.names else {}
    det = registry.build(args.model, weights=args.weights, seed=seed,
                         input_size=args.input_size, device=args.device, **kwargs)
    return det, lambda: None


def run(args, command):
    """Run the detector on every image and print JSON lines; returns the exit status."""
    if args.batch < 1:
        print('detect: error: --batch must be at least 1', file=sys.stderr)
        return 2
    packs = args.pack or []
    if len(packs) > 1:
        return _run_group(args, packs)
    args.pack = packs[0] if packs else None
    try:
        import torch
        if args.fp16 and not str(args.device).startswith('cuda'):
            raise ValueError('--fp16 needs a CUDA device (--device cuda)' + (
                '; on the CPU a float16 pack runs without it, each unit converted to float32 '
                'as it lands' if args.pack else ''))
        if str(args.device).startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'--device {args.device}: CUDA is not available here')
        det, stats_fn = _build(args)
        warned = False
        if args.fp16 and not args.pack:
            det.half()
        for start in range(0, len(args.images), args.batch):
            paths = args.images[start:start + args.batch]
            images = [read_image(p) for p in paths]
            results = det.detect(images, score_threshold=args.threshold,
                                 nms_iou=args.nms_iou, max_detections=args.max_detections)
            for path, res in zip(paths, results):
                print(json.dumps({'image': path, 'detections': res.to_json()}), flush=True)
            stats = stats_fn()
            if args.stats:
                print(json.dumps({'stats': _jsonable(stats)}), file=sys.stderr,
                      flush=True)
            warned = warned or _warn_drift(stats)
    except (ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'detect: error: {msg}', file=sys.stderr)
        return 2
    return 0


def _load_group(args, packs):
    """Return ([(pack as given, detector)], stats_fn) for several packs (one budget)."""
    if len(set(packs)) != len(packs):
        raise ValueError('give each --pack once')
    if args.model or args.weights or args.seed is not None:
        raise ValueError('--pack replaces --model/--weights/--seed; give one or the other')
    if args.resident:
        out = []
        for p in packs:
            det = Pack.open(p).build_detector(device=args.device, meta=True)
            det.model = load_resident(p, device=args.device)
            out.append((p, det))
        return out, lambda: None
    models = load_shared({p: p for p in packs}, device=args.device, budget_mb=args.budget_mb,
                         plan=args.plan, keep_free_mb=args.keep_free_mb)
    return [(p, models[p].detector) for p in packs], models.stats


def _run_group(args, packs):
    """Run every model on each batch of images; one JSON line per (image, model)."""
    try:
        if args.batch < 1:
            raise ValueError('--batch must be at least 1')
        if args.fp16:
            raise ValueError('--fp16 runs one model resident; not with several --pack')
        import torch
        if str(args.device).startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'--device {args.device}: CUDA is not available here')
        dets, stats_fn = _load_group(args, packs)
        for start in range(0, len(args.images), args.batch):
            paths = args.images[start:start + args.batch]
            images = [read_image(p) for p in paths]
            results = [det.detect(images, score_threshold=args.threshold,
                                  nms_iou=args.nms_iou, max_detections=args.max_detections)
                       for _, det in dets]
            for i, path in enumerate(paths):
                for (name, _), res in zip(dets, results):
                    print(json.dumps({'image': path, 'model': name,
                                      'detections': res[i].to_json()}), flush=True)
            if args.stats:
                print(json.dumps({'stats': _jsonable(stats_fn())}), file=sys.stderr,
                      flush=True)
    except (ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'detect: error: {msg}', file=sys.stderr)
        return 2
    return 0


def _warn_drift(stats):
    """Warn once, in one line, when the passes drift beyond 10% from the plan; return if so."""
    if not stats or not stats.get('latency_drift'):
        return False
    print(f'detect: warning: passes take {stats["measured_latency_ms"]:.1f} ms (median of the '
          f'recent one-image passes), the plan expected {stats["expected_latency_ms"]:.1f} ms '
          f'(x{stats["latency_ratio"]:.2f}): profile and plan again on this machine',
          file=sys.stderr, flush=True)
    return True


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
