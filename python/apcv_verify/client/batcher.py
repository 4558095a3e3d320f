"""``EdgeBatcher``: an edge reader's scans over one ``VerifyStream``, kept in a durable spool
until their final answers are stored and delivered (docs/integration.md "Edge readers").

How it works:

- :meth:`EdgeBatcher.submit` commits the scan to the spool (SQLite, WAL, ``synchronous =
  FULL``; :mod:`apcv_verify.client.spool`) before it returns, then queues it.
- One stream is open while there is work. Scans are written in groups: a group goes out when
  ``max_batch`` scans wait or the oldest has waited ``max_delay`` seconds, and at most
  ``max_in_flight`` are unanswered on the stream, so the server verifies each group in one
  core call. A group is one ``VerifyStreamRequest`` (its ``scans``; a group of one its
  ``scan``), split only to keep each request within ``max_message_bytes``: gRPC's cost is per
  message, so several scans per request is what makes a stream cheap for the server. A
  stream with nothing to send or await for ``idle_close`` seconds is half-closed.
- The server answers each request with one response, in request order: each verdict is
  matched to its scan by its place (``verdicts[i]`` answers ``scans[i]``), stored in the
  spool as the scan's final answer — one per scan, never replaced — and then delivered, to
  the ``on_answer`` callback or to the :meth:`EdgeBatcher.answers` iterator.
- A stream that ends with ``UNAVAILABLE`` (server restarted or killed, connection aged out with
  GOAWAY), ``RESOURCE_EXHAUSTED`` without details (too many calls; not gRPC's "message
  larger than max"), ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``UNKNOWN`` or ``CANCELLED`` is
  reopened after an exponential backoff with jitter
  (``retry``), and every unanswered scan is resent with its ``request_id``, unchanged: the
  server gives a resend the answer it kept for that request (``Verdict.resent``: the
  original decision, even once the presentation has expired; docs/integration.md "Answer
  recovery"), and verifies it otherwise (an accepted presentation resent by the same reader
  is an accepted ``duplicate``) — never ``REASON_REPLAYED`` because of the resend. A resent
  answer is final like any other. Other errors
  (``PERMISSION_DENIED``, ``INVALID_ARGUMENT``, ``MESSAGE_TOO_LARGE``, …) would fail again
  the same way: the batcher stops, raises the typed error from :meth:`drain` and
  :meth:`answers`, and keeps every scan in the spool.
- A new batcher on the same spool file (after a crash or a restart) resends the scans still
  pending and delivers again the answers stored but not yet delivered, with
  ``Answer.redelivered`` set: delivery is at least once, so key what you do on
  ``request_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import grpc

from .._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from .errors import MessageTooLargeError, VerifierError, error_from_rpc
from .spool import Answered, Spool
from .transport import ChannelOption, RetryPolicy, TLSConfig, TLSFiles, open_channel, tls_settings
from .unary import MAX_ID_LENGTH, make_scan

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "Answer",
    "BatcherClosedError",
    "BatcherMetrics",
    "EdgeBatcher",
    "NoMetrics",
]

log = logging.getLogger("apcv_verify.client")

#: The contract's bound on one ``VerifyStreamRequest`` of one scan (README "Batches:
#: VerifyBatch"): no scan is larger.
MAX_REQUEST_BYTES: Final = 64 * 1024
#: Default bound on a ``VerifyStreamRequest`` of several scans: half the server's default
#: ``server.max_message_bytes`` (2 MiB), which bounds it there.
MAX_MESSAGE_BYTES: Final = 1024 * 1024

#: Stream endings after which the same scans are worth sending again.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)


#: The detail the server gives every scan of a stream request of more scans than its
#: ``server.max_batch`` (docs/operations.md "Streaming"). Those scans were not verified (nor
#: kept for answer recovery): they can be sent again in smaller requests.
_OVER_MAX_BATCH = re.compile(
    r"at most (\d+) scans per request \(server\.max_batch\) \(BATCH_TOO_LARGE\)$"
)


def _server_max_batch(response: verifier_pb2.VerifyStreamResponse) -> int | None:
    """The server's ``server.max_batch`` when ``response`` refuses a request of more scans
    than that (each of its verdicts MALFORMED with that detail), else None."""
    limit = None
    for verdict in response.verdicts:
        found = _OVER_MAX_BATCH.search(verdict.detail)
        if verdict.reason != verifier_pb2.REASON_MALFORMED or found is None:
            return None
        limit = int(found.group(1))
    return limit


def _retryable(error: VerifierError) -> bool:
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # too many calls: later; too large: never
        return not isinstance(error, MessageTooLargeError)
    return error.code in _RETRYABLE


class BatcherMetrics(Protocol):
    """Hooks for the reader's own monitoring (called on the event loop; keep them quick).

    Counters (:meth:`count`): ``scans_submitted``, ``scans_sent`` (every write, resends
    included), ``scans_resent``, ``answers_stored``, ``answers_delivered``,
    ``answers_unmatched`` (a verdict for no scan in flight), ``callback_errors``,
    ``streams_opened``, ``stream_errors``, ``reconnects``. Gauges (:meth:`gauge`):
    ``scans_pending`` (no final answer yet), ``scans_in_flight`` (sent on the open stream,
    unanswered), ``answers_undelivered``, ``connected`` (1 while a stream is open).
    """

    def count(self, name: str, value: int = 1) -> None: ...

    def gauge(self, name: str, value: float) -> None: ...


class NoMetrics:
    """The default: no monitoring."""

    def count(self, name: str, value: int = 1) -> None:
        pass

    def gauge(self, name: str, value: float) -> None:
        pass


@dataclass(frozen=True)
class Answer:
    """The final answer on one scan. ``scanned_at`` is when it was submitted (Unix time);
    ``redelivered`` is set for an answer stored before a restart and delivered again."""

    request_id: str
    verdict: verifier_pb2.Verdict
    scanned_at: float
    redelivered: bool = False


class BatcherClosedError(RuntimeError):
    """The batcher is not running (not started, closed, or stopped by an error)."""


@dataclass(eq=False)
class _Item:
    request_id: str
    request: verifier_pb2.VerifyStreamRequest
    #: The encoded size of ``request``: what the scan adds to a request of several.
    size: int
    scanned_at: float
    #: Event-loop time when it was queued (its group's window starts then); 0 when loaded,
    #: or put back to be sent again.
    queued_at: float
    #: Written on a stream before (in this process, or in one before a restart).
    sent_before: bool = False


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: No more answers to store (the connection loop has ended).
_STOP: Final = _Marker("STOP")
#: No more answers to deliver.
_END: Final = _Marker("END")

AnswerCallback = Callable[[Answer], Awaitable[None] | None]


class EdgeBatcher:
    """Sends ``reader_id``'s scans to the verifier at ``target`` over one ``VerifyStream``,
    durably spooled in ``spool`` (a file path). Use ``async with`` (or :meth:`start` and
    :meth:`close`).

    ``on_answer`` (a function or coroutine function) receives every final answer; without it,
    iterate :meth:`answers`. ``send_scanned_at`` sets ``Scan.scanned_at`` to the submission
    time, for callers allowed to send it (README "Callers and disclosure"): freshness is then
    judged when the scan was made, not when it reached the server. ``retry`` paces the
    reconnections (its ``max_attempts`` is not used: scans wait in the spool until answered).
    Delivered rows are forgotten after ``retention`` seconds (their ids may then be reused).

    A group of up to ``max_batch`` scans goes as one request of at most ``max_message_bytes``:
    keep them within the server's ``server.max_message_bytes`` (2 MiB by default) and its
    ``server.max_batch`` (1,000 by default). A request over the server's ``max_batch`` is
    answered in place, each scan unverified: the batcher then lowers its own ``max_batch``
    to the server's (metric ``max_batch_lowered``) and sends those scans again.
    ``max_batch=1`` sends one scan per request, for a server older than
    ``VerifyStreamRequest.scans``.
    """

    def __init__(
        self,
        target: str,
        *,
        spool: str | Path,
        reader_id: str,
        tls: TLSConfig | TLSFiles | None = None,
        max_batch: int = 32,
        max_delay: float = 0.05,
        max_in_flight: int = 256,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        retry: RetryPolicy | None = None,
        on_answer: AnswerCallback | None = None,
        metrics: BatcherMetrics | None = None,
        send_scanned_at: bool = False,
        idle_close: float = 60.0,
        retention: float = 7 * 86400.0,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[ChannelOption] = (),
    ) -> None:
        if not reader_id or len(reader_id) > MAX_ID_LENGTH:
            raise ValueError(f"reader_id must have 1 to {MAX_ID_LENGTH} characters")
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        if max_delay < 0 or idle_close <= 0:
            raise ValueError("max_delay must be >= 0 and idle_close > 0")
        if max_message_bytes < MAX_REQUEST_BYTES:
            raise ValueError(f"max_message_bytes must be at least {MAX_REQUEST_BYTES}")
        self.target = target
        self.reader_id = reader_id
        self.spool_path = Path(spool)
        self._tls = tls
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._max_in_flight = max_in_flight
        self._max_message_bytes = max_message_bytes
        self._retry = retry or RetryPolicy(initial_backoff=0.5, max_backoff=30.0)
        self._on_answer = on_answer
        self._metrics: BatcherMetrics = metrics or NoMetrics()
        self._send_scanned_at = send_scanned_at
        self._idle_close = idle_close
        self._retention = retention
        self._metadata = tuple(metadata)
        self._options = tuple(channel_options)

        self._spool: Spool | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: verifier_pb2_grpc.VerifierServiceStub | None = None
        self._tls_generation = 0
        #: Scans without a final answer, in submission order (answers being stored excluded).
        self._pending: dict[str, _Item] = {}
        #: Scans to write on the open stream, in order.
        self._outbox: deque[_Item] = deque()
        self._in_flight = 0
        self._store_queue: asyncio.Queue[tuple[_Item, verifier_pb2.Verdict] | _Marker] = (
            asyncio.Queue()
        )
        self._deliveries: asyncio.Queue[Answer | _Marker] = asyncio.Queue()
        #: Scans submitted or loaded whose answer has not been delivered yet.
        self._open = 0
        self._undelivered = 0
        self._wake = asyncio.Event()  # the writer: something to send, or room freed
        self._work = asyncio.Event()  # the connection loop: scans are pending
        self._settled = asyncio.Event()  # every scan answered and handed over
        self._failed = asyncio.Event()
        self._error: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connection: asyncio.Task[None] | None = None
        self._iterating = False
        self._running = False
        self._closed = False
        self._last_activity = 0.0
        self._stream_answers = 0

    # -- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> EdgeBatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the spool, queue what it holds, and start sending."""
        if self._running or self._closed:
            raise BatcherClosedError("start() once per batcher")
        spool = await Spool.open(self.spool_path)
        try:
            await self._resume(spool)
        except BaseException:
            await spool.close()
            raise
        self._spool = spool
        self._open_channel(*tls_settings(self._tls))
        self._running = True
        self._update()
        self._connection = self._spawn(self._connection_loop())
        self._spawn(self._store_loop())
        if self._on_answer is not None:
            self._spawn(self._delivery_loop())

    async def _resume(self, spool: Spool) -> None:
        """Queue what a previous batcher left in the spool."""
        await spool.purge(time.time() - self._retention)
        for row in await spool.pending():
            request = verifier_pb2.VerifyStreamRequest.FromString(row.request)
            item = _Item(
                row.request_id, request, len(row.request), row.scanned_at, 0.0, sent_before=True
            )
            self._pending[item.request_id] = item
            self._outbox.append(item)
        for stored in await spool.undelivered():
            verdict = verifier_pb2.Verdict.FromString(stored.verdict)
            answer = Answer(stored.request_id, verdict, stored.scanned_at, redelivered=True)
            self._deliveries.put_nowait(answer)
            self._undelivered += 1
        self._open = len(self._pending) + self._undelivered
        if self._open == 0:
            self._settled.set()
        if self._pending or self._undelivered:
            log.info(
                "spool resumed: %d scans to resend, %d answers to deliver",
                len(self._pending),
                self._undelivered,
            )

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())  # a spool failure, or a bug: stop, keep the spool

    def _fail(self, error: BaseException | None, *, end: bool = True) -> None:
        """Stop on ``error``; ``end``: no store loop is left to end the deliveries."""
        if self._error is None and error is not None:
            self._error = error
            log.error("edge batcher stopped: %s", error)
        self._failed.set()
        if self._connection is not None and not self._connection.done():
            self._connection.cancel()
        if end:
            self._deliveries.put_nowait(_END)

    async def close(self) -> None:
        """Stop: answers already received are stored (and, with ``on_answer``, delivered);
        unanswered scans stay in the spool for the next batcher on it."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        if self._connection is not None:
            self._connection.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # the store and delivery loops finish on their own
        if self._channel is not None:
            await self._channel.close()
        if self._spool is not None:
            await self._spool.close()
            self._spool = None

    @property
    def error(self) -> BaseException | None:
        """What stopped the batcher, if anything did."""
        return self._error

    @property
    def pending(self) -> int:
        """Scans submitted and not yet answered."""
        return len(self._pending)

    # -- the caller's side -----------------------------------------------------------------

    async def submit(
        self,
        presentation: str | bytes,
        *,
        request_id: str | None = None,
        nonce: bytes = b"",
        include_fhir: bool = False,
    ) -> str:
        """Spool a scan — the QR code text (``str``) or the NFC bytes — and queue it; returns
        its ``request_id`` (a random one unless given) once the spool has committed it.
        Raises :class:`~apcv_verify.client.spool.DuplicateScanError` for an id the spool
        already holds, ``ValueError`` for a scan over the contract's 64 KiB."""
        self._check_running()
        if request_id is not None and not 0 < len(request_id) <= MAX_ID_LENGTH:
            raise ValueError(f"request_id must have 1 to {MAX_ID_LENGTH} characters")
        now = time.time()
        scan = make_scan(
            presentation,
            reader_id=self.reader_id,
            request_id=request_id,
            nonce=nonce,
            include_fhir=include_fhir,
            scanned_at=now if self._send_scanned_at else None,
        )
        request = verifier_pb2.VerifyStreamRequest(scan=scan)
        encoded = request.SerializeToString()
        if len(encoded) > MAX_REQUEST_BYTES:
            raise ValueError(f"a scan's request is at most {MAX_REQUEST_BYTES} bytes")
        assert self._spool is not None
        await self._spool.add(scan.request_id, encoded, now)
        self._check_running()  # closed while the spool wrote: it stays there for the next start
        loop = asyncio.get_running_loop()
        item = _Item(scan.request_id, request, len(encoded), now, loop.time())
        self._pending[item.request_id] = item
        self._outbox.append(item)
        self._open += 1
        self._settled.clear()
        self._count("scans_submitted")
        self._update()
        self._wake.set()
        self._work.set()
        return scan.request_id

    async def state(self, request_id: str) -> str | None:
        """The spool's state of ``request_id``: ``pending``, ``answered``, ``delivered`` or
        ``None`` when unknown (never submitted, or forgotten after ``retention``)."""
        self._check_running()
        assert self._spool is not None
        return await self._spool.state(request_id)

    async def answers(self) -> AsyncIterator[Answer]:
        """The final answers as they are stored (those left undelivered by a previous run
        first). An answer is marked delivered in the spool when the loop asks for the next
        one (so one whose processing was cut short by a crash comes again at the next start);
        the iteration ends at :meth:`close`, or raises the error that stopped the batcher."""
        if self._on_answer is not None:
            raise RuntimeError("answers go to on_answer: no iterator")
        if self._iterating:
            raise RuntimeError("one answers() iterator at a time")
        self._iterating = True
        try:
            while True:
                answer = await self._deliveries.get()
                if isinstance(answer, _Marker):
                    self._deliveries.put_nowait(answer)  # for a later iterator
                    if self._error is not None:
                        raise self._error
                    return
                self._settle(1)  # handed out: drain() need not wait for the next request
                yield answer
                await self._delivered([answer.request_id], settle=False)
        finally:
            self._iterating = False

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every scan submitted (or resumed from the spool) has its final answer
        stored and handed over (``on_answer`` returned, or :meth:`answers` yielded it).
        Raises the error that stopped the batcher, or ``TimeoutError``."""
        settled = asyncio.ensure_future(self._settled.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait(
                {settled, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            settled.cancel()
            failed.cancel()
        if self._error is not None:
            raise self._error
        if not self._settled.is_set():
            if self._failed.is_set() or self._closed:
                raise BatcherClosedError("the batcher was closed before every scan was answered")
            raise TimeoutError(f"{self._open} scans not answered and delivered yet")

    def _check_running(self) -> None:
        if self._error is not None:
            raise BatcherClosedError(f"the batcher stopped: {self._error}")
        if not self._running:
            raise BatcherClosedError("the batcher is not running")

    # -- the stream ------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        failures = 0
        try:
            while True:
                while not self._pending:
                    self._work.clear()
                    await self._work.wait()
                # Everything unanswered, in submission order: a resend after a broken stream.
                self._outbox = deque(self._pending.values())
                self._stream_answers = 0
                await self._renew_channel()
                try:
                    await self._stream()
                    failures = 0
                    continue  # half-closed when idle: open again when there is work
                except grpc.aio.AioRpcError as failure:
                    error = error_from_rpc(failure)
                except VerifierError as failure:  # answers that cannot be the scans'
                    error = failure
                self._count("stream_errors")
                if not _retryable(error):
                    self._fail(error, end=False)  # the store loop ends the deliveries
                    return
                if self._stream_answers:
                    failures = 0
                pause = self._retry.delay(failures)
                failures += 1
                log.warning(
                    "stream ended with %s %s; reopening in %.2fs, %d scans to resend",
                    error.code.name,
                    error.reason or "(no details)",
                    pause,
                    len(self._pending),
                )
                await asyncio.sleep(pause)
                self._count("reconnects")
        finally:
            self._store_queue.put_nowait(_STOP)

    def _open_channel(self, tls: TLSConfig | None, generation: int) -> None:
        self._channel = open_channel(self.target, tls, self._retry, self._options)
        self._stub = verifier_pb2_grpc.VerifierServiceStub(self._channel)
        self._tls_generation = generation  # of the TLS files it was made with

    async def _renew_channel(self) -> None:
        """Between two streams: a new channel, so a new connection, when the
        :class:`TLSFiles` were renewed since the channel was made (a renewed client
        certificate)."""
        tls, generation = tls_settings(self._tls)
        if generation == self._tls_generation:
            return
        previous = self._channel
        self._open_channel(tls, generation)
        if previous is not None:
            await previous.close()  # no stream is open on it

    async def _stream(self) -> None:
        """One stream, until it ends: normally after an idle half-close, else raising the
        call's ``AioRpcError``."""
        assert self._stub is not None
        call = self._stub.VerifyStream(metadata=self._metadata)
        sent: dict[str, _Item] = {}
        groups: deque[list[_Item]] = deque()  # the scans of each request written, oldest first
        self._count("streams_opened")
        self._gauge("connected", 1)
        self._last_activity = asyncio.get_running_loop().time()
        reader = asyncio.ensure_future(self._read(call, sent, groups))
        writer = asyncio.ensure_future(self._write(call, sent, groups))
        try:
            waiting: set[asyncio.Future[None]] = {reader, writer}
            while not reader.done():
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if writer in done and writer.exception() is not None:
                    raise writer.exception()  # type: ignore[misc]
            reader.result()  # the call's error, if it failed (or an answer that cannot be)
        finally:
            for task in (reader, writer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await task
            call.cancel()
            self._in_flight = 0
            self._gauge("connected", 0)
            self._update()

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall[object, object],
        sent: dict[str, _Item],
        groups: deque[list[_Item]],
    ) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            assert isinstance(response, verifier_pb2.VerifyStreamResponse)
            group = groups.popleft() if groups else []
            if len(group) > 1 or response.verdicts:
                self._answered_group(response, group, sent)
            else:
                self._answered(response.verdict, sent)

    def _answered_group(
        self,
        response: verifier_pb2.VerifyStreamResponse,
        group: list[_Item],
        sent: dict[str, _Item],
    ) -> None:
        """The answers to a request of several scans: ``verdicts[i]`` answers ``group[i]``."""
        if len(response.verdicts) != len(group):
            # A server older than VerifyStreamRequest.scans answers such a request as one
            # unusable scan: nothing of it may be stored as the scans' answers.
            raise VerifierError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"the server answered a request of {len(group)} scans with"
                f" {len(response.verdicts)} verdicts: it predates VerifyStreamRequest.scans"
                " (send one scan per request: max_batch=1)",
            )
        limit = _server_max_batch(response)
        if limit is not None:
            self._send_again_in_smaller_groups(group, sent, limit)
            return
        for item, verdict in zip(group, response.verdicts, strict=True):
            self._answered(verdict, sent, item)

    def _send_again_in_smaller_groups(
        self, group: list[_Item], sent: dict[str, _Item], limit: int
    ) -> None:
        """``group`` was over the server's ``server.max_batch`` (``limit``) and none of it was
        verified: keep to the server's bound from now on and put the scans back in front of
        the outbox, to be sent again. No answer is stored for them."""
        lowered = max(1, min(limit, len(group) - 1))
        if lowered < self._max_batch:
            log.warning(
                "the server takes at most %d scans per request (server.max_batch):"
                " max_batch lowered from %d",
                limit,
                self._max_batch,
            )
            self._max_batch = lowered
            self._count("max_batch_lowered")
        for item in group:
            sent.pop(item.request_id, None)
            item.queued_at = 0.0  # due already: its window has passed once
        self._outbox.extendleft(reversed(group))
        self._in_flight = len(sent)
        self._update()
        self._wake.set()

    async def _write(
        self,
        call: grpc.aio.StreamStreamCall[object, object],
        sent: dict[str, _Item],
        groups: deque[list[_Item]],
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            while self._outbox and self._outbox[0].request_id not in self._pending:
                self._outbox.popleft()
            now = loop.time()
            if not self._outbox:
                idle_for = now - self._last_activity
                if not sent and idle_for >= self._idle_close:
                    await call.done_writing()  # the server ends the stream with OK
                    return
                await self._woken(None if sent else self._idle_close - idle_for)
                continue
            window_ends = self._outbox[0].queued_at + self._max_delay
            if len(self._outbox) < self._max_batch and now < window_ends:
                await self._woken(window_ends - now)
                continue
            room = min(self._max_in_flight - len(sent), self._max_batch)
            if room <= 0:
                await self._woken(None)
                continue
            while group := self._next_group(room):
                room -= len(group)
                for item in group:
                    sent[item.request_id] = item
                groups.append(group)
                try:
                    await call.write(_request(group))
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    return  # the call has ended: the reader reports how
                self._count("scans_sent", len(group))
                resent = sum(item.sent_before for item in group)
                if resent:
                    self._count("scans_resent", resent)
                for item in group:
                    item.sent_before = True
                self._last_activity = loop.time()
                self._in_flight = len(sent)
            self._update()

    def _next_group(self, room: int) -> list[_Item]:
        """The next scans of the outbox to write as one request: at most ``room`` of them,
        and within ``max_message_bytes`` (one scan always fits: at most 64 KiB)."""
        group: list[_Item] = []
        size = 0
        while self._outbox and len(group) < room:
            item = self._outbox[0]
            if item.request_id not in self._pending:  # answered meanwhile (a resend's twin)
                self._outbox.popleft()
                continue
            if group and size + item.size > self._max_message_bytes:
                break
            self._outbox.popleft()
            group.append(item)
            size += item.size
        return group

    async def _woken(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _answered(
        self, verdict: verifier_pb2.Verdict, sent: dict[str, _Item], scan: _Item | None = None
    ) -> None:
        """Store ``verdict`` as the answer to ``scan`` (a request of several scans: matched by
        place), else to the scan in flight its ``request_id`` names."""
        if scan is not None:
            item = sent.pop(scan.request_id, None)
        else:
            item = sent.pop(verdict.request_id, None)
            if item is None and not verdict.request_id and sent:
                item = sent.pop(next(iter(sent)))  # an unnamed verdict answers the oldest scan
        if item is None or self._pending.pop(item.request_id, None) is None:
            self._count("answers_unmatched")
            log.warning("a verdict for no scan in flight (request_id %r)", verdict.request_id)
            return
        self._store_queue.put_nowait((item, verdict))
        self._stream_answers += 1
        self._in_flight = len(sent)
        self._last_activity = asyncio.get_running_loop().time()
        self._update()
        self._wake.set()

    # -- storing and delivering ------------------------------------------------------------

    async def _store_loop(self) -> None:
        while True:
            batch = [await self._store_queue.get()]
            while not self._store_queue.empty():
                batch.append(self._store_queue.get_nowait())
            answers = [entry for entry in batch if not isinstance(entry, _Marker)]
            if answers:
                await self._store(answers)
            if len(answers) < len(batch):  # _STOP: the connection loop has ended
                self._deliveries.put_nowait(_END)
                return

    async def _store(self, answers: list[tuple[_Item, verifier_pb2.Verdict]]) -> None:
        assert self._spool is not None
        stored = set(
            await self._spool.store_answers(
                [
                    Answered(
                        item.request_id,
                        verdict.SerializeToString(),
                        verdict.decision,
                        verdict.reason,
                        verdict.duplicate,
                    )
                    for item, verdict in answers
                ]
            )
        )
        for item, verdict in answers:
            if item.request_id not in stored:  # answered before: its first answer stands
                continue
            self._count("answers_stored")
            self._undelivered += 1
            self._deliveries.put_nowait(Answer(item.request_id, verdict, item.scanned_at))
        self._update()

    async def _delivery_loop(self) -> None:
        assert self._on_answer is not None
        while True:
            batch = [await self._deliveries.get()]
            while not self._deliveries.empty():
                batch.append(self._deliveries.get_nowait())
            delivered: list[str] = []
            for answer in batch:
                if isinstance(answer, _Marker):
                    await self._delivered(delivered)
                    return
                try:
                    outcome = self._on_answer(answer)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception as error:  # the answer stays in the spool for the next start
                    self._count("callback_errors")
                    log.error("on_answer raised %s for %s", type(error).__name__, answer.request_id)
                    self._settle(1)
                    continue
                delivered.append(answer.request_id)
            await self._delivered(delivered)

    async def _delivered(self, request_ids: list[str], *, settle: bool = True) -> None:
        if not request_ids:
            return
        if self._spool is not None:  # else closed: delivered again at the next start
            await self._spool.mark_delivered(request_ids)
        self._count("answers_delivered", len(request_ids))
        if settle:
            self._settle(len(request_ids))

    def _settle(self, count: int) -> None:
        self._undelivered -= count
        self._open -= count
        if self._open <= 0:
            self._settled.set()
        self._update()

    # -- metrics ---------------------------------------------------------------------------

    def _update(self) -> None:
        self._gauge("scans_pending", len(self._pending))
        self._gauge("scans_in_flight", self._in_flight)
        self._gauge("answers_undelivered", self._undelivered)

    def _count(self, name: str, value: int = 1) -> None:
        try:
            self._metrics.count(name, value)
        except Exception as error:  # the reader's monitoring never stops its scans
            log.warning("metrics hook count(%s) raised %s", name, type(error).__name__)

    def _gauge(self, name: str, value: float) -> None:
        try:
            self._metrics.gauge(name, value)
        except Exception as error:
            log.warning("metrics hook gauge(%s) raised %s", name, type(error).__name__)


def _request(group: list[_Item]) -> verifier_pb2.VerifyStreamRequest:
    """The request that carries ``group``: its one scan in ``scan``, else all in ``scans``."""
    if len(group) == 1:
        return group[0].request
    return verifier_pb2.VerifyStreamRequest(scans=[item.request.scan for item in group])
