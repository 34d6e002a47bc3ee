"""The two-party session API (see the secure_infer contract).

* :class:`PlanSpec` - public, JSON-serializable description of a compiled plan (no weights):
  CKKS parameters, the Galois steps, the input packing, images per ciphertext, outputs.
* :class:`VendorModel` - vendor side: compiles the ONNX model, validates uploaded public
  contexts and ciphertexts, evaluates, re-randomizes, returns only the final outputs.
* :class:`PublicContext` - a validated hospital public context (public key, relinearization
  keys, Galois keys for only the plan's steps; never a secret key).
* :class:`HospitalSession` - hospital side: secret key (0600 file), public context, encrypt,
  decrypt, final activation in clear.

Wire formats (all ours, versioned by magic):
``context = b"BRCTX1\\n" + sections``, each ``u8 name length, name, u32 length, SEAL bytes``;
``ciphertext = b"BRCT" + sha256(context) (32 bytes) + SEAL ciphertext``. The context digest in
every ciphertext lets the vendor refuse a ciphertext made for another context before SEAL even
looks at it (two contexts with identical parameters are indistinguishable to SEAL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from secure_infer.vendor.compiler import compile_onnx
from secure_infer.errors import (
    CiphertextError,
    CompileError,
    ContextError,
    InferenceError,
    ParameterError,
)
from secure_infer.vendor.evaluator import PlanEvaluator, make_context
from secure_infer.manifest import Manifest, load_manifest
from secure_infer.packing import InputPacking, slots_to_outputs, vectors_to_slots
from secure_infer.params import CkksParams, check_security, select_params
from secure_infer.plan import Plan
from secure_infer.seal_io import load_into, save_bytes

__all__ = [
    "HospitalSession",
    "PlanSpec",
    "PublicContext",
    "VendorModel",
    "build_spec",
    "estimate_headroom_bits",
]

log = logging.getLogger(__name__)

_CTX_MAGIC = b"BRCTX1\n"
_CT_MAGIC = b"BRCT"
_SECTIONS = ("parms", "public_key", "relin_keys", "galois_keys")
_SPEC_FORMAT = 1
MAX_CIPHERTEXTS = 64


# --------------------------------------------------------------------------------------------
# PlanSpec
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# wire helpers
# --------------------------------------------------------------------------------------------
def _pack_sections(sections: dict[str, bytes]) -> bytes:
    out = [_CTX_MAGIC]
    for name, blob in sections.items():
        nb = name.encode()
        out.append(struct.pack(">B", len(nb)) + nb + struct.pack(">I", len(blob)) + blob)
    return b"".join(out)


def _unpack_sections(data: bytes) -> dict[str, bytes]:
    if not data.startswith(_CTX_MAGIC):
        raise ValueError("not a BlindRead public context")
    pos = len(_CTX_MAGIC)
    sections: dict[str, bytes] = {}
    while pos < len(data):
        (ln,) = struct.unpack_from(">B", data, pos)
        name = data[pos + 1 : pos + 1 + ln].decode("ascii")
        pos += 1 + ln
        (size,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + size > len(data) or name in sections:
            raise ValueError("truncated or duplicated section")
        sections[name] = data[pos : pos + size]
        pos += size
    return sections


def _frame(ct: seal.Ciphertext, context_sha256: str) -> bytes:
    return _CT_MAGIC + bytes.fromhex(context_sha256) + save_bytes(ct)


def _unframe(
    data: bytes, context: seal.SEALContext, context_sha256: str, index: int
) -> seal.Ciphertext:
    if not isinstance(data, bytes | bytearray) or len(data) < 36 or data[:4] != _CT_MAGIC:
        raise CiphertextError(f"ciphertext {index}: not a BlindRead ciphertext",
                              code="malformed_ciphertext")
    if data[4:36].hex() != context_sha256:
        raise CiphertextError(
            f"ciphertext {index}: made for another public context", code="wrong_context"
        )
    ct = seal.Ciphertext()
    try:
        load_into(ct, bytes(data[36:]), context)
    except Exception as exc:
        text = str(exc).lower()
        code = "wrong_context" if "parms_id" in text or "not valid for" in text else \
            "malformed_ciphertext"
        raise CiphertextError(f"ciphertext {index}: cannot be loaded ({code})", code=code) from None
    if not seal.is_valid_for(ct, context):
        raise CiphertextError(f"ciphertext {index}: invalid for this context", code="wrong_context")
    return ct


def _galois_elts(context: seal.SEALContext, steps: Sequence[int]) -> list[int]:
    return list(context.key_context_data().galois_tool().get_elts_from_steps(list(steps)))


def _write_private(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically (temp file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# vendor side
# --------------------------------------------------------------------------------------------
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
        self._elts = _galois_elts(ev.context, spec.galois_steps)

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
            sections = _unpack_sections(data)
        except (ValueError, struct.error, UnicodeDecodeError):
            raise _foreign_context(data) from None
        if any("secret" in name for name in sections):
            raise ContextError("the context contains a secret key; send only the public context",
                               code="secret_key_present")
        unknown = set(sections) - set(_SECTIONS)
        missing = set(_SECTIONS) - set(sections)
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
            ct = _unframe(data, self._context, ctx.sha256, i)
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
            out.append(_frame(y, ctx.sha256))
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


# --------------------------------------------------------------------------------------------
# hospital side
# --------------------------------------------------------------------------------------------
class HospitalSession:
    """Hospital side: owns the secret key; encrypts inputs, decrypts outputs."""

    def __init__(self, spec: PlanSpec, context: seal.SEALContext, secret_key: seal.SecretKey,
                 public_bytes: bytes) -> None:
        self.spec = spec
        self._context = context
        self._sk = secret_key
        self._public = public_bytes
        self._sha = hashlib.sha256(public_bytes).hexdigest()
        self._encoder = seal.CKKSEncoder(context)
        self._encryptor = seal.Encryptor(context, secret_key)
        self._decryptor = seal.Decryptor(context, secret_key)
        self._scale = float(2.0**spec.scale_bits)

    @classmethod
    def create(cls, spec: PlanSpec, key_dir: Path | str) -> HospitalSession:
        """Load or generate the secret key for these parameters (0600 file in ``key_dir``)."""
        check_security(spec.poly_modulus_degree, spec.coeff_modulus_bits)
        context = make_context(spec.params)
        if not context.parameters_set():
            raise ParameterError(context.parameters_error_message())
        kd = Path(key_dir)
        kd.mkdir(parents=True, exist_ok=True, mode=0o700)
        fp = hashlib.sha256(json.dumps(spec.params.to_json(), sort_keys=True).encode()).hexdigest()
        sk_path = kd / f"ckks-{fp[:16]}.secret"
        steps_fp = hashlib.sha256(
            (fp + repr(sorted(spec.galois_steps))).encode()).hexdigest()[:16]
        pub_path = kd / f"ckks-{fp[:16]}-{steps_fp}.public"
        if sk_path.exists():
            sk = seal.SecretKey()
            try:
                load_into(sk, sk_path.read_bytes(), context)
            except Exception:
                raise InferenceError(f"secret key file {sk_path} is unreadable") from None
            keygen = seal.KeyGenerator(context, sk)
        else:
            keygen = seal.KeyGenerator(context)
            sk = keygen.secret_key()
            _write_private(sk_path, save_bytes(sk))
            log.info("generated a new CKKS secret key (%s)", sk_path.name)
        if pub_path.exists():
            public = pub_path.read_bytes()
        else:
            public = _make_public(context, keygen, spec)
            _write_private(pub_path, public)
        return cls(spec, context, sk, public)

    def public_context_bytes(self) -> bytes:
        return self._public

    def context_sha256(self) -> str:
        return self._sha

    def encrypt(self, x: np.ndarray) -> list[bytes]:
        """``x``: ``[N, C, H, W]`` preprocessed images -> ``ceil(N / images)`` ciphertexts."""
        arr = np.asarray(x, dtype=np.float64)
        shape = tuple(self.spec.packing.input_shape)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.shape[1:] != shape and arr.reshape(arr.shape[0], -1).shape[1] != int(np.prod(shape)):
            raise InferenceError(f"input shape {list(arr.shape)} does not match {list(shape)}")
        lo, hi = self.spec.input_range
        tol = 1e-6 * max(1.0, hi - lo)
        if arr.size and (not np.isfinite(arr).all() or arr.min() < lo - tol
                         or arr.max() > hi + tol):
            # the plan's headroom was sized for this range: outside it outputs could wrap around
            raise InferenceError(
                f"input values outside the model's declared range [{lo}, {hi}]; preprocess first",
                code="input_out_of_range",
            )
        vec = self.spec.packing.pack(arr)
        per = self.spec.images_per_ciphertext
        slots = self.spec.params.slots
        out = []
        for i in range(0, vec.shape[0], per):
            values = vectors_to_slots(vec[i : i + per], slots, per)
            pt = seal.Plaintext()
            self._encoder.encode(list(values), self._scale, pt)
            ct = seal.Ciphertext()
            self._encryptor.encrypt_symmetric(pt, ct)
            out.append(_frame(ct, self._sha))
        return out

    def decrypt(self, outputs: Sequence[bytes], n: int) -> np.ndarray:
        """Decrypt ``outputs`` for ``n`` images -> logits ``[n, n_outputs]``."""
        if len(outputs) != self.spec.ciphertexts_for(n):
            raise CiphertextError(
                f"expected {self.spec.ciphertexts_for(n)} output ciphertexts for {n} images, "
                f"got {len(outputs)}", code="wrong_count")
        per = self.spec.images_per_ciphertext
        rows = []
        for i, data in enumerate(outputs):
            ct = _unframe(data, self._context, self._sha, i)
            pt = seal.Plaintext()
            self._decryptor.decrypt(ct, pt)
            values = np.asarray(self._encoder.decode_double(pt))
            k = min(per, n - i * per)
            rows.append(slots_to_outputs(values, per, self.spec.n_outputs, k))
        return np.concatenate(rows, axis=0)

    def predict_proba(self, outputs: Sequence[bytes], n: int) -> np.ndarray:
        """Decrypt and apply each output's final activation (sigmoid/softmax/none) in clear."""
        return apply_activations(self.decrypt(outputs, n), self.spec.activations)


def apply_activations(logits: np.ndarray, activations: Sequence[str]) -> np.ndarray:
    out = np.array(logits, dtype=np.float64)
    acts = list(activations)
    sig = [i for i, a in enumerate(acts) if a == "sigmoid"]
    soft = [i for i, a in enumerate(acts) if a == "softmax"]
    if sig:
        out[:, sig] = 1.0 / (1.0 + np.exp(-out[:, sig]))
    if soft:
        z = out[:, soft] - out[:, soft].max(axis=1, keepdims=True)
        e = np.exp(z)
        out[:, soft] = e / e.sum(axis=1, keepdims=True)
    return out


def _make_public(context: seal.SEALContext, keygen: seal.KeyGenerator, spec: PlanSpec) -> bytes:
    pk, rk, gk = seal.PublicKey(), seal.RelinKeys(), seal.GaloisKeys()
    keygen.create_public_key(pk)
    keygen.create_relin_keys(rk)
    keygen.create_galois_keys(_galois_elts(context, spec.galois_steps), gk)
    parms = context.key_context_data().parms()
    return _pack_sections({
        "parms": save_bytes(parms),
        "public_key": save_bytes(pk),
        "relin_keys": save_bytes(rk),
        "galois_keys": save_bytes(gk),
    })
