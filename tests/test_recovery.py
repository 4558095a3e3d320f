"""Answer recovery (docs/integration.md "Answer recovery"): a resend with the same caller,
reader id and request id gets the answer given the first time, marked ``resent``, even once
the presentation has expired or the status lists have changed; another presentation under a
request id already answered is refused, never answered over the first. Real ``apcv-verify
serve`` processes, with the in-process store and with a real ``redis-server`` on loopback."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, qr_text
from grpc_status import rpc_status

from .conftest import (
    RedisServer,
    ServerProcess,
    free_port,
    metric,
    personal_values,
    reason,
    start_server,
    stop_server,
    verify,
)

#: Small, so that a presentation expires within seconds (exp + skew).
SKEW = 1
#: The status lists are read again this often (seconds).
REFRESH = "0.3"

D = verifier_pb2


def serve(
    pki: DemoPKI, log: Path, redis_server: RedisServer | None = None, **env: str
) -> tuple[ServerProcess, int]:
    metrics_port = free_port()
    settings = {
        "APCV_POLICY_CLOCK_SKEW_SECONDS": str(SKEW),
        "APCV_TRUST_REFRESH_SECONDS": REFRESH,
        "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        **env,
    }
    if redis_server is not None:
        settings |= {"APCV_REPLAY_BACKEND": "redis", "APCV_REPLAY_REDIS_URL": redis_server.url}
    server = start_server(pki.directory, log, "--allow-test-identities", env=settings)
    return server, metrics_port


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(
    backend: str, pki: DemoPKI, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerProcess, int]]:
    redis_server = request.getfixturevalue("redis_server") if backend == "redis" else None
    server, port = serve(pki, tmp_path / "server.log", redis_server)
    yield server, port
    stop_server(server)


def scan(presentation: bytes, request_id: str, reader_id: str = "desk-1") -> verifier_pb2.Scan:
    return verifier_pb2.Scan(
        request_id=request_id,
        qr_text=qr_text(presentation),
        reader=verifier_pb2.ReaderContext(reader_id=reader_id),
    )


def audit(log: Path) -> list[dict[str, object]]:
    records = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"kind": "audit"' in line:
            records.append(json.loads(line))
    return records


def without_ids(bundle: str) -> str:
    return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", bundle)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_resend_gets_the_original_answer_after_expiry_and_revocation(
    served: tuple[ServerProcess, int], pki: DemoPKI
) -> None:
    server, metrics_port = served
    alice = pki.holder("alice")
    now = int(time.time())
    presentation = pki.present("alice", iat=now, exp=now + 1)
    first = verify(server, qr_text(presentation), request_id="h-1", include_fhir=True)
    assert (first.decision, reason(first), first.resent) == (D.DECISION_ACCEPTED, "OK", False)
    assert first.person.ins.matricule
    # The presentation expires (exp + skew), and the credential is revoked meanwhile.
    pki.revoke(alice.status_index, uri=alice.status_uri, now=int(time.time()) + 1)
    time.sleep(SKEW + 2.5)
    judged = verify(server, qr_text(presentation), request_id="h-2")
    assert reason(judged) in {"PRESENTATION_EXPIRED", "REVOKED"}
    again = verify(server, qr_text(presentation), request_id="h-1", include_fhir=True)
    assert (again.decision, reason(again), again.resent) == (D.DECISION_ACCEPTED, "OK", True)
    assert again.duplicate is False  # the original answer's flag
    # The FHIR bundle is the original's (its time too), but for its fresh resource ids.
    assert without_ids(again.fhir_json) == without_ids(first.fhir_json)
    for verdict in (first, again):
        verdict.ClearField("resent")
        verdict.ClearField("fhir_json")
    assert again == first  # the person and the rest of the answer
    # Another reader or another caller's request id is another request.
    other_reader = verify(server, qr_text(presentation), "desk-2", request_id="h-1")
    assert (reason(other_reader), other_reader.resent) != ("OK", True)
    wait_until(lambda: metric(metrics_port, "apcv_answers_resent_total") == 1)

    def resent_in_audit() -> list[tuple[object, object]]:
        return [(r["request_id"], r["reason"]) for r in audit(server.log_path) if r.get("resent")]

    wait_until(lambda: resent_in_audit() == [("h-1", "OK")])


@pytest.mark.slow
def test_another_presentation_under_a_used_request_id_is_refused(
    served: tuple[ServerProcess, int], pki: DemoPKI
) -> None:
    server, metrics_port = served
    first_code = qr_text(pki.present("alice"))
    second_code = qr_text(pki.present("alice"))
    first = verify(server, first_code, request_id="x-1")
    assert reason(first) == "OK"
    with pytest.raises(grpc.RpcError) as refused:
        verify(server, second_code, request_id="x-1")
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    status = rpc_status.from_call(refused.value)
    assert status is not None
    assert "REQUEST_ID_REUSED" in str(status.details[0].value)
    # The first answer is kept: its resend still gets it.
    again = verify(server, first_code, request_id="x-1")
    assert (reason(again), again.resent) == ("OK", True)
    # The second presentation was not used up: under a new request id it is accepted.
    assert (reason(verify(server, second_code, request_id="x-2")), False) == ("OK", False)
    # In a batch: answered in place, the other items verified (or recovered) as usual.
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        batch = stub.VerifyBatch(
            verifier_pb2.VerifyBatchRequest(
                scans=[
                    scan(pki.present("alice"), "x-1"),
                    scan(pki.present("alice"), "x-3"),
                    verifier_pb2.Scan(
                        request_id="x-2",
                        qr_text=second_code,
                        reader=verifier_pb2.ReaderContext(reader_id="desk-1"),
                    ),
                ]
            ),
            timeout=10,
        )
    reused, fresh, resent = batch.verdicts
    assert (reused.request_id, reused.decision, reason(reused)) == (
        "x-1",
        D.DECISION_REJECTED,
        "MALFORMED",
    )
    assert reused.detail == (
        "scans[0].request_id: already used for another presentation by this caller and reader"
        " (REQUEST_ID_REUSED)"
    )
    assert (reason(fresh), fresh.resent) == ("OK", False)
    assert (reason(resent), resent.resent) == ("OK", True)
    wait_until(lambda: metric(metrics_port, "apcv_request_id_reused_total") == 2)


@pytest.mark.slow
def test_the_same_request_twice_in_one_batch_is_answered_once(
    served: tuple[ServerProcess, int], pki: DemoPKI
) -> None:
    server, _ = served
    presentation = pki.present("alice")
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        batch = stub.VerifyBatch(
            verifier_pb2.VerifyBatchRequest(
                scans=[scan(presentation, "t-1"), scan(presentation, "t-1")]
            ),
            timeout=10,
        )
    first, second = batch.verdicts
    assert (reason(first), first.resent, first.duplicate) == ("OK", False, False)
    assert (reason(second), second.resent, second.duplicate) == ("OK", True, False)


@pytest.mark.slow
def test_a_refused_answer_is_recovered_as_refused(
    served: tuple[ServerProcess, int], pki: DemoPKI
) -> None:
    """A REPLAYED answer stays the answer of that request, even once the presentation is
    no longer in the replay store."""
    server, _ = served
    presentation = pki.present("alice")
    assert reason(verify(server, qr_text(presentation), "desk-1", request_id="a")) == "OK"
    replayed = verify(server, qr_text(presentation), "desk-2", request_id="b")
    assert (reason(replayed), replayed.person.ByteSize()) == ("REPLAYED", 0)
    again = verify(server, qr_text(presentation), "desk-2", request_id="b")
    assert (reason(again), again.resent, again.detail) == ("REPLAYED", True, replayed.detail)
    assert not again.HasField("person")


@pytest.mark.slow
def test_redis_keeps_answers_across_a_server_restart_without_personal_data(
    pki: DemoPKI, tmp_path: Path, redis_server: RedisServer
) -> None:
    server, _ = serve(pki, tmp_path / "one.log", redis_server)
    now = int(time.time())
    presentation = pki.present("alice", iat=now, exp=now + 1)
    try:
        first = verify(server, qr_text(presentation), request_id="keep-1")
        assert reason(first) == "OK"
    finally:
        stop_server(server)
    time.sleep(SKEW + 2.5)  # expired by now
    server, _ = serve(pki, tmp_path / "two.log", redis_server)
    try:
        again = verify(server, qr_text(presentation), request_id="keep-1")
        assert (reason(again), again.resent) == ("OK", True)
        first.ClearField("resent")
        again.ClearField("resent")
        assert again == first
    finally:
        stop_server(server)
    client = redis_server.client()
    kept = {key: client.get(key) for key in client.keys("apcv:replay:answer:*")}
    assert len(kept) == 1
    ((key, value),) = kept.items()
    assert 0 < client.ttl(key) <= 86_400
    # redis-py types replies str | bytes; without decode_responses they are bytes.
    assert isinstance(key, bytes) and isinstance(value, bytes) and len(value) < 64
    stored = [client.get(k) or b"" for k in client.keys("*")]
    assert all(isinstance(v, bytes) for v in stored)
    dump = b"".join([key, value, *(v for v in stored if isinstance(v, bytes))])
    for personal in [*personal_values(pki), "keep-1", "desk-1", "anonymous"]:
        assert personal.encode() not in dump
