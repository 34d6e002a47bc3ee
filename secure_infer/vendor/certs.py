"""A small private PKI for the vendor link: CA, server certificate, hospital client certificates.

The vendor runs the CA: it signs its server certificate and one client certificate per hospital;
the client certificate's subject CN is the hospital's identity on the vendor side (it namespaces
the hospital's stored contexts). Hospitals pin the CA certificate. Keys are ECDSA P-256 and are
written with mode 0600; certificates 0644. The equivalent openssl commands are in
docs/vendor-tls.md.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from durable_io import atomic_write

__all__ = [
    "CertPair",
    "cert_common_name",
    "cert_fingerprint",
    "create_ca",
    "issue_client_cert",
    "issue_server_cert",
    "load_ca",
    "revoke_certificates",
]

_DEFAULT_DAYS = 825


@dataclass(frozen=True)
class CertPair:
    """Paths of a written certificate and its private key."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write durably (:func:`durable_io.atomic_write`), with ``mode`` set before any byte is
    written; an existing file is kept unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite (use --force)")
    atomic_write(path, data, mode=mode)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(
    out_dir: Path, cn: str = "BlindRead vendor CA", days: int = 3650, overwrite: bool = False
) -> CertPair:
    """Create ``ca.crt`` / ``ca.key`` in ``out_dir``."""
    key = _new_key()
    name = _name(cn, "BlindRead vendor")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = CertPair(out_dir / "ca.crt", out_dir / "ca.key")
    _write(pair.key, _key_pem(key), 0o600, overwrite)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)
    return pair


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load ``ca.crt`` and ``ca.key`` from ``ca_dir``."""
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_dir / 'ca.key'}: expected an EC private key")
    return cert, key


def _issue(
    ca_dir: Path,
    cn: str,
    out_dir: Path,
    stem: str,
    server_names: tuple[str, ...] | None,
    days: int,
    overwrite: bool,
) -> CertPair:
    ca_cert, ca_key = load_ca(ca_dir)
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            _name(cn, "BlindRead vendor" if server_names is not None else "BlindRead hospital")
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names is not None:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    # Both purposes on both certificates: on the two-party (Cheetah) link each party is TLS
    # server and TLS client at once (brpc opens one channel each way), and OpenSSL checks the
    # extended key usage of each role. A hospital certificate still cannot pass for the vendor's
    # HTTPS server: it has no subjectAltName, so the hospital's hostname check refuses it.
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        critical=False,
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = CertPair(out_dir / f"{stem}.crt", out_dir / f"{stem}.key")
    _write(pair.key, _key_pem(key), 0o600, overwrite)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)
    return pair


def issue_server_cert(
    ca_dir: Path,
    out_dir: Path,
    names: tuple[str, ...] = (),
    cn: str = "blindread-vendor",
    days: int = _DEFAULT_DAYS,
    overwrite: bool = False,
) -> CertPair:
    """Issue ``server.crt`` / ``server.key``; SANs are 127.0.0.1, ::1, localhost plus ``names``."""
    all_names = tuple(dict.fromkeys(("127.0.0.1", "::1", "localhost", *names)))
    return _issue(ca_dir, cn, out_dir, "server", all_names, days, overwrite)


def issue_client_cert(
    ca_dir: Path, out_dir: Path, cn: str, days: int = _DEFAULT_DAYS, overwrite: bool = False
) -> CertPair:
    """Issue ``<cn>.crt`` / ``<cn>.key`` for a hospital; ``cn`` is its identity at the vendor."""
    if not cn or "/" in cn or cn.startswith("."):
        raise ValueError("client CN must be a non-empty name without '/' and not starting with '.'")
    return _issue(ca_dir, cn, out_dir, cn, None, days, overwrite)


def cert_fingerprint(cert_der: bytes) -> str:
    """SHA-256 fingerprint (hex) of a DER certificate."""
    return x509.load_der_x509_certificate(cert_der).fingerprint(hashes.SHA256()).hex()


def cert_common_name(cert_der: bytes) -> str:
    """Subject CN of a DER certificate ('' when absent)."""
    attrs = x509.load_der_x509_certificate(cert_der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    )
    return str(attrs[0].value) if attrs else ""


def revoke_certificates(
    ca_dir: Path, crl_path: Path, certificates: tuple[Path, ...] = (), days: int = 30
) -> int:
    """Add ``certificates`` (PEM files issued by this CA) to the CRL at ``crl_path`` (PEM),
    creating it if needed, re-signed by the CA and valid for ``days``; returns how many serials
    it lists. The vendor server re-reads the file on its next request (``tls.crl``)."""
    ca_cert, ca_key = load_ca(ca_dir)
    revoked: dict[int, x509.RevokedCertificate] = {}
    if crl_path.exists():
        old = x509.load_pem_x509_crl(crl_path.read_bytes())
        if not old.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
            raise ValueError(f"{crl_path}: not signed by this CA")
        revoked = {r.serial_number: r for r in old}
    now = _now()
    for path in certificates:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.issuer != ca_cert.subject:
            raise ValueError(f"{path}: not issued by this CA")
        if cert.serial_number not in revoked:
            revoked[cert.serial_number] = (
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now)
                .build()
            )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
    )
    for r in revoked.values():
        builder = builder.add_revoked_certificate(r)
    crl = builder.sign(ca_key, hashes.SHA256())
    crl_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return len(revoked)
