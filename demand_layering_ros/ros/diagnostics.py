# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What the node reports on /diagnostics: one status per camera and one per model (and the group).

A camera is WARN with deadline misses, malformed or failed frames; the model is WARN over its
budget, with a plan note or an infeasible deadline, and ERROR for ERROR_HOLD_S after a failed
frame or configure. Rates are per report interval, so `Diagnostics` keeps the previous counts.
"""

import math
import time

from demand_layering_ros.quantiles import percentile
from demand_layering_ros.sizes import MB
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

ERROR_HOLD_S = 10.0    # diagnostics stay at ERROR this long after a failed frame or configure


def kv(key, value):
    """Return a KeyValue; floats with three decimals, nan as 'nan'."""
    if isinstance(value, float):
        value = 'nan' if math.isnan(value) else f'{value:.3f}'
    return KeyValue(key=key, value=str(value))


def _mb(nbytes):
    """Return bytes as MiB, nan when not measured (no cgroup, no pass yet)."""
    return float('nan') if nbytes is None else float(nbytes) / MB


def _share(answered, received):
    """Return the share of frames received that were answered (nan before any frame)."""
    return answered / received if received > 0 else float('nan')


def camera_status(name, device, cam, counts, deadline_ms, now):
    """Return one camera's status from its counters (rates since the camera's last report)."""
    received, published = counts['received'], counts['published']
    drops, misses, lat = counts['drops'], counts['deadline_misses'], counts['latencies']
    r0, p0, t0 = cam.last_count
    dt = max(now - t0, 1e-6)
    cam.last_count = (received, published, now)
    st = DiagnosticStatus(name=f'{name}: camera {cam.namespace or "/"}', hardware_id=device)
    problems = []
    if misses:
        problems.append(f'{misses} deadline misses')
    if drops['malformed']:
        problems.append(f'{drops["malformed"]} malformed frames')
    if drops['error']:
        problems.append(f'{drops["error"]} failed frames')
    st.level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
    st.message = '; '.join(problems) or 'ok'
    st.values = [
        kv('topic', cam.sub_topic), kv('detections_topic', cam.out_topic),
        kv('frames_in', received), kv('frames_out', published),
        kv('in_rate_hz', (received - r0) / dt), kv('out_rate_hz', (published - p0) / dt),
        kv('answered_share', _share(published, received)),
        kv('answered_share_recent', _share(published - p0, received - r0)),
        kv('latency_p50_ms', percentile(lat, 50) * 1e3),
        kv('latency_p99_ms', percentile(lat, 99) * 1e3),
        kv('deadline_ms', float(deadline_ms)),
        kv('deadline_misses', misses),
        kv('best_effort', counts.get('best_effort', 0)),
        kv('dropped', sum(drops.values())),
    ] + [kv(f'dropped_{k}', v) for k, v in drops.items()] + [
        kv('last_error', counts['last_error'])]
    return st


def slack_values(stats):
    """Return where a frame's time goes outside the forward pass (ms), and what was planned."""
    parts = stats.get('slack_parts_ms') or {}
    out = {'latency_steady': 'yes' if stats.get('latency_steady') else 'no (warm-up guess)',
           'slack_ms': float(stats.get('slack_ms', 0.0)),
           'planned_slack_ms': float(stats.get('planned_slack_ms', 0.0))}
    names = {'age': 'age_at_arrival_ms', 'decode': 'decode_ms', 'prepost': 'prepost_ms',
             'publish': 'publish_ms'}
    out.update({names[k]: float(v) for k, v in parts.items() if k in names})
    return out


class Diagnostics:
    """Builds the node's statuses; keeps the I/O byte count of the previous report for rates."""

    def __init__(self):
        self.io_last = (0, time.monotonic())

    def statuses(self, name, s, counters, stats, state, error, infeasible, label='model'):
        """
        Return [camera statuses..., model status].

        s: the settings; counters: FrameQueue.counters(); stats: DetectorService.stats();
        state: the lifecycle state label; error: (last error text, its time.monotonic());
        label: what the model's status is called after the node's name ('model front').
        """
        device = s.get('device', '')
        now = time.monotonic()
        out = [camera_status(name, device, cam, counts, s.get('deadline_ms', 0.0), now)
               for cam, counts in counters]
        out.append(self.model_status(name, s, stats, state, error, infeasible, now, label))
        return out

    def model_status(self, name, s, stats, state, error, infeasible, now, label='model'):
        """Return the model's status: memory against the budget, I/O, plan, last error."""
        figures = stats['model_stats']
        st = DiagnosticStatus(name=f'{name}: {label}', hardware_id=s.get('device', ''))
        io_bytes = int(figures.get('io_bytes', 0) or 0)
        b0, t0 = self.io_last
        self.io_last = (io_bytes, now)
        io_rate = max(io_bytes - b0, 0) / max(now - t0, 1e-6) / MB
        peak = float(figures.get('peak_weight_bytes', 0) or 0) / MB
        budget = float(s.get('memory_budget_mb', 0.0))
        problems = []
        level = DiagnosticStatus.OK
        if budget > 0 and peak > budget:
            problems.append(f'peak weight memory {peak:.1f} MiB over the {budget:.0f} MiB budget')
            level = DiagnosticStatus.WARN
        if stats['plan_note']:
            problems.append(stats['plan_note'])
            level = DiagnosticStatus.WARN
        if infeasible:
            problems.append(f'deadline {s.get("deadline_ms", 0):.0f} ms infeasible: predicted '
                            f'{stats["predicted_latency_ms"]:.0f} ms')
            level = DiagnosticStatus.WARN
        last_error, last_error_time = error
        if last_error and now - last_error_time < ERROR_HOLD_S:
            problems.append(last_error)
            level = DiagnosticStatus.ERROR
        st.level = level
        st.message = '; '.join(problems) or ('ok' if stats['configured'] else state)
        values = {
            'state': state, 'pack_path': s.get('pack_path', ''), 'model': stats['model'],
            'peak_weight_mb': peak, 'budget_mb': budget,
            'resident_weight_mb': float(figures.get('resident_bytes', 0) or 0) / MB,
            'arena_mb': float(figures.get('arena_bytes', 0) or 0) / MB,
            'process_rss_mb': stats['process_rss_bytes'] / MB,
            'activation_peak_mb': _mb(figures.get('activation_peak_bytes')),
            'pinned_staging_mb': _mb(figures.get('pinned_bytes')),
            'page_cache_growth_mb': _mb(figures.get('page_cache_growth_bytes')),
            'weights_cached_mb': _mb(figures.get('weights_cached_bytes')),
            'io_mode': figures.get('io_mode', ''), 'io_rate_mb_s': io_rate,
            'io_total_mb': io_bytes / MB,
            'stall_ms': float(figures.get('stall_ms', 0.0) or 0.0),
            'demand_misses': figures.get('demand_misses', 0),
            'batching': 'on' if stats['batching'] and s.get('max_batch', 1) > 1 else 'off',
            'last_error': last_error,
        }
        values.update({f'predicted_latency_ms_batch{b}': v
                       for b, v in stats['latency_ms_by_batch'].items()})
        values.update(slack_values(stats))
        note = following_values(figures, values)
        if note and level == DiagnosticStatus.OK:
            st.level, st.message = DiagnosticStatus.WARN, note
        elif note:
            st.message += '; ' + note
        st.values = [kv(k, v) for k, v in values.items()]
        return st


def following_values(figures, values):
    """
    Add what keep_free_mb reports to `values`; return the WARN note when pinned at the floor.

    figures: a model's or a group's stats() (the keys of `memory_following`); nothing is added
    while the budget does not follow free memory.
    """
    if not figures.get('keep_free_bytes'):
        return ''
    values.update({
        'keep_free_mb': _mb(figures['keep_free_bytes']),
        'free_mb': _mb(figures.get('free_bytes')),
        'memory_source': figures.get('memory_source') or '',
        'budget_in_force_mb': _mb(figures.get('budget_bytes')),
        'auto_shrinks': figures.get('auto_shrinks', 0),
        'auto_grows': figures.get('auto_grows', 0),
        'shrink_reaction_p50_ms': figures.get('shrink_reaction_p50_ms'),
        'shrink_reaction_max_ms': figures.get('shrink_reaction_max_ms'),
        'below_keep_free_s': figures.get('below_keep_free_s', 0.0),
        'at_smallest_plan_s': figures.get('pinned_s', 0.0),
    })
    if figures.get('pinned_at_floor'):
        return (f'keep_free_mb {_mb(figures["keep_free_bytes"]):.0f}: only '
                f'{_mb(figures.get("free_bytes")):.0f} MiB free; serving at the smallest plan '
                f'({_mb(figures.get("floor_bytes")):.1f} MiB)')
    return ''


def group_status(name, s, stats, state):
    """
    Return the status of several models under one budget: the group's peak weight memory.

    WARN when group_peak_weight_bytes went over memory_budget_mb (each model's own status
    reports its part: its resident units, the shared arena it uses).
    """
    st = DiagnosticStatus(name=f'{name}: group', hardware_id=s.get('device', ''))
    peak = _mb(stats.get('group_peak_weight_bytes', 0) or 0)
    budget = float(s.get('memory_budget_mb', 0.0))
    st.level = DiagnosticStatus.OK
    st.message = 'ok' if stats.get('configured') else state
    if budget > 0 and peak > budget:
        st.level = DiagnosticStatus.WARN
        st.message = f'group peak weight memory {peak:.1f} MiB over the {budget:.0f} MiB budget'
    values = {'state': state, 'models': ', '.join(s.get('models') or ()),
              'group_peak_weight_mb': peak, 'budget_mb': budget,
              'group_peak_weight_bytes': int(stats.get('group_peak_weight_bytes', 0) or 0),
              'arena_mb': _mb(stats.get('arena_bytes', 0) or 0),
              'resident_weight_mb': _mb(stats.get('resident_bytes', 0) or 0),
              'model_weights_mb': _mb(stats.get('model_bytes', 0) or 0),
              'passes': stats.get('passes', 0), 'switches': stats.get('switches', 0),
              'prefetch_dropped': stats.get('prefetch_dropped', 0),
              'preemptions': stats.get('preemptions', 0),
              'preempted_activation_peak_mb': _mb(stats.get('preempted_activation_peak_bytes')
                                                  or 0),
              'io_total_mb': _mb(stats.get('io_bytes', 0) or 0)}
    note = following_values(stats, values)
    if note:
        st.level = max(st.level, DiagnosticStatus.WARN)
        st.message = note if st.message in ('ok', state) else f'{st.message}; {note}'
    st.values = [kv(k, v) for k, v in values.items()]
    return st
