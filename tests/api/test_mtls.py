"""Optional TLS/mTLS on every edge (gRPC, the JSON gateway, the ops port), over loopback with real
certificates: a client holding a certificate from the configured client CA gets in (and still needs a
token); a client without one, with one from another CA, or speaking plaintext, fails the handshake."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.auth import SCOPES_ALL, issue_token
from facade.cli import main
from facade.dev_certs import DEV_CERT_FILES, write_dev_certs
from facade.settings import AuthSettings
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


def _client_context(ca: Path, certificate: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if certificate is not None and key is not None:
        context.load_cert_chain(str(certificate), str(key))
    return context


async def _refused(url: str, context: ssl.SSLContext | None, **kwargs: Any) -> None:
    """The request does not get an HTTP answer: the TLS handshake (or the first read) fails."""
    async with httpx.AsyncClient(verify=context if context is not None else True, timeout=10) as client:
        with pytest.raises(httpx.TransportError):
            await client.request("GET" if "json" not in kwargs else "POST", url, **kwargs)


@pytest.mark.parametrize("mutual", [True, False], ids=["mtls", "tls"])
async def test_every_edge_is_behind_tls(tmp_path: Path, mutual: bool) -> None:
    """The JSON gateway and the ops port answer over TLS only, and with mTLS only to a client holding a
    certificate from the configured CA; the gateway still needs a token."""
    certificates = write_dev_certs(tmp_path / "certs")
    other = write_dev_certs(tmp_path / "other")  # Another CA, with its own client certificate.
    settings = make_settings(tmp_path, http_port=0)
    settings.auth.tls_cert_file = certificates.server_cert_file
    settings.auth.tls_key_file = certificates.server_key_file
    settings.auth.tls_client_ca_file = certificates.ca_file if mutual else None
    running = await start(settings)
    assert running.ops is not None
    token = {"Authorization": f"Bearer {issue_token(settings.auth, 'client-a', SCOPES_ALL)}"}
    gateway, ops = f"localhost:{running.http_port}", f"localhost:{running.ops.port}"
    trusted = _client_context(certificates.ca_file, certificates.client_cert_file, certificates.client_key_file)
    account = {"currency": "USD", "external_reference": "sneaky", "type": "ACCOUNT_TYPE_NO_OVERDRAFT"}
    try:
        async with httpx.AsyncClient(verify=trusted, timeout=10) as client:
            created = await client.post(
                f"https://{gateway}/v1/accounts", json={**account, "external_reference": "a"}, headers=token
            )
            assert created.status_code == 201, created.text
            assert (await client.get(f"https://{gateway}/v1/accounts")).status_code == 401  # TLS is not a token.
            assert (await client.get(f"https://{ops}/healthz")).json() == {"status": "ok"}
            assert (await client.get(f"https://{ops}/metrics")).status_code == 200
            assert (await client.get(f"https://{ops}/readyz")).status_code == 200

        for base in (gateway, ops):
            await _refused(f"http://{base}/v1/accounts", None, json=account, headers=token)  # Plaintext.
        if mutual:
            no_certificate = _client_context(certificates.ca_file)
            stranger = _client_context(certificates.ca_file, other.client_cert_file, other.client_key_file)
            for context in (no_certificate, stranger):
                await _refused(f"https://{gateway}/v1/accounts", context, json=account, headers=token)
                await _refused(f"https://{ops}/healthz", context)
        else:  # Server authentication only: any client that trusts the CA gets in (with a token).
            async with httpx.AsyncClient(verify=_client_context(certificates.ca_file), timeout=10) as client:
                assert (await client.get(f"https://{gateway}/v1/accounts", headers=token)).status_code == 200
                assert (await client.get(f"https://{ops}/healthz")).status_code == 200

        async with httpx.AsyncClient(verify=trusted, timeout=10) as client:
            listed = (await client.get(f"https://{gateway}/v1/accounts", headers=token)).json()["accounts"]
            assert [a["external_reference"] for a in listed] == ["a"], "a refused request changed nothing"
        grpc_credentials = grpc.ssl_channel_credentials(
            certificates.ca_file.read_bytes(),
            certificates.client_key_file.read_bytes(),
            certificates.client_cert_file.read_bytes(),
        )
        async with grpc.aio.secure_channel(f"localhost:{running.port}", grpc_credentials) as channel:
            metadata = (("authorization", token["Authorization"]),)
            found = await rpc.LedgerStub(channel).ListAccounts(pb.ListAccountsRequest(), metadata=metadata)
            assert [a.external_reference for a in found.accounts] == ["a"]
    finally:
        await running.stop()


def test_dev_certs_command_writes_a_working_set_and_keeps_keys_private(tmp_path: Path) -> None:
    main(["dev-certs", "--out", str(tmp_path), "--host", "ledger-1"])
    for name in DEV_CERT_FILES:
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith(".key") else 0o644), (name, oct(mode))
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ledger-1" in names.get_values_for_type(x509.DNSName)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for name in ("server.crt", "client.crt"):
        x509.load_pem_x509_certificate((tmp_path / name).read_bytes()).verify_directly_issued_by(ca)
    with pytest.raises(SystemExit, match="already holds"):
        main(["dev-certs", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    "files",
    [
        {"tls_cert_file": Path("server.crt")},
        {"tls_key_file": Path("server.key")},
        {"tls_client_ca_file": Path("ca.crt")},
    ],
)
def test_half_a_tls_configuration_is_refused(files: dict[str, Path]) -> None:
    """It would serve plaintext (or skip the client certificate) while the operator believes otherwise."""
    with pytest.raises(ValueError, match="tls_"):
        AuthSettings(**files)  # type: ignore[arg-type]
