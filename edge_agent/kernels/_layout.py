"""Column layout of the per-sensor parameter and state matrices the kernels share.

Rows are sensors. Parameters: `fp` float64[S, N_FP], `ip` int64[S, N_IP]. State: `fs`
float64[S, N_FS], `is_` int64[S, N_IS], `levels` int8[S, N_RULES], the spike window ring
float64[S, W] (W: the widest spike window of any sensor). Graded limits take 4 columns
each, unused ones +inf.
Changing this layout changes LAYOUT_VERSION, so saved state from before is refused.
"""

from __future__ import annotations

from typing import Final

LAYOUT_VERSION: Final = 3

#: A time that means "no sample yet" (int64 minimum).
NO_TIME: Final = -(2**63)

# --- int parameters -------------------------------------------------------------------------
IP_ENABLED: Final = 0  # bit mask of enabled rules (bit = rule code)
IP_HIGH_N: Final = 1
IP_LOW_N: Final = 2
IP_DEBOUNCE: Final = 3
IP_RATE_RISE_N: Final = 4
IP_RATE_FALL_N: Final = 5
IP_RATE_DEBOUNCE: Final = 6
IP_SPIKE_WINDOW: Final = 7
IP_SPIKE_MAX_LEN: Final = 8
IP_SPIKE_SCALE_N: Final = 9
IP_SPIKE_CLEAR: Final = 10
IP_ANOM_N: Final = 11
IP_ANOM_DEBOUNCE: Final = 12
IP_FLAT_SAMPLES: Final = 13
IP_RANGE_DEBOUNCE: Final = 14
IP_RANGE_CLEAR: Final = 15
IP_SPIKE_QUIET_N: Final = 16  # span (samples) of the spike rule's activity average
N_IP: Final = 17

# --- float parameters -----------------------------------------------------------------------
FP_HIGH: Final = 0  # 4 limits, ascending
FP_LOW: Final = 4  # 4 limits, negated so they ascend
FP_HYST: Final = 8
FP_RATE_RISE: Final = 9  # 4
FP_RATE_FALL: Final = 13  # 4 magnitudes, ascending
FP_RATE_HYST: Final = 17
FP_RATE_TAU: Final = 18  # seconds
FP_RATE_PER: Final = 19  # rate unit in seconds
FP_SPIKE_K: Final = 20
FP_SPIKE_MIN_DEV: Final = 21
FP_ANOM_Z: Final = 22  # 4
FP_ANOM_HYST: Final = 26
FP_ANOM_SMOOTH: Final = 27
FP_ANOM_TAU: Final = 28
FP_ANOM_WARMUP: Final = 29
FP_ANOM_MIN_STD: Final = 30
FP_ANOM_CLIP: Final = 31
FP_DRIFT_SMOOTH: Final = 32
FP_DRIFT_BASE: Final = 33
FP_DRIFT_WARMUP: Final = 34
FP_DRIFT_K: Final = 35
FP_DRIFT_H: Final = 36
FP_DRIFT_MIN_STD: Final = 37
FP_FLAT_EPS: Final = 38
FP_FLAT_REST: Final = 39
FP_RANGE_LO: Final = 40
FP_RANGE_HI: Final = 41
FP_DRIFT_JUMP: Final = 42
FP_ANOM_VAR_TAU: Final = 43
FP_ANOM_HOLD: Final = 44
FP_SPIKE_QUIET: Final = 45  # activity (in scales) above which no spike candidate opens
FP_SPIKE_TRAFFIC: Final = 46  # accelerometer energy ratio that marks traffic
FP_SPIKE_HOLD: Final = 47  # ms either side of a spike the accelerometer is looked at
FP_SPIKE_BURST: Final = 48  # ms a burst may last and still be a vehicle's
FP_SPIKE_ISO: Final = 49  # scales a spike's neighbours must stay within
N_FP: Final = 50

# --- int state ------------------------------------------------------------------------------
IS_HIGH_CNT: Final = 0  # 4 debounce counters
IS_LOW_CNT: Final = 4  # 4
IS_RATE_T: Final = 8  # last sample time (ms) or NO_TIME
IS_RATE_RISE_LVL: Final = 9
IS_RATE_FALL_LVL: Final = 10
IS_RATE_RISE_CNT: Final = 11  # 4
IS_RATE_FALL_CNT: Final = 15  # 4
IS_SPIKE_FILL: Final = 19
IS_SPIKE_POS: Final = 20
IS_SPIKE_NSCALE: Final = 21
IS_SPIKE_PEND: Final = 22  # >0 samples in a candidate spike, -1 in a long excursion, 0 normal
IS_SPIKE_PEND_IDX: Final = 23  # batch index of the candidate's first sample, -1 if earlier
IS_SPIKE_CLEAN: Final = 24
IS_ANOM_T: Final = 25
IS_ANOM_CNT: Final = 26  # 4
IS_DRIFT_T: Final = 30
IS_FLAT_RUN: Final = 31
IS_RANGE_BAD: Final = 32
IS_RANGE_GOOD: Final = 33
IS_ANOM_RUN: Final = 34  # signed run of clipped innovations of the anomaly smoother
IS_SPIKE_TRAFFIC: Final = 35  # spikes taken as traffic (not raised)
IS_SPIKE_BURST_T0: Final = 36  # time the current burst began (ms), or NO_TIME when calm
IS_SPIKE_CONFIRM: Final = 37  # samples after a spike's return still to be checked
N_IS: Final = 38

# --- float state ----------------------------------------------------------------------------
FS_RATE_S0: Final = 0  # weighted sums of 1, u, u^2, x, u*x (u: time to last sample, s)
FS_RATE_S1: Final = 1
FS_RATE_S2: Final = 2
FS_RATE_SX: Final = 3
FS_RATE_STX: Final = 4
FS_RATE_LASTX: Final = 5
FS_SPIKE_SCALE: Final = 6
FS_SPIKE_PEND_REF: Final = 7
FS_SPIKE_PEND_THR: Final = 8
FS_SPIKE_PEND_PEAK: Final = 9
FS_ANOM_FAST: Final = 10
FS_ANOM_RAWVAR: Final = 11
FS_ANOM_MEAN: Final = 12
FS_ANOM_VAR: Final = 13
FS_ANOM_AGE: Final = 14
FS_DRIFT_SLOW: Final = 15
FS_DRIFT_MEAN: Final = 16
FS_DRIFT_VAR: Final = 17
FS_DRIFT_AGE: Final = 18
FS_DRIFT_POS: Final = 19
FS_DRIFT_NEG: Final = 20
FS_FLAT_REF: Final = 21
FS_DRIFT_MID: Final = 22
FS_ANOM_HELD: Final = 23  # seconds the current alarm has held the baseline
FS_SPIKE_ACT: Final = 24  # recent mean |deviation| (clipped at the band)
FS_SPIKE_D1: Final = 25  # |deviation| of the previous sample
FS_SPIKE_D2: Final = 26  # |deviation| of the one before
N_FS: Final = 27

# --- event buffer columns -------------------------------------------------------------------
EV_SENSOR: Final = 0
EV_RULE: Final = 1
EV_LEVEL: Final = 2
EV_PREV: Final = 3
EV_INDEX: Final = 4
N_EV_INT: Final = 5
EV_LIMIT: Final = 0
EV_SCORE: Final = 1
N_EV_FLOAT: Final = 2

#: Longest run of samples the driver hands to a rule at once; bounds the event buffer.
CHUNK: Final = 4096
