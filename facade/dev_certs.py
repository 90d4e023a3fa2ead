"""`ledger dev-certs`: a development CA with a server and a client certificate, for running every edge
(gRPC, the JSON gateway, the ops port) with TLS and mTLS locally or in infra/docker-compose.yml.

Writes into the output directory (private keys mode 0600):
    ca.crt, ca.key           the CA: set LEDGER_AUTH__TLS_CLIENT_CA_FILE to ca.crt (mTLS), clients trust it
    server.crt, server.key   LEDGER_AUTH__TLS_CERT_FILE / _TLS_KEY_FILE; valid for every --host (DNS or IP)
    client.crt, client.key   a client certificate signed by the CA (Prometheus, health checks, test clients)

Development only: the CA key sits next to the certificates. Production certificates come from the
deployment's own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEV_CERT_FILES", "HOSTS_DEFAULT", "DevCertificates", "write_dev_certs"]

HOSTS_DEFAULT = ("localhost", "127.0.0.1", "::1")
HOSTS_MAX = 64
VALIDITY_DAYS_MAX = 3650
DEV_CERT_FILES = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")


@dataclass(frozen=True, slots=True)
class DevCertificates:
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert_file(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert_file(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client.key"


def _subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _certificate(  # noqa: PLR0913  Keyword-only: the certificate's fields.
    *,
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None,
    days: int,
    usage: x509.ObjectIdentifier | None,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_key, issuer_name = issuer if issuer is not None else (key, subject)
    now = datetime.datetime.now(datetime.UTC)
    is_ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # Tolerates small clock differences.
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def _write(path: Path, data: bytes, *, private: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    descriptor = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def write_dev_certs(
    directory: Path, *, hosts: Sequence[str] = HOSTS_DEFAULT, days: int = 365, force: bool = False
) -> DevCertificates:
    """Writes a fresh CA, server and client certificate; refuses to overwrite unless `force`."""
    assert 1 <= days <= VALIDITY_DAYS_MAX, days
    assert 1 <= len(hosts) <= HOSTS_MAX, hosts
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in DEV_CERT_FILES if (directory / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{directory} already holds {', '.join(existing)} (use --force to replace them)")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(common_name="ledger-dev-ca", key=ca_key, issuer=None, days=days, usage=None)
    issuer = (ca_key, ca.subject)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        common_name=hosts[0],
        key=server_key,
        issuer=issuer,
        days=days,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=hosts,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(
        common_name="ledger-dev-client", key=client_key, issuer=issuer, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    for name, certificate, key in (("ca", ca, ca_key), ("server", server, server_key), ("client", client, client_key)):
        _write(directory / f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM), private=False)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write(directory / f"{name}.key", key_pem, private=True)
    written = DevCertificates(directory)
    assert all((directory / name).is_file() for name in DEV_CERT_FILES)
    return written
