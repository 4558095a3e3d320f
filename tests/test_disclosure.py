"""The purpose policy over real gRPC: which caller may verify which use and see which fields.

Each disclosure rule is checked for presence AND absence: a field a caller may not see is
unset in the response (``HasField`` false), not blanked. Without TLS every call is the caller
``anonymous`` (tests/test_tls.py covers certificate identities).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from apcv_verify.issuer import DemoPKI

from .conftest import ServerProcess, reason, start_server, stop_server, verify, write_config

Request = verifier_pb2.Scan
Reader = verifier_pb2.ReaderContext

GROUPS = ("ins", "identity", "amo")


def serve_with(pki: DemoPKI, tmp_path: Path, config: str, name: str = "policy") -> ServerProcess:
    path = write_config(tmp_path / f"{name}.toml", config)
    return start_server(
        pki.directory, tmp_path / f"{name}.log", "--allow-test-identities", "--config", str(path)
    )


@pytest.fixture
def default_policy(pki: DemoPKI, tmp_path: Path) -> Iterator[ServerProcess]:
    """A callers table that gives ``anonymous`` every use with the default disclosure."""
    running = serve_with(pki, tmp_path, '[[callers]]\nid = "anonymous"\n', "default")
    yield running
    stop_server(running)


def present_groups(response: verifier_pb2.Verdict) -> set[str]:
    groups = {group for group in GROUPS if response.person.HasField(group)}
    if response.HasField("identity_qualification"):
        groups.add("qualification")
    return groups


@pytest.mark.parametrize(
    ("use", "expected"),
    [
        ("care", {"ins", "identity", "amo", "qualification"}),
        ("dmp", {"ins", "identity", "qualification"}),
        ("dp", {"ins", "identity", "qualification"}),
        ("auth", {"ins", "qualification"}),
    ],
)
def test_default_disclosure_per_use(
    default_policy: ServerProcess, pki: DemoPKI, use: str, expected: set[str]
) -> None:
    response = verify(default_policy, pki.present("alice", use=use))
    assert (reason(response), response.use) == ("OK", use)
    assert present_groups(response) == expected
    assert response.person.rank == 0 and response.issuer
    if "identity" not in expected:
        assert not response.person.identity.birth_name  # absent, so nothing to read


def test_identity_qualification_is_qualified_by_apcv(
    default_policy: ServerProcess, pki: DemoPKI
) -> None:
    response = verify(default_policy, pki.present("family", ben=1, use="dmp"))
    qualification = response.identity_qualification
    # RNIV: an INS read from the Appli carte Vitale is qualified, beneficiaries included.
    assert (qualification.status, qualification.status_code) == ("QUALIFIED", "QUAL")
    assert qualification.collection_method == "AV"


def test_rejections_disclose_nothing(default_policy: ServerProcess, pki: DemoPKI) -> None:
    response = verify(
        default_policy, pki.present("alice", credential=pki.expired_credential("alice"))
    )
    assert reason(response) == "CREDENTIAL_EXPIRED"
    assert not response.HasField("person")
    assert not response.HasField("identity_qualification")
    assert not response.fhir_json


@pytest.mark.slow
def test_a_caller_table_narrows_disclosure_and_uses(pki: DemoPKI, tmp_path: Path) -> None:
    config = """
[[callers]]
id = "anonymous"
uses = ["care", "auth"]
disclose = { care = ["amo"], auth = ["identity"] }
"""
    running = serve_with(pki, tmp_path, config)
    try:
        care = verify(running, pki.present("alice", use="care"), include_fhir=True)
        assert reason(care) == "OK"
        # Only AMO rights: no INS, hence no identity qualification either.
        assert present_groups(care) == {"amo"}
        bundle = json.loads(care.fhir_json)
        patient = bundle["entry"][0]["resource"]
        assert "identifier" not in patient and "name" not in patient
        assert "birthDate" not in patient and "extension" not in patient
        assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "Coverage"]

        auth = verify(running, pki.present("alice", use="auth"))
        assert present_groups(auth) == {"identity"}

        dmp = verify(running, pki.present("alice", use="dmp"))
        assert (dmp.decision, reason(dmp)) == (
            verifier_pb2.DECISION_REJECTED,
            "PURPOSE_NOT_ALLOWED",
        )
        assert not dmp.HasField("person")
    finally:
        stop_server(running)


def test_fhir_follows_the_default_auth_filter(default_policy: ServerProcess, pki: DemoPKI) -> None:
    response = verify(default_policy, pki.present("lunar", use="auth"), include_fhir=True)
    bundle = json.loads(response.fhir_json)
    (entry,) = bundle["entry"]  # no Coverage: AMO and AMC are not disclosed for auth
    patient = entry["resource"]
    assert patient["identifier"][0]["value"] == response.person.ins.matricule
    for absent in ("name", "gender", "birthDate", "_birthDate"):
        assert absent not in patient


@pytest.mark.slow
def test_unknown_caller_is_permission_denied(pki: DemoPKI, tmp_path: Path) -> None:
    running = serve_with(pki, tmp_path, '[[callers]]\nid = "his-1"\n')
    try:
        with pytest.raises(grpc.RpcError) as denied:
            verify(running, pki.present("alice"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "caller 'anonymous' is not in the callers table" in (denied.value.details() or "")
    finally:
        stop_server(running)


@pytest.mark.slow
def test_star_entry_covers_unlisted_callers(pki: DemoPKI, tmp_path: Path) -> None:
    running = serve_with(pki, tmp_path, '[[callers]]\nid = "*"\nuses = ["auth"]\n')
    try:
        assert reason(verify(running, pki.present("alice", use="auth"))) == "OK"
        refused = verify(running, pki.present("alice", use="care"))
        assert reason(refused) == "PURPOSE_NOT_ALLOWED"
    finally:
        stop_server(running)


def test_scanned_at_needs_permission(default_policy: ServerProcess, pki: DemoPKI) -> None:
    with pytest.raises(grpc.RpcError) as denied:
        verify(default_policy, pki.present("alice"), scanned_at=int(time.time()) - 30)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not send scanned_at" in (denied.value.details() or "")


@pytest.fixture
def edge_policy(pki: DemoPKI, tmp_path: Path) -> Iterator[ServerProcess]:
    config = """
[[callers]]
id = "anonymous"
may_send_scanned_at = true
max_scan_delay_seconds = 3600
"""
    running = serve_with(pki, tmp_path, config, "edge")
    yield running
    stop_server(running)


def test_delayed_scan_judges_freshness_at_scan_time(
    edge_policy: ServerProcess, pki: DemoPKI
) -> None:
    now = int(time.time())
    scanned_at = now - 1800
    # Made at the scan and expired by now: fresh at scan time (docs/profile.md §7.5), so accepted.
    stale = pki.present("alice", iat=scanned_at - 10, exp=scanned_at + 110)
    assert reason(verify(edge_policy, stale)) == "PRESENTATION_EXPIRED"
    assert reason(verify(edge_policy, stale, scanned_at=scanned_at, reader_id="edge-7")) == "OK"


def test_scan_time_outside_the_allowed_delay(edge_policy: ServerProcess, pki: DemoPKI) -> None:
    now = int(time.time())
    too_old = now - 7200
    response = verify(
        edge_policy, pki.present("alice", iat=too_old, exp=too_old + 120), scanned_at=too_old
    )
    assert (response.decision, reason(response)) == (
        verifier_pb2.DECISION_REJECTED,
        "SCAN_TIME_INVALID",
    )
    future = verify(edge_policy, pki.present("alice"), scanned_at=now + 3600)
    assert reason(future) == "SCAN_TIME_INVALID"


def test_revocation_is_judged_at_verification_time(pki: DemoPKI, tmp_path: Path) -> None:
    now = int(time.time())
    scanned_at = now - 600
    stale = pki.present("alice", iat=scanned_at - 10, exp=scanned_at + 110)
    pki.revoke(pki.holder("alice").status_index)  # revoked after the scan
    config = '[[callers]]\nid = "anonymous"\nmay_send_scanned_at = true\n'
    config += "max_scan_delay_seconds = 3600\n"
    running = serve_with(pki, tmp_path, config, "revoked")
    try:
        assert reason(verify(running, stale, scanned_at=scanned_at)) == "REVOKED"
    finally:
        stop_server(running)
