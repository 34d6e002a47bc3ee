"""Choosing SPU's ring and fraction bits from the model's activation ranges on sample inputs.

SPU encodes a real ``v`` as the ring integer ``round(v * 2**f)``. A product of two encodings
carries ``2f`` fraction bits until it is truncated, so every multiply-accumulate (a conv or dense
output, before truncation) must satisfy ``|v| * 2**(2f) < 2**(k-2)`` in a ring of ``k`` bits
(one bit for the sign, one for Cheetah's truncation). Too few fraction bits, on the other hand,
cost precision (resolution ``2**-f`` per value, accumulated through the layers).

:func:`choose_fixed_point` runs the program in the clear on the samples with an interpreter of
its jaxpr that records the largest magnitude of *every* intermediate value (sub-computations such
as softmax or sigmoid included), adds a safety margin for unseen images, and picks:

- FM64 with as many fraction bits as the range allows, capped at 18 (SPU's tested default for
  FM64: its exp/reciprocal approximations are tuned for it), if that leaves at least 14;
- else FM128 with up to 26 fraction bits (SPU's FM128 default), never fewer than 14.

The report gives the range, the headroom left, and the *expected error*: the same program run
in the clear with every input and intermediate value rounded to the chosen grid, compared with
the exact run (it models encoding and truncation; SPU's approximations of exp/sigmoid/division
add to it, which :func:`secure_infer.twopc.simulate.run_simulated` measures on request).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure_infer.errors import CompileError
from secure_infer.twopc.program import FixedPoint, Program

__all__ = ["FixedPointReport", "activation_range", "choose_fixed_point"]

_SUB_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_FM64_MAX_F, _FM128_MAX_F, _MIN_F = 18, 26, 14


@dataclass(frozen=True)
class FixedPointReport:
    """What the choice rests on, and the error it is expected to cause."""

    fixed_point: FixedPoint
    samples: int
    max_abs_value: float  # largest |intermediate value| on the samples
    margin_bits: int  # headroom reserved for unseen inputs (factor 2**margin_bits)
    headroom_bits: float  # bits left below the ring's limit at the largest value
    resolution: float  # 2**-fraction_bits
    expected_error: float  # max |output - output on the fixed-point grid| on the samples
    simulated_error: float | None = None  # max |output - SPU Cheetah simulator| if measured

    def lines(self) -> list[str]:
        fp = self.fixed_point
        out = [
            f"fixed point: {fp.field}, {fp.fraction_bits} fraction bits "
            f"(resolution {self.resolution:.2e})",
            f"largest |value| on {self.samples} sample(s): {self.max_abs_value:.4g} "
            f"(margin x{2 ** self.margin_bits}, {self.headroom_bits:.1f} bits of headroom left)",
            f"expected error from encoding and truncation: {self.expected_error:.2e}",
        ]
        if self.simulated_error is not None:
            out.append(f"measured under the Cheetah simulator: {self.simulated_error:.2e}")
        return out


def _is_float(v: Any) -> bool:
    return hasattr(v, "dtype") and np.issubdtype(np.dtype(v.dtype), np.floating)


def _eval_jaxpr(jaxpr: Any, consts: list[Any], args: list[Any], peak: list[float],
                grid: float | None) -> list[Any]:
    """Evaluate a jaxpr, recording the peak magnitude (and rounding to ``grid`` if given)."""
    import jax.numpy as jnp
    from jax import core

    def q(v: Any) -> Any:
        if _is_float(v):
            peak[0] = max(peak[0], float(jnp.max(jnp.abs(v))) if np.size(v) else 0.0)
            if grid is not None:
                return jnp.round(v / grid) * grid
        return v

    env: dict[Any, Any] = {}

    def read(a: Any) -> Any:
        return a.val if isinstance(a, core.Literal) else env[a]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = q(val)
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = q(val)
    for eqn in jaxpr.eqns:
        invals = [read(a) for a in eqn.invars]
        sub = next((eqn.params[p] for p in _SUB_JAXPR_PARAMS if p in eqn.params), None)
        if sub is not None and hasattr(sub, "jaxpr") and eqn.primitive.name in (
                "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call_jaxpr",
                "custom_vjp_call", "remat", "checkpoint"):
            outs = _eval_jaxpr(sub.jaxpr, list(sub.consts), invals, peak, grid)
        else:
            res = eqn.primitive.bind(*invals, **eqn.params)
            outs = list(res) if eqn.primitive.multiple_results else [res]
        for var, val in zip(eqn.outvars, outs, strict=True):
            env[var] = q(val)
    return [read(a) for a in jaxpr.outvars]


def _run(program: Program, wargs: list[np.ndarray], x: np.ndarray,
         grid: float | None) -> tuple[list[np.ndarray], float]:
    import jax

    closed = jax.make_jaxpr(program.fn)(x, *wargs)
    peak = [0.0]
    outs = _eval_jaxpr(closed.jaxpr, list(closed.consts), [x, *wargs], peak, grid)
    return [np.asarray(o, dtype=np.float64) for o in outs], peak[0]


def activation_range(program: Program, weights: Mapping[str, np.ndarray],
                     samples: Iterable[np.ndarray]) -> tuple[float, int]:
    """Largest |intermediate value| over the samples, and how many samples were run."""
    from secure_infer.twopc.translate import weight_args

    wargs = weight_args(program, weights)
    peak, n = 0.0, 0
    for s in samples:
        x = np.asarray(s, dtype=np.float32).reshape(program.input.shape)
        _, p = _run(program, wargs, x, None)
        peak, n = max(peak, p), n + 1
    if n == 0:
        raise CompileError("choosing the fixed point needs at least one sample input")
    return peak, n


def _max_fraction_bits(ring: int, peak: float, margin_bits: int) -> int:
    magnitude = math.log2(max(peak, 1.0)) + margin_bits
    return math.floor((ring - 2 - magnitude) / 2)


def choose_fixed_point(program: Program, weights: Mapping[str, np.ndarray],
                       samples: Iterable[np.ndarray], margin_bits: int = 4,
                       simulate: int = 0) -> tuple[FixedPoint, FixedPointReport]:
    """Pick field and fraction bits for ``program`` from its ranges on ``samples``.

    ``simulate`` > 0 also runs that many samples under SPU's two-party Cheetah simulator and
    reports the measured error (slow: seconds to minutes per image).
    """
    from secure_infer.twopc.translate import weight_args

    images = [np.asarray(s, dtype=np.float32).reshape(program.input.shape) for s in samples]
    peak, n = activation_range(program, weights, images)
    f64 = _max_fraction_bits(64, peak, margin_bits)
    if f64 >= _MIN_F:
        fp = FixedPoint("FM64", min(f64, _FM64_MAX_F))
        ring = 64
    else:
        f128 = _max_fraction_bits(128, peak, margin_bits)
        if f128 < _MIN_F:
            raise CompileError(f"activations reach {peak:.3g}: too large for a 128-bit ring")
        fp = FixedPoint("FM128", min(f128, _FM128_MAX_F))
        ring = 128
    grid = 2.0 ** -fp.fraction_bits
    wargs = weight_args(program, weights)
    err = 0.0
    for x in images:
        exact, _ = _run(program, wargs, x, None)
        fixed, _ = _run(program, wargs, x, grid)
        err = max(err, max(float(np.abs(a - b).max()) for a, b in zip(exact, fixed, strict=True)))
    headroom = ring - 2 - 2 * fp.fraction_bits - math.log2(max(peak, 1.0))
    simulated = None
    if simulate > 0:
        from secure_infer.twopc.simulate import run_simulated

        simulated = 0.0
        for x in images[:simulate]:
            exact, _ = _run(program, wargs, x, None)
            got = run_simulated(program, weights, x, fp)
            simulated = max(simulated, max(float(np.abs(a - b).max())
                                           for a, b in zip(exact, got, strict=True)))
    report = FixedPointReport(fp, n, peak, margin_bits, headroom, grid, err, simulated)
    return fp, report
