"""The public description of a compiled plan, shared by both parties.

The vendor builds a :class:`PlanSpec` when it compiles a model (see
:func:`secure_infer.vendor.model.build_spec`) and serves it as JSON beside the public manifest;
the hospital parses it with :meth:`PlanSpec.from_json` (which refuses weak or inconsistent
parameters) and generates its keys for it. It holds no weights.

"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from secure_infer.errors import ParameterError
from secure_infer.packing import InputPacking
from secure_infer.params import CkksParams, check_security

__all__ = ["MAX_CIPHERTEXTS", "PlanSpec"]

_SPEC_FORMAT = 1
MAX_CIPHERTEXTS = 64
"""Default bound on the ciphertexts of one request."""


@dataclass(frozen=True)
class PlanSpec:
    """Public description of a compiled plan; contains no weights."""

    model: str
    version: str
    params: CkksParams
    galois_steps: tuple[int, ...]
    packing: InputPacking
    images_per_ciphertext: int
    elements_per_image: int
    n_outputs: int
    activations: tuple[str, ...]
    plan_sha256: str
    depth: int
    max_ciphertexts: int = MAX_CIPHERTEXTS
    notes: tuple[str, ...] = field(default=())
    input_range: tuple[float, float] = (0.0, 1.0)

    @property
    def poly_modulus_degree(self) -> int:
        return self.params.poly_modulus_degree

    @property
    def coeff_modulus_bits(self) -> tuple[int, ...]:
        return self.params.coeff_modulus_bits

    @property
    def scale_bits(self) -> int:
        return self.params.scale_bits

    def ciphertexts_for(self, n_images: int) -> int:
        """How many input ciphertexts ``n_images`` images need."""
        return max(1, math.ceil(n_images / self.images_per_ciphertext))

    def to_json(self) -> dict[str, object]:
        return {
            "format": _SPEC_FORMAT,
            "model": self.model,
            "version": self.version,
            "params": self.params.to_json(),
            "galois_steps": list(self.galois_steps),
            "packing": self.packing.to_json(),
            "images_per_ciphertext": self.images_per_ciphertext,
            "elements_per_image": self.elements_per_image,
            "n_outputs": self.n_outputs,
            "activations": list(self.activations),
            "plan_sha256": self.plan_sha256,
            "depth": self.depth,
            "max_ciphertexts": self.max_ciphertexts,
            "notes": list(self.notes),
            "input_range": list(self.input_range),
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> PlanSpec:
        """Parse and validate (raises :class:`ParameterError` on weak or inconsistent specs)."""
        try:
            if d.get("format") != _SPEC_FORMAT:
                raise ValueError(f"unsupported plan spec format {d.get('format')!r}")
            params = CkksParams.from_json(d["params"])  # type: ignore[arg-type]
            steps = d["galois_steps"]
            acts = d["activations"]
            notes = d.get("notes", [])
            rng = d.get("input_range", [0.0, 1.0])
            assert isinstance(steps, list) and isinstance(acts, list) and isinstance(notes, list)
            assert isinstance(rng, list | tuple) and len(rng) == 2 and rng[0] < rng[1]
            spec = cls(
                model=str(d["model"]),
                version=str(d["version"]),
                params=params,
                galois_steps=tuple(int(s) for s in steps),
                packing=InputPacking.from_json(d["packing"]),  # type: ignore[arg-type]
                images_per_ciphertext=int(d["images_per_ciphertext"]),  # type: ignore[call-overload]
                elements_per_image=int(d["elements_per_image"]),  # type: ignore[call-overload]
                n_outputs=int(d["n_outputs"]),  # type: ignore[call-overload]
                activations=tuple(str(a) for a in acts),
                plan_sha256=str(d["plan_sha256"]),
                depth=int(d["depth"]),  # type: ignore[call-overload]
                max_ciphertexts=int(d.get("max_ciphertexts", MAX_CIPHERTEXTS)),  # type: ignore[call-overload]
                notes=tuple(str(n) for n in notes),
                input_range=(float(rng[0]), float(rng[1])),
            )
        except ParameterError:
            raise
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise ParameterError(f"invalid plan spec: {exc!r}") from None
        check_security(spec.params.poly_modulus_degree, spec.params.coeff_modulus_bits)
        slots = spec.params.slots
        if (
            spec.images_per_ciphertext < 1
            or spec.images_per_ciphertext * spec.elements_per_image != slots
            or spec.packing.length > spec.elements_per_image
            or spec.depth != spec.params.depth
            or not 1 <= spec.n_outputs <= spec.elements_per_image
            or any(not 0 <= s < slots for s in spec.galois_steps)
        ):
            raise ParameterError("invalid plan spec: inconsistent layout or parameters")
        return spec

