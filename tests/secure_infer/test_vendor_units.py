"""Vendor link pieces that need no CKKS: framing, hash chain, certificates, config, unit file."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from node.cli import main
from node.config import ConfigError
from node.config.inference import VendorPeerSection
from secure_infer.chain import ChainError, HashChain, verify_chain
from secure_infer.framing import FramingError, decode_frames, encode_frames
from secure_infer.vendor import certs
from secure_infer.vendor._store import ContextStore, hospital_namespace
from secure_infer.vendor.config import VendorConfigError, load_vendor_config
from secure_infer.wire import BadRequestError, check_job_token, new_job_token
from tests.support.peers import require_tool

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ framing
@given(st.lists(st.binary(max_size=300), max_size=20))
@settings(max_examples=60, deadline=None)
def test_frames_roundtrip(frames: list[bytes]) -> None:
    assert decode_frames(encode_frames(frames)) == frames


@given(st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=5), st.data())
@settings(max_examples=60, deadline=None)
def test_every_truncation_is_refused(frames: list[bytes], data: st.DataObject) -> None:
    body = encode_frames(frames)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    with pytest.raises(FramingError):
        decode_frames(body[:cut])


def test_framing_errors_are_precise() -> None:
    body = encode_frames([b"abc", b"de"])
    with pytest.raises(FramingError, match="trailing"):
        decode_frames(body + b"x")
    with pytest.raises(FramingError, match="bad magic"):
        decode_frames(b"XXXX" + body[4:])
    with pytest.raises(FramingError, match="exceed the limit"):
        decode_frames(body, max_frames=1)
    assert FramingError("x").http_status == 400


def test_job_token() -> None:
    t = new_job_token()
    assert re.fullmatch(r"[0-9a-f]{32}", t) and t != new_job_token()
    for bad in (None, "", "ABC", t.upper(), t + "0", "1.2.840.10008.5.1.4"):
        with pytest.raises(BadRequestError):
            check_job_token(bad)


# ------------------------------------------------------------------ chain
_KEY = Ed25519PrivateKey.generate()


def _append(chain: HashChain, i: int) -> dict[str, object]:
    return chain.append(
        job=f"{i:032x}",
        hospital="ab" * 16,
        model="m",
        model_version="1",
        context_sha256="c" * 64,
        request_sha256=f"{i:064x}",
        response_sha256="r" * 64,
    )


def test_chain_links_and_detects_tampering(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    chain = HashChain(path, _KEY)
    first = _append(chain, 1)
    second = _append(chain, 2)
    assert second["prev_hash"] == first["entry_hash"]
    assert verify_chain(path) == 2
    # reopen continues the chain
    third = _append(HashChain(path, _KEY), 3)
    assert third["seq"] == 3 and third["prev_hash"] == second["entry_hash"]
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["response_sha256"] = "0" * 64
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ChainError, match="entry_hash"):
        verify_chain(path)
    assert main(["vendor", "verify-chain", str(path)]) == 1


def test_chain_cuts_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    chain = HashChain(path, _KEY)
    e1 = _append(chain, 1)
    with path.open("ab") as fh:
        fh.write(b'{"seq": 2, "prev_ha')  # crash mid-write
    chain2 = HashChain(path, _KEY)
    assert chain2.head == e1["entry_hash"]
    assert _append(chain2, 2)["seq"] == 2
    assert main(["vendor", "verify-chain", str(path)]) == 0


# ------------------------------------------------------------------ context store
def test_context_store_atomic_idempotent_and_namespaced(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "ctx")
    a, b = hospital_namespace("hospital-a"), hospital_namespace("hospital-b")
    sha, created = store.put(a, b"public context bytes")
    assert created and store.has(a, sha) and not store.has(b, sha)
    assert store.put(a, b"public context bytes") == (sha, False)
    assert store.get(a, sha) == b"public context bytes"
    assert store.get(b, sha) is None
    assert not [p for p in (tmp_path / "ctx").rglob("*") if p.name.endswith(".tmp")]
    # a damaged file is dropped, never used
    path = next((tmp_path / "ctx" / a).glob("*.ctx"))
    path.write_bytes(b"public context byteZ")
    assert store.get(a, sha) is None and not path.exists()


# ------------------------------------------------------------------ certificates
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_issue_cert_cli(tmp_path: Path) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    assert main(["vendor", "issue-cert", "ca", "--ca-dir", str(ca_dir)]) == 0
    assert main(["vendor", "issue-cert", "ca", "--ca-dir", str(ca_dir)]) == 1  # no overwrite
    assert (
        main(
            [
                "vendor",
                "issue-cert",
                "server",
                "--ca-dir",
                str(ca_dir),
                "--out",
                str(out),
                "--name",
                "vendor.example.org",
                "--name",
                "10.1.2.3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "vendor",
                "issue-cert",
                "client",
                "--ca-dir",
                str(ca_dir),
                "--out",
                str(out),
                "--cn",
                "hospital-a",
            ]
        )
        == 0
    )
    for key in (ca_dir / "ca.key", out / "server.key", out / "hospital-a.key"):
        assert _mode(key) == 0o600
    srv = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "vendor.example.org" in san.get_values_for_type(x509.DNSName)
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.1.2.3"}
    cli = x509.load_pem_x509_certificate((out / "hospital-a.crt").read_bytes())
    eku = cli.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    # both purposes on both: on the two-party link each party is TLS server and client at once
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    srv_eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(srv_eku)
    der = cli.public_bytes(serialization.Encoding.DER)
    assert certs.cert_common_name(der) == "hospital-a"
    assert len(certs.cert_fingerprint(der)) == 64
    # verified by openssl, the documented path
    openssl = shutil.which("openssl")
    if openssl:
        res = subprocess.run(
            [
                openssl,
                "verify",
                "-CAfile",
                str(ca_dir / "ca.crt"),
                str(out / "server.crt"),
                str(out / "hospital-a.crt"),
            ],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------ config
def test_vendor_example_config_loads() -> None:
    cfg = load_vendor_config(ROOT / "config" / "vendor.example.yaml")
    assert cfg.listen.port == 8443
    assert cfg.tls.client_ca.name == "ca.crt"
    assert cfg.limits.workers >= 1 and cfg.manifest_paths()


def test_vendor_config_errors_name_paths(tmp_path: Path) -> None:
    p = tmp_path / "v.yaml"
    p.write_text("listen:\n  port: 0\ntls:\n  cert: a\nlimits:\n  workers: 0\n  bogus: 1\n")
    with pytest.raises(VendorConfigError) as info:
        load_vendor_config(p)
    problems = info.value.problems
    assert "listen.port: must be >= 1, got 0" in problems
    assert "tls.key: required key is missing" in problems
    assert "limits.bogus: unknown key" in problems
    assert any(x.startswith("limits.workers: must be >= 1") for x in problems)


def test_vendor_config_relative_paths(tmp_path: Path) -> None:
    p = tmp_path / "v.yaml"
    p.write_text(
        "tls: {cert: t/s.crt, key: t/s.key, client_ca: t/ca.crt}\nmodels: [m/manifest.yaml]\n"
        "state_dir: state\n"
    )
    cfg = load_vendor_config(p)
    assert cfg.tls.cert == tmp_path / "t" / "s.crt"
    assert cfg.models == (tmp_path / "m" / "manifest.yaml",)
    assert cfg.state_dir == tmp_path / "state"
    for name in ("b", "a", "m"):
        (tmp_path / "zoo" / name).mkdir(parents=True)
        (tmp_path / "zoo" / name / "manifest.yaml").write_text("name: x\n")
    p.write_text(p.read_text() + "models_dir: zoo\n")
    found = load_vendor_config(p).manifest_paths()
    assert found == (
        tmp_path / "m" / "manifest.yaml",
        *(tmp_path / "zoo" / n / "manifest.yaml" for n in ("a", "b", "m")),
    )
    p.write_text("tls: {cert: a, key: b, client_ca: c}\n")
    with pytest.raises(VendorConfigError) as info:
        load_vendor_config(p)
    assert any("list at least one manifest.yaml" in x for x in info.value.problems)


def test_vendor_peer_section_requires_https() -> None:
    ok = VendorPeerSection(
        url="https://v:8443/", client_cert=Path("c"), client_key=Path("k"), ca=Path("ca")
    )
    assert ok.url == "https://v:8443"
    with pytest.raises(ValueError, match="https://"):
        VendorPeerSection(url="http://v", client_cert=Path("c"), client_key=Path("k"), ca=Path("a"))
    cs = ok.client_settings()
    assert (cs.url, cs.ca, cs.max_attempts) == ("https://v:8443", Path("ca"), ok.max_attempts)


def test_node_config_vendors_section(tmp_path: Path) -> None:
    from node.config import load_config

    p = tmp_path / "node.yaml"
    p.write_text(
        "vendors:\n  acme:\n    url: https://127.0.0.1:8443\n    client_cert: a.crt\n"
        "    client_key: a.key\n    ca: ca.crt\n    max_attempts: 0\n    bogus: 1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "vendors.acme.max_attempts: must be >= 1, got 0" in info.value.problems
    assert "vendors.acme.bogus: unknown key" in info.value.problems


# ------------------------------------------------------------------ systemd
def test_vendor_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    text = (ROOT / "systemd" / "blindread-vendor.service").read_text()
    for directive in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/blindread-vendor",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
        "User=blindread-vendor",
    ):
        assert directive in text, directive
    # verify with an ExecStart that exists on this machine
    unit = tmp_path / "blindread-vendor.service"
    unit.write_text(
        text.replace(
            "/usr/bin/blindread-vendor",
            f"{os.path.realpath(sys.executable)} -m secure_infer.vendor",
        )
    )
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_vendor_serve_refuses_bad_config_and_missing_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: {port: 70000}\n")
    assert main(["vendor", "serve", "--config", str(bad)]) == 2
    assert "listen.port: must be <= 65535" in capsys.readouterr().err
    missing = tmp_path / "v.yaml"
    missing.write_text(
        "tls: {cert: nope.crt, key: nope.key, client_ca: ca.crt}\nmodels: [m/manifest.yaml]\n"
        f"state_dir: {tmp_path / 'state'}\nlisten: {{port: 1}}\n"
    )
    assert main(["vendor", "serve", "--config", str(missing)]) == 2
    assert "cannot start" in capsys.readouterr().err


def test_client_gives_up_after_max_attempts_on_connection_errors(tmp_path: Path) -> None:
    import time

    from secure_infer.hospital.client import ClientSettings, VendorClient, VendorUnavailableError
    from tests.support.peers import free_port

    certs.create_ca(tmp_path / "ca")
    pair = certs.issue_client_cert(tmp_path / "ca", tmp_path / "tls", "hospital-a")
    settings = ClientSettings(
        url=f"https://127.0.0.1:{free_port()}",  # nobody listens
        client_cert=pair.cert,
        client_key=pair.key,
        ca=tmp_path / "ca" / "ca.crt",
        max_attempts=3,
        initial_backoff=0.05,
        max_backoff=0.1,
    )
    t0 = time.monotonic()
    with VendorClient(settings, tmp_path / "keys") as c, pytest.raises(VendorUnavailableError) as e:
        c.health()
    assert "after 3 attempts" in str(e.value) and "ConnectError" in str(e.value)
    assert time.monotonic() - t0 >= 0.15  # backed off 0.05 + 0.1


# ------------------------------------------------------------------ entry point without node
_BLOCK_NODE = "import sys; sys.modules['node'] = None; "


@pytest.mark.parametrize(
    "code",
    [
        "import secure_infer.vendor.cli",
        "import runpy; sys.argv = ['secure_infer.vendor', '--help']; "
        "runpy.run_module('secure_infer.vendor', run_name='__main__')",
    ],
)
def test_vendor_entry_point_runs_without_node(code: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _BLOCK_NODE + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    if "--help" in code:
        assert "serve" in res.stdout and "issue-cert" in res.stdout


def test_vendor_cli_issues_certs_without_node(tmp_path: Path) -> None:
    code = (
        _BLOCK_NODE + "from secure_infer.vendor.cli import main; "
        f"raise SystemExit(main(['issue-cert', 'ca', '--ca-dir', {str(tmp_path)!r}]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_every_secure_infer_error_descends_from_inference_error() -> None:
    import secure_infer
    from secure_infer import InferenceError

    for name in secure_infer.__all__:
        obj = getattr(secure_infer, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, InferenceError), name
    from secure_infer.framing import FramingError as Framing
    from secure_infer.vendor._pool import RemoteError
    from secure_infer.wire import (
        BadRequestError as Bad,
    )
    from secure_infer.wire import (
        ServerBusyError,
        ServerTimeoutError,
        TooLargeError,
        UnauthenticatedError,
    )

    for cls in (Framing, RemoteError, Bad, ServerBusyError, ServerTimeoutError, TooLargeError,
                UnauthenticatedError, ChainError):
        assert issubclass(cls, InferenceError), cls


def test_a_job_token_in_flight_is_busy_until_it_ends() -> None:
    """The vendor's in-flight rule on its own: a second begin() of the same hospital's token
    is ServerBusyError (503 + Retry-After) until end(); other hospitals and tokens are free."""
    from types import SimpleNamespace

    from secure_infer.vendor.server import VendorServer
    from secure_infer.wire import ServerBusyError

    srv = SimpleNamespace(_in_flight=set())
    VendorServer.begin(srv, "hospital-a", "t1")  # type: ignore[arg-type]
    with pytest.raises(ServerBusyError) as busy:
        VendorServer.begin(srv, "hospital-a", "t1")  # type: ignore[arg-type]
    assert busy.value.http_status == 503 and busy.value.retry_after >= 1
    VendorServer.begin(srv, "hospital-b", "t1")  # type: ignore[arg-type]
    VendorServer.begin(srv, "hospital-a", "t2")  # type: ignore[arg-type]
    VendorServer.end(srv, "hospital-a", "t1")  # type: ignore[arg-type]
    VendorServer.begin(srv, "hospital-a", "t1")  # type: ignore[arg-type]
