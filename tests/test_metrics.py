"""Prometheus metrics over a real ``apcv-verify serve`` process, scraped over HTTP."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import platform
import queue
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from apcv_verify import _native
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import ConfigError, load_config
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.observe.metrics import ServiceMetrics
from apcv_verify.service.interceptors import MetricsInterceptor
from apcv_verify.service.startup import start_server as start_in_process
from apcv_verify.trust.material import load_trust_material
from prometheus_client import generate_latest

from .conftest import (
    ServerProcess,
    free_port,
    nir_numbers,
    personal_values,
    pki_config,
    samples,
    scrape_text,
    start_server,
    stop_server,
    value,
)
from .test_workers import redis_url, start_workers  # noqa: F401 (redis_url: a fixture)

VERIFIER = "apcv.verify.v1.VerifierService"


def call(
    server: ServerProcess, presentation: str | bytes, request_id: str, reader_id: str = "desk-1"
) -> verifier_pb2.Verdict:
    scan = verifier_pb2.Scan(request_id=request_id)
    if isinstance(presentation, str):
        scan.qr_text = presentation
    else:
        scan.nfc_bytes = presentation
    scan.reader.reader_id = reader_id
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        return stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10).verdict


@pytest.fixture
def metrics_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """A free port for ``/metrics``, given to the server process by APCV_METRICS_LISTEN."""
    port = free_port()
    monkeypatch.setenv("APCV_METRICS_LISTEN", f"127.0.0.1:{port}")
    return port


@pytest.fixture
def observed(pki: DemoPKI, tmp_path: Path, metrics_port: int) -> Iterator[ServerProcess]:
    running = start_server(pki.directory, tmp_path / "server.log", "--allow-test-identities")
    yield running
    stop_server(running)


def test_grpc_and_verification_metrics_move_with_the_right_labels(
    observed: ServerProcess, metrics_port: int, pki: DemoPKI
) -> None:
    before = samples(scrape_text(metrics_port))
    unary = {"grpc_type": "unary", "grpc_service": VERIFIER, "grpc_method": "Verify"}
    assert value(before, "grpc_server_started_total", **unary) == 0
    # The health polls of the start-up wait went through the interceptor too.
    health = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert value(before, "grpc_server_handled_total", **health, grpc_code="OK") >= 1

    assert call(observed, qr_text(pki.present("alice")), "m-1").reason == verifier_pb2.REASON_OK
    assert call(observed, pki.present("lunar"), "m-2").reason == verifier_pb2.REASON_OK
    assert call(observed, "APCV1:%%%%", "m-3").reason == verifier_pb2.REASON_MALFORMED
    replayed = qr_text(pki.present("corsica"))
    call(observed, replayed, "m-4", "desk-1")
    assert call(observed, replayed, "m-5", "desk-2").reason == verifier_pb2.REASON_REPLAYED
    with observed.channel() as channel, pytest.raises(grpc.RpcError) as error:
        verifier_pb2_grpc.VerifierServiceStub(channel).Verify(
            verifier_pb2.VerifyRequest(scan=verifier_pb2.Scan(request_id="m-6")), timeout=10
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with observed.channel() as channel, pytest.raises(grpc.RpcError) as unknown:
        channel.unary_unary(f"/{VERIFIER}/NoSuchMethod")(b"", timeout=10)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    text = scrape_text(metrics_port)
    after = samples(text)
    assert value(after, "grpc_server_started_total", **unary) == 6
    assert value(after, "grpc_server_handled_total", **unary, grpc_code="OK") == 5
    assert value(after, "grpc_server_handled_total", **unary, grpc_code="INVALID_ARGUMENT") == 1
    assert value(after, "grpc_server_handling_seconds_count", **unary) == 6
    assert value(after, "grpc_server_handling_seconds_bucket", **unary, le="+Inf") == 6
    # Caller-chosen method names are no label values (cardinality).
    assert "NoSuchMethod" not in text

    def verifications(decision: str, reason: str) -> float:
        return value(
            after, "apcv_verifications_total", decision=decision, reason=reason, method="Verify"
        )

    assert verifications("ACCEPTED", "OK") == 3
    assert verifications("REJECTED", "MALFORMED") == 1
    assert verifications("REJECTED", "REPLAYED") == 1
    # The in-process replay store holds the three accepted presentations, under its bound.
    assert value(before, "apcv_replay_store_entries") == 0
    assert value(after, "apcv_replay_store_entries") == 3
    assert value(after, "apcv_replay_store_max_entries") == 1_000_000
    # One latency observation per verification, resolved below a millisecond.
    assert value(after, "apcv_verification_seconds_count", method="Verify") == 5
    buckets = [
        float(labels["le"])
        for (name, key), _ in after.items()
        if name == "apcv_verification_seconds_bucket"
        for labels in [dict(key)]
        if labels["le"] != "+Inf"
    ]
    assert min(buckets) == 0.000005 and max(buckets) == 1.0
    assert value(after, "apcv_verification_seconds_bucket", method="Verify", le="1.0") == 5
    # Call latency resolved from 100 µs, not from the Prometheus default of 5 ms.
    handling = {
        float(dict(key)["le"])
        for (name, key), _ in after.items()
        if name == "grpc_server_handling_seconds_bucket" and dict(key)["le"] != "+Inf"
    }
    assert min(handling) == 0.0001 and max(handling) == 10.0

    # The process, the interpreter and the build, and no *_created series.
    assert value(after, "process_resident_memory_bytes") > 1_000_000
    assert value(after, "process_cpu_seconds_total") > 0
    assert 0 < value(after, "process_open_fds") < value(after, "process_max_fds")
    assert value(after, "python_info", **dict(next(k for n, k in after if n == "python_info"))) == 1
    (build,) = [dict(key) for name, key in after if name == "apcv_build_info"]
    assert build["version"] == importlib.metadata.version("apcv-verify")
    assert build["core_version"] == _native.CORE_VERSION
    assert build["core_build"] == _native.BUILD
    assert build["python"] == platform.python_version()
    assert "_created" not in text

    assert value(after, "apcv_inflight_streams") == 0
    assert value(after, "apcv_batch_size_count") == 0
    assert "# HELP apcv_replay_store_errors_total" in text


def test_a_full_in_process_replay_store_is_counted_as_the_stores_error(
    pki: DemoPKI, tmp_path: Path, metrics_port: int
) -> None:
    """A unary call refused by the full in-process replay store: REPLAY_UNAVAILABLE (fail
    closed), audited and counted as a verification and as the replay store's error."""
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_REPLAY_MAX_ENTRIES": "1"},
    )
    try:
        assert call(server, pki.present("alice"), "f-1").reason == verifier_pb2.REASON_OK
        refused = call(server, pki.present("lunar"), "f-2")
        assert refused.reason == verifier_pb2.REASON_REPLAY_UNAVAILABLE
        after = samples(scrape_text(metrics_port))
    finally:
        stop_server(server)
    assert value(after, "apcv_replay_store_errors_total", backend="memory") == 1
    # What an alert on the store's fill would have seen: full.
    assert value(after, "apcv_replay_store_entries") == 1
    assert value(after, "apcv_replay_store_max_entries") == 1
    assert (
        value(
            after,
            "apcv_verifications_total",
            decision="REJECTED",
            reason="REPLAY_UNAVAILABLE",
            method="Verify",
        )
        == 1
    )
    records = [json.loads(line) for line in server.logs().splitlines() if '"audit"' in line]
    assert [(r["request_id"], r["reason"]) for r in records if r.get("kind") == "audit"] == [
        ("f-1", "OK"),
        ("f-2", "REPLAY_UNAVAILABLE"),
    ]


def test_trust_and_status_list_gauges_are_computed_at_scrape(
    observed: ServerProcess, metrics_port: int, pki: DemoPKI
) -> None:
    first = samples(scrape_text(metrics_port))
    assert value(first, "apcv_trust_list_sequence") == pki.trust_list_seq
    age = value(first, "apcv_trust_list_age_seconds")
    assert 0 <= age < 600
    expiry = value(first, "apcv_trust_list_expiry_timestamp_seconds")
    assert expiry > time.time()
    uris = {dict(labels)["uri"] for name, labels in first if name == "apcv_status_list_age_seconds"}
    assert uris == set(pki.status_list_paths) and uris
    for uri in uris:
        assert 0 <= value(first, "apcv_status_list_age_seconds", uri=uri) < 600
        assert value(first, "apcv_status_list_expiry_timestamp_seconds", uri=uri) > time.time()
    time.sleep(1.1)
    later = samples(scrape_text(metrics_port))
    assert value(later, "apcv_trust_list_age_seconds") >= age + 1


def test_no_personal_data_or_reader_id_in_metrics_or_logs(
    observed: ServerProcess, metrics_port: int, pki: DemoPKI
) -> None:
    reader = "ward-7-bed-12-reader"
    for index, holder in enumerate(pki.holders):
        call(observed, qr_text(pki.present(holder)), f"p-{index}", reader)
    call(observed, pki.present("family", ben=1), "p-ben", reader)
    text = scrape_text(metrics_port)
    stop_server(observed)
    logs = observed.logs()
    personal = personal_values(pki)
    assert personal
    assert [found for found in personal if found in text] == []
    assert [found for found in personal if found in logs] == []
    assert reader not in text and "p-ben" not in text
    assert reader in logs  # reader ids belong in the audit log, not in labels
    for where in (text, logs):
        assert not nir_numbers(where), "a NIR/NIA number leaked"


@pytest.mark.slow
def test_empty_listen_disables_the_endpoint_and_a_taken_port_is_not_fatal(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCV_METRICS_LISTEN", "")
    disabled = start_server(pki.directory, tmp_path / "disabled.log", "--allow-test-identities")
    stop_server(disabled)
    serving = [json.loads(line) for line in disabled.logs().splitlines() if '"serving"' in line]
    assert serving and serving[0]["metrics_port"] is None

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("APCV_METRICS_LISTEN", f"127.0.0.1:{port}")
        clash = start_server(pki.directory, tmp_path / "clash.log", "--allow-test-identities")
        try:
            assert (
                call(clash, qr_text(pki.present("alice")), "c-1").reason == verifier_pb2.REASON_OK
            )
        finally:
            stop_server(clash)
    assert '"event": "metrics_unavailable"' in clash.logs()


def test_each_server_in_a_process_has_its_own_registry(pki: DemoPKI) -> None:
    config = pki_config(pki, {"metrics.listen": "127.0.0.1:0"})

    async def scenario() -> tuple[str, str]:
        first = await start_in_process(config, load_trust_material(config))
        second = await start_in_process(config, load_trust_material(config))
        try:
            assert first.metrics_http is not None and second.metrics_http is not None
            async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
                scan = verifier_pb2.Scan(request_id="x", qr_text="APCV1:")
                scan.reader.reader_id = "desk-1"
                request = verifier_pb2.VerifyRequest(scan=scan)
                await verifier_pb2_grpc.VerifierServiceStub(channel).Verify(request, timeout=10)
            ports = (first.metrics_http.server_port, second.metrics_http.server_port)
            texts = await asyncio.gather(*(asyncio.to_thread(scrape_text, p) for p in ports))
            return texts[0], texts[1]
        finally:
            await first.stop(0)
            await second.stop(0)

    first_text, second_text = asyncio.run(scenario())
    labels = {"decision": "REJECTED", "reason": "MALFORMED", "method": "Verify"}
    assert value(samples(first_text), "apcv_verifications_total", **labels) == 1
    assert value(samples(second_text), "apcv_verifications_total", **labels) == 0


@pytest.mark.parametrize("listen", ["9464", "localhost", "127.0.0.1:http", ":9464"])
def test_a_bad_metrics_listen_names_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"^metrics\.listen: expected HOST:PORT"):
        load_config(
            None,
            environ={"APCV_METRICS_LISTEN": listen},
            overrides={"trust.anchors": [__file__], "trust.trust_list": __file__},
        )


def test_a_batch_counts_its_size_and_each_item(
    observed: ServerProcess, metrics_port: int, pki: DemoPKI
) -> None:
    items = [
        verifier_pb2.Scan(request_id=f"b-{index}", qr_text=text)
        for index, text in enumerate(
            [qr_text(pki.present("alice")), qr_text(pki.present("lunar")), "APCV1:%%%%"]
        )
    ]
    for item in items:
        item.reader.reader_id = "edge-1"
    with observed.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(scans=items), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(), timeout=30)  # empty: refused
    # The client has the refusal as soon as it is sent; the server counts the call's end just
    # after, on its event loop: a scrape on a loaded machine can come in between.
    deadline = time.monotonic() + 10
    while True:
        found = samples(scrape_text(metrics_port))
        refused = value(
            found, "grpc_server_handled_total", grpc_type="unary",
            grpc_service="apcv.verify.v1.VerifierService", grpc_method="VerifyBatch",
            grpc_code="INVALID_ARGUMENT",
        )  # fmt: skip
        if refused or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert value(found, "apcv_batch_size_count") == 1
    assert value(found, "apcv_batch_size_sum") == 3
    assert value(found, "apcv_batch_size_bucket", le="2.0") == 0
    assert value(found, "apcv_batch_size_bucket", le="5.0") == 1
    batch = {"method": "VerifyBatch"}
    assert value(found, "apcv_verifications_total", decision="ACCEPTED", reason="OK", **batch) == 2
    assert (
        value(found, "apcv_verifications_total", decision="REJECTED", reason="MALFORMED", **batch)
        == 1
    )
    assert value(found, "apcv_verification_seconds_count", **batch) == 3
    unary = {"grpc_type": "unary", "grpc_service": VERIFIER, "grpc_method": "VerifyBatch"}
    assert value(found, "grpc_server_handled_total", **unary, grpc_code="OK") == 1
    assert value(found, "grpc_server_handled_total", **unary, grpc_code="INVALID_ARGUMENT") == 1
    stop_server(observed)
    records = [json.loads(line) for line in observed.logs().splitlines() if '"audit"' in line]
    assert [(r["request_id"], r["item"], r["method"]) for r in records] == [
        ("b-0", 0, "VerifyBatch"), ("b-1", 1, "VerifyBatch"), ("b-2", 2, "VerifyBatch"),
    ]  # fmt: skip


def test_the_interceptor_times_every_call_kind_and_counts_open_streams() -> None:
    """The paths VerifyStream will take, on a stand-in service (bytes in, bytes out)."""
    metrics = ServiceMetrics(stream_services=("test.Echo",))

    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message

    async def write_back(requests: AsyncIterator[bytes], context: Any) -> None:
        async for message in requests:
            await context.write(message)

    async def deny(request: bytes, context: Any) -> AsyncIterator[bytes]:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not this caller")
        yield b""

    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(5)
        return request

    async def broken(request: bytes, context: Any) -> bytes:
        raise ValueError("a bug")

    handlers = {
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
        "WriteBack": grpc.stream_stream_rpc_method_handler(write_back),
        "Deny": grpc.unary_stream_rpc_method_handler(deny),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Broken": grpc.unary_unary_rpc_method_handler(broken),
    }
    streams = metrics.registry.get_sample_value

    async def scenario() -> None:
        server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics)])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler("test.Echo", handlers),
                grpc.method_handlers_generic_handler("test.Plain", {"Echo": handlers["Echo"]}),
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for method in ("Echo", "WriteBack"):
                    call = channel.stream_stream(f"/test.Echo/{method}")()
                    await call.write(b"scan")
                    assert await call.read() == b"scan"
                    assert streams("apcv_inflight_streams") == 1, method
                    await call.done_writing()
                    assert await call.code() == grpc.StatusCode.OK
                plain = channel.stream_stream("/test.Plain/Echo")()
                await plain.write(b"scan")
                await plain.read()
                assert streams("apcv_inflight_streams") == 0  # not the verifier service
                await plain.done_writing()
                await plain.code()
                denied = channel.unary_stream("/test.Echo/Deny")(b"")
                assert await denied.code() == grpc.StatusCode.PERMISSION_DENIED
                late = channel.stream_stream("/test.Echo/Echo")(timeout=0.3)
                await late.write(b"scan")
                await late.read()
                assert await late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                with pytest.raises(grpc.RpcError):
                    await channel.unary_unary("/test.Echo/Slow")(b"", timeout=0.3)
                with pytest.raises(grpc.RpcError):
                    await channel.unary_unary("/test.Echo/Broken")(b"", timeout=5)
            await asyncio.sleep(0.5)  # let the server side of the timed-out calls finish
        finally:
            await server.stop(0)

    asyncio.run(scenario())
    found = samples(generate_latest(metrics.registry).decode())

    def handled(grpc_type: str, method: str, code: str) -> float:
        labels = {"grpc_type": grpc_type, "grpc_service": "test.Echo", "grpc_method": method}
        return value(found, "grpc_server_handled_total", **labels, grpc_code=code)

    assert handled("bidi_stream", "Echo", "OK") == 1
    assert handled("bidi_stream", "WriteBack", "OK") == 1
    assert handled("server_stream", "Deny", "PERMISSION_DENIED") == 1
    assert handled("bidi_stream", "Echo", "DEADLINE_EXCEEDED") == 1
    assert handled("unary", "Slow", "DEADLINE_EXCEEDED") == 1
    assert handled("unary", "Broken", "UNKNOWN") == 1
    assert value(found, "apcv_inflight_streams") == 0
    echo_labels = {"grpc_type": "bidi_stream", "grpc_service": "test.Echo", "grpc_method": "Echo"}
    assert value(found, "grpc_server_started_total", **echo_labels) == 2
    assert value(found, "grpc_server_handling_seconds_count", **echo_labels) == 2


def test_a_verify_stream_is_in_flight_until_it_ends_and_each_answer_is_counted(
    observed: ServerProcess, metrics_port: int, pki: DemoPKI
) -> None:
    requests: queue.Queue[verifier_pb2.VerifyStreamRequest | None] = queue.Queue()
    stream = {"grpc_type": "bidi_stream", "grpc_service": VERIFIER, "grpc_method": "VerifyStream"}

    def request(request_id: str, text: str) -> verifier_pb2.VerifyStreamRequest:
        message = verifier_pb2.VerifyStreamRequest()
        message.scan.request_id = request_id
        message.scan.qr_text = text
        message.scan.reader.reader_id = "edge-7"
        return message

    with observed.channel() as channel:
        answers = verifier_pb2_grpc.VerifierServiceStub(channel).VerifyStream(
            iter(requests.get, None), timeout=30
        )
        requests.put(request("s-1", qr_text(pki.present("alice"))))
        assert next(answers).verdict.request_id == "s-1"
        open_stream = samples(scrape_text(metrics_port))
        assert value(open_stream, "apcv_inflight_streams") == 1
        assert value(open_stream, "grpc_server_started_total", **stream) == 1
        assert value(open_stream, "grpc_server_handled_total", **stream, grpc_code="OK") == 0
        # Per message, while the stream is open.
        assert value(open_stream, "grpc_server_msg_received_total", **stream) == 1
        assert value(open_stream, "grpc_server_msg_sent_total", **stream) == 1
        requests.put(request("s-2", "APCV1:%%%%"))
        requests.put(request("s-3", ""))  # no presentation: answered MALFORMED, stream goes on
        requests.put(None)  # half-close: the stream ends after the last answer
        assert [answer.verdict.request_id for answer in answers] == ["s-2", "s-3"]

    deadline = time.monotonic() + 10
    while True:  # the server side ends just after the client saw the last answer
        ended = samples(scrape_text(metrics_port))
        if value(ended, "grpc_server_handled_total", **stream, grpc_code="OK") or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.05)
    assert value(ended, "grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert value(ended, "apcv_inflight_streams") == 0
    assert value(ended, "grpc_server_msg_received_total", **stream) == 3
    assert value(ended, "grpc_server_msg_sent_total", **stream) == 3
    # Unary calls are counted by started/handled alone.
    assert not [
        key for key in ended if key[0].startswith("grpc_server_msg") and "unary" in str(key)
    ]
    method = {"method": "VerifyStream"}
    assert value(ended, "apcv_verifications_total", decision="ACCEPTED", reason="OK", **method) == 1
    assert (
        value(ended, "apcv_verifications_total", decision="REJECTED", reason="MALFORMED", **method)
        == 1
    )
    assert value(ended, "apcv_verification_seconds_count", **method) == 2
    stop_server(observed)
    records = [json.loads(line) for line in observed.logs().splitlines() if '"audit"' in line]
    # s-3 never reached the core: answered MALFORMED in place, but no verification to audit.
    assert [(r["request_id"], r["method"], r["reader_id"], r["item"]) for r in records] == [
        ("s-1", "VerifyStream", "edge-7", 0),
        ("s-2", "VerifyStream", "edge-7", 1),
    ]


@pytest.mark.slow
def test_trust_gauges_reach_the_parent_with_several_workers(
    pki: DemoPKI,
    tmp_path: Path,
    redis_url: str,  # noqa: F811 (the fixture imported above)
) -> None:
    """Multiprocess mode: the workers publish the gauges, the parent serves the worst one,
    ``apcv_trust_source_expired`` included."""
    port = free_port()
    server, _, _ = start_workers(pki, tmp_path / "workers.log", redis_url, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            found = samples(scrape_text(port))
            if value(found, "apcv_trust_list_sequence") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert value(found, "apcv_trust_list_sequence") == pki.trust_list_seq
        age = value(found, "apcv_trust_list_age_seconds")
        assert 0 <= age < 600
        assert value(found, "apcv_trust_list_expiry_timestamp_seconds") > time.time()
        for uri in pki.status_list_paths:
            assert 0 <= value(found, "apcv_status_list_age_seconds", uri=uri) < 600
            assert value(found, "apcv_status_list_expiry_timestamp_seconds", uri=uri) > time.time()
        # Freshness per source, like one process reports it (nothing held is expired here).
        sources = ["trust_list"] + [f"status_lists[{i}]" for i in range(len(pki.status_list_paths))]
        for source in sources:
            key = ("apcv_trust_source_expired", frozenset({"source": source}.items()))
            assert found.get(key) == 0, source  # present, and 0
        # process_* per process, labelled by worker (the supervisor too), from /proc.
        text = scrape_text(port)
        found = samples(text)
        workers = {
            dict(labels)["worker"]
            for name, labels in found
            if name == "process_resident_memory_bytes"
        }
        assert workers == {"parent", "0", "1"}
        for worker in workers:
            assert value(found, "process_resident_memory_bytes", worker=worker) > 1_000_000
            assert value(found, "process_open_fds", worker=worker) > 0
            assert value(found, "process_max_fds", worker=worker) > 0
            assert value(found, "process_start_time_seconds", worker=worker) > 0
        assert value(found, "process_cpu_seconds_total", worker="0") > 0
        assert value(found, "apcv_serving") == 1
        assert [name for name, _ in found if name == "apcv_build_info"] == ["apcv_build_info"]
        assert "_created" not in text
        time.sleep(2.5)  # the age moves without any request
        assert value(samples(scrape_text(port)), "apcv_trust_list_age_seconds") >= age + 1
    finally:
        stop_server(server)
