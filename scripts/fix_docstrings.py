# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Move multi-line docstring summaries to the second line (ament_pep257's D213).

A development aid: `python scripts/fix_docstrings.py FILE...` rewrites files in place.
"""

import re
import sys

PATTERN = re.compile(r'^(?P<indent>[ \t]*)(?P<prefix>[rRbBuU]?)"""(?P<first>[^\n"][^\n]*)\n',
                     re.MULTILINE)


def fix(text):
    """Return text with every multi-line docstring's summary moved to its second line."""
    out = []
    pos = 0
    for m in PATTERN.finditer(text):
        first = m.group('first')
        if first.rstrip().endswith('"""'):
            continue  # one-line docstring
        out.append(text[pos:m.start()])
        indent = m.group('indent')
        out.append('%s%s"""\n%s%s\n' % (indent, m.group('prefix'), indent, first))
        pos = m.end()
    out.append(text[pos:])
    return ''.join(out)


if __name__ == '__main__':
    for name in sys.argv[1:]:
        with open(name, encoding='utf-8') as f:
            old = f.read()
        new = fix(old)
        if new != old:
            with open(name, 'w', encoding='utf-8') as f:
                f.write(new)
            print('fixed', name)
