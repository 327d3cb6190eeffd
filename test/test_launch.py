# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The launch file: its argument handling always, a real launch whenever launch_ros is importable.

There is no launch_ros wheel on PyPI, so the real launch runs only on a ROS 2 install (or with
launch built from source); the argument parsing and parameter-file handling are plain Python
and are checked everywhere.
"""

import importlib.util
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / 'launch' / 'detector.launch.py'
DOMAIN = 100 + (os.getpid() * 17 + 41) % 100


def _launch_module():
    spec = importlib.util.spec_from_file_location('detector_launch', LAUNCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_arguments_declared():
    mod = _launch_module()
    names = [a[0] for a in mod.ARGUMENTS]
    for required in ('params_file', 'namespace', 'image_topics', 'device', 'log_level',
                     'use_sim_time'):
        assert required in names


def test_topic_and_bool_parsing():
    mod = _launch_module()
    assert mod.parse_topics('[/cam0/image_raw, /cam1/image_raw]') == ['/cam0/image_raw',
                                                                      '/cam1/image_raw']
    assert mod.parse_topics('/a/image_raw,/b/image_raw') == ['/a/image_raw', '/b/image_raw']
    assert mod.parse_topics('/a/image_raw') == ['/a/image_raw']
    assert mod.parse_bool('use_sim_time', 'True') is True
    with pytest.raises(ValueError, match='use_sim_time'):
        mod.parse_bool('use_sim_time', 'maybe')


@pytest.mark.parametrize('text, words', [
    ('[/cam0/image_raw', "image_topics: '[/cam0/image_raw' is not a list of topics"),
    ('/cam0/image_raw]', 'closing bracket but no opening one'),
    ('[/cam 0/image_raw]', "image_topics: '/cam 0/image_raw' is not a valid topic name"),
    ('/cam0//image_raw', "image_topics: '/cam0//image_raw' is not a valid topic name"),
])
def test_malformed_image_topics_name_the_argument_and_the_topic(text, words):
    mod = _launch_module()
    with pytest.raises(ValueError) as e:
        mod.parse_topics(text)
    assert words in str(e.value) and '\n' not in str(e.value)


def test_a_node_that_dies_ends_the_launch_with_its_exit_code():
    """Launch returns 0 when a process dies: the handler raises, so `ros2 launch` exits 1."""
    mod = _launch_module()

    class Exited:

        def __init__(self, code):
            self.returncode = code
    assert mod._on_exit(Exited(0), None) is None
    assert mod._on_exit(Exited(-2), None) is None       # SIGINT: the user stopped it
    with pytest.raises(RuntimeError, match='demand_layering_detector exited with code 1'):
        mod._on_exit(Exited(1), None)


def test_parameter_file_section_applies_in_any_namespace(tmp_path):
    mod = _launch_module()
    path = tmp_path / 'p.yaml'
    path.write_text(yaml.safe_dump({
        '/**': {'ros__parameters': {'score_threshold': 0.3, 'max_batch': 2}},
        'demand_layering_detector': {'ros__parameters': {'score_threshold': 0.5}},
        '/robot1/demand_layering_detector': {'ros__parameters': {'device': 'cuda'}},
        'other_node': {'ros__parameters': {'max_batch': 9}},
    }))
    assert mod.node_parameters(path, 'robot1') == {'score_threshold': 0.5, 'max_batch': 2,
                                                   'device': 'cuda'}
    assert mod.node_parameters(path, '') == {'score_threshold': 0.5, 'max_batch': 2}
    # the package's own file parses and covers the node's parameters
    from demand_layering_ros.service import settings
    own = mod.node_parameters(ROOT / 'config' / 'detector.yaml')
    assert set(own) == set(settings.PARAM_BY_NAME)
    # launch_ros fails a launch on an empty list (the default `models: []`): none is passed
    passed = mod.launchable(own)
    assert own['models'] == [] and 'models' not in passed
    assert passed == {k: v for k, v in own.items() if k != 'models'}
    assert not any(isinstance(v, (list, tuple)) and not v for v in passed.values())
    values = {'params_file': str(path), 'namespace': '', 'image_topics': '/x/image_raw',
              'device': '', 'pack_path': '/p', 'autostart': 'false', 'log_level': 'info',
              'use_sim_time': 'false'}
    assert mod.parameter_overrides(values) == {'use_sim_time': False,
                                               'image_topics': ['/x/image_raw'],
                                               'pack_path': '/p', 'autostart': False}


LAUNCH_RUNNER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
args = dict(a.split(':=', 1) for a in sys.argv[2:])
service = LaunchService()
service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=args.items())]))
sys.exit(service.run())
"""


def stop(proc, timeout):
    """Send SIGINT (Ctrl-C); kill after `timeout` s; return the captured stdout (or None)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def test_real_launch(tmp_path):
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no PyPI wheel)')
    from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
    try:
        get_package_share_directory('demand_layering_ros')
    except PackageNotFoundError:
        pytest.skip('demand_layering_ros is not installed in the ament index (colcon build)')
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rcl_interfaces.srv import GetParameters
    from lifecycle_msgs.srv import GetState

    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'demand_layering_detector': {'ros__parameters': {
        'max_batch': 2, 'score_threshold': 0.4}}}))
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN))
    proc = subprocess.Popen(
        [sys.executable, '-c', LAUNCH_RUNNER, str(LAUNCH_FILE), f'params_file:={params}',
         'namespace:=lt', 'image_topics:=[/lt/cam0/image_raw, /lt/cam1/image_raw]',
         'autostart:=false', 'device:=cpu', 'log_level:=info', 'use_sim_time:=false'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    try:
        node = rclpy.create_node('launch_test', context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        end = time.monotonic() + 30
        while time.monotonic() < end and ('demand_layering_detector', '/lt') not in \
                node.get_node_names_and_namespaces():
            executor.spin_once(timeout_sec=0.2)
        assert ('demand_layering_detector', '/lt') in node.get_node_names_and_namespaces()

        def call(srv_type, name, request):
            cli = node.create_client(srv_type, name)
            assert cli.wait_for_service(timeout_sec=10)
            fut = cli.call_async(request)
            executor.spin_until_future_complete(fut, timeout_sec=10)
            return fut.result()
        res = call(GetParameters, '/lt/demand_layering_detector/get_parameters',
                   GetParameters.Request(names=['image_topics', 'max_batch',
                                                'score_threshold', 'autostart']))
        topics, batch, score, autostart = res.values
        assert list(topics.string_array_value) == ['/lt/cam0/image_raw', '/lt/cam1/image_raw']
        assert batch.integer_value == 2 and score.double_value == pytest.approx(0.4)
        assert autostart.bool_value is False
        state = call(GetState, '/lt/demand_layering_detector/get_state', GetState.Request())
        assert state.current_state.label == 'unconfigured'
        executor.shutdown()
        node.destroy_node()
    finally:
        ctx.try_shutdown()
        stop(proc, 20)


def test_real_launch_with_the_default_file_serves_and_stops_cleanly(tmp_path):
    """
    What a user runs first: the package's own detector.yaml, a pack, Ctrl-C.

    The launch must start the node (the default file's `models: []` once failed the whole
    launch in launch_ros), the node must configure and activate, and SIGINT must end the
    launch with status 0 (no segfault at exit).
    """
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no PyPI wheel)')
    from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
    try:
        get_package_share_directory('demand_layering_ros')
    except PackageNotFoundError:
        pytest.skip('demand_layering_ros is not installed in the ament index (colcon build)')
    from demand_layering_ros import pack as P
    pack = P.write_pack('darknet:yolov3-tiny', tmp_path / 'pack', seed=0, input_size='64x64',
                        progress=False, verify=False)
    log = tmp_path / 'launch.log'
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN))
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, '-c', LAUNCH_RUNNER, str(LAUNCH_FILE), f'pack_path:={pack.path}',
             'namespace:=ld', 'image_topics:=/ld/cam/image_raw'],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            end = time.monotonic() + 90
            while time.monotonic() < end and proc.poll() is None and \
                    'active: /ld/cam/image_raw' not in log.read_text():
                time.sleep(0.2)
            assert 'active: /ld/cam/image_raw' in log.read_text(), log.read_text()[-3000:]
        finally:
            stop(proc, 30)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert 'Caught exception' not in text and 'exited with code' not in text, text[-3000:]


def test_real_launch_invalid_parameter_one_line_node_unconfigured(tmp_path):
    """`device:=tpu` and an integer for a double: one ERROR line, the node up, unconfigured."""
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no PyPI wheel)')
    from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
    try:
        get_package_share_directory('demand_layering_ros')
    except PackageNotFoundError:
        pytest.skip('demand_layering_ros is not installed in the ament index (colcon build)')
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from lifecycle_msgs.srv import GetState

    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'demand_layering_detector': {'ros__parameters': {
        'memory_budget_mb': 8, 'pack_path': str(tmp_path / 'no_pack_needed')}}}))
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN))
    proc = subprocess.Popen(
        [sys.executable, '-c', LAUNCH_RUNNER, str(LAUNCH_FILE), f'params_file:={params}',
         'namespace:=bad', 'device:=tpu'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    try:
        node = rclpy.create_node('launch_test_bad', context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        cli = node.create_client(GetState, '/bad/demand_layering_detector/get_state')
        end = time.monotonic() + 60
        while time.monotonic() < end and not cli.service_is_ready():
            executor.spin_once(timeout_sec=0.2)
        assert cli.wait_for_service(timeout_sec=5)
        time.sleep(1.0)                 # autostart has tried by now
        fut = cli.call_async(GetState.Request())
        executor.spin_until_future_complete(fut, timeout_sec=10)
        assert fut.result().current_state.label == 'unconfigured'
        executor.shutdown()
        node.destroy_node()
    finally:
        ctx.try_shutdown()
        out = stop(proc, 20)
    # the node's own lines (launch may add one if SIGINT reaches the node late, on shutdown)
    errors = [line for line in out.splitlines()
              if '[ERROR]' in line and 'demand_layering_detector]:' in line]
    assert len(errors) == 1 and "device: 'tpu' must be cpu, cuda or cuda:N" in errors[0], out
    assert 'Traceback' not in out and 'memory_budget_mb' not in errors[0]
