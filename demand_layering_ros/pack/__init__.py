# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Weight packs: a model's weights on SSD laid out in execution order, one aligned extent per unit.

Demand Layering loads each layer's weights right before the layer runs, so the file must let the
reader fetch "the next unit" with one large aligned O_DIRECT read. A pack is a directory:

  weights.safetensors  standard safetensors (readable by `safetensors.torch.load_file`), written
                       by our own writer so that the tensors of each load unit are contiguous,
                       units follow first use, and every unit extent starts at a 4096-byte offset
                       and is padded to a 4096 multiple (padding tensors `__dlr_pad__.<n>`, uint8);
  manifest.json        format version, model constructor arguments, the traced call order and
                       the units (offset, length, xxh3_64 checksum, tensors);
  model.cfg            (darknet) the cfg text the model was built from;
  extra_buffers.safetensors  non-persistent buffers needed to run (absent when there are none).

The modules, in the order a pack is made and used:
  format    names, alignments, dtypes, Unit/TensorInfo, PackError;
  tracing   `trace` the call order of weight-owning modules, `group_units` into load units;
  writer    `write_pack` / `write_pack_from_module`: layout and the safetensors writer;
  manifest  validation of a manifest and of the weights file against it;
  store     `Pack.open` and the executor's `units`, `read_unit`, `verify_unit`, zero-copy `views`;
  command   the `pack` command line.
No pickle anywhere.
"""

from demand_layering_ros.pack.format import (ALIGNMENT, CFG_FILE, dtype_name, dtype_of,
                                             EXTRA_FILE, FORMAT, itemsize, MANIFEST_FILE,
                                             MAX_HEADER_BYTES, MERGE_BYTES, NAMES_FILE,
                                             PackError, PAD_PREFIX, ST_CODES, STORED_DTYPES,
                                             stored_tensor, TENSOR_ALIGNMENT, TensorInfo, Unit,
                                             VERSION, WEIGHTS_FILE)
from demand_layering_ros.pack.store import Pack, unit_table
from demand_layering_ros.pack.tracing import group_units, Trace, trace, UnitPlan
from demand_layering_ros.pack.writer import write_pack, write_pack_from_module

__all__ = [
    'ALIGNMENT', 'CFG_FILE', 'dtype_name', 'dtype_of', 'EXTRA_FILE', 'FORMAT', 'group_units',
    'itemsize', 'MANIFEST_FILE', 'MAX_HEADER_BYTES', 'MERGE_BYTES', 'NAMES_FILE', 'Pack',
    'PackError', 'PAD_PREFIX', 'ST_CODES', 'STORED_DTYPES', 'stored_tensor',
    'TENSOR_ALIGNMENT', 'TensorInfo', 'trace', 'Trace', 'Unit', 'unit_table', 'UnitPlan',
    'VERSION', 'WEIGHTS_FILE', 'write_pack', 'write_pack_from_module',
]
