# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Merge the configurations of one results.json into another: `python -m bench.merge MAIN EXTRA`.

The GPU check runs the harness twice on the same models (this project's configurations with the
profile and plans first, then the plain ones), so that a time limit cuts the plain ones first;
this puts the second run's configurations into the first run's results, which `--report-only`
then draws as one section. A missing or unreadable file counts as no results.
"""

import json
import sys

from bench.configs import ORDER
from demand_layering_ros import atomic


def read(path):
    """Return a results dict, or None when the file is missing or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def merge(main, extra):
    """Return `main` with `extra`'s models and configurations added (either may be None)."""
    if main is None or extra is None:
        return main if extra is None else extra
    for key, model in extra['models'].items():
        have = main['models'].get(key)
        if have is None or 'configs' not in have:
            main['models'][key] = model
        else:
            have['configs'].update(model.get('configs') or {})
    both = set(main['settings']['configs']) | set(extra['settings']['configs'])
    main['settings']['configs'] = [c for c in ORDER if c in both]
    main['seconds'] = round((main.get('seconds') or 0) + (extra.get('seconds') or 0), 1)
    main['command'] = f'{main.get("command")} ; {extra.get("command")}'
    return main


def main(argv=None):
    """Merge EXTRA into MAIN (written in place); return 1 when neither has results."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit('usage: python -m bench.merge MAIN_RESULTS EXTRA_RESULTS')
    merged = merge(read(argv[0]), read(argv[1]))
    if merged is None:
        print('bench.merge: no results in either file', file=sys.stderr)
        return 1
    atomic.write_json(argv[0], merged)
    print(f'bench.merge: {argv[0]} has {", ".join(merged["settings"]["configs"])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
