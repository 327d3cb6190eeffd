# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Memory pressure: the detector node and the rest of the robot in one memory cgroup.

`make bench-pressure` (python -m bench.bench_pressure): the real detector node serves a replay
camera at 30 fps, in one memory cgroup with a hard limit, beside a "robot" process in the same
cgroup (`bench.pressure_robot`: another node starting, +N MiB every 2 s up to a maximum, held,
then freed). Three phases, the same limit and the same robot schedule: the node with its model
resident, demand-layered at a fixed budget, and demand-layered with `keep_free_mb`. Per phase:
OOM kills and which process, frames published, latency (receipt minus camera stamp, per answer),
the reaction from a robot step to the node's memory going down (and the node's own figure),
the cgroup's peak, and, after the robot frees its memory, whether the budget grew back and the
median latency returned within 10% of its value before the pressure. The first phase sets the
limit: its peak after a few seconds of serving plus `--headroom-mb`; the same limit holds the
next phases from their first byte. Writes results.json, a plot and (with --markdown) the
BENCHMARKS.md section between its `bench:pressure` markers.
"""

import argparse
import json
import os
from pathlib import Path
import signal
import sys
import threading
import time

from bench.pressure_report import report, summarize
from demand_layering_ros.process_memory import statm
from demand_layering_ros.sizes import MB
from tools import cgroups
from tools.demo import Listener

ROOT = Path(__file__).resolve().parents[1]
ROBOT = ROOT / 'bench' / 'pressure_robot.py'
PHASES = ('resident', 'fixed budget', 'keep_free')
# yolov3 (236.5 MiB of weights) and yolov3-tiny (33.8 MiB): the robot's steps, the room the limit
# leaves above the resident node, the fixed budget, keep_free. See BENCHMARKS.md for the reasons.
SCENES = {
    'yolov3': {'headroom_mb': 128.0, 'keep_free_mb': 112.0, 'fixed_budget_mb': 160.0,
               'step_mb': 32.0, 'max_mb': 256.0},
    'yolov3-tiny': {'headroom_mb': 24.0, 'keep_free_mb': 24.0, 'fixed_budget_mb': 26.0,
                    'step_mb': 8.0, 'max_mb': 32.0},
}


class Recorder(Listener):
    """The demo's listener, keeping every answer's time and latency and every diagnostics."""

    def __init__(self, node, phase, out_dir):
        """Listen without the camera's images (no decoding at 30 fps in this process)."""
        super().__init__(node, phase, out_dir, verbose=False, images=False)
        self.answers = []         # (monotonic at receipt, latency s: receipt - camera stamp)
        self.series = []          # (monotonic, the model's /diagnostics values)

    def on_detections(self, msg):
        """Time the answer against its camera stamp (the wall clock, as the camera stamps)."""
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.answers.append((time.monotonic(), time.time() - stamp))
        super().on_detections(msg)

    def on_diagnostics(self, msg):
        """Keep the model's status over time (budget in force, shrinks, grows)."""
        super().on_diagnostics(msg)
        for status in msg.status:
            if status.name.endswith(': model'):
                self.series.append((time.monotonic(), {kv.key: kv.value for kv in status.values}))


class Sampler:
    """Samples the cgroup's usage and the robot's memory every `interval` s, in a thread."""

    def __init__(self, cgroup, interval=0.02):
        """Start sampling at once; watch() a process to note when it ends."""
        self.cgroup, self.interval = cgroup, interval
        self.robot_pid = None
        self.rows = []            # (monotonic, cgroup usage, robot's anonymous bytes)
        self.procs, self.ended = {}, {}     # role -> CgroupProcess; role -> when it ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='pressure-sampler', daemon=True)
        self._thread.start()

    def _robot_bytes(self):
        if self.robot_pid is None:
            return 0
        s = statm(self.robot_pid)
        return s[0] - s[1] if s is not None else 0

    def _run(self):
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self.rows.append((now, self.cgroup.usage_bytes(), self._robot_bytes()))
            except (OSError, cgroups.CgroupError):
                pass
            for role, proc in list(self.procs.items()):
                if role not in self.ended and not proc.running():
                    self.ended[role] = now

    def stop(self):
        """Stop sampling; return the rows."""
        self._stop.set()
        self._thread.join()
        return self.rows


def robot_command(scene, args):
    """Return the robot's command line: its schedule, in a tiny interpreter."""
    return [sys.executable, '-I', '-S', str(ROBOT), '--delay', str(args.before_s),
            '--step-mb', str(scene['step_mb']), '--every', str(args.every_s),
            '--max-mb', str(scene['max_mb']), '--hold', str(args.hold_s),
            '--linger', str(args.after_s)]


def schedule_s(scene, args):
    """Return how long the robot lives: before, the steps, the hold, after."""
    steps = int(scene['max_mb'] // scene['step_mb'])
    return args.before_s + steps * args.every_s + max(0.0, args.hold_s - args.every_s) + \
        args.after_s


def phase_overrides(phase, pk, scene, args, out_dir):
    """Return the node's parameters for one phase (the demo's resident plan and fitted plan)."""
    from tools.demo import CAMERA_TOPIC, fit_plan, resident_plan
    common = {'pack_path': str(pk.path), 'image_topics': f'[{CAMERA_TOPIC}]', 'device': 'cpu',
              'publish_debug_image': 'false', 'qos_reliability': 'reliable'}
    tag = Path(pk.path).name
    if phase == 'resident':
        return dict(common, memory_budget_mb='0.0',
                    plan_file=resident_plan(pk, out_dir / f'PLAN_{tag}_resident.yaml'))
    if phase == 'fixed budget':
        budget = scene['fixed_budget_mb']
        return dict(common, memory_budget_mb=f'{budget:.1f}',
                    plan_file=fit_plan(pk, budget, out_dir / f'PLAN_{tag}_fixed.yaml'))
    return dict(common, memory_budget_mb='0.0', keep_free_mb=f'{scene["keep_free_mb"]:.1f}')


class Phase:
    """One phase: the node and the robot in a fresh cgroup; run() returns what was measured."""

    def __init__(self, ros_node, name, overrides, scene, args, out_dir):
        """Keep what the phase needs; nothing starts yet."""
        self.ros_node, self.name, self.overrides = ros_node, name, overrides
        self.scene, self.args, self.out_dir = scene, args, Path(out_dir)
        self.node = self.robot = self.camera = None

    def run(self, limit_bytes):
        """Run the phase under `limit_bytes` (None: set it from this phase, see module doc)."""
        from tools.demo import node_command, start_camera, wait_for
        rec = Recorder(self.ros_node, self.name, self.out_dir)
        with cgroups.MemoryCgroup(limit_bytes) as cg:
            sampler = Sampler(cg)
            self.node = cgroups.start_in_cgroup(
                node_command(self.args.params_file, self.overrides), cgroup=cg, cwd=str(ROOT),
                sample_interval=0.5)
            sampler.procs['node'] = self.node
            events = []
            try:
                if not wait_for(rec.active, 240.0, self.node):
                    raise RuntimeError(f'{self.name}: the node did not become active')
                self.camera = start_camera(self.args.photos, self.args.rate,
                                           schedule_s(self.scene, self.args) + 30)
                wait_for(lambda: rec.answers, 60.0, self.node)
                if limit_bytes is None:
                    time.sleep(self.args.settle_s)
                    cg.set_limit(cg.peak_bytes() + int(self.scene['headroom_mb'] * MB))
                events = self._robot(cg, sampler)
            finally:
                node_result, robot_result = self._stop()
                rows, ended = sampler.stop(), dict(sampler.ended)
                row = {'phase': self.name, 'limit_bytes': cg.limit_bytes,
                       'oom_kills': cg.oom_kills(), 'cgroup_peak_bytes': cg.peak_bytes()}
        (self.out_dir / f'node_{self.name.replace(" ", "_")}.log').write_text(
            node_result.stdout + node_result.stderr)
        row.update(processes=[_process('node', self.node, ended), _process('robot', self.robot,
                                                                           ended)],
                   samples=rows, robot_events=events, answers=rec.answers,
                   diagnostics=rec.series, camera=_camera_status(rec))
        for sub in rec.subs:
            self.ros_node.destroy_subscription(sub)
        return row

    def _robot(self, cg, sampler):
        """Start the robot in the node's cgroup, wait for its schedule; return its events."""
        self.robot = cgroups.start_in_cgroup(robot_command(self.scene, self.args), cgroup=cg,
                                             sample_interval=0.5)
        sampler.robot_pid = self.robot.pid
        sampler.procs['robot'] = self.robot
        self.robot.wait(timeout=schedule_s(self.scene, self.args) + 30)
        out = self.robot.result.stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith('{')]

    def _stop(self):
        """Stop the camera, the robot (if alive) and the node; return their results."""
        if self.camera is not None:
            self.camera.terminate()
            self.camera.communicate(timeout=30)
        robot = None
        if self.robot is not None:
            robot = self.robot.result or self.robot.wait(timeout=1)
        self.node.send_signal(signal.SIGINT)
        # wait()'s timeout counts from the start: 30 s more from now
        return self.node.wait(timeout=time.monotonic() - self.node.t0 + 30), robot


def _process(role, proc, ended):
    """Return what happened to one process of the cgroup (its pid, exit, OOM kill, end)."""
    if proc is None or proc.result is None:
        return {'role': role, 'started': False}
    r = proc.result
    return {'role': role, 'started': True, 'pid': proc.pid, 'returncode': r.returncode,
            'oom_killed': r.oom_killed, 'ended': ended.get(role, proc.t0 + r.wall_s)}


def _camera_status(rec):
    """Return the node's last camera status (frames in and out, its latency figures)."""
    return next((v for k, v in rec.diagnostics.items() if ': camera' in k), {})


def run_scene(ros_node, model, pk, scene, args, out_dir):
    """Run the phases of one model; return their rows (the first phase sets the limit)."""
    rows, limit = [], args.limit_mb * MB if args.limit_mb else None
    for name in args.phases:
        print(f'[bench-pressure] {model}: {name}', flush=True)
        phase = Phase(ros_node, name, phase_overrides(name, pk, scene, args, out_dir), scene,
                      args, out_dir)
        row = phase.run(int(limit) if limit else None)
        limit = row['limit_bytes']
        row.update(model=model, scene=scene)
        rows.append(row)
        print('[bench-pressure]   ' + summarize(row)['line'], flush=True)
    return rows


def packs(args):
    """Return {model: pack} of the models asked for (written on first use)."""
    from tools import demo
    out = {}
    for model in args.models:
        if model == 'yolov3-tiny':
            out[model] = demo.ensure_pack(Path(args.pack_dir) / 'yolov3-tiny-416')
        else:
            size = args.input_size
            out[model] = demo.ensure_pressure_pack(
                Path(args.pack_dir) / f'yolov3-{size}-seed0', (size, size))
    return out


def add_arguments(p):
    """Add the benchmark's options."""
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out_pressure'), metavar='DIR')
    p.add_argument('--markdown', default='', help='BENCHMARKS.md to update (default: none)')
    p.add_argument('--models', default='yolov3,yolov3-tiny',
                   type=lambda s: [m for m in s.split(',') if m],
                   help=f'comma-separated, of {", ".join(SCENES)} (default both)')
    p.add_argument('--phases', default=','.join(PHASES),
                   type=lambda s: [m for m in s.split(',') if m])
    p.add_argument('--pack-dir', default=str(ROOT / '.data' / 'packs'),
                   help='where the packs are (written there on first use)')
    p.add_argument('--input-size', type=int, default=320, help="yolov3's input (default 320)")
    p.add_argument('--rate', type=float, default=30.0, help='camera fps (default 30)')
    p.add_argument('--limit-mb', type=float, default=0.0,
                   help="the cgroup's limit (default 0: the first phase's peak + headroom)")
    p.add_argument('--settle-s', type=float, default=4.0,
                   help='seconds of serving before the first phase sets the limit')
    p.add_argument('--before-s', type=float, default=14.0,
                   help='seconds of serving before the robot takes its first step')
    p.add_argument('--every-s', type=float, default=2.0, help='seconds between robot steps')
    p.add_argument('--hold-s', type=float, default=6.0,
                   help='seconds from the last step to the robot freeing everything')
    p.add_argument('--after-s', type=float, default=16.0,
                   help='seconds of serving after the robot freed its memory')
    p.add_argument('--params-file', default=str(ROOT / 'config' / 'detector.yaml'))
    p.add_argument('--report-only', metavar='RESULTS_JSON',
                   help="write the plot and the section again from a run's results.json")
    for key in SCENES['yolov3']:
        p.add_argument('--' + key.replace('_', '-'), type=float, default=None,
                       help=f"override every scene's {key}")


def main(argv=None):
    """Run the scenes; write results.json, the plot and the markdown section."""
    import rclpy
    from bench.bench_rt import machine
    from tools import demo
    p = argparse.ArgumentParser(prog='python -m bench.bench_pressure',
                                description=__doc__.split('\n\n')[0])
    add_arguments(p)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        args.__dict__.update({k: v for k, v in saved['machine']['args'].items()
                              if k not in ('out', 'markdown', 'report_only')})
        return report(saved['phases'], saved['machine'], args, out)
    avail = cgroups.cgroups_available()
    if not avail:
        print(f'[bench-pressure] needs a memory cgroup: {avail.reason}')
        return 2
    info, started = dict(machine(), cgroup_version=avail.version), time.time()
    info['command'] = 'python -m bench.bench_pressure ' + ' '.join(argv or sys.argv[1:])
    args.photos = demo.demo_photos(out)
    pks = packs(args)
    demo.prime_libraries()
    rclpy.init()
    ros_node = rclpy.create_node('bench_pressure')
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=2)
    executor.add_node(ros_node)
    threading.Thread(target=executor.spin, daemon=True).start()
    rows = []
    try:
        for model, pk in pks.items():
            scene = dict(SCENES[model], weights_mb=sum(u.nbytes for u in pk.units) / MB,
                         pack=Path(pk.path).name, every_s=args.every_s)
            scene.update({k: v for k, v in vars(args).items() if k in SCENES[model] and
                          v is not None})
            rows += run_scene(ros_node, model, pk, scene, args, out)
    finally:
        executor.shutdown()
        ros_node.destroy_node()
        rclpy.try_shutdown()
    info.update(loadavg_end=os.getloadavg(), minutes=(time.time() - started) / 60,
                date=time.strftime('%Y-%m-%d'))
    return report(rows, info, args, out)


if __name__ == '__main__':
    sys.exit(main())
