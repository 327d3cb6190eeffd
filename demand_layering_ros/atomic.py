# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Write a file so that a reader sees either the old content or the whole new one, never half.

Packs, profiles, plans and benchmark results are read by other processes (a node starting while
`plan` writes, a crash in the middle of a write): each goes to a temporary file beside the target,
is flushed to disk, and replaces the target in one rename.
"""

import json
import os
from pathlib import Path


def temp_path(path):
    """Return the temporary name a file is written under before it replaces `path`."""
    path = Path(path)
    return path.with_name(f'.{path.name}.tmp-{os.getpid()}')


def write_bytes(path, write, mode='w'):
    """Create `path` atomically: write(f) fills the temporary file; returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path, obj):
    """Write `obj` as indented JSON to `path`, atomically."""
    def dump(f):
        json.dump(obj, f, indent=1)
        f.write('\n')
    return write_bytes(path, dump)


def write_yaml(path, obj):
    """Write `obj` as YAML (safe_dump, keys in order) to `path`, atomically."""
    import yaml
    return write_bytes(path, lambda f: yaml.safe_dump(obj, f, sort_keys=False,
                                                      default_flow_style=None, width=99))
