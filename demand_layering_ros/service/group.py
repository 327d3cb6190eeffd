# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Several detectors under one memory budget, as the node serves them (the `models` setting).

`GroupService` opens every model's pack with `load_shared` (one arena, one reader, one loader,
one budget) and hands each model to a `MemberService`: a `DetectorService` whose model the group
loaded, so that inference, warm-up, latency learning and stats are today's, per model. The
shared budget is the group's: `GroupService.replan` reconfigures the whole group between two
passes; a model's own deadline only changes how its frames are scheduled.
"""

import logging

from demand_layering_ros import loading
from demand_layering_ros.service import settings
from demand_layering_ros.service.service import DetectorService
from demand_layering_ros.sizes import MB


class MemberService(DetectorService):
    """One model of a group: a DetectorService over a model `load_shared` opened."""

    def __init__(self, name, model, log=None):
        """Serve model `name` of a group (`model`: its MemberModel)."""
        super().__init__(log=log)
        self.name = name
        self.given = model

    def _open(self, s):
        """Take the group's model (no pack opened, nothing planned here), then warm up."""
        self.threads.take(s['device'], s['num_threads'])
        self.settings = s
        self.model, self.given = self.given, None   # close() then lets go of it
        if self.model is None:
            raise ValueError(f'model {self.name!r} was closed: configure its group again')
        self.pack = self.model.pack
        self._start(s)

    def replan(self, values):
        """Take a new deadline (it only changes the scheduling); the budget is the group's."""
        s = dict(self.settings)
        s.update({k: values[k] for k in ('deadline_ms', 'frame_period_ms') if k in values})
        settings.check(s)
        self.settings = s

    def refresh(self):
        """Read the model's figures again (after its group was reconfigured)."""
        with self.lock:
            self._update_model_stats()


class GroupService:
    """
    The models of `models` under one memory_budget_mb: configure, re-plan, report, close.

    `members` maps each name to its MemberService (what the node runs frames through);
    `values` are the node's flat settings, `<name>.<key>` included (service.settings).
    """

    def __init__(self, log=None):
        """Nothing is loaded until configure."""
        self.log = log if log is not None else logging.getLogger(__name__)
        self.models = None        # what load_shared returned
        self.members = {}
        self.settings = {}

    @property
    def configured(self):
        """Return True while the group is loaded."""
        return self.models is not None

    def configure(self, values):
        """Open every model under the one budget and warm each up; ValueError says why not."""
        s = settings.defaults()
        s.update(values)
        settings.check(s)
        self.close()
        names = list(s['models'])
        if not names:
            raise ValueError('models is empty: name the models, each with <name>.pack_path')
        for name in names:
            if not settings.model_values(s, name)['pack_path']:
                raise ValueError(f'{name}.pack_path is empty: write a pack with `python -m '
                                 'demand_layering_ros pack` and set it')
        if s['device'].startswith('cuda'):
            import torch
            if not torch.cuda.is_available():
                raise ValueError(f'device {s["device"]}: CUDA is not available here')
        try:
            self.models = loading.load_shared(
                {n: settings.model_values(s, n)['pack_path'] for n in names},
                device=s['device'], budget_mb=settings.given(s, 'memory_budget_mb'),
                plan=settings.given(s, 'plan_file'))
            self.settings = s
            for name in names:
                member = MemberService(name, self.models[name], self.log)
                self.members[name] = member
                member.configure(settings.model_values(s, name))
            self.set_keep_free(s['keep_free_mb'])
        except BaseException:
            self.close()
            raise

    def replan(self, budget_mb):
        """Apply a new shared memory_budget_mb between two passes; raise to refuse it."""
        if not self.configured:
            raise ValueError('re-planning needs a configured group: configure first')
        self._reconfigure(budget_mb or None, f'budget {budget_mb} MiB')
        self.settings['memory_budget_mb'] = budget_mb
        following = self.models.following
        if following is not None:      # the new cap first; following moves from there
            cap = int(budget_mb * MB) if budget_mb else None
            whole = self.models.whole_bytes()
            following.set_limits(cap_bytes=whole if cap is None else min(cap, whole),
                                 budget_bytes=self.models.held_bytes())

    def _reconfigure(self, budget_mb, what):
        self.models.reconfigure(budget_mb=budget_mb,
                                plan=settings.given(self.settings, 'plan_file'))
        for member in self.members.values():
            member.refresh()
        arena = self.models.stats()['arena_bytes']
        self.log.info(f're-planned the group of {", ".join(self.members)}: {what}; shared '
                      f'arena {arena / MB:.1f} MiB')

    def set_keep_free(self, keep_free_mb):
        """Start, change or stop following free memory with the shared budget (0 stops it)."""
        following = self.models.following
        if following is not None:
            following.set_keep_free(int(keep_free_mb * MB))
        elif keep_free_mb:
            loading.follow_free_memory(self.models, keep_free_mb,
                                       settings.given(self.settings, 'memory_budget_mb'),
                                       self.log, apply=self.follow_budget)
        if following is not None and not keep_free_mb:
            self._reconfigure(settings.given(self.settings, 'memory_budget_mb'),
                              'keep_free_mb 0: back to memory_budget_mb')
        self.settings['keep_free_mb'] = keep_free_mb

    def follow_budget(self, budget_bytes):
        """Re-plan the group for the budget free memory allows (keep_free_mb)."""
        self._reconfigure(budget_bytes / MB, f'following free memory (keep_free_mb '
                          f'{self.settings["keep_free_mb"]:g}): budget '
                          f'{budget_bytes / MB:.1f} MiB')

    def set_boundary(self, fn):
        """Run `fn(name, done, units)` between two layers of every pass (None: never)."""
        models = self.models
        if models is not None:
            models.set_boundary(fn)

    def prefetch(self, name):
        """Say which model runs after the pass about to start (its first layers read ahead)."""
        models = self.models
        if models is not None:
            models.prefetch(name, after_pass=True)

    def stats(self):
        """Return the group's figures (load_shared's stats) and the budget in effect (MiB)."""
        if not self.configured:
            return {'configured': False, 'budget_mb': 0.0}
        out = dict(self.models.stats())
        out.pop('models', None)        # each member reports its own
        out.update(configured=True, budget_mb=float(self.settings['memory_budget_mb']))
        return out

    def close(self):
        """Release every model, then the group's arena and threads (idempotent)."""
        for member in reversed(list(self.members.values())):   # torch's thread count back
            member.close()
        self.members = {}
        models, self.models = self.models, None
        if models is not None:
            models.close()
