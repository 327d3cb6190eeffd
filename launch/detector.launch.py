# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Launch the demand-layered detector as a lifecycle node, on Humble and Jazzy alike.

The node configures and activates itself (its `autostart` parameter), so this file needs no
`LifecycleNode(autostart=...)` (absent on Humble). The parameter file's section for the node is
also passed as a dictionary, so it applies under any `namespace` (a bare
`demand_layering_detector:` key in a YAML file only matches the root namespace).

Failures are said in one line and never hidden: a malformed argument (`image_topics:=[/cam0`, a
topic name with a space) stops the launch before anything starts, naming the argument and the
topic, and `ros2 launch` exits 1. An invalid parameter value leaves the node running but
unconfigured with one ERROR line saying why (the same as a bad `pack_path`: a lifecycle manager
or `ros2 param set` + `ros2 lifecycle set ... configure` can still fix it). If the node process
dies, the launch says so with its exit code, shuts down and exits 1.

    ros2 launch demand_layering_ros detector.launch.py params_file:=my.yaml namespace:=robot1
        image_topics:="[/cam0/image_raw, /cam1/image_raw]" device:=cuda

Several models under one budget: `params_file:=config/two_models.yaml` (its `front: {...}`
sections are nested parameters, `front.pack_path` ...); the `image_topics` and `pack_path`
arguments set the node-wide parameters, which a node with `models` does not use.
"""

import os

NODE_NAME = 'demand_layering_detector'
ARGUMENTS = (
    ('params_file', None, "YAML parameter file (default: the package's config/detector.yaml)"),
    ('namespace', '', 'namespace of the node (relative image topics resolve inside it)'),
    ('image_topics', '', 'image topics, e.g. "[/cam0/image_raw, /cam1/image_raw]" or '
                         '"/cam0/image_raw,/cam1/image_raw"; empty = from params_file'),
    ('device', '', 'cpu, cuda or cuda:N; empty = from params_file'),
    ('pack_path', '', 'weight pack directory; empty = from params_file'),
    ('autostart', '', 'true/false: configure and activate by itself; empty = from params_file'),
    ('log_level', 'info', 'debug, info, warn, error or fatal'),
    ('use_sim_time', 'false', 'use the /clock topic as time source'),
)


def parse_topics(text):
    """Parse a list of topics: YAML list syntax, or separated by commas or spaces."""
    text = text.strip()
    if text.startswith('['):
        import yaml
        try:
            topics = yaml.safe_load(text)
        except yaml.YAMLError as e:
            problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
            raise ValueError(f'image_topics: {text!r} is not a list of topics ({problem}); '
                             'write e.g. "[/cam0/image_raw, /cam1/image_raw]"') from None
        if not isinstance(topics, list):
            raise ValueError(f'image_topics: {text!r} is not a list')
        topics = [str(t).strip() for t in topics if str(t).strip()]
    elif text.endswith(']'):
        raise ValueError(f'image_topics: {text!r} has a closing bracket but no opening one')
    else:
        topics = [t for t in text.replace(',', ' ').split() if t]
    for topic in topics:
        try:
            check_topic(topic)
        except ValueError as e:
            if len(topics) == 1:
                raise
            raise ValueError(f'{e} (image_topics:={text!r} was read as {len(topics)} topics, '
                             'separated by commas or spaces)') from None
    return topics


def check_topic(topic):
    """Raise ValueError naming the argument and the topic when `topic` is not a valid name."""
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_full_topic_name import validate_full_topic_name
    try:
        validate_full_topic_name(expand_topic_name(topic, NODE_NAME, '/'))
    except Exception as e:   # ValueError or InvalidTopicNameException, multi-line
        why = str(e).splitlines()[0].rstrip(':').rsplit(', at ', 1)[0]
        prefix = f'topic name {topic!r} is invalid: '
        why = why.replace('Invalid topic name: ', '').replace(prefix, '')
        raise ValueError(f'image_topics: {topic!r} is not a valid topic name: {why}') from None


def parse_bool(name, text):
    """Parse a launch argument as a boolean, with a clear error."""
    value = text.strip().lower()
    if value in ('true', '1', 'yes', 'on'):
        return True
    if value in ('false', '0', 'no', 'off'):
        return False
    raise ValueError(f'{name}: {text!r} is not true or false')


def node_parameters(path, namespace=''):
    """Return the ros__parameters that apply to this node from a parameter file (merged)."""
    import yaml
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f'{path}: a parameter file maps node names to ros__parameters')
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    keys = ['/**', '**', NODE_NAME, '/' + NODE_NAME, '/**/' + NODE_NAME, f'{ns}/{NODE_NAME}']
    params = {}
    for key in dict.fromkeys(keys):     # in order, without duplicates
        section = data.get(key)
        if isinstance(section, dict) and isinstance(section.get('ros__parameters'), dict):
            params.update(section['ros__parameters'])
    return params


def parameter_overrides(values):
    """Map launch argument strings to parameter overrides (empty means: keep the file's)."""
    out = {'use_sim_time': parse_bool('use_sim_time', values['use_sim_time'])}
    if values['image_topics'].strip():
        out['image_topics'] = parse_topics(values['image_topics'])
    for name in ('device', 'pack_path'):
        if values[name].strip():
            out[name] = values[name].strip()
    if values['autostart'].strip():
        out['autostart'] = parse_bool('autostart', values['autostart'])
    return out


def launchable(params):
    """
    Return the parameters launch_ros can pass: without empty lists (the node's default anyway).

    launch_ros cannot type an empty sequence and fails the whole launch on one, such as the
    default file's `models: []`.
    """
    return {k: v for k, v in params.items() if not (isinstance(v, (list, tuple)) and not v)}


def _on_exit(event, context):
    """Say that the node died, with its exit code, and end the launch with status 1."""
    if event.returncode in (0, None) or event.returncode < 0:   # a clean exit or a signal
        return None
    raise RuntimeError(f'{NODE_NAME} exited with code {event.returncode} (see its output '
                       'above)')


def _setup(context):
    from launch.actions import RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode

    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    params_file = values['params_file']
    params = node_parameters(params_file, values['namespace'])
    params.update(parameter_overrides(values))
    node = LifecycleNode(
        package='demand_layering_ros', executable='detector_node', name=NODE_NAME,
        namespace=values['namespace'], output='screen',
        parameters=[launchable(params)],
        arguments=['--ros-args', '--log-level', values['log_level']])
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_exit))]


def generate_launch_description():
    """Declare the arguments and the detector node."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    default_params = os.path.join(get_package_share_directory('demand_layering_ros'),
                                  'config', 'detector.yaml')
    actions = [DeclareLaunchArgument(name, default_value=default_params if default is None
                                     else default, description=text)
               for name, default, text in ARGUMENTS]
    actions.append(OpaqueFunction(function=_setup))
    return LaunchDescription(actions)
