"""Optional mTLS on the gRPC port, over loopback with real certificates: a client holding a certificate
from the configured client CA gets in (and still needs a token); a client without one, or with one from
another CA, fails the TLS handshake."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.api.server import start
from facade.auth import SCOPES_ALL, issue_token
from tests.api.conftest import make_settings

Pem = tuple[bytes, bytes]
"""(private key, certificate), PEM."""


def issue(name: str, issuer: Pem | None, ca: bool = False, server: bool = False) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    signer_key, issuer_name = key, subject
    if issuer is not None:
        loaded = serialization.load_pem_private_key(issuer[0], password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signer_key, issuer_name = loaded, x509.load_pem_x509_certificate(issuer[1]).subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(signer_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


async def test_mutual_tls(tmp_path: Path) -> None:
    ca = issue("ledger-test-ca", None, ca=True)
    server_pem = issue("localhost", ca, server=True)
    client_pem = issue("payments-client", ca)
    stranger = issue("stranger", issue("other-ca", None, ca=True))
    for name, (key, certificate) in {"server": server_pem}.items():
        (tmp_path / f"{name}.key").write_bytes(key)
        (tmp_path / f"{name}.crt").write_bytes(certificate)
    (tmp_path / "ca.crt").write_bytes(ca[1])

    settings = make_settings(tmp_path)
    settings.auth.tls_cert_file = tmp_path / "server.crt"
    settings.auth.tls_key_file = tmp_path / "server.key"
    settings.auth.tls_client_ca_file = tmp_path / "ca.crt"
    running = await start(settings)
    token = (("authorization", f"Bearer {issue_token(settings.auth, 'client-a', SCOPES_ALL)}"),)
    request = pb.CreateAccountRequest(currency="USD", external_reference="a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT)
    address = f"localhost:{running.port}"
    try:
        trusted = grpc.ssl_channel_credentials(ca[1], client_pem[0], client_pem[1])
        async with grpc.aio.secure_channel(address, trusted) as channel:
            account = await rpc.LedgerStub(channel).CreateAccount(request, metadata=token)
            assert account.account_id
            with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:  # mTLS does not replace the token.
                await rpc.LedgerStub(channel).CreateAccount(request)
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED

        for credentials in (
            grpc.ssl_channel_credentials(ca[1]),  # No client certificate.
            grpc.ssl_channel_credentials(ca[1], stranger[0], stranger[1]),  # Signed by another CA.
        ):
            async with grpc.aio.secure_channel(address, credentials) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await rpc.LedgerStub(channel).CreateAccount(request, metadata=token, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(address) as channel:  # Plaintext: refused too.
            with pytest.raises(grpc.aio.AioRpcError):
                await rpc.LedgerStub(channel).CreateAccount(request, metadata=token, timeout=5)
    finally:
        await running.stop()
