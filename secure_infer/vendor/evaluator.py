"""Evaluate a :class:`~secure_infer.plan.Plan` on CKKS ciphertexts with low-level SEAL.

Linear stages use the hybrid generalized-diagonal method with baby-step giant-step
(Halevi-Shoup): ``y = sum_g rot_g( sum_b rot_{-g}(d_{g+b}) * rot_b(x) )``, then ``log2`` folding
rotations when the matrix is wider than tall. Only nonzero diagonals are multiplied, so the
im2col-packed first convolution costs a few plaintext multiplies. Weights are encoded once, at the
level where they are used, with scale equal to the prime their rescale removes, so the ciphertext
scale stays put. Rescaling is lazy (see :meth:`PlanEvaluator._prepare`), so rotations act on
high-scale ciphertexts and add no visible noise. Galois keys are needed only for
:attr:`PlanEvaluator.galois_steps` (step 0 = complex conjugation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from secure_infer.params import CkksParams
from secure_infer.plan import LinearStage, Plan, ReduceStage, diagonals

__all__ = ["PlanEvaluator", "slot_layout"]


def slot_layout(values: np.ndarray, period: int, elements: int, images: int) -> np.ndarray:
    """Tile a length-``period`` vector over ``elements`` and repeat it for interleaved images."""
    return np.repeat(np.tile(values, elements // period), images)


def _best_split(keys: list[int], baby_cost: float = 2.0) -> int:
    """Baby-step size minimizing rotations. Baby steps rotate the stage input, giant steps the
    products; on a freshly rescaled input a rotation's key-switching noise is not negligible, so
    there ``baby_cost`` makes baby steps expensive; ties go to fewer baby steps."""
    best, best_cost = 1, None
    b = 1
    top = max(keys) + 1
    while b <= 2 * top:
        babies = {k % b for k in keys}
        giants = {k - k % b for k in keys}
        cost = baby_cost * len(babies - {0}) + 2 * len(giants - {0}) + 0.01 * len(babies)
        if best_cost is None or cost < best_cost:
            best, best_cost = b, cost
        b *= 2
    return best


def _values(v: np.ndarray) -> list[float] | list[complex]:
    if np.iscomplexobj(v) and np.any(v.imag):
        return [complex(z) for z in v]
    return [float(z) for z in np.real(v)]


@dataclass
class _Reduce:
    folds: list[int]
    bias: seal.Plaintext | None


@dataclass
class _Linear:
    babies: list[int]
    giants: list[tuple[int, list[tuple[int, seal.Plaintext]]]]
    folds: list[int]
    bias: seal.Plaintext | None


class PlanEvaluator:
    """Vendor-side evaluator; holds the encoded weights (never leaves the vendor)."""

    def __init__(self, plan: Plan, params: CkksParams, context: seal.SEALContext) -> None:
        self.plan = plan
        self.params = params
        self.context = context
        self.encoder = seal.CKKSEncoder(context)
        self.evaluator = seal.Evaluator(context)
        slots = self.encoder.slot_count()
        self.images = slots // plan.period
        if self.images < 1:
            raise ValueError("plan does not fit the slots")
        self.elements = slots // self.images
        self.input_scale = float(2.0**params.scale_bits)
        self.steps: set[int] = set()
        self.stages: list[_Linear | _Reduce | None] = []
        self._prepare()

    @property
    def galois_steps(self) -> list[int]:
        return sorted(self.steps)

    def _prepare(self) -> None:
        """Encode every plaintext at the level and scale it will meet (mirrors :meth:`run`).

        Rescaling is lazy: a ciphertext is rescaled only right before a ciphertext-ciphertext
        multiplication and at the end. Every rotation therefore acts on a ciphertext whose scale
        still includes a whole prime (~2^60 instead of ~2^30), which makes the key-switching
        rounding noise negligible; eager rescaling lost ~4 bits of precision to it.
        """
        cd = self.context.first_context_data()
        scale = self.input_scale
        pending = 0

        def primes() -> list[float]:
            return [float(m.value()) for m in cd.parms().coeff_modulus()]

        for stage in self.plan.stages:
            if isinstance(stage, ReduceStage):
                folds = []
                f = 1
                while f < stage.width:
                    folds.append(f)
                    self.steps.add(f * self.images)
                    f *= 2
                self.steps.add(0)  # complex conjugation
                bias = None
                if stage.bias:
                    bias = seal.Plaintext()
                    self.encoder.encode(stage.bias, cd.parms_id(), scale, bias)
                self.stages.append(_Reduce(folds, bias))
                continue
            if isinstance(stage, LinearStage):
                w_scale = primes()[-(pending + 1)]
                lin = self._encode_linear(stage, cd.parms_id(), w_scale, pending > 0)
                scale = scale * w_scale
                pending += 1
                if stage.bias.any():
                    b = np.zeros(stage.out_dim, dtype=stage.bias.dtype)
                    b[: stage.bias.shape[0]] = stage.bias
                    pt = seal.Plaintext()
                    self.encoder.encode(
                        _values(slot_layout(b, stage.out_dim, self.elements, self.images)),
                        cd.parms_id(), scale, pt,
                    )
                    lin.bias = pt
                self.stages.append(lin)
                continue
            for _ in range(pending):
                scale = scale / primes()[-1]
                cd = cd.next_context_data()
            pending = 1
            scale = scale * scale
            self.stages.append(None)
        for _ in range(pending):
            scale = scale / primes()[-1]
            cd = cd.next_context_data()
        self.output_scale = scale

    def _encode_linear(
        self, stage: LinearStage, parms_id: list[int], q: float, high_scale: bool
    ) -> _Linear:
        d = diagonals(stage)
        keys = sorted(d.diags)
        split = _best_split(keys, 2.0 if high_scale else 10.0)
        babies = sorted({k % split for k in keys})
        giants: dict[int, list[tuple[int, seal.Plaintext]]] = {}
        for k in keys:
            b = k % split
            g = k - b
            v = np.roll(d.diags[k], g)  # v[i] = diag[(i - g) mod P]
            pt = seal.Plaintext()
            self.encoder.encode(
                _values(slot_layout(v, d.period, self.elements, self.images)), parms_id, q, pt
            )
            giants.setdefault(g, []).append((b, pt))
        for b in babies:
            if b:
                self.steps.add(b * self.images)
        for g in giants:
            if g:
                self.steps.add(g * self.images)
        for f in d.fold_steps:
            self.steps.add(f * self.images)
        return _Linear(babies, sorted(giants.items()), list(d.fold_steps), None)

    def run(
        self, ct: seal.Ciphertext, relin: seal.RelinKeys, galois: seal.GaloisKeys
    ) -> seal.Ciphertext:
        """Evaluate the plan; the result is mod-switched to the last level."""
        ev = self.evaluator
        x = ct
        pending = 0
        for lin in self.stages:
            if isinstance(lin, _Reduce):
                for f in lin.folds:
                    r = seal.Ciphertext()
                    ev.rotate_vector(x, f * self.images, galois, r)
                    ev.add_inplace(x, r)
                c = seal.Ciphertext()
                ev.complex_conjugate(x, galois, c)
                ev.add_inplace(x, c)
                if lin.bias is not None:
                    ev.add_plain_inplace(x, lin.bias)
                continue
            if lin is None:
                for _ in range(pending):
                    ev.rescale_to_next_inplace(x)
                y = seal.Ciphertext()
                ev.square(x, y)
                ev.relinearize_inplace(y, relin)
                x, pending = y, 1
                continue
            rots = {0: x}
            for b in lin.babies:
                if b:
                    r = seal.Ciphertext()
                    ev.rotate_vector(x, b * self.images, galois, r)
                    rots[b] = r
            acc: seal.Ciphertext | None = None
            for g, terms in lin.giants:
                inner: seal.Ciphertext | None = None
                for b, pt in terms:
                    t = seal.Ciphertext()
                    ev.multiply_plain(rots[b], pt, t)
                    if inner is None:
                        inner = t
                    else:
                        ev.add_inplace(inner, t)
                assert inner is not None
                if g:
                    ev.rotate_vector_inplace(inner, g * self.images, galois)
                if acc is None:
                    acc = inner
                else:
                    ev.add_inplace(acc, inner)
            assert acc is not None
            for f in lin.folds:
                r = seal.Ciphertext()
                ev.rotate_vector(acc, f * self.images, galois, r)
                ev.add_inplace(acc, r)
            if lin.bias is not None:
                ev.add_plain_inplace(acc, lin.bias)
            x, pending = acc, pending + 1
            del rots
        for _ in range(pending):
            ev.rescale_to_next_inplace(x)
        last = self.context.last_parms_id()
        if x.parms_id() != last:
            ev.mod_switch_to_inplace(x, last)
        return x
