"""Standard limits of ``[server]``: concurrent RPCs, message size, connection age, and their
validation (docs/operations.md "Limits")."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.client import MessageTooLargeError, error_from_rpc
from apcv_verify.config import ConfigError, load_config
from apcv_verify.issuer import (
    INS_DEMO_OID,
    AmoRights,
    Beneficiary,
    DemoPKI,
    Identity,
    Person,
    matricule,
    qr_text,
)
from apcv_verify.service.decode import MAX_REQUEST_BYTES
from apcv_verify.service.startup import ServerHandle, server_options
from grpc_status import rpc_status

from .conftest import pki_config
from .test_contract import status_details
from .test_stream import reason, request, scan, serving, unary

#: A typical QR code: the profile's design target (docs/profile.md §4.1) is at most
#: this for a holder with two beneficiaries and one AMC attestation.
TYPICAL_QR_CHARS = 1600


def typical_qr_codes(pki: DemoPKI, count: int) -> list[str]:
    """``count`` presentations (each with a fresh cti) of at least TYPICAL_QR_CHARS: a holder
    with two beneficiaries and four AMC attestations (with one, the issuer's codes have about
    1,300 characters)."""
    rights = AmoRights("01", "691", "6901", "2026-01-01", "2027-12-31")

    def person(number13: str, identity: Identity) -> Person:
        return Person(matricule(number13), INS_DEMO_OID, identity, rights)

    pki.add_holder(
        "family-of-three",
        person("1850769123041", Identity("MOREAU", "Julien Pierre", "M", "1985-07-12", "69123")),
        beneficiaries=[
            Beneficiary(1, person("1170469123012", Identity("MOREAU", "Hugo", "M", "2017-04-03",
                                                            "69123"))),
            Beneficiary(2, person("2190769123034", Identity("MOREAU", "Chloé Anne", "F",
                                                            "2019-07-21", "69123"))),
        ],
    )  # fmt: skip
    attestations = [pki.amc_attestation("family-of-three") for _ in range(4)]
    return [qr_text(pki.present("family-of-three", amc=attestations)) for _ in range(count)]


def test_a_default_server_takes_a_full_batch_of_typical_qr_codes(tmp_path: Path) -> None:
    """The default server.max_message_bytes holds server.max_batch typical codes: an edge
    reader can send a full batch without any configuration."""
    pki = DemoPKI.create(tmp_path / "pki")
    defaults = pki_config(pki).server
    codes = typical_qr_codes(pki, defaults.max_batch)
    assert min(len(code) for code in codes) >= TYPICAL_QR_CHARS
    batch = verifier_pb2.VerifyBatchRequest(
        scans=[scan(f"b-{index}", code) for index, code in enumerate(codes)]
    )
    assert batch.ByteSize() > 1000 * TYPICAL_QR_CHARS  # no smaller than it says

    async def scenario() -> None:
        async with serving(pki) as (_running, stub):
            reply = await stub.VerifyBatch(batch, timeout=60)
        assert [reason(verdict) for verdict in reply.verdicts] == ["OK"] * len(codes)

    asyncio.run(scenario())


def test_a_batch_over_max_message_bytes_names_the_setting(tmp_path: Path) -> None:
    pki = DemoPKI.create(tmp_path / "pki")
    codes = typical_qr_codes(pki, 130)  # about 1.7 kB each

    async def scenario() -> None:
        async with serving(pki, max_message_bytes=96 * 1024) as (_running, stub):
            for count in (70, 130):  # over the setting; over twice it (refused by gRPC)
                batch = verifier_pb2.VerifyBatchRequest(
                    scans=[scan(f"b-{index}", code) for index, code in enumerate(codes[:count])]
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.VerifyBatch(batch, timeout=10)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                if count == 70:
                    assert refused.value.details() == (
                        f"batch of {batch.ByteSize()} bytes is over server.max_message_bytes"
                        f" ({96 * 1024}): send fewer scans per batch or raise"
                        " server.max_message_bytes"
                    )
                    info, violations = status_details(refused.value)
                    assert (info.reason, violations) == ("MESSAGE_TOO_LARGE", [])
                    assert dict(info.metadata) == {
                        "setting": "server.max_message_bytes",
                        "limit": str(96 * 1024),
                        "size": str(batch.ByteSize()),
                    }
            # The answer must fit too: with FHIR each one is several kB.
            fhir = verifier_pb2.VerifyBatchRequest(
                scans=[scan(f"f-{index}", code) for index, code in enumerate(codes[:20])]
            )
            for item in fhir.scans:
                item.include_fhir = True
            with pytest.raises(grpc.aio.AioRpcError) as too_long:
                await stub.VerifyBatch(fhir, timeout=10)
            assert too_long.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert re.fullmatch(
                r"response of \d+ bytes is over server\.max_message_bytes \(98304\): send fewer"
                r" scans per batch \(include_fhir .*\) or raise server\.max_message_bytes",
                too_long.value.details() or "",
            )
            info, _violations = status_details(too_long.value)
            assert info.reason == "MESSAGE_TOO_LARGE"
            assert info.metadata["setting"] == "server.max_message_bytes"
            small = verifier_pb2.VerifyBatchRequest(scans=[scan("b-0", codes[0])])
            assert [reason(r) for r in (await stub.VerifyBatch(small, timeout=10)).verdicts] == [
                "OK"
            ]

    asyncio.run(scenario())


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
            oversize = unary("big", "APCV1:" + "A" * 5000)
            named = "over server.max_message_bytes (4096): raise it in the server's configuration"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Verify(oversize, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == f"request of {oversize.ByteSize()} bytes is {named}"
            info, _violations = status_details(refused.value)
            assert (info.reason, dict(info.metadata)) == (
                "MESSAGE_TOO_LARGE",
                {
                    "setting": "server.max_message_bytes",
                    "limit": "4096",
                    "size": str(oversize.ByteSize()),
                },
            )
            stream = stub.VerifyStream(iter([request("big", "APCV1:" + "A" * 5000)]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                _ = [response async for response in stream]
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert named in (ended.value.details() or "")
            assert status_details(ended.value)[0].reason == "MESSAGE_TOO_LARGE"
            # Over twice the setting gRPC refuses it before the service sees it: the same code.
            with pytest.raises(grpc.aio.AioRpcError) as huge:
                await stub.Verify(unary("huge", "APCV1:" + "A" * 9000), timeout=10)
            assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            small = (await stub.Verify(unary("small", "APCV1:%%"), timeout=10)).verdict
            assert reason(small) == "MALFORMED"

    asyncio.run(scenario())


#: A client's gRPC retry policy that resends RESOURCE_EXHAUSTED (gRFC A6), as a reader would
#: to ride out TOO_MANY_CALLS.
RETRY_EXHAUSTED = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "apcv.verify.v1.VerifierService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
                },
            }
        ]
    }
)


def handled(running: ServerHandle, code: str) -> float:
    """``grpc_server_handled_total`` of ``Verify`` calls that ended ``code``."""
    assert running.metrics is not None
    value = running.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "apcv.verify.v1.VerifierService",
            "grpc_method": "Verify",
            "grpc_code": code,
        },
    )
    return value or 0.0


def test_a_too_large_message_is_not_resent_by_a_retry_policy_and_too_many_calls_is(
    pki: DemoPKI,
) -> None:
    """A client whose retry policy resends RESOURCE_EXHAUSTED (to wait out TOO_MANY_CALLS)
    sends a MESSAGE_TOO_LARGE request once: the refusal carries the gRPC server pushback
    ``grpc-retry-pushback-ms: -1`` (gRFC A6: do not retry), since the same bytes would be
    refused again. TOO_MANY_CALLS carries none: it is resent, with the client's backoff."""
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki, max_message_bytes=4096, max_concurrent_rpcs=1) as (running, _):
            options = [("grpc.service_config", RETRY_EXHAUSTED), ("grpc.enable_retries", 1)]
            target = f"127.0.0.1:{running.port}"
            async with grpc.aio.insecure_channel(target, options=options) as channel:
                stub = verifier_pb2_grpc.VerifierServiceStub(channel)
                call = stub.Verify(unary("big", "APCV1:" + "A" * 5000), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert status_details(refused.value)[0].reason == "MESSAGE_TOO_LARGE"
                trailers = await call.trailing_metadata()
                assert trailers is not None and trailers.get("grpc-retry-pushback-ms") == "-1"
                assert handled(running, "RESOURCE_EXHAUSTED") == 1  # sent once
                held = stub.VerifyStream(timeout=30)  # holds the one call slot
                await held.write(request("held", code))
                await held.read()
                with pytest.raises(grpc.aio.AioRpcError) as busy:
                    await stub.Verify(unary("busy", code), timeout=10)
                assert status_details(busy.value)[0].reason == "TOO_MANY_CALLS"
                assert handled(running, "RESOURCE_EXHAUSTED") == 1 + 4  # every attempt
                held.cancel()

    asyncio.run(scenario())


def test_gzip_requests_are_answered_and_held_to_the_limit_by_their_inflated_size(
    pki: DemoPKI,
) -> None:
    """A client may compress its messages (gRPC's gzip): every method answers them, and the
    size limits apply to the message as it inflates, so a small compressed request that
    inflates past them is refused as an uncompressed one would be, without the server taking
    the inflated size."""

    async def scenario() -> None:
        async with serving(pki, max_message_bytes=4096) as (running, _stub):
            address = f"127.0.0.1:{running.port}"
            async with grpc.aio.insecure_channel(
                address, compression=grpc.Compression.Gzip
            ) as channel:
                stub = verifier_pb2_grpc.VerifierServiceStub(channel)
                answered = (await stub.Verify(unary("gz-1", qr_text(pki.present())))).verdict
                assert reason(answered) == "OK"
                batch = verifier_pb2.VerifyBatchRequest(
                    scans=[scan(f"gz-b{i}", qr_text(pki.present())) for i in range(2)]
                )
                verdicts = (await stub.VerifyBatch(batch, timeout=10)).verdicts
                assert [reason(verdict) for verdict in verdicts] == ["OK", "OK"]
                stream = stub.VerifyStream(iter([request("gz-s", qr_text(pki.present()))]))
                assert [reason(r.verdict) async for r in stream] == ["OK"]

                # 5,000 characters inflated, a few dozen bytes on the wire: the service's own
                # refusal, with the size it inflated to.
                oversize = unary("gz-big", "APCV1:" + "A" * 5000)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Verify(oversize, timeout=10)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                info, _violations = status_details(refused.value)
                assert info.reason == "MESSAGE_TOO_LARGE"
                assert dict(info.metadata)["size"] == str(oversize.ByteSize())
                # 64 MiB inflated from about 64 KiB: gRPC stops inflating at twice the setting.
                with pytest.raises(grpc.aio.AioRpcError) as bomb:
                    await stub.Verify(unary("gz-bomb", "A" * (64 << 20)), timeout=30)
                assert bomb.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert rpc_status.from_call(bomb.value) is None  # gRPC's, before the service
                # Which a client tells from too many calls: sent again it fails again.
                assert isinstance(error_from_rpc(bomb.value), MessageTooLargeError)
                after = (await stub.Verify(unary("gz-2", qr_text(pki.present())))).verdict
                assert reason(after) == "OK"

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
            # The age (1 s, ±10 % of jitter) passes: GOAWAY, and the stream is still
            # answered during the grace.
            answered = 0
            while time.monotonic() - started < 1.5:
                await stream.write(request(f"long-{answered}", code))
                assert (await stream.read()).verdict.request_id == f"long-{answered}"
                answered += 1
                await asyncio.sleep(0.1)
            # The grace ends with the stream open. No write is pending then: grpc.aio reports
            # a write that the closing connection refuses as INTERNAL ("Internal error from
            # Core"), its own status in place of the server's (the project's clients resend
            # after either).
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.read()
            lasted = time.monotonic() - started
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert 1.5 <= lasted < 10
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
            "APCV_SERVER_MAX_PENDING_CALLS": "250",
        },
        overrides={"trust.anchors": [__file__], "trust.trust_list": __file__},
    )
    options = dict(server_options(config.server))
    # Equal soft and hard bounds: every call past 250 waiting is ended, none before.
    assert options["grpc.server.max_pending_requests"] == 250
    assert options["grpc.server.max_pending_requests_hard_limit"] == 250
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 15_000
    # gRPC reads up to twice the setting, so that the service refuses with a message naming it.
    assert config.server.max_message_bytes == 2 * 1024 * 1024
    assert options["grpc.max_receive_message_length"] == 4 * 1024 * 1024
    assert options["grpc.max_send_message_length"] == 2 * 1024 * 1024
    never = load_config(
        None,
        environ={"APCV_SERVER_MAX_CONNECTION_AGE_SECONDS": "0"},
        overrides={"trust.anchors": [__file__], "trust.trust_list": __file__},
    )
    assert "grpc.max_connection_age_ms" not in dict(server_options(never.server))
    # By default gRPC's own bound stays (1,000 soft, 3,000 hard).
    assert never.server.max_pending_calls == 0
    assert "grpc.server.max_pending_requests" not in dict(server_options(never.server))


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("stream_window", "0", "must be between 1 and 10000"),
        ("max_message_bytes", "4095", "must be between 4096 and 1073741824"),
        ("max_message_bytes", str(2**30 + 1), "must be between 4096 and 1073741824"),
        ("stream_window", "many", "expected int"),
        ("max_concurrent_rpcs", "-1", "must not be negative"),
        ("max_streams_per_connection", "-1", "must not be negative"),
        ("max_streams_per_caller", "-2", "must not be negative"),
        ("max_pending_calls", "-1", "must not be negative"),
        ("stream_idle_seconds", "-1", "must be between 0 and 604800 seconds"),
        ("stream_memory_bytes", "1000", "must be at least 65536"),
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


def test_one_request_over_max_request_bytes_is_refused_and_a_stream_answers_what_came_before(
    pki: DemoPKI,
) -> None:
    """A request of one scan is bounded apart from server.max_message_bytes, which a whole
    batch needs: a stream never holds stream_window requests of max_message_bytes each. The
    bound is measured on the bytes, so an oversize request that does not decode is refused
    for its size too."""
    code = qr_text(pki.present("alice"))
    oversize = unary("big", "APCV1:" + "A" * MAX_REQUEST_BYTES)
    bound = f"over {MAX_REQUEST_BYTES} bytes, the most a request of one scan can be"

    async def scenario() -> None:
        async with serving(pki) as (running, stub):  # default max_message_bytes (2 MiB)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Verify(oversize, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert bound in (refused.value.details() or "")
            info, _violations = status_details(refused.value)
            # No setting to raise: no real scan is this large.
            assert (info.reason, dict(info.metadata)) == (
                "MESSAGE_TOO_LARGE",
                {"limit": str(MAX_REQUEST_BYTES), "size": str(oversize.ByteSize())},
            )
            stream = stub.VerifyStream(
                iter([request("first", code), request("big", "APCV1:" + "A" * MAX_REQUEST_BYTES)]),
                timeout=10,
            )
            answers = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for answer in stream:
                    answers.append(answer.verdict)
            assert [(a.request_id, reason(a)) for a in answers] == [("first", "OK")]
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert bound in (ended.value.details() or "")
            assert status_details(ended.value)[0].reason == "MESSAGE_TOO_LARGE"
            # Not a protobuf encoding at all, and too large: refused for its size, unread.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                verify = channel.unary_unary(
                    "/apcv.verify.v1.VerifierService/Verify",
                    request_serializer=None,
                    response_deserializer=verifier_pb2.VerifyResponse.FromString,
                )
                with pytest.raises(grpc.aio.AioRpcError) as junk:
                    await verify(b"\xff" * (MAX_REQUEST_BYTES + 1), timeout=10)
            assert junk.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status_details(junk.value)[0].reason == "MESSAGE_TOO_LARGE"

    asyncio.run(scenario())
