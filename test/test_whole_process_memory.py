# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Whole-process memory: what streaming saves on weights must not come back elsewhere.

The bounds are baselines measured in the same test, never absolute numbers: the resident model
in a fresh memory cgroup against the streamed one (page cache counted), the tensors a Darknet
pass must hold at once (from the layer shapes) against what it does hold, the out-of-place
layers against their in-place versions. Also: the memory figures of stats() and /diagnostics,
and on CUDA the caching allocator against the executor's own accounting.
"""

import json
import os
from pathlib import Path
import sys

from demand_layering_ros import pack as P
from demand_layering_ros.loading import load, load_resident
from demand_layering_ros.measure.activation import activation_peak_cpu
from demand_layering_ros.models.darknet import layers as L
from demand_layering_ros.sizes import MB, pinned_size
import pytest
from tools import cgroups
import torch

ROOT = Path(__file__).resolve().parents[1]
AVAIL = cgroups.cgroups_available()
CUDA = torch.cuda.is_available()
SIZE = 256


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Write a yolov3-tiny pack at 256x256 (seeded weights: memory does not depend on them)."""
    return P.write_pack('darknet:yolov3-tiny', tmp_path_factory.mktemp('wpm') / 'yolov3-tiny',
                        seed=0, input_size=(SIZE, SIZE), progress=False, verify=False)


CHILD = r"""
import json, os, sys, threading, tracemalloc
from demand_layering_ros import loading
from demand_layering_ros.runtime import malloc
import torch
mode, pack_dir, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
torch.set_num_threads(1)
n = int(sys.argv[4])
x = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(0))
threads0 = threading.active_count()
model = loading.load_resident(pack_dir) if mode == 'resident' else \
    loading.load(pack_dir, budget_mb=budget)
heap = []

def passes():                          # like the node: frames run in a thread of their own
    with torch.no_grad():
        for i in range(12):
            model(x)
            if i == 3:
                tracemalloc.start()
            heap.append(tracemalloc.get_traced_memory()[0])
t = threading.Thread(target=passes)
t.start()
t.join()

st = model.stats() if hasattr(model, 'stats') else {}
out = {k: st.get(k) for k in ('peak_weight_bytes', 'activation_peak_bytes')}
out.update(arenas=malloc.arena_count(), threads=threading.active_count() - threads0,
           python_heap_growth=heap[-1] - heap[4])
print(json.dumps(out))
"""


def _child(mode, pack, budget=4.0):
    cgroups.evict_file(pack.weights_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p))
    res = cgroups.run_in_cgroup([sys.executable, '-c', CHILD, mode, str(pack.path),
                                 str(budget), str(SIZE)], timeout=240, env=env, cwd=str(ROOT))
    assert res.ok, f'{mode}: {res.summary()}\n{res.stderr[-3000:]}'
    return res, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not AVAIL, reason=f'memory cgroups: {AVAIL.reason}')
def test_streaming_saves_at_least_nine_tenths_of_the_weights_it_does_not_hold(tiny):
    """
    The fixed cost of streaming (threads, arenas, buffers, checksums, timeline) stays small.

    Both processes import the same libraries (cached beforehand, so no library page is
    charged), load the same pack and run the same passes in a thread; the streamed one's
    cgroup peak must be at most the resident one's minus 90% of the weight bytes it does not
    hold. Two runs each; the worst streamed run against the best resident one.
    """
    _child('resident', tiny)                   # warm the library pages outside the measurement
    resident = [_child('resident', tiny)[0] for _ in range(2)]
    streamed = [_child('stream', tiny) for _ in range(2)]
    weights = tiny.total_bytes
    held = max(data['peak_weight_bytes'] for _, data in streamed)
    assert held < weights / 4, 'the test premise: a budget well below the model'
    best_resident = min(r.peak_bytes for r in resident)
    worst_streamed = max(r.peak_bytes for r, _ in streamed)
    bound = best_resident - 0.9 * (weights - held)
    assert worst_streamed <= bound, (
        f'streamed peak {worst_streamed / MB:.1f} MiB > resident {best_resident / MB:.1f} MiB '
        f'- 0.9 x {(weights - held) / MB:.1f} MiB not held = {bound / MB:.1f} MiB: the fixed '
        'cost of streaming grew back')
    assert all(data['activation_peak_bytes'] > 0 for _, data in streamed)


@pytest.mark.skipif(not AVAIL, reason=f'memory cgroups: {AVAIL.reason}')
def test_the_fixed_pieces_stay_bounded(tiny):
    """
    Each piece of streaming's fixed cost, against what the same process had before it.

    Threads: two readers (two workers and a checksum thread each) and the loader, no more.
    malloc arenas: capped (runtime.malloc), however many threads allocate. Python objects
    (slots, timeline, checksum state): nothing accumulates from one pass to the next.
    """
    from demand_layering_ros.runtime import malloc
    _, data = _child('stream', tiny)
    assert data['threads'] <= 7, data
    assert data['arenas'] <= malloc.ARENAS, data
    assert data['python_heap_growth'] < 64 << 10, data


def test_a_budget_load_builds_one_skeleton(tiny, monkeypatch):
    """
    load(budget_mb=...) fits the budget on its own skeleton, it builds no second one.

    A second meta skeleton left ~1 MiB of fragmented heap behind configure: on ssdlite320
    (13 MB of weights) most of what streaming may cost on top of the weights it saves.
    """
    built = []
    real = P.Pack.build_detector

    def counting(self, *args, **kwargs):
        built.append(self.path)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(P.Pack, 'build_detector', counting)
    model = load(tiny.path, budget_mb=4.0)
    try:
        assert model.stats()['peak_weight_bytes'] <= 4 * MB
    finally:
        model.close()
    assert len(built) == 1, f'{len(built)} skeletons built for one load'


def _darknet_ideal_peak(model, x):
    """
    Return the bytes a Darknet pass must hold at once, from the layer shapes.

    While layer i runs: its output, the input it reads (the previous output, unless it is a
    route that does not read it), every earlier output a later layer still reads, and the head
    outputs kept for the result.
    """
    per_value = x.element_size() * x.shape[0]
    sizes = [per_value * c * h * w for c, h, w in model.shapes]
    last = {}
    for i, layer in enumerate(model.layers):
        for j in layer.sources:
            last[j] = i
    peak, heads = 0, 0
    for i, layer in enumerate(model.layers):
        kept = {j for j, k in last.items() if j < i <= k}
        prev = x.numel() * x.element_size() if i == 0 else sizes[i - 1]
        reads_prev = not layer.sources or isinstance(layer, L.Shortcut) or \
            (i - 1) in layer.sources
        live = sizes[i] + sum(sizes[j] for j in kept) + heads
        if reads_prev and (i - 1) not in kept:
            live += prev
        peak = max(peak, live)
        if layer.is_head:
            heads += sizes[i]
    return peak


@pytest.mark.parametrize('spec', ['darknet:yolov3-tiny', 'darknet:yolov3'])
def test_darknet_pass_holds_no_more_than_its_live_tensors(spec):
    """Route/shortcut inputs are freed after their last use, layers work in place."""
    from demand_layering_ros.models import registry
    det = registry.build(spec, seed=0, input_size=(160, 160))
    x = det.timing_input(1)
    ideal = _darknet_ideal_peak(det.model, x)
    measured = activation_peak_cpu(det.model, x)
    assert measured <= 1.15 * ideal + MB, (measured / MB, ideal / MB)


def test_in_place_layers_give_the_same_bits_as_out_of_place():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=g) * 3
    for name, fn in L.ACTIVATIONS.items():
        if fn is None:
            continue
        inplace = L.ACTIVATIONS_INPLACE.get(name)
        if inplace is not None:
            assert torch.equal(fn(x), inplace(x.clone())), name
    bn = L.BatchNorm(8)
    with torch.no_grad():
        for p in (bn.weight, bn.bias, bn.running_mean):
            p.copy_(torch.randn(8, generator=g))
        bn.running_var.copy_(torch.rand(8, generator=g) + 0.1)
    with torch.enable_grad():
        want = bn(x)
    y = x.clone()
    with torch.inference_mode():
        got = bn(y)
    assert got.data_ptr() == y.data_ptr() and torch.equal(got, want.detach())


def test_streamed_inference_equals_autograd_off_and_resident(tiny):
    """inference_mode in the executor: the same bits as the resident model with grad on."""
    x = tiny.build_detector(meta=True).timing_input(1)
    ref = load_resident(tiny.path)
    with torch.enable_grad():
        want = ref(x)                                   # the out-of-place path
    m = load(tiny.path, budget_mb=4)
    got = m(x)
    assert all(torch.equal(a, b.detach()) for a, b in zip(got, want))
    st = m.stats()
    assert st['split_units']                            # chunks assembled into one output
    m.close()


def test_stats_count_what_the_kernel_counts(tiny):
    x = tiny.build_detector(meta=True).timing_input(1)
    m = load(tiny.path, budget_mb=4)
    st = m.stats()
    assert st['activation_peak_bytes'] == 0 and st['pinned_bytes'] == 0
    m(x)
    m(x)
    st = m.stats()
    assert st['activation_peak_bytes'] > 0
    assert st['process_rss_bytes'] >= cgroups.process_rss() * 0.5
    assert st['weights_cached_bytes'] is not None and st['weights_cached_bytes'] < MB
    if AVAIL:
        assert st['page_cache_growth_bytes'] is not None
        assert st['page_cache_growth_bytes'] < 4 * MB        # O_DIRECT: nothing cached
    assert st['peak_weight_bytes'] <= st['budget_bytes']
    m.close()


def test_diagnostics_show_the_memory_figures():
    pytest.importorskip('diagnostic_msgs')
    from demand_layering_ros.ros.diagnostics import Diagnostics
    figures = {'peak_weight_bytes': 4 * MB, 'activation_peak_bytes': 20 * MB,
               'pinned_bytes': 0, 'page_cache_growth_bytes': None,
               'weights_cached_bytes': 8192}
    stats = {'model_stats': figures, 'plan_note': '', 'configured': True, 'model': 'm',
             'process_rss_bytes': 500 * MB, 'batching': True, 'latency_ms_by_batch': {},
             'predicted_latency_ms': 1.0}
    st = Diagnostics().model_status('n', {'memory_budget_mb': 8.0}, stats, 'active',
                                    ('', 0.0), False, 0.0)
    values = {kv.key: kv.value for kv in st.values}
    assert values['activation_peak_mb'] == '20.000' and values['pinned_staging_mb'] == '0.000'
    assert values['page_cache_growth_mb'] == 'nan' and values['process_rss_mb'] == '500.000'
    assert values['peak_weight_mb'] == '4.000' and float(values['weights_cached_mb']) > 0


def test_pinned_size_is_the_caching_host_allocators_block():
    assert [pinned_size(n) for n in (0, 1, 4096, 4097, 18 << 20)] == \
        [0, 1, 4096, 8192, 32 << 20]


def test_plan_predicts_the_whole_process(tiny):
    from demand_layering_ros.planning import planner
    prof = {'runtime_baseline_bytes': 300 * MB, 'activation_peak_bytes': 5 * MB}
    got = planner.memory_prediction(prof, 2 * MB, 0)
    assert got == {'predicted_activation_mb': 5.0, 'predicted_staging_mb': 0.0,
                   'runtime_baseline_mb': 300.0, 'predicted_total_mb': 307.0}
    assert planner.memory_prediction({}, 2 * MB, 0)['predicted_total_mb'] is None


@pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
@pytest.mark.parametrize('staging', ['copy', 'zero_copy'])
def test_cuda_allocator_matches_the_executors_accounting(tiny, staging):
    """
    torch.cuda.max_memory_allocated() against stats(): nothing on the device is unaccounted.

    After load: the device holds the resident units and the device arena (copy), nothing else
    (the residents went through pinned pieces, not a second device copy). After passes: the
    allocator's peak is those weights plus the activation peak the executor measured. Pinned
    host memory: the ring (its power-of-two block) and nothing the resident load left behind.
    """
    dev = torch.device('cuda')
    x = tiny.build_detector(meta=True).timing_input(1).to(dev)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    empty_host = getattr(torch._C, '_host_emptyCache', None)
    if empty_host is not None:
        empty_host()                            # pinned blocks earlier tests left cached
    host0 = _pinned_held()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    m = load(tiny.path, device='cuda', staging=staging, budget_mb=tiny.total_bytes / 2 / MB)
    st = m.stats()
    on_device = st['resident_bytes'] + (st['arena_bytes'] if staging == 'copy' else 0)
    slack = 2 * MB                                     # the allocator's 512-byte/2 MiB rounding
    assert abs(torch.cuda.memory_allocated(dev) - base - on_device) <= slack
    assert torch.cuda.max_memory_allocated(dev) - base <= on_device + slack
    for _ in range(3):
        m(x)
    torch.cuda.synchronize()
    st = m.stats()
    assert st['activation_peak_bytes'] > 0
    assert torch.cuda.max_memory_allocated(dev) - base <= \
        on_device + st['activation_peak_bytes'] + slack
    assert st['peak_weight_bytes'] <= st['budget_bytes']
    if staging == 'copy':
        assert st['pinned_bytes'] == pinned_size(st['staging_bytes']) > 0
    held = _pinned_held()
    if held is not None and host0 is not None:
        # the ring and nothing else: the resident load's pinned pieces were handed back
        assert held - host0 <= st['pinned_bytes'] + slack, (held - host0, st['pinned_bytes'])
    m.close()


def _pinned_held():
    """Return the pinned host bytes torch's caching host allocator holds (None: unknown)."""
    stats = getattr(torch.cuda, 'host_memory_stats', None)
    if stats is None:
        return None
    s = stats()
    for key in ('reserved_bytes.current', 'segment_bytes.current', 'allocated_bytes.current'):
        if key in s:
            return s[key]
    return None


@pytest.mark.parametrize('scratch', ['arena', 'bounce'])
def test_piecewise_resident_copy_gives_the_packs_bytes(tiny, scratch):
    """
    The CUDA resident load (pieces through pinned memory, each unit's digest checked), run here.

    On the CPU the runtime reads residents in place, so this calls the CUDA path directly: every
    resident unit streamed through the staging's scratch (the arena) or a bounce buffer must
    land byte for byte where load_resident puts it, and the bounce buffer must be handed back.
    """
    m = load(tiny.path, budget_mb=8)
    e = m._engine
    e.pipeline.stop()                   # no read-ahead into the arena while it serves as scratch
    units = sorted((u for u in e.units if u.resident), key=lambda u: u.info.offset)
    assert units
    total = sum(u.info.length for u in units)
    if scratch == 'bounce':
        e.pipeline.staging.scratch = lambda: None       # as a CUDA staging without a ring
    got = e._copy_residents(units, total)
    assert e.pipeline.transient_bytes == 0
    fd = os.open(tiny.weights_path, os.O_RDONLY)
    try:
        want = torch.cat([torch.frombuffer(bytearray(os.pread(fd, u.info.length,
                                                              u.info.offset)), dtype=torch.uint8)
                          for u in units])
    finally:
        os.close(fd)
    assert torch.equal(got, want)
    m.close()
