"""Client certificates and the revocation list, signed by the project CA.

``scripts/gen-certs.sh`` makes the CA and the broker certificate with openssl; this
module issues each identity's client certificate (CN = identity name, which the broker
takes as the user name in mutual-TLS mode, so the same ACL holds) and maintains the CRL
the broker checks (``crlfile``; re-read on SIGHUP).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homewatch.errors import ProvisionError
from homewatch.secrets import write_private_file

CLIENT_DAYS = 825
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_ca(ca_crt: Path, ca_key: Path) -> CA:
    try:
        cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ProvisionError(
            f"CA file missing: {exc.filename} (run scripts/gen-certs.sh)") from None
    except ValueError as exc:
        raise ProvisionError(f"CA unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError("the CA key is not an EC key (made by scripts/gen-certs.sh?)")
    return CA(cert, key)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> tuple[list[str], list[IPAddress]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress)
           if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)]
    return san.get_values_for_type(x509.DNSName), ips


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """The certificate's DNS names and IP addresses, as text."""
    dns, ips = _sans(cert)
    return [*dns, *(str(ip) for ip in ips)]


def names_host(cert: x509.Certificate, host: str) -> bool:
    """Whether a client connecting to ``host`` finds it in the certificate (TLS clients
    match the subjectAltNames only: a DNS name exactly, an IP address as an IP entry)."""
    dns, ips = _sans(cert)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower().rstrip(".") in {n.lower() for n in dns}
    return ip in ips


def issue_client_cert(ca: CA, name: str, cert_path: Path, key_path: Path, *,
                      days: int = CLIENT_DAYS, not_before: dt.datetime | None = None,
                      ) -> x509.Certificate:
    """A client certificate for ``name`` (CN), EC P-256, clientAuth only."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Homewatch"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    write_private_file(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode(),
                       mode=0o644)
    return cert


def write_crl(ca: CA, crl_path: Path, *, revoke: x509.Certificate | None = None) -> int:
    """(Re)write the CRL, adding ``revoke``; returns how many certificates it lists.

    The CRL's nextUpdate is the CA's own expiry: an expired CRL would make the broker
    refuse every client, and this CRL is re-issued whenever something is revoked.
    """
    revoked: list[x509.RevokedCertificate] = []
    if crl_path.exists():
        old = x509.load_pem_x509_crl(crl_path.read_bytes())
        revoked = list(old)
    if revoke is not None and all(r.serial_number != revoke.serial_number for r in revoked):
        revoked.append(x509.RevokedCertificateBuilder()
                       .serial_number(revoke.serial_number)
                       .revocation_date(now()).build())
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(now() - dt.timedelta(minutes=5))
               .next_update(ca.cert.not_valid_after_utc))
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    write_private_file(crl_path, crl.public_bytes(serialization.Encoding.PEM).decode(),
                       mode=0o644)
    return len(revoked)
