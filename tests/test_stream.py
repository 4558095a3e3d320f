"""VerifyStream: ids echoed in request order, per-item rejection, a bounded read-ahead window,
half-close and cancellation; one core call per micro-batch, same replay and audit as the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import Config
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.observe.audit import AuditTrail
from apcv_verify.replay.memory import memory_replay_store
from apcv_verify.service.servicer import VerifierService
from apcv_verify.service.startup import ServerHandle, build_verifiers, start_server
from apcv_verify.trust.material import load_trust_material
from apcv_verify.trust.sources import TrustSource

from .conftest import pki_config, reason

Request = verifier_pb2.VerifyStreamRequest


def server_config(pki: DemoPKI, **server: Any) -> Config:
    return pki_config(pki, {f"server.{key}": value for key, value in server.items()})


def in_process_service(pki: DemoPKI, **server: Any) -> VerifierService:
    """The verifier service for ``pki`` with ``server`` settings, called directly (no gRPC)."""
    config = server_config(pki, **server)
    store = memory_replay_store(config.replay)
    trust = TrustSource(config, lambda material: build_verifiers(config, material, store))
    trust.seed(load_trust_material(config))
    return VerifierService(trust, config, AuditTrail.from_config(config))


@asynccontextmanager
async def serving(
    pki: DemoPKI, **server: Any
) -> AsyncIterator[tuple[ServerHandle, verifier_pb2_grpc.VerifierServiceStub]]:
    config = server_config(pki, **server)
    running = await start_server(config, load_trust_material(config))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, verifier_pb2_grpc.VerifierServiceStub(channel)
    finally:
        await running.stop(0)


def scan(request_id: str, presentation: str = "", reader_id: str = "edge-1") -> verifier_pb2.Scan:
    message = verifier_pb2.Scan(request_id=request_id)
    message.reader.reader_id = reader_id
    if presentation:
        message.qr_text = presentation
    return message


def request(request_id: str, presentation: str = "", reader_id: str = "edge-1") -> Request:
    """A VerifyStream request."""
    return Request(scan=scan(request_id, presentation, reader_id))


def unary(
    request_id: str, presentation: str = "", reader_id: str = "edge-1"
) -> verifier_pb2.VerifyRequest:
    """The same scan as a Verify request."""
    return verifier_pb2.VerifyRequest(scan=scan(request_id, presentation, reader_id))


def refused_items(running: ServerHandle, method: str = "VerifyStream") -> dict[str, float]:
    """``apcv_refused_items_total`` of ``method`` by reason (the reasons counted)."""
    assert running.metrics is not None
    return {
        sample.labels["reason"]: sample.value
        for family in running.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "apcv_refused_items_total" and sample.labels["method"] == method
    }


def verifications(running: ServerHandle, method: str = "VerifyStream") -> float:
    assert running.metrics is not None
    total = 0.0
    for family in running.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "apcv_verifications_total" and sample.labels["method"] == method:
                total += sample.value
    return total


def gauge(running: ServerHandle, name: str) -> float | None:
    assert running.metrics is not None
    return running.metrics.registry.get_sample_value(name)


def test_responses_echo_ids_in_request_order_and_a_bad_item_keeps_the_stream(
    pki: DemoPKI,
) -> None:
    samples = pki.samples()
    code = qr_text(pki.present("alice"))
    sent = [
        request("s-0", qr_text(samples["accepted"])),
        request("s-1", qr_text(samples["expired"])),
        request("s-2"),  # no presentation: rejected in place, the stream goes on
        request("s-3", code, "edge-1"),
        request("s-4", code, "edge-1"),  # same reader: a retry
        request("s-5", code, "edge-2"),  # another reader: a replay
        request("s-6", "APCV1:%%%%"),
    ]

    async def scenario() -> list[verifier_pb2.Verdict]:
        async with serving(pki) as (running, stub):
            call = stub.VerifyStream(iter(sent), timeout=30)
            responses = [response.verdict async for response in call]
            assert await call.code() == grpc.StatusCode.OK  # half-close ended the stream
            assert verifications(running) == 6  # the bad item is no verification
            assert gauge(running, "apcv_inflight_streams") == 0
            return responses

    responses = asyncio.run(scenario())
    assert [response.request_id for response in responses] == [f"s-{i}" for i in range(7)]
    assert [reason(response) for response in responses] == [
        "OK",
        "CREDENTIAL_EXPIRED",
        "MALFORMED",
        "OK",
        "OK",
        "REPLAYED",
        "MALFORMED",
    ]
    assert responses[2].decision == verifier_pb2.DECISION_REJECTED
    assert responses[2].detail == "scan.presentation: no qr_text or nfc_bytes"
    assert [response.duplicate for response in responses[3:6]] == [False, True, False]
    assert responses[0].person.identity.birth_name  # the default caller sees the traits


def test_arrived_requests_go_to_the_core_together(
    pki: DemoPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that have arrived form one micro-batch: one core call, not one per item."""
    import apcv_verify.service.servicer as servicer_module

    sizes: list[int] = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(function: Any, scans: list[Any], *args: Any) -> Any:
        sizes.append(len(scans))
        return await real_to_thread(function, scans, *args)

    monkeypatch.setattr(servicer_module.asyncio, "to_thread", counting_to_thread)
    # Every core call through the thread hop, where it is counted (a micro-batch of one or
    # two is otherwise verified on the event loop).
    monkeypatch.setattr(servicer_module, "INLINE_SCANS", 0)
    codes = [qr_text(pki.present("alice")) for _ in range(3)]

    async def scenario() -> list[verifier_pb2.Verdict]:
        async with serving(pki, stream_window=64) as (_running, stub):
            sent = [request(f"m-{i}", codes[i % 3], f"edge-{i}") for i in range(50)]
            return [
                response.verdict async for response in stub.VerifyStream(iter(sent), timeout=30)
            ]

    responses = asyncio.run(scenario())
    assert [response.request_id for response in responses] == [f"m-{i}" for i in range(50)]
    assert sum(sizes) == 50
    assert len(sizes) < 50  # a client writing ahead is answered batch by batch
    assert max(sizes) <= 64


class FakeContext:
    """Just what VerifyStream uses of a ServicerContext, for counting what it reads."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def test_the_server_reads_at_most_the_window_ahead_and_cancellation_stops_reading(
    pki: DemoPKI,
) -> None:
    """A client that writes without reading responses makes the server stop reading at
    ``server.stream_window`` unanswered requests; closing the call stops the reading."""
    code = qr_text(pki.present("alice"))
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 1
            # As gRPC hands them to the servicer: encoded (the core decodes them).
            yield request(f"w-{read}", code).SerializeToString()

    def verdict(reply: bytes) -> verifier_pb2.Verdict:
        return verifier_pb2.VerifyStreamResponse.FromString(reply).verdict

    async def scenario() -> None:
        service = in_process_service(pki, stream_window=5)
        stream = service.VerifyStream(endless(), FakeContext())
        first = verdict(await anext(stream))  # the consumer of the responses then stalls
        assert first.request_id == "w-1"
        await asyncio.sleep(0.5)
        assert read == 5  # the window: 5 read and not yet answered, then no more
        for expected in range(2, 5):
            assert verdict(await anext(stream)).request_id == f"w-{expected}"
        await asyncio.sleep(0.2)
        assert read == 8  # each response sent frees one place
        assert isinstance(stream, AsyncGenerator)  # VerifyStream is one: it has aclose()
        await stream.aclose()  # the call ends (cancelled): its reader is stopped
        await asyncio.sleep(0.2)
        assert read == 8

    asyncio.run(scenario())


def test_a_cancelled_stream_stops_and_the_server_goes_on(pki: DemoPKI) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki) as (running, stub):
            call = stub.VerifyStream(timeout=30)
            await call.write(request("c-0", code))
            assert (await call.read()).verdict.request_id == "c-0"
            assert gauge(running, "apcv_inflight_streams") == 1
            call.cancel()
            for _ in range(50):
                if gauge(running, "apcv_inflight_streams") == 0:
                    break
                await asyncio.sleep(0.05)
            assert gauge(running, "apcv_inflight_streams") == 0
            again = (await stub.Verify(unary("c-1", code, "edge-1"), timeout=10)).verdict
            assert reason(again) == "OK" and again.duplicate

    asyncio.run(scenario())


def test_a_stream_past_its_deadline_ends_with_deadline_exceeded(pki: DemoPKI) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki) as (_running, stub):
            call = stub.VerifyStream(timeout=0.5)
            await call.write(request("d-0", code))
            assert (await call.read()).verdict.request_id == "d-0"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()  # the client neither writes nor half-closes
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(scenario())


def test_scanned_at_without_the_right_is_answered_in_place_and_the_stream_goes_on(
    pki: DemoPKI,
) -> None:
    """An item with scanned_at from a caller without that right (the default caller) is
    answered in place, MALFORMED with the field and SCANNED_AT_NOT_ALLOWED in its detail; the
    items behind it are verified as usual and the stream ends OK."""
    code = qr_text(pki.present("alice"))
    later = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki) as (_running, stub):
            call = stub.VerifyStream(timeout=30)
            await call.write(request("p-0", code))
            assert (await call.read()).verdict.request_id == "p-0"
            delayed = request("p-1", later)
            delayed.scan.scanned_at.GetCurrentTime()
            await call.write(delayed)
            refused = (await call.read()).verdict
            assert (refused.request_id, refused.decision, refused.reason) == (
                "p-1",
                verifier_pb2.DECISION_REJECTED,
                verifier_pb2.REASON_MALFORMED,
            )
            assert refused.detail == (
                "scan.scanned_at: not allowed for this caller (SCANNED_AT_NOT_ALLOWED)"
            )
            await call.write(request("p-2", later))  # the same scan, without scanned_at
            after = (await call.read()).verdict
            assert (after.request_id, after.reason) == ("p-2", verifier_pb2.REASON_OK)
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK

    asyncio.run(scenario())
