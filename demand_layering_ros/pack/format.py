# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What a pack is made of: file names, alignments, dtypes, the Unit/TensorInfo records, PackError.

Every other module of the pack reads or writes these; keeping them in one place means the
writer and the reader cannot disagree about a name, an alignment or a dtype code.
"""

from dataclasses import dataclass, field
import os
import re

from demand_layering_ros.sizes import PAGE

FORMAT = 'demand_layering_ros.pack'
VERSION = 1
ALIGNMENT = PAGE
# Inside a unit every tensor starts at a multiple of this, from the data start (itself page
# aligned): a view in the arena is then aligned like a tensor of its own in CUDA's caching
# allocator as far as cuBLASLt's alignment hints go (256 B), so it gets the same kernels as the
# resident model. Packs written with 64 (before) still load: the manifest records the value.
TENSOR_ALIGNMENT = 256
MERGE_BYTES = 64 << 10       # a unit this small merges into the unit always called right before
PAD_PREFIX = '__dlr_pad__.'
WEIGHTS_FILE = 'weights.safetensors'
MANIFEST_FILE = 'manifest.json'
EXTRA_FILE = 'extra_buffers.safetensors'
CFG_FILE = 'model.cfg'
NAMES_FILE = 'model.names'
MAX_HEADER_BYTES = 100 << 20

# manifest dtype name -> safetensors dtype code
ST_CODES = {
    'float64': 'F64', 'float32': 'F32', 'float16': 'F16', 'bfloat16': 'BF16',
    'int64': 'I64', 'int32': 'I32', 'int16': 'I16', 'int8': 'I8',
    'uint64': 'U64', 'uint32': 'U32', 'uint16': 'U16', 'uint8': 'U8', 'bool': 'BOOL',
    'float8_e4m3fn': 'F8_E4M3', 'float8_e5m2': 'F8_E5M2', 'complex64': 'C64',
}
_NAME_PART = re.compile(r'^[A-Za-z0-9_\-:+@]+$')
# what `pack --dtype` may store floating point weights as (manifest 'stored_dtype')
STORED_DTYPES = ('float32', 'float16', 'bfloat16')


def dtype_of(name):
    """Return the torch dtype for a manifest dtype name ('float32')."""
    import torch
    if name not in ST_CODES or not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f'unsupported dtype {name!r}')
    return getattr(torch, name)


def dtype_name(dtype):
    """Return the manifest name of a torch dtype (torch.float32 -> 'float32')."""
    name = str(dtype).replace('torch.', '')
    if name not in ST_CODES:
        raise ValueError(f'dtype {dtype} cannot be stored in a pack '
                         f'(supported: {", ".join(ST_CODES)})')
    return name


def stored_tensor(t, dtype):
    """
    Return tensor `t` as a pack stores it with stored dtype `dtype` (a torch dtype or None).

    Floating point tensors are cast (float32 -> float16 halves the bytes); integer and bool
    tensors (counters, indices) keep their dtype; None keeps every tensor as the model has it.
    """
    if dtype is None or not t.is_floating_point() or t.dtype == dtype:
        return t
    return t.to(dtype)


def itemsize(name):
    """Return the element size in bytes of a manifest dtype name."""
    return dtype_of(name).itemsize


def full_name(module_name, attr):
    """Return the state-dict name of `attr` of the module `module_name` ('' is the root)."""
    return f'{module_name}.{attr}' if module_name else attr


def safe_file_name(name):
    """Return True when `name` is a plain file name inside the pack directory."""
    return (isinstance(name, str) and name not in ('', '.', '..') and '/' not in name
            and '\\' not in name and '\x00' not in name and not os.path.isabs(name))


def valid_tensor_name(name):
    """Return True when `name` is dotted [A-Za-z0-9_-:+@] parts (no '/', no '..')."""
    parts = name.split('.') if isinstance(name, str) else ['']
    return all(p and p != '..' and _NAME_PART.match(p) for p in parts)


class PackError(ValueError):
    """A pack is malformed or damaged; the message names the pack, the unit and the offset."""

    def __init__(self, message, pack=None, unit=None, offset=None):
        """
        Keep the location as attributes and put what is known of it in the message.

        'pack P: unit 'U', offset N: why' when both are known; a part not known is left out
        ('pack P: why' for a pack that cannot be opened at all), never shown as a placeholder.
        """
        self.pack = str(pack) if pack is not None else None
        self.unit = unit
        self.offset = offset
        where = [f'unit {unit!r}'] if unit is not None else []
        if offset is not None:
            where.append(f'offset {offset}')
        place = f'pack {self.pack}' + (': ' + ', '.join(where) if where else '')
        super().__init__(f'{place}: {message}')


@dataclass
class TensorInfo:
    """One stored tensor: where it lives in the weights file and where it goes in the model."""

    name: str
    dtype: str
    shape: list
    offset: int              # absolute byte offset in the weights file
    nbytes: int
    module: str
    attr: str
    kind: str                # 'parameter' or 'buffer'
    aliases: list = field(default_factory=list)   # other state-dict names of the same tensor


@dataclass
class Unit:
    """
    One load unit: the tensors of one or more modules, read with a single aligned extent.

    calls / first_call / last_call refer to positions in the pack's `call_order`. last_call is
    the last position that starts while one of the unit's modules is still running (the same as
    its last call unless modules nest), so the unit may be dropped once position last_call + 1
    begins. Units never called in the trace have calls == 0 and first_call/last_call None.
    used_outside_forward: some tensor was used by a torch op while none of its owning modules
    was running (e.g. read by a parent's code); such units must stay resident.
    """

    index: int
    name: str
    modules: list
    offset: int
    length: int
    nbytes: int
    checksum: str
    calls: int
    first_call: object
    last_call: object
    tensors: list
    used_outside_forward: bool = False

    @property
    def end(self):
        """Return the first byte offset after the unit's extent."""
        return self.offset + self.length
