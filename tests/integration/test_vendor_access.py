"""Versions side by side, per-hospital access, quotas, rate limit and CRL against the real
vendor process (``python -m secure_infer.vendor serve``) over mutual TLS; encrypted results
checked against onnxruntime for each version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from secure_infer.chain import verify_chain
from secure_infer.hospital.client import VendorError, VendorUnavailableError
from secure_infer.vendor import certs
from secure_infer.wire import H_CONTEXT, H_JOB, new_job_token
from tests.integration.test_vendor_link import (
    TOL,
    Pki,
    VendorProcess,
    client_for,
    inputs,
    make_pki,
    onnx_reference,
    raw_client,
)
from tests.secure_infer.test_vendor_registry import versioned

pytestmark = pytest.mark.slow


@dataclass
class Env:
    vendor: VendorProcess
    pki: Pki
    v1: Path
    v2: Path
    other: Path
    extra: dict[str, certs.CertPair]
    ca_dir: Path
    crl: Path
    keys: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("vendor-access")
    pki = make_pki(root)
    ca_dir = root / "ca"
    extra = {cn: certs.issue_client_cert(ca_dir, root / "tls", cn)
             for cn in ("hospital-c", "hospital-d", "hospital-e")}
    crl = root / "ca.crl"
    certs.revoke_certificates(ca_dir, crl, (extra["hospital-c"].cert,))
    v1 = versioned(root / "models", "tiny", "0.1.0", seed=1)
    v2 = versioned(root / "models", "tiny", "0.2.0", seed=2)
    other = versioned(root / "models", "other", "1.0", seed=3)
    vp = VendorProcess(root / "srv", pki, [v1, v2, other])
    cfg = yaml.safe_load(vp.config.read_text())
    cfg["tls"]["crl"] = str(crl)
    cfg["access"] = {
        "hospitals": {
            "hospital-a": {"models": ["tiny"]},
            "hospital-b": {"models": ["other@1.0"], "requests_per_minute": 3},
            "hospital-c": {},
            "hospital-e": {"models": ["other"], "max_contexts": 1},
        }
    }  # hospital-d: valid certificate, not enrolled
    vp.config.write_text(yaml.safe_dump(cfg))
    vp.start()
    try:
        yield Env(vp, pki, v1, v2, other, extra, ca_dir, crl, root / "keys")
    finally:
        vp.stop()


def _error(resp: object) -> tuple[int, str, str]:
    r = resp  # httpx.Response
    body = r.json()  # type: ignore[attr-defined]
    return r.status_code, body["error"], body["detail"]  # type: ignore[attr-defined]


def test_two_versions_side_by_side_bare_name_gets_the_current(env: Env) -> None:
    x = inputs(2, 8, seed=4)
    with client_for(env.vendor, env.pki.hospital_a, env.keys / "a") as c:
        listed = {(m["name"], m["version"], m["current"]) for m in c.models()}
        current = c.infer("tiny", x)
        pinned = c.infer("tiny@0.1.0", x)
    assert listed == {("tiny", "0.1.0", False), ("tiny", "0.2.0", True)}  # 'other' not permitted
    assert current.model_version == "0.2.0" and pinned.model_version == "0.1.0"
    for res, manifest in ((current, env.v2), (pinned, env.v1)):
        ref = onnx_reference(manifest, x.reshape(2, 1, 8, 8))
        assert np.max(np.abs(res.probabilities - ref)) <= TOL
    # the versions differ (other weights): a result did not come from the wrong one
    assert np.max(np.abs(current.probabilities - pinned.probabilities)) > 10 * TOL
    chain = env.vendor.state_dir / "chain.jsonl"
    assert verify_chain(chain) >= 2
    versions = {json.loads(line)["job"]: json.loads(line)["model_version"]
                for line in chain.read_text().splitlines()}
    assert versions[current.job] == "0.2.0" and versions[pinned.job] == "0.1.0"
    with raw_client(env.vendor, env.pki.hospital_a) as rc:
        status, code, detail = _error(rc.get("/v1/models/tiny@9.9/manifest"))
        assert (status, code) == (404, "version_not_found") and "0.1.0, 0.2.0" in detail
        status, code, _ = _error(rc.get("/v1/models/tiny@@/manifest"))
        assert (status, code) == (400, "bad_model_reference")


def test_each_refusal_is_403_with_a_reason(env: Env) -> None:
    cases = [
        (env.pki.hospital_b, "/v1/models/tiny/manifest", "model_not_permitted"),
        (env.pki.hospital_b, "/v1/models/other@2.0/manifest", "version_not_found"),
        (env.pki.hospital_a, "/v1/models/other/manifest", "model_not_permitted"),
        (env.extra["hospital-d"], "/v1/models/tiny/manifest", "not_enrolled"),
        (env.extra["hospital-c"], "/v1/health", "certificate_revoked"),
    ]
    for pair, path, want in cases:
        with raw_client(env.vendor, pair) as rc:
            status, code, detail = _error(rc.get(path))
        assert code == want and status in (403, 404) and detail, (path, want, code)
    with raw_client(env.vendor, env.pki.hospital_b) as rc:
        assert [m["name"] for m in rc.get("/v1/models").json()["models"]] == ["other"]


def test_requests_beyond_the_rate_get_429_with_retry_after(env: Env) -> None:
    headers = {H_CONTEXT: "0" * 64, "Content-Type": "application/octet-stream"}
    with raw_client(env.vendor, env.pki.hospital_b) as rc:
        codes = []
        for _ in range(4):
            r = rc.post("/v1/models/other/infer", content=b"junk",
                        headers={**headers, H_JOB: new_job_token()})
            codes.append(r.status_code)
        assert codes[:3] == [400, 400, 400], codes  # counted, then refused for their body
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1 and "3 requests per minute" in r.json()["detail"]
    with raw_client(env.vendor, env.pki.hospital_a) as rc:  # another hospital is not affected
        assert rc.get("/v1/models/tiny/manifest").status_code == 200
    # the hospital client retries a 429 like a 503 (Retry-After capped by its max backoff)
    with client_for(env.vendor, env.pki.hospital_b, env.keys / "b", max_attempts=2,
                    initial_backoff=0.05, max_backoff=0.1) as c, pytest.raises(
            VendorUnavailableError, match="after 2 attempts: 429 rate_limited"):
        c.ensure_context("other")


def test_stored_context_quota(env: Env) -> None:
    pair = env.extra["hospital-e"]
    with client_for(env.vendor, pair, env.keys / "e1") as c:
        c.ensure_context("other")
        c.ensure_context("other")  # already stored: no new context, no refusal
    with client_for(env.vendor, pair, env.keys / "e2") as c, pytest.raises(VendorError) as info:
        c.ensure_context("other")  # another key pair: a second context
    assert info.value.http_status == 403 and info.value.code == "context_quota"


def test_revocation_takes_effect_without_a_restart_and_metrics_name_no_hospital(
    env: Env,
) -> None:
    with raw_client(env.vendor, env.pki.hospital_a) as rc:
        assert rc.get("/v1/health").status_code == 200
        certs.revoke_certificates(env.ca_dir, env.crl, (env.pki.hospital_a.cert,))
        status, code, _ = _error(rc.get("/v1/health"))
        assert (status, code) == (403, "certificate_revoked")
    with raw_client(env.vendor, env.pki.hospital_b) as rc:
        scrape = rc.get("/metrics").text
    for name in ("hospital-a", "hospital-b", "hospital-c", "hospital-d"):
        assert name not in scrape
    lines = [ln for ln in scrape.splitlines() if not ln.startswith("#")]
    for reason in ("certificate_revoked", "model_not_permitted", "not_enrolled",
                   "rate_limited", "context_quota"):
        assert any("blindread_vendor_access_refused_total" in ln and f'reason="{reason}"' in ln
                   for ln in lines), reason
    ok = [ln for ln in lines if ln.startswith("blindread_vendor_model_requests_total")
          and 'outcome="ok"' in ln]
    assert {('version="0.1.0"' in ln, 'version="0.2.0"' in ln) for ln in ok} >= {
        (True, False), (False, True)}
    assert any(ln.startswith("blindread_vendor_model_bytes_total") for ln in lines)
    assert any(ln.startswith("blindread_vendor_model_errors_total") and 'code="bad_request"'
               in ln for ln in lines) or any('code="malformed' in ln for ln in lines)
