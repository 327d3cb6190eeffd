# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The shape of the package, checked on its source: what a newcomer is promised in the README.

No class over 400 lines and no function over 80; no import cycle among the package's modules
(imports inside functions count); no module reaching into another module's private names; no
`except ImportError` around the package's own modules; the benchmark harness and the cgroup
runner stay outside the installed package.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'demand_layering_ros'
NAME = 'demand_layering_ros'
MAX_CLASS, MAX_FUNCTION = 400, 80


def modules():
    """Return {dotted module name: parsed tree} for every module of the package."""
    out = {}
    for path in sorted(PKG.rglob('*.py')):
        rel = path.relative_to(ROOT).with_suffix('')
        parts = rel.parts[:-1] if rel.name == '__init__' else rel.parts
        out['.'.join(parts)] = (path, ast.parse(path.read_text(), str(path)))
    return out


MODULES = modules()


def _resolve(name, mods):
    """Return the package module an import names (the longest known prefix), or None."""
    while name:
        if name in mods:
            return name
        name = name.rpartition('.')[0]
    return None


def imports_of(mod, tree, mods):
    """Yield (line, target module, imported names) for every import of a package module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _resolve(a.name, mods)
                if target:
                    yield node.lineno, target, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split('.')[0] == NAME:
            for a in node.names:
                sub = f'{node.module}.{a.name}'
                if sub in mods:
                    yield node.lineno, sub, ()
                else:
                    yield node.lineno, _resolve(node.module, mods), (a.name,)


def test_no_class_or_function_too_long():
    long = []
    for mod, (path, tree) in MODULES.items():
        for node in ast.walk(tree):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION if \
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            if limit and node.end_lineno - node.lineno + 1 > limit:
                long.append(f'{mod}:{node.lineno} {node.name} '
                            f'({node.end_lineno - node.lineno + 1} lines > {limit})')
    assert not long, '\n'.join(long)


def _cycle(graph):
    """Return one import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open':
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 'done'
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _parents(mod):
    parts = mod.split('.')
    return {'.'.join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles_lazy_imports_included():
    graph = {}
    for mod, (_, tree) in MODULES.items():
        # a package importing its own submodules (re-exports) is not a cycle through them
        graph[mod] = {t for _, t, _ in imports_of(mod, tree, MODULES)
                      if t and t != mod and t not in _parents(mod)}
    cycle = _cycle(graph)
    assert cycle is None, ' -> '.join(cycle)


def test_the_checks_see_what_they_must():
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': set()}) is None
    tree = ast.parse('def f():\n    from demand_layering_ros.sizes import _x\n')
    found = list(imports_of('m', tree, {'demand_layering_ros.sizes': None}))
    assert found == [(2, 'demand_layering_ros.sizes', ('_x',))]


def test_no_module_imports_private_names_of_another():
    bad = []
    for mod, (_, tree) in MODULES.items():
        for line, target, names in imports_of(mod, tree, MODULES):
            bad += [f'{mod}:{line} imports {target}.{n}' for n in names
                    if n.startswith('_') and target != mod]
        aliases = {a.asname or a.name for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom))
                   for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith('_') and \
                    not node.attr.startswith('__') and isinstance(node.value, ast.Name) and \
                    node.value.id in aliases and f'{NAME}' in _module_alias(tree, node.value.id):
                bad.append(f'{mod}:{node.lineno} uses {node.value.id}.{node.attr}')
    assert not bad, '\n'.join(bad)


def _module_alias(tree, alias):
    """Return the dotted module an alias stands for in this tree ('' when it is not one)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if (a.asname or a.name) == alias:
                    return a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if (a.asname or a.name) == alias and f'{node.module}.{a.name}' in MODULES:
                    return f'{node.module}.{a.name}'
    return ''


def test_no_import_guards_around_own_modules():
    bad = []
    for mod, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if not catches & {'ImportError', 'ModuleNotFoundError'}:
                continue
            own = [t for stmt in node.body for _, t, _ in imports_of(
                mod, ast.Module(body=[stmt], type_ignores=[]), MODULES) if t]
            if own:
                bad.append(f'{mod}:{node.lineno} guards the import of {own[0]}')
    assert not bad, '\n'.join(bad)


@pytest.mark.parametrize('what, marker', [
    ('the benchmark harness', 'def run_all('),
    ('the cgroup runner', 'class MemoryCgroup'),
    ('the cgroup runner', 'memory.force_empty'),     # reading a limit is fine; emptying is not
])
def test_development_tools_stay_out_of_the_package(what, marker):
    inside = [str(p.relative_to(ROOT)) for p, _ in MODULES.values() if marker in p.read_text()]
    assert not inside, f'{what} belongs in bench/ or tools/, found in {inside}'


# Import direction between the package's folders (and its top-level modules), top to bottom. A
# unit imports only units of a lower rank: the runtime runs the plan it is given (layout/ holds
# the plan type and the pure arena/slot layout both it and planning/ read); a pack builds its
# model family's skeleton, so models/ sits below pack/. A new folder or top-level module gets a
# rank here before it can import anything.
RANKS = {
    '__main__': 13, 'cli': 12, 'detect': 12, '<pkg>': 11,
    'ros/': 10,
    'service/': 9,
    'loading': 8,
    'planning/': 7,
    'measure/': 6,
    'runtime/': 5,
    'plots': 4, 'pack/': 4,
    'memory_following': 4,
    'models/': 3, 'layout/': 3, 'free_memory': 3, 'budget_follower': 3,
    'direct_io': 2, 'process_memory': 2,
    'sizes': 1, 'atomic': 1, 'quantiles': 1,
}


def _unit(mod):
    """Return the folder ('runtime/') or top-level module ('loading') a module belongs to."""
    parts = mod.split('.')
    if len(parts) == 1:
        return '<pkg>'
    return parts[1] + '/' if (PKG / parts[1]).is_dir() else parts[1]


def _upward_imports(mods, ranks):
    """Return each import from a unit into a unit of the same or a higher rank, explained."""
    bad = []
    for mod, (_, tree) in mods.items():
        a = _unit(mod)
        for line, target, _ in imports_of(mod, tree, mods):
            b = _unit(target) if target else a
            if a == b:
                continue
            if a not in ranks or b not in ranks:
                bad.append(f'{mod}:{line}: {a if a not in ranks else b} has no rank in RANKS')
            elif ranks[b] >= ranks[a]:
                bad.append(f'{mod}:{line} ({a}) imports {target} ({b}): not below it')
    return bad


def test_folders_import_only_downwards():
    bad = _upward_imports(MODULES, RANKS)
    assert not bad, '\n'.join(bad)


def test_the_direction_check_sees_an_upward_import():
    runtime = [m for m in MODULES if m.startswith(f'{NAME}.runtime.')][0]
    tree = ast.parse(f'from {NAME}.planning import fit\n')
    bad = _upward_imports({runtime: (None, tree), f'{NAME}.planning.fit': MODULES[
        f'{NAME}.planning.fit']}, RANKS)
    assert any('imports demand_layering_ros.planning.fit (planning/)' in b for b in bad), bad


def test_planning_reads_in_about_ten_modules():
    # a newcomer opens planning/ and finds which file to read; measure/ sits below it
    planning = sorted(p.relative_to(PKG).as_posix() for p in (PKG / 'planning').rglob('*.py'))
    assert len(planning) <= 12, planning


PUBLIC_SURFACE = {
    'loading': ['load', 'load_shared', 'follow_free_memory'],
    'runtime/resident': ['load_resident'],
    'planning/decide': ['decide_plan'],
    'layout/plan': ['Plan.coerce', 'Plan.load', 'Plan.save', 'Plan.to_dict'],
    'pack/store': ['Pack.open', 'Pack.reader'],
    'direct_io': ['Reader.__init__', 'Reader.read_into'],
    'service/service': ['DetectorService.configure', 'DetectorService.infer',
                        'DetectorService.replan', 'DetectorService.stats',
                        'DetectorService.close'],
}


def test_the_public_surface_has_type_hints():
    """Every argument and the return of the entry points a user calls carry a type hint."""
    bare = []
    for rel, names in PUBLIC_SURFACE.items():
        mod = f'{NAME}.{rel.replace("/", ".")}'
        tree = MODULES[mod][1]
        defs = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                defs[node.name] = node
            elif isinstance(node, ast.ClassDef):
                defs.update({f'{node.name}.{f.name}': f for f in node.body
                             if isinstance(f, ast.FunctionDef)})
        for name in names:
            fn = defs[name]
            args = [a for a in fn.args.args + fn.args.kwonlyargs if a.arg not in ('self', 'cls')]
            missing = [a.arg for a in args if a.annotation is None]
            if fn.returns is None and name.rpartition('.')[2] != '__init__':
                missing.append('return')
            if missing:
                bare.append(f'{mod}.{name}: {", ".join(missing)}')
    assert not bare, '\n'.join(bare)
