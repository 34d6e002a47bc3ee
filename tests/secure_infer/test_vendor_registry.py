"""Model registry (versions side by side, checked before live, failures stay out), access
policy, rate limit and CRL, without a server process (those are in tests/integration)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from secure_infer.modelref import ModelRef, parse_model_ref
from secure_infer.vendor import certs
from secure_infer.vendor._access import AccessPolicy, HospitalRules, RateLimiter, RevocationList
from secure_infer.vendor._registry import build_registry, version_order
from secure_infer.wire import AccessDeniedError, RateLimitedError
from tests.integration.test_vendor_link import write_model_package


def versioned(root: Path, name: str, version: str, seed: int) -> Path:
    """A small MLP model package ``name`` at ``version`` (own folder per version)."""
    manifest = write_model_package(root / version, name, side=8, kernel=2, seed=seed, mlp=True)
    doc = yaml.safe_load(manifest.read_text())
    doc["version"] = version
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


# ------------------------------------------------------------------ references
def test_model_refs() -> None:
    assert parse_model_ref("demo-lesion") == ModelRef("demo-lesion")
    assert parse_model_ref("demo-lesion@1.2.0") == ModelRef("demo-lesion", "1.2.0")
    assert str(parse_model_ref("a@1")) == "a@1"
    for bad in ("", "Demo", "a@", "@1", "a@1@2", "a b", "a@1/2"):
        with pytest.raises(ValueError, match="NAME@VERSION"):
            parse_model_ref(bad)
    assert ModelRef("a").matches(ModelRef("a", "2")) and not ModelRef("a", "1").matches(
        ModelRef("a", "2"))
    assert sorted(["1.10", "1.9", "1.2.0", "1.2.0-rc1"], key=version_order) == [
        "1.2.0-rc1", "1.2.0", "1.9", "1.10"]


def test_node_route_may_pin_a_version(tmp_path: Path) -> None:
    from node.config import ConfigError, load_config

    base = (
        "vendors:\n  acme:\n    url: https://127.0.0.1:8443\n    client_cert: a.crt\n"
        "    client_key: a.key\n    ca: ca.crt\n    models: [tiny, other@2.0]\n"
        "destinations:\n  pacs: {host: 127.0.0.1, port: 104, ae_title: PACS}\n"
        "routes:\n  - name: r\n    action:\n      infer:\n        vendor: acme\n"
        "        model: MODEL\n        destinations: [pacs]\n"
    )
    p = tmp_path / "node.yaml"
    for ok in ("tiny", "tiny@0.1.0", "other@2.0"):
        p.write_text(base.replace("MODEL", ok))
        cfg = load_config(p)
        assert cfg.routes[0].action.infer is not None
        assert cfg.routes[0].action.infer.model == ok
    for bad, why in (("other@1.0", "unknown model 'other@1.0'"), ("tiny@", "NAME@VERSION"),
                     ("other", "unknown model 'other'")):
        p.write_text(base.replace("MODEL", bad))
        with pytest.raises(ConfigError) as info:
            load_config(p)
        assert any(x.startswith("routes[0].action.infer.model") and why in x
                   for x in info.value.problems), info.value.problems


# ------------------------------------------------------------------ registry
def test_two_versions_side_by_side_current_pins_and_retirement(tmp_path: Path) -> None:
    v1 = versioned(tmp_path, "tiny", "0.1.0", seed=1)
    v2 = versioned(tmp_path, "tiny", "0.2.0", seed=2)
    reg, refused = build_registry([v1, v2], encrypted_check=False)
    assert refused == [] and set(reg.models) == {"tiny@0.1.0", "tiny@0.2.0"}
    assert reg.resolve(ModelRef("tiny")).key == "tiny@0.2.0"  # highest version is current
    assert reg.resolve(ModelRef("tiny", "0.1.0")).key == "tiny@0.1.0"
    with pytest.raises(Exception, match="version '9' of model 'tiny' is not served") as info:
        reg.resolve(ModelRef("tiny", "9"))
    assert getattr(info.value, "code", "") == "version_not_found"
    assert [m["current"] for m in reg.listing()] == [False, True]
    pinned, _ = build_registry([v1, v2], pins={"tiny": "0.1.0"}, previous=reg,
                               encrypted_check=False)
    assert pinned.resolve(ModelRef("tiny")).key == "tiny@0.1.0"
    # unchanged files are not compiled again (the same object is reused)
    assert pinned.models["tiny@0.2.0"] is reg.models["tiny@0.2.0"]
    retired, _ = build_registry([v1, v2], retired=["tiny@0.2.0"], previous=pinned,
                                encrypted_check=False)
    assert set(retired.models) == {"tiny@0.1.0"} and retired.generation == 3
    # the same name@version twice is refused with a reason (the first one serves)
    copy = versioned(tmp_path / "copy", "tiny", "0.1.0", seed=5)
    dup, refused = build_registry([v1, copy], encrypted_check=False)
    assert set(dup.models) == {"tiny@0.1.0"} and dup.models["tiny@0.1.0"].manifest_path == v1
    assert [r.model for r in refused] == ["tiny@0.1.0"] and "already served" in refused[0].reason


def test_a_failing_model_stays_out_and_the_previous_build_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = versioned(tmp_path, "tiny", "0.1.0", seed=1)
    reg, _ = build_registry([v1], encrypted_check=True)  # the whole encrypted check
    served = reg.models["tiny@0.1.0"]
    # the file is replaced by a broken build (its manifest no longer fits the model)
    doc = yaml.safe_load(v1.read_text())
    doc["input"]["shape"] = [1, 4, 4]
    v1.write_text(yaml.safe_dump(doc))
    bad = versioned(tmp_path / "new", "newer", "1.0", seed=3)
    (bad.parent / "model.onnx").write_bytes(b"not onnx")
    with caplog.at_level(logging.ERROR, logger="secure_infer.vendor._registry"):
        nxt, refused = build_registry([v1, bad], previous=reg, encrypted_check=True)
    assert nxt.models["tiny@0.1.0"] is served  # old build keeps serving
    assert "newer@1.0" not in nxt.models
    by = {r.model: r for r in refused}
    assert by["tiny@0.1.0"].kept_previous and "input shape" in by["tiny@0.1.0"].reason
    assert not by["newer@1.0"].kept_previous
    lines = [r.getMessage() for r in caplog.records]
    assert any("tiny@0.1.0" in m and "previous build keeps serving" in m for m in lines)
    assert any("newer@1.0" in m and "stays out" in m for m in lines)


def test_a_model_outside_the_tolerance_is_refused(tmp_path: Path) -> None:
    v1 = versioned(tmp_path, "tiny", "0.1.0", seed=1)
    reg, refused = build_registry([v1], encrypted_check=True, tolerance=1e-12)
    assert reg.models == {} and "check failed" in refused[0].reason


# ------------------------------------------------------------------ access
def test_access_policy_refusals_have_reasons() -> None:
    policy = AccessPolicy(
        {"hospital-a": HospitalRules(("tiny",), max_contexts=1, requests_per_minute=2),
         "hospital-b": HospitalRules(("other@2.0",))},
        default=None, enforced=True,
    )
    policy.check_model("hospital-a", ModelRef("tiny", "0.1.0"))
    policy.check_model("hospital-b", ModelRef("other", "2.0"))
    cases = [
        (lambda: policy.check_model("hospital-b", ModelRef("other", "1.0")),
         "model_not_permitted"),
        (lambda: policy.check_model("hospital-a", ModelRef("other", "2.0")),
         "model_not_permitted"),
        (lambda: policy.check_model("hospital-z", ModelRef("tiny", "1")), "not_enrolled"),
        (lambda: policy.check_context_quota("hospital-a", 1), "context_quota"),
    ]
    for call, code in cases:
        with pytest.raises(AccessDeniedError) as info:
            call()
        assert info.value.code == code and info.value.http_status == 403 and str(info.value)
    policy.check_context_quota("hospital-a", 0)
    policy.check_context_quota("hospital-b", 99)  # no quota
    assert AccessPolicy().rules("anyone").permits(ModelRef("x", "1"))  # no access section


def test_rate_limiter_refills() -> None:
    rl = RateLimiter()
    rl.take("a", 2, now=0.0)
    rl.take("a", 2, now=0.0)
    with pytest.raises(RateLimitedError) as info:
        rl.take("a", 2, now=1.0)
    assert info.value.http_status == 429 and info.value.retry_after == 29
    rl.take("b", 2, now=1.0)  # buckets are per hospital
    rl.take("a", 2, now=31.0)  # one token back after 30 s
    rl.take("a", None)  # unlimited


def test_crl_revokes_and_reloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cryptography import x509

    ca_dir = tmp_path / "ca"
    certs.create_ca(ca_dir)
    a = certs.issue_client_cert(ca_dir, tmp_path / "out", "hospital-a")
    b = certs.issue_client_cert(ca_dir, tmp_path / "out", "hospital-b")
    crl = tmp_path / "ca.crl"
    assert certs.revoke_certificates(ca_dir, crl) == 0
    rl = RevocationList(crl, ca_dir / "ca.crt")

    def der(pair: certs.CertPair) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificate(pair.cert.read_bytes()).public_bytes(Encoding.DER)

    rl.check(der(a))
    assert certs.revoke_certificates(ca_dir, crl, (a.cert,)) == 1
    with pytest.raises(AccessDeniedError) as info:
        rl.check(der(a))  # picked up without a restart
    assert info.value.code == "certificate_revoked"
    rl.check(der(b))
    # a CRL signed by another CA is refused; the list in force stays
    other = tmp_path / "other-ca"
    certs.create_ca(other)
    certs.revoke_certificates(other, tmp_path / "other.crl")
    crl.write_bytes((tmp_path / "other.crl").read_bytes())
    with caplog.at_level(logging.ERROR):
        with pytest.raises(AccessDeniedError):
            rl.check(der(a))
    assert "previous list stays in force" in caplog.text
    with pytest.raises(ValueError, match="not signed by the client CA"):
        RevocationList(crl, ca_dir / "ca.crt")
