# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The `pack` command: write a model's weight pack, or check an existing one end to end."""

import json

from demand_layering_ros import direct_io
from demand_layering_ros.pack.format import MERGE_BYTES, STORED_DTYPES
from demand_layering_ros.pack.store import Pack
from demand_layering_ros.pack.writer import write_pack


def add_arguments(parser, command):
    """Add the `pack` command's options."""
    parser.add_argument('--model', help='model spec: torchvision:NAME, darknet:CFG, FAMILY:ARG')
    parser.add_argument('--weights', default=None, help='weights file (default: seeded random)')
    parser.add_argument('--seed', type=int, default=None, help='seed for random weights')
    parser.add_argument('--input-size', default=None, help='model input size HxW, e.g. 416x416')
    parser.add_argument('--out', help='pack directory to write')
    parser.add_argument('--merge-bytes', type=int, default=MERGE_BYTES,
                        help='merge units up to this size into the unit called right before '
                             '(0: one unit per module)')
    parser.add_argument('--dtype', choices=STORED_DTYPES, default=None,
                        help='store floating point weights as this dtype (float16/bfloat16: '
                             'half the bytes to read; default: as the model)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip reading the pack back and comparing it with the model')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='allow reading a pickled model file (an Ultralytics .pt runs code '
                             'when loaded): only for a file from a source you trust; the pack '
                             'written holds no pickle')
    parser.add_argument('--check', metavar='PACK_DIR', default=None,
                        help='instead of writing: validate PACK_DIR and verify every checksum')


def run(args, command):
    """Write (or check) a pack; print a JSON summary line."""
    if args.check:
        pack = Pack.open(args.check)
        with pack.reader() as reader:
            buf = direct_io.aligned_empty(max([u.length for u in pack.units] + [0]))
            for u in pack.units:
                pack.read_unit(reader, u, buf).result()
            summary = dict(pack.summary(), io_mode=reader.mode, checked='ok')
        print(json.dumps(summary))
        return 0
    if not args.model or not args.out:
        raise SystemExit('pack: --model and --out are required (or --check PACK_DIR)')
    from demand_layering_ros.models.detector import UntrustedPickle
    try:
        pack = write_pack(args.model, args.out, weights=args.weights, seed=args.seed,
                          input_size=args.input_size, merge_bytes=args.merge_bytes,
                          verify=not args.no_verify, dtype=args.dtype,
                          trust_pickle=args.trust_pickle)
    except UntrustedPickle as e:
        raise SystemExit(f'pack: refused: {e}') from None
    print(json.dumps(pack.summary()))
    return 0
