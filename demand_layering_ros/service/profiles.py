# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The pack's profile, which planning needs: read from a file, or measured once and saved.

`profile_file` names it; empty means PACK/PROFILE.json. When there is none, the pack is measured
here within memory_budget_mb (streamed when the weights do not fit it, so the budget holds from
the first byte) and saved as that file where the pack is writable: measured once per pack, not
per start. A profile measured at another torch thread count than the node runs is measured
again (a plan from it would not hold); the new one replaces PACK/PROFILE.json, never a
profile_file the user named. `BackgroundProfile` does the same in a thread, for a change at
run time that must not wait for it.
"""

from pathlib import Path
import threading
import time

from demand_layering_ros.layout import threads
from demand_layering_ros.planning import profiler, timing


def measure(pack_path, device, budget_mb):
    """Measure the pack on this machine, within `budget_mb` (None: no budget), quickly."""
    return profiler.profile(pack_path, device=device, repeats=2, warmup=1, progress=False,
                            activation=False, budget_mb=budget_mb)


def profile_path(settings):
    """Return the PROFILE.json the settings name: profile_file, else PACK/PROFILE.json."""
    return settings['profile_file'] or str(Path(settings['pack_path']) / 'PROFILE.json')


def stored(settings, log=None):
    """Return the profile read from its file; None: there is none, or it is for other threads."""
    path = profile_path(settings)
    if settings['profile_file'] or Path(path).is_file():
        # a profile_file given but unreadable is an error, not a re-measure
        prof = timing.load_profile(path)
        try:
            threads.check_profile(prof, where=path)
        except threads.ThreadMismatch as e:
            if log is not None:
                log.warning(f'{e}; measuring it again at {e.want}')
            return None
        return prof
    return None


def measure_and_save(settings, log, when='now'):
    """Measure the pack within memory_budget_mb, save it as PROFILE.json, and return it."""
    path = profile_path(settings)
    budget = settings['memory_budget_mb'] or None
    log.info(f'no {path}: profiling the pack once {when}, within memory_budget_mb')
    profile = measure(settings['pack_path'], settings['device'], budget)
    log.info('profiled ' + (f'streamed within memory_budget_mb {budget:g}'
                            if profile['mode'] == 'streamed' else 'fully resident'))
    if settings['profile_file'] and Path(path).is_file():
        log.info(f'profile kept in memory only: {path} was given and is not replaced')
        return profile
    try:
        timing.save_profile(profile, path)
        log.info(f'saved the profile as {path}')
    except OSError as e:
        log.info(f'profile kept in memory only ({path}: {e.strerror})')
    return profile


class BackgroundProfile:
    """
    One profile measured in a thread while the model keeps serving; then `on_done(profile)`.

    `started_at` and `finished_at` (time.monotonic) say when it ran; `error` holds what went
    wrong, if anything. `cancel()` keeps `on_done` from being called (the service is closing);
    the measurement itself cannot be interrupted, so `join()` waits for it.
    """

    def __init__(self, settings, log, on_done):
        self.settings = dict(settings)
        self.log = log
        self.on_done = on_done
        self.result = None
        self.error = None
        self.cancelled = False
        self.started_at = time.monotonic()
        self.finished_at = None
        self.thread = threading.Thread(target=self._run, name='dlr-profile', daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.result = measure_and_save(self.settings, self.log, 'in the background')
        except Exception as e:   # reported; the model keeps serving with what it has
            self.error = e
            self.log.error(f'profiling in the background failed: {type(e).__name__}: {e}')
        finally:
            self.finished_at = time.monotonic()
        if self.result is not None and not self.cancelled:
            self.on_done(self.result)

    def running(self):
        """Return True while the measurement or its `on_done` runs."""
        return self.thread.is_alive()

    def cancel(self):
        """Drop the result when it comes: `on_done` will not be called."""
        self.cancelled = True

    def join(self, timeout=None):
        """Wait for the thread (measurement and `on_done`)."""
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)
