"""SKAB scoring functions on hand-made labels and predictions."""

from __future__ import annotations

import numpy as np

from benchmarks.detection import nab_score_file, nab_windows, outlier_metrics


def test_outlier_metrics_count_one_confusion_matrix() -> None:
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    assert outlier_metrics(label, pred) == (0.75, 25.0, 25.0)


def test_overlapping_windows_start_where_the_earlier_ends() -> None:
    assert nab_windows(np.array([0.0, 30.0])) == [(0.0, 60.0), (60.0, 90.0)]


def test_nab_prediction_at_onset_scores_one_and_outside_costs_fp() -> None:
    windows = nab_windows(np.array([100.0]))
    assert nab_score_file(windows, np.array([100.0]))[0] == 1.0
    assert nab_score_file(windows, np.array([]))[:2] == (-1.0, 1)
    total, missed, fps = nab_score_file(windows, np.array([10.0, 160.0]))
    assert (missed, fps) == (0, 1) and abs(total - (-0.11 - 0.11)) < 1e-9
