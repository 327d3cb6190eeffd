# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What a pack's manifest must say, and that its weights file agrees: checked before any read.

A pack comes from disk and may be damaged or hostile, so every type, name, byte range and size
is checked here before a byte reaches a model; each failure is a PackError naming the pack, the
unit and the offset.
"""

import json
import os
from pathlib import Path
import re

from demand_layering_ros import direct_io
from demand_layering_ros.pack.format import (FORMAT, full_name, itemsize, MAX_HEADER_BYTES,
                                             PackError, PAD_PREFIX, safe_file_name, ST_CODES,
                                             STORED_DTYPES, valid_tensor_name, VERSION)
from demand_layering_ros.sizes import PAGE

UNIT_KEYS = ('index', 'name', 'modules', 'offset', 'length', 'nbytes', 'checksum', 'calls',
             'first_call', 'last_call', 'tensors')
TENSOR_KEYS = ('name', 'dtype', 'shape', 'offset', 'nbytes', 'module', 'attr', 'kind')


def _need(cond, message, pack, unit=None, offset=None):
    if not cond:
        raise PackError(message, pack, unit, offset)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def validate_manifest(path, m):
    """Check the manifest on its own: format, version, types, names, ranges, call order."""
    _check_top(path, m)
    _check_file_names(path, m)
    align, size, data_offset = m['alignment'], m['file_size'], m['data_offset']
    _need(_is_int(size) and size >= 0, f'file_size {size!r} must be a non-negative integer',
          path)
    _need(_is_int(data_offset) and data_offset % align == 0 and 8 <= data_offset <= size,
          f'data_offset {data_offset!r} must be an aligned offset inside the file', path)
    units = m['units']
    _need(isinstance(units, list), "manifest 'units' must be a list", path)
    uncalled = m['uncalled_units']
    _need(isinstance(uncalled, list) and all(_is_int(i) and 0 <= i < len(units)
                                             for i in uncalled),
          'uncalled_units must list unit indices', path)
    aliases = m.get('aliases', {})
    _need(isinstance(aliases, dict), "manifest 'aliases' must be an object", path)
    call_order = m['call_order']
    _need(isinstance(call_order, list) and all(_is_int(c) and 0 <= c < len(units)
                                               for c in call_order),
          'call_order must list unit indices', path)
    seen_names, prev_end = set(), data_offset
    for i, u in enumerate(units):
        _check_unit(path, m, i, u, prev_end, seen_names)
        prev_end = u['offset'] + u['length']
    _check_tensor_alignment(path, m)
    for a, target in aliases.items():
        _need(valid_tensor_name(a) and isinstance(target, str) and target in seen_names,
              f'alias {a!r} -> {target!r} is not a stored tensor', path)


def _check_top(path, m):
    """Check format, version, the required keys, the checksum algorithm and the alignment."""
    _need(isinstance(m, dict), 'manifest must be a JSON object', path)
    _need(m.get('format') == FORMAT, f'not a pack manifest (format {m.get("format")!r}, '
          f'expected {FORMAT!r})', path)
    _need(m.get('version') == VERSION, f'unknown pack format version {m.get("version")!r} '
          f'(this reader understands version {VERSION}); rewrite the pack with `pack`', path)
    for key in ('model', 'units', 'call_order', 'uncalled_units', 'file_size', 'data_offset',
                'weights_file', 'alignment', 'checksum_algorithm'):
        _need(key in m, f'manifest lacks {key!r}', path)
    _need(m['checksum_algorithm'] == direct_io.CHECKSUM_ALGORITHM,
          f'unknown checksum algorithm {m["checksum_algorithm"]!r}', path)
    _need(isinstance(m['model'], dict), "manifest 'model' must be an object", path)
    stored = m.get('stored_dtype')          # absent (packs before it) or None: as the model
    _need(stored is None or stored in STORED_DTYPES, f'stored_dtype {stored!r} must be one of '
          f'{STORED_DTYPES} or null', path)
    align = m['alignment']
    _need(_is_int(align) and align > 0 and align % PAGE == 0,
          f'alignment {align!r} must be a positive multiple of {PAGE}', path)
    tensor_align = m.get('tensor_alignment')
    _need(tensor_align is None or (_is_int(tensor_align) and 0 < tensor_align <= align
                                   and tensor_align & (tensor_align - 1) == 0),
          f'tensor_alignment {tensor_align!r} must be a power of two no larger than the '
          f'alignment {align}', path)


def _check_tensor_alignment(path, m):
    """Check that every tensor starts where the manifest's tensor_alignment says (if it says)."""
    step = m.get('tensor_alignment')
    if step is None:                   # packs that predate the key: the dtype check suffices
        return
    for u in m['units']:
        for t in u['tensors']:
            _need((t['offset'] - m['data_offset']) % step == 0,
                  f'tensor {t["name"]} is not at a multiple of tensor_alignment {step} from '
                  'the data start', path, u['name'], t['offset'])


def _check_file_names(path, m):
    """Check that every file the manifest names is a plain file inside the pack directory."""
    names = [('weights_file', m['weights_file'])]
    if m.get('extra_buffers_file') is not None:
        names.append(('extra_buffers_file', m['extra_buffers_file']))
    files = m.get('model_files', {})
    _need(isinstance(files, dict), "manifest 'model_files' must be an object", path)
    names += [(f'model_files[{k!r}]', v) for k, v in files.items()]
    root = Path(path).resolve()
    for key, name in names:
        _need(safe_file_name(name), f'{key} {name!r} must be a plain file name inside the '
              'pack (no path separators, no "..", not absolute)', path)
        resolved = (Path(path) / name).resolve()
        _need(resolved.parent == root, f'{key} {name!r} resolves to {resolved}, outside the '
              f'pack directory {root}', path)


def _check_unit(path, m, i, u, prev_end, seen_names):
    """Check unit #i: its keys, its extent (after prev_end), its calls and its tensors."""
    align, size, call_order = m['alignment'], m['file_size'], m['call_order']
    _need(isinstance(u, dict) and all(k in u for k in UNIT_KEYS),
          f'unit #{i} lacks one of {UNIT_KEYS}', path, unit=f'#{i}')
    name, off, length = u['name'], u['offset'], u['length']
    _need(isinstance(name, str) and name, f'unit #{i} has no name', path, f'#{i}')
    _need(u['index'] == i, f'unit index {u["index"]!r} != position {i}', path, name)
    _need(_is_int(off) and _is_int(length) and off >= 0 and length >= 0,
          f'offset/length {off!r}/{length!r} must be non-negative integers', path, name)
    _need(isinstance(u['modules'], list) and u['modules']
          and all(isinstance(x, str) for x in u['modules']),
          'modules must be a non-empty list of module names', path, name, off)
    _need(_is_int(u['nbytes']), 'nbytes must be an integer', path, name, off)
    _need(off % align == 0 and length % align == 0,
          f'extent [{off}, {off + length}) is not aligned to {align}', path, name, off)
    _need(off >= prev_end, f'extent starts before the previous unit ends ({prev_end}) or '
          'inside the header', path, name, off)
    _need(off + length <= size, f'extent [{off}, {off + length}) runs past the end of the '
          f'weights file ({size} bytes)', path, name, off)
    _need(isinstance(u['checksum'], str) and re.fullmatch(r'[0-9a-f]{16}', u['checksum']),
          f'bad checksum {u["checksum"]!r}', path, name, off)
    positions = [k for k, c in enumerate(call_order) if c == i]
    calls, first, last = u['calls'], u['first_call'], u['last_call']
    if positions:
        _need(calls == len(positions) and first == positions[0] and _is_int(last)
              and positions[-1] <= last < len(call_order),
              f'calls/first_call/last_call ({calls}, {first}, {last}) disagree with '
              'call_order', path, name, off)
    else:
        _need(calls == 0 and first is None and last is None and i in m['uncalled_units'],
              'unit never appears in call_order but is not listed as uncalled',
              path, name, off)
    _check_unit_tensors(path, u, seen_names)


def _check_unit_tensors(path, u, seen_names):
    """Check a unit's tensors: each on its own, no overlaps, sizes adding up to nbytes."""
    name, off, length, tensors = u['name'], u['offset'], u['length'], u['tensors']
    _need(isinstance(tensors, list), 'tensors must be a list', path, name, off)
    payload = 0
    for t in tensors:
        _check_tensor(path, name, off, length, t, seen_names)
        payload += t['nbytes']
    end = off
    for t in sorted(tensors, key=lambda t: t['offset']):
        _need(t['offset'] >= end, f'tensor {t["name"]} overlaps the tensor before it',
              path, name, t['offset'])
        end = t['offset'] + t['nbytes']
    _need(u['nbytes'] == payload, f'nbytes {u["nbytes"]!r} != sum of tensor sizes '
          f'{payload}', path, name, off)


def _check_tensor(path, unit_name, uoff, ulen, t, seen):
    """Check one tensor entry: keys, name, range inside its unit, dtype, shape and size."""
    _need(isinstance(t, dict) and all(k in t for k in TENSOR_KEYS),
          f'a tensor lacks one of {TENSOR_KEYS}', path, unit_name, uoff)
    name, off, nbytes = t['name'], t['offset'], t['nbytes']
    _need(valid_tensor_name(name) and not name.startswith(PAD_PREFIX),
          f'bad tensor name {name!r} (dotted [A-Za-z0-9_-:+@] parts only; no "/", "..")',
          path, unit_name, uoff)
    _need(_is_int(off) and _is_int(nbytes) and off >= 0 and nbytes >= 0,
          f'tensor {name}: offset/nbytes must be non-negative integers', path, unit_name, uoff)
    aliases = t.get('aliases', [])
    _need(isinstance(aliases, list) and all(valid_tensor_name(a) for a in aliases),
          f'bad alias names {aliases!r} of {name}', path, unit_name, off)
    _need(isinstance(t['module'], str) and isinstance(t['attr'], str)
          and full_name(t['module'], t['attr']) == name,
          f'tensor {name}: module {t["module"]!r} + attr {t["attr"]!r} do not make its name',
          path, unit_name, off)
    _need(name not in seen, f'tensor {name} stored twice', path, unit_name, off)
    seen.add(name)
    dtype = t['dtype']
    _need(isinstance(dtype, str) and dtype in ST_CODES, f'tensor {name}: unknown dtype '
          f'{dtype!r}', path, unit_name, off)
    shape = t['shape']
    _need(isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape),
          f'tensor {name}: bad shape {shape!r}', path, unit_name, off)
    numel = 1
    for s in shape:
        numel *= s
    _need(nbytes == numel * itemsize(dtype),
          f'tensor {name}: nbytes {nbytes!r} != {numel} x {dtype}', path, unit_name, off)
    _need(uoff <= off and off + nbytes <= uoff + ulen,
          f'tensor {name}: bytes [{off}, {off + nbytes}) lie outside the unit extent '
          f'[{uoff}, {uoff + ulen})', path, unit_name, off)
    _need(off % itemsize(dtype) == 0, f'tensor {name}: offset not aligned to its dtype',
          path, unit_name, off)
    _need(t['kind'] in ('parameter', 'buffer'), f'tensor {name}: bad kind {t["kind"]!r}',
          path, unit_name, off)


def validate_weights_file(pack):
    """Check the weights file against the manifest: presence, size, safetensors header."""
    wp, units = pack.weights_path, pack.units
    first = units[0] if units else None
    fname, foff = (first.name, first.offset) if first else (None, None)
    if not wp.is_file():
        raise PackError(f'weights file {wp} is missing', pack.path, fname, foff)
    actual = wp.stat().st_size
    if actual != pack.file_size:
        bad = next((u for u in units if u.end > actual), None)
        if bad is not None:
            raise PackError(f'weights file is truncated: {actual} bytes on disk, manifest says '
                            f'{pack.file_size}; extent [{bad.offset}, {bad.end}) runs past the '
                            'end', pack.path, bad.name, bad.offset)
        raise PackError(f'weights file has {actual} bytes, manifest says {pack.file_size}',
                        pack.path, None, min(actual, pack.file_size))
    fd = os.open(wp, os.O_RDONLY)
    try:
        head = os.pread(fd, 8, 0)
        n = int.from_bytes(head, 'little') if len(head) == 8 else -1
        _need(8 + n == pack.data_offset and n <= MAX_HEADER_BYTES,
              f'safetensors header length {n} does not match data_offset {pack.data_offset}',
              pack.path, fname, 0)
        raw = os.pread(fd, n, 8)
        os.posix_fadvise(fd, 0, 8 + n, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode('utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise PackError(f'safetensors header is not valid JSON: {e}', pack.path, fname,
                        8) from None
    _need(isinstance(header, dict), 'safetensors header is not a JSON object', pack.path, fname,
          8)
    for u in units:
        for t in u.tensors:
            h = header.get(t.name)
            want = {'dtype': ST_CODES[t.dtype], 'shape': t.shape,
                    'data_offsets': [t.offset - pack.data_offset,
                                     t.offset - pack.data_offset + t.nbytes]}
            _need(isinstance(h, dict) and all(h.get(k) == v for k, v in want.items()),
                  f'tensor {t.name}: safetensors header says {h!r}, manifest says {want}',
                  pack.path, u.name, t.offset)
