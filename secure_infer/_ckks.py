"""CKKS context and the two wire formats both parties speak (internal to secure_infer).

``context = b"BRCTX1\\n" + sections``, each ``u8 name length, name, u32 length, SEAL bytes``;
``ciphertext = b"BRCT" + sha256(context) (32 bytes) + SEAL ciphertext``. The context digest in
every ciphertext lets the vendor refuse a ciphertext made for another context before SEAL even
looks at it (two contexts with identical parameters are indistinguishable to SEAL). The hospital
writes contexts and reads ciphertexts, the vendor the other way round, so both sides import
this one module instead of keeping two copies of the format.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import tenseal.sealapi as seal

from secure_infer.errors import CiphertextError
from secure_infer.params import CkksParams
from secure_infer.seal_io import load_into, save_bytes

__all__ = [
    "CONTEXT_SECTIONS",
    "frame_ciphertext",
    "galois_elts",
    "make_context",
    "pack_sections",
    "unframe_ciphertext",
    "unpack_sections",
]

_CTX_MAGIC = b"BRCTX1\n"
_CT_MAGIC = b"BRCT"
CONTEXT_SECTIONS = ("parms", "public_key", "relin_keys", "galois_keys")
"""The sections of a public context, in order; anything else (a secret key) is refused."""


def make_context(params: CkksParams) -> seal.SEALContext:
    """A SEAL CKKS context that enforces 128-bit security itself (``tc128``)."""
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_modulus_bits))
    )
    return seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)


def pack_sections(sections: dict[str, bytes]) -> bytes:
    """Serialize named SEAL blobs as a public context (the hospital's upload)."""
    out = [_CTX_MAGIC]
    for name, blob in sections.items():
        nb = name.encode()
        out.append(struct.pack(">B", len(nb)) + nb + struct.pack(">I", len(blob)) + blob)
    return b"".join(out)


def unpack_sections(data: bytes) -> dict[str, bytes]:
    """Split a public context into its named sections (raises ``ValueError`` if not ours)."""
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


def frame_ciphertext(ct: seal.Ciphertext, context_sha256: str) -> bytes:
    """A ciphertext bound to the public context it was made for."""
    return _CT_MAGIC + bytes.fromhex(context_sha256) + save_bytes(ct)


def unframe_ciphertext(
    data: bytes, context: seal.SEALContext, context_sha256: str, index: int
) -> seal.Ciphertext:
    """Check the framing and context binding of ciphertext ``index`` and load it."""
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


def galois_elts(context: seal.SEALContext, steps: Sequence[int]) -> list[int]:
    """Galois elements of the rotation ``steps`` (the keys a plan needs, and no others)."""
    return list(context.key_context_data().galois_tool().get_elts_from_steps(list(steps)))
