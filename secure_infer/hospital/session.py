"""The hospital's side of a CKKS session: the secret key, encryption and decryption.

* :class:`HospitalSession` - loads or generates the secret key (a 0600 file in ``key_dir``),
  builds the public context for a :class:`~secure_infer.spec.PlanSpec` (public key,
  relinearization keys, Galois keys for only the plan's rotation steps; never the secret key),
  encrypts preprocessed images and decrypts the vendor's outputs.
* :func:`apply_activations` - the plan's final activations, applied in clear after decryption.

Nothing here needs the vendor's weights or code: the spec and the wire formats
(:mod:`secure_infer._ckks`) are the whole contract.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from durable_io import atomic_write
from secure_infer._ckks import (
    frame_ciphertext,
    galois_elts,
    make_context,
    pack_sections,
    unframe_ciphertext,
)
from secure_infer.errors import CiphertextError, InferenceError, ParameterError
from secure_infer.packing import slots_to_outputs, vectors_to_slots
from secure_infer.params import check_security
from secure_infer.seal_io import load_into, save_bytes
from secure_infer.spec import PlanSpec

__all__ = ["HospitalSession", "apply_activations"]

log = logging.getLogger(__name__)


def _write_private(path: Path, data: bytes) -> None:
    """Key material: mode 0600 from the first byte, durable (temp, fsync, rename, dir fsync)."""
    atomic_write(path, data, mode=0o600)


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
            out.append(frame_ciphertext(ct, self._sha))
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
            ct = unframe_ciphertext(data, self._context, self._sha, i)
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
    """Apply each output's final activation (``sigmoid``, ``softmax`` across the softmax outputs,
    anything else identity) in clear, after decryption."""
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
    keygen.create_galois_keys(galois_elts(context, spec.galois_steps), gk)
    parms = context.key_context_data().parms()
    return pack_sections({
        "parms": save_bytes(parms),
        "public_key": save_bytes(pk),
        "relin_keys": save_bytes(rk),
        "galois_keys": save_bytes(gk),
    })
