"""The demo-size model (shipped demo-lesion, or its architecture with random weights) end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from secure_infer import HospitalSession, PlanSpec, VendorModel
from tests.support.modelzoo import demo_architecture

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "secure_infer" / "models" / "demo-lesion" / "manifest.yaml"

MANIFEST = """name: demo-arch
version: '0'
manufacturer: tests
model_name: demo architecture, random weights
intended_use: tests only
input: {shape: [1, 64, 64], range: [0.0, 1.0]}
outputs:
- {name: lesion, index: 0, activation: sigmoid, threshold: 0.5,
   finding: {scheme: SCT, value: '52988006', meaning: Lesion}}
onnx: model.onnx
"""


def test_demo_size_encrypted_inference(tmp_path: Path) -> None:
    if SHIPPED.exists():
        manifest = SHIPPED
    else:
        onnx.save(demo_architecture(3), tmp_path / "model.onnx")
        (tmp_path / "manifest.yaml").write_text(MANIFEST)
        manifest = tmp_path / "manifest.yaml"
    vm = VendorModel.load(manifest)
    spec = PlanSpec.from_json(vm.spec.to_json())
    assert spec.poly_modulus_degree == 8192 and spec.depth == 4
    assert spec.packing.kind == "im2col"
    hs = HospitalSession.create(spec, tmp_path / "keys")
    ctx = vm.load_context(hs.public_context_bytes())
    x = np.random.default_rng(5).uniform(0.2, 0.8, size=(2, 1, 64, 64))
    cts = hs.encrypt(x)
    outs = vm.evaluate(ctx, cts)
    assert (sum(map(len, cts)) + sum(map(len, outs))) / 2 < 2e6  # bytes per image
    got = hs.predict_proba(outs, 2)
    sess = ort.InferenceSession(str(manifest.parent / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    np.testing.assert_allclose(got, ref, atol=2e-4)
    # Galois keys exist for exactly the plan's rotation steps (0 = conjugation), no others
    assert ctx.galois_keys.size() == len(spec.galois_steps)
    logits = vm.plan.forward_clear(vm.plan.packing.pack(x))
    np.testing.assert_allclose(hs.decrypt(outs, 2), logits,
                               atol=1e-3 * max(1.0, float(np.abs(logits).max())))
