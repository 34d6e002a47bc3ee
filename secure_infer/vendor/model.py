"""The vendor's compiled model: the weights stay here.

* :class:`VendorModel` - compiles the ONNX model, chooses CKKS parameters (:func:`build_spec`),
  validates uploaded public contexts and ciphertexts, evaluates, re-randomizes, returns only the
  final outputs.
* :class:`PublicContext` - a validated hospital public context (public key, relinearization
  keys, Galois keys for only the plan's steps; never a secret key).

The public :class:`~secure_infer.spec.PlanSpec` and the wire formats
(:mod:`secure_infer._ckks`) are shared with the hospital; nothing here is.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from secure_infer._ckks import (
    CONTEXT_SECTIONS,
    frame_ciphertext,
    galois_elts,
    make_context,
    unframe_ciphertext,
    unpack_sections,
)
from secure_infer.errors import CiphertextError, CompileError, ContextError, ParameterError
from secure_infer.manifest import Manifest, load_manifest
from secure_infer.params import check_security, select_params
from secure_infer.plan import Plan
from secure_infer.seal_io import load_into
from secure_infer.spec import PlanSpec
from secure_infer.vendor.compiler import compile_onnx
from secure_infer.vendor.evaluator import PlanEvaluator

__all__ = [
    "PublicContext",
    "VendorModel",
    "build_spec",
    "estimate_headroom_bits",
]

log = logging.getLogger(__name__)


def estimate_headroom_bits(
    plan: Plan, low: float, high: float, samples: np.ndarray | None = None, seed: int = 0
) -> int:
    """Bits the first prime must hold above the scale so no final output wraps around.

    Runs the plan in clear on uniform and constant inputs over the declared range (plus
    ``samples`` if given, e.g. calibration images) and keeps an 8x safety factor.
    """
    rng = np.random.default_rng(seed)
    shape = plan.packing.input_shape
    probes = [
        rng.uniform(low, high, size=(32, *shape)),
        np.full((1, *shape), low),
        np.full((1, *shape), high),
    ]
    if samples is not None:
        probes.append(np.asarray(samples, dtype=np.float64).reshape(-1, *shape))
    peak = 1.0
    for p in probes:
        y = plan.forward_clear(plan.packing.pack(p))
        peak = max(peak, float(np.max(np.abs(y))))
    return max(6, math.ceil(math.log2(peak * 8)) + 1)


def build_spec(
    plan: Plan,
    activations: Sequence[str] | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
    samples: np.ndarray | None = None,
    min_scale_bits: int = 26,
) -> tuple[PlanSpec, PlanEvaluator]:
    """Choose parameters for ``plan``, encode its weights, return the public spec + evaluator."""
    headroom = estimate_headroom_bits(plan, input_range[0], input_range[1], samples)
    params = select_params(plan.depth, plan.period, headroom, min_scale_bits=min_scale_bits)
    context = make_context(params)
    if not context.parameters_set():
        raise ParameterError(f"SEAL refused the parameters: {context.parameters_error_message()}")
    ev = PlanEvaluator(plan, params, context)
    acts = tuple(activations) if activations else (plan.final_activation,) * plan.n_outputs
    spec = PlanSpec(
        model=plan.name,
        version=plan.version,
        params=params,
        galois_steps=tuple(ev.galois_steps),
        packing=plan.packing,
        images_per_ciphertext=ev.images,
        elements_per_image=ev.elements,
        n_outputs=plan.n_outputs,
        activations=acts,
        plan_sha256=plan.digest(),
        depth=plan.depth,
        notes=tuple(plan.notes),
        input_range=(float(input_range[0]), float(input_range[1])),
    )
    return spec, ev


@dataclass
class PublicContext:
    """A validated public context: evaluation keys only."""

    sha256: str
    public_key: seal.PublicKey
    relin_keys: seal.RelinKeys
    galois_keys: seal.GaloisKeys
    size: int


class VendorModel:
    """The vendor's compiled model: weights stay here."""

    def __init__(self, manifest: Manifest, plan: Plan, spec: PlanSpec, ev: PlanEvaluator) -> None:
        self.manifest = manifest
        self.plan = plan
        self.spec = spec
        self._ev = ev
        self._context = ev.context
        self._elts = galois_elts(ev.context, spec.galois_steps)

    @classmethod
    def load(
        cls, manifest_path: Path | str, approx_range: tuple[float, float] | None = None
    ) -> VendorModel:
        """Read the manifest and its ONNX model, compile, choose parameters."""
        mp = Path(manifest_path)
        manifest = load_manifest(mp)
        if not manifest.onnx:
            raise CompileError(f"{mp}: manifest names no onnx model file")
        plan = compile_onnx(mp.parent / manifest.onnx, manifest.name, manifest.version,
                            approx_range)
        if manifest.prefix_onnx:
            samples = _prefix_samples(mp.parent / manifest.prefix_onnx, manifest)
            lo, hi = float(samples.min()), float(samples.max())
            margin = 0.25 * max(hi - lo, 1e-6)
            return cls.from_plan(plan, manifest, (lo - margin, hi + margin), samples)
        return cls.from_plan(plan, manifest)

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        manifest: Manifest,
        input_range: tuple[float, float] | None = None,
        samples: np.ndarray | None = None,
    ) -> VendorModel:
        """Choose parameters for a compiled plan. With a public prefix network, ``input_range``
        and ``samples`` describe the prefix's outputs (the encrypted head's inputs)."""
        if samples is not None:
            if samples[0].size != int(np.prod(plan.packing.input_shape)):
                raise CompileError(
                    f"the public prefix outputs {list(samples.shape[1:])} values per image but "
                    f"the private model expects {list(plan.packing.input_shape)}"
                )
        elif tuple(plan.packing.input_shape) != tuple(manifest.input.shape):
            raise CompileError(
                f"manifest input shape {list(manifest.input.shape)} does not match the model's "
                f"{list(plan.packing.input_shape)}"
            )
        by_index = {o.index: o.activation for o in manifest.outputs}
        if max(by_index) >= plan.n_outputs:
            raise CompileError(
                f"manifest output index {max(by_index)} but the model has {plan.n_outputs} outputs"
            )
        acts = [by_index.get(i, plan.final_activation) for i in range(plan.n_outputs)]
        rng = input_range or (float(manifest.input.range[0]), float(manifest.input.range[1]))
        spec, ev = build_spec(plan, acts, rng, samples)
        log.info("compiled %s %s: depth %d, N=%d, %d Galois steps, %d image(s)/ciphertext",
                 plan.name, plan.version, plan.depth, spec.poly_modulus_degree,
                 len(spec.galois_steps), spec.images_per_ciphertext)
        return cls(manifest, plan, spec, ev)

    # -- contexts --------------------------------------------------------------------------
    def load_context(self, data: bytes) -> PublicContext:
        """Validate and load a hospital public context (raises :class:`ContextError`)."""
        sha = hashlib.sha256(data).hexdigest()
        try:
            sections = unpack_sections(data)
        except (ValueError, struct.error, UnicodeDecodeError):
            raise _foreign_context(data) from None
        if any("secret" in name for name in sections):
            raise ContextError("the context contains a secret key; send only the public context",
                               code="secret_key_present")
        unknown = set(sections) - set(CONTEXT_SECTIONS)
        missing = set(CONTEXT_SECTIONS) - set(sections)
        if unknown or missing:
            raise ContextError(
                f"context sections: missing {sorted(missing)}, unknown {sorted(unknown)}",
                code="malformed_context",
            )
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        try:
            load_into(parms, sections["parms"])
        except Exception:
            raise ContextError("unreadable encryption parameters", code="malformed_context") \
                from None
        if parms.scheme() != seal.SCHEME_TYPE.CKKS:
            raise ContextError(f"scheme {parms.scheme().name} is not CKKS", code="wrong_scheme")
        n = parms.poly_modulus_degree()
        bits = [m.bit_count() for m in parms.coeff_modulus()]
        try:
            check_security(n, bits)
        except ParameterError as exc:
            raise ContextError(str(exc), code="weak_parameters") from None
        ours = self._context.key_context_data().parms()
        if n != ours.poly_modulus_degree() or [m.value() for m in parms.coeff_modulus()] != [
            m.value() for m in ours.coeff_modulus()
        ]:
            raise ContextError(
                f"parameters (N={n}, {bits}) differ from the plan's "
                f"(N={self.spec.poly_modulus_degree}, {list(self.spec.coeff_modulus_bits)})",
                code="parameter_mismatch",
            )
        pk, rk, gk = seal.PublicKey(), seal.RelinKeys(), seal.GaloisKeys()
        for name, obj in (("public_key", pk), ("relin_keys", rk), ("galois_keys", gk)):
            try:
                load_into(obj, sections[name], self._context)
            except Exception:
                if _is_secret_key(sections[name], self._context):
                    raise ContextError(
                        f"section {name} holds a secret key; send only the public context",
                        code="secret_key_present",
                    ) from None
                raise ContextError(f"unreadable {name}", code="malformed_context") from None
            if not seal.is_valid_for(obj, self._context):
                raise ContextError(f"invalid {name}", code="malformed_context")
        missing_steps = [s for s, e in zip(self.spec.galois_steps, self._elts, strict=True)
                         if not gk.has_key(e)]
        if missing_steps:
            raise ContextError(f"Galois keys missing for rotation steps {missing_steps}",
                               code="parameter_mismatch")
        return PublicContext(sha, pk, rk, gk, len(data))

    # -- evaluation ------------------------------------------------------------------------
    def check_inputs(self, ctx: PublicContext, inputs: Sequence[bytes]) -> list[seal.Ciphertext]:
        """Validate count, framing, context binding, level and scale of the inputs."""
        if not 1 <= len(inputs) <= self.spec.max_ciphertexts:
            raise CiphertextError(
                f"expected 1..{self.spec.max_ciphertexts} ciphertexts, got {len(inputs)}",
                code="wrong_count",
            )
        out = []
        first = self._context.first_parms_id()
        for i, data in enumerate(inputs):
            ct = unframe_ciphertext(data, self._context, ctx.sha256, i)
            if ct.parms_id() != first:
                raise CiphertextError(f"ciphertext {i}: not at the plan's input level",
                                      code="wrong_context")
            if ct.size() != 2 or not ct.is_ntt_form() or not math.isclose(
                ct.scale, self._ev.input_scale, rel_tol=1e-9
            ):
                raise CiphertextError(f"ciphertext {i}: wrong size, form or scale",
                                      code="malformed_ciphertext")
            out.append(ct)
        return out

    def evaluate(self, ctx: PublicContext, inputs: Sequence[bytes]) -> list[bytes]:
        """Evaluate every input ciphertext; outputs are re-randomized and framed."""
        cts = self.check_inputs(ctx, inputs)
        enc = seal.Encryptor(self._context, ctx.public_key)
        ev = self._ev.evaluator
        out = []
        for ct in cts:
            y = self._ev.run(ct, ctx.relin_keys, ctx.galois_keys)
            zero = seal.Ciphertext()
            enc.encrypt_zero(y.parms_id(), zero)
            zero.scale = y.scale
            ev.add_inplace(y, zero)
            out.append(frame_ciphertext(y, ctx.sha256))
        return out


def _is_secret_key(blob: bytes, context: seal.SEALContext) -> bool:
    try:
        load_into(seal.SecretKey(), blob, context)
    except Exception:
        return False
    return True


def _prefix_samples(path: Path, manifest: Manifest, n: int = 64) -> np.ndarray:
    """Outputs of the public prefix network on inputs spread over the manifest's input range."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompileError(f"cannot load the public prefix network {path.name}: {exc}") from None
    lo, hi = manifest.input.range
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.uniform(lo, hi, size=(n, *manifest.input.shape)),
        np.full((1, *manifest.input.shape), lo),
        np.full((1, *manifest.input.shape), hi),
    ]).astype(np.float32)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return np.asarray(y, dtype=np.float64).reshape(len(x), -1)


def _foreign_context(data: bytes) -> ContextError:
    """Best-effort diagnosis of a context that is not ours (e.g. a serialized TenSEAL one)."""
    try:
        import tenseal as ts

        tctx = ts.context_from(data)
    except Exception:
        return ContextError("not a BlindRead public context", code="malformed_context")
    if tctx.has_secret_key():
        return ContextError("the context contains a secret key; send only the public context",
                            code="secret_key_present")
    return ContextError("a TenSEAL context is not accepted; send BlindRead's public context",
                        code="malformed_context")
