"""Detection on SKAB (Skoltech Anomaly Benchmark): scoring with SKAB's own protocol (work in progress).

Only the pure scoring functions are here so far; the harness that feeds SKAB through the agent's
Pipeline is not written yet.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, -0.11, -1.0), "LowFP": (1.0, -0.22, -1.0), "LowFN": (1.0, -0.11, -2.0)}


def outlier_metrics(label: NDArray[np.bool_], pred: NDArray[np.bool_]) -> tuple[float, float, float]:
    """SKAB's F1, FAR % and MAR % of one confusion matrix over all test rows."""
    tp = int(np.sum(label & pred))
    fp = int(np.sum(~label & pred))
    fn = int(np.sum(label & ~pred))
    tn = int(np.sum(~label & ~pred))
    f1 = tp / (tp + (fn + fp) / 2) if tp + fn + fp else 1.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return round(f1, 2), round(far, 2), round(mar, 2)


def nab_windows(cp_s: NDArray[np.float64], window_s: float = 60.0) -> list[tuple[float, float]]:
    """[t, t + window] per changepoint; a window overlapping the previous starts where it ends."""
    out: list[tuple[float, float]] = []
    for t in np.sort(cp_s):
        start = max(float(t), out[-1][1]) if out else float(t)
        out.append((start, float(t) + window_s))
    return [(a, b) for a, b in out if b > a]


def nab_score_file(windows: list[tuple[float, float]], pred_s: NDArray[np.float64],
                   profile: str = "standard") -> tuple[float, int, int]:
    """(sum of scores, missed windows, false positives) of one file's predictions."""
    a_tp, a_fp, a_fn = PROFILES[profile]
    total, missed, used = 0.0, 0, np.zeros(len(pred_s), dtype=bool)
    for start, end in windows:
        inside = (pred_s >= start) & (pred_s <= end)
        used |= inside
        if not inside.any():
            total += a_fn
            missed += 1
            continue
        x = -math.pi / 2 + math.pi * (float(pred_s[inside].min()) - start) / (end - start)
        total += (a_tp - a_fp) / 2 * (1 - math.tanh(x) / math.tanh(math.pi / 2)) + a_fp
    fps = int((~used).sum())
    return total + fps * a_fp, missed, fps
