"""End to end over real gRPC on loopback: an ``apcv-verify serve`` process, grpcurl and a
Python client, with presentations made by the issuer toolkit and its CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import INS_DEMO_OID, DemoPKI, qr_text

from .conftest import REPO, RunningServer, start_server, stop_server

Request = verifier_pb2.VerifyRequest
Reader = verifier_pb2.ReaderContext


def verify(
    server: RunningServer, presentation: str | bytes, reader_id: str = "desk-1", **reader: bytes
) -> verifier_pb2.VerifyResponse:
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        if isinstance(presentation, str):
            request = Request(request_id="r-1", qr_text=presentation)
        else:
            request = Request(request_id="r-1", nfc_bytes=presentation)
        request.reader.CopyFrom(Reader(reader_id=reader_id, **reader))
        return stub.Verify(request, timeout=10)


def reason(response: verifier_pb2.VerifyResponse) -> str:
    return verifier_pb2.Reason.Name(response.reason)


def run_grpcurl(grpcurl: str, address: str, *args: str) -> str:
    completed = subprocess.run(
        [grpcurl, "-plaintext", *args[:-1], address, args[-1]] if args else [grpcurl],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_grpcurl_lists_the_service_reports_health_and_verifies_a_cli_presentation(
    server: RunningServer, pki: DemoPKI, grpcurl: str
) -> None:
    services = run_grpcurl(grpcurl, server.address, "list")
    assert "apcv.verify.v1.Verifier" in services.split()
    assert "grpc.health.v1.Health" in services.split()

    health = json.loads(run_grpcurl(grpcurl, server.address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}

    issued = subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "issue", "presentation",
         "--pki", str(pki.directory), "--holder", "lunar"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text = issued.stdout.strip()
    assert text.startswith("APCV1:")
    body = json.dumps({"request_id": "g-1", "qr_text": text, "reader": {"reader_id": "desk-9"}})
    reply = json.loads(
        run_grpcurl(grpcurl, server.address, "-d", body, "apcv.verify.v1.Verifier/Verify")
    )
    assert reply.get("request_id") == "g-1", reply
    assert reply["decision"] == "ACCEPTED"
    assert reply["reason"] == "OK"
    # Lunar birth dates are valid identity data, returned verbatim (PROFILE §5.4).
    assert reply["person"]["identity"]["birth_date"] == "1957-00-00"
    assert reply["person"]["ins"]["oid"] == INS_DEMO_OID
    assert len(reply["person"]["ins"]["matricule"]) == 15


def test_the_six_demo_decisions_over_grpc(server: RunningServer, pki: DemoPKI) -> None:
    pki.revoke(pki.holder("revoked").status_index)
    stop_server(server)  # the status list is read at start (refresh is a later issue)
    restarted = start_server(pki.directory, server.log_path.with_name("restarted.log"),
                             "--allow-test-identities")  # fmt: skip
    try:
        samples = pki.samples(now=int(time.time()))
        accepted = verify(restarted, qr_text(samples["accepted"]))
        assert (accepted.decision, reason(accepted)) == (verifier_pb2.ACCEPTED, "OK")
        assert accepted.person.rank == 0 and accepted.use == "care"
        assert accepted.issuer
        for name, expected in [
            ("expired", "CREDENTIAL_EXPIRED"),
            ("revoked", "REVOKED"),
            ("tampered", "BAD_DEVICE_SIGNATURE"),
            ("wrong_issuer", "UNKNOWN_ISSUER"),
        ]:
            response = verify(restarted, qr_text(samples[name]))
            assert (response.decision, reason(response)) == (verifier_pb2.REJECTED, expected), name
            assert not response.HasField("person"), name

        replayed = qr_text(samples["replayed"])
        first = verify(restarted, replayed, "desk-1")
        retry = verify(restarted, replayed, "desk-1")
        other = verify(restarted, replayed, "pharmacy-2")
        assert (reason(first), first.duplicate) == ("OK", False)
        # A retry from the same reader is accepted again and flagged (PROFILE §7.4).
        assert (reason(retry), retry.duplicate) == ("OK", True)
        assert (other.decision, reason(other)) == (verifier_pb2.REJECTED, "REPLAYED")
    finally:
        stop_server(restarted)


def test_nfc_bytes_and_beneficiary(server: RunningServer, pki: DemoPKI) -> None:
    child = verify(server, pki.present("family", ben=1))
    assert reason(child) == "OK"
    assert child.person.rank == 1
    unknown = verify(server, pki.present("family", ben=2))
    assert reason(unknown) == "UNKNOWN_BENEFICIARY"


@pytest.mark.parametrize(
    "garbage",
    [
        "",  # handled below as INVALID_ARGUMENT
        "APCV1:",
        "APCV1:%%%%",
        "HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH",
        "APCV1:" + "A" * 5000,
        b"\x00",
        b"\xa1\x01\x01",
        bytes(range(256)) * 20,
        b"\x9f" * 40,  # indefinite-length arrays, nested deeper than allowed
    ],
)
def test_bad_input_is_a_normal_rejection(server: RunningServer, garbage: str | bytes) -> None:
    if garbage == "":
        with pytest.raises(grpc.RpcError) as error:
            verify(server, garbage)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    response = verify(server, garbage)
    assert response.decision == verifier_pb2.REJECTED
    assert reason(response) == "MALFORMED"
    assert server.process.poll() is None


def test_call_level_errors_use_grpc_status(server: RunningServer) -> None:
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Verify(Request(request_id="no-presentation"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as oversize:
            stub.Verify(Request(request_id="big", nfc_bytes=b"\0" * 200_000), timeout=10)
        assert oversize.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as long_id:
            stub.Verify(Request(request_id="x" * 500, qr_text="APCV1:"), timeout=10)
        assert long_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_production_policy_rejects_demonstration_identities(pki: DemoPKI, tmp_path: Path) -> None:
    production = start_server(pki.directory, tmp_path / "production.log")
    try:
        response = verify(production, qr_text(pki.present("alice")))
        assert (response.decision, reason(response)) == (verifier_pb2.REJECTED, "CLAIMS_INVALID")
    finally:
        stop_server(production)


def test_serve_refuses_a_trust_list_under_an_unknown_anchor(pki: DemoPKI) -> None:
    stranger = DemoPKI.create(pki.directory.parent / "other", now=int(time.time()))
    completed = subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "serve", "--listen", "127.0.0.1:0",
         "--anchor", str(stranger.directory / "anchor.pem"),
         "--trust-list", str(pki.trust_list_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "trust list refused" in completed.stderr
    assert "unknown trust anchor" in completed.stderr


def test_logs_carry_no_personal_data(server: RunningServer, pki: DemoPKI) -> None:
    for holder in pki.holders:
        verify(server, qr_text(pki.present(holder)))
    verify(server, pki.present("family", ben=1))
    stop_server(server)
    logs = server.logs()
    assert '"event": "verification"' in logs
    leaked = [value for value in _personal_values(pki) if value in logs]
    assert leaked == []
    assert not re.search(r"\b[12]\d{12}\d{2}\b", logs), "a NIR-shaped number reached the logs"


def _personal_values(pki: DemoPKI) -> list[str]:
    """Names, INS matricules and birth dates of every demo person."""
    from apcv_verify.issuer import parse_sign1

    values: list[str] = []
    for holder in pki.holders.values():
        profile = parse_sign1(holder.credential).claims()["apcv"]
        people = [profile, *profile.get("ben", [])]
        for person in people:
            values += [person["ins"]["m"], person["id"]["bn"], person["id"]["dob"]]
            values += person["id"]["gn"].split()
    return values


def test_make_demo_prints_six_expected_decisions(grpcurl: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "apcv_verify.cli", "demo"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    for expected in ["CREDENTIAL_EXPIRED", "REVOKED", "REPLAYED", "BAD_DEVICE_SIGNATURE",
                     "UNKNOWN_ISSUER"]:  # fmt: skip
        assert expected in out
    assert out.count(" yes") == 7
    assert "All six decisions as expected." in out
    assert "grpcurl -plaintext -d" in out
    # The demo runs the grpcurl command it prints against its live server.
    assert '"decision": "ACCEPTED"' in out.split("grpcurl answered")[1]
