# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
An opened pack: its units, and reading them back as checked, zero-copy tensors.

`Pack.open` validates a pack directory (every byte range, name and size is checked before any
data reaches a model) and gives the executor `units`, `read_unit`, `verify_unit` and zero-copy
`views`. No pickle anywhere.
"""

from dataclasses import asdict, fields
import json
import os
from pathlib import Path
from typing import Any, Union

from demand_layering_ros import direct_io
from demand_layering_ros.pack.format import (dtype_of, MANIFEST_FILE, PackError, TensorInfo,
                                             Unit)
from demand_layering_ros.pack.manifest import validate_manifest, validate_weights_file


class Pack:
    """
    An opened, validated pack.

    Attributes: path (directory), manifest (dict), units (list[Unit]), weights_path,
    file_size, data_offset, call_order, uncalled_units, aliases ({alias: stored name}),
    module_unit ({module name: unit index}, aliases of module paths included).
    """

    def __init__(self, path, manifest):
        """Use Pack.open(path); this constructor does not validate."""
        self.path = Path(path)
        self.manifest = manifest
        tfields = [f.name for f in fields(TensorInfo)]
        ufields = [f.name for f in fields(Unit) if f.name != 'tensors']
        self.units = [Unit(**{k: u[k] for k in ufields if k in u},
                           tensors=[TensorInfo(**{k: t[k] for k in tfields if k in t})
                                    for t in u['tensors']])
                      for u in manifest['units']]
        self.weights_path = self.path / manifest['weights_file']
        self.file_size = manifest['file_size']
        self.data_offset = manifest['data_offset']
        self.call_order = manifest['call_order']
        self.uncalled_units = manifest['uncalled_units']
        self.aliases = manifest.get('aliases', {})
        self.module_unit = {}
        for u in self.units:
            for m in u.modules:
                self.module_unit[m] = u.index
        for alias, name in self.aliases.items():
            for u in self.units:
                for t in u.tensors:
                    if t.name == name:
                        self.module_unit.setdefault(alias.rpartition('.')[0], u.index)

    def __repr__(self):
        """Describe the pack briefly."""
        return (f'Pack({str(self.path)!r}, units={len(self.units)}, '
                f'bytes={self.file_size}, spec={self.manifest["model"].get("spec")!r})')

    @classmethod
    def open(cls, path: Union[str, os.PathLike]) -> 'Pack':  # noqa: A003 - the design's name
        """Read and validate a pack directory; raise PackError naming what is wrong."""
        path = Path(path)
        mpath = path / MANIFEST_FILE
        if not path.is_dir():
            raise PackError('no such pack directory', pack=path)
        if not mpath.is_file():
            raise PackError(f'missing {MANIFEST_FILE} (not a pack, or its writing did not '
                            'finish)', pack=path)
        try:
            with open(mpath, 'rb') as f:
                manifest = json.loads(f.read().decode('utf-8'))
        except (ValueError, UnicodeDecodeError) as e:
            raise PackError(f'{MANIFEST_FILE} is not valid JSON: {e}', pack=path) from None
        validate_manifest(path, manifest)
        pack = cls(path, manifest)
        validate_weights_file(pack)
        return pack

    @property
    def stored_dtype(self):
        """
        Return the dtype name floating point weights were stored as, or None: as the model.

        A 'float16' or 'bfloat16' pack holds half the bytes of the float32 model it was written
        from (`pack --dtype`); packs written before the key existed read as None.
        """
        return self.manifest.get('stored_dtype')

    @property
    def total_bytes(self):
        """Return the sum of all unit extents (what streaming the whole pack reads)."""
        return sum(u.length for u in self.units)

    def unit(self, name_or_index):
        """Return a unit by index or name."""
        if isinstance(name_or_index, int):
            return self.units[name_or_index]
        for u in self.units:
            if u.name == name_or_index:
                return u
        raise KeyError(f'pack {self.path}: no unit named {name_or_index!r}')

    def reader(self, **kwargs: Any) -> direct_io.Reader:
        """Return a direct_io.Reader over the weights file (kwargs as Reader)."""
        return direct_io.Reader(self.weights_path, **kwargs)

    def _checksum_error(self, unit, got):
        return PackError(f'checksum mismatch over [{unit.offset}, {unit.end}) '
                         f'({self.manifest["checksum_algorithm"]} {got}, manifest says '
                         f'{unit.checksum}): the weights file is damaged',
                         self.path, unit.name, unit.offset)

    def verify_unit(self, unit, buf):
        """Check a unit's checksum over buf[:unit.length]; raise PackError on mismatch."""
        mv = direct_io.as_memoryview(buf)
        if mv.nbytes < unit.length:
            raise PackError(f'buffer holds {mv.nbytes} bytes, unit extent is {unit.length}',
                            self.path, unit.name, unit.offset)
        got = direct_io.checksum(mv[:unit.length])
        if got != unit.checksum:
            raise self._checksum_error(unit, got)

    def read_unit(self, reader, unit, dest, verify=True):
        """
        Queue the read of one unit's extent into dest[:unit.length]; return a ReadFuture.

        dest: page-aligned uint8 tensor (aligned_empty), or a slice of one at a PAGE multiple.
        With verify=True the checksum is computed in the reader's verify thread as the chunks
        arrive; a mismatch makes the future raise PackError (pack, unit, offset), so damaged
        bytes never reach a model as long as callers wait on the future before using `views`.
        """
        if verify:
            return reader.submit(unit.offset, unit.length, dest, expected_checksum=unit.checksum,
                                 checksum_error=lambda got: self._checksum_error(unit, got))
        return reader.submit(unit.offset, unit.length, dest)

    def views(self, unit, buf):
        """
        Return {tensor name: tensor} as zero-copy views over a buffer holding the unit's extent.

        buf: uint8 tensor (CPU, pinned or CUDA) whose byte 0 is the unit's first byte. Alias
        names map to the same view.
        """
        import torch
        if not isinstance(buf, torch.Tensor):
            buf = torch.frombuffer(buf, dtype=torch.uint8)
        if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() < unit.length:
            raise PackError(f'view buffer must be 1-D uint8 with >= {unit.length} bytes, got '
                            f'{buf.dtype} {tuple(buf.shape)}', self.path, unit.name, unit.offset)
        out = {}
        for t in unit.tensors:
            start = t.offset - unit.offset
            v = buf[start:start + t.nbytes].view(dtype_of(t.dtype)).reshape(t.shape)
            out[t.name] = v
            for a in t.aliases:
                out[a] = v
        return out

    def load_state_dict(self, reader=None, verify=True, pin=False):
        """
        Read every unit (O_DIRECT) into one aligned buffer; return the state dict as views.

        The dict includes alias names (tied tensors) and no padding; all tensors share one
        buffer, so its memory is the pack's total extent size.
        """
        own = reader is None
        reader = reader or self.reader()
        try:
            buf = direct_io.aligned_empty(self.total_bytes, pin=pin)
            futures, pos, where = [], 0, []
            for u in self.units:
                futures.append(self.read_unit(reader, u, buf[pos:pos + u.length], verify))
                where.append(pos)
                pos += u.length
            for f in futures:
                f.result()
        finally:
            if own:
                reader.close()
        state = {}
        for u, pos in zip(self.units, where):
            state.update(self.views(u, buf[pos:pos + u.length]))
        return state

    def extra_buffers(self):
        """Return the non-persistent buffers needed to run ({} when the pack has none)."""
        name = self.manifest.get('extra_buffers_file')
        if not name:
            return {}
        from safetensors.torch import load_file
        return load_file(str(self.path / name))

    def model_args(self):
        """Return manifest['model'] with pack-relative files (darknet cfg) made absolute."""
        args = dict(self.manifest['model'])
        files = set(self.manifest.get('model_files', {}).values())
        root = self.path.resolve()
        for key, value in args.items():
            if not isinstance(value, str):
                continue
            if value in files:
                args[key] = str(root / value)
            elif key == 'spec' and value.partition(':')[2] in files:
                family, _, arg = value.partition(':')
                args[key] = f'{family}:{root / arg}'
        args['weights'] = None
        return args

    def build_detector(self, device='cpu', meta=True):
        """Build the model skeleton (meta=True: no weight memory) through the registry."""
        from demand_layering_ros.models import registry
        args = self.model_args()
        args.update(device=device, meta=meta)
        return registry.build(**args)

    def check_against(self, state_dict):
        """Read the whole pack back and compare every tensor with `state_dict` (torch.equal)."""
        import torch
        got = self.load_state_dict()
        missing = sorted(set(state_dict) - set(got))
        unexpected = sorted(set(got) - set(state_dict))
        if missing or unexpected:
            raise PackError(f'pack does not match the model: missing {missing[:5]}, '
                            f'unexpected {unexpected[:5]}', self.path)
        for name, t in state_dict.items():
            g = got[name]
            if g.dtype != t.dtype or g.shape != t.shape or not torch.equal(g, t.cpu()):
                u = self.unit(self.module_unit.get(name.rpartition('.')[0], 0))
                raise PackError(f'tensor {name} differs from the model', self.path, u.name,
                                u.offset)

    def summary(self):
        """Return a dict of headline numbers (for the CLI and logs)."""
        lengths = [u.length for u in self.units]
        return {'pack': str(self.path), 'spec': self.manifest['model'].get('spec'),
                'units': len(self.units), 'uncalled_units': len(self.uncalled_units),
                'calls': len(self.call_order), 'file_size': self.file_size,
                'payload_bytes': self.manifest['total_nbytes'],
                'stored_dtype': self.stored_dtype,
                'largest_unit': max(lengths) if lengths else 0,
                'smallest_unit': min(lengths) if lengths else 0,
                'checksum_algorithm': self.manifest['checksum_algorithm']}


def unit_table(pack):
    """Return the units as plain dicts (for JSON output)."""
    return [dict(asdict(u), tensors=len(u.tensors)) for u in pack.units]
