"""The graded level machine shared by `high`, `low`, `rate` and `anomaly` (contract section 4).

Limits L[0] < ... < L[K-1] (K <= 4) give levels 1..K. Per limit k the machine keeps one
counter: while the level m <= k it counts consecutive samples beyond L[k] (v > L[k]); while
m > k it counts consecutive samples back inside L[k] - hysteresis (v < L[k] - h). On each
non-NaN sample, after updating the counters:
- raise to u = the number of limits whose counter reached `debounce` above m, if u > m:
  a value held beyond L[k] for `debounce` samples brings the level to at least k+1, and a value
  that jumps straight past several limits raises one alert to the highest of them;
- else lower to d = the number of limits k < m whose counter has *not* reached `debounce`, if
  d < m: a value held below L[m-1] - h lowers the level, below L[0] - h clears it.
A counter restarts at 0 whenever its condition fails and when its role flips at a level
change, so an excursion shorter than `debounce` raises nothing and a value wandering between
L[k] - h and L[k] changes nothing (no chattering). Counters saturate at `debounce`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge_agent.kernels._jit import kernel


@kernel
def graded_step(
    v: float,
    limits: NDArray[np.float64],
    n_limits: int,
    hysteresis: float,
    debounce: int,
    counters: NDArray[np.int64],
    level: int,
) -> int:
    """Feed one non-NaN value to the machine (`limits`, `counters`: 4-element views); returns
    the new level. Counter roles: k >= level counts beyond L[k], k < level counts back inside."""
    up = level
    k = level
    while k < n_limits:
        if v > limits[k]:
            c = counters[k]
            if c < debounce:
                c += 1
                counters[k] = c
            if c >= debounce:
                up = k + 1
            k += 1
        else:
            while k < n_limits and counters[k] != 0:  # the rest are zero: they are monotone
                counters[k] = 0
                k += 1
            break
    if up > level:
        for j in range(up):
            counters[j] = 0
        return up
    down = level
    k = level - 1
    while k >= 0:
        if v < limits[k] - hysteresis:
            c = counters[k]
            if c < debounce:
                c += 1
                counters[k] = c
            if c >= debounce:
                down = k
            k -= 1
        else:
            while k >= 0 and counters[k] != 0:
                counters[k] = 0
                k -= 1
            break
    if down < level:
        for j in range(down, level):
            counters[j] = 0
    return down


@kernel
def change_limit(limits: NDArray[np.float64], new: int, old: int) -> float:
    """The limit a level change crossed: L[new-1] on a raise, L[new] (lowest cleared) on a fall."""
    if new > old:
        return limits[new - 1]
    return limits[new]
