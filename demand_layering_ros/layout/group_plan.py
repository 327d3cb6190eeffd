# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
A group plan: several models under one memory budget, one shared arena. One type, one file.

The group fit (`planning.fit.fit_group`) and the group planner (`planning.planner.plan_group`)
write it, `load_shared(plan=...)` and `detect --pack A --pack B --plan` read it. Each model's
section is a single-model Plan (the same run keys a PLAN.yaml has: resident_units, arena_bytes,
split_bytes, prefetch_depth, staging, and its predictions), with `pack` naming the pack it was made
for; the group keys say what the models share: the arena (every model's layout uses it during its
own pass), the staging ring, the budget and the group's predicted peak weight memory.

    format: demand_layering_ros.group_plan
    version: 1
    arena_bytes: 19922944
    staging_bytes: 0
    budget_mb: 24.0
    predicted_peak_weight_mb: 23.875
    models:
      front: {pack: packs/yolov3-tiny, resident_units: [...], arena_bytes: 19922944, ...}
      rear: {pack: packs/yolov3, ...}
"""

from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Optional

from demand_layering_ros.layout.plan import Plan, PlanError, read_yaml, STAGINGS

FORMAT = 'demand_layering_ros.group_plan'
VERSION = 1
GROUP_KEYS = ('arena_bytes', 'staging_bytes', 'staging', 'budget_mb',
              'predicted_peak_weight_mb', 'models')


@dataclass
class GroupPlan:
    """Per-model plans (name -> Plan) and what the models share."""

    models: dict
    arena_bytes: int = 0
    staging_bytes: int = 0
    staging: Optional[str] = None
    budget_mb: Optional[float] = None
    predicted_peak_weight_mb: Optional[float] = None
    details: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d, where='group plan'):
        """Check a mapping (a parsed group PLAN.yaml) and return the GroupPlan."""
        if not isinstance(d, dict):
            raise PlanError(f'{where}: a group plan must be a mapping, got {type(d).__name__}')
        if d.get('format') != FORMAT:
            raise PlanError(f'{where}: not a group plan (format {d.get("format")!r}, expected '
                            f'{FORMAT!r}); a plan for one model is loaded with load()')
        version = d.get('version')
        if version is not None and (not _is_int(version) or not 1 <= version <= VERSION):
            raise PlanError(f'{where}: group plan version {version!r} is not one this release '
                            f'reads (1..{VERSION})')
        models = d.get('models')
        if not isinstance(models, dict) or not models:
            raise PlanError(f'{where}: models must be a mapping of model name to plan')
        arena = d.get('arena_bytes', 0)
        ring = d.get('staging_bytes', 0) or 0
        for key, v in (('arena_bytes', arena), ('staging_bytes', ring)):
            if not _is_int(v) or v < 0:
                raise PlanError(f'{where}: {key} must be a non-negative integer, got {v!r}')
        staging = d.get('staging')
        if staging is not None and staging not in STAGINGS:
            raise PlanError(f'{where}: staging must be one of {STAGINGS}, got {staging!r}')
        for key in ('budget_mb', 'predicted_peak_weight_mb'):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise PlanError(f'{where}: {key} must be a number or null, got {v!r}')
        plans = {}
        for name, section in models.items():
            here = f'{where}: model {name!r}'
            if not isinstance(section, dict):
                raise PlanError(f'{here}: a model plan must be a mapping')
            plan = Plan.from_dict({k: v for k, v in section.items()
                                   if k not in ('format', 'version')}, where=here)
            if plan.resident_units is None or plan.arena_bytes is None:
                raise PlanError(f'{here}: resident_units and arena_bytes are required')
            if plan.arena_bytes > arena:
                raise PlanError(f'{here}: arena_bytes {plan.arena_bytes} exceeds the shared '
                                f'arena ({arena} bytes)')
            plans[str(name)] = plan
        return cls(models=plans, arena_bytes=arena, staging_bytes=ring, staging=staging,
                   budget_mb=d.get('budget_mb'),
                   predicted_peak_weight_mb=d.get('predicted_peak_weight_mb'),
                   details={k: v for k, v in d.items()
                            if k not in GROUP_KEYS + ('format', 'version')})

    def to_dict(self):
        """Return the PLAN.yaml mapping: format, version, the group keys, then the models."""
        out = {'format': FORMAT, 'version': VERSION}
        out.update(self.details)
        out.update({'arena_bytes': int(self.arena_bytes),
                    'staging_bytes': int(self.staging_bytes or 0), 'staging': self.staging,
                    'budget_mb': self.budget_mb,
                    'predicted_peak_weight_mb': self.predicted_peak_weight_mb})
        models = {}
        for name, plan in self.models.items():
            d = plan.to_dict()
            d.pop('format', None)
            d.pop('version', None)
            models[name] = d
        out['models'] = models
        out['format'], out['version'] = FORMAT, VERSION
        return out

    @classmethod
    def load(cls, path):
        """Read a group PLAN.yaml and check it."""
        return cls.from_dict(read_yaml(path, 'group plan'), where=os.fspath(path))

    def save(self, path):
        """Write the group plan as YAML, atomically; return the path."""
        from demand_layering_ros import atomic
        return atomic.write_yaml(path, self.to_dict())

    @classmethod
    def coerce(cls, plan):
        """Return a GroupPlan from a GroupPlan, a mapping or a path (None stays None)."""
        if plan is None or isinstance(plan, cls):
            return plan
        if isinstance(plan, dict):
            return cls.from_dict(plan)
        if isinstance(plan, (str, os.PathLike)):
            return cls.load(plan)
        raise PlanError(f'a group plan is a GroupPlan, a mapping or a PLAN.yaml path, got '
                        f'{type(plan).__name__}')

    def for_models(self, packs):
        """
        Return {name: Plan} for the models {name: pack directory} being loaded.

        A model takes the section of its own name; failing that, the section made for the same
        pack directory (a plan made by `plan --pack A --pack B` names models by their packs).
        """
        out, taken = {}, set()
        by_pack = {}
        for key, plan in self.models.items():
            pack = plan.details.get('pack')
            if pack is not None:
                by_pack.setdefault(_same(pack), []).append(key)
        for name, pack in packs.items():
            key = name if name in self.models and name not in taken else None
            if key is None:
                key = next((k for k in by_pack.get(_same(pack), []) if k not in taken), None)
            if key is None:
                raise PlanError(f'group plan has no section for model {name!r} (pack {pack}); '
                                f'it plans {sorted(self.models)}')
            taken.add(key)
            out[name] = self.models[key]
        return out


def _same(path):
    """Return a path's resolved form, so two spellings of one pack directory match."""
    return str(Path(os.fspath(getattr(path, 'path', path))).resolve())


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)
