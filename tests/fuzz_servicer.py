"""atheris target: whole requests through the gRPC servicer (docs/reliability.md "Fuzzing").

A real in-process server (``start_server``, the demo PKI, loopback) gets each input as the raw
bytes of a request: the first byte picks Verify, VerifyBatch or VerifyStream (two messages,
each of one scan or of several), the rest is the serialized request, left to the server's
own deserializers. Every call must
end in an answer or in one of the documented call errors (INVALID_ARGUMENT, RESOURCE_EXHAUSTED;
never INTERNAL, UNKNOWN or a timeout), with one verdict per scan, a decision and a reason in
each, and no NIR-shaped number in any error text. Anything else raises, which libFuzzer
reports as a crash with its input.

    .venv/bin/python -m tests.fuzz_servicer -max_total_time=60 WORK_DIR tests/fuzz-corpus/servicer

Arguments are libFuzzer's: the first corpus directory receives new inputs, so give a
scratch one before the committed seeds (``make fuzz`` and tests/test_fuzz.py do). Fresh seeds
made with this run's PKI (valid presentations, so the cases reach every verification step)
are added as a last corpus directory.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-untyped]
import grpc

with atheris.instrument_imports(include=["apcv_verify"]):
    from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
    from apcv_verify.issuer import DemoPKI, qr_text
    from apcv_verify.observe.logs import configure_logging
    from apcv_verify.service.startup import ServerHandle, start_server

from .conftest import nir_numbers, pki_config

#: The method byte (first byte of an input), as make_corpus.py writes the seeds.
VERIFY, BATCH, STREAM = 0, 1, 2
SERVICE = "/apcv.verify.v1.VerifierService/"
#: The call errors a request alone may cause (protos/apcv/verify/v1/verifier.proto):
#: ALREADY_EXISTS is a Verify whose request id was answered for another presentation.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
}
TIMEOUT = 10.0


class Target:
    """The server, on its own event loop in a thread, and raw-bytes stubs to it."""

    def __init__(self, directory: Path) -> None:
        self.pki = DemoPKI.create(directory / "pki", now=int(time.time()))
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        config = pki_config(self.pki)
        self._handle: ServerHandle = asyncio.run_coroutine_threadsafe(
            start_server(config), self._loop
        ).result(60)
        channel = self._channel = grpc.insecure_channel(f"127.0.0.1:{self._handle.port}")
        identity: Callable[[bytes], bytes] = lambda data: data  # noqa: E731 (raw bytes)
        self.verify = channel.unary_unary(
            SERVICE + "Verify", request_serializer=identity, response_deserializer=identity
        )
        self.batch = channel.unary_unary(
            SERVICE + "VerifyBatch", request_serializer=identity, response_deserializer=identity
        )
        self.stream = channel.stream_stream(
            SERVICE + "VerifyStream", request_serializer=identity, response_deserializer=identity
        )

    def close(self) -> None:
        """Stop the server and its loop (a fuzzing run just exits)."""
        self._channel.close()
        asyncio.run_coroutine_threadsafe(self._handle.stop(1.0), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def fresh_seeds(self, directory: Path) -> Path:
        """Valid requests with this run's presentations, one file each, in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        presentations = self.pki.samples()
        for n, (name, presentation) in enumerate(presentations.items()):
            scan = verifier_pb2.Scan(request_id=f"f-{n}", qr_text=qr_text(presentation))
            scan.reader.reader_id = "desk-1"
            (directory / f"verify-{name}").write_bytes(
                bytes([VERIFY]) + verifier_pb2.VerifyRequest(scan=scan).SerializeToString()
            )
            stream = verifier_pb2.VerifyStreamRequest(scan=scan).SerializeToString()
            (directory / f"stream-{name}").write_bytes(bytes([STREAM]) + stream)
        scans = []
        for n, presentation in enumerate(presentations.values()):
            scan = verifier_pb2.Scan(request_id=f"b-{n}", nfc_bytes=presentation)
            scan.reader.reader_id = "desk-2"
            scans.append(scan)
        batch = verifier_pb2.VerifyBatchRequest(scans=scans).SerializeToString()
        (directory / "batch").write_bytes(bytes([BATCH]) + batch)
        several = verifier_pb2.VerifyStreamRequest(scans=scans).SerializeToString()
        (directory / "stream-scans").write_bytes(bytes([STREAM]) + several)
        return directory

    def one_input(self, data: bytes) -> None:
        if not data:
            return
        method, body = data[0] % 3, data[1:]
        try:
            if method == VERIFY:
                reply = verifier_pb2.VerifyResponse.FromString(self.verify(body, timeout=TIMEOUT))
                verdicts = [reply.verdict]
                expected = _scans(verifier_pb2.VerifyRequest, body, lambda r: 1)
            elif method == BATCH:
                verdicts = list(
                    verifier_pb2.VerifyBatchResponse.FromString(
                        self.batch(body, timeout=TIMEOUT)
                    ).verdicts
                )
                expected = _scans(verifier_pb2.VerifyBatchRequest, body, lambda r: len(r.scans))
            else:
                replies = self.stream(iter([body, body]), timeout=TIMEOUT)
                verdicts = [
                    verdict
                    for reply in replies
                    for verdict in _stream_verdicts(
                        verifier_pb2.VerifyStreamResponse.FromString(reply)
                    )
                ]
                per_request = _scans(verifier_pb2.VerifyStreamRequest, body, _stream_scans)
                expected = None if per_request is None else 2 * per_request
        except grpc.RpcError as error:
            code = error.code()
            details = error.details() or ""
            if code not in ALLOWED:
                raise AssertionError(f"call ended {code.name}: {details}") from None
            assert not nir_numbers(details), "a NIR-shaped number in an error"
            return
        if expected is not None:
            assert len(verdicts) == expected, f"{len(verdicts)} verdicts for {expected} scans"
        for verdict in verdicts:
            assert verdict.decision != verifier_pb2.DECISION_UNSPECIFIED, "no decision"
            assert verdict.reason != verifier_pb2.REASON_UNSPECIFIED, "no reason"
            accepted = verdict.decision == verifier_pb2.DECISION_ACCEPTED
            assert accepted == (verdict.reason == verifier_pb2.REASON_OK), "decision vs reason"
            assert not nir_numbers(verdict.detail), "a NIR-shaped number in a detail"


def _stream_scans(request: verifier_pb2.VerifyStreamRequest) -> int:
    """The verdicts a stream request gets: one per scan of ``scans``, and one for ``scan``
    (or for neither field set)."""
    return len(request.scans) + (request.HasField("scan") or not request.scans)


def _stream_verdicts(response: verifier_pb2.VerifyStreamResponse) -> list[verifier_pb2.Verdict]:
    return [response.verdict] * response.HasField("verdict") + list(response.verdicts)


def _scans(message: Any, body: bytes, count: Callable[[Any], int]) -> int | None:
    """How many scans ``body`` holds when it parses as ``message`` (else unknown: None)."""
    try:
        return count(message.FromString(body))
    except Exception:  # noqa: BLE001 (any parse failure: the server judges it)
        return None


def main() -> None:
    # Warnings and errors only: one audit line per scan would drown libFuzzer's report.
    configure_logging("warning")
    work = Path(tempfile.mkdtemp(prefix="apcv-fuzz-"))
    target = Target(work)
    seeds = target.fresh_seeds(work / "fresh-seeds")
    argv = [*sys.argv, str(seeds)]
    atheris.Setup(argv, target.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
