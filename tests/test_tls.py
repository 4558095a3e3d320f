"""mTLS over real gRPC: the caller is the client certificate's subject CN.

A throw-away CA made with ``cryptography`` signs the server certificate and the client
certificates; the ``[[callers]]`` table (no ``*`` entry) names two callers.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.client import TLSFiles
from apcv_verify.config import ConfigError, TlsSection
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.service.certificates import ServerCertificates
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from .conftest import (
    REPO,
    ServerProcess,
    open_channel,
    reason,
    start_server,
    stop_server,
    write_config,
)

DAY = datetime.timedelta(days=1)
#: A ``[server]`` of :func:`serve_tls` that ends every connection within two seconds, so that
#: a test sees the clients' next handshake.
SHORT_CONNECTIONS = "max_connection_age_seconds = 1\nmax_connection_age_grace_seconds = 1"


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    """A certificate authority for one test: ES256 keys, short validity."""

    def __init__(self, name: str = "apcv test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def credentials(self, client: Issued | None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=self.pem)
        return grpc.ssl_channel_credentials(
            root_certificates=self.pem,
            private_key=client.key_pem,
            certificate_chain=client.cert_pem,
        )


CALLERS = """
[[callers]]
id = "his-1"

[[callers]]
id = "edge-reader"
uses = ["dmp"]

[[callers]]
id = "ward-7"
readers = ["ward-7-*"]

[[callers]]
id = "ward-8"
readers = ["ward-8-*"]
"""


@dataclass
class MtlsServer:
    server: ServerProcess
    ca: CertificateAuthority

    def verify(
        self, client: Issued | None, presentation: bytes, reader_id: str = "desk-1"
    ) -> verifier_pb2.Verdict:
        # Each call a new request (a resend would get the answer kept for it).
        scan = verifier_pb2.Scan(request_id=f"t-{uuid.uuid4().hex}", qr_text=qr_text(presentation))
        scan.reader.reader_id = reader_id
        with open_channel(self.server.address, self.ca.credentials(client)) as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            return stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10).verdict


def serve_tls(
    pki: DemoPKI,
    tmp_path: Path,
    ca: CertificateAuthority,
    *,
    client_auth: bool = True,
    server: str = "",
    tls: str = "",
    callers: str = CALLERS,
) -> ServerProcess:
    """``apcv-verify serve`` with mTLS (or TLS alone) whose files are in ``tmp_path``
    (server.pem, server.key, clients-ca.pem); ``server``, ``tls``: more lines of its
    ``[server]`` and ``[tls]`` tables; ``callers`` its callers table."""
    server_cert = ca.issue("verifier.apcv.example", server=True)
    (tmp_path / "server.pem").write_bytes(server_cert.cert_pem)
    (tmp_path / "server.key").write_bytes(server_cert.key_pem)
    (tmp_path / "clients-ca.pem").write_bytes(ca.pem)
    tables = f'[server]\n{server}\n[tls]\n{tls}\nserver_cert = "server.pem"\n'
    tables += 'server_key = "server.key"\n'
    if client_auth:
        tables += 'client_ca = "clients-ca.pem"\n'
    else:
        tables += "require_client_auth = false\n"
    return start_server(
        pki.directory,
        tmp_path / "tls.log",
        "--allow-test-identities",
        "--config",
        str(write_config(tmp_path / "tls.toml", tables + callers)),
        credentials=ca.credentials(ca.issue("his-1") if client_auth else None),
    )


@pytest.fixture
def mtls(pki: DemoPKI, tmp_path: Path) -> Iterator[MtlsServer]:
    ca = CertificateAuthority()
    running = serve_tls(pki, tmp_path, ca)
    yield MtlsServer(running, ca)
    stop_server(running)


def test_a_known_caller_is_served(mtls: MtlsServer, pki: DemoPKI) -> None:
    response = mtls.verify(mtls.ca.issue("his-1"), pki.present("alice"))
    assert (response.decision, reason(response)) == (verifier_pb2.DECISION_ACCEPTED, "OK")
    assert response.person.HasField("identity") and response.person.HasField("amo")


def test_a_caller_without_the_use_gets_purpose_not_allowed(mtls: MtlsServer, pki: DemoPKI) -> None:
    edge = mtls.ca.issue("edge-reader")
    refused = mtls.verify(edge, pki.present("alice", use="care"))
    assert (refused.decision, reason(refused)) == (
        verifier_pb2.DECISION_REJECTED,
        "PURPOSE_NOT_ALLOWED",
    )
    assert not refused.HasField("person")
    allowed = mtls.verify(edge, pki.present("alice", use="dmp"))
    assert reason(allowed) == "OK"
    assert not allowed.person.HasField("amo")  # dmp discloses INS and traits only


def test_an_unknown_caller_is_permission_denied(mtls: MtlsServer, pki: DemoPKI) -> None:
    with pytest.raises(grpc.RpcError) as denied:
        mtls.verify(mtls.ca.issue("stranger"), pki.present("alice"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "caller 'stranger' is not in the callers table" in (denied.value.details() or "")
    told = [
        json.loads(line) for line in mtls.server.logs().splitlines() if "caller_refused" in line
    ]
    assert [(e["caller"], e["reason"], e["method"]) for e in told] == [
        ("stranger", "CALLER_NOT_ALLOWED", "Verify")
    ]


def test_a_caller_cannot_present_as_another_callers_reader(mtls: MtlsServer, pki: DemoPKI) -> None:
    """A presentation accepted at ward 7's reader, sent again by ward 8's caller under that
    reader's id: without the binding it would be an accepted duplicate; with it the call is
    refused and ward 7's reader still gets its duplicate."""
    presentation = pki.present("alice")
    ward_7, ward_8 = mtls.ca.issue("ward-7"), mtls.ca.issue("ward-8")
    assert reason(mtls.verify(ward_7, presentation, "ward-7-bed-1")) == "OK"
    with pytest.raises(grpc.RpcError) as denied:
        mtls.verify(ward_8, presentation, "ward-7-bed-1")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not one of caller 'ward-8''s readers" in (denied.value.details() or "")
    again = mtls.verify(ward_7, presentation, "ward-7-bed-1")
    assert (reason(again), again.duplicate) == ("OK", True)
    assert reason(mtls.verify(ward_8, presentation, "ward-8-bed-1")) == "REPLAYED"


def test_one_entry_binds_each_certificate_to_its_own_readers(pki: DemoPKI, tmp_path: Path) -> None:
    """A fleet of readers, one certificate each, under one ``*`` entry whose readers name
    the caller: each may send its own reader ids only, and a CN ending in ``*`` is no
    prefix."""
    ca = CertificateAuthority()
    callers = '[[callers]]\nid = "his-1"\n\n[[callers]]\nid = "*"\n'
    callers += 'readers = ["{caller}", "{caller}/*"]\n'
    running = serve_tls(pki, tmp_path, ca, callers=callers)
    try:
        fleet = MtlsServer(running, ca)
        desk_a, desk_b, starred = ca.issue("desk-a"), ca.issue("desk-b"), ca.issue("desk*")
        presentation = pki.present("alice")
        assert reason(fleet.verify(desk_a, presentation, "desk-a/1")) == "OK"
        for client, reader_id in ((desk_b, "desk-a/1"), (desk_b, "desk-ab"), (starred, "desk-a")):
            with pytest.raises(grpc.RpcError) as denied:
                fleet.verify(client, presentation, reader_id)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "s readers (callers.readers)" in (denied.value.details() or "")
        again = fleet.verify(desk_a, presentation, "desk-a/1")
        assert (reason(again), again.duplicate) == ("OK", True)
        assert reason(fleet.verify(desk_b, presentation, "desk-b")) == "REPLAYED"
        assert reason(fleet.verify(starred, pki.present("alice"), "desk*")) == "OK"
    finally:
        stop_server(running)


def test_no_client_certificate_no_connection(mtls: MtlsServer, pki: DemoPKI) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        mtls.verify(None, pki.present("alice"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_no_connection(mtls: MtlsServer, pki: DemoPKI) -> None:
    other = CertificateAuthority("another CA")
    with pytest.raises(grpc.RpcError) as refused:
        mtls.verify(other.issue("his-1"), pki.present("alice"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_a_tls_server(mtls: MtlsServer, pki: DemoPKI) -> None:
    scan = verifier_pb2.Scan(request_id="p", qr_text=qr_text(pki.present("alice")))
    scan.reader.reader_id = "desk-1"
    request = verifier_pb2.VerifyRequest(scan=scan)
    with (
        grpc.insecure_channel(mtls.server.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        verifier_pb2_grpc.VerifierServiceStub(channel).Verify(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_without_client_certificates_makes_every_caller_anonymous(
    pki: DemoPKI, tmp_path: Path
) -> None:
    ca = CertificateAuthority()
    running = serve_tls(pki, tmp_path, ca, client_auth=False)
    try:
        server = MtlsServer(running, ca)
        # Even a certificate the CA signed names nobody: without client_ca none is verified.
        for client in (None, ca.issue("his-1")):
            with pytest.raises(grpc.RpcError) as denied:
                server.verify(client, pki.present("alice"))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "caller 'anonymous'" in (denied.value.details() or "")
    finally:
        stop_server(running)


def test_a_known_caller_without_the_scanned_at_right_is_permission_denied(
    mtls: MtlsServer, pki: DemoPKI
) -> None:
    """Only callers the policy allows may date a scan in the past."""
    request = verifier_pb2.VerifyRequest(
        scan=verifier_pb2.Scan(request_id="t-2", qr_text=qr_text(pki.present("alice")))
    )
    request.scan.reader.reader_id = "desk-1"
    request.scan.scanned_at.GetCurrentTime()
    client = mtls.ca.issue("his-1")
    with (
        open_channel(mtls.server.address, mtls.ca.credentials(client)) as channel,
        pytest.raises(grpc.RpcError) as denied,
    ):
        verifier_pb2_grpc.VerifierServiceStub(channel).Verify(request, timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole at once, as a renewal tool does (Kubernetes swaps a Secret's
    files in one rename)."""
    path.with_suffix(".new").write_bytes(data)
    os.replace(path.with_suffix(".new"), path)


@dataclass
class ClientFiles:
    """A client's TLS files in ``directory`` (ca.pem, client.pem, client.key), renewed in
    place as an agent on the reader's machine would."""

    directory: Path

    def write(self, server_ca: CertificateAuthority, client: Issued) -> None:
        replace_file(self.directory / "ca.pem", server_ca.pem)
        replace_file(self.directory / "client.key", client.key_pem)
        replace_file(self.directory / "client.pem", client.cert_pem)

    def tls(self) -> TLSFiles:
        files = self.directory
        return TLSFiles(ca=files / "ca.pem", cert=files / "client.pem", key=files / "client.key")


def rotate_client_ca(
    tmp_path: Path, client_files: ClientFiles, server_ca: CertificateAuthority
) -> None:
    """The server of :func:`serve_tls` in ``tmp_path`` admits only the clients of a new CA
    from now on (its next handshakes), and the client's files are renewed by that CA."""
    clients_ca = CertificateAuthority("renewed clients CA")
    replace_file(tmp_path / "clients-ca.pem", clients_ca.pem)
    client_files.write(server_ca, clients_ca.issue("his-1"))


def test_renewed_certificates_are_served_without_a_restart(
    mtls: MtlsServer, pki: DemoPKI, tmp_path: Path
) -> None:
    """A server certificate renewed on disk (here by another CA, as when the issuing CA
    rotates) is presented to the next connections; a client CA bundle extended on disk admits
    the new CA's clients. The process is the same one throughout."""
    renewing_ca, new_clients_ca = CertificateAuthority("renewing CA"), CertificateAuthority("B")
    client = mtls.ca.issue("his-1")
    assert reason(mtls.verify(client, pki.present("alice"))) == "OK"
    renewed = renewing_ca.issue("verifier.apcv.example", server=True)
    replace_file(tmp_path / "server.key", renewed.key_pem)  # the key first: half a renewal
    replace_file(tmp_path / "server.pem", renewed.cert_pem)
    replace_file(tmp_path / "clients-ca.pem", mtls.ca.pem + new_clients_ca.pem)
    trusting_the_new_ca = MtlsServer(mtls.server, renewing_ca)
    assert reason(trusting_the_new_ca.verify(client, pki.present("alice"))) == "OK"
    with pytest.raises(grpc.RpcError) as old:
        mtls.verify(client, pki.present("alice"))  # the old CA no longer names the server
    assert old.value.code() == grpc.StatusCode.UNAVAILABLE
    newcomer = new_clients_ca.issue("his-1")
    assert reason(trusting_the_new_ca.verify(newcomer, pki.present("alice"))) == "OK"
    assert mtls.server.process.poll() is None
    assert "tls_certificate_reloaded" in mtls.server.logs()


def test_a_half_written_renewal_keeps_the_certificate_in_use(tmp_path: Path) -> None:
    """The certificate of a new key without that key (a renewal caught halfway), a file
    missing for a moment: gRPC keeps what it has, the failure is logged, and the whole set
    is taken once the files change again."""
    ca = CertificateAuthority()
    first, second = ca.issue("verifier", server=True), ca.issue("verifier", server=True)
    (tmp_path / "server.pem").write_bytes(first.cert_pem)
    (tmp_path / "server.key").write_bytes(first.key_pem)
    tls = TlsSection(
        server_cert=str(tmp_path / "server.pem"),
        server_key=str(tmp_path / "server.key"),
        require_client_auth=False,
    )
    registry = CollectorRegistry()
    certificates = ServerCertificates(tls, registry)

    def expiry_served() -> float | None:
        return registry.get_sample_value("apcv_tls_certificate_expiry_timestamp_seconds")

    assert expiry_served() == not_after(first)
    assert certificates.fetch() is None  # unchanged
    replace_file(tmp_path / "server.pem", second.cert_pem)
    with capture_logs() as logs:
        assert certificates.fetch() is None
        assert certificates.fetch() is None  # logged once per change, not per connection
    assert [e["event"] for e in logs] == ["tls_reload_failed"]
    assert "not the key of the certificate" in logs[0]["detail"]
    assert certificates.current.chain == first.cert_pem
    (tmp_path / "server.key").unlink()
    with capture_logs() as logs:
        assert certificates.fetch() is None
    assert [e["event"] for e in logs] == ["tls_reload_failed"]
    replace_file(tmp_path / "server.key", second.key_pem)
    assert isinstance(certificates.fetch(), grpc.ServerCertificateConfiguration)
    assert certificates.current.chain == second.cert_pem
    assert expiry_served() == not_after(second)


def not_after(issued: Issued) -> float:
    return x509.load_pem_x509_certificate(issued.cert_pem).not_valid_after_utc.timestamp()


def test_tls_files_that_do_not_make_a_set_are_refused_at_start(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    mine, other = ca.issue("verifier", server=True), ca.issue("other", server=True)
    (tmp_path / "server.pem").write_bytes(mine.cert_pem)
    (tmp_path / "other.key").write_bytes(other.key_pem)
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    tls = TlsSection(
        server_cert=str(tmp_path / "server.pem"),
        server_key=str(tmp_path / "other.key"),
        require_client_auth=False,
    )
    with pytest.raises(ConfigError, match=r"tls\.server_key: not the key of the certificate"):
        ServerCertificates(tls)
    (tmp_path / "mine.key").write_bytes(mine.key_pem)
    tls = dataclasses.replace(
        tls, server_key=str(tmp_path / "mine.key"), client_ca=str(tmp_path / "ca.pem")
    )
    with pytest.raises(ConfigError, match=r"tls\.client_ca: not PEM certificates"):
        ServerCertificates(tls)


def readme_block(after: str, language: str) -> str:
    """The first ``language`` code block of the README after the line starting ``after``."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n```{language}\n", text.index(after)) + len(language) + 5
    return text[start : text.index("\n```\n", start) + 1]


def test_the_readme_certificate_recipe_and_tls_example_serve_mtls(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """The openssl commands of the README, run as written, make certificates with which the
    README's [tls] and [[callers]] examples serve mTLS: the client certificate's CN is the
    caller."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    recipe = readme_block("Test certificates for this example", "sh")
    subprocess.run(["sh", "-e"], input=recipe, text=True, cwd=tmp_path, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    config = readme_block("## TLS and mTLS", "toml") + readme_block("## Callers and", "toml")
    ca = (tmp_path / "ca.pem").read_bytes()

    def credentials(name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(tmp_path / f"{name}.key").read_bytes(),
            certificate_chain=(tmp_path / f"{name}.pem").read_bytes(),
        )

    running = start_server(
        pki.directory,
        tmp_path / "tls.log",
        "--allow-test-identities",
        "--config",
        str(write_config(tmp_path / "apcv.toml", config)),
        credentials=credentials("his"),
    )
    try:
        scan = verifier_pb2.Scan(request_id="t-1", qr_text=qr_text(pki.present()))
        scan.reader.reader_id = "desk-1"
        request = verifier_pb2.VerifyRequest(scan=scan)
        with open_channel(running.address, credentials("his")) as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            response = stub.Verify(request, timeout=10).verdict
        # A "care" presentation: accepted for his-chu-nord, REASON_PURPOSE_NOT_ALLOWED for "*".
        assert (response.decision, reason(response)) == (verifier_pb2.DECISION_ACCEPTED, "OK")
        assert response.person.HasField("amo")
    finally:
        stop_server(running)
    assert '"caller": "his-chu-nord"' in running.logs()
