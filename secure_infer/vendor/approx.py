"""Polynomial stand-ins for non-polynomial activations (opt-in, on a declared input range).

CKKS evaluates only additions and multiplications, so ReLU/Sigmoid/Tanh/SiLU are replaced by a
degree-2 least-squares fit on Chebyshev nodes of the declared range: degree 2 costs exactly one
level (the compiler folds ``a1`` and ``a0`` into the neighbouring affine stages). Outside the
range the fit diverges quadratically, which is why the range must be declared by the vendor and
the accuracy impact is reported by ``blindread model check``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["ACTIVATIONS", "fit_quadratic"]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Relu": _relu,
    "Sigmoid": _sigmoid,
    "Tanh": np.tanh,
    "SiLU": _silu,
}


def fit_quadratic(kind: str, lo: float, hi: float, nodes: int = 64) -> tuple[float, float, float]:
    """Least-squares ``(a2, a1, a0)`` of ``a2 x^2 + a1 x + a0`` on Chebyshev nodes of [lo, hi]."""
    if not hi > lo:
        raise ValueError("approximation range must have hi > lo")
    f = ACTIVATIONS[kind]
    k = np.arange(nodes)
    x = (lo + hi) / 2 + (hi - lo) / 2 * np.cos((2 * k + 1) * np.pi / (2 * nodes))
    a2, a1, a0 = (float(v) for v in np.polyfit(x, f(x), 2))
    # Odd functions (tanh) fit with a2 ~ 1e-16: a huge completing-the-square shift would destroy
    # precision, so a negligible quadratic term is dropped (the stand-in is then linear).
    span = max(abs(lo), abs(hi))
    if abs(a2) * span * span < 1e-9 * (abs(a1) * span + abs(a0) + 1e-300):
        a2 = 0.0
    return a2, a1, a0
