"""DICOM TLS: our SCP and SCU with certificates from a throw-away CA (mutual TLS)."""

from __future__ import annotations

import datetime as dt
import socket
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scp import DestinationSettings, SendError, StorageSender, TlsSettings, echo
from tests.support.nodeutil import node_config, running_node
from tests.support.synthetic import synthetic_ct_study


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test-ca"))
        .issuer_name(_name("test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(d / "ca", ca_key, ca)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(d / name, key, cert)


def test_mutual_tls_echo_and_store(tmp_path: Path) -> None:
    make_pki(tmp_path)
    cfg = node_config(
        tmp_path,
        scp={
            "tls": {
                "cert": str(tmp_path / "server.crt"),
                "key": str(tmp_path / "server.key"),
                "ca": str(tmp_path / "ca.crt"),
                "require_client_cert": True,
            }
        },
    )
    client = TlsSettings(tmp_path / "client.crt", tmp_path / "client.key", tmp_path / "ca.crt")
    with running_node(cfg) as svc:
        dest = DestinationSettings("BLINDREAD", "127.0.0.1", svc.port, "TLSCLIENT", client)
        assert echo(dest) == 0
        assert StorageSender().send(dest, synthetic_ct_study(2, size=16)).sent == 2
        assert len(list(svc.spool.root.rglob("*.dcm"))) == 2
        plain = DestinationSettings("BLINDREAD", "127.0.0.1", svc.port, "PLAIN")
        with pytest.raises(SendError):
            echo(plain, timeout=3)
        assert echo(dest) == 0


def test_stalled_tls_handshake_does_not_stop_accepts(tmp_path: Path) -> None:
    """A peer that connects and never says hello: the handshake runs in its own thread (issue
    #16), so other senders are served meanwhile, and the peer is dropped after the ACSE timeout."""
    make_pki(tmp_path)
    cfg = node_config(
        tmp_path,
        scp={
            "acse_timeout": 2,
            "tls": {
                "cert": str(tmp_path / "server.crt"),
                "key": str(tmp_path / "server.key"),
                "ca": str(tmp_path / "ca.crt"),
            },
        },
    )
    client = TlsSettings(tmp_path / "client.crt", tmp_path / "client.key", tmp_path / "ca.crt")
    with running_node(cfg) as svc, socket.create_connection(("127.0.0.1", svc.port)) as silent:
        time.sleep(0.2)  # the accept loop has taken the silent connection first
        dest = DestinationSettings("BLINDREAD", "127.0.0.1", svc.port, "TLSCLIENT", client)
        assert echo(dest, timeout=5) == 0
        silent.settimeout(10)
        assert silent.recv(1) == b""  # dropped, not held forever


def test_refused_tls_handshake_closes_its_socket_at_once(tmp_path: Path) -> None:
    """A peer that speaks plain DICOM to the TLS port fails the handshake: its connection is
    closed right away, not held open until the ACSE deadline (one descriptor per refusal)."""
    make_pki(tmp_path)
    cfg = node_config(
        tmp_path,
        scp={
            "acse_timeout": 30,
            "tls": {
                "cert": str(tmp_path / "server.crt"),
                "key": str(tmp_path / "server.key"),
                "ca": str(tmp_path / "ca.crt"),
            },
        },
    )
    with running_node(cfg) as svc:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", svc.port)) as plain:
                plain.sendall(b"\x01\x00" + b"\x00" * 70)  # an A-ASSOCIATE-RQ header, not TLS
                plain.settimeout(5)
                started = time.monotonic()
                try:
                    while plain.recv(4096):
                        pass  # a TLS alert may come first; then the close
                except ConnectionResetError:
                    pass
                assert time.monotonic() - started < 5  # closed now, not after 30 s
