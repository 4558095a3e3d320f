"""VerifyBatch over real gRPC: ordered, bounded, one core call per batch, unusable items
answered in place."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, qr_text, tamper_signature

from .conftest import ServerProcess, start_server, stop_server, write_config

Scan = verifier_pb2.Scan
Reader = verifier_pb2.ReaderContext


def item(request_id: str, presentation: str | bytes, reader_id: str = "edge-1") -> Scan:
    request = Scan(request_id=request_id, reader=Reader(reader_id=reader_id))
    if isinstance(presentation, str):
        request.qr_text = presentation
    else:
        request.nfc_bytes = presentation
    return request


def verify_batch(server: ServerProcess, items: list[Scan]) -> list[verifier_pb2.Verdict]:
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        reply = stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(scans=items), timeout=30)
        return list(reply.verdicts)


def reasons(responses: list[verifier_pb2.Verdict]) -> list[str]:
    return [
        verifier_pb2.Reason.Name(response.reason).removeprefix("REASON_") for response in responses
    ]


def test_responses_come_in_request_order(server: ServerProcess, pki: DemoPKI) -> None:
    now = int(time.time())
    samples = pki.samples(now=now)
    items = [
        item("b-0", qr_text(samples["accepted"])),
        item("b-1", qr_text(samples["expired"])),
        item("b-2", pki.present("family", ben=1)),
        item("b-3", "APCV1:%%%%"),
        item("b-4", qr_text(samples["tampered"])),
        item("b-5", qr_text(pki.present("lunar"))),
    ]
    responses = verify_batch(server, items)
    assert [response.request_id for response in responses] == [f"b-{i}" for i in range(6)]
    assert reasons(responses) == [
        "OK",
        "CREDENTIAL_EXPIRED",
        "OK",
        "MALFORMED",
        "BAD_DEVICE_SIGNATURE",
        "OK",
    ]
    assert responses[2].person.rank == 1
    assert responses[5].person.identity.birth_date == "1957-00-00"
    assert not responses[1].HasField("person")


def test_replay_is_judged_in_batch_order(server: ServerProcess, pki: DemoPKI) -> None:
    code = qr_text(pki.present("alice"))
    responses = verify_batch(
        server,
        [item("r-0", code, "edge-1"), item("r-1", code, "edge-1"), item("r-2", code, "edge-2")],
    )
    assert reasons(responses) == ["OK", "OK", "REPLAYED"]
    assert [response.duplicate for response in responses] == [False, True, False]
    # The batch shares the replay store with single calls.
    with server.channel() as channel:
        single = (
            verifier_pb2_grpc.VerifierServiceStub(channel)
            .Verify(verifier_pb2.VerifyRequest(scan=item("r-3", code, "desk-3")), timeout=10)
            .verdict
        )
    assert verifier_pb2.Reason.Name(single.reason).removeprefix("REASON_") == "REPLAYED"


def test_batch_and_single_verify_agree(server: ServerProcess, pki: DemoPKI) -> None:
    tampered = tamper_signature(pki.present("corsica"))
    (batched,) = verify_batch(server, [item("one", tampered)])
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        request = verifier_pb2.VerifyRequest(scan=item("two", tampered))
        single = stub.Verify(request, timeout=10).verdict
        # The same request again is not verified again: its answer is the batch's, resent.
        again = stub.Verify(verifier_pb2.VerifyRequest(scan=item("one", tampered)), timeout=10)
    assert (single.request_id, batched.request_id) == ("two", "one")
    single.request_id = "one"
    assert batched == single
    assert again.verdict.resent
    again.verdict.ClearField("resent")
    assert again.verdict == batched


def test_an_empty_batch_is_invalid_argument(server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as empty:
        verify_batch(server, [])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty batch" in (empty.value.details() or "")


def test_default_bound_is_1000(server: ServerProcess) -> None:
    garbage = [item(f"g-{i}", "APCV1:") for i in range(1000)]
    assert set(reasons(verify_batch(server, garbage))) == {"MALFORMED"}
    with pytest.raises(grpc.RpcError) as over:
        verify_batch(server, [*garbage, item("g-1000", "APCV1:")])
    assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 1000 (server.max_batch)" in (over.value.details() or "")


@pytest.mark.slow
def test_configured_bound(pki: DemoPKI, tmp_path: Path) -> None:
    config = write_config(tmp_path / "apcv.toml", "[server]\nmax_batch = 2\n")
    small = start_server(
        pki.directory, tmp_path / "small.log", "--allow-test-identities", "--config", str(config)
    )
    try:
        assert reasons(verify_batch(small, [item("a", "APCV1:"), item("b", "APCV1:")])) == [
            "MALFORMED",
            "MALFORMED",
        ]
        with pytest.raises(grpc.RpcError) as over:
            verify_batch(small, [item(str(i), "APCV1:") for i in range(3)])
        assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop_server(small)


def test_grpcurl_verify_batch(server: ServerProcess, pki: DemoPKI, grpcurl: str) -> None:
    import json
    import subprocess

    code = qr_text(pki.present("alice"))
    body = {
        "scans": [
            {"request_id": "g-0", "qr_text": code, "reader": {"reader_id": "edge-1"}},
            {"request_id": "g-1", "qr_text": code, "reader": {"reader_id": "edge-2"}},
        ]
    }
    completed = subprocess.run(
        [grpcurl, "-plaintext", "-d", json.dumps(body), server.address,
         "apcv.verify.v1.VerifierService/VerifyBatch"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    verdicts = json.loads(completed.stdout)["verdicts"]
    assert [(v["request_id"], v["reason"]) for v in verdicts] == [
        ("g-0", "REASON_OK"),
        ("g-1", "REASON_REPLAYED"),
    ]
