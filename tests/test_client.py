"""apcv_verify.client.VerifierClient against a real ``apcv-verify serve`` process: verdicts,
idempotent resends, the v1 error details as typed exceptions, retries, deadlines, mTLS."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.client import (
    CallCancelledError,
    DeadlineExceededError,
    FieldViolation,
    InvalidRequestError,
    MessageTooLargeError,
    PermissionDeniedError,
    Reason,
    RequestIdReusedError,
    RetryPolicy,
    TLSConfig,
    TLSFiles,
    UnavailableError,
    Verdict,
    VerifierClient,
    VerifierError,
    error_from_rpc,
    make_scan,
)
from apcv_verify.client import Decision as D
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import (
    REPO,
    SERVER_LOGS,
    ServerProcess,
    free_port,
    start_server,
    stop_server,
    wait_serving,
)
from .test_limits import handled
from .test_stream import request, serving
from .test_tls import (
    SHORT_CONNECTIONS,
    CertificateAuthority,
    ClientFiles,
    replace_file,
    rotate_client_ca,
    serve_tls,
)


def reason(verdict: Verdict) -> str:
    return Reason.Name(verdict.reason).removeprefix("REASON_")


def serve_on(
    pki: DemoPKI, address: str, log_path: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    """``apcv-verify serve`` on a chosen ``address``, so that a test can start it late or
    start it again after killing it (conftest's start_server picks a free port itself)."""
    command = [
        sys.executable, "-m", "apcv_verify.cli", "serve", "--listen", address,
        "--anchor", str(pki.directory / "anchor.pem"),
        "--trust-list", str(pki.trust_list_path),
        *[arg for path in pki.status_list_paths.values() for arg in ("--status-list", str(path))],
        "--allow-test-identities",
    ]  # fmt: skip
    SERVER_LOGS.append(log_path)
    with log_path.open("a") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_serving(address, process)
    except Exception:
        process.kill()
        process.wait()
        raise
    return ServerProcess(process, address, log_path)


@pytest.mark.slow
def test_verify_and_a_resend_with_the_same_request_id_gets_the_same_answer(
    server: ServerProcess, pki: DemoPKI
) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> tuple[Verdict, Verdict, Verdict, Verdict]:
        async with VerifierClient(server.address, reader_id="desk-1") as client:
            scan = make_scan(code, reader_id="desk-1", request_id="h-1")
            first = await client.verify(scan)
            again = await client.verify(scan)  # a resend: same reader, same id
            retry = await client.verify(make_scan(code, reader_id="desk-1"))  # a new id
            other = await client.verify(make_scan(code, reader_id="desk-2"))
            with pytest.raises(RequestIdReusedError) as reused:
                await client.verify(
                    make_scan(qr_text(pki.present()), reader_id="desk-1", request_id="h-1")
                )
            assert (reused.value.code, reused.value.reason) == (
                grpc.StatusCode.ALREADY_EXISTS,
                "REQUEST_ID_REUSED",
            )
            return first, again, retry, other

    first, again, retry, other = asyncio.run(scenario())
    assert (first.decision, reason(first), first.duplicate) == (D.DECISION_ACCEPTED, "OK", False)
    assert first.request_id == "h-1" and first.person.identity.birth_name
    assert (again.decision, reason(again), again.resent) == (D.DECISION_ACCEPTED, "OK", True)
    again.ClearField("resent")
    assert again == first
    assert (retry.decision, reason(retry), retry.duplicate) == (D.DECISION_ACCEPTED, "OK", True)
    assert (other.decision, reason(other)) == (D.DECISION_REJECTED, "REPLAYED")


@pytest.mark.slow
def test_an_empty_reader_id_is_the_typed_invalid_argument_with_its_field(
    server: ServerProcess, pki: DemoPKI
) -> None:
    async def scenario() -> InvalidRequestError:
        async with VerifierClient(server.address) as client:
            with pytest.raises(InvalidRequestError) as raised:
                await client.verify(make_scan(qr_text(pki.present()), reader_id=""))
            return raised.value

    error = asyncio.run(scenario())
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "READER_ID_MISSING"
    assert error.field_violations == (
        FieldViolation("scan.reader.reader_id", "required", "READER_ID_MISSING"),
    )
    assert "scan.reader.reader_id" in str(error) and "APCV1" not in str(error)


@pytest.mark.slow
def test_a_request_id_is_given_once_and_a_default_reader_fills_in(
    server: ServerProcess, pki: DemoPKI
) -> None:
    scan = make_scan(qr_text(pki.present()), reader_id="", request_id="")
    scan.ClearField("request_id")

    async def scenario() -> Verdict:
        async with VerifierClient(server.address, reader_id="desk-9") as client:
            prepared = client.prepare(scan)
            assert len(prepared.request_id) == 32 and prepared.reader.reader_id == "desk-9"
            assert not scan.request_id  # the caller's message is left as it was
            return await client.verify(prepared)

    verdict = asyncio.run(scenario())
    assert reason(verdict) == "OK" and len(verdict.request_id) == 32


@pytest.mark.slow
def test_verify_batch_chunks_in_order_and_keeps_to_the_servers_max_batch(
    pki: DemoPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_SERVER_MAX_BATCH": "2"},
    )
    samples = pki.samples()
    scans = [
        make_scan(qr_text(samples[name]), reader_id="edge-1", request_id=f"b-{i}")
        for i, name in enumerate(["accepted", "expired", "revoked", "tampered", "wrong_issuer"])
    ]
    more = [make_scan(pki.present(), reader_id="edge-1", request_id=f"c-{i}") for i in range(3)]
    over = [make_scan(pki.present(), reader_id="edge-1", request_id=f"d-{i}") for i in range(3)]

    async def scenario() -> tuple[list[Verdict], list[Verdict], VerifierError]:
        async with VerifierClient(running.address) as client:
            verdicts = await client.verify_batch(scans, max_batch=2)
            # Over the server's bound: refused whole, then sent again in chunks of 2.
            with caplog.at_level(logging.WARNING, logger="apcv_verify.client"):
                adapted = await client.verify_batch(more, max_batch=3)
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(scans=over))
        return verdicts, adapted, error_from_rpc(refused.value)

    try:
        verdicts, adapted, error = asyncio.run(scenario())
    finally:
        stop_server(running)
    assert [verdict.request_id for verdict in verdicts] == [f"b-{i}" for i in range(5)]
    assert [reason(verdict) for verdict in verdicts] == [
        "OK",
        "CREDENTIAL_EXPIRED",
        "REVOKED",
        "BAD_DEVICE_SIGNATURE",
        "UNKNOWN_ISSUER",
    ]
    assert [verdict.request_id for verdict in adapted] == ["c-0", "c-1", "c-2"]
    assert [reason(verdict) for verdict in adapted] == ["OK"] * 3
    assert "max_batch lowered from 3" in caplog.text
    # What the client read: the reason and the server's bound, in the status details.
    assert isinstance(error, InvalidRequestError)
    assert error.reason == "BATCH_TOO_LARGE"
    assert dict(error.metadata) == {"max_batch": "2", "count": "3"}
    assert [item.field for item in error.field_violations] == ["scans"]


@pytest.mark.slow
def test_unavailable_is_retried_with_the_same_request_until_the_server_is_up(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """No server yet: the call is retried with backoff; once one listens, the same request
    (same request_id) is answered."""
    address = f"127.0.0.1:{free_port()}"
    code = qr_text(pki.present())
    log_path = tmp_path / "late.log"
    started: list[ServerProcess] = []

    async def scenario() -> tuple[Verdict, float]:
        retry = RetryPolicy(max_attempts=40, initial_backoff=0.1, max_backoff=0.5)
        async with VerifierClient(address, retry=retry, timeout=60) as client:
            begin = time.monotonic()
            call = asyncio.ensure_future(
                client.verify(make_scan(code, reader_id="desk-1", request_id="late-1"))
            )
            await asyncio.sleep(1.0)
            assert not call.done()  # still retrying
            started.append(await asyncio.to_thread(serve_on, pki, address, log_path))
            return await call, time.monotonic() - begin

    try:
        verdict, elapsed = asyncio.run(scenario())
    finally:
        for running in started:
            stop_server(running)
    assert (verdict.request_id, reason(verdict)) == ("late-1", "OK")
    assert elapsed >= 1.0


def test_unavailable_gives_up_after_max_attempts_and_deadlines_are_typed() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent_address = f"127.0.0.1:{silent.getsockname()[1]}"

        async def scenario() -> tuple[UnavailableError, float, DeadlineExceededError]:
            retry = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)
            async with VerifierClient(address, retry=retry, timeout=20) as client:
                begin = time.monotonic()
                with pytest.raises(UnavailableError) as unavailable:
                    await client.verify(make_scan("APCV1:X", reader_id="d"))
                spent = time.monotonic() - begin
            async with VerifierClient(silent_address, retry=retry, timeout=0.5) as client:
                with pytest.raises(DeadlineExceededError) as late:
                    await client.verify(make_scan("APCV1:X", reader_id="d"))
            return unavailable.value, spent, late.value

        unavailable, spent, late = asyncio.run(scenario())
    assert unavailable.code == grpc.StatusCode.UNAVAILABLE and unavailable.reason == ""
    assert spent < 10
    assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED and late.reason == ""


SERVICE_NAME = "apcv.verify.v1.VerifierService"
SERVICE_VERIFY = f"/{SERVICE_NAME}/Verify"


class CancellingGate:
    """A gRPC server on 127.0.0.1 in front of the service at ``service``: it ends its first
    ``cancel`` ``Verify`` calls ``CANCELLED`` without details, as a grpc.aio server past its
    capacity ends the calls it cannot take (docs/reliability.md "Past capacity"), and passes
    the others on as received. ``seen``: every request it got, as sent."""

    def __init__(self, cancel: int, service: str = "127.0.0.1:1") -> None:
        self.seen: list[bytes] = []
        self.address = ""
        self._cancel = cancel
        self._upstream = grpc.aio.insecure_channel(service)
        self._server = grpc.aio.server()

    async def _verify(self, request: bytes, context: Any) -> bytes:
        self.seen.append(request)
        if len(self.seen) <= self._cancel:
            await context.abort(grpc.StatusCode.CANCELLED, "")
        answer: bytes = await self._upstream.unary_unary(SERVICE_VERIFY)(request, timeout=10)
        return answer

    async def __aenter__(self) -> CancellingGate:
        handler = grpc.unary_unary_rpc_method_handler(self._verify)
        generic = grpc.method_handlers_generic_handler(SERVICE_NAME, {"Verify": handler})
        self._server.add_generic_rpc_handlers((generic,))
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(None)
        await self._upstream.close()


@pytest.mark.slow
def test_a_call_the_server_cancels_is_sent_again_unchanged(
    server: ServerProcess, pki: DemoPKI
) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> tuple[Verdict, list[bytes]]:
        retry = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.1)
        async with CancellingGate(2, server.address) as gate:
            async with VerifierClient(gate.address, retry=retry, reader_id="desk-1") as client:
                verdict = await client.verify(make_scan(code, reader_id="desk-1"))
            return verdict, gate.seen

    verdict, seen = asyncio.run(scenario())
    assert (verdict.decision, reason(verdict), verdict.resent) == (D.DECISION_ACCEPTED, "OK", False)
    assert len(seen) == 3 and len(set(seen)) == 1  # the same request, request id included
    assert verifier_pb2.VerifyRequest.FromString(seen[0]).scan.request_id == verdict.request_id


def test_a_call_the_server_keeps_cancelling_is_the_typed_error_after_max_attempts() -> None:
    async def scenario() -> tuple[CallCancelledError, int]:
        retry = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)
        async with CancellingGate(cancel=1_000) as gate:
            async with VerifierClient(gate.address, retry=retry, timeout=20) as client:
                with pytest.raises(CallCancelledError) as cancelled:
                    await client.verify(make_scan("APCV1:X", reader_id="d"))
            return cancelled.value, len(gate.seen)

    error, attempts = asyncio.run(scenario())
    assert attempts == 3
    assert isinstance(error, UnavailableError)  # resent as UNAVAILABLE is, and caught with it
    assert (error.code, error.reason) == (grpc.StatusCode.CANCELLED, "")


def test_the_backoff_is_exponential_jittered_and_bounded() -> None:
    policy = RetryPolicy(initial_backoff=0.2, max_backoff=3.0, multiplier=2.0)
    rng = random.Random(7)
    for retry, ceiling in enumerate([0.2, 0.4, 0.8, 1.6, 3.0, 3.0]):
        drawn = {policy.delay(retry, rng) for _ in range(50)}
        assert all(ceiling / 2 <= value <= ceiling for value in drawn)
        assert len(drawn) > 1  # jittered
    assert policy.ceiling(10_000) == 3.0
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


@pytest.mark.slow
def test_mtls_a_known_caller_is_served_and_a_stranger_is_permission_denied(
    pki: DemoPKI, tmp_path: Path
) -> None:
    ca = CertificateAuthority()
    running = serve_tls(pki, tmp_path, ca)
    known, stranger = ca.issue("his-1"), ca.issue("stranger")
    for name, issued in {"his.pem": known, "stranger.pem": stranger}.items():
        (tmp_path / name).write_bytes(issued.cert_pem)
        (tmp_path / f"{name}.key").write_bytes(issued.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.pem)

    async def scenario() -> tuple[Verdict, PermissionDeniedError]:
        tls = TLSConfig.from_files(
            ca=tmp_path / "ca.pem", cert=tmp_path / "his.pem", key=tmp_path / "his.pem.key"
        )
        assert "PRIVATE KEY" not in repr(tls)
        async with VerifierClient(running.address, tls=tls, reader_id="desk-1") as client:
            verdict = await client.verify(make_scan(qr_text(pki.present()), reader_id="desk-1"))
        other = TLSConfig(ca.pem, stranger.cert_pem, stranger.key_pem)
        async with VerifierClient(running.address, tls=other) as client:
            with pytest.raises(PermissionDeniedError) as denied:
                await client.verify(make_scan(qr_text(pki.present()), reader_id="desk-1"))
        return verdict, denied.value

    try:
        verdict, denied = asyncio.run(scenario())
    finally:
        stop_server(running)
    assert reason(verdict) == "OK"
    assert denied.reason == "CALLER_NOT_ALLOWED" and denied.field_violations == ()
    with pytest.raises(ValueError):
        TLSConfig(ca.pem, certificate_chain=known.cert_pem)  # a certificate without its key


def test_too_many_calls_is_retried_until_a_slot_frees_and_too_large_is_not(pki: DemoPKI) -> None:
    """RESOURCE_EXHAUSTED ``TOO_MANY_CALLS`` is a busy server: the call is sent again,
    unchanged, after the backoff, until it is taken. ``MESSAGE_TOO_LARGE`` would be refused
    again: it is raised at once."""
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki, max_concurrent_rpcs=1, max_message_bytes=4096) as (running, stub):
            held = stub.VerifyStream(timeout=30)  # holds the one slot
            await held.write(request("held", code))
            await held.read()
            retry = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.1)
            async with VerifierClient(
                f"127.0.0.1:{running.port}", retry=retry, reader_id="desk-1", timeout=20
            ) as client:
                waiting = asyncio.ensure_future(client.verify(make_scan(code, reader_id="edge-1")))
                await asyncio.sleep(0.5)
                assert not waiting.done()  # refused TOO_MANY_CALLS, and retried meanwhile
                await held.done_writing()  # the stream ends: its slot is free again
                assert await held.read() == grpc.aio.EOF
                verdict = await waiting
                assert (reason(verdict), verdict.duplicate) == ("OK", True)
                busy = handled(running, "RESOURCE_EXHAUSTED")
                assert busy >= 2  # refused TOO_MANY_CALLS, and sent again
                with pytest.raises(MessageTooLargeError):
                    await client.verify(make_scan("APCV1:" + "A" * 5000, reader_id="desk-1"))
                # The server counts a call once its status is sent: the client may see the
                # refusal first. Then several backoffs, in which a resend would be counted.
                deadline = time.monotonic() + 10
                while handled(running, "RESOURCE_EXHAUSTED") == busy:
                    assert time.monotonic() < deadline, "the refusal was never counted"
                    await asyncio.sleep(0.01)
                await asyncio.sleep(5 * retry.max_backoff)
                assert handled(running, "RESOURCE_EXHAUSTED") == busy + 1  # sent once

    asyncio.run(scenario())


def test_a_client_on_tls_files_calls_with_its_renewed_certificate(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """A hospital system's client certificate renewed on disk by a new CA, which alone the
    server admits from then on: once the server has ended the old connection (its connection
    age), the next call connects with the renewed files."""
    ca = CertificateAuthority()
    running = serve_tls(pki, tmp_path, ca, server=SHORT_CONNECTIONS)
    (tmp_path / "his").mkdir()
    files = ClientFiles(tmp_path / "his")
    files.write(ca, ca.issue("his-1"))
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)

    async def scenario() -> list[str]:
        tls = files.tls()  # shared: each client notices the renewal for its own channel
        async with (
            VerifierClient(running.address, tls=tls, reader_id="desk-1", retry=retry) as one,
            VerifierClient(running.address, tls=tls, reader_id="desk-2", retry=retry) as two,
        ):
            verdicts = [
                await client.verify(make_scan(qr_text(pki.present()), reader_id="desk-1"))
                for client in (one, two)
            ]
            rotate_client_ca(tmp_path, files, ca)
            await asyncio.sleep(2.5)  # past the connection age: the old connections are gone
            verdicts += [
                await client.verify(make_scan(qr_text(pki.present()), reader_id="desk-1"))
                for client in (one, two)
            ]
        return [reason(verdict) for verdict in verdicts]

    try:
        assert asyncio.run(scenario()) == ["OK"] * 4
    finally:
        stop_server(running)


def test_tls_files_caught_halfway_keep_the_previous_set(tmp_path: Path) -> None:
    """A renewal seen between its certificate and its key, then a file missing for a moment:
    the previous set is used; the whole set once the files change again."""
    ca = CertificateAuthority()
    first, second = ca.issue("his-1"), ca.issue("his-1")
    files = ClientFiles(tmp_path)
    files.write(ca, first)
    tls = files.tls()
    assert tls.current() == (TLSConfig(ca.pem, first.cert_pem, first.key_pem), 0)
    replace_file(tmp_path / "client.pem", second.cert_pem)  # the old key still
    config, generation = tls.current()
    assert (config.certificate_chain, generation) == (first.cert_pem, 0)
    (tmp_path / "client.key").unlink()
    assert tls.current()[0].certificate_chain == first.cert_pem
    replace_file(tmp_path / "client.key", second.key_pem)
    config, generation = tls.current()
    assert (config.certificate_chain, config.private_key, generation) == (
        second.cert_pem,
        second.key_pem,
        1,
    )
    assert tls.current()[1] == 1  # unchanged since
    with pytest.raises(ValueError, match="both cert and key"):
        TLSFiles(cert=tmp_path / "client.pem")
