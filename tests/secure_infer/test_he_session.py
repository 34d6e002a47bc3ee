"""Encrypted evaluation end to end (hospital <-> vendor objects) and every bad-input case."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tenseal as ts
import tenseal.sealapi as seal
import yaml

from secure_infer import HospitalSession, PlanSpec, VendorModel
from secure_infer._ckks import pack_sections
from secure_infer.errors import CiphertextError, ContextError, ParameterError
from secure_infer.seal_io import save_bytes
from tests.support.modelzoo import build_sequential


def write_model(tmp: Path, model: onnx.ModelProto, shape: tuple[int, ...], n_out: int,
                act: str = "none") -> Path:
    onnx.save(model, tmp / "model.onnx")
    shape = shape if len(shape) == 3 else (1, 1, *shape)
    manifest = {
        "name": "test-model", "version": "1", "manufacturer": "tests", "model_name": "t",
        "intended_use": "tests only", "input": {"shape": list(shape), "range": [0.0, 1.0]},
        "outputs": [{"name": f"o{i}", "index": i, "activation": act, "threshold": 0.5,
                     "finding": {"scheme": "DCM", "value": "111", "meaning": "x"}}
                    for i in range(n_out)],
        "onnx": "model.onnx",
    }
    (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return tmp / "manifest.yaml"


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0].reshape(len(x), -1)


CASES = [
    ((1, 8, 8), [("conv", 2, 3, 2, 1), ("square",), ("flatten",), ("gemm", 4), ("square",),
                 ("gemm", 1), ("final_sigmoid",)], "sigmoid", None),
    ((2, 6, 6), [("conv", 3, 3, 1, 0), ("bn",), ("avgpool", 2, 2, 0), ("square",), ("flatten",),
                 ("gemm", 3), ("final_softmax",)], "softmax", None),
    ((10,), [("gemm", 6), ("relu",), ("matmul", 3), ("add",)], "none", (-3.0, 3.0)),
    ((1, 6, 6), [("conv", 2, 2, 2, 0), ("pow2",), ("gap",), ("flatten",), ("gemm", 2)], "none",
     None),
]


@pytest.mark.parametrize("idx", range(len(CASES)))
def test_encrypted_matches_onnxruntime(idx: int, tmp_path: Path) -> None:
    shape, layers, act, approx = CASES[idx]
    model = build_sequential(shape, layers, seed=10 + idx)
    n_out = int(ort_run(model, np.zeros((1, *shape))).shape[1])
    vm = VendorModel.load(write_model(tmp_path, model, shape, n_out, act), approx_range=approx)
    spec = PlanSpec.from_json(vm.spec.to_json())
    hs = HospitalSession.create(spec, tmp_path / "keys")
    ctx = vm.load_context(hs.public_context_bytes())
    n = spec.images_per_ciphertext + 3  # two ciphertexts, the second partly filled
    x = np.random.default_rng(idx).uniform(0, 1, size=(n, *shape))
    cts = hs.encrypt(x)
    assert len(cts) == spec.ciphertexts_for(n) == 2
    outs = vm.evaluate(ctx, cts)
    got = hs.predict_proba(outs, n)
    clear = vm.plan.forward_clear(vm.plan.packing.pack(x))
    tol = 1e-3 * max(1.0, np.abs(clear).max())
    np.testing.assert_allclose(hs.decrypt(outs, n), clear, atol=tol)
    if approx is None:
        np.testing.assert_allclose(got, ort_run(model, x), atol=2e-3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[VendorModel, HospitalSession, Path]:
    tmp = tmp_path_factory.mktemp("pair")
    model = build_sequential((8,), [("gemm", 4), ("square",), ("gemm", 2)], seed=1)
    vm = VendorModel.load(write_model(tmp, model, (8,), 2))
    return vm, HospitalSession.create(vm.spec, tmp / "keys"), tmp


def test_secret_key_file_is_private_and_reused(
    pair: tuple[VendorModel, HospitalSession, Path],
) -> None:
    vm, hs, tmp = pair
    secret = list((tmp / "keys").glob("*.secret"))
    assert len(secret) == 1
    assert stat.S_IMODE(os.stat(secret[0]).st_mode) == 0o600
    again = HospitalSession.create(vm.spec, tmp / "keys")
    assert again.context_sha256() == hs.context_sha256()
    x = np.random.default_rng(0).uniform(0, 1, (3, 8))
    ctx = vm.load_context(hs.public_context_bytes())
    np.testing.assert_allclose(again.decrypt(vm.evaluate(ctx, hs.encrypt(x)), 3),
                               vm.plan.forward_clear(vm.plan.packing.pack(x)), atol=1e-3)


def test_outputs_rerandomized(pair: tuple[VendorModel, HospitalSession, Path]) -> None:
    vm, hs, _ = pair
    ctx = vm.load_context(hs.public_context_bytes())
    cts = hs.encrypt(np.full((1, 8), 0.5))
    a, b = vm.evaluate(ctx, cts)[0], vm.evaluate(ctx, cts)[0]
    assert a != b
    np.testing.assert_allclose(hs.decrypt([a], 1), hs.decrypt([b], 1), atol=1e-4)


def _sections(hs: HospitalSession) -> dict[str, bytes]:
    from secure_infer._ckks import unpack_sections

    return unpack_sections(hs.public_context_bytes())


def test_context_with_secret_key_refused(pair: tuple[VendorModel, HospitalSession, Path]) -> None:
    vm, hs, _ = pair
    sec = _sections(hs)
    sec["secret_key"] = save_bytes(hs._sk)
    with pytest.raises(ContextError) as exc:
        vm.load_context(pack_sections(sec))
    assert exc.value.code == "secret_key_present"
    sec = _sections(hs)
    sec["public_key"] = save_bytes(hs._sk)  # a secret key disguised as the public key
    with pytest.raises(ContextError) as exc:
        vm.load_context(pack_sections(sec))
    assert exc.value.code == "secret_key_present"
    private = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 30, 40])
    with pytest.raises(ContextError) as exc:
        vm.load_context(private.serialize(save_secret_key=True))
    assert exc.value.code == "secret_key_present"


def _parms(scheme: seal.SCHEME_TYPE, n: int, bits: list[int]) -> bytes:
    p = seal.EncryptionParameters(scheme)
    p.set_poly_modulus_degree(n)
    p.set_coeff_modulus(seal.CoeffModulus.Create(n, bits))
    if scheme == seal.SCHEME_TYPE.BFV:
        p.set_plain_modulus(seal.PlainModulus.Batching(n, 20))
    return save_bytes(p)


@pytest.mark.parametrize(
    ("parms", "code"),
    [
        ((seal.SCHEME_TYPE.BFV, 8192, [43, 43, 44, 44, 44]), "wrong_scheme"),
        ((seal.SCHEME_TYPE.CKKS, 8192, [60, 50, 50, 60]), "weak_parameters"),
        ((seal.SCHEME_TYPE.CKKS, 4096, [40, 29, 40]), "parameter_mismatch"),
    ],
)
def test_context_parameter_checks(
    pair: tuple[VendorModel, HospitalSession, Path], parms: tuple[seal.SCHEME_TYPE, int, list[int]],
    code: str,
) -> None:
    vm, hs, _ = pair
    sec = _sections(hs)
    sec["parms"] = _parms(*parms)
    with pytest.raises(ContextError) as exc:
        vm.load_context(pack_sections(sec))
    assert exc.value.code == code


def test_malformed_contexts(pair: tuple[VendorModel, HospitalSession, Path]) -> None:
    vm, hs, _ = pair
    good = hs.public_context_bytes()
    for bad in (b"", b"garbage" * 100, good[: len(good) // 2]):
        with pytest.raises(ContextError) as exc:
            vm.load_context(bad)
        assert exc.value.code == "malformed_context"
    sec = _sections(hs)
    sec["galois_keys"] = sec["galois_keys"][:-100]
    with pytest.raises(ContextError) as exc:
        vm.load_context(pack_sections(sec))
    assert exc.value.code == "malformed_context"


def test_missing_galois_step_is_mismatch(tmp_path: Path) -> None:
    model = build_sequential((8,), [("gemm", 4), ("square",), ("gemm", 2)], seed=1)
    vm = VendorModel.load(write_model(tmp_path, model, (8,), 2))
    d = vm.spec.to_json()
    d["galois_steps"] = [s for s in vm.spec.galois_steps][:-1]
    hs = HospitalSession.create(PlanSpec.from_json(d), tmp_path / "keys")
    with pytest.raises(ContextError) as exc:
        vm.load_context(hs.public_context_bytes())
    assert exc.value.code == "parameter_mismatch"


def test_ciphertext_checks(pair: tuple[VendorModel, HospitalSession, Path]) -> None:
    vm, hs, tmp = pair
    ctx = vm.load_context(hs.public_context_bytes())
    ct = hs.encrypt(np.full((1, 8), 0.25))[0]

    def code(inputs: list[bytes]) -> str:
        with pytest.raises(CiphertextError) as exc:
            vm.evaluate(ctx, inputs)
        return exc.value.code

    assert code([]) == "wrong_count"
    assert code([ct] * (vm.spec.max_ciphertexts + 1)) == "wrong_count"
    assert code([ct[: len(ct) // 2]]) == "malformed_ciphertext"
    assert code([b"xx"]) == "malformed_ciphertext"
    tampered = bytearray(ct)
    for i in range(200, 260):
        tampered[i] ^= 0xFF
    assert code([bytes(tampered)]) == "malformed_ciphertext"
    other = HospitalSession.create(vm.spec, tmp / "other-keys")
    assert code([other.encrypt(np.full((1, 8), 0.25))[0]]) == "wrong_context"
    with pytest.raises(CiphertextError) as exc:
        hs.decrypt(vm.evaluate(ctx, [ct]), vm.spec.images_per_ciphertext + 1)
    assert exc.value.code == "wrong_count"


def test_spec_roundtrip_and_weak_spec_refused(
    pair: tuple[VendorModel, HospitalSession, Path],
) -> None:
    vm, _, _ = pair
    d = vm.spec.to_json()
    assert PlanSpec.from_json(d) == vm.spec
    assert "weight" not in repr(d)
    weak = dict(d, params={"poly_modulus_degree": 4096, "coeff_modulus_bits": [60, 60],
                           "scale_bits": 40})
    with pytest.raises(ParameterError):
        PlanSpec.from_json(weak)
    with pytest.raises(ParameterError):
        PlanSpec.from_json({"format": 1})


def test_out_of_range_input_refused(pair: tuple[VendorModel, HospitalSession, Path]) -> None:
    from secure_infer.errors import InferenceError

    _, hs, _ = pair
    with pytest.raises(InferenceError) as exc:
        hs.encrypt(np.full((1, 8), 3.0))
    assert exc.value.code == "input_out_of_range"
    with pytest.raises(InferenceError):
        hs.encrypt(np.full((1, 8), np.nan))


def test_public_prefix_network(tmp_path: Path) -> None:
    """The hospital runs the public prefix in clear; only the private head is encrypted."""
    prefix = build_sequential((1, 6, 6), [("conv", 2, 2, 2, 0), ("square",)], seed=21)
    head = build_sequential((2, 3, 3), [("flatten",), ("gemm", 4), ("square",), ("gemm", 1),
                                        ("final_sigmoid",)], seed=22)
    onnx.save(prefix, tmp_path / "prefix.onnx")
    path = write_model(tmp_path, head, (1, 6, 6), 1, "sigmoid")
    doc = yaml.safe_load(path.read_text())
    doc["prefix_onnx"] = "prefix.onnx"
    path.write_text(yaml.safe_dump(doc))
    vm = VendorModel.load(path)
    hs = HospitalSession.create(PlanSpec.from_json(vm.spec.to_json()), tmp_path / "keys")
    ctx = vm.load_context(hs.public_context_bytes())
    x = np.random.default_rng(3).uniform(0, 1, size=(3, 1, 6, 6))
    features = ort_run(prefix, x).reshape(3, 2, 3, 3)  # hospital side, in clear
    got = hs.predict_proba(vm.evaluate(ctx, hs.encrypt(features)), 3)
    np.testing.assert_allclose(got, ort_run(head, features), atol=1e-4)
