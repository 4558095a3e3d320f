"""No connection, caller or stream takes the whole server: per-connection and per-caller call
limits, health counted apart, the idle-stream timeout and the memory budget of stream
read-ahead (docs/operations.md "Limits", "Streams that hold memory"), and the bound on calls
waiting for the process (docs/operations.md "Past capacity"). The first test and the last
two use a real ``apcv-verify serve`` process on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, qr_text
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import free_port, scrape, start_server, stop_server, value
from .test_contract import status_details
from .test_stream import reason, request, serving, unary
from .test_verdict_bytes import field

IDLE_STREAMS = 1000


def own_connection(address: str) -> grpc.aio.Channel:
    """A channel with a TCP connection of its own (channels to one target share one else)."""
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


async def health_status(address: str) -> int:
    async with own_connection(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        return int(reply.status)


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_thousand_idle_streams_from_one_client_lock_out_no_one(
    pki: DemoPKI, tmp_path: Path
) -> None:
    metrics_port, health_port = free_port(), free_port()
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={
            "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "APCV_SERVER_HEALTH_LISTEN": f"127.0.0.1:{health_port}",
        },
    )
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with own_connection(server.address) as hog:
            stub = verifier_pb2_grpc.VerifierServiceStub(hog)
            streams = [stub.VerifyStream() for _ in range(IDLE_STREAMS)]
            # The streams over the per-connection limit end at once; writing to them is no
            # INTERNAL error but the documented, retryable RESOURCE_EXHAUSTED.
            ended, held = await asyncio.wait(
                [asyncio.ensure_future(stream.code()) for stream in streams], timeout=15
            )
            assert len(held) == 100 and len(ended) == IDLE_STREAMS - 100
            refused = [s for s in streams if s.done()]
            assert {await s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await refused[0].read()
            info, _violations = status_details(error.value)
            assert info.reason == "TOO_MANY_CALLS"
            assert dict(info.metadata) == {
                "setting": "server.max_streams_per_connection",
                "limit": "100",
            }
            # Meanwhile another client verifies, and health answers on both ports.
            async with own_connection(server.address) as other:
                answer = await verifier_pb2_grpc.VerifierServiceStub(other).Verify(
                    unary("other", code, "desk-2"), timeout=10
                )
                assert reason(answer.verdict) == "OK"
                stream = verifier_pb2_grpc.VerifierServiceStub(other).VerifyStream(timeout=10)
                await stream.write(request("other-stream", code, "desk-2"))
                assert (await stream.read()).verdict.duplicate
                await stream.done_writing()
                assert await stream.code() == grpc.StatusCode.OK
            serving_status = health_pb2.HealthCheckResponse.SERVING
            assert await health_status(server.address) == serving_status
            assert await health_status(f"127.0.0.1:{health_port}") == serving_status
            found = scrape(metrics_port)
            assert value(found, "apcv_inflight_streams") == 100
            limit = "server.max_streams_per_connection"
            assert value(found, "apcv_calls_refused_total", limit=limit) == IDLE_STREAMS - 100
            assert (
                value(
                    found,
                    "apcv_call_errors_total",
                    grpc_service="apcv.verify.v1.VerifierService",
                    grpc_method="VerifyStream",
                    grpc_code="RESOURCE_EXHAUSTED",
                    reason="TOO_MANY_CALLS",
                )
                == IDLE_STREAMS - 100
            )
            handled = {
                "grpc_type": "bidi_stream",
                "grpc_service": "apcv.verify.v1.VerifierService",
                "grpc_method": "VerifyStream",
                "grpc_code": "RESOURCE_EXHAUSTED",
            }
            assert value(found, "grpc_server_handled_total", **handled) == IDLE_STREAMS - 100
            for held_stream in streams:
                held_stream.cancel()

    try:
        asyncio.run(scenario())
    finally:
        stop_server(server)


def test_a_caller_is_limited_over_all_its_connections_and_health_is_counted_apart(
    pki: DemoPKI,
) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(
            pki, max_concurrent_rpcs=4, max_streams_per_caller=3, max_streams_per_connection=2
        ) as (running, _stub):
            address = f"127.0.0.1:{running.port}"
            channels = [own_connection(address) for _ in range(3)]
            streams = []
            for index in range(3):  # 2 on the first connection, 1 on the second
                stub = verifier_pb2_grpc.VerifierServiceStub(channels[index // 2])
                stream = stub.VerifyStream(timeout=30)
                await stream.write(request(f"held-{index}", code))
                assert (await stream.read()).verdict.request_id == f"held-{index}"
                streams.append(stream)
            third = verifier_pb2_grpc.VerifierServiceStub(channels[2])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await third.Verify(unary("fourth", code), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info, _violations = status_details(refused.value)
            assert info.reason == "TOO_MANY_CALLS"
            assert info.metadata["setting"] == "server.max_streams_per_caller"
            # Health is not counted with the calls: a fourth call slot is not needed for it.
            reply = await health_pb2_grpc.HealthStub(channels[2]).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch = health_pb2_grpc.HealthStub(channels[2]).Watch(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            await streams[0].done_writing()
            assert await streams[0].code() == grpc.StatusCode.OK
            answer = (await third.Verify(unary("fifth", code), timeout=10)).verdict
            assert reason(answer) == "OK" and answer.duplicate
            for stream in streams[1:]:
                stream.cancel()
            for channel in channels:
                await channel.close()

    asyncio.run(scenario())


def test_a_stream_idle_past_stream_idle_seconds_is_ended_unavailable(pki: DemoPKI) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki, stream_idle_seconds=1) as (running, stub):
            busy = stub.VerifyStream(timeout=30)
            idle = stub.VerifyStream(timeout=30)
            await idle.write(request("idle-0", code))
            assert (await idle.read()).verdict.request_id == "idle-0"
            started = time.monotonic()
            for index in range(6):  # a message every 0.4 s keeps a stream open
                await busy.write(request(f"busy-{index}", code))
                assert (await busy.read()).verdict.request_id == f"busy-{index}"
                await asyncio.sleep(0.4)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await idle.read()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            info, _violations = status_details(ended.value)
            assert (info.reason, info.metadata["setting"]) == (
                "STREAM_IDLE",
                "server.stream_idle_seconds",
            )
            assert time.monotonic() - started < 5
            await busy.done_writing()
            assert await busy.code() == grpc.StatusCode.OK
            assert running.metrics is not None
            refused = running.metrics.registry.get_sample_value(
                "apcv_calls_refused_total", {"limit": "server.stream_idle_seconds"}
            )
            assert refused == 1
            # By its reason too, beside the status grpc_server_handled_total counts.
            errors = running.metrics.registry.get_sample_value(
                "apcv_call_errors_total",
                {
                    "grpc_service": "apcv.verify.v1.VerifierService",
                    "grpc_method": "VerifyStream",
                    "grpc_code": "UNAVAILABLE",
                    "reason": "STREAM_IDLE",
                },
            )
            assert errors == 1

    asyncio.run(scenario())


#: Streams whose clients write 64 KB requests and never read an answer.
UNREAD_STREAMS = 40
#: server.stream_memory_bytes of the memory test, and the bound its RSS growth must stay in.
BUDGET_MIB = 32
BUDGET_BYTES = BUDGET_MIB * 1024 * 1024
RSS_GROWTH_BOUND_MIB = 160
#: The longest the memory test sends for (it stops once its writers stall).
SEND_SECONDS = 120


@pytest.mark.slow
def test_streams_that_never_read_their_answers_hold_no_more_than_the_budget(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """Each request carries a real presentation asking for FHIR (an answer of several kB, so
    the client's window fills after a few) padded to 64 KB with a field the server does not
    know: without the budget each stream would hold stream_window (256) such requests, 16 MiB,
    640 MiB for these 40 streams."""
    metrics_port = free_port()
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={
            "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "APCV_SERVER_STREAM_MEMORY_BYTES": str(BUDGET_MIB * 1024 * 1024),
            "APCV_SERVER_MAX_STREAMS_PER_CONNECTION": "0",
        },
    )
    base = rss_mib(server.process.pid)
    message = request("big", qr_text(pki.present("alice")))
    message.scan.include_fhir = True
    # Field 15 of Scan is unused: a length-delimited unknown field of ~62 KB pads the message.
    padding = 64_000 - message.ByteSize() - 8
    scan_bytes = message.scan.SerializeToString() + field(15, bytes(padding))
    payload = field(1, scan_bytes)  # VerifyStreamRequest.scan
    assert 63_000 < len(payload) <= 64 * 1024
    stats: dict[str, float] = {"written": 0, "peak": 0.0, "blocked": 0}

    async def scenario() -> None:
        channels = [
            grpc.aio.insecure_channel(
                server.address,
                options=[("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)],
            )
            for _ in range(4)
        ]
        calls = [
            channel.stream_stream(
                "/apcv.verify.v1.VerifierService/VerifyStream",
                request_serializer=None,
                response_deserializer=verifier_pb2.VerifyStreamResponse.FromString,
            )()
            for channel in channels
            for _ in range(UNREAD_STREAMS // len(channels))
        ]

        async def write(call: grpc.aio.StreamStreamCall) -> None:
            # No give-up on a slow write: on a loaded machine the server frees its budget
            # slowly, and a writer that stopped after a stalled write left the test short of
            # requests sent. The scenario's deadline bounds the writers, then cancels them.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                for _ in range(400):
                    await call.write(payload)
                    stats["written"] += 1

        writers = [asyncio.ensure_future(write(call)) for call in calls]
        # Until the writers stall (the server stopped reading: nothing more sent for 5 s)
        # with more than the budget sent; how long depends on the machine's load.
        deadline, still, last = time.monotonic() + SEND_SECONDS, 0, -1.0
        while time.monotonic() < deadline and still < 5:
            await asyncio.sleep(1)
            stats["peak"] = max(stats["peak"], rss_mib(server.process.pid))
            written = stats["written"]
            still = still + 1 if written == last and written * 64_000 > BUDGET_BYTES else 0
            last = written
        # Backpressure, not the end of their requests, stopped the writers.
        stats["blocked"] = sum(not writer.done() for writer in writers)
        buffered = value(scrape(metrics_port), "apcv_stream_buffered_bytes")
        assert 0 < buffered <= BUDGET_MIB * 1024 * 1024
        # The server still answers everyone else.
        async with own_connection(server.address) as other:
            answer = await verifier_pb2_grpc.VerifierServiceStub(other).Verify(
                unary("other", qr_text(pki.present("corsica")), "desk-2"), timeout=20
            )
        assert reason(answer.verdict) == "OK"
        for call in calls:
            call.cancel()
        for writer in writers:
            writer.cancel()
        for channel in channels:
            await channel.close()

    try:
        asyncio.run(scenario())
    finally:
        stop_server(server)
    growth = stats["peak"] - base
    print(f"RSS {base:.0f} MiB → peak {stats['peak']:.0f} MiB; {stats['written']} requests sent")
    # More than the budget was sent, the writers were still held back when it ended, and the
    # process grew by the budget plus buffers (without the budget the server reads up to
    # stream_window requests per stream: hundreds of MiB).
    assert stats["written"] * 64_000 > BUDGET_BYTES
    assert stats["blocked"] > 0
    assert growth < RSS_GROWTH_BOUND_MIB, growth


#: Calls sent at once in the burst test: more than a handler takes before the last arrives,
#: fewer than gRPC's own bound (1,000, the default), spread over two connections so that no
#: connection reaches server.max_streams_per_connection.
BURST = 200


@pytest.mark.slow
@pytest.mark.parametrize("max_pending_calls", [None, 5])
def test_calls_past_max_pending_calls_are_ended_cancelled_before_the_service(
    pki: DemoPKI, tmp_path: Path, max_pending_calls: int | None
) -> None:
    """A burst of calls waits in gRPC's core until the process takes them one by one. The
    calls that find server.max_pending_calls waiting are ended CANCELLED at once, never
    reaching a handler; under the default, gRPC's own bound (from 1,000), a burst of 200 is
    answered whole."""
    metrics_port = free_port()
    env = {"APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}
    if max_pending_calls is not None:
        env["APCV_SERVER_MAX_PENDING_CALLS"] = str(max_pending_calls)
    server = start_server(
        pki.directory, tmp_path / "server.log", "--allow-test-identities", env=env
    )
    code = qr_text(pki.present("alice"))

    async def burst() -> Counter[grpc.StatusCode]:
        async with own_connection(server.address) as one, own_connection(server.address) as two:
            stubs = [verifier_pb2_grpc.VerifierServiceStub(channel) for channel in (one, two)]
            calls = [
                stubs[index % 2].Verify(unary(f"burst-{index}", code), timeout=30)
                for index in range(BURST)
            ]
            ended = await asyncio.gather(*calls, return_exceptions=True)
        return Counter(
            outcome.code() if isinstance(outcome, grpc.aio.AioRpcError) else grpc.StatusCode.OK
            for outcome in ended
        )

    try:
        codes = asyncio.run(burst())
        found = scrape(metrics_port)
    finally:
        stop_server(server)
    print(f"max_pending_calls {max_pending_calls}: {dict(codes)}")
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}
    if max_pending_calls:
        assert codes[grpc.StatusCode.CANCELLED] > 0
        assert codes[grpc.StatusCode.OK] >= max_pending_calls
    else:
        assert codes[grpc.StatusCode.OK] == BURST
    # The service counted the answered calls only: the others never reached it.
    verify = {
        "grpc_type": "unary",
        "grpc_service": "apcv.verify.v1.VerifierService",
        "grpc_method": "Verify",
    }
    assert value(found, "grpc_server_started_total", **verify) == codes[grpc.StatusCode.OK]
    assert (
        value(found, "grpc_server_handled_total", **verify, grpc_code="OK")
        == codes[grpc.StatusCode.OK]
    )
    # gRPC's own count has them all: beyond the calls handlers took (the start's health
    # checks included), exactly the calls it ended.
    taken = sum(count for (name, _), count in found.items() if name == "grpc_server_started_total")
    received = value(found, "apcv_grpc_calls_received_total")
    assert received - taken == codes[grpc.StatusCode.CANCELLED], (received, taken)
