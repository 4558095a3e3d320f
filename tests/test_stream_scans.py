"""VerifyStream requests that carry several scans (``VerifyStreamRequest.scans``): one response
each, ``verdicts[i]`` answering ``scans[i]``, in stream order with one-scan requests; bad
scans, both fields, too many scans and oversize messages answered as the contract says; the
micro-batch cap, answer recovery, audit and metrics counted per scan, messages per message."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.service.servicer import VerifierService
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .conftest import free_port, metric, reason, start_server, stop_server
from .test_stream import (
    FakeContext,
    gauge,
    in_process_service,
    refused_items,
    request,
    scan,
    serving,
    verifications,
)

Request = verifier_pb2.VerifyStreamRequest
Response = verifier_pb2.VerifyStreamResponse


def several(*scans: verifier_pb2.Scan) -> Request:
    return Request(scans=scans)


async def exchange(
    stub: verifier_pb2_grpc.VerifierServiceStub, sent: list[Request]
) -> tuple[list[Response], grpc.StatusCode]:
    """Every response to ``sent`` (written, then half-closed), and how the stream ended."""
    call = stub.VerifyStream(iter(sent), timeout=30)
    responses: list[Response] = []
    try:
        async for response in call:
            responses.append(response)
    except grpc.aio.AioRpcError:
        pass
    return responses, await call.code()


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The call's ErrorInfo, as a client reads it with grpcio-status."""
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def details(verdicts: Any) -> list[tuple[str, str, str]]:
    return [(verdict.request_id, reason(verdict), verdict.detail) for verdict in verdicts]


def test_a_request_of_several_scans_gets_one_response_in_stream_order(pki: DemoPKI) -> None:
    """One response per request, in request order; ``verdicts[i]`` answers ``scans[i]``;
    replay is judged in stream order across and within requests; a bad scan is answered in
    place under its index, the others verified."""
    samples = pki.samples()
    code = qr_text(pki.present("alice"))
    sent = [
        request("a-0", qr_text(samples["accepted"])),
        several(
            scan("b-0", code, "edge-1"),
            scan("b-1", qr_text(samples["expired"])),
            scan("", code),  # no request_id: in place, under its index
            scan("b-3", code, "edge-2"),  # the code of b-0 from another reader: a replay
        ),
        request("c-0", code, "edge-1"),  # a retry from b-0's reader
        several(scan("d-0", qr_text(pki.present("alice")))),
    ]

    async def scenario() -> list[Response]:
        async with serving(pki) as (running, stub):
            responses, code_ = await exchange(stub, sent)
            assert code_ == grpc.StatusCode.OK
            assert verifications(running) == 6  # per scan, the unusable one not counted
            return responses

    a, b, c, d = asyncio.run(scenario())
    assert (a.verdict.request_id, reason(a.verdict), list(a.verdicts)) == ("a-0", "OK", [])
    assert not b.HasField("verdict")
    assert details(b.verdicts) == [
        ("b-0", "OK", b.verdicts[0].detail),
        ("b-1", "CREDENTIAL_EXPIRED", b.verdicts[1].detail),
        ("", "MALFORMED", "scans[2].request_id: required"),
        ("b-3", "REPLAYED", b.verdicts[3].detail),
    ]
    assert b.verdicts[0].person.identity.birth_name  # the same disclosure as one by one
    assert (c.verdict.request_id, reason(c.verdict), c.verdict.duplicate) == ("c-0", "OK", True)
    assert details(d.verdicts)[0][:2] == ("d-0", "OK")


def test_both_fields_or_too_many_scans_are_answered_in_place_and_the_stream_goes_on(
    pki: DemoPKI,
) -> None:
    code = qr_text(pki.present("alice"))
    later = qr_text(pki.present("alice"))
    both = Request(scan=scan("x-0", code), scans=[scan("x-1", code), scan("x-2", code)])
    too_many = several(*(scan(f"y-{i}", code, f"edge-{i}") for i in range(4)))
    # An invalid UTF-8 request_id: this scan is not a valid Scan encoding, the other is.
    broken = several(scan("z-0", later)).SerializeToString() + bytes.fromhex("120412029fff")

    async def scenario() -> list[Response]:
        async with (
            serving(pki, max_batch=3) as (running, _stub),
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            raw = channel.stream_stream(  # the requests as written, some not encodable
                "/apcv.verify.v1.VerifierService/VerifyStream",
                request_serializer=None,
                response_deserializer=Response.FromString,
            )
            sent = [both.SerializeToString(), too_many.SerializeToString(), broken]
            sent += [Request().SerializeToString(), request("w-0", code).SerializeToString()]
            responses = [response async for response in raw(iter(sent), timeout=30)]
            assert verifications(running) == 2  # z-0 and w-0 alone
            # The others counted by why, each code from a closed set (no id in a label).
            assert refused_items(running) == {
                "SCAN_AND_SCANS": 3,
                "BATCH_TOO_LARGE": 4,
                "SCAN_UNDECODABLE": 1,
                "PRESENTATION_MISSING": 1,
            }
            return responses

    both_reply, too_many_reply, broken_reply, empty_reply, last = asyncio.run(scenario())
    assert details([both_reply.verdict]) == [
        ("x-0", "MALFORMED", "scan: set together with scans (send one or the other)")
    ]
    assert details(both_reply.verdicts) == [
        (f"x-{i}", "MALFORMED", "scans: set together with scan (send one or the other)")
        for i in (1, 2)
    ]
    assert details(too_many_reply.verdicts) == [
        (f"y-{i}", "MALFORMED", "scans: at most 3 scans per request (server.max_batch)"
         " (BATCH_TOO_LARGE)")
        for i in range(4)
    ]  # fmt: skip
    assert details(broken_reply.verdicts)[0][:2] == ("z-0", "OK")
    assert details(broken_reply.verdicts)[1] == (
        "",
        "MALFORMED",
        "scans[1]: not a valid protobuf encoding (for instance invalid UTF-8 in a string field)",
    )
    # Neither field: answered as an unusable one-scan request, as before.
    assert details([empty_reply.verdict]) == [
        ("", "MALFORMED", "scan.presentation: no qr_text or nfc_bytes")
    ]
    assert list(empty_reply.verdicts) == []
    assert (last.verdict.request_id, reason(last.verdict)) == ("w-0", "OK")


def test_scanned_at_without_the_right_is_refused_in_place_under_its_index(pki: DemoPKI) -> None:
    delayed = scan("t-1", qr_text(pki.present("alice")))
    delayed.scanned_at.GetCurrentTime()
    sent = [several(scan("t-0", qr_text(pki.present("alice"))), delayed)]

    async def scenario() -> list[Response]:
        async with serving(pki) as (running, stub):
            responses, code = await exchange(stub, sent)
            assert code == grpc.StatusCode.OK
            assert refused_items(running) == {"SCANNED_AT_NOT_ALLOWED": 1}
            return responses

    (reply,) = asyncio.run(scenario())
    assert details(reply.verdicts)[0][:2] == ("t-0", "OK")
    assert details(reply.verdicts)[1] == (
        "t-1",
        "MALFORMED",
        "scans[1].scanned_at: not allowed for this caller (SCANNED_AT_NOT_ALLOWED)",
    )


def test_a_micro_batch_takes_whole_requests_up_to_max_batch_scans(
    pki: DemoPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    answer = VerifierService._answer

    async def counting(self: VerifierService, method: str, batch: Any, *args: Any) -> Any:
        sizes.append(len(batch))  # the items of one core call
        return await answer(self, method, batch, *args)

    monkeypatch.setattr(VerifierService, "_answer", counting)
    codes = [qr_text(pki.present("alice")) for _ in range(3)]
    sent = [
        several(*(scan(f"m-{m}-{i}", codes[i % 3], f"edge-{m}-{i}") for i in range(4)))
        for m in range(12)
    ]

    async def scenario() -> list[Response]:
        async with serving(pki, max_batch=10) as (_running, stub):
            responses, code = await exchange(stub, sent)
            assert code == grpc.StatusCode.OK
            return responses

    responses = asyncio.run(scenario())
    assert [[v.request_id for v in r.verdicts] for r in responses] == [
        [f"m-{m}-{i}" for i in range(4)] for m in range(12)
    ]
    assert sum(sizes) == 48
    assert max(sizes) <= 8  # whole requests of 4, at most 10 scans per core call
    assert len(sizes) < 12  # requests that had arrived went to the core together


def test_size_bounds_of_stream_requests_and_responses(pki: DemoPKI) -> None:
    """A request with ``scans`` may pass 64 KiB (up to ``server.max_message_bytes``); one of
    one scan may not; a response over ``server.max_message_bytes`` ends the stream after the
    responses before it, naming the setting."""
    code = qr_text(pki.present("alice"))
    # 100 scans of about 900 bytes: over 64 KiB together.
    big = several(*(scan(f"big-{i}", code, f"edge-{i}") for i in range(100)))
    assert len(big.SerializeToString()) > 64 * 1024

    async def scenario() -> None:
        async with serving(pki) as (_running, stub):
            responses, code_ = await exchange(stub, [big])
            assert code_ == grpc.StatusCode.OK
            verdicts = responses[0].verdicts
            assert [v.request_id for v in verdicts] == [f"big-{i}" for i in range(100)]
            assert reason(verdicts[0]) == "OK"  # the others replay it from other readers
        async with serving(pki, max_message_bytes=32 * 1024) as (_running, stub):
            half = several(*big.scans[:50])  # over the setting, under gRPC's own limit (2 x)
            call = stub.VerifyStream(iter([request("s-0", code), half]), timeout=30)
            first = await call.read()
            assert first.verdict.request_id == "s-0"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(raised.value)
            assert info.reason == "MESSAGE_TOO_LARGE"
            assert info.metadata["setting"] == "server.max_message_bytes"
            assert info.metadata["limit"] == str(32 * 1024)
            assert (raised.value.details() or "").endswith(
                "send fewer scans per request or raise server.max_message_bytes"
            )
        # Responses with FHIR (several kB each) over the setting: the stream ends there.
        fhir = [scan(f"f-{i}", qr_text(pki.present("alice")), f"edge-{i}") for i in range(12)]
        for item in fhir:
            item.include_fhir = True
        async with serving(pki, max_message_bytes=16 * 1024) as (_running, stub):
            call = stub.VerifyStream(iter([request("s-0", code), several(*fhir)]), timeout=30)
            assert (await call.read()).verdict.request_id == "s-0"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(raised.value).reason == "MESSAGE_TOO_LARGE"
            assert re.fullmatch(
                r"stream response of \d+ bytes is over server\.max_message_bytes \(16384\):"
                r" send fewer scans per request \(include_fhir .*\) or raise"
                r" server\.max_message_bytes",
                raised.value.details() or "",
            )

    asyncio.run(scenario())


def test_a_one_scan_request_is_still_bounded_by_64_kib(pki: DemoPKI) -> None:
    big = request("big", "APCV1:" + "A" * (70 * 1024))

    async def scenario() -> None:
        async with serving(pki) as (_running, stub):
            call = stub.VerifyStream(iter([big]), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(raised.value)
            assert info.reason == "MESSAGE_TOO_LARGE" and "setting" not in info.metadata
            assert info.metadata["limit"] == str(64 * 1024)

    asyncio.run(scenario())


def test_the_window_counts_requests_and_the_memory_budget_their_bytes(pki: DemoPKI) -> None:
    """``server.stream_window`` bounds the requests read ahead, whatever their scans; the
    budget holds each request's bytes until it is answered, and has them back at the end."""
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 1
            codes = [qr_text(pki.present("alice")) for _ in range(5)]
            yield several(*(scan(f"w-{read}-{i}", codes[i]) for i in range(5))).SerializeToString()

    async def window() -> None:
        service = in_process_service(pki, stream_window=2)
        stream = service.VerifyStream(endless(), FakeContext())
        first = Response.FromString(await anext(stream))
        assert [v.request_id for v in first.verdicts] == [f"w-1-{i}" for i in range(5)]
        await asyncio.sleep(0.3)
        assert read == 2  # two requests of five scans read ahead, then no more
        assert len(Response.FromString(await anext(stream)).verdicts) == 5
        await asyncio.sleep(0.2)
        assert read == 3  # one response sent frees one place
        assert isinstance(stream, AsyncGenerator)  # VerifyStream is one: it has aclose()
        await stream.aclose()

    asyncio.run(window())
    code = qr_text(pki.present("alice"))
    message = several(*(scan(f"h-{i}", code) for i in range(5)))

    async def budget() -> None:
        async with serving(pki, stream_window=2) as (running, stub):
            call = stub.VerifyStream(timeout=30)
            for _ in range(2):
                await call.write(message)
            first, second = await call.read(), await call.read()
            assert [reason(v) for v in first.verdicts] == ["OK"] + ["OK"] * 4  # retries
            assert all(v.resent for v in second.verdicts)  # the same requests again
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            assert gauge(running, "apcv_stream_buffered_bytes") == 0

    asyncio.run(budget())


def test_audit_metrics_and_answer_recovery_count_scans(pki: DemoPKI, tmp_path: Path) -> None:
    """Through ``apcv-verify serve``: one audit record per scan, numbered along the stream;
    ``apcv_verifications_total`` per scan, ``grpc_server_msg_received_total`` per message; a
    resent scan gets its kept answer (``resent``), another presentation under a used id is
    refused in place under its index."""
    metrics_port = free_port()
    log = tmp_path / "server.log"
    server = start_server(
        pki.directory,
        log,
        "--allow-test-identities",
        env={"APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
    )
    try:
        codes = [qr_text(pki.present("alice")) for _ in range(3)]
        first = [
            request("r-0", codes[0]),
            several(scan("r-1", codes[1]), scan("r-2", codes[2])),
        ]
        again = [
            several(scan("r-1", codes[1]), scan("r-0", qr_text(pki.present("alice")))),
        ]

        async def scenario() -> tuple[list[Response], list[Response]]:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = verifier_pb2_grpc.VerifierServiceStub(channel)
                one, _ = await exchange(stub, first)
                two, _ = await exchange(stub, again)
                return one, two

        one, two = asyncio.run(scenario())
        assert [reason(one[0].verdict)] + [reason(v) for v in one[1].verdicts] == ["OK"] * 3
        resent, reused = two[0].verdicts
        assert (resent.request_id, reason(resent), resent.resent) == ("r-1", "OK", True)
        assert details([reused]) == [
            (
                "r-0",
                "MALFORMED",
                "scans[1].request_id: already used for another presentation by this caller"
                " and reader (REQUEST_ID_REUSED)",
            )
        ]
        labels = {
            "grpc_type": "bidi_stream",
            "grpc_service": "apcv.verify.v1.VerifierService",
            "grpc_method": "VerifyStream",
        }
        received = metric(metrics_port, "grpc_server_msg_received_total", **labels)
        assert received == 3  # messages, not scans
        assert metric(metrics_port, "grpc_server_msg_sent_total", **labels) == 3
        verified = metric(
            metrics_port,
            "apcv_verifications_total",
            method="VerifyStream",
            decision="ACCEPTED",
            reason="OK",
        )
        assert verified == 4  # three verified, one resent
    finally:
        stop_server(server)
    records = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"kind": "audit"' in line
    ]
    streamed = [(r["request_id"], r.get("item"), r.get("resent", False)) for r in records]
    assert streamed == [("r-0", 0, False), ("r-1", 1, False), ("r-2", 2, False), ("r-1", 0, True)]
