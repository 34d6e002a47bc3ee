"""What one site contributes: a fixed-length vector of small non-negative integers.

Every figure of the pooled report is a *sum over cases*, so the sum of the sites' vectors is all
the coordinator needs, and secure aggregation (SecAgg+, :mod:`node.multisite.flwr_app`) reveals
that sum and nothing else. The layout (:data:`LAYOUT`) is fixed, so every site's vector has the
same length whatever its size, prevalence or scores:

* ``sites`` = 1 (so the sum says how many contributions it holds);
* ``positives``, ``negatives``;
* ``tp, fp, tn, fn`` at the manifest threshold (decision ``p >= threshold``, as the pipeline);
* a score histogram per class on :data:`GRID` bins equal in *logit* over
  [-:data:`LOGIT_RANGE`, +:data:`LOGIT_RANGE`] (the pooled AUROC and its bootstrap CI are
  computed from them; :mod:`node.multisite.pooled` bounds the error). Logit, not probability:
  sigmoid outputs pile up within 1e-5 of 0 and 1 (the demo model puts all its positives in
  [0.99998, 1]), where equal probability bins would tie them all;
* per calibration bin (:data:`CALIBRATION_BINS` equal bins, as ``blindread validate``): count,
  positives and the sum of probabilities;
* the sum of squared errors (Brier numerator).

Sums of probabilities and squared errors are real numbers: they are written in fixed point
(:data:`FIXED_SCALE`) and split into :data:`WIDE_LIMBS` limbs of :data:`LIMB_BITS` bits, so
every element stays below ``2**LIMB_BITS`` (what SecAgg+'s quantisation carries exactly, see
``flwr_app``) and the sum of limbs over sites still recombines exactly (the limbs are summed
separately; recombination is linear).

Hand-written because no library defines such a vector; it is numpy only (no Flower), so the
encoding is tested without a federation.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.multisite.errors import VectorError
from node.validate.stats import check_inputs

__all__ = [
    "CALIBRATION_BINS",
    "ELEMENT_MAX",
    "FIXED_SCALE",
    "GRID",
    "LAYOUT",
    "LENGTH",
    "LIMB_BITS",
    "LOGIT_RANGE",
    "WIDE_LIMBS",
    "Sums",
    "bin_lower_edge",
    "check_vector",
    "decode",
    "encode",
    "score_bin",
    "vector_sha256",
]

LAYOUT = "blindread-multisite-v1"
GRID = 8192
LOGIT_RANGE = 18.0
CALIBRATION_BINS = 10
LIMB_BITS = 20
ELEMENT_MAX = (1 << LIMB_BITS) - 1
FIXED_SCALE = 1 << 24
WIDE_LIMBS = 3

I64 = npt.NDArray[np.int64]

# offsets of each field in the vector
_SITES = 0
_POS, _NEG = 1, 2
_TP, _FP, _TN, _FN = 3, 4, 5, 6
_HIST_POS = 7
_HIST_NEG = _HIST_POS + GRID
_CAL_COUNT = _HIST_NEG + GRID
_CAL_POS = _CAL_COUNT + CALIBRATION_BINS
_CAL_PSUM = _CAL_POS + CALIBRATION_BINS
_BRIER = _CAL_PSUM + CALIBRATION_BINS * WIDE_LIMBS
LENGTH = _BRIER + WIDE_LIMBS


def _limbs(value: int) -> list[int]:
    if value < 0 or value >= 1 << (LIMB_BITS * WIDE_LIMBS):
        raise VectorError(f"fixed-point value {value} does not fit {WIDE_LIMBS} limbs")
    return [(value >> (LIMB_BITS * k)) & ELEMENT_MAX for k in range(WIDE_LIMBS)]


def _unlimb(limbs: I64) -> float:
    total = sum(int(v) << (LIMB_BITS * k) for k, v in enumerate(limbs))
    return total / FIXED_SCALE


def grid_index(p: npt.NDArray[np.float64], bins: int) -> I64:
    """Bin of each probability on ``bins`` equal bins over [0, 1], the last one closed (the
    rule of :func:`node.validate.stats.calibration_bins`)."""
    return np.minimum((np.clip(p, 0.0, 1.0) * bins).astype(np.int64), bins - 1)


def score_bin(p: npt.NDArray[np.float64]) -> I64:
    """Histogram bin of each probability: :data:`GRID` equal bins of the logit over
    ``[-LOGIT_RANGE, LOGIT_RANGE]`` (outside values in the end bins); monotone in ``p``, so
    binning only ever turns an ordered pair into a tie."""
    with np.errstate(divide="ignore"):
        q = np.clip(p, 0.0, 1.0)
        logit = np.log(q) - np.log1p(-q)
    z = (np.clip(logit, -LOGIT_RANGE, LOGIT_RANGE) + LOGIT_RANGE) / (2 * LOGIT_RANGE)
    return np.minimum((z * GRID).astype(np.int64), GRID - 1)


def bin_lower_edge(b: int) -> float:
    """The probability where histogram bin ``b`` starts (0 for the first)."""
    if b == 0:
        return 0.0
    logit = -LOGIT_RANGE + 2 * LOGIT_RANGE * b / GRID
    return float(1.0 / (1.0 + np.exp(-logit)))


def encode(probabilities: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> I64:
    """The site's vector from its probabilities and 0/1 labels (every element in range)."""
    p, y = check_inputs(probabilities, labels)
    if not math.isfinite(threshold):
        raise VectorError("threshold must be a finite number")
    if p.size > ELEMENT_MAX:
        raise VectorError(f"{p.size} cases: a site contributes at most {ELEMENT_MAX}")
    v = np.zeros(LENGTH, dtype=np.int64)
    v[_SITES] = 1
    v[_POS] = int(y.sum())
    v[_NEG] = int((~y).sum())
    d = p >= threshold
    v[_TP], v[_FP] = int((d & y).sum()), int((d & ~y).sum())
    v[_TN], v[_FN] = int((~d & ~y).sum()), int((~d & y).sum())
    g = score_bin(p)
    v[_HIST_POS : _HIST_POS + GRID] = np.bincount(g[y], minlength=GRID)
    v[_HIST_NEG : _HIST_NEG + GRID] = np.bincount(g[~y], minlength=GRID)
    pc = np.clip(p, 0.0, 1.0)
    c = grid_index(pc, CALIBRATION_BINS)
    v[_CAL_COUNT : _CAL_COUNT + CALIBRATION_BINS] = np.bincount(c, minlength=CALIBRATION_BINS)
    v[_CAL_POS : _CAL_POS + CALIBRATION_BINS] = np.bincount(c[y], minlength=CALIBRATION_BINS)
    for b in range(CALIBRATION_BINS):
        fixed = round(float(pc[c == b].sum()) * FIXED_SCALE)
        start = _CAL_PSUM + b * WIDE_LIMBS
        v[start : start + WIDE_LIMBS] = _limbs(fixed)
    sq = float(((pc - y.astype(np.float64)) ** 2).sum())
    v[_BRIER : _BRIER + WIDE_LIMBS] = _limbs(round(sq * FIXED_SCALE))
    check_vector(v)
    return v


def check_vector(v: npt.ArrayLike, *, sites: int = 1) -> I64:
    """``v`` as int64 if it is a well-formed sum of ``sites`` contributions, else VectorError.

    A single contribution (``sites=1``) must have every element in ``[0, ELEMENT_MAX]``; a sum
    of ``k`` must stay below ``k * (ELEMENT_MAX + 1)`` and say ``k`` in its first element, and
    its class counts must agree with its histograms and confusion counts.
    """
    a = np.asarray(v)
    if a.ndim != 1 or a.size != LENGTH:
        raise VectorError(f"wrong shape {tuple(a.shape)}: layout {LAYOUT} has {LENGTH} elements")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not np.all(a == np.round(a)):
            raise VectorError("elements must be whole numbers")
    elif a.dtype.kind not in "iu":
        raise VectorError(f"elements must be integers, got dtype {a.dtype}")
    x = a.astype(np.int64)
    if x.min() < 0 or x.max() > sites * ELEMENT_MAX:
        raise VectorError(f"elements must lie in [0, {sites * ELEMENT_MAX}]")
    if int(x[_SITES]) != sites:
        raise VectorError(f"first element says {int(x[_SITES])} contribution(s), not {sites}")
    pos, neg = int(x[_POS]), int(x[_NEG])
    checks = {
        "positive histogram": int(x[_HIST_POS : _HIST_POS + GRID].sum()) == pos,
        "negative histogram": int(x[_HIST_NEG : _HIST_NEG + GRID].sum()) == neg,
        "tp + fn": int(x[_TP] + x[_FN]) == pos,
        "fp + tn": int(x[_FP] + x[_TN]) == neg,
        "calibration counts": int(x[_CAL_COUNT : _CAL_COUNT + CALIBRATION_BINS].sum())
        == pos + neg,
        "calibration positives": int(x[_CAL_POS : _CAL_POS + CALIBRATION_BINS].sum()) == pos,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise VectorError("inconsistent counts: " + ", ".join(bad))
    return x


def vector_sha256(arrays: list[bytes]) -> str:
    """SHA-256 of a (masked) vector as it travels: its serialised arrays, in order."""
    h = hashlib.sha256()
    for b in arrays:
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class Sums:
    """The decoded sum over sites (nothing per site, nothing per case)."""

    sites: int
    positives: int
    negatives: int
    tp: int
    fp: int
    tn: int
    fn: int
    hist_pos: I64
    hist_neg: I64
    cal_count: I64
    cal_pos: I64
    cal_psum: tuple[float, ...]
    squared_error_sum: float

    @property
    def cases(self) -> int:
        return self.positives + self.negatives


def decode(v: npt.ArrayLike, sites: int) -> Sums:
    """Split a checked sum of ``sites`` vectors into its fields."""
    x = check_vector(v, sites=sites)
    return Sums(
        sites=int(x[_SITES]),
        positives=int(x[_POS]),
        negatives=int(x[_NEG]),
        tp=int(x[_TP]),
        fp=int(x[_FP]),
        tn=int(x[_TN]),
        fn=int(x[_FN]),
        hist_pos=x[_HIST_POS : _HIST_POS + GRID].copy(),
        hist_neg=x[_HIST_NEG : _HIST_NEG + GRID].copy(),
        cal_count=x[_CAL_COUNT : _CAL_COUNT + CALIBRATION_BINS].copy(),
        cal_pos=x[_CAL_POS : _CAL_POS + CALIBRATION_BINS].copy(),
        cal_psum=tuple(
            _unlimb(x[_CAL_PSUM + b * WIDE_LIMBS : _CAL_PSUM + (b + 1) * WIDE_LIMBS])
            for b in range(CALIBRATION_BINS)
        ),
        squared_error_sum=_unlimb(x[_BRIER : _BRIER + WIDE_LIMBS]),
    )
