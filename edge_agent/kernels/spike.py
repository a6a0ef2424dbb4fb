"""`spike` (fault): isolated outliers against a rolling median and a robust scale.

Per sensor: the median of the last `window` (3, 5, 7 or 9) finite samples (a ring buffer
between chunks; within one, `rolling_medians` takes every window's median by a selection
network in one vectorised pass before the rule's loop), and a robust scale, the running
mean absolute deviation from that median over normal samples (mean over the first
`scale_samples`, then EW with that span), floored at `min_dev`. Detection starts once the window is full and `min(window,
scale_samples)` deviations were seen. A sample beyond k * scale from the median opens a
candidate; if within `max_len` samples the signal comes back to within half that band of the
same median, it was a spike (half, so a step about as large as the band, seen through noise,
does not pass for one): level 1 is raised at the candidate's first sample (or, if that
was in an earlier batch, at the sample that came back). A longer excursion is a level shift,
not a spike, and no new candidate opens until a sample is back in band, so the end of a
step or pulse is never taken for a spike. `clear_samples` normal samples clear the fault.
`score` is the spike's peak in robust scales (signed); `limit` the band edge it crossed.

Traffic is not a fault. A sensor glitch is one or two samples in an otherwise quiet signal; a
vehicle crossing shakes strain, deflection and tilt for seconds. So a candidate opens only
while the signal's recent activity (the mean |deviation| from the median over the last
`quiet_samples`, each clipped at the band) is at most `quiet` robust scales: a peak inside a
vibration burst is not isolated, unless the burst has lasted longer than `burst_s` (20 s, more
than any vehicle takes to cross): a noise burst of minutes is the sensor's, and its spikes are
faults again (neither this nor the isolation check below holds them back). And a spike must be isolated: the `SPIKE_NEIGHBOURS` samples before it and after
its return must stay within `isolation` robust scales of the median (a glitch is one or two
samples; a vehicle's shaking, even sampled at 1 Hz, moves its neighbours too), so a spike is
raised two samples after it came back. And where the site has an accelerometer (`TrafficGate`), a
spike whose time lies within `traffic_hold_s` of a quarter-second in which the accelerometer's
short-term energy (mean |a - its 1 s mean| over 0.5 s) ran at `traffic_ratio` times its quiet
level (the low envelope of that energy: it follows a fall within 30 s and a rise over 10 min,
so a burst of seconds hardly lifts it) is taken as traffic: counted
(`IS_SPIKE_TRAFFIC`, `spikes_traffic` in the agent's status), not raised. The accelerometer's
blocks must come at most `traffic_hold_s` after the strain's; `traffic_activity` runs before
the chain on each batch.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import inlined, kernel
from edge_agent.kernels._layout import (
    FP_SPIKE_BURST,
    FP_SPIKE_HOLD,
    FP_SPIKE_ISO,
    FP_SPIKE_K,
    FP_SPIKE_MIN_DEV,
    FP_SPIKE_QUIET,
    FP_SPIKE_TRAFFIC,
    FS_SPIKE_ACT,
    FS_SPIKE_D1,
    FS_SPIKE_D2,
    FS_SPIKE_PEND_PEAK,
    FS_SPIKE_PEND_REF,
    FS_SPIKE_PEND_THR,
    FS_SPIKE_SCALE,
    IP_SPIKE_CLEAR,
    IP_SPIKE_MAX_LEN,
    IP_SPIKE_QUIET_N,
    IP_SPIKE_SCALE_N,
    IP_SPIKE_WINDOW,
    IS_SPIKE_BURST_T0,
    IS_SPIKE_CLEAN,
    IS_SPIKE_CONFIRM,
    IS_SPIKE_FILL,
    IS_SPIKE_NSCALE,
    IS_SPIKE_PEND,
    IS_SPIKE_PEND_IDX,
    IS_SPIKE_POS,
    IS_SPIKE_TRAFFIC,
)
from edge_agent.kernels._layout import NO_TIME
from edge_agent.kernels.codes import SPIKE
from edge_agent.kernels.events import emit

#: window, max_len, scale_samples, clear_samples, samples before detection, k, min_dev,
#: quiet, activity weight, longest vehicle burst (ms), isolation
SpikeParams = tuple[int, int, int, int, int, float, float, float, float, float, float]
#: fill, deviations seen, pending, its first index, clean run, scale, the candidate's ref,
#: band and peak, level, the scale's update weight, activity, spikes taken as traffic, start
#: of the current burst, |deviation| of the last two samples, samples left to confirm
SpikeState = tuple[int, int, int, int, int, float, float, float, float, int, float, float, int,
                   int, float, float, int]

#: Samples on each side of a spike that must stay near the median (the isolation check).
SPIKE_NEIGHBOURS: Final = 2

#: Time bins the traffic gate keeps per accelerometer (a ring), and their length (ms).
GATE_BINS: Final = 1024
GATE_BIN_MS: Final = 250
#: Time constants (s) of the accelerometer's running mean, short-term and quiet energy.
_ACCEL_MEAN_S: Final = 1.0
_ACCEL_SHORT_S: Final = 0.5
_ACCEL_QUIET_S: Final = 600.0
_ACCEL_DOWN_S: Final = 30.0
_ACCEL_SETTLE_S: Final = 5.0


@kernel
def _lo(a: float, b: float) -> float:
    return a if a < b else b


@kernel
def _hi(a: float, b: float) -> float:
    return b if a < b else a


@kernel
def _median3(a: float, b: float, c: float) -> float:
    return _hi(_lo(a, b), _lo(_hi(a, b), c))


@kernel
def _median5(a: float, b: float, c: float, d: float, e: float) -> float:
    """Drop the min and max of a, b, d, e (neither can be the median of five), then the
    median of the three left."""
    return _median3(_hi(_lo(a, b), _lo(d, e)), c, _lo(_hi(a, b), _hi(d, e)))


@kernel
def _inner4(
    a: float, b: float, c: float, d: float, e: float, f: float
) -> tuple[float, float, float, float]:
    """The four of six values left after dropping the min and the max."""
    a, b = _lo(a, b), _hi(a, b)
    c, d = _lo(c, d), _hi(c, d)
    e, f = _lo(e, f), _hi(e, f)
    return _hi(a, c), _hi(_lo(a, c), e), _lo(b, d), _lo(_hi(b, d), f)


@kernel
def _median7(a: float, b: float, c: float, d: float, e: float, f: float, g: float) -> float:
    p, q, r, t = _inner4(a, b, c, d, e, f)
    return _median5(p, q, r, t, g)


@kernel
def _median9(
    a: float, b: float, c: float, d: float, e: float, f: float, g: float, h: float, k: float
) -> float:
    p, q, r, t = _inner4(a, b, c, d, e, f)
    p, q, r, t = _inner4(p, q, r, t, g, h)
    return _median5(p, q, r, t, k)


@kernel
def rolling_medians(
    buf: NDArray[np.float64], start: int, stop: int, w: int, meds: NDArray[np.float64]
) -> None:
    """meds[q] = median of buf[q - w:q] for q in [start, stop), start >= w; by forgetful
    selection (the min and max of any w//2 + 3 values cannot be the median: drop them and
    recurse), branch-free so the loop runs on SIMD lanes."""
    n = stop - start
    x = buf[start - w:]
    out = meds[start:]
    if w == 9:
        for j in range(n):
            out[j] = _median9(x[j], x[j + 1], x[j + 2], x[j + 3], x[j + 4], x[j + 5], x[j + 6],
                              x[j + 7], x[j + 8])
    elif w == 7:
        for j in range(n):
            out[j] = _median7(x[j], x[j + 1], x[j + 2], x[j + 3], x[j + 4], x[j + 5], x[j + 6])
    elif w == 5:
        for j in range(n):
            out[j] = _median5(x[j], x[j + 1], x[j + 2], x[j + 3], x[j + 4])
    else:
        for j in range(n):
            out[j] = _median3(x[j], x[j + 1], x[j + 2])


@kernel
def spike_window(
    values: NDArray[np.float64], start: int, stop: int, s: int, ip: NDArray[np.int64],
    is_: NDArray[np.int64], window: NDArray[np.float64], buf: NDArray[np.float64],
    meds: NDArray[np.float64],
) -> int:
    """Lay out sensor `s`'s window (oldest first) and then the finite samples of
    values[start:stop] in `buf`, and the median of the window before each sample in `meds`
    (at the sample's position in `buf`). Returns where the chunk's first sample went."""
    w, fill, pos = ip[s, IP_SPIKE_WINDOW], is_[s, IS_SPIKE_FILL], is_[s, IS_SPIKE_POS]
    ring = window[s]
    oldest = pos if fill == w else 0  # filling up: pos == fill
    for j in range(fill):
        at = oldest + j
        buf[j] = ring[at if at < w else at - w]
    q = fill
    for i in range(start, stop):
        x = values[i]
        buf[q] = x  # buf has room for one more than the chunk
        q += math.isfinite(x)
    first = max(fill, w)
    if q > first:
        rolling_medians(buf, first, q, w, meds)
    return fill


@kernel
def spike_keep_window(
    buf: NDArray[np.float64], stop: int, s: int, ip: NDArray[np.int64], is_: NDArray[np.int64],
    window: NDArray[np.float64],
) -> None:
    """Keep the last `window` samples of buf[:stop] as sensor `s`'s ring (oldest at pos 0)."""
    w = ip[s, IP_SPIKE_WINDOW]
    keep = min(stop, w)
    ring = window[s]
    for j in range(keep):
        ring[j] = buf[stop - keep + j]
    is_[s, IS_SPIKE_FILL] = keep
    is_[s, IS_SPIKE_POS] = 0 if keep == w else keep


@inlined
def spike_load(
    s: int, fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8],
) -> tuple[SpikeParams, SpikeState]:
    """Parameters and state of rule `spike` of sensor `s` (the window is `spike_window`'s)."""
    w, scale_n = ip[s, IP_SPIKE_WINDOW], ip[s, IP_SPIKE_SCALE_N]
    params = (w, ip[s, IP_SPIKE_MAX_LEN], scale_n, ip[s, IP_SPIKE_CLEAR], min(w, scale_n),
              fp[s, FP_SPIKE_K], fp[s, FP_SPIKE_MIN_DEV], fp[s, FP_SPIKE_QUIET],
              1.0 / max(ip[s, IP_SPIKE_QUIET_N], 1), fp[s, FP_SPIKE_BURST], fp[s, FP_SPIKE_ISO])
    n_scale = is_[s, IS_SPIKE_NSCALE]
    state = (is_[s, IS_SPIKE_FILL], n_scale, is_[s, IS_SPIKE_PEND], is_[s, IS_SPIKE_PEND_IDX],
             is_[s, IS_SPIKE_CLEAN], fs[s, FS_SPIKE_SCALE], fs[s, FS_SPIKE_PEND_REF],
             fs[s, FS_SPIKE_PEND_THR], fs[s, FS_SPIKE_PEND_PEAK], np.int64(levels[s, SPIKE]),
             1.0 / max(n_scale, 1), fs[s, FS_SPIKE_ACT], is_[s, IS_SPIKE_TRAFFIC],
             is_[s, IS_SPIKE_BURST_T0], fs[s, FS_SPIKE_D1], fs[s, FS_SPIKE_D2],
             is_[s, IS_SPIKE_CONFIRM])
    return params, state


@inlined
def _spike_found(
    traffic: bool, level: int, n_traffic: int, pend_idx: int, i: int, ref: float, thr: float,
    peak: float, s: int, ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[int, int, int]:
    """A spike was confirmed at sample i: traffic (counted) or a raise to level 1 (at its first
    sample if that is in this batch). Returns level, traffic count and event count."""
    if traffic:
        return level, n_traffic + 1, n_ev
    if level == 0:
        index = pend_idx if pend_idx >= 0 else i
        edge = ref + thr if peak > 0 else ref - thr
        return 1, n_traffic, emit(ev_int, ev_float, n_ev, s, SPIKE, 1, 0, index, edge, peak)
    return level, n_traffic, n_ev


@inlined
def spike_step(
    p: SpikeParams, st: SpikeState, x: float, median: float, i: int, t: int, s: int,
    traffic: bool,
    ev_int: NDArray[np.int64], ev_float: NDArray[np.float64], n_ev: int,
) -> tuple[SpikeState, int]:
    """Feed one finite sample and the median of the window before it (unused until the
    window is full); `traffic`: the site's accelerometer saw a burst around this sample.
    Returns the state and event count."""
    w, max_len, scale_n, clear_n, warm_n, k, min_dev, quiet, act_rate, burst_ms, iso = p
    (fill, n_scale, pend, pend_idx, clean, scale, ref, thr, peak, level, rate, act, n_traffic,
     burst_t0, d1, d2, confirm) = st
    if fill < w:
        fill += 1
    else:
        dev = x - median
        floor = max(scale, min_dev)
        band = k * floor
        calm = act <= quiet * floor
        own = False  # in a burst longer than any vehicle's: the sensor's own noise
        if calm:
            burst_t0 = NO_TIME
        elif burst_t0 == NO_TIME:
            burst_t0 = t
        elif t - burst_t0 > burst_ms:
            own = True
        act += (min(abs(dev), band) - act) * act_rate
        near = iso * floor
        if confirm > 0:  # the samples after its return must stay near the median too
            if abs(x - ref) > near and not own:
                confirm = 0  # they do not: a burst's peak, not a glitch
            else:
                confirm -= 1
                if confirm == 0:  # isolated: it was a spike
                    clean = 0
                    level, n_traffic, n_ev = _spike_found(traffic, level, n_traffic, pend_idx,
                                                          i, ref, thr, peak, s, ev_int,
                                                          ev_float, n_ev)
        if pend > 0:
            off = x - ref
            if abs(off) <= 0.5 * thr and own:  # back, in the sensor's own noise: a spike
                pend, clean = 0, 0
                level, n_traffic, n_ev = _spike_found(traffic, level, n_traffic, pend_idx, i,
                                                      ref, thr, peak, s, ev_int, ev_float, n_ev)
            elif abs(off) <= 0.5 * thr:  # back near the old median: check what follows
                pend, confirm = 0, SPIKE_NEIGHBOURS
            else:
                pend += 1
                z = off / (thr / k)
                if abs(z) > abs(peak):
                    peak = z
                if pend > max_len:
                    pend = -1  # a level shift, not a spike
        elif n_scale >= warm_n and abs(dev) > band:
            if pend == 0 and (confirm > 0 or not own and (not calm or max(d1, d2) > near)):
                pend = -1  # inside a burst, or its neighbours are not quiet: not isolated
            elif pend == 0:  # open a candidate; pend == -1: still in a long excursion
                pend, pend_idx, ref, thr, peak = 1, i, median, band, dev / (band / k)
        else:
            pend = 0
            if n_scale < scale_n:
                n_scale += 1
                rate = 1.0 / n_scale
            scale += (abs(dev) - scale) * rate
            if level == 1:
                clean += 1
                if clean >= clear_n:
                    n_ev = emit(ev_int, ev_float, n_ev, s, SPIKE, 0, 1, i, math.nan, math.nan)
                    level, clean = 0, 0
        d2, d1 = d1, abs(dev)
    return (fill, n_scale, pend, pend_idx, clean, scale, ref, thr, peak, level, rate, act,
            n_traffic, burst_t0, d1, d2, confirm), n_ev


@inlined
def spike_store(
    st: SpikeState, s: int, fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8],
) -> None:
    """Write the state back to the sensor's row (the ring is `spike_keep_window`'s)."""
    (fill, n_scale, pend, pend_idx, clean, scale, ref, thr, peak, level, _, act, n_traffic,
     burst_t0, d1, d2, confirm) = st
    is_[s, IS_SPIKE_NSCALE], is_[s, IS_SPIKE_PEND] = n_scale, pend
    fs[s, FS_SPIKE_ACT], is_[s, IS_SPIKE_TRAFFIC] = act, n_traffic
    is_[s, IS_SPIKE_BURST_T0], is_[s, IS_SPIKE_CONFIRM] = burst_t0, confirm
    fs[s, FS_SPIKE_D1], fs[s, FS_SPIKE_D2] = d1, d2
    is_[s, IS_SPIKE_PEND_IDX], is_[s, IS_SPIKE_CLEAN] = pend_idx, clean
    fs[s, FS_SPIKE_SCALE] = scale
    fs[s, FS_SPIKE_PEND_REF], fs[s, FS_SPIKE_PEND_THR], fs[s, FS_SPIKE_PEND_PEAK] = ref, thr, peak
    levels[s, SPIKE] = level


@inlined
def traffic_at(row: int, t: int, hold_ms: float, ratio_limit: float,
               gate_ratio: NDArray[np.float64], gate_bin: NDArray[np.int64]) -> bool:
    """Whether accelerometer row `row` ran at `ratio_limit` x its quiet energy in any bin
    within `hold_ms` of time `t` (bins not seen yet say nothing)."""
    first = (t - np.int64(hold_ms)) // GATE_BIN_MS
    last = (t + np.int64(hold_ms)) // GATE_BIN_MS
    for b in range(first, last + 1):
        k = b % GATE_BINS
        if gate_bin[row, k] == b and gate_ratio[row, k] >= ratio_limit:
            return True
    return False


@kernel
def spike_block(
    values: NDArray[np.float64], times_ms: NDArray[np.int64], start: int, stop: int, s: int,
    fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8], window: NDArray[np.float64],
    scratch: NDArray[np.float64], gate_row: NDArray[np.int64], gate_ratio: NDArray[np.float64],
    gate_bin: NDArray[np.int64], ev_int: NDArray[np.int64], ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run rule `spike` of sensor `s` over values[start:stop] (`scratch`: two rows of at least
    stop - start + window + 1; `gate_row[s]`: its site's accelerometer row, -1 for none);
    returns the event count."""
    buf, meds = scratch[0], scratch[1]
    q = spike_window(values, start, stop, s, ip, is_, window, buf, meds)
    p, st = spike_load(s, fp, ip, fs, is_, levels)
    row = gate_row[s]
    hold, ratio_limit = fp[s, FP_SPIKE_HOLD], fp[s, FP_SPIKE_TRAFFIC]
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            traffic = False
            if row >= 0 and (st[2] > 0 or st[16] > 0):  # a candidate pending: is it traffic?
                traffic = traffic_at(row, times_ms[i], hold, ratio_limit, gate_ratio, gate_bin)
            st, n_ev = spike_step(p, st, x, meds[q], i, times_ms[i], s, traffic, ev_int,
                                  ev_float, n_ev)
            q += 1
    spike_store(st, s, fs, is_, levels)
    spike_keep_window(buf, q, s, ip, is_, window)
    return n_ev


@kernel
def traffic_activity(
    values: NDArray[np.float64], times_ms: NDArray[np.int64], block_sensor: NDArray[np.int32],
    block_start: NDArray[np.int64], accel_row: NDArray[np.int64], state: NDArray[np.float64],
    gate_ratio: NDArray[np.float64], gate_bin: NDArray[np.int64],
) -> None:
    """Feed the accelerometers' samples of a batch (`accel_row[s]` >= 0) to their energy
    trackers (`state` rows: running mean, short-term and quiet energy, last time and first
    time in ms; the quiet level is the short-term energy itself for the first
    `_ACCEL_SETTLE_S`) and write each 250 ms bin's highest short/quiet ratio to the gate ring
    (none while settling)."""
    for b in range(block_sensor.shape[0]):
        r = accel_row[block_sensor[b]]
        if r < 0:
            continue
        mean, short, quiet, last = state[r, 0], state[r, 1], state[r, 2], state[r, 3]
        first = state[r, 4]
        for i in range(block_start[b], block_start[b + 1]):
            x = values[i]
            if not math.isfinite(x):
                continue
            t = times_ms[i]
            if last <= 0.0:
                mean, short, quiet, last, first = x, 0.0, 0.0, float(t), float(t)
                continue
            dt = min(max((t - last) / 1000.0, 0.0), 1.0)
            last = float(t)
            mean += (x - mean) * (1.0 - math.exp(-dt / _ACCEL_MEAN_S))
            e = abs(x - mean)
            short += (e - short) * (1.0 - math.exp(-dt / _ACCEL_SHORT_S))
            if t - first < 1000.0 * _ACCEL_SETTLE_S:
                quiet = short
                continue
            if short < quiet:  # the quiet level: the low envelope of the short-term energy,
                quiet += (short - quiet) * (1.0 - math.exp(-dt / _ACCEL_DOWN_S))
            else:  # which a burst of seconds hardly lifts
                quiet += (short - quiet) * (1.0 - math.exp(-dt / _ACCEL_QUIET_S))
            ratio = short / quiet if quiet > 0.0 else 0.0
            bin_ = t // GATE_BIN_MS
            k = bin_ % GATE_BINS
            if gate_bin[r, k] != bin_:
                gate_bin[r, k], gate_ratio[r, k] = bin_, ratio
            elif ratio > gate_ratio[r, k]:
                gate_ratio[r, k] = ratio
        state[r, 0], state[r, 1], state[r, 2], state[r, 3] = mean, short, quiet, last
        state[r, 4] = first


class TrafficGate:
    """Which sensors' spikes are checked against an accelerometer of their site, and that
    accelerometer's recent energy (see the module docstring)."""

    def __init__(self, kinds: list[str], sites: list[str], spike_on: list[bool]) -> None:
        accels = [i for i, k in enumerate(kinds) if k == "bridge.accel"]
        site_row = {}
        for row, i in enumerate(accels):
            site_row.setdefault(sites[i], row)
        self.accel_row = np.full(len(kinds), -1, dtype=np.int64)
        self.accel_row[accels] = np.arange(len(accels))
        self.sensor_row = np.array([site_row.get(site, -1) if on else -1
                                    for site, on in zip(sites, spike_on)], dtype=np.int64)
        rows = max(len(accels), 1)
        self.state = np.zeros((rows, 5))
        self.ratio = np.zeros((rows, GATE_BINS))
        self.bin = np.full((rows, GATE_BINS), -1, dtype=np.int64)

    @classmethod
    def none(cls, n_sensors: int) -> TrafficGate:
        """No sensor gated."""
        return cls([""] * n_sensors, [""] * n_sensors, [False] * n_sensors)

    @property
    def active(self) -> bool:
        """Whether any sensor is gated."""
        return bool(np.any(self.sensor_row >= 0))

    def update(self, values: NDArray[np.float64], times_ms: NDArray[np.int64],
               block_sensor: NDArray[np.int32], block_start: NDArray[np.int64]) -> None:
        """Take in a batch's accelerometer samples (before the chain runs on it)."""
        if self.active:
            traffic_activity(values, times_ms, block_sensor, block_start, self.accel_row,
                             self.state, self.ratio, self.bin)
