# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
A plan: which units stay resident and how the rest streams. One type for every reader and writer.

The planner writes it (PLAN.yaml), the node and `detect --plan` read it, the runtime runs it and
`DemandLayeredModel.plan()` reports the one in effect. The five run keys are what the runtime
needs; predictions and the planner's working (trade-off curve, search, profile summary) travel
in `details`, so a PLAN.yaml read and written again keeps everything it had.

A partial plan is allowed: without `resident_units` and `arena_bytes` the runtime fits a budget
itself and only takes `split_bytes`, `prefetch_depth` and `staging` from the plan.
"""

from dataclasses import dataclass, field
import os
from typing import Any, Optional, Tuple, Union

FORMAT = 'demand_layering_ros.plan'
VERSION = 1                        # PLAN.yaml files of version 1 (all so far) load
STAGINGS = ('copy', 'zero_copy')
RUN_KEYS = ('resident_units', 'arena_bytes', 'split_bytes', 'prefetch_depth', 'staging')
PREDICTION_KEYS = ('predicted_latency_ms', 'predicted_peak_weight_mb')
KEYS = RUN_KEYS + PREDICTION_KEYS


class PlanError(ValueError):
    """A plan that cannot be read or is malformed; the message names the file and the key."""


@dataclass
class Plan:
    """What the runtime runs: resident units, arena, split size, read-ahead depth, staging."""

    resident_units: Optional[Tuple[str, ...]] = None
    arena_bytes: Optional[int] = None
    split_bytes: Optional[int] = None
    prefetch_depth: Optional[int] = None
    staging: Optional[str] = None
    predicted_latency_ms: Optional[float] = None
    predicted_peak_weight_mb: Optional[float] = None
    details: dict = field(default_factory=dict)

    @property
    def fixes_layout(self) -> bool:
        """Return True when the plan chooses residents or arena (else the runtime fits them)."""
        return self.resident_units is not None or self.arena_bytes is not None

    @classmethod
    def from_dict(cls, d, where='plan'):
        """Check a mapping (a parsed PLAN.yaml or a plan() dict) and return the Plan."""
        if not isinstance(d, dict):
            raise PlanError(f'{where}: a plan must be a mapping with keys {RUN_KEYS}, '
                            f'got {type(d).__name__}')
        fmt, version = d.get('format'), d.get('version')
        if fmt is not None and fmt != FORMAT:
            raise PlanError(f'{where}: not a plan (format {fmt!r}, expected {FORMAT!r})')
        if version is not None and (not _is_int(version) or not 1 <= version <= VERSION):
            raise PlanError(f'{where}: plan version {version!r} is not one this release reads '
                            f'(1..{VERSION})')
        resident = d.get('resident_units')
        if resident is not None and (not isinstance(resident, (list, tuple))
                                     or not all(isinstance(n, str) for n in resident)):
            raise PlanError(f'{where}: resident_units must be a list of unit names')
        for key in ('arena_bytes', 'split_bytes', 'prefetch_depth'):
            v = d.get(key)
            if v is not None and (not _is_int(v) or v < 0):
                raise PlanError(f'{where}: {key} must be a non-negative integer or null, '
                                f'got {v!r}')
        staging = d.get('staging')
        if staging is not None and staging not in STAGINGS:
            raise PlanError(f'{where}: staging must be one of {STAGINGS}, got {staging!r}')
        pinned = d.get('pinned_host_units')
        if pinned:
            raise PlanError(f'{where}: pinned_host_units is not supported (no middle tier); '
                            'plan again with this release')
        for key in PREDICTION_KEYS:
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise PlanError(f'{where}: {key} must be a number or null, got {v!r}')
        details = {k: v for k, v in d.items() if k not in KEYS}
        return cls(resident_units=tuple(resident) if resident is not None else None,
                   arena_bytes=d.get('arena_bytes'), split_bytes=d.get('split_bytes'),
                   prefetch_depth=d.get('prefetch_depth'), staging=staging,
                   predicted_latency_ms=d.get('predicted_latency_ms'),
                   predicted_peak_weight_mb=d.get('predicted_peak_weight_mb'), details=details)

    def to_dict(self) -> dict:
        """Return the PLAN.yaml mapping: format and version, the run keys, then the details."""
        out = {'format': FORMAT, 'version': VERSION}
        out.update(self.details)
        out.update({'resident_units': list(self.resident_units)
                    if self.resident_units is not None else None,
                    'arena_bytes': self.arena_bytes, 'split_bytes': self.split_bytes,
                    'prefetch_depth': self.prefetch_depth, 'staging': self.staging,
                    'predicted_latency_ms': self.predicted_latency_ms,
                    'predicted_peak_weight_mb': self.predicted_peak_weight_mb})
        out['format'], out['version'] = FORMAT, VERSION
        return out

    def run_dict(self):
        """Return only the run keys and predictions (what `DemandLayeredModel.plan()` shows)."""
        d = self.to_dict()
        return {k: d[k] for k in KEYS}

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> 'Plan':
        """Read PLAN.yaml (or JSON, a subset of YAML) and check it."""
        return cls.from_dict(read_yaml(path, 'plan'), where=os.fspath(path))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the plan as YAML, atomically; return the path."""
        from demand_layering_ros import atomic
        return atomic.write_yaml(path, self.to_dict())

    @classmethod
    def coerce(cls, plan: Any) -> Optional['Plan']:
        """Return a Plan from a Plan, a mapping or a path; None (or an empty mapping) -> None."""
        if plan is None or isinstance(plan, cls):
            return plan
        if isinstance(plan, dict):
            return cls.from_dict(plan) if plan else None
        if isinstance(plan, (str, os.PathLike)):
            return cls.load(plan)
        raise PlanError(f'a plan is a Plan, a mapping or a PLAN.yaml path, got '
                        f'{type(plan).__name__}')


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def read_yaml(path, what):
    """Return the parsed YAML of a plan file; PlanError names the `what` and the path."""
    import yaml
    path = os.fspath(path)
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise PlanError(f'cannot read {what} {path}: {e}') from e
    except yaml.YAMLError as e:
        raise PlanError(f'{what} {path} is not valid YAML: {e}') from e
