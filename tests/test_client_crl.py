"""Client certificates checked against their CA's revocation list (``tls.client_crls``).

CRLs made with ``cryptography`` by the throw-away CAs of tests/test_tls.py; the check is
tested on auth contexts as gRPC hands them to a call, then over real mTLS connections to
``apcv-verify serve``: a revoked certificate is refused on every method, a CRL renewed on
disk refuses the next call of a connection already open, an expired CRL refuses its CA's
clients as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import queue
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.client import UnauthenticatedError, UnavailableError, error_from_rpc
from apcv_verify.config import ConfigError, TlsSection, TrustSection
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.service import revocation as revocation_module
from apcv_verify.service.policy import CertificateRefused
from apcv_verify.service.revocation import NEXT_UPDATE_METRIC, ClientRevocation, read_crls
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from .conftest import open_channel, reason, stop_server
from .test_refresh import ListServer
from .test_tls import DAY, CertificateAuthority, Issued, MtlsServer, replace_file, serve_tls

HOUR = datetime.timedelta(hours=1)


def serial(issued: Issued) -> int:
    return x509.load_pem_x509_certificate(issued.cert_pem).serial_number


def crl(
    ca: CertificateAuthority,
    revoked: Iterable[Issued] = (),
    *,
    next_update: datetime.timedelta = DAY,
    extensions: Sequence[x509.ExtensionType] = (),
    encoding: serialization.Encoding = serialization.Encoding.PEM,
) -> bytes:
    """``ca``'s CRL listing ``revoked``, issued an hour ago, next update ``next_update`` from
    now (negative: already past)."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(min(now - HOUR, now + next_update - HOUR))
        .next_update(now + next_update)
    )
    for issued in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial(issued))
            .revocation_date(now - HOUR)
            .build()
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=True)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(encoding)


def auth_context(issued: Issued) -> dict[str, list[bytes]]:
    """The auth context gRPC gives a call made with ``issued`` (the properties read here)."""
    certificate = x509.load_pem_x509_certificate(issued.cert_pem)
    name = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    return {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [str(name).encode()],
        "x509_pem_cert": [issued.cert_pem],
    }


def refusal(revocation: ClientRevocation, issued: Issued) -> tuple[grpc.StatusCode, str] | None:
    try:
        revocation.caller_id(auth_context(issued))
    except CertificateRefused as refused:
        return refused.code, refused.reason
    return None


# -- reading the CRLs --------------------------------------------------------------------


def test_crls_are_read_by_issuer_from_pem_bundles_and_der() -> None:
    first, second = CertificateAuthority("first CA"), CertificateAuthority("second CA")
    one, two, three = first.issue("a"), first.issue("b"), second.issue("c")
    soon = datetime.timedelta(hours=2)
    bundle = crl(first, [one]) + crl(first, [two], next_update=soon)  # a partitioned CRL
    der = crl(second, [three], encoding=serialization.Encoding.DER)
    read = read_crls([("bundle.pem", bundle), ("second.crl", der)], first.pem + second.pem)
    by_first = read[first.cert.subject.rfc4514_string()]
    assert by_first.revoked == {serial(one), serial(two)}
    assert by_first.next_update == pytest.approx(time.time() + soon.total_seconds(), abs=60)
    assert read[second.cert.subject.rfc4514_string()].revoked == {serial(three)}


def scoped(ca: CertificateAuthority, **flags: bool) -> bytes:
    """``ca``'s CRL with an issuing distribution point of these ``flags`` (RFC 5280 §5.2.5)."""
    given = {
        "only_contains_user_certs": False,
        "only_contains_ca_certs": False,
        "indirect_crl": False,
        "only_contains_attribute_certs": False,
        **flags,
    }
    point = x509.IssuingDistributionPoint(
        full_name=None, relative_name=None, only_some_reasons=None, **given
    )
    return crl(ca, extensions=[point])


#: CRL files read_crls refuses (made from the client CA and another CA of the same name), and
#: what its error says.
MISREAD: dict[str, tuple[Callable[[CertificateAuthority, CertificateAuthority], bytes], str]] = {
    "other-ca": (lambda ca, other: crl(other), "not signed by a tls.client_ca CA"),
    "bad-pem": (lambda ca, other: b"-----BEGIN X509 CRL-----\nAA\n-----END X509 CRL-----", "PEM"),
    "certificate": (lambda ca, other: ca.pem, "not a PEM or DER CRL"),
    "bad-der": (lambda ca, other: b"\x30\x03\x02\x01\x01", "not a PEM or DER CRL"),
    "delta": (lambda ca, other: crl(ca, extensions=[x509.DeltaCRLIndicator(1)]), "delta CRL"),
    "indirect": (lambda ca, other: scoped(ca, indirect_crl=True), "indirect CRL"),
    "ca-only": (lambda ca, other: scoped(ca, only_contains_ca_certs=True), "CA certificates"),
    "attributes": (
        lambda ca, other: scoped(ca, only_contains_attribute_certs=True),
        "attribute certificates",
    ),
}


@pytest.mark.parametrize("case", MISREAD)
def test_a_crl_the_check_would_misread_is_refused(case: str) -> None:
    make, message = MISREAD[case]
    ca, other = CertificateAuthority(), CertificateAuthority("apcv test CA")  # same name
    with pytest.raises(ValueError, match=message):
        read_crls([("clients.crl", make(ca, other))], ca.pem)


def test_a_crl_of_a_ca_of_the_bundle_is_signed_by_any_of_its_keys() -> None:
    """Two CA certificates of one name (a CA that changed its key): the CRL signed by either
    is taken."""
    old, renewed = CertificateAuthority("clients CA"), CertificateAuthority("clients CA")
    read = read_crls([("clients.crl", crl(renewed))], old.pem + renewed.pem)
    assert list(read) == [renewed.cert.subject.rfc4514_string()]


# -- the check of each call ----------------------------------------------------------------


def tls_files(tmp_path: Path, ca_pem: bytes, *crls: bytes) -> TlsSection:
    (tmp_path / "clients-ca.pem").write_bytes(ca_pem)
    paths = []
    for number, content in enumerate(crls):
        paths.append(str(tmp_path / f"clients-{number}.crl"))
        Path(paths[-1]).write_bytes(content)
    return TlsSection(client_ca=str(tmp_path / "clients-ca.pem"), client_crls=tuple(paths))


def loaded(
    tls: TlsSection, registry: CollectorRegistry | None = None, **trust: Any
) -> ClientRevocation:
    """A :class:`ClientRevocation` of ``tls`` that has read its sources once, as at start."""
    revocation = ClientRevocation(tls, TrustSection(**trust), registry)
    asyncio.run(revocation.load())
    return revocation


def test_each_certificate_is_checked_against_its_issuers_crl(tmp_path: Path) -> None:
    checked, unlisted, stale = (
        CertificateAuthority("checked"),
        CertificateAuthority("b"),
        (CertificateAuthority("stale")),
    )
    good, revoked = checked.issue("his-1"), checked.issue("edge-reader")
    tls = tls_files(
        tmp_path,
        checked.pem + unlisted.pem + stale.pem,
        crl(checked, [revoked]),
        crl(stale, next_update=-HOUR),
    )
    registry = CollectorRegistry()
    revocation = loaded(tls, registry)
    assert revocation.caller_id(auth_context(good)) == "his-1"
    assert revocation.caller_id({}) == "anonymous"  # no certificate: nothing to check
    with capture_logs() as logs:
        for _ in range(3):
            assert refusal(revocation, revoked) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CERTIFICATE_REVOKED",
            )
        assert refusal(revocation, unlisted.issue("his-1")) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "CLIENT_CRL_MISSING",
        )
        assert refusal(revocation, stale.issue("his-1")) == (
            grpc.StatusCode.UNAVAILABLE,
            "CLIENT_CRL_EXPIRED",
        )
    told = [entry for entry in logs if entry["event"] == "client_certificate_refused"]
    assert [entry["reason"] for entry in told] == [
        "CERTIFICATE_REVOKED",  # once, not at each call
        "CLIENT_CRL_MISSING",
        "CLIENT_CRL_EXPIRED",
    ]
    assert told[0]["serial"] == f"{serial(revoked):x}"
    past = registry.get_sample_value(NEXT_UPDATE_METRIC)
    assert past is not None and past < time.time()  # the stale CRL's


def test_renewed_crls_are_taken_and_broken_ones_keep_the_last_good(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    first, second = ca.issue("his-1"), ca.issue("edge-reader")
    tls = tls_files(tmp_path, ca.pem, crl(ca, [first]))
    revocation = loaded(tls)
    assert refusal(revocation, first) is not None and refusal(revocation, second) is None
    path = Path(tls.client_crls[0])
    replace_file(path, crl(ca, [second]))
    asyncio.run(revocation.refresh())
    assert refusal(revocation, first) is None and refusal(revocation, second) is not None
    other = CertificateAuthority("apcv test CA")
    with capture_logs() as logs:
        replace_file(path, crl(other, [first, second]))  # not signed by the client CA
        asyncio.run(revocation.refresh())
        asyncio.run(revocation.refresh())  # unchanged: not read again
        replace_file(path, b"")  # caught while written
        asyncio.run(revocation.refresh())
    assert [entry["event"] for entry in logs] == ["client_crls_reload_failed"] * 2
    assert refusal(revocation, first) is None and refusal(revocation, second) is not None


def test_a_new_client_ca_bundle_checks_the_crls_again(tmp_path: Path) -> None:
    """A CA that leaves ``tls.client_ca`` takes its CRL with it (its clients cannot connect
    any more); back in the bundle, its CRL is read again."""
    kept, leaving = CertificateAuthority("kept"), CertificateAuthority("leaving")
    tls = tls_files(tmp_path, kept.pem + leaving.pem, crl(kept), crl(leaving))
    revocation = loaded(tls)
    assert len(revocation.current) == 2
    replace_file(tmp_path / "clients-ca.pem", kept.pem)
    asyncio.run(revocation.refresh())
    assert list(revocation.current) == [kept.cert.subject.rfc4514_string()]
    replace_file(tmp_path / "clients-ca.pem", kept.pem + leaving.pem)
    asyncio.run(revocation.refresh())
    assert len(revocation.current) == 2


def test_crls_that_cannot_be_used_stop_the_start(tmp_path: Path) -> None:
    ca, other = CertificateAuthority(), CertificateAuthority("other")
    with pytest.raises(ConfigError, match="tls.client_crls: .*not signed by a tls.client_ca"):
        loaded(tls_files(tmp_path, ca.pem, crl(other)))
    with pytest.raises(ConfigError, match=r"tls.client_crls\[0\]: "):
        loaded(TlsSection(client_ca=str(tmp_path / "clients-ca.pem"), client_crls=("x",)))


# -- CRLs at their distribution point --------------------------------------------------------


@pytest.fixture
def distribution(tmp_path: Path) -> Iterator[ListServer]:
    """An HTTP server of the files of ``tmp_path / "dp"`` (ETags, 304), as a CA publishes its
    CRLs."""
    (tmp_path / "dp").mkdir()
    server = ListServer(tmp_path / "dp")
    yield server
    server.close()


def test_crls_are_fetched_from_their_distribution_point(
    distribution: ListServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL is fetched as the lists are (conditional requests, every refresh); one that
    cannot be fetched at start refuses its CA's clients, logged, and is tried again soon."""
    monkeypatch.setattr(revocation_module, "INITIAL_RETRY_SECONDS", 0.0)
    ca = CertificateAuthority()
    client, revoked = ca.issue("his-1"), ca.issue("edge-reader")
    published = tmp_path / "dp" / "clients.crl"
    tls = tls_files(tmp_path, ca.pem)
    tls = dataclasses.replace(tls, client_crls=(distribution.url(published),))
    distribution.available = False
    registry = CollectorRegistry()
    with capture_logs() as logs:
        revocation = loaded(tls, registry, refresh_seconds=0.001)  # each look fetches again
    assert [entry["event"] for entry in logs] == ["client_crls_reload_failed"]
    assert refusal(revocation, client) == (grpc.StatusCode.UNAUTHENTICATED, "CLIENT_CRL_MISSING")
    assert registry.get_sample_value(NEXT_UPDATE_METRIC) == 0  # the alert fires
    distribution.available = True
    published.write_bytes(crl(ca, [revoked], encoding=serialization.Encoding.DER))
    asyncio.run(revocation.refresh())
    assert refusal(revocation, client) is None
    assert registry.get_sample_value(NEXT_UPDATE_METRIC) == pytest.approx(
        time.time() + 86400, abs=60
    )
    assert refusal(revocation, revoked) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CERTIFICATE_REVOKED",
    )
    generation = revocation.generation
    time.sleep(0.01)
    asyncio.run(revocation.refresh())  # unchanged: 304, nothing read again
    assert distribution.not_modified == 1 and revocation.generation == generation
    replace_file(published, crl(ca, [client, revoked]))
    time.sleep(0.01)
    asyncio.run(revocation.refresh())
    assert refusal(revocation, client) is not None
    assert distribution.requests[-1][1] is not None  # If-None-Match


def test_a_distribution_point_refresh_waits_for_refresh_seconds(
    distribution: ListServer, tmp_path: Path
) -> None:
    ca = CertificateAuthority()
    (tmp_path / "dp" / "clients.crl").write_bytes(crl(ca))
    tls = dataclasses.replace(
        tls_files(tmp_path, ca.pem),
        client_crls=(distribution.url(tmp_path / "dp" / "clients.crl"),),
    )
    revocation = loaded(tls, refresh_seconds=300.0)
    for _ in range(3):
        asyncio.run(revocation.refresh())
    assert len(distribution.requests) == 1


# -- over mTLS -----------------------------------------------------------------------------


class Caller:
    """One client connection to the server, kept open across calls."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials, pki: DemoPKI) -> None:
        self.channel = open_channel(address, credentials)
        self.stub = verifier_pb2_grpc.VerifierServiceStub(self.channel)
        self.pki = pki

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def scan(self) -> verifier_pb2.Scan:
        # Each call a new request (a resend would get the answer kept for it).
        scan = verifier_pb2.Scan(
            request_id=f"t-{uuid.uuid4().hex}", qr_text=qr_text(self.pki.present("alice"))
        )
        scan.reader.reader_id = "desk-1"
        return scan

    def verify(self) -> str:
        request = verifier_pb2.VerifyRequest(scan=self.scan())
        return reason(self.stub.Verify(request, timeout=10).verdict)

    def refusal(self, method: str = "Verify") -> tuple[type[Exception], str]:
        calls = {
            "Verify": lambda: self.stub.Verify(
                verifier_pb2.VerifyRequest(scan=self.scan()), timeout=10
            ),
            "VerifyBatch": lambda: self.stub.VerifyBatch(
                verifier_pb2.VerifyBatchRequest(scans=[self.scan()]), timeout=10
            ),
            "VerifyStream": lambda: list(
                self.stub.VerifyStream(
                    iter([verifier_pb2.VerifyStreamRequest(scan=self.scan())]), timeout=10
                )
            ),
        }
        with pytest.raises(grpc.RpcError) as failed:
            calls[method]()
        error = error_from_rpc(failed.value)
        return type(error), error.reason


@pytest.fixture
def checked(pki: DemoPKI, tmp_path: Path) -> Iterator[MtlsServer]:
    """mTLS ``serve`` of a CA whose CRL, ``tmp_path / "clients.crl"``, lists nothing yet."""
    ca = CertificateAuthority()
    (tmp_path / "clients.crl").write_bytes(crl(ca))
    running = serve_tls(pki, tmp_path, ca, tls='client_crls = ["clients.crl"]')
    yield MtlsServer(running, ca)
    stop_server(running)


def test_a_revoked_client_certificate_is_refused_on_every_method(
    checked: MtlsServer, pki: DemoPKI, tmp_path: Path
) -> None:
    ca, address = checked.ca, checked.server.address
    served, revoked = ca.issue("his-1"), ca.issue("his-1")
    with Caller(address, ca.credentials(revoked), pki) as client:
        assert client.verify() == "OK"
        replace_file(tmp_path / "clients.crl", crl(ca, [revoked]))
        wait_refused(client, UnauthenticatedError, "CERTIFICATE_REVOKED")  # the same connection
        for method in ("Verify", "VerifyBatch", "VerifyStream"):
            assert client.refusal(method) == (UnauthenticatedError, "CERTIFICATE_REVOKED")
    with Caller(address, ca.credentials(served), pki) as other:
        assert other.verify() == "OK"
    logged = [line for line in checked.server.logs().splitlines() if "certificate_refused" in line]
    assert len(logged) == 1 and f"{serial(revoked):x}" in logged[0]


def test_a_stream_open_when_its_certificate_is_revoked_ends_at_its_next_scan(
    checked: MtlsServer, pki: DemoPKI, tmp_path: Path
) -> None:
    """A reader's stream stays open for long (up to the connection's age): it is checked
    again before each group of scans it sends, not only when it opened."""
    ca = checked.ca
    revoked = ca.issue("his-1")
    requests: queue.Queue[verifier_pb2.VerifyStreamRequest | None] = queue.Queue()

    def sent() -> Iterator[verifier_pb2.VerifyStreamRequest]:
        while (request := requests.get()) is not None:
            yield request

    with Caller(checked.server.address, ca.credentials(revoked), pki) as client:
        answers = client.stub.VerifyStream(sent(), timeout=60)
        try:
            requests.put(verifier_pb2.VerifyStreamRequest(scan=client.scan()))
            assert reason(next(answers).verdict) == "OK"
            replace_file(tmp_path / "clients.crl", crl(ca, [revoked]))
            wait_refused(client, UnauthenticatedError, "CERTIFICATE_REVOKED")
            requests.put(verifier_pb2.VerifyStreamRequest(scan=client.scan()))
            with pytest.raises(grpc.RpcError) as ended:
                next(answers)
            error = error_from_rpc(ended.value)
            assert (type(error), error.reason) == (UnauthenticatedError, "CERTIFICATE_REVOKED")
        finally:
            requests.put(None)
            answers.cancel()


def test_an_expired_crl_refuses_its_clients_until_a_new_one_is_read(
    checked: MtlsServer, pki: DemoPKI, tmp_path: Path
) -> None:
    ca = checked.ca
    with Caller(checked.server.address, ca.credentials(ca.issue("his-1")), pki) as client:
        assert client.verify() == "OK"
        replace_file(tmp_path / "clients.crl", crl(ca, next_update=-HOUR))
        wait_refused(client, UnavailableError, "CLIENT_CRL_EXPIRED")
        replace_file(tmp_path / "clients.crl", crl(ca))
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.verify() == "OK"
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new CRL was not read"
                time.sleep(0.5)


def wait_refused(client: Caller, kind: type[Exception], reason: str) -> None:
    """Calls until ``client`` is refused (the server looks at its files every 5 s)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            client.verify()
        except grpc.RpcError as error:
            found = error_from_rpc(error)
            assert (type(found), found.reason) == (kind, reason)
            return
        assert time.monotonic() < deadline, f"not refused with {reason}"
        time.sleep(0.5)
