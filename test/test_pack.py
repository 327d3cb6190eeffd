# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Weight packs: trace, unit grouping, layout, safetensors compatibility, validation of bad packs.

The oracle is the model itself: whatever is written must come back torch.equal to its state
dict, through `safetensors.torch.load_file` and through our own O_DIRECT reader.
"""

import json
import os
from pathlib import Path

from demand_layering_ros import direct_io
from demand_layering_ros import pack as P
from demand_layering_ros.pack import Pack, PackError
import pytest
from safetensors.torch import load_file
import torch
from torch import nn


class Head(nn.Module):
    """A head shared over feature levels (like RetinaNet's over the FPN levels)."""

    def __init__(self, c=8, k=4):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.cls = nn.Conv2d(c, k, 1)

    def forward(self, xs):
        return [self.cls(torch.relu(self.bn(self.conv(x)))) for x in xs]


class Net(nn.Module):
    """Small model with the awkward cases: shared head, unused module, extra buffer."""

    def __init__(self, width=8, big=256):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(width)
        self.big = nn.Conv2d(width, big, 3, padding=1)   # 73 KiB > MERGE_BYTES
        self.big_bn = nn.BatchNorm2d(big)
        self.reduce = nn.Conv2d(big, width, 1)
        self.head = Head(width)
        self.unused = nn.Linear(4, 4)
        self.register_buffer('anchors', torch.arange(6.0), persistent=False)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = self.reduce(torch.relu(self.big_bn(self.big(x))))
        return self.head([x, x[:, :, ::2, ::2]]) + [self.anchors * 1]


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return model


@pytest.fixture(scope='module')
def net_pack(tmp_path_factory):
    model = randomize(Net()).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = tmp_path_factory.mktemp('packs') / 'net'
    pack = P.write_pack_from_module(model, x, out, {'spec': 'test:net'}, progress=False)
    return model, x, pack


def real_state(model):
    return dict(model.state_dict())


def test_safetensors_load_file_gives_state_dict_back(net_pack):
    model, _, pack = net_pack
    loaded = load_file(str(pack.weights_path))
    pads = [k for k in loaded if k.startswith(P.PAD_PREFIX)]
    assert pads and all(loaded[k].dtype == torch.uint8 and not loaded[k].any() for k in pads)
    loaded = {k: v for k, v in loaded.items() if k not in pads}
    ref = real_state(model)
    assert set(loaded) == set(ref)
    for k, v in ref.items():
        assert torch.equal(loaded[k], v), k


def test_layout_units_aligned_in_first_use_order(net_pack):
    model, _, pack = net_pack
    m = pack.manifest
    assert m['version'] == 1 and m['format'] == 'demand_layering_ros.pack'
    assert pack.data_offset % 4096 == 0
    assert pack.file_size == os.path.getsize(pack.weights_path)
    prev = pack.data_offset
    for u in pack.units:
        assert u.offset % 4096 == 0 and u.length % 4096 == 0 and u.offset == prev
        prev = u.end
        assert u.nbytes == sum(t.nbytes for t in u.tensors) <= u.length
        for t in u.tensors:
            assert u.offset <= t.offset and t.offset + t.nbytes <= u.end
            assert t.offset % P.TENSOR_ALIGNMENT == 0
    called = [u for u in pack.units if u.calls]
    assert [u.first_call for u in called] == sorted(u.first_call for u in called)
    assert pack.units[-1].name == 'unused' and pack.uncalled_units == [len(pack.units) - 1]
    assert pack.units[-1].first_call is None and pack.units[-1].calls == 0
    assert m['extra_buffers'] == ['anchors']
    assert torch.equal(pack.extra_buffers()['anchors'], model.anchors)


def test_trace_records_every_call_and_merges_tiny_followers(net_pack):
    model, x, pack = net_pack
    seen = []
    hooks = [mod.register_forward_pre_hook(lambda mod, a, n=n: seen.append(n))
             for n, mod in model.named_modules() if list(mod.parameters(recurse=False))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert pack.manifest['call_modules'] == seen
    assert len(pack.call_order) == len(seen)
    for name, unit_index in zip(seen, pack.call_order):
        assert name in pack.units[unit_index].modules
    by_name = {u.name: u for u in pack.units}
    # the tiny BatchNorm after the big conv is merged; the big conv is not merged into the stem
    assert by_name['big'].modules[:2] == ['big', 'big_bn']
    assert by_name['stem'].modules == ['stem', 'stem_bn']
    # the shared head runs twice: same unit, calls counted, lifetime spans both levels
    head = pack.units[pack.module_unit['head.conv']]
    assert set(head.modules) == {'head.conv', 'head.bn', 'head.cls'}
    assert head.calls == 6 and head.last_call == len(seen) - 1


def test_no_merging_with_merge_bytes_zero(tmp_path):
    model = randomize(Net()).eval()
    x = torch.randn(1, 3, 8, 8)
    pack = P.write_pack_from_module(model, x, tmp_path / 'p', {'spec': 'test:net'},
                                    merge_bytes=0, progress=False)
    owners = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert sorted(u.name for u in pack.units) == sorted(owners)
    head_cls = pack.unit('head.cls')
    assert head_cls.calls == 2 and head_cls.first_call < head_cls.last_call


def test_reader_views_are_zero_copy_and_exact(net_pack):
    model, _, pack = net_pack
    ref = real_state(model)
    with pack.reader() as r:
        assert r.mode == 'direct'
        for u in pack.units:
            buf = direct_io.aligned_empty(u.length)
            pack.read_unit(r, u, buf).result()
            views = pack.views(u, buf)
            for t in u.tensors:
                v = views[t.name]
                assert torch.equal(v, ref[t.name])
                assert buf.data_ptr() <= v.data_ptr() < buf.data_ptr() + u.length
    state = pack.load_state_dict()
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)


class Tied(nn.Module):
    """Tied weights and a parameter read by a parent's own code."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.embed.weight
        self.gate = nn.Linear(6, 1)

    def forward(self, ids):
        h = self.mid(self.embed(ids))
        return self.out(h) * torch.sigmoid(h @ self.gate.weight.t())   # gate never called


def test_tied_weights_stored_once_and_outside_use_flagged(tmp_path):
    model = randomize(Tied()).eval()
    pack = P.write_pack_from_module(model, torch.arange(4), tmp_path / 'p', {'spec': 't:t'},
                                    progress=False)
    stored = [t.name for u in pack.units for t in u.tensors]
    assert stored.count('embed.weight') == 1 and 'out.weight' not in stored
    assert pack.aliases == {'out.weight': 'embed.weight'}
    tied = pack.unit(pack.module_unit['embed'])
    assert pack.module_unit['out'] == tied.index and 'out' in tied.modules
    assert tied.first_call == 0 and tied.last_call == len(pack.call_order) - 1
    gate = pack.unit('gate')
    assert gate.used_outside_forward and gate.calls == 0
    assert 'gate.weight' in pack.manifest['outside_uses']
    assert not pack.unit('mid').used_outside_forward
    state = pack.load_state_dict()
    assert state['out.weight'].data_ptr() == state['embed.weight'].data_ptr()
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)
    loaded = load_file(str(pack.weights_path))
    assert 'out.weight' not in loaded and torch.equal(loaded['embed.weight'], model.out.weight)


def test_torchvision_classifier_roundtrip(tmp_path):
    import torchvision
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pack = P.write_pack_from_module(model, x, tmp_path / 'p', {'spec': 'tv:m'}, progress=False)
    pack.check_against(model.state_dict())
    # every BatchNorm is merged into the conv that feeds it
    modules = dict(model.named_modules())
    for name, mod in modules.items():
        if isinstance(mod, nn.BatchNorm2d):
            unit = pack.units[pack.module_unit[name]]
            before = unit.modules[unit.modules.index(name) - 1]
            assert isinstance(modules[before], nn.Conv2d), (name, unit.modules)
    assert len(pack.units) < len([m for m in model.modules()
                                  if list(m.parameters(recurse=False))])


# ----------------------------------------------------------------------------- bad packs


@pytest.fixture
def fresh_pack(net_pack, tmp_path):
    """Return a writable copy of the net pack (manifest dict, pack dir)."""
    _, _, pack = net_pack
    out = tmp_path / 'copy'
    out.mkdir()
    for name in os.listdir(pack.path):
        (out / name).write_bytes((pack.path / name).read_bytes())
    return json.loads((out / P.MANIFEST_FILE).read_text()), out


def rewrite(out, manifest):
    (out / P.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_truncated_weights_file_is_refused(fresh_pack):
    m, out = fresh_pack
    wp = out / P.WEIGHTS_FILE
    size = wp.stat().st_size - 5000
    os.truncate(wp, size)
    last = next(u for u in m['units'] if u['offset'] + u['length'] > size)
    assert last is not m['units'][-1]      # the cut reaches into the unit before the last
    with pytest.raises(PackError) as e:
        Pack.open(out)
    msg = str(e.value)
    assert str(out) in msg and 'truncated' in msg
    assert e.value.unit == last['name'] and e.value.offset == last['offset']
    assert repr(last['name']) in msg and f'offset {last["offset"]}' in msg


def test_flipped_byte_is_caught_when_the_unit_is_read(fresh_pack):
    m, out = fresh_pack
    u = m['units'][1]
    wp = out / P.WEIGHTS_FILE
    raw = bytearray(wp.read_bytes())
    raw[u['tensors'][0]['offset'] + 5] ^= 0x10
    wp.write_bytes(bytes(raw))
    pack = Pack.open(out)           # sizes and header are fine; content is not
    with pack.reader() as r:
        buf = direct_io.aligned_empty(u['length'])
        pack.read_unit(r, pack.units[0], buf).result()      # untouched unit still fine
        with pytest.raises(PackError, match='checksum mismatch') as e:
            pack.read_unit(r, pack.units[1], buf).result()
    assert e.value.unit == u['name'] and e.value.offset == u['offset']
    assert str(out) in str(e.value)
    with pytest.raises(PackError, match='checksum'):
        pack.load_state_dict()


def test_offsets_past_the_file_are_refused(fresh_pack):
    m, out = fresh_pack
    u = m['units'][-1]
    u['offset'] = m['file_size']
    rewrite(out, m)
    with pytest.raises(PackError, match='runs past the end') as e:
        Pack.open(out)
    assert e.value.unit == u['name'] and e.value.offset == m['file_size']


def test_tensor_outside_its_unit_is_refused(fresh_pack):
    m, out = fresh_pack
    u = m['units'][0]
    u['tensors'][0]['offset'] = u['offset'] + u['length'] - 4
    rewrite(out, m)
    with pytest.raises(PackError, match='outside the unit extent') as e:
        Pack.open(out)
    assert e.value.unit == u['name']


def test_manifest_disagreeing_with_safetensors_header_is_refused(fresh_pack):
    m, out = fresh_pack
    u = m['units'][0]
    t = u['tensors'][0]
    assert t['dtype'] == 'float32'
    t['dtype'] = 'int32'        # same size, so only the header can tell
    rewrite(out, m)
    with pytest.raises(PackError, match='safetensors header says') as e:
        Pack.open(out)
    assert e.value.unit == u['name'] and e.value.offset == t['offset']


def test_overlapping_tensors_are_refused(fresh_pack):
    m, out = fresh_pack
    u = m['units'][0]
    a, b = u['tensors'][0], u['tensors'][1]
    b['offset'] = a['offset']
    rewrite(out, m)
    with pytest.raises(PackError, match='overlap') as e:
        Pack.open(out)
    assert e.value.unit == u['name']


def test_tensor_alignment_256_and_packs_written_at_64_still_load(net_pack, tmp_path,
                                                                 monkeypatch):
    model, x, pack = net_pack
    assert P.TENSOR_ALIGNMENT == 256 and pack.manifest['tensor_alignment'] == 256
    from demand_layering_ros.pack import writer
    monkeypatch.setattr(writer, 'TENSOR_ALIGNMENT', 64)
    old = P.write_pack_from_module(model, x, tmp_path / 'old', {'spec': 'test:net'},
                                   progress=False)
    monkeypatch.undo()
    offsets = [t.offset for u in old.units for t in u.tensors]
    assert old.manifest['tensor_alignment'] == 64 and any(o % 256 for o in offsets)
    state = Pack.open(old.path).load_state_dict()
    for k, v in real_state(model).items():
        assert torch.equal(state[k], v), k
    # a manifest that promises more alignment than its layout has is refused
    m = json.loads((old.path / P.MANIFEST_FILE).read_text())
    m['tensor_alignment'] = 256
    rewrite(old.path, m)
    with pytest.raises(PackError, match='not at a multiple of tensor_alignment 256') as e:
        Pack.open(old.path)
    bad = next(t for u in m['units'] for t in u['tensors'] if t['offset'] % 256)
    assert e.value.offset == bad['offset'] and bad['name'] in str(e.value)
    for value in (0, 96, 8192, '64'):
        m['tensor_alignment'] = value
        rewrite(old.path, m)
        with pytest.raises(PackError, match='tensor_alignment'):
            Pack.open(old.path)


def test_unknown_version_is_refused(fresh_pack):
    m, out = fresh_pack
    m['version'] = 99
    rewrite(out, m)
    with pytest.raises(PackError, match='unknown pack format version 99') as e:
        Pack.open(out)
    assert str(out) in str(e.value)


def test_missing_files_are_refused(fresh_pack):
    m, out = fresh_pack
    (out / P.WEIGHTS_FILE).unlink()
    with pytest.raises(PackError, match='missing') as e:
        Pack.open(out)
    assert e.value.unit == m['units'][0]['name'] and e.value.offset == m['units'][0]['offset']
    (out / P.MANIFEST_FILE).unlink()
    with pytest.raises(PackError, match='missing manifest.json'):
        Pack.open(out)


def test_a_missing_pack_is_named_without_placeholder_fields(tmp_path, fresh_pack):
    """No unit or offset to name: the message says only what is known, never 'unit -'."""
    missing = tmp_path / 'x'
    with pytest.raises(PackError) as e:
        Pack.open(missing)
    assert str(e.value) == f'pack {missing}: no such pack directory'
    assert e.value.pack == str(missing) and e.value.unit is None and e.value.offset is None
    m, out = fresh_pack
    (out / P.MANIFEST_FILE).unlink()
    with pytest.raises(PackError) as e:
        Pack.open(out)
    assert str(e.value).startswith(f'pack {out}: missing manifest.json')
    # an offset without a unit keeps the offset; both known: the full form
    e = PackError('weights file has 4 bytes, manifest says 8', out, None, 4)
    assert str(e) == f'pack {out}: offset 4: weights file has 4 bytes, manifest says 8'
    e = PackError('damaged', out, 'conv1', 4096)
    assert str(e) == f"pack {out}: unit 'conv1', offset 4096: damaged"


@pytest.mark.parametrize('field,value', [
    ('weights_file', '../weights.safetensors'),
    ('weights_file', '/etc/passwd'),
    ('extra_buffers_file', 'sub/extra.safetensors'),
])
def test_file_names_cannot_leave_the_pack(fresh_pack, field, value):
    m, out = fresh_pack
    m[field] = value
    rewrite(out, m)
    with pytest.raises(PackError, match='plain file name'):
        Pack.open(out)


def test_symlink_out_of_the_pack_is_refused(fresh_pack, tmp_path):
    m, out = fresh_pack
    outside = tmp_path / 'elsewhere.safetensors'
    os.replace(out / P.WEIGHTS_FILE, outside)
    os.symlink(outside, out / P.WEIGHTS_FILE)
    with pytest.raises(PackError, match='outside the pack directory'):
        Pack.open(out)


@pytest.mark.parametrize('name', ['../../etc/passwd', 'a/b.weight', 'a..b', '/abs', ''])
def test_bad_tensor_names_are_refused(fresh_pack, name):
    m, out = fresh_pack
    m['units'][0]['tensors'][0]['name'] = name
    rewrite(out, m)
    with pytest.raises(PackError, match='bad tensor name'):
        Pack.open(out)


def test_writer_is_atomic_and_rewrites_in_place(tmp_path):
    model = randomize(Net(), seed=3).eval()
    x = torch.randn(1, 3, 8, 8)
    out = tmp_path / 'p'
    P.write_pack_from_module(model, x, out, {'spec': 'test:net'}, progress=False)
    model2 = randomize(Net(), seed=4).eval()
    pack = P.write_pack_from_module(model2, x, out, {'spec': 'test:net'}, progress=False)
    pack.check_against(model2.state_dict())
    assert sorted(os.listdir(out)) == sorted([P.WEIGHTS_FILE, P.MANIFEST_FILE, P.EXTRA_FILE])
    with pytest.raises(PackError, match='differs'):
        pack.check_against(model.state_dict())


def test_cli_check_mode(net_pack, capsys):
    from demand_layering_ros import cli
    _, _, pack = net_pack
    assert cli.main(['pack', '--check', str(pack.path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['checked'] == 'ok' and summary['units'] == len(pack.units)
    assert Path(summary['pack']) == pack.path


def test_cli_pack_darknet_through_the_registry(tmp_path, capsys):
    """The real CLI path: registry model, cfg copied into the pack, rebuilt from the pack."""
    from demand_layering_ros import cli
    from demand_layering_ros.models import registry
    out = tmp_path / 'tiny'
    argv = ['pack', '--model', 'darknet:yolov3-tiny', '--input-size', '64x64', '--seed', '3',
            '--out', str(out)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pack = Pack.open(out)
    assert summary['units'] == len(pack.units) and summary['file_size'] == pack.file_size
    m = pack.manifest
    assert m['model']['spec'] == 'darknet:model.cfg' and m['model']['input_size'] == [64, 64]
    assert m['model_files'] == {'cfg': 'model.cfg'} and m['input']['input_size'] == [64, 64]
    original = registry.build('darknet:yolov3-tiny', seed=3, input_size=(64, 64))
    cfg_text = Path(original.build_args['spec'].partition(':')[2]).read_text()
    assert (out / 'model.cfg').read_text() == cfg_text
    ref = original.model.state_dict()
    state = pack.load_state_dict()
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    skeleton = pack.build_detector(meta=True)
    assert all(t.device.type == 'meta' for t in skeleton.model.state_dict().values())
    assert {k: tuple(v.shape) for k, v in skeleton.model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.items()}


def test_mangled_manifests_fail_only_with_pack_error(fresh_pack):
    """Any field set to a wrong type or value is refused with PackError, never a crash."""
    import copy
    import random
    base, out = fresh_pack
    values = [None, -1, 0, 1, 2 ** 70, 'x', '', [], {}, [1], {'a': 1}, True, 1.5, '../x', 4096]

    def paths(o, p=()):
        if p:
            yield p
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield from paths(v, p + (k,))

    every = list(paths(base))
    rng = random.Random(0)
    refused = 0
    for _ in range(400):
        m = copy.deepcopy(base)
        p = rng.choice(every)
        o = m
        for k in p[:-1]:
            o = o[k]
        if isinstance(o, dict) and rng.random() < 0.2:
            del o[p[-1]]
        else:
            o[p[-1]] = rng.choice(values)
        rewrite(out, m)
        try:
            Pack.open(out)
        except PackError as e:
            refused += 1
            assert str(out) in str(e)
    assert refused > 300


class Outer(nn.Module):
    """A module that owns a weight and calls children while it runs."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))
        self.inner = nn.Linear(4, 4)
        self.after = nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(x) * self.gain


class Wrap(nn.Module):

    def __init__(self):
        super().__init__()
        self.outer = Outer()
        self.tail = nn.Linear(4, 4)

    def forward(self, x):
        return self.tail(self.outer(x))


def test_nested_call_keeps_the_outer_unit_alive_until_it_returns(tmp_path):
    model = randomize(Wrap()).eval()
    pack = P.write_pack_from_module(model, torch.randn(2, 4), tmp_path / 'p', {'spec': 't:w'},
                                    merge_bytes=0, progress=False)
    assert pack.manifest['call_modules'] == ['outer', 'outer.inner', 'tail']
    outer, inner, tail = (pack.unit(n) for n in ('outer', 'outer.inner', 'tail'))
    assert (outer.first_call, outer.last_call, outer.calls) == (0, 1, 1)
    assert (inner.first_call, inner.last_call) == (1, 1)
    assert (tail.first_call, tail.last_call) == (2, 2)
    assert pack.unit('outer.after').calls == 0
