"""Graceful shutdown of ``apcv-verify serve``: SIGTERM in the middle of a stream.

On SIGTERM the server reports NOT_SERVING, accepts no new call, lets open calls finish within
``server.grace_seconds`` and exits 0 (docs/operations.md "Shutdown")."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, qr_text
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import start_server

Request = verifier_pb2.VerifyStreamRequest
#: Bound on every wait of these tests: a hung shutdown fails them, never hangs them.
WAIT_SECONDS = 20


def request(request_id: str, presentation: str) -> Request:
    message = Request(scan=verifier_pb2.Scan(request_id=request_id, qr_text=presentation))
    message.scan.reader.reader_id = "edge-1"
    return message


@pytest.mark.slow
def test_sigterm_mid_stream_answers_every_request_sent_and_exits_0(
    pki: DemoPKI, tmp_path: Path
) -> None:
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_SERVER_GRACE_SECONDS": "10"},
    )
    codes = [qr_text(pki.present("alice")) for _ in range(4)]
    total, signal_after = 60, 30
    sent_before_signal: list[str] = []
    sent: list[str] = []
    signalled = threading.Event()

    def requests() -> Iterator[Request]:
        for index in range(total):
            if index == signal_after:
                server.process.send_signal(signal.SIGTERM)
                signalled.set()
            request_id = f"t-{index}"
            (sent if signalled.is_set() else sent_before_signal).append(request_id)
            yield request(request_id, codes[index % len(codes)])
            time.sleep(0.01)  # still sending while the server drains

    health_seen: list[tuple[str, float]] = []

    def watch_health(channel: grpc.Channel) -> None:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=WAIT_SECONDS
        )
        try:
            for reply in watch:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                health_seen.append((status, time.monotonic()))
                if status == "NOT_SERVING":
                    watch.cancel()  # a watch is an open call too: do not hold the drain
        except grpc.RpcError:
            pass

    try:
        with server.channel() as channel:
            watcher = threading.Thread(target=watch_health, args=(channel,))
            watcher.start()
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            call = stub.VerifyStream(requests(), timeout=WAIT_SECONDS)
            answered = []
            for response in call:
                answered.append(response.verdict.request_id)
                last_answer = time.monotonic()
            assert call.code() == grpc.StatusCode.OK
            watcher.join(WAIT_SECONDS)
            # After the signal: NOT_SERVING or no new call at all, never a new verification.
            with pytest.raises(grpc.RpcError) as refused:
                stub.Verify(
                    verifier_pb2.VerifyRequest(scan=request("late", codes[0]).scan), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.process.wait(timeout=WAIT_SECONDS) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert signalled.is_set() and len(sent_before_signal) == signal_after
    # Every request sent before the signal was answered, and so were the later ones the open
    # stream carried while the server drained, in order.
    assert answered == sent_before_signal + sent
    # NOT_SERVING first: reported while the open stream was still being answered.
    assert [status for status, _ in health_seen] == ["SERVING", "NOT_SERVING"]
    assert health_seen[1][1] < last_answer
    assert '"event": "stopping"' in server.logs()


@pytest.mark.slow
def test_a_stream_left_open_is_ended_at_the_grace_period_and_the_server_exits_0(
    pki: DemoPKI, tmp_path: Path
) -> None:
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_SERVER_GRACE_SECONDS": "1"},
    )
    code = qr_text(pki.present("alice"))
    release = threading.Event()

    def requests() -> Iterator[Request]:
        for index in range(5):
            yield request(f"o-{index}", code)
        release.wait(WAIT_SECONDS)  # never half-closes while the server stops

    try:
        with server.channel() as channel:
            call = verifier_pb2_grpc.VerifierServiceStub(channel).VerifyStream(
                requests(), timeout=WAIT_SECONDS
            )
            answered = [next(call).verdict.request_id for _ in range(5)]
            server.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
            release.set()
            assert server.process.wait(timeout=WAIT_SECONDS) == 0
            stopped_after = time.monotonic() - started
    finally:
        release.set()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert answered == [f"o-{index}" for index in range(5)]
    # A status the client retries on another replica (resending unanswered request ids).
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stopped_after < 1 + 5  # the grace period, plus process exit
