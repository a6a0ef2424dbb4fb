"""The whole rule chain over a batch of blocks from many sensors, with resumable state.

One `RuleChain.process` call is one kernel call (plus a retry per full event buffer):
`run_rules` walks the blocks, cuts each into chunks of at most `CHUNK` samples and runs every
enabled rule of the block's sensor over the chunk. Each rule is a `*_load` / `*_step` /
`*_store` triple that numba inlines, so a rule's loop keeps its state in registers. First
one vectorised count over the chunk finds whether range, high and low can change at all
(for a healthy sensor they cannot, and their loops are skipped). The cheap rules (range,
flatline, high, low) share one loop, and so do the recurrences (rate, anomaly, drift) when
all are on: their dependency chains then overlap in the CPU; spike first takes every window
median of the chunk in one vectorised pass. (One loop for all eight was measured slower: too
much state for the registers.) Before a chunk the driver
checks that the event buffer can take the worst case (one change per rule per sample); if
not it returns where it stopped, the caller drains the buffer and calls again, so no event
is dropped and no sample is processed twice. Rules are streaming, so cutting blocks
anywhere gives the same events.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.kernels import _layout as L
from edge_agent.kernels._jit import inlined, kernel
from edge_agent.kernels.anomaly import anomaly_block, anomaly_load, anomaly_step, anomaly_store
from edge_agent.kernels.codes import (
    ALL_RULES_MASK,
    ANOMALY,
    DRIFT,
    FLATLINE,
    HIGH,
    LOW,
    N_RULES,
    RANGE,
    RATE,
    RULE_NAMES,
    SPIKE,
    rule_mask,
)
from edge_agent.kernels.drift import drift_block, drift_load, drift_step, drift_store
from edge_agent.kernels.events import Events
from edge_agent.kernels.flatline import (
    flatline_block,
    flatline_load,
    flatline_step,
    flatline_store,
)
from edge_agent.kernels.params import RuleState, pack_rules
from edge_agent.kernels.physical_range import range_block, range_load, range_step, range_store
from edge_agent.kernels.profiles import MAX_SPIKE_WINDOW, SensorRules
from edge_agent.kernels.rate import rate_block, rate_load, rate_step, rate_store
from edge_agent.kernels.spike import TrafficGate, spike_block
from edge_agent.kernels.threshold import threshold_block, threshold_load, threshold_step

#: Length of each of the two scratch rows (spike windows and their medians) of a chunk.
SCRATCH: Final = L.CHUNK + MAX_SPIKE_WINDOW + 1


@inlined
def _quiet_rules(
    on: int, values: NDArray[np.float64], start: int, stop: int, s: int, fp: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8],
) -> int:
    """Bit mask of the rules among range, high and low (of those in `on`) that samples
    [start, stop) cannot change: level 0, nothing pending and no sample beyond the first limit
    (range: no bad sample, which only resets its bad count). One branch-free, vectorised
    count instead of a loop per rule; the usual case for healthy sensors."""
    hi0, neg_lo0 = fp[s, L.FP_HIGH], -fp[s, L.FP_LOW]  # low limits are stored negated
    rlo, rhi = fp[s, L.FP_RANGE_LO], fp[s, L.FP_RANGE_HI]
    above, below, bad = 0, 0, 0
    for i in range(start, stop):
        x = values[i]
        above += x > hi0
        below += x < neg_lo0
        bad += (x < rlo) | (x > rhi) | (abs(x) >= math.inf) | (x != x)
    quiet = 0
    if above == 0 and levels[s, HIGH] == 0 and is_[s, L.IS_HIGH_CNT] == 0:
        quiet |= 1 << HIGH
    if below == 0 and levels[s, LOW] == 0 and is_[s, L.IS_LOW_CNT] == 0:
        quiet |= 1 << LOW
    if bad == 0 and levels[s, RANGE] == 0:
        quiet |= 1 << RANGE
        if on & (1 << RANGE) and stop > start:
            is_[s, L.IS_RANGE_BAD] = 0  # what each good sample does at level 0
    return quiet & on


@kernel
def _cheap_rules(
    values: NDArray[np.float64], start: int, stop: int, s: int, fp: NDArray[np.float64],
    ip: NDArray[np.int64], fs: NDArray[np.float64], is_: NDArray[np.int64],
    levels: NDArray[np.int8], ev_int: NDArray[np.int64], ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """range, flatline, high and low of sensor `s` in one loop over [start, stop)."""
    rg_p, rg = range_load(s, fp, ip, is_, levels)
    fl_p, fl = flatline_load(s, fp, ip, fs, is_, levels)
    hi_p, hi = threshold_load(s, HIGH, fp, ip, is_, levels)
    lo_p, lo = threshold_load(s, LOW, fp, ip, is_, levels)
    for i in range(start, stop):
        x = values[i]
        rg, n_ev = range_step(rg_p, rg, x, i, s, ev_int, ev_float, n_ev)
        if math.isfinite(x):
            fl, n_ev = flatline_step(fl_p, fl, x, i, s, ev_int, ev_float, n_ev)
            hi, n_ev = threshold_step(hi_p, hi, x, i, s, ev_int, ev_float, n_ev)
            lo, n_ev = threshold_step(lo_p, lo, x, i, s, ev_int, ev_float, n_ev)
    range_store(rg, s, is_, levels)
    flatline_store(fl, s, fs, is_, levels)
    levels[s, HIGH], levels[s, LOW] = hi, lo
    return n_ev


@kernel
def _recurrences(
    values: NDArray[np.float64], times_ms: NDArray[np.int64], start: int, stop: int, s: int,
    fp: NDArray[np.float64], ip: NDArray[np.int64], fs: NDArray[np.float64],
    is_: NDArray[np.int64], levels: NDArray[np.int8], ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64], n_ev: int,
) -> int:
    """rate, anomaly and drift of sensor `s` in one loop over [start, stop)."""
    ra_p, ra = rate_load(s, fp, ip, fs, is_, levels)
    an_p, an = anomaly_load(s, fp, ip, fs, is_, levels)
    dr_p, dr = drift_load(s, fp, fs, is_, levels)
    for i in range(start, stop):
        x = values[i]
        if math.isfinite(x):
            t = times_ms[i]
            ra, n_ev = rate_step(ra_p, ra, x, t, i, s, ev_int, ev_float, n_ev)
            an, n_ev = anomaly_step(an_p, an, x, t, i, s, ev_int, ev_float, n_ev)
            dr, n_ev = drift_step(dr_p, dr, x, t, i, s, ev_int, ev_float, n_ev)
    rate_store(ra, s, fs, is_, levels)
    anomaly_store(an, s, fs, is_, levels)
    drift_store(dr, s, fs, is_, levels)
    return n_ev


@kernel
def run_chunk(
    on: int,
    values: NDArray[np.float64],
    times_ms: NDArray[np.int64],
    start: int,
    stop: int,
    s: int,
    fp: NDArray[np.float64],
    ip: NDArray[np.int64],
    fs: NDArray[np.float64],
    is_: NDArray[np.int64],
    levels: NDArray[np.int8],
    window: NDArray[np.float64],
    scratch: NDArray[np.float64],
    gate_row: NDArray[np.int64],
    gate_ratio: NDArray[np.float64],
    gate_bin: NDArray[np.int64],
    ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64],
    n_ev: int,
) -> int:
    """Run the rules in `on` of sensor `s` over samples [start, stop); returns the event count.
    `Events.from_buffers` puts one sample's events in chain order (`codes.CHAIN_ORDER`)."""
    if on & ((1 << RANGE) | (1 << HIGH) | (1 << LOW)):
        on &= ~_quiet_rules(on, values, start, stop, s, fp, is_, levels)
    do_range, do_flat, do_spike = on & (1 << RANGE), on & (1 << FLATLINE), on & (1 << SPIKE)
    do_high, do_low, do_rate = on & (1 << HIGH), on & (1 << LOW), on & (1 << RATE)
    do_anom, do_drift = on & (1 << ANOMALY), on & (1 << DRIFT)
    if do_range and do_flat and do_high and do_low:
        n_ev = _cheap_rules(values, start, stop, s, fp, ip, fs, is_, levels, ev_int, ev_float,
                            n_ev)
    else:
        if do_range:
            n_ev = range_block(values, start, stop, s, fp, ip, is_, levels, ev_int, ev_float, n_ev)
        if do_flat:
            n_ev = flatline_block(values, start, stop, s, fp, ip, fs, is_, levels, ev_int,
                                  ev_float, n_ev)
        if do_high:
            n_ev = threshold_block(values, start, stop, s, HIGH, fp, ip, is_, levels, ev_int,
                                   ev_float, n_ev)
        if do_low:
            n_ev = threshold_block(values, start, stop, s, LOW, fp, ip, is_, levels, ev_int,
                                   ev_float, n_ev)
    if do_spike:
        n_ev = spike_block(values, times_ms, start, stop, s, fp, ip, fs, is_, levels, window,
                           scratch, gate_row, gate_ratio, gate_bin, ev_int, ev_float, n_ev)
    if do_rate and do_anom and do_drift:
        return _recurrences(values, times_ms, start, stop, s, fp, ip, fs, is_, levels, ev_int,
                            ev_float, n_ev)
    if do_rate:
        n_ev = rate_block(values, times_ms, start, stop, s, fp, ip, fs, is_, levels, ev_int,
                          ev_float, n_ev)
    if do_anom:
        n_ev = anomaly_block(values, times_ms, start, stop, s, fp, ip, fs, is_, levels, ev_int,
                             ev_float, n_ev)
    if do_drift:
        n_ev = drift_block(values, times_ms, start, stop, s, fp, fs, is_, levels, ev_int,
                           ev_float, n_ev)
    return n_ev


@kernel
def run_rules(
    mask: int,
    values: NDArray[np.float64],
    times_ms: NDArray[np.int64],
    block_sensor: NDArray[np.int32],
    block_start: NDArray[np.int64],
    first_block: int,
    first_offset: int,
    fp: NDArray[np.float64],
    ip: NDArray[np.int64],
    fs: NDArray[np.float64],
    is_: NDArray[np.int64],
    levels: NDArray[np.int8],
    window: NDArray[np.float64],
    scratch: NDArray[np.float64],
    gate_row: NDArray[np.int64],
    gate_ratio: NDArray[np.float64],
    gate_bin: NDArray[np.int64],
    ev_int: NDArray[np.int64],
    ev_float: NDArray[np.float64],
) -> tuple[int, int, int]:
    """Run the rules in `mask` over blocks from (first_block, first_offset) on. Returns
    (events written, block to resume at, offset in it); block == number of blocks when done."""
    capacity = ev_int.shape[0]
    n_ev = 0
    for b in range(first_block, block_sensor.shape[0]):
        s = np.int64(block_sensor[b])
        on = ip[s, L.IP_ENABLED] & mask
        begin = block_start[b]
        lo = begin + first_offset if b == first_block else begin
        end = block_start[b + 1]
        while lo < end:
            hi = min(end, lo + L.CHUNK)
            if n_ev + N_RULES * (hi - lo) > capacity:
                return n_ev, b, lo - begin
            if on:
                n_ev = run_chunk(on, values, times_ms, lo, hi, s, fp, ip, fs, is_, levels, window,
                                 scratch, gate_row, gate_ratio, gate_bin, ev_int, ev_float, n_ev)
            lo = hi
    return n_ev, block_sensor.shape[0], 0


_STATE_KEYS = ("layout", "params_float", "params_int", "float_state", "int_state", "levels",
               "spike_window")


class RuleChain:
    """Every rule of every sensor, batched; per-sensor state persists between `process` calls.

    `only` restricts the chain to some rules (for benchmarks and tests); the default runs all.
    """

    def __init__(
        self, rules: Sequence[SensorRules], *, only: Collection[str] | None = None
    ) -> None:
        self.rules = tuple(rules)
        self._params = pack_rules(self.rules)
        self._state = RuleState.initial(len(self.rules), self._params.window)
        self._mask = ALL_RULES_MASK if only is None else rule_mask(list(only))
        capacity = N_RULES * L.CHUNK * 2
        self._ev_int = np.zeros((capacity, L.N_EV_INT), dtype=np.int64)
        self._ev_float = np.zeros((capacity, L.N_EV_FLOAT), dtype=np.float64)
        self._scratch = np.zeros((2, SCRATCH), dtype=np.float64)
        self._no_gate = TrafficGate.none(len(self.rules))

    @property
    def n_sensors(self) -> int:
        """Number of sensors (rows) the chain was built for."""
        return len(self.rules)

    def process(
        self,
        values: ArrayLike,
        times_ms: ArrayLike,
        block_sensor: ArrayLike,
        block_start: ArrayLike,
        gate: TrafficGate | None = None,
    ) -> Events:
        """Run the batch through every rule; level changes in sample order. `gate` (already
        updated with this batch) tells traffic from spikes where a site has an accelerometer."""
        vals, times, sensors, starts = self._checked(values, times_ms, block_sensor, block_start)
        gate = gate or self._no_gate
        state, params = self._state, self._params
        state.is_[:, L.IS_SPIKE_PEND_IDX] = -1  # indices of an earlier batch mean nothing here
        drained: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = []
        block, offset = 0, 0
        while True:
            n_ev, block, offset = run_rules(
                self._mask, vals, times, sensors, starts, block, offset, params.fp, params.ip,
                state.fs, state.is_, state.levels, state.window, self._scratch, gate.sensor_row,
                gate.ratio, gate.bin, self._ev_int, self._ev_float,
            )
            ints, floats = self._ev_int[:n_ev], self._ev_float[:n_ev]
            if block >= len(sensors) and not drained:
                return Events.from_buffers(ints, floats)  # the usual case: one call
            drained.append((ints.copy(), floats.copy()))  # the buffer is about to be reused
            if block >= len(sensors):
                return Events.from_buffers(np.concatenate([i for i, _ in drained]),
                                           np.concatenate([f for _, f in drained]))

    def _checked(
        self,
        values: ArrayLike,
        times_ms: ArrayLike,
        block_sensor: ArrayLike,
        block_start: ArrayLike,
    ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int32], NDArray[np.int64]]:
        """The batch as contiguous arrays of the kernel's dtypes; ValueError if malformed."""
        vals = np.ascontiguousarray(values, dtype=np.float64)
        times = np.ascontiguousarray(times_ms, dtype=np.int64)
        sensors = np.ascontiguousarray(block_sensor, dtype=np.int32)
        starts = np.ascontiguousarray(block_start, dtype=np.int64)
        if vals.ndim != 1 or times.shape != vals.shape:
            raise ValueError(f"values and times_ms must be 1-D of one length, got "
                             f"{vals.shape} and {times.shape}")
        if sensors.ndim != 1 or starts.shape != (len(sensors) + 1,):
            raise ValueError(f"block_start must have len(block_sensor) + 1 = {len(sensors) + 1} "
                             f"entries, got shape {starts.shape}")
        if len(sensors) and (sensors.min() < 0 or sensors.max() >= self.n_sensors):
            raise ValueError(f"block_sensor must be in 0..{self.n_sensors - 1}")
        if starts[0] < 0 or starts[-1] > len(vals) or np.any(np.diff(starts) < 0):
            raise ValueError("block_start must be non-decreasing offsets within values")
        return vals, times, sensors, starts

    def spikes_taken_as_traffic(self) -> int:
        """Spikes every sensor's rule took as traffic (not raised) since the state began."""
        return int(self._state.is_[:, L.IS_SPIKE_TRAFFIC].sum())

    def levels(self) -> NDArray[np.int8]:
        """Current level per (sensor, rule), int8[S, R] with columns in RULE_NAMES order."""
        return self._state.levels.copy()

    def warming_up(self) -> int:
        """Sensors whose anomaly rule is still learning their normal (younger than `warmup_s`)."""
        on = (self._params.ip[:, L.IP_ENABLED] >> ANOMALY) & 1 == 1
        young = self._state.fs[:, L.FS_ANOM_AGE] < self._params.fp[:, L.FP_ANOM_WARMUP]
        return int(np.count_nonzero(on & young))

    def state_arrays(self) -> dict[str, NDArray[np.generic]]:
        """Copies of every state array (and the parameters they were learnt with), to save."""
        st, pa = self._state, self._params
        return {
            "layout": np.array([L.LAYOUT_VERSION, L.N_FP, L.N_IP, L.N_FS, L.N_IS, N_RULES],
                               dtype=np.int64),
            "params_float": pa.fp.copy(),
            "params_int": pa.ip.copy(),
            "float_state": st.fs.copy(),
            "int_state": st.is_.copy(),
            "levels": st.levels.copy(),
            "spike_window": st.window.copy(),
        }

    def load_state(
        self, saved: Mapping[str, NDArray[np.generic]], rows: Sequence[int] | None = None
    ) -> None:
        """Resume from `state_arrays()` of an earlier run. `rows[i]` is the saved row of sensor
        i (-1: new sensor, starts fresh); default: the same sensors in the same order. A
        sensor whose rules changed keeps its levels but relearns everything else."""
        missing = [k for k in _STATE_KEYS if k not in saved]
        if missing:
            raise ValueError(f"saved rule state lacks {', '.join(missing)}")
        current = self.state_arrays()
        if not np.array_equal(saved["layout"], current["layout"]):
            raise ValueError(f"saved rule state has layout {list(saved['layout'])}, "
                             f"this version uses {list(current['layout'])}")
        n_saved = len(saved["levels"])
        src = np.arange(self.n_sensors) if rows is None else np.asarray(rows, dtype=np.intp)
        if src.shape != (self.n_sensors,) or np.any(src >= n_saved) or np.any(src < -1):
            raise ValueError(f"rows must give one saved row (0..{n_saved - 1}) or -1 per sensor")
        for key in _STATE_KEYS[1:]:
            arr, want = np.asarray(saved[key]), current[key]
            width_ok = key == "spike_window" or arr.shape[1:] == want.shape[1:]
            if arr.dtype != want.dtype or arr.ndim != want.ndim or len(arr) != n_saved \
                    or not width_ok:
                raise ValueError(f"saved rule state {key!r} has dtype {arr.dtype} and shape "
                                 f"{arr.shape}; expected {want.dtype} and (n, "
                                 f"{', '.join(map(str, want.shape[1:]))})")
        fresh = RuleState.initial(self.n_sensors, self._params.window)
        have = src >= 0
        take = src[have]
        fresh.fs[have] = saved["float_state"][take]
        fresh.is_[have] = saved["int_state"][take]
        fresh.levels[have] = saved["levels"][take]
        width = min(fresh.window.shape[1], saved["spike_window"].shape[1])
        fresh.window[have, :width] = saved["spike_window"][take, :width]
        same_fp = _rows_equal(saved["params_float"][take], self._params.fp[have])
        same_ip = np.all(saved["params_int"][take] == self._params.ip[have], axis=1)
        changed = np.flatnonzero(have)[~(same_fp & same_ip)]
        fresh.reset_rows(changed)
        self._state = fresh


def _rows_equal(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.bool_]:
    return np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=1)


__all__ = ["Events", "RULE_NAMES", "RuleChain", "run_rules"]
