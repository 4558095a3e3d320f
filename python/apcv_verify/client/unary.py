"""``VerifierClient``: ``Verify`` and ``VerifyBatch`` for hospital systems, with deadlines,
idempotent retries on ``UNAVAILABLE`` (and the server's ``CANCELLED``, and a busy server's
``RESOURCE_EXHAUSTED``) and typed errors (docs/integration.md)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final

import grpc

from .._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from .errors import ServerBusyError, UnavailableError, VerifierError, error_from_rpc
from .transport import ChannelOption, RetryPolicy, TLSConfig, TLSFiles, open_channel, tls_settings

__all__ = ["MAX_ID_LENGTH", "VerifierClient", "make_scan"]

log = logging.getLogger("apcv_verify.client")

#: Errors after which the same call is sent again: the server was unreachable, ended the call
#: unanswered, or had too many calls in progress; a message too large is not among them.
_RETRIED = (UnavailableError, ServerBusyError)

#: How long calls without a deadline may go on on a channel left for renewed TLS files.
RETIRE_GRACE_SECONDS: Final = 3600.0

#: The contract's bound on ``request_id`` and ``reader_id`` (characters).
MAX_ID_LENGTH: Final = 128

Scan = verifier_pb2.Scan
Verdict = verifier_pb2.Verdict


class _Default:
    """The client's own timeout, as opposed to an explicit ``None`` (no deadline)."""


DEFAULT: Final = _Default()


def make_scan(
    presentation: str | bytes,
    *,
    reader_id: str,
    request_id: str | None = None,
    nonce: bytes = b"",
    include_fhir: bool = False,
    scanned_at: float | None = None,
) -> verifier_pb2.Scan:
    """A ``Scan``: ``presentation`` is the QR code text (``str``, ``"APCV1:…"``) or the raw
    NFC bytes; ``request_id`` defaults to a fresh random id; ``scanned_at`` (Unix seconds) is
    for callers allowed to send it (README "Callers and disclosure")."""
    scan = verifier_pb2.Scan(
        request_id=request_id or new_request_id(),
        reader=verifier_pb2.ReaderContext(reader_id=reader_id, nonce=nonce),
        include_fhir=include_fhir,
    )
    if isinstance(presentation, str):
        scan.qr_text = presentation
    else:
        scan.nfc_bytes = presentation
    if scanned_at is not None:
        scan.scanned_at.FromSeconds(int(scanned_at))
    return scan


def new_request_id() -> str:
    """A random ``request_id`` (32 hexadecimal characters)."""
    return uuid.uuid4().hex


class VerifierClient:
    """An asyncio client of ``apcv.verify.v1.VerifierService`` on one channel.

    ``timeout`` (seconds, ``None`` for none) is the deadline of a whole :meth:`verify` or of
    one :meth:`verify_batch` chunk, retries included. A call failing with ``UNAVAILABLE``,
    ``CANCELLED`` by the server's side (:class:`~apcv_verify.client.errors.CallCancelledError`:
    an overloaded server ends the calls it cannot take so) or ``RESOURCE_EXHAUSTED`` other than
    a message too large (:class:`~apcv_verify.client.errors.ServerBusyError`: too many calls in
    progress) is sent again, unchanged (same
    ``request_id``), after ``retry``'s backoff, at most ``retry.max_attempts`` times in all
    and never past the deadline: the server gives a resend the answer it kept for that request
    (``Verdict.resent``, the final answer, even once the presentation has expired), never
    ``REASON_REPLAYED`` because of the retry. A
    scan without ``request_id`` gets a random one first, so its retries share it; one without
    ``reader.reader_id`` gets ``reader_id`` when given. Failures raise the typed exceptions of
    :mod:`apcv_verify.client.errors` (``RequestIdReusedError``: another presentation under a
    request id already answered).
    """

    def __init__(
        self,
        target: str,
        *,
        tls: TLSConfig | TLSFiles | None = None,
        timeout: float | None = 10.0,
        retry: RetryPolicy | None = None,
        reader_id: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[ChannelOption] = (),
    ) -> None:
        self.target = target
        self._tls = tls
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._reader_id = reader_id
        self._metadata = tuple(metadata)
        self._options = tuple(channel_options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: verifier_pb2_grpc.VerifierServiceStub | None = None
        #: The generation of the TLS files the channel was made with (TLSFiles.current).
        self._tls_generation = 0
        #: Channels left for renewed TLS files, closing once their calls are done.
        self._retiring: dict[grpc.aio.Channel, asyncio.Future[None]] = {}

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (calls still open are cancelled)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
        for channel, closing in list(self._retiring.items()):
            await channel.close()  # as the current one: the calls still open are cancelled
            await closing

    def _service(self) -> verifier_pb2_grpc.VerifierServiceStub:
        """The stub to call now: made on first use, inside the running event loop that will
        drive it, and made again on a new channel when :class:`TLSFiles` were renewed."""
        tls, generation = tls_settings(self._tls)
        if self._stub is None or generation != self._tls_generation:
            if self._channel is not None:
                self._retire(self._channel)
            self._channel = open_channel(self.target, tls, self._retry, self._options)
            self._stub = verifier_pb2_grpc.VerifierServiceStub(self._channel)
            self._tls_generation = generation
        return self._stub

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close ``channel`` once the calls on it are done (within the client's timeout)."""
        grace = self._timeout if self._timeout is not None else RETIRE_GRACE_SECONDS
        closing = asyncio.ensure_future(channel.close(grace))
        self._retiring[channel] = closing
        closing.add_done_callback(lambda _: self._retiring.pop(channel, None))

    def prepare(self, scan: verifier_pb2.Scan) -> verifier_pb2.Scan:
        """A copy of ``scan`` with its ``request_id`` (and default ``reader_id``) filled in."""
        prepared = verifier_pb2.Scan()
        prepared.CopyFrom(scan)
        if not prepared.request_id:
            prepared.request_id = new_request_id()
        if self._reader_id and not prepared.reader.reader_id:
            prepared.reader.reader_id = self._reader_id
        return prepared

    async def verify(
        self, scan: verifier_pb2.Scan, *, timeout: float | None | _Default = DEFAULT
    ) -> verifier_pb2.Verdict:
        """The verdict on one scan (``Verify``). A rejected presentation is a verdict
        (``DECISION_REJECTED`` and its reason), not an exception."""
        request = verifier_pb2.VerifyRequest(scan=self.prepare(scan))
        response: verifier_pb2.VerifyResponse = await self._call(
            request, self._deadline(timeout), "Verify"
        )
        return response.verdict

    async def verify_batch(
        self,
        scans: Iterable[verifier_pb2.Scan],
        *,
        timeout: float | None | _Default = DEFAULT,
        max_batch: int = 1000,
    ) -> list[verifier_pb2.Verdict]:
        """The verdicts on ``scans``, in their order (``VerifyBatch``), sent in chunks of at
        most ``max_batch`` (the server's ``server.max_batch``, 1,000 by default), one after
        the other so that replay is judged in order; ``timeout`` applies to each chunk. An
        unusable item is answered in place (``REASON_MALFORMED``), not raised. A chunk the
        server refuses as over its ``server.max_batch`` (``BATCH_TOO_LARGE``, nothing of it
        verified) is sent again in chunks of the server's bound, which the client then keeps
        to for the rest of the call."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        prepared = [self.prepare(scan) for scan in scans]
        verdicts: list[verifier_pb2.Verdict] = []
        start = 0
        while start < len(prepared):
            chunk = prepared[start : start + max_batch]
            request = verifier_pb2.VerifyBatchRequest(scans=chunk)
            deadline = self._deadline(timeout)
            try:
                response: verifier_pb2.VerifyBatchResponse = await self._call(
                    request, deadline, "VerifyBatch"
                )
            except VerifierError as error:
                server_max = _server_max_batch(error)
                if server_max is None or server_max >= len(chunk):
                    raise
                log.warning(
                    "the server takes at most %d scans per batch (server.max_batch):"
                    " max_batch lowered from %d",
                    server_max,
                    max_batch,
                )
                max_batch = server_max
                continue
            verdicts.extend(response.verdicts)
            start += len(chunk)
        return verdicts

    def _deadline(self, timeout: float | None | _Default) -> float | None:
        seconds = self._timeout if isinstance(timeout, _Default) else timeout
        return None if seconds is None else asyncio.get_running_loop().time() + seconds

    async def _call(self, request: object, deadline: float | None, name: str) -> Any:
        """``name`` (``Verify``, ``VerifyBatch``) of ``request``, retried as the class says;
        each attempt on the channel of the TLS files as they are then."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            method = getattr(self._service(), name)
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.aio.AioRpcError as failure:
                error: VerifierError = error_from_rpc(failure)
            if not isinstance(error, _RETRIED) or attempt >= self._retry.max_attempts:
                raise error
            pause = self._retry.delay(attempt - 1)
            if deadline is not None and loop.time() + pause >= deadline:
                raise error
            log.info(
                "retrying %s after %s (attempt %d) in %.2fs", name, error.code.name, attempt, pause
            )
            await asyncio.sleep(pause)


def _server_max_batch(error: VerifierError) -> int | None:
    """The server's ``server.max_batch`` when ``error`` refuses a batch over it
    (``BATCH_TOO_LARGE``, metadata ``max_batch``), else None."""
    if error.reason != "BATCH_TOO_LARGE":
        return None
    try:
        limit = int(error.metadata.get("max_batch", ""))
    except ValueError:
        return None
    return limit if limit >= 1 else None
