"""Structure-of-arrays form of per-sensor rules and the initial kernel state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels import _layout as L
from edge_agent.kernels.codes import (
    ANOMALY,
    DRIFT,
    FLATLINE,
    HIGH,
    LOW,
    MAX_LIMITS,
    N_RULES,
    RANGE,
    RATE,
    RULE_NAMES,
    SPIKE,
)
from edge_agent.kernels.profiles import SensorRules


@dataclass(frozen=True)
class RuleParams:
    """Per-sensor parameters as matrices (rows: sensors; columns: see `_layout`)."""

    fp: NDArray[np.float64]
    ip: NDArray[np.int64]
    window: int  # spike window width of the state (largest window of any sensor, >= 1)


def _limits(values: tuple[float, ...], sign: float = 1.0) -> list[float]:
    """Four ascending limit columns: the (signed) limits, then +inf for levels not used."""
    return [sign * v for v in values] + [math.inf] * (MAX_LIMITS - len(values))


def _enabled_mask(r: SensorRules) -> int:
    flags = {
        HIGH: bool(r.high),
        LOW: bool(r.low),
        RATE: r.rate.enabled and bool(r.rate.rise or r.rate.fall),
        SPIKE: r.spike.enabled,
        ANOMALY: r.anomaly.enabled and bool(r.anomaly.z),
        DRIFT: r.drift.enabled,
        FLATLINE: r.flatline.enabled,
        RANGE: r.range.enabled,
    }
    return sum(1 << code for code, on in flags.items() if on)


def enabled_rules(r: SensorRules) -> tuple[str, ...]:
    """The names of the rules that run for a sensor with rules `r`, in `RULE_NAMES` order."""
    mask = _enabled_mask(r)
    return tuple(name for code, name in enumerate(RULE_NAMES) if mask >> code & 1)


def _row(r: SensorRules) -> tuple[list[float], list[int]]:
    f = [0.0] * L.N_FP
    i = [0] * L.N_IP
    i[L.IP_ENABLED] = _enabled_mask(r)
    f[L.FP_HIGH:L.FP_HIGH + 4] = _limits(r.high)
    f[L.FP_LOW:L.FP_LOW + 4] = _limits(r.low, -1.0)
    i[L.IP_HIGH_N], i[L.IP_LOW_N] = len(r.high), len(r.low)
    f[L.FP_HYST], i[L.IP_DEBOUNCE] = r.hysteresis, r.debounce
    rate = r.rate
    f[L.FP_RATE_RISE:L.FP_RATE_RISE + 4] = _limits(rate.rise)
    f[L.FP_RATE_FALL:L.FP_RATE_FALL + 4] = _limits(rate.fall)
    i[L.IP_RATE_RISE_N], i[L.IP_RATE_FALL_N] = len(rate.rise), len(rate.fall)
    f[L.FP_RATE_HYST], i[L.IP_RATE_DEBOUNCE] = rate.hysteresis, rate.debounce
    f[L.FP_RATE_TAU], f[L.FP_RATE_PER] = rate.window_s, rate.per_s
    spike = r.spike
    i[L.IP_SPIKE_WINDOW], i[L.IP_SPIKE_MAX_LEN] = spike.window, spike.max_len
    i[L.IP_SPIKE_SCALE_N], i[L.IP_SPIKE_CLEAR] = spike.scale_samples, spike.clear_samples
    f[L.FP_SPIKE_K], f[L.FP_SPIKE_MIN_DEV] = spike.k, spike.min_dev
    f[L.FP_SPIKE_QUIET], i[L.IP_SPIKE_QUIET_N] = spike.quiet, spike.quiet_samples
    f[L.FP_SPIKE_TRAFFIC], f[L.FP_SPIKE_HOLD] = spike.traffic_ratio, 1000.0 * spike.traffic_hold_s
    f[L.FP_SPIKE_BURST], f[L.FP_SPIKE_ISO] = 1000.0 * spike.burst_s, spike.isolation
    an = r.anomaly
    f[L.FP_ANOM_Z:L.FP_ANOM_Z + 4] = _limits(an.z)
    i[L.IP_ANOM_N], i[L.IP_ANOM_DEBOUNCE] = len(an.z), an.debounce
    f[L.FP_ANOM_HYST], f[L.FP_ANOM_SMOOTH] = an.hysteresis, an.smooth_s
    f[L.FP_ANOM_TAU] = an.window_s
    f[L.FP_ANOM_WARMUP], f[L.FP_ANOM_MIN_STD], f[L.FP_ANOM_CLIP] = an.warmup_s, an.min_std, an.clip
    f[L.FP_ANOM_VAR_TAU], f[L.FP_ANOM_HOLD] = an.var_window_s, an.hold_s
    dr = r.drift
    f[L.FP_DRIFT_SMOOTH], f[L.FP_DRIFT_BASE], f[L.FP_DRIFT_WARMUP] = (
        dr.smooth_s, dr.baseline_s, dr.warmup_s,
    )
    f[L.FP_DRIFT_K], f[L.FP_DRIFT_H], f[L.FP_DRIFT_MIN_STD] = dr.k, dr.h, dr.min_std
    f[L.FP_DRIFT_JUMP] = dr.jump_s
    fl = r.flatline
    i[L.IP_FLAT_SAMPLES], f[L.FP_FLAT_EPS], f[L.FP_FLAT_REST] = fl.samples, fl.epsilon, fl.rest
    rg = r.range
    f[L.FP_RANGE_LO], f[L.FP_RANGE_HI] = rg.lo, rg.hi
    i[L.IP_RANGE_DEBOUNCE], i[L.IP_RANGE_CLEAR] = rg.debounce, rg.clear_samples
    return f, i


def pack_rules(rules: Sequence[SensorRules]) -> RuleParams:
    """Matrices of every sensor's parameters, in the order given."""
    rows = [_row(r) for r in rules]
    fp = np.array([f for f, _ in rows], dtype=np.float64).reshape(len(rows), L.N_FP)
    ip = np.array([i for _, i in rows], dtype=np.int64).reshape(len(rows), L.N_IP)
    window = max((r.spike.window for r in rules if r.spike.enabled), default=1)
    return RuleParams(fp=fp, ip=ip, window=window)


@dataclass
class RuleState:
    """Every per-sensor kernel state array; rows are sensors."""

    fs: NDArray[np.float64]
    is_: NDArray[np.int64]
    levels: NDArray[np.int8]
    window: NDArray[np.float64]

    @staticmethod
    def initial(n_sensors: int, window: int) -> RuleState:
        """State before any sample: no times seen, nothing learnt, every level 0."""
        fs = np.zeros((n_sensors, L.N_FS), dtype=np.float64)
        fs[:, L.FS_FLAT_REF] = math.nan
        is_ = np.zeros((n_sensors, L.N_IS), dtype=np.int64)
        is_[:, [L.IS_RATE_T, L.IS_ANOM_T, L.IS_DRIFT_T, L.IS_SPIKE_BURST_T0]] = L.NO_TIME
        is_[:, L.IS_SPIKE_PEND_IDX] = -1
        return RuleState(
            fs=fs,
            is_=is_,
            levels=np.zeros((n_sensors, N_RULES), dtype=np.int8),
            window=np.zeros((n_sensors, window), dtype=np.float64),
        )

    def reset_rows(self, rows: NDArray[np.intp]) -> None:
        """Forget what was learnt for `rows` (levels are kept, so raised alerts still clear)."""
        fresh = RuleState.initial(len(rows), self.window.shape[1])
        self.fs[rows], self.is_[rows], self.window[rows] = fresh.fs, fresh.is_, fresh.window
