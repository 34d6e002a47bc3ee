"""Statistics of a local validation run: small pure functions over probabilities and 0/1 labels.

Hand-written with numpy rather than taken from scikit-learn/scipy because each is a few lines,
the node does not otherwise need those (large) dependencies, and the exact conventions matter
for a report a hospital signs off on:

* a case is called positive when ``probability >= threshold`` (as the pipeline's SR decides);
* AUROC is the Mann-Whitney statistic with mid-ranks, so tied scores count 1/2;
* the AUROC confidence interval is a *stratified* percentile bootstrap: positives and negatives
  are resampled separately (as pROC does by default), so every resample has both classes and no
  resample has to be dropped; the generator is ``numpy.random.default_rng(seed)``, so the same
  seed gives the same interval;
* sensitivity/specificity carry Wilson score intervals, which stay inside [0, 1] for small
  counts where the normal approximation does not.

Every function raises :class:`StatsError` (a ``ValueError``) with a plain sentence when the data
cannot give the statistic (a single class, mismatched lengths, values outside [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.errors import NodeError

__all__ = [
    "BootstrapInterval",
    "CalibrationBin",
    "Confusion",
    "RocCurve",
    "StatsError",
    "auroc",
    "bootstrap_auroc",
    "brier_score",
    "calibration_bins",
    "check_inputs",
    "confusion_at",
    "roc_curve",
    "wilson_interval",
]

F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class StatsError(NodeError, ValueError):
    """The data cannot give the requested statistic (explained in the message)."""


def check_inputs(
    scores: npt.ArrayLike, labels: npt.ArrayLike, *, probabilities: bool = False
) -> tuple[F64, Bools]:
    """Validate and convert: finite scores, labels exactly 0/1, same non-zero length.

    With ``probabilities=True`` the scores must also lie in [0, 1].
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    raw = np.asarray(labels).ravel()
    if s.shape != raw.shape:
        raise StatsError(f"{s.size} scores but {raw.size} labels")
    if s.size == 0:
        raise StatsError("no cases")
    if not np.isfinite(s).all():
        raise StatsError("scores must be finite numbers")
    if probabilities and (s.min() < 0.0 or s.max() > 1.0):
        raise StatsError("probabilities must lie in [0, 1]")
    if not np.isin(raw, (0, 1)).all():
        raise StatsError("labels must be 0 or 1")
    return s, raw.astype(bool)


def _both_classes(y: Bools, what: str) -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        only = "positive (1)" if n_neg == 0 else "negative (0)"
        raise StatsError(
            f"{what} needs at least one positive and one negative case; all {y.size} labels "
            f"are {only}"
        )
    return n_pos, n_neg


def _midranks(s: F64) -> F64:
    """1-based ranks with ties given the average of the ranks they span."""
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts).astype(np.float64)  # rank of the last member of each tie group
    return (upper - (counts - 1) / 2.0)[inverse.ravel()]


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties 1/2.

    ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with mid-ranks ``R``.
    """
    s, y = check_inputs(scores, labels)
    n_pos, n_neg = _both_classes(y, "AUROC")
    r_pos = float(_midranks(s)[y].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap confidence interval."""

    low: float
    high: float
    level: float
    resamples: int
    seed: int
    method: str = "stratified percentile bootstrap"


def bootstrap_auroc(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapInterval:
    """Percentile bootstrap CI of the AUROC, resampling positives and negatives separately.

    Deterministic for a given ``seed``. The bounds are the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles (linear interpolation) of the resampled AUROCs.
    """
    s, y = check_inputs(scores, labels)
    _both_classes(y, "AUROC")
    if resamples < 1:
        raise StatsError("the bootstrap needs at least one resample")
    if not 0.0 < level < 1.0:
        raise StatsError("confidence level must be between 0 and 1")
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    labels_rs = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    stats = np.empty(resamples, dtype=np.float64)
    for b in range(resamples):
        rs = np.concatenate(
            [pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]]
        )
        stats[b] = auroc(rs, labels_rs)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapInterval(float(low), float(high), level, resamples, seed)


def brier_score(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Mean squared difference between probability and outcome (0 is perfect, lower better)."""
    p, y = check_inputs(probabilities, labels, probabilities=True)
    return float(np.mean((p - y.astype(np.float64)) ** 2))


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (nan, nan) when ``n == 0``."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise StatsError(f"invalid proportion {successes}/{n}")
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Confusion:
    """Counts of decisions (``probability >= threshold``) against labels."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        """TP / (TP + FN); nan without positive cases."""
        n = self.tp + self.fn
        return self.tp / n if n else math.nan

    @property
    def specificity(self) -> float:
        """TN / (TN + FP); nan without negative cases."""
        n = self.tn + self.fp
        return self.tn / n if n else math.nan

    @property
    def sensitivity_ci(self) -> tuple[float, float]:
        return wilson_interval(self.tp, self.tp + self.fn)

    @property
    def specificity_ci(self) -> tuple[float, float]:
        return wilson_interval(self.tn, self.tn + self.fp)


def confusion_at(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, threshold: float
) -> Confusion:
    """Decision ``p >= threshold`` (the pipeline's rule) tallied against the labels."""
    p, y = check_inputs(probabilities, labels)
    if not math.isfinite(threshold):
        raise StatsError("threshold must be a finite number")
    d = p >= threshold
    return Confusion(
        threshold=float(threshold),
        tp=int((d & y).sum()),
        fp=int((d & ~y).sum()),
        tn=int((~d & ~y).sum()),
        fn=int((~d & y).sum()),
    )


@dataclass(frozen=True)
class RocCurve:
    """Empirical ROC: one point per distinct score (decision ``>= threshold``), from (0, 0)."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]  # the first is +inf (nobody called positive)


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> RocCurve:
    """ROC points at every distinct score, highest first; tied scores move diagonally."""
    s, y = check_inputs(scores, labels)
    n_pos, n_neg = _both_classes(y, "an ROC curve")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last_of_group = np.r_[np.diff(s_sorted) != 0, True]
    tpr = np.r_[0.0, tp[last_of_group] / n_pos]
    fpr = np.r_[0.0, fp[last_of_group] / n_neg]
    thr = np.r_[np.inf, s_sorted[last_of_group]]
    return RocCurve(
        tuple(float(v) for v in fpr), tuple(float(v) for v in tpr), tuple(float(v) for v in thr)
    )


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of a reliability diagram: predicted mean vs observed frequency of positives."""

    low: float
    high: float
    count: int
    mean_probability: float
    observed_fraction: float


def calibration_bins(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 10
) -> list[CalibrationBin]:
    """Equal-width bins over [0, 1] (the last one closed); empty bins are left out."""
    p, y = check_inputs(probabilities, labels, probabilities=True)
    if bins < 1:
        raise StatsError("need at least one calibration bin")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        out.append(
            CalibrationBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                count=int(m.sum()),
                mean_probability=float(p[m].mean()),
                observed_fraction=float(y[m].mean()),
            )
        )
    return out
