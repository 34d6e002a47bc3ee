"""The public two-party program: what both parties compile, with no weight values in it.

A :class:`Program` is the contract between the ONNX translation (which builds it from a vendor's
model, weights removed) and the two-party runtime (which compiles it with SPU in each party's
process and runs it with the vendor's weights and the hospital's image as the two private
inputs). Keeping it a plain dataclass keeps the runtime independent of how the function was
made, and lets tests hand the runtime a function written directly in JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["FixedPoint", "Program", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one argument or result of a :class:`Program`."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Program:
    """A network's architecture as a pure function, public to both parties.

    ``fn(x, *weights)`` must be traceable by JAX (``jax.numpy`` only, static shapes) and return
    a tuple of arrays matching ``outputs``. ``weights`` lists the vendor's private tensors in
    argument order (after ``x``, the hospital's private input). ``description_sha256`` is the
    SHA-256 of the public architecture description the function was built from; the two-party
    runtime additionally hashes the compiled SPU program, and both parties compare that hash
    before any secret input is given.
    """

    fn: Callable[..., Any]
    input: TensorSpec
    weights: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description_sha256: str


@dataclass(frozen=True)
class FixedPoint:
    """SPU's ring and fixed-point fraction bits (chosen from the model's ranges on samples)."""

    field: Literal["FM64", "FM128"] = "FM64"
    fraction_bits: int = 18
