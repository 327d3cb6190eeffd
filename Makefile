# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
# One-command entry points. `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
ENV := source scripts/env.sh &&
COLCON := colcon --log-base .colcon/log
COLCON_PATHS := --base-paths . --build-base .colcon/build --install-base .colcon/install

.PHONY: setup build test lint demo bench bench-rt bench-shared bench-pressure soak stress gpu-check clean

setup:
	@bash scripts/setup.sh

build: setup
	@$(ENV) $(COLCON) build $(COLCON_PATHS) --symlink-install --event-handlers console_cohesion- \
	  > .colcon/build.log 2>&1 || { tail -n 60 .colcon/build.log; exit 1; }
	@echo '[build] demand_layering_ros built into .colcon/install'

# The whole suite (unit, integration over real DDS, lint) through colcon test; fails on any
# failing test, on a build error, and when no test ran.
test: build
	@$(ENV) rm -rf .colcon/build/demand_layering_ros/test_results && \
	  $(COLCON) test $(COLCON_PATHS) --return-code-on-test-failure \
	    --event-handlers console_direct+ $(if $(PYTEST_ARGS),--pytest-args $(PYTEST_ARGS)) ; rc=$$?; \
	  $(COLCON) test-result --test-result-base .colcon/build --verbose | tee .colcon/test-result.txt; \
	  rc2=$${PIPESTATUS[0]}; \
	  grep -qE '^Summary: [1-9][0-9]* tests' .colcon/test-result.txt || { echo '[test] no test ran'; exit 1; }; \
	  [ $$rc -eq 0 ] && [ $$rc2 -eq 0 ]

lint: build
	@$(ENV) $(COLCON) test $(COLCON_PATHS) --return-code-on-test-failure \
	  --pytest-args -k 'flake8 or pep257 or copyright or python310 or core_imports'

demo: build
	@$(ENV) python -m tools.demo

bench: build
	@$(ENV) python -m bench.harness --out bench/out --markdown BENCHMARKS.md

bench-shared: build
	@$(ENV) python -m bench.bench_shared --json bench/out/shared.json --markdown BENCHMARKS.md && \
	  python -m bench.bench_shared_node --json bench/out/shared_node.json

# The node under real camera load (1-4 cameras, 5-30 fps, raw and JPEG) against the node a
# user writes first; about 15 minutes on 2 cores (BENCH_RT_ARGS=--quick: a 1-minute smoke run).
bench-rt: build
	@$(ENV) python -m bench.bench_rt --out bench/out_rt --markdown BENCHMARKS.md $(BENCH_RT_ARGS)

# The node and a robot process taking memory in steps, in one memory cgroup with a hard limit:
# resident, a fixed budget and keep_free_mb side by side (yolov3 and yolov3-tiny), about 6 minutes
# on 2 cores; writes bench/out_pressure/results.json, bench/pressure.png and BENCHMARKS.md's section.
bench-pressure: build
	@$(ENV) python -m bench.bench_pressure --out bench/out_pressure --markdown BENCHMARKS.md

soak: build
	@$(ENV) python -m pytest test/test_soak.py -q --soak-frames 5000

# Live budget changes at random moments while two cameras stream (one model, a group of two):
# 200 changes per scene, about 5 minutes on 2 cores; `make test` runs 30.
stress: build
	@$(ENV) python -m pytest test/test_replan_stress.py -q -s --stress-changes 200

# The CUDA check on a machine with a GPU, in two stages (tests <= 150 s, then the GPU benchmark
# <= 300 s); bench/gpu_check.sh's header says what to carry there and the time limit to ask for.
gpu-check:
	@bash bench/gpu_check.sh --stage $(or $(GPU_STAGE),all)

clean:
	rm -rf .colcon build install log
