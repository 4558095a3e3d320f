"""End to end over real gRPC on loopback: an ``apcv-verify serve`` process, grpcurl and a
Python client, with presentations made by the issuer toolkit and its CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import (
    DEMO_AMC_ISS,
    INS_DEMO_OID,
    STATUS_SUSPENDED,
    DemoPKI,
    make_amc_attestation,
    parse_sign1,
    qr_text,
    sign1,
    tamper_signature,
)

from .conftest import (
    REPO,
    ServerProcess,
    free_port,
    nir_numbers,
    reason,
    scrape,
    start_server,
    stop_server,
    value,
    verify,
)

Scan = verifier_pb2.Scan
Reader = verifier_pb2.ReaderContext


def unary(scan: verifier_pb2.Scan) -> verifier_pb2.VerifyRequest:
    return verifier_pb2.VerifyRequest(scan=scan)


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
    server: ServerProcess, pki: DemoPKI, grpcurl: str
) -> None:
    services = run_grpcurl(grpcurl, server.address, "list")
    assert "apcv.verify.v1.VerifierService" in services.split()
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
    scan = {"request_id": "g-1", "qr_text": text, "reader": {"reader_id": "desk-9"}}
    answer = json.loads(
        run_grpcurl(
            grpcurl,
            server.address,
            "-d",
            json.dumps({"scan": scan}),
            "apcv.verify.v1.VerifierService/Verify",
        )
    )
    reply = answer["verdict"]
    assert reply.get("request_id") == "g-1", reply
    assert reply["decision"] == "DECISION_ACCEPTED"
    assert reply["reason"] == "REASON_OK"
    # Lunar birth dates are valid identity data, returned verbatim (docs/profile.md §5.4).
    assert reply["person"]["identity"]["birth_date"] == "1957-00-00"
    assert reply["person"]["ins"]["oid"] == INS_DEMO_OID
    assert len(reply["person"]["ins"]["matricule"]) == 15


@pytest.mark.slow
def test_the_six_demo_decisions_over_grpc(server: ServerProcess, pki: DemoPKI) -> None:
    pki.revoke(pki.holder("revoked").status_index)
    stop_server(server)  # the status list is read at start (refresh is a later issue)
    restarted = start_server(pki.directory, server.log_path.with_name("restarted.log"),
                             "--allow-test-identities")  # fmt: skip
    try:
        samples = pki.samples(now=int(time.time()))
        accepted = verify(restarted, qr_text(samples["accepted"]))
        assert (accepted.decision, reason(accepted)) == (verifier_pb2.DECISION_ACCEPTED, "OK")
        assert accepted.person.rank == 0 and accepted.use == "care"
        assert accepted.issuer
        for name, expected in [
            ("expired", "CREDENTIAL_EXPIRED"),
            ("revoked", "REVOKED"),
            ("tampered", "BAD_DEVICE_SIGNATURE"),
            ("wrong_issuer", "UNKNOWN_ISSUER"),
        ]:
            response = verify(restarted, qr_text(samples[name]))
            assert (response.decision, reason(response)) == (
                verifier_pb2.DECISION_REJECTED,
                expected,
            ), name
            assert not response.HasField("person"), name

        replayed = qr_text(samples["replayed"])
        first = verify(restarted, replayed, "desk-1")
        retry = verify(restarted, replayed, "desk-1")
        other = verify(restarted, replayed, "pharmacy-2")
        assert (reason(first), first.duplicate) == ("OK", False)
        # A retry from the same reader is accepted again and flagged (docs/profile.md §7.4).
        assert (reason(retry), retry.duplicate) == ("OK", True)
        assert (other.decision, reason(other)) == (verifier_pb2.DECISION_REJECTED, "REPLAYED")
    finally:
        stop_server(restarted)


def test_nfc_bytes_and_beneficiary(server: ServerProcess, pki: DemoPKI) -> None:
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
def test_bad_input_is_a_normal_rejection(server: ServerProcess, garbage: str | bytes) -> None:
    if garbage == "":
        with pytest.raises(grpc.RpcError) as error:
            verify(server, garbage)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    response = verify(server, garbage)
    assert response.decision == verifier_pb2.DECISION_REJECTED
    assert reason(response) == "MALFORMED"
    assert server.process.poll() is None


def test_call_level_errors_use_grpc_status(server: ServerProcess) -> None:
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Verify(unary(Scan(request_id="no-presentation")), timeout=10)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as oversize:
            stub.Verify(unary(Scan(request_id="big", nfc_bytes=b"\0" * 200_000)), timeout=10)
        assert oversize.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as long_id:
            stub.Verify(unary(Scan(request_id="x" * 500, qr_text="APCV1:")), timeout=10)
        assert long_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_production_policy_rejects_demonstration_identities(pki: DemoPKI, tmp_path: Path) -> None:
    production = start_server(pki.directory, tmp_path / "production.log")
    try:
        response = verify(production, qr_text(pki.present("alice")))
        assert (response.decision, reason(response)) == (
            verifier_pb2.DECISION_REJECTED,
            "CLAIMS_INVALID",
        )
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


def test_logs_carry_no_personal_data(server: ServerProcess, pki: DemoPKI) -> None:
    for holder in pki.holders:
        verify(server, qr_text(pki.present(holder)))
    verify(server, pki.present("family", ben=1))
    stop_server(server)
    logs = server.logs()
    assert '"event": "verification"' in logs
    leaked = [value for value in _personal_values(pki) if value in logs]
    assert leaked == []
    assert not nir_numbers(logs), "a NIR/NIA number reached the logs"


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


def test_make_demo_prints_seven_expected_decisions(grpcurl: str) -> None:
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
    # Seven rows, and the summary counts them as the table shows them (six presentations,
    # one scanned twice), as the README says.
    assert out.count(" yes") == 7
    assert "All 7 decisions as expected (6 sample presentations;" in out
    # The demo runs the grpcurl command it prints against its live server, naming grpcurl as
    # the user can run it from here (`make tools` puts it in .tools/bin, not on PATH)...
    shown = out.split("verified by grpcurl:\n")[1].splitlines()[0]
    local = Path(".tools/bin/grpcurl")
    assert shown.split()[0] == (str(local) if (REPO / local).exists() else "grpcurl")
    assert '"decision": "DECISION_ACCEPTED"' in out.split("grpcurl answered")[1]
    # ...and, its server gone, says how to get one that stays up.
    assert "This demo's server stops now" in out
    assert "apcv-verify demo --serve`: it keeps a server on 127.0.0.1:50051" in out


# --- Every reason code of docs/profile.md §8 over gRPC (listed in its §11) ----------------------

SHARED_POLICY = """
[[callers]]
id = "anonymous"
uses = ["care", "dmp", "dp"]
may_send_scanned_at = true
max_scan_delay_seconds = 600
"""


#: AMC attestations whose status the shared PKI sets before its server starts.
SHARED_ATTESTATIONS: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPKI:
    pki = DemoPKI.create(tmp_path_factory.mktemp("shared") / "pki", now=int(time.time()))
    pki.suspend(pki.holder("corsica").status_index)  # status lists are read at start
    revoked, suspended = pki.amc_attestation("alice"), pki.amc_attestation("alice")
    pki.revoke_object(revoked)
    pki.revoke_object(suspended, STATUS_SUSPENDED)
    SHARED_ATTESTATIONS.update(REVOKED=revoked, SUSPENDED=suspended)
    return pki


@pytest.fixture(scope="module")
def shared(
    shared_pki: DemoPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server for the reason-code table: anonymous may not use ``auth`` and may send
    scanned_at up to 10 minutes old."""
    work = tmp_path_factory.mktemp("shared-server")
    (work / "apcv.toml").write_text(SHARED_POLICY)
    running = start_server(shared_pki.directory, work / "server.log", "--allow-test-identities",
                           "--config", str(work / "apcv.toml"))  # fmt: skip
    yield running
    stop_server(running)


def resigned(
    pki: DemoPKI, holder: str, change: Callable[[dict[Any, Any]], None], **sign: Any
) -> bytes:
    """``holder``'s credential claims changed by ``change``, signed again by its issuer."""
    claims = parse_sign1(pki.holder(holder).credential).claims()
    change(claims)
    return sign1(pki.keys[pki.holder(holder).issuer], claims, **sign)


def _wrong_ins_key(claims: dict[Any, Any]) -> None:
    matricule = claims["apcv"]["ins"]["m"]
    claims["apcv"]["ins"]["m"] = matricule[:13] + f"{(int(matricule[13:]) % 97) + 1:02d}"


def _version_2(claims: dict[Any, Any]) -> None:
    claims["apcv"]["v"] = 2


def _status_index_outside_the_list(claims: dict[Any, Any]) -> None:
    claims[65535]["status_list"]["idx"] = 100_000


def _out_of_scope_delegation(pki: DemoPKI, now: int) -> bytes:
    key, delegation = pki.delegate("alice", use=("dmp",), who="Mamie")
    return pki.present("alice", dlg=delegation, signer=key, use="care", iat=now)


#: reason → how to make a presentation that the shared server rejects with it.
REJECTIONS: dict[str, Callable[[DemoPKI, int], bytes | str]] = {
    "MALFORMED": lambda pki, now: "APCV1:%%%%",
    "UNSUPPORTED_VERSION": lambda pki, now: pki.present(
        credential=resigned(pki, "alice", _version_2), iat=now
    ),
    "UNKNOWN_ISSUER": lambda pki, now: pki.present(credential=pki.rogue_credential(), iat=now),
    "ALG_MISMATCH": lambda pki, now: pki.present(
        # header says EdDSA, the trust list binds the key to ES256 (docs/profile.md §3.5)
        credential=resigned(pki, "alice", lambda c: None, protected_extra={1: -8}),
        iat=now,
    ),
    "ISSUER_MISMATCH": lambda pki, now: pki.present(
        credential=pki.credential_variant(iss="https://elsewhere.example"), iat=now
    ),
    "CLAIMS_INVALID": lambda pki, now: pki.present(
        credential=resigned(pki, "alice", _wrong_ins_key), iat=now
    ),
    "CREDENTIAL_NOT_YET_VALID": lambda pki, now: pki.present(
        credential=pki.credential_variant(nbf=now + 86_400), iat=now
    ),
    "CREDENTIAL_EXPIRED": lambda pki, now: pki.present(
        credential=pki.expired_credential(now=now), iat=now
    ),
    "PRESENTATION_NOT_YET_VALID": lambda pki, now: pki.present(iat=now + 3600),
    "PRESENTATION_EXPIRED": lambda pki, now: pki.present(iat=now - 1000, exp=now - 900),
    "PRESENTATION_LIFETIME_EXCEEDED": lambda pki, now: pki.present(iat=now, exp=now + 301),
    "REVOKED": lambda pki, now: pki.present("revoked", iat=now),
    "SUSPENDED": lambda pki, now: pki.present("corsica", iat=now),
    "STATUS_UNAVAILABLE": lambda pki, now: pki.present(
        credential=resigned(pki, "alice", _status_index_outside_the_list), iat=now
    ),
    "BAD_ISSUER_SIGNATURE": lambda pki, now: pki.present(
        credential=tamper_signature(pki.holder("alice").credential), iat=now
    ),
    "DELEGATION_INVALID": _out_of_scope_delegation,
    "BAD_DEVICE_SIGNATURE": lambda pki, now: tamper_signature(pki.present(iat=now)),
    "AUDIENCE_MISMATCH": lambda pki, now: pki.present(aud="pharmacy-9", iat=now),
    # A nonce the reader did not send (docs/profile.md §7.2 step 8b).
    "NONCE_MISMATCH": lambda pki, now: pki.present(nonce=b"\x01" * 16, iat=now),
    "UNKNOWN_BENEFICIARY": lambda pki, now: pki.present("family", ben=2, iat=now),
    "PURPOSE_NOT_ALLOWED": lambda pki, now: pki.present(use="auth", iat=now),
}


@pytest.mark.parametrize("expected", sorted(REJECTIONS))
def test_reason_code_over_grpc(shared: ServerProcess, shared_pki: DemoPKI, expected: str) -> None:
    presentation = REJECTIONS[expected](shared_pki, int(time.time()))
    response = verify(shared, presentation)
    assert (response.decision, reason(response)) == (verifier_pb2.DECISION_REJECTED, expected)
    assert response.detail and not response.HasField("person")


def test_reason_ok_and_duplicate(shared: ServerProcess, shared_pki: DemoPKI) -> None:
    code = qr_text(shared_pki.present())
    first, again = verify(shared, code, "desk-1"), verify(shared, code, "desk-1")
    assert (reason(first), first.duplicate, reason(again), again.duplicate) == (
        "OK", False, "OK", True
    )  # fmt: skip


def test_reason_replayed(shared: ServerProcess, shared_pki: DemoPKI) -> None:
    code = qr_text(shared_pki.present())
    assert reason(verify(shared, code, "desk-1")) == "OK"
    assert reason(verify(shared, code, "desk-2")) == "REPLAYED"


def test_reason_scan_time_invalid(shared: ServerProcess, shared_pki: DemoPKI) -> None:
    now = int(time.time())
    old = now - 3600  # beyond the caller's 600 s
    scan = Scan(request_id="s-1", qr_text=qr_text(shared_pki.present(iat=old)))
    scan.reader.reader_id = "edge-1"
    scan.scanned_at.FromSeconds(old)
    with shared.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        response = stub.Verify(unary(scan), timeout=10).verdict
    assert (response.decision, reason(response)) == (
        verifier_pb2.DECISION_REJECTED,
        "SCAN_TIME_INVALID",
    )


def test_reason_replay_unavailable(pki: DemoPKI, tmp_path: Path) -> None:
    tiny = start_server(pki.directory, tmp_path / "tiny.log", "--allow-test-identities",
                        env={"APCV_REPLAY_MAX_ENTRIES": "1"})  # fmt: skip
    try:
        assert reason(verify(tiny, pki.present("alice"))) == "OK"
        full = verify(tiny, pki.present("lunar"))
        assert (full.decision, reason(full)) == (
            verifier_pb2.DECISION_REJECTED,
            "REPLAY_UNAVAILABLE",
        )
    finally:
        stop_server(tiny)


@pytest.mark.slow
def test_reason_status_unavailable_without_a_status_list(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No status list loaded: every presentation would be STATUS_UNAVAILABLE, so health says
    NOT_SERVING (start_server waits for it), with an error line and apcv_serving 0; a caller
    that calls anyway still gets the fail-closed answer."""
    metrics_port = free_port()
    monkeypatch.setenv("APCV_METRICS_LISTEN", f"127.0.0.1:{metrics_port}")
    bare = start_server(pki.directory, tmp_path / "bare.log", "--allow-test-identities",
                        status_lists=False)  # fmt: skip
    try:
        assert reason(verify(bare, pki.present("alice"))) == "STATUS_UNAVAILABLE"
        found = scrape(metrics_port)
        assert value(found, "apcv_serving") == 0
        assert value(found, "apcv_status_lists_loaded") == 0
        assert value(found, "apcv_trust_list_sequence") == pki.trust_list_seq
    finally:
        stop_server(bare)
    (line,) = [line for line in bare.logs().splitlines() if "no_status_list_loaded" in line]
    record = json.loads(line)
    assert (record["level"], record["status_lists_configured"]) == ("error", 0)


# --- NFC challenge --------------------------------------------------------------


def test_nfc_challenge_nonce_and_audience_match(shared: ServerProcess, shared_pki: DemoPKI) -> None:
    nonce = bytes(range(16))
    tap = shared_pki.present("family", ben=1, aud="pharmacy-7", nonce=nonce)
    accepted = verify(shared, tap, "pharmacy-7", nonce=nonce)
    assert (reason(accepted), accepted.person.rank) == ("OK", 1)
    # The same challenge answered for another reader, or a reader that sent no nonce.
    other = shared_pki.present(aud="pharmacy-7", nonce=nonce)
    assert reason(verify(shared, other, "pharmacy-8", nonce=nonce)) == "AUDIENCE_MISMATCH"
    assert reason(verify(shared, shared_pki.present(nonce=nonce), "desk-1")) == "NONCE_MISMATCH"
    assert reason(verify(shared, shared_pki.present(), "desk-1", nonce=nonce)) == "NONCE_MISMATCH"


# --- Delegation -----------------------------------------------------------------


def test_delegation_says_it_was_used_with_its_label_only(
    shared: ServerProcess, shared_pki: DemoPKI
) -> None:
    key, delegation = shared_pki.delegate("family", ben=(1,), use=("care",), who="Mamie Jeanne")
    tap = shared_pki.present("family", ben=1, dlg=delegation, signer=key)
    response = verify(shared, tap)
    assert (reason(response), response.person.rank) == ("OK", 1)
    assert (response.delegation.used, response.delegation.label) == (True, "Mamie Jeanne")
    # The holder presenting in person: no delegation in the response.
    assert not verify(shared, shared_pki.present("family")).HasField("delegation")
    # Out of scope: a rank the delegation does not name.
    holder_tap = shared_pki.present("family", ben=0, dlg=delegation, signer=key)
    assert reason(verify(shared, holder_tap)) == "DELEGATION_INVALID"


@pytest.mark.slow
def test_a_revoked_delegation_stops_at_the_next_list(pki: DemoPKI, tmp_path: Path) -> None:
    key, delegation = pki.delegate("alice", who="")
    before = start_server(pki.directory, tmp_path / "before.log", "--allow-test-identities")
    try:
        response = verify(before, pki.present("alice", dlg=delegation, signer=key))
        assert reason(response) == "OK"
        assert (response.delegation.used, response.delegation.label) == (True, "")
    finally:
        stop_server(before)
    pki.revoke_object(delegation)
    after = start_server(pki.directory, tmp_path / "after.log", "--allow-test-identities")
    try:
        refused = verify(after, pki.present("alice", dlg=delegation, signer=key))
        assert reason(refused) == "DELEGATION_INVALID"
    finally:
        stop_server(after)


# --- AMC attestations -----------------------------------------------------------


def test_amc_coverage_each_attestation_on_its_own(
    shared: ServerProcess, shared_pki: DemoPKI
) -> None:
    now = int(time.time())
    valid = shared_pki.amc_attestation("family", ranks=[1], contract="C-42", domains=["PHAR"])
    for_holder_only = shared_pki.amc_attestation("family", ranks=[0])
    expired = shared_pki.amc_attestation("family", ranks=[1], nbf=now - 400 * 86_400,
                                         exp=now - 30 * 86_400)  # fmt: skip
    untrusted = shared_pki.amc_attestation("family", ranks=[1], signer=shared_pki.rogue_issuer)
    tap = shared_pki.present("family", ben=1, amc=[valid, for_holder_only, expired, untrusted])
    response = verify(shared, tap)
    assert reason(response) == "OK"  # an invalid attestation never rejects the presentation
    outcomes = [
        (item.valid, verifier_pb2.Reason.Name(item.reason).removeprefix("REASON_"))
        for item in response.amc
    ]
    assert outcomes == [
        (True, "OK"),
        (False, "NOT_APPLICABLE"),
        (False, "ATTESTATION_EXPIRED"),
        (False, "UNKNOWN_ISSUER"),
    ]
    good, other_person, stale, forged = response.amc
    assert (good.contract, list(good.domains), good.third_party_payment) == ("C-42", ["PHAR"], True)
    assert good.amc_number and good.organisation and good.HasField("expires_at")
    # No data from an attestation about someone else or from an untrusted signer.
    for absent in (other_person, forged):
        assert not absent.contract and not absent.domains and not absent.HasField("expires_at")
    assert stale.contract  # trusted and naming the person: returned, flagged not valid


def test_amc_coverage_follows_disclosure(shared: ServerProcess, shared_pki: DemoPKI) -> None:
    attestation = shared_pki.amc_attestation("alice")
    dmp = verify(shared, shared_pki.present(use="dmp", amc=[attestation]))
    assert reason(dmp) == "OK" and len(dmp.amc) == 0  # dmp: INS and traits only
    care = verify(shared, shared_pki.present(use="care", amc=[attestation]))
    assert [verifier_pb2.Reason.Name(item.reason).removeprefix("REASON_") for item in care.amc] == [
        "OK"
    ]


def _resigned_attestation(
    pki: DemoPKI, change: Callable[[dict[Any, Any]], None], **sign: Any
) -> bytes:
    claims = parse_sign1(pki.amc_attestation("alice")).claims()
    change(claims)
    return sign1(pki.amc_issuer, claims, **sign)


def _for_with_a_wrong_key(claims: dict[Any, Any]) -> None:
    good = claims["apcv"]["for"][0]
    claims["apcv"]["for"].append(good[:13] + f"{(int(good[13:]) % 97) + 1:02d}")


#: docs/profile.md §8.1 outcome → an attestation attached to alice's presentation that yields it.
AMC_OUTCOMES: dict[str, Callable[[DemoPKI, int], bytes]] = {
    "OK": lambda pki, now: pki.amc_attestation("alice"),
    "MALFORMED": lambda pki, now: b"\xa1\x01",
    "UNSUPPORTED_VERSION": lambda pki, now: _resigned_attestation(
        pki, lambda claims: claims["apcv"].update(v=2)
    ),
    "UNKNOWN_ISSUER": lambda pki, now: pki.amc_attestation("alice", signer=pki.rogue_issuer),
    "ALG_MISMATCH": lambda pki, now: _resigned_attestation(
        pki, lambda claims: None, protected_extra={1: -8}
    ),
    "ISSUER_MISMATCH": lambda pki, now: _resigned_attestation(
        pki, lambda claims: claims.update({1: "https://other-amc.example"})
    ),
    "BAD_ISSUER_SIGNATURE": lambda pki, now: tamper_signature(pki.amc_attestation("alice")),
    "CLAIMS_INVALID": lambda pki, now: _resigned_attestation(pki, _for_with_a_wrong_key),
    "NOT_APPLICABLE": lambda pki, now: pki.amc_attestation("family"),
    "ATTESTATION_NOT_YET_VALID": lambda pki, now: pki.amc_attestation("alice", nbf=now + 86_400),
    "ATTESTATION_EXPIRED": lambda pki, now: pki.amc_attestation(
        "alice", nbf=now - 400 * 86_400, exp=now - 86_400
    ),
    "REVOKED": lambda pki, now: SHARED_ATTESTATIONS["REVOKED"],
    "SUSPENDED": lambda pki, now: SHARED_ATTESTATIONS["SUSPENDED"],
    "STATUS_UNAVAILABLE": lambda pki, now: make_amc_attestation(
        pki.amc_issuer,
        iss=DEMO_AMC_ISS,
        sub="contract-x",
        covered=[pki.matricules()[0]],
        amc_number="012345678",
        third_party_payment=False,
        domains=["MED"],
        iat=now - 86_400,
        nbf=now - 86_400,
        exp=now + 86_400,
        status_uri="https://status.apcv.example/not-loaded",
        status_index=3,
    ),  # fmt: skip
}


@pytest.mark.parametrize("expected", sorted(AMC_OUTCOMES))
def test_amc_outcome_over_grpc(shared: ServerProcess, shared_pki: DemoPKI, expected: str) -> None:
    attestation = AMC_OUTCOMES[expected](shared_pki, int(time.time()))
    response = verify(shared, shared_pki.present("alice", amc=[attestation]))
    assert (response.decision, reason(response)) == (verifier_pb2.DECISION_ACCEPTED, "OK")
    (outcome,) = response.amc
    assert (verifier_pb2.Reason.Name(outcome.reason).removeprefix("REASON_"), outcome.valid) == (
        expected,
        expected == "OK",
    )
    assert bool(outcome.detail) == (expected != "OK")  # a fixed phrase for every failure
    # Coverage only from a trusted signer naming the person (docs/profile.md §8.1).
    returned = expected in ("OK", "ATTESTATION_NOT_YET_VALID", "ATTESTATION_EXPIRED", "REVOKED",
                            "SUSPENDED", "STATUS_UNAVAILABLE")  # fmt: skip
    assert bool(outcome.contract) == returned and bool(outcome.domains) == returned


def test_profile_section_11_names_a_real_test_for_every_reason_code() -> None:
    """docs/profile.md §11 lists every code of §8 and §8.1, and only tests that exist."""
    import importlib

    text = (REPO / "docs" / "profile.md").read_text()
    section_8 = text[text.index("## 8. Reason codes") : text.index("## 9. Privacy")]
    section_11 = text[text.index("## 11. Reason") : text.index("## 12. Security")]
    codes = set(re.findall(r"^\| `([A-Z_]+)` \|", section_8, re.MULTILINE))
    listed = set(re.findall(r"^\| `([A-Z_]+)`", section_11, re.MULTILINE))
    assert codes and codes <= listed
    parameters: dict[str, Mapping[str, object]] = {
        "test_reason_code_over_grpc": REJECTIONS,
        "test_amc_outcome_over_grpc": AMC_OUTCOMES,
    }
    for module, name, param in re.findall(r"`tests/(\w+)\.py::(\w+)(?:\[(\w+)\])?`", section_11):
        assert hasattr(importlib.import_module(f"tests.{module}"), name), (module, name)
        if param:
            assert param in parameters[name], (name, param)
