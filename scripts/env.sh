# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
# Source after `make setup`: a shell with ROS 2 Jazzy (wheels), PyTorch, the vision_msgs-compatible
# interfaces and, once `make build` ran, this package's console scripts.
_dlr_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
# shellcheck disable=SC1091
source "$_dlr_root/.venv/bin/activate"
export AMENT_PREFIX_PATH=$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
if [ -f "$_dlr_root/.colcon/deps/install/setup.bash" ]; then
  # shellcheck disable=SC1091
  source "$_dlr_root/.colcon/deps/install/setup.bash"
fi
if [ -f "$_dlr_root/.colcon/install/setup.bash" ]; then
  # shellcheck disable=SC1091
  source "$_dlr_root/.colcon/install/setup.bash"
fi
export DLR_DARKNET_DIR=${DLR_DARKNET_DIR:-$_dlr_root/.data/darknet}
unset _dlr_root
