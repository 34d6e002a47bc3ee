"""The HE plan: what the compiler produces and the evaluator runs.

A plan is an alternating chain of dense affine stages (every linear ONNX op folded into one
matrix per stage) and elementwise squares, plus the hospital-side input packing. All vectors live
in CKKS slots *periodically*: a vector of (power-of-two) length ``d`` is tiled over all the slots
an image owns, so cyclic rotations of the whole slot vector are cyclic rotations of the vector,
and the hybrid diagonal method (Halevi-Shoup / GAZELLE) needs no masks: its output is again
periodic and directly feeds the next stage. Several images share a ciphertext interleaved
(slot ``e * images + j`` holds element ``e`` of image ``j``), so rotations by ``k * images`` act on
all of them at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from secure_infer.packing import InputPacking, next_pow2

__all__ = [
    "Diagonals",
    "LinearStage",
    "Plan",
    "ReduceStage",
    "SquareStage",
    "Stage",
    "diagonals",
]


@dataclass
class LinearStage:
    """``y = W x + b`` on the packed vector; ``W`` is ``(m, n)`` with ``n`` = input length."""

    weight: np.ndarray
    bias: np.ndarray
    name: str = "linear"

    @property
    def in_dim(self) -> int:
        return next_pow2(self.weight.shape[1])

    @property
    def out_dim(self) -> int:
        return next_pow2(self.weight.shape[0])

    @property
    def period(self) -> int:
        return max(self.in_dim, self.out_dim)


@dataclass
class SquareStage:
    """Elementwise ``x * x`` (every supported activation is reduced to this by folding)."""

    name: str = "square"


@dataclass
class ReduceStage:
    """``y = s + conj(s) + bias`` with ``s`` = sum over one period of ``width`` elements.

    Consumes no level. Produced by the compiler from ``Linear(A) -> Square -> Linear(w, 1 output)``:
    with ``u = sqrt(w+/2) A+ x + i sqrt(|w-|/2) A- x`` (complex weights), ``Re(u^2)`` is
    ``(w+ h+^2 + w- h-^2) / 2``, so the last affine stage and its level disappear; adding the
    conjugate removes the imaginary cross terms, which would otherwise leak to the hospital.
    """

    width: int
    bias: float
    name: str = "reduce"


Stage = LinearStage | SquareStage | ReduceStage


@dataclass
class Diagonals:
    """Nonzero generalized diagonals of one linear stage, in element units.

    ``y'[i] = sum_k diag[k][i] * x[i + k]`` over one period ``P``; then, when the matrix is wider
    than tall, ``fold`` rotations sum the ``n'/m'`` partial blocks.
    """

    period: int
    diags: dict[int, np.ndarray]
    fold_steps: list[int]


def diagonals(stage: LinearStage) -> Diagonals:
    """Generalized (hybrid) diagonals from the nonzero entries, O(nnz)."""
    w = stage.weight
    m2, n2 = stage.out_dim, stage.in_dim
    period = max(m2, n2)
    rows, cols = np.nonzero(w)
    vals = w[rows, cols]
    if m2 <= n2:
        k = (cols - rows) % m2
        i = (cols - k) % n2
        fold = []
        r = m2
        while r < n2:
            fold.append(r)
            r *= 2
    else:
        i = rows
        k = (cols - rows) % n2
        fold = []
    diags: dict[int, np.ndarray] = {}
    for kk in np.unique(k):
        sel = k == kk
        d = np.zeros(period, dtype=w.dtype)
        d[i[sel]] = vals[sel]
        diags[int(kk)] = d
    return Diagonals(period, diags, fold)


@dataclass
class Plan:
    """Everything the vendor evaluates; :meth:`digest` commits to it (weights included)."""

    name: str
    version: str
    packing: InputPacking
    stages: list[Stage]
    n_outputs: int
    final_activation: str
    notes: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """Rescales needed (every linear or square stage consumes one level)."""
        return sum(1 for s in self.stages if not isinstance(s, ReduceStage))

    @property
    def period(self) -> int:
        """Elements each image needs in a ciphertext."""
        p = self.packing.length
        for s in self.stages:
            if isinstance(s, LinearStage):
                p = max(p, s.period)
        return p

    def forward_clear(self, vectors: np.ndarray) -> np.ndarray:
        """Run the plan in clear on packed vectors ``[N, packing.length]`` -> ``[N, n_outputs]``."""
        x: np.ndarray = np.asarray(vectors, dtype=np.float64)
        for s in self.stages:
            if isinstance(s, LinearStage):
                n = s.weight.shape[1]
                x = x[:, :n] @ s.weight.T + s.bias
            elif isinstance(s, ReduceStage):
                t = x.sum(axis=1, keepdims=True)
                x = (t + np.conj(t)).real + s.bias
            else:
                x = x * x
        return np.real(x[:, : self.n_outputs]).astype(np.float64)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.name}\0{self.version}\0{self.n_outputs}\0{self.final_activation}".encode())
        h.update(repr(self.packing.to_json()).encode())
        for s in self.stages:
            h.update(s.name.encode())
            if isinstance(s, LinearStage):
                h.update(np.ascontiguousarray(s.weight, dtype="<c16").tobytes())
                h.update(np.ascontiguousarray(s.bias, dtype="<c16").tobytes())
            elif isinstance(s, ReduceStage):
                h.update(f"{s.width}:{s.bias!r}".encode())
        return h.hexdigest()
