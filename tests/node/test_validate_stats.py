"""node.validate.stats against hand-computed values, brute force, and the demo's AUROC."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.validate.stats import (
    StatsError,
    auroc,
    bootstrap_auroc,
    brier_score,
    calibration_bins,
    check_inputs,
    confusion_at,
    roc_curve,
    wilson_interval,
)
from secure_infer.demo.evaluate import auroc as demo_auroc


def _pairwise_auroc(s: list[float], y: list[int]) -> float:
    """Definition: fraction of (positive, negative) pairs ordered correctly, ties 1/2."""
    pos = [a for a, b in zip(s, y, strict=True) if b]
    neg = [a for a, b in zip(s, y, strict=True) if not b]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_values() -> None:
    # pairs (pos, neg): (0.35,0.1)+ (0.35,0.4)- (0.8,0.1)+ (0.8,0.4)+ -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


def test_auroc_ties_count_half() -> None:
    # all scores equal: every pair is a tie -> 0.5
    assert auroc([0.3, 0.3, 0.3, 0.3, 0.3], [0, 1, 0, 1, 1]) == 0.5
    # pos {0.5, 0.9}, neg {0.5, 0.1}: pairs 0.5/0.5 tie (0.5), 0.5>0.1, 0.9>0.5, 0.9>0.1 -> 3.5/4
    assert auroc([0.5, 0.9, 0.5, 0.1], [1, 1, 0, 0]) == 0.875


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]), st.sampled_from([0, 1])),
        min_size=2,
        max_size=40,
    ).filter(lambda rows: len({b for _, b in rows}) == 2)
)
def test_auroc_equals_pairwise_definition(rows: list[tuple[float, int]]) -> None:
    s = [a for a, _ in rows]
    y = [b for _, b in rows]
    assert auroc(s, y) == pytest.approx(_pairwise_auroc(s, y), abs=1e-12)
    assert auroc(s, y) == pytest.approx(demo_auroc(s, y), abs=1e-12)


def test_single_class_and_bad_input_are_clear_errors() -> None:
    with pytest.raises(StatsError, match=r"at least one positive and one negative.*negative"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(StatsError, match="positive \\(1\\)"):
        bootstrap_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(StatsError, match="an ROC curve"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(StatsError, match="3 scores but 2 labels"):
        check_inputs([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(StatsError, match="0 or 1"):
        check_inputs([0.1, 0.2], [0, 2])
    with pytest.raises(StatsError, match="finite"):
        check_inputs([0.1, math.nan], [0, 1])
    with pytest.raises(StatsError, match="no cases"):
        check_inputs([], [])
    with pytest.raises(StatsError, match=r"\[0, 1\]"):
        brier_score([0.1, 1.5], [0, 1])


def test_brier_hand_value() -> None:
    # (0.1-0)^2 + (0.8-1)^2 + (0.6-0)^2 + (0.3-1)^2 = 0.01+0.04+0.36+0.49 = 0.90 -> /4
    assert brier_score([0.1, 0.8, 0.6, 0.3], [0, 1, 0, 1]) == pytest.approx(0.225, abs=1e-15)
    assert brier_score([0.0, 1.0], [0, 1]) == 0.0


def test_confusion_at_threshold_counts_and_rates() -> None:
    p = [0.2, 0.5, 0.7, 0.49, 0.9, 0.1]
    y = [0, 0, 1, 1, 1, 0]
    c = confusion_at(p, y, 0.5)  # decisions: 0,1,1,0,1,0 ; p == threshold is positive
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 2, 1)
    assert c.sensitivity == pytest.approx(2 / 3)
    assert c.specificity == pytest.approx(2 / 3)
    lo, hi = c.sensitivity_ci
    assert 0.0 <= lo < 2 / 3 < hi <= 1.0
    only_pos = confusion_at([0.9, 0.1], [1, 1], 0.5)
    assert math.isnan(only_pos.specificity) and only_pos.sensitivity == 0.5


def test_wilson_known_values() -> None:
    # textbook: 8/10 -> (0.4902, 0.9433); 0/10 -> (0, 0.2775); 10/10 -> (0.7225, 1)
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(StatsError):
        wilson_interval(3, 2)


def test_roc_curve_points_with_ties() -> None:
    roc = roc_curve([0.9, 0.8, 0.8, 0.3, 0.1], [1, 1, 0, 0, 1])
    # thresholds: inf, 0.9 -> (0, 1/3), 0.8 (one pos and one neg tied) -> (1/2, 2/3),
    # 0.3 -> (1, 2/3), 0.1 -> (1, 1)
    assert roc.thresholds == (math.inf, 0.9, 0.8, 0.3, 0.1)
    assert roc.fpr == pytest.approx((0.0, 0.0, 0.5, 1.0, 1.0))
    assert roc.tpr == pytest.approx((0.0, 1 / 3, 2 / 3, 2 / 3, 1.0))
    # trapezoid area under these points is the (tie-aware) AUROC
    # (by hand: np.trapezoid is numpy >= 2 only, and the 2pc extra's SPU pins numpy < 2)
    fpr, tpr = np.asarray(roc.fpr), np.asarray(roc.tpr)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auroc([0.9, 0.8, 0.8, 0.3, 0.1], [1, 1, 0, 0, 1]))


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30, int), np.zeros(30, int)]
    s = np.r_[rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 30)]
    a = bootstrap_auroc(s, y, resamples=500, seed=11)
    b = bootstrap_auroc(s, y, resamples=500, seed=11)
    c = bootstrap_auroc(s, y, resamples=500, seed=12)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low < auroc(s, y) < a.high
    assert 0.0 <= a.low and a.high <= 1.0
    # recompute by hand: the same generator draws, positives then negatives, per resample
    g = np.random.default_rng(11)
    pos, neg = s[y == 1], s[y == 0]
    vals = []
    for _ in range(500):
        rp = pos[g.integers(0, 30, 30)]
        rn = neg[g.integers(0, 30, 30)]
        vals.append(_pairwise_auroc(list(np.r_[rp, rn]), [1] * 30 + [0] * 30))
    assert (a.low, a.high) == pytest.approx(tuple(np.quantile(vals, [0.025, 0.975])), abs=1e-12)


def test_bootstrap_perfect_separation_is_a_point() -> None:
    ci = bootstrap_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], resamples=200, seed=0)
    assert (ci.low, ci.high) == (1.0, 1.0)
    with pytest.raises(StatsError, match="resample"):
        bootstrap_auroc([0.1, 0.9], [0, 1], resamples=0)


def test_calibration_bins_hand_values() -> None:
    bins = calibration_bins([0.05, 0.15, 0.12, 0.95, 1.0], [0, 0, 1, 1, 1], bins=10)
    assert [(b.low, b.high, b.count) for b in bins] == [
        (0.0, 0.1, 1), (pytest.approx(0.1), pytest.approx(0.2), 2), (pytest.approx(0.9), 1.0, 2)
    ]  # fmt: skip
    assert bins[1].mean_probability == pytest.approx(0.135)
    assert bins[1].observed_fraction == 0.5
    assert bins[2].mean_probability == pytest.approx(0.975)  # p == 1.0 lands in the last bin
    assert sum(b.count for b in bins) == 5
