"""Pooled figures from the sum of the sites' vectors (:class:`node.multisite.vector.Sums`).

The conventions are those of :mod:`node.validate.stats` (the local report), on binned scores:

* AUROC is the Mann-Whitney statistic with ties counted 1/2, where two scores in the same
  histogram bin count as tied. It differs from the exact AUROC only through positive/negative
  pairs that share a bin but not a score, by at most half their fraction of all pairs: with
  :data:`~node.multisite.vector.GRID` = 8192 bins of width 0.0044 in logit that stays far
  below 1e-3 for model outputs that are not piled into a few bins (the tests check
  it, also on strongly concentrated scores); :func:`tie_bound` gives the bound for a pool.
* The CI is the stratified percentile bootstrap of the local report (positives and negatives
  resampled separately, ``numpy.random.default_rng(seed)``), drawn from the pooled histograms
  (a multinomial draw of the pooled class histogram is a resample of the pooled cases'
  binned scores).
* Sensitivity/specificity come from the exact confusion counts at the manifest threshold
  (summed, not binned) with Wilson intervals; Brier = summed squared error / cases;
  calibration bins are those of the local report (10 equal bins).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.multisite.errors import RoundRefusedError
from node.multisite.vector import Sums, bin_lower_edge
from node.validate.stats import BootstrapInterval, CalibrationBin, Confusion, RocCurve

__all__ = ["PooledFigures", "auroc_from_histograms", "pooled_figures", "tie_bound"]


def auroc_from_histograms(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> float:
    """AUROC of binned scores: P(pos bin > neg bin) + 1/2 P(same bin)."""
    hp = np.asarray(hist_pos, dtype=np.float64)
    hn = np.asarray(hist_neg, dtype=np.float64)
    n_pos, n_neg = hp.sum(), hn.sum()
    below = np.cumsum(hn) - hn
    return float((hp * (below + 0.5 * hn)).sum() / (n_pos * n_neg))


def tie_bound(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> float:
    """Upper bound of |binned AUROC - exact AUROC|: half the share of pairs in one bin."""
    hp = np.asarray(hist_pos, dtype=np.float64)
    hn = np.asarray(hist_neg, dtype=np.float64)
    return float(0.5 * (hp * hn).sum() / (hp.sum() * hn.sum()))


def _bootstrap(
    hp: npt.NDArray[np.int64], hn: npt.NDArray[np.int64], resamples: int, seed: int,
    level: float,
) -> BootstrapInterval:
    keep = (hp + hn) > 0  # empty bins change nothing: draw over the occupied ones only
    pp, pn = hp[keep], hn[keep]
    n_pos, n_neg = int(pp.sum()), int(pn.sum())
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // max(1, pp.size))
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        rp = rng.multinomial(n_pos, pp / n_pos, size=k).astype(np.float64)
        rn = rng.multinomial(n_neg, pn / n_neg, size=k).astype(np.float64)
        below = np.cumsum(rn, axis=1) - rn
        stats[start : start + k] = (rp * (below + 0.5 * rn)).sum(axis=1) / (n_pos * n_neg)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapInterval(float(low), float(high), level, resamples, seed,
                             method="stratified percentile bootstrap (binned scores)")


def _roc(hp: npt.NDArray[np.int64], hn: npt.NDArray[np.int64]) -> RocCurve:
    """ROC points at each occupied bin's lower edge, highest first (a bin moves diagonally)."""
    occupied = np.nonzero(hp + hn)[0][::-1]
    tp = np.cumsum(hp[occupied]) / hp.sum()
    fp = np.cumsum(hn[occupied]) / hn.sum()
    return RocCurve(
        (0.0, *(float(v) for v in fp)),
        (0.0, *(float(v) for v in tp)),
        (float("inf"), *(bin_lower_edge(int(b)) for b in occupied)),
    )


@dataclass(frozen=True)
class PooledFigures:
    """The pooled figures (what the coordinator may release)."""

    sites: int
    positives: int
    negatives: int
    auroc: float
    auroc_ci: BootstrapInterval
    auroc_tie_bound: float
    brier: float
    confusion: Confusion
    roc: RocCurve
    calibration: tuple[CalibrationBin, ...]


def pooled_figures(
    sums: Sums, threshold: float, *, bootstrap: int = 2000, seed: int = 0, level: float = 0.95
) -> PooledFigures:
    """Every figure of the report from the pooled sums (needs both classes)."""
    if sums.positives == 0 or sums.negatives == 0:
        raise RoundRefusedError(
            f"the pool has {sums.positives} positive and {sums.negatives} negative cases; "
            "AUROC, sensitivity and specificity need both"
        )
    hp, hn = sums.hist_pos, sums.hist_neg
    calib = []
    for b in range(len(sums.cal_count)):
        n = int(sums.cal_count[b])
        if n == 0:
            continue
        width = 1.0 / len(sums.cal_count)
        calib.append(CalibrationBin(low=b * width, high=(b + 1) * width, count=n,
                                    mean_probability=sums.cal_psum[b] / n,
                                    observed_fraction=int(sums.cal_pos[b]) / n))  # fmt: skip
    return PooledFigures(
        sites=sums.sites,
        positives=sums.positives,
        negatives=sums.negatives,
        auroc=auroc_from_histograms(hp, hn),
        auroc_ci=_bootstrap(hp, hn, bootstrap, seed, level),
        auroc_tie_bound=tie_bound(hp, hn),
        brier=sums.squared_error_sum / sums.cases,
        confusion=Confusion(float(threshold), sums.tp, sums.fp, sums.tn, sums.fn),
        roc=_roc(hp, hn),
        calibration=tuple(calib),
    )
