"""Standard limits of ``[server]``: concurrent RPCs, message size, connection age, and their
validation (docs/operations.md "Limits")."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from apcv_verify.config import ConfigError, load_config
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.service.startup import server_options

from .test_stream import reason, request, serving, unary


def test_calls_beyond_max_concurrent_rpcs_get_resource_exhausted(pki: DemoPKI) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki, max_concurrent_rpcs=2) as (_running, stub):
            streams = []
            for index in range(2):  # two open streams hold both slots
                stream = stub.VerifyStream(timeout=30)
                await stream.write(request(f"held-{index}", code))
                assert (await stream.read()).verdict.request_id == f"held-{index}"
                streams.append(stream)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Verify(unary("third", code), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await streams[0].done_writing()  # one stream ends: its slot is free again
            assert await streams[0].read() == grpc.aio.EOF
            assert await streams[0].code() == grpc.StatusCode.OK
            answer = (await stub.Verify(unary("fourth", code), timeout=10)).verdict
            assert reason(answer) == "OK" and answer.duplicate
            streams[1].cancel()

    asyncio.run(scenario())


def test_a_message_over_max_message_bytes_is_refused(pki: DemoPKI) -> None:
    async def scenario() -> None:
        async with serving(pki, max_message_bytes=4096) as (_running, stub):
            oversize = request("big", "APCV1:" + "A" * 5000)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Verify(unary("big", "APCV1:" + "A" * 5000), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            stream = stub.VerifyStream(iter([oversize]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                _ = [response async for response in stream]
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            small = (await stub.Verify(unary("small", "APCV1:%%"), timeout=10)).verdict
            assert reason(small) == "MALFORMED"

    asyncio.run(scenario())


def test_max_connection_age_ends_a_long_stream_with_a_retryable_status(pki: DemoPKI) -> None:
    """Past its age the connection gets GOAWAY; a stream still open when the age grace ends
    is closed with UNAVAILABLE, which clients retry (on a new connection, maybe another
    replica), resending unanswered requests with the same ids."""
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(
            pki, max_connection_age_seconds=1, max_connection_age_grace_seconds=1
        ) as (_running, stub):
            stream = stub.VerifyStream(timeout=30)
            started = time.monotonic()
            answered = 0
            # A write to the ended call raises InvalidStateError, a read AioRpcError.
            with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
                while time.monotonic() - started < 15:
                    await stream.write(request(f"long-{answered}", code))
                    assert (await stream.read()).verdict.request_id == f"long-{answered}"
                    answered += 1
                    await asyncio.sleep(0.1)
            lasted = time.monotonic() - started
            assert await stream.code() == grpc.StatusCode.UNAVAILABLE
            assert 1 <= lasted < 10 and answered > 0
            # The same channel reconnects: the client's retry works.
            again = (await stub.Verify(unary("retry", code), timeout=10)).verdict
            assert reason(again) == "OK"

    asyncio.run(scenario())


def test_server_options_carry_the_limits() -> None:
    config = load_config(
        None,
        environ={
            "APCV_SERVER_KEEPALIVE_TIME_SECONDS": "30",
            "APCV_SERVER_MAX_CONNECTION_AGE_SECONDS": "600",
            "APCV_SERVER_MAX_CONNECTION_AGE_GRACE_SECONDS": "15",
        },
        overrides={"trust.anchors": [__file__], "trust.trust_list": __file__},
    )
    options = dict(server_options(config.server))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 15_000
    assert options["grpc.max_receive_message_length"] == 64 * 1024
    never = load_config(
        None,
        environ={"APCV_SERVER_MAX_CONNECTION_AGE_SECONDS": "0"},
        overrides={"trust.anchors": [__file__], "trust.trust_list": __file__},
    )
    assert "grpc.max_connection_age_ms" not in dict(server_options(never.server))


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("stream_window", "0", "must be between 1 and 10000"),
        ("stream_window", "many", "expected int"),
        ("max_concurrent_rpcs", "-1", "must not be negative"),
        ("max_concurrent_rpcs", "1", "must be at least 2"),
        ("keepalive_time_seconds", "0", "must be between 1 and 604800 seconds"),
        ("keepalive_timeout_seconds", "0.5", "must be between 1 and 604800 seconds"),
        ("keepalive_min_ping_interval_seconds", "-1", "must be between 0 and 604800 seconds"),
        ("keepalive_permit_without_calls", "maybe", "expected bool"),
        ("max_connection_age_seconds", "-5", "must be between 0 and 604800 seconds"),
        ("max_connection_age_grace_seconds", "1e9", "must be between 0 and 604800 seconds"),
    ],
)
def test_a_bad_limit_names_its_key(key: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"^server\.{key}: {problem}"):
        load_config(
            None,
            environ={f"APCV_SERVER_{key.upper()}": value},
            overrides={"trust.anchors": [__file__], "trust.trust_list": __file__},
        )
