"""Split mode: a model whose public prefix network runs in clear at the hospital and whose
private head runs under encryption at the vendor.

The prefix here even contains a ReLU (fine: it runs in clear); the hospital downloads it from
the vendor, checks its SHA-256 against the manifest endpoint, runs it with onnxruntime, then
encrypts the prefix's outputs. The result must equal onnxruntime on prefix + head.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from tests.integration.test_vendor_link import VendorProcess, client_for, make_pki, raw_client
from tests.support.modelzoo import build_sequential

pytestmark = pytest.mark.slow


def _package(root: Path) -> Path:
    d = root / "split"
    d.mkdir(parents=True)
    prefix = build_sequential((1, 16, 16), [("conv", 2, 4, 4, 0), ("relu",), ("flatten",)], seed=3)
    head = build_sequential((32,), [("gemm", 8), ("square",), ("gemm", 1), ("final_sigmoid",)],
                            seed=4)  # fmt: skip
    onnx.save(prefix, d / "prefix.onnx")
    onnx.save(head, d / "model.onnx")
    manifest = {
        "name": "split",
        "version": "0.1.0",
        "manufacturer": "BlindRead tests",
        "model_name": "split test model (non-clinical)",
        "intended_use": "tests only",
        "input": {"shape": [1, 16, 16], "range": [0.0, 1.0]},
        "outputs": [{"name": "lesion", "index": 0, "activation": "sigmoid",
                     "finding": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
                     "threshold": 0.5}],
        "onnx": "model.onnx",
        "prefix_onnx": "prefix.onnx",
    }
    (d / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return d / "manifest.yaml"


def _reference(pkg: Path, x: np.ndarray) -> np.ndarray:
    pre = ort.InferenceSession(str(pkg / "prefix.onnx"))
    head = ort.InferenceSession(str(pkg / "model.onnx"))
    mid = pre.run(None, {pre.get_inputs()[0].name: x.astype(np.float32)})[0]
    return np.asarray(head.run(None, {head.get_inputs()[0].name: mid})[0], dtype=np.float64)


def test_public_prefix_runs_at_the_hospital(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    manifest = _package(tmp_path / "models")
    vp = VendorProcess(tmp_path / "srv", pki, [manifest])
    vp.start()
    try:
        x = np.random.default_rng(5).uniform(0, 1, (3, 1, 16, 16))
        with client_for(vp, pki.hospital_a, tmp_path / "keys") as client:
            result = client.infer("split", x)
        expected = _reference(manifest.parent, x)
        assert np.max(np.abs(result.probabilities - expected)) <= 1e-3
        with raw_client(vp, pki.hospital_a) as c:
            body = c.get("/v1/models/split/prefix").content
            assert body == (manifest.parent / "prefix.onnx").read_bytes()
            # the private head is never served
            assert c.get("/v1/models/split/model").status_code == 404
            doc = c.get("/v1/models/split/manifest").json()
            assert doc["manifest"]["onnx"] is None and len(doc["prefix_sha256"]) == 64
        with raw_client(vp, None) as c, pytest.raises(httpx.TransportError):
            c.get("/v1/models/split/prefix")
    finally:
        vp.stop()
