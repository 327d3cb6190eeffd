# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
One command line for the tools: detect, pack, profile, plan, camera.

Each command lives in the module that owns the concept and is imported only when chosen, so
`--help` and light commands do not pay for importing torch. A command module provides
`add_arguments(parser, command)` and `run(args, command) -> int`.
"""

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS = {
    'detect': ('demand_layering_ros.detect', 'run a detector on image files, print JSON lines'),
    'pack': ('demand_layering_ros.pack.command',
             'write a weight pack laid out in execution order'),
    'profile': ('demand_layering_ros.planning.command',
                'measure per-unit compute, disk and copy speed'),
    'plan': ('demand_layering_ros.planning.command',
             'choose resident units and arena for a deadline'),
    'camera': ('demand_layering_ros.ros.camera', 'publish images or a video as a ROS 2 camera'),
}


def build_parser(command=None):
    """Build the parser; only the chosen command's module is imported."""
    parser = argparse.ArgumentParser(
        prog='python -m demand_layering_ros',
        description='Demand-layered DNN detection tools.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p, name)
    return parser


# development tools of a source checkout, not of the installed package
MOVED = {'bench': 'make bench (bench/harness.py)', 'demo': 'make demo (tools/demo.py)'}


def main(argv=None):
    """Run one command and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith('-')), None)
    if command in MOVED:
        print(f'{command} is a development tool of the source checkout: run {MOVED[command]}',
              file=sys.stderr)
        return 2
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args, args.command) or 0)
