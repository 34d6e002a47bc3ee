"""An in-process inference backend for pipeline tests: the real CKKS session and the real
vendor-side evaluator, without the HTTP hop (the HTTP path is covered by test_e2e and the
vendor-link tests). Counts calls so tests can prove a step is not repeated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from node.pipeline import InferenceOutcome
from secure_infer import HospitalSession, VendorModel
from secure_infer.hospital import client as client_module
from secure_infer.hospital.client import apply_activations
from secure_infer.manifest import Manifest


class LocalBackend:
    def __init__(self, manifest_path: Path, key_dir: Path, fail_times: int = 0) -> None:
        self.vendor = VendorModel.load(manifest_path)
        self.session = HospitalSession.create(self.vendor.spec, key_dir)
        self.context = self.vendor.load_context(self.session.public_context_bytes())
        self.calls = 0
        self.fail_times = fail_times

    def manifest(self, model: str) -> Manifest:
        return self.vendor.manifest.public()

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError("vendor unreachable (simulated outage)")
        frames = self.session.encrypt(np.asarray(batch, dtype=np.float64))
        outs = self.vendor.evaluate(self.context, frames)
        logits = np.asarray(self.session.decrypt(outs, len(batch)))
        probs = apply_activations(self.vendor.manifest, logits)
        return InferenceOutcome(
            probabilities=probs.tolist(),
            model_version=self.vendor.manifest.version,
            context_sha256=self.session.context_sha256(),
            request_sha256=[hashlib.sha256(b"".join(frames)).hexdigest()],
            response_sha256=[hashlib.sha256(b"".join(outs)).hexdigest()],
            bytes_up=sum(map(len, frames)),
            bytes_down=sum(map(len, outs)),
            timings={},
            parameters={"he.scheme": "CKKS"},
        )


def record_vendor_traffic(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record everything the hospital's VendorClient sends (request line, query, headers and
    body) so a test can scan it for planted identifiers."""
    sent: list[bytes] = []
    original_send = client_module.VendorClient._send

    def recording_send(self, method, path, **kw):  # type: ignore[no-untyped-def]
        sent.append(f"{method} {path} {kw.get('params')} {kw.get('headers')}".encode())
        if kw.get("content") is not None:
            sent.append(bytes(kw["content"]))
        return original_send(self, method, path, **kw)

    monkeypatch.setattr(client_module.VendorClient, "_send", recording_send)
    return sent


class CrashAfterServing:
    """Wraps a backend: the first ``crashes`` calls are served by the vendor (the request is
    evaluated and its hashes kept in ``served``), then raise as if the node died before it
    could record the answer. Later calls are served normally and kept in ``served`` too."""

    def __init__(self, inner: LocalBackend, crashes: int = 1) -> None:
        self.inner = inner
        self.crashes = crashes
        self.served: list[InferenceOutcome] = []

    def manifest(self, model: str) -> Manifest:
        return self.inner.manifest(model)

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome:
        outcome = self.inner.infer(model, batch)
        self.served.append(outcome)
        if self.crashes > 0:
            self.crashes -= 1
            raise ConnectionResetError("node crashed after the vendor served (simulated)")
        return outcome
