"""CKKS parameter selection with a hard 128-bit security floor.

The HomomorphicEncryption.org standard (Albrecht et al., 2018, Table 1, ternary secret, classical
128-bit) caps the total coefficient-modulus size for each ring degree; SEAL enforces the same
table when a context is created with ``sec_level_type.tc128``. We check it here too so that weak
parameters are refused with a clear :class:`~secure_infer.errors.ParameterError` before SEAL is
ever asked, and so the vendor can refuse an uploaded context whose parameters are weaker.

The chain we build is ``[q0, q1 .. qL, special]``: ``L`` equal "scale" primes of ``scale_bits``
(one consumed by every rescale), a first prime ``q0 = scale_bits + headroom_bits`` that bounds the
magnitude of the final outputs, and a key-switching special prime at least as large as ``q0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from secure_infer.errors import ParameterError

__all__ = [
    "MAX_COEFF_BITS_128",
    "CkksParams",
    "check_security",
    "select_params",
]

#: Max total coefficient-modulus bits for 128-bit classical security (HE standard, Table 1).
MAX_COEFF_BITS_128: dict[int, int] = {
    1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881,
}

_MAX_PRIME_BITS = 60
_MIN_SCALE_BITS = 22


@dataclass(frozen=True)
class CkksParams:
    """A CKKS parameter set: ring degree, coefficient-modulus prime sizes, scale."""

    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Number of rescales the chain supports (data primes minus the first)."""
        return len(self.coeff_modulus_bits) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_modulus_bits)

    def to_json(self) -> dict[str, object]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_modulus_bits": list(self.coeff_modulus_bits),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> CkksParams:
        bits = d["coeff_modulus_bits"]
        if not isinstance(bits, list | tuple):
            raise ParameterError("coeff_modulus_bits must be a list")
        return cls(
            poly_modulus_degree=int(d["poly_modulus_degree"]),  # type: ignore[call-overload]
            coeff_modulus_bits=tuple(int(b) for b in bits),
            scale_bits=int(d["scale_bits"]),  # type: ignore[call-overload]
        )


def check_security(
    poly_modulus_degree: int, coeff_modulus_bits: tuple[int, ...] | list[int]
) -> None:
    """Raise :class:`ParameterError` unless the parameters reach 128-bit security."""
    limit = MAX_COEFF_BITS_128.get(poly_modulus_degree)
    if limit is None:
        raise ParameterError(
            f"poly_modulus_degree {poly_modulus_degree} is not one of "
            f"{sorted(MAX_COEFF_BITS_128)}"
        )
    total = sum(coeff_modulus_bits)
    if total > limit:
        raise ParameterError(
            f"coefficient modulus of {total} bits with poly_modulus_degree {poly_modulus_degree} "
            f"is below 128-bit security (max {limit} bits per the HomomorphicEncryption.org "
            "standard); use a larger poly_modulus_degree or a shallower model"
        )
    if any(b > _MAX_PRIME_BITS or b < 17 for b in coeff_modulus_bits):
        raise ParameterError(f"each prime must have 17..{_MAX_PRIME_BITS} bits")


def select_params(
    depth: int,
    min_slots: int,
    headroom_bits: int,
    min_scale_bits: int = 26,
    max_scale_bits: int = 40,
) -> CkksParams:
    """Smallest ring degree (then the largest scale up to ``max_scale_bits``) that fits.

    Parameters
    ----------
    depth:
        Number of rescales the plan performs.
    min_slots:
        Slots one packed input needs (``poly_modulus_degree // 2 >= min_slots``).
    headroom_bits:
        ``log2`` of the largest magnitude a final output may reach (plus margin); sets ``q0``.
    min_scale_bits:
        Precision floor: a smaller scale would lose the accuracy the plan needs.
    """
    if depth < 1:
        raise ParameterError("a plan needs at least one rescale")
    for n in sorted(MAX_COEFF_BITS_128):
        if n < 4096 or n // 2 < min_slots:
            continue
        budget = MAX_COEFF_BITS_128[n]
        # q0 = special = s + h ; total = (depth + 2) * s + 2 h
        s = min(max_scale_bits, math.floor((budget - 2 * headroom_bits) / (depth + 2)))
        if s + headroom_bits > _MAX_PRIME_BITS:
            s = _MAX_PRIME_BITS - headroom_bits
        if s < min_scale_bits:
            continue
        q0 = s + headroom_bits
        bits = (q0, *([s] * depth), q0)
        check_security(n, bits)
        return CkksParams(n, bits, s)
    raise ParameterError(
        f"no 128-bit secure CKKS parameters fit depth {depth} with {min_slots} slots and "
        f"{min_scale_bits}-bit scale (max poly_modulus_degree 32768); reduce the number of "
        "layers/activations or the input size"
    )
