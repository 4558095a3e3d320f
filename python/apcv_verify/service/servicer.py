"""``apcv.verify.v1.VerifierService`` over grpc.aio.

The servicer is thin: protobuf → :class:`~apcv_verify._native.Scan`
→ the Rust core → protobuf. Signature, status and replay checks all happen in the core
(docs/architecture.md "The core decides, Python transports"); Python never sees CBOR or curves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NoReturn, cast

import grpc

from .. import _native
from .._proto.apcv.verify.v1 import verifier_pb2
from ..config import CallerPolicy, Config
from ..observe.audit import AuditTrail
from ..replay.answers import REUSED, Answer, AnswerRecovery, Reused
from ..replay.redis import RedisReplayStore
from ..trust.sources import TrustSource
from .decode import (
    MAX_REQUEST_BYTES,
    UNDECODABLE,
    BatchItems,
    TooLarge,
    Undecodable,
    bounded,
    deserialize_batch,
    lenient,
)
from .errors import FieldProblem, abort
from .messages import core_scan, fill_verdict, scan_problem
from .policy import CallRefused, caller_id, resolve_caller

__all__ = ["SERVICE_NAME", "VerifierService", "add_verifier_service"]

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name
#: Up to this many scans are verified on the event loop, more in a worker thread
#: (docs/benchmarks.md: the hop to a thread and back costs about half a scan's core time).
INLINE_SCANS = 2


class VerifierService:
    """``apcv.verify.v1.VerifierService``: protobuf in, core decision out, filtered by caller
    policy. Its requests come from the lenient deserializers of :func:`add_verifier_service`,
    so an undecodable request or item is an :class:`Undecodable` to answer, not an error."""

    def __init__(
        self,
        trust: TrustSource,
        config: Config,
        audit: AuditTrail,
        replay: RedisReplayStore | None = None,
        recovery: AnswerRecovery | None = None,
    ) -> None:
        #: Read once per call (``trust.current``): a refresh swaps the snapshot, never edits it.
        self._trust = trust
        self._config = config
        self._audit = audit
        #: The shared replay store (replay.backend = "redis"), else None (in-process store).
        self._replay = replay
        #: Answer recovery (replay.answer_retention_seconds > 0), else None.
        self._recovery = recovery
        self._disclosures: dict[tuple[str, str], frozenset[str]] = {}

    def _caller(self, context: grpc.aio.ServicerContext) -> tuple[str, CallerPolicy | CallRefused]:
        """The caller and its policy, or why it may not call (to abort with: see
        :func:`_refuse`)."""
        caller = caller_id(context.auth_context())
        try:
            return caller, resolve_caller(self._config, caller)
        except CallRefused as refused:
            return caller, refused

    def _disclosed(self, policy: CallerPolicy, use: str) -> frozenset[str]:
        """``policy.disclosed(use)``, computed once per caller and use (the policies are the
        configuration's: fixed for the server's life)."""
        key = (policy.id, use)
        groups = self._disclosures.get(key)
        if groups is None:
            groups = self._disclosures[key] = policy.disclosed(use)
        return groups

    async def Verify(  # noqa: N802 (gRPC method name)
        self,
        request: verifier_pb2.VerifyRequest | Undecodable | TooLarge,
        context: grpc.aio.ServicerContext,
    ) -> verifier_pb2.VerifyResponse:
        if isinstance(request, TooLarge):
            await request.abort(context)
        if isinstance(request, Undecodable):
            await _invalid_argument(
                context, FieldProblem("REQUEST_UNDECODABLE", "scan", UNDECODABLE)
            )
        scan = request.scan
        problem = scan_problem(scan)
        if problem is not None:
            await _invalid_argument(context, _at("scan", problem))
        caller, policy = self._caller(context)
        if isinstance(policy, CallRefused):
            await _refuse(context, policy)
        # A batch of one, through the same code as VerifyBatch and VerifyStream.
        reply = verifier_pb2.VerifyResponse()
        await self._answer(
            "Verify", [scan], [reply.verdict], policy, caller, context, positions=None, path=None
        )
        return reply

    async def VerifyBatch(  # noqa: N802 (gRPC method name)
        self,
        request: verifier_pb2.VerifyBatchRequest | BatchItems | Undecodable | TooLarge,
        context: grpc.aio.ServicerContext,
    ) -> verifier_pb2.VerifyBatchResponse:
        if isinstance(request, TooLarge):
            await request.abort(context)
        if isinstance(request, Undecodable):
            await _invalid_argument(
                context, FieldProblem("REQUEST_UNDECODABLE", "scans", UNDECODABLE)
            )
        items: Sequence[verifier_pb2.Scan | Undecodable] = (
            request.scans if isinstance(request, verifier_pb2.VerifyBatchRequest) else request
        )
        limit = self._config.server.max_batch
        if not items:
            await _invalid_argument(context, FieldProblem("BATCH_EMPTY", "scans", "empty batch"))
        if len(items) > limit:
            await _invalid_argument(
                context,
                FieldProblem(
                    "BATCH_TOO_LARGE", "scans", f"at most {limit} scans (server.max_batch)"
                ),
                f"batch of {len(items)} scans is over the limit of {limit} (server.max_batch)",
                metadata={"max_batch": str(limit), "count": str(len(items))},
            )
        caller, policy = self._caller(context)
        if isinstance(policy, CallRefused):
            await _refuse(context, policy)
        # The verdicts are filled in place in the reply (a message added to a repeated field
        # would be copied).
        reply = verifier_pb2.VerifyBatchResponse()
        add = reply.verdicts.add
        await self._judge(
            "VerifyBatch",
            items,
            [add() for _ in items],
            policy,
            caller,
            context,
            path=lambda index: f"scans[{index}]",
        )
        self._audit.record_batch(len(items))
        max_bytes = self._config.server.max_message_bytes
        if reply.ByteSize() > max_bytes:
            # gRPC would refuse to send it with a message naming nothing. The scans are
            # verified (and audited): a retry from the same reader is a duplicate, not REPLAYED.
            too_large = TooLarge(
                "response", reply.ByteSize(), max_bytes, "server.max_message_bytes"
            )
            await too_large.abort(context)
        return reply

    async def _answer(
        self,
        method: str,
        items: Sequence[verifier_pb2.Scan],
        verdicts: Sequence[verifier_pb2.Verdict],
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
        *,
        positions: Sequence[int] | None,
        path: Callable[[int], str] | None,
    ) -> None:
        """Verify valid ``items`` in one core call (one snapshot, one ``now``, replay in
        item order), audit each decision and answer them in ``verdicts`` (empty, in the
        reply), in order. ``positions`` number
        them in the audit (a batch's items by their index, a stream's by their place in it;
        None for the one item of a unary Verify, audited without a number).

        With answer recovery, a resend gets its kept answer instead of a verification, and
        another presentation under a request id already answered is refused: ALREADY_EXISTS
        for Verify (``path`` None), in place for a batch or stream item (``path`` of its
        position, as in :meth:`_judge`).

        One coroutine from the scans to the answers: the checks that may end the call are
        plain tests, with an ``await`` only on the way out."""
        try:
            scans = [core_scan(item, policy, caller) for item in items]
        except CallRefused as refused:
            await _refuse(context, refused)
        now = int(time.time())
        started = time.perf_counter()
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # nobody waits for the answer any more
            await abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_PASSED", "deadline passed"
            )
        snapshot = self._trust.current  # the one read of this call: it verifies on this
        if snapshot is None:
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "TRUST_LIST_NOT_LOADED",
                "no trust list loaded yet",
            )
        if self._trust.refuses(snapshot, time.time()):
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "TRUST_LIST_EXPIRED",
                "the trust list in use expired more than trust.expired_grace_seconds ago;"
                " waiting for a valid one",
            )
        verifier = snapshot.verifiers[policy.max_scan_delay_seconds]

        async def verify(scans: list[_native.Scan]) -> list[_native.VerificationResult]:
            if len(scans) <= INLINE_SCANS:
                # A scan or two take less than the hop to a thread and back, and one item
                # never uses the core's threads: verify on the event loop.
                results = verifier.verify_batch(scans, now)
            else:
                # verify_batch releases the GIL for the whole batch: run it off the loop.
                results = await asyncio.to_thread(verifier.verify_batch, scans, now)
            if self._replay is not None:  # step 9 on the shared store: one round trip
                results = await self._replay.settle(scans, results, now)
            return results

        answers: Sequence[Answer]
        if self._recovery is None:
            answers = await verify(scans)
        else:
            requests = [(caller, item.reader.reader_id, item.request_id) for item in items]
            answers = await self._recovery.answer(scans, requests, now, verify)
        if path is None and answers[0] is REUSED:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                REUSED.reason,
                f"scan.request_id: {REUSED.description}",
            )
        latency = time.perf_counter() - started
        audited_items, audited, numbers = items, answers, positions
        if any(answer is REUSED for answer in answers):  # refused, not verified: no audit
            kept = [i for i, answer in enumerate(answers) if answer is not REUSED]
            audited_items = [items[i] for i in kept]
            audited = [answers[i] for i in kept]
            numbers = None if positions is None else [positions[i] for i in kept]
        self._audit.record_verifications(
            method,
            audited_items,
            cast(Sequence[_native.VerificationResult], audited),
            latency_seconds=latency,
            caller=caller,
            positions=numbers,
        )
        canonical_base = self._config.fhir.canonical_base
        disclosed = self._disclosed
        for index, (verdict, item, result) in enumerate(zip(verdicts, items, answers, strict=True)):
            if isinstance(result, Reused):  # a batch or stream item: answered in place
                assert path is not None and positions is not None
                _reused_in_place(verdict, item.request_id, path(positions[index]))
                continue
            fill_verdict(
                verdict,
                item.request_id,
                result,
                disclosed=disclosed(policy, result.use or ""),
                include_fhir=item.include_fhir,
                verified_at=now if result.verified_at is None else result.verified_at,
                fhir_canonical_base=canonical_base,
            )

    async def VerifyStream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[verifier_pb2.VerifyStreamRequest | Undecodable | TooLarge],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[verifier_pb2.VerifyStreamResponse]:
        """Answer a stream of requests in request order, ``server.stream_window`` at most
        read ahead of the answers, verifying whatever has arrived as one micro-batch."""
        caller, policy = self._caller(context)
        if isinstance(policy, CallRefused):
            await _refuse(context, policy)
        window = self._config.server.stream_window
        cap = min(window, self._config.server.max_batch)
        # One credit per request read and not yet answered: with none left the reader stops
        # reading, and HTTP/2 flow control stops the client (docs/operations.md "Streaming").
        credits = asyncio.Semaphore(window)
        arrived: asyncio.Queue[verifier_pb2.VerifyStreamRequest | Undecodable | None] = (
            asyncio.Queue()
        )

        async def read() -> TooLarge | None:
            try:
                while True:
                    await credits.acquire()
                    request = await anext(aiter(request_iterator), None)
                    if request is None:  # the client half-closed
                        return None
                    if isinstance(request, TooLarge):  # answered up to here, then the call ends
                        return request
                    arrived.put_nowait(request)
            finally:
                arrived.put_nowait(None)

        reader = asyncio.create_task(read(), name="VerifyStream reader")
        answered = 0
        try:
            while True:
                batch = [await arrived.get()]
                while batch[-1] is not None and len(batch) < cap and not arrived.empty():
                    batch.append(arrived.get_nowait())
                items = [
                    request if isinstance(request, Undecodable) else request.scan
                    for request in batch
                    if request is not None
                ]
                replies = [verifier_pb2.VerifyStreamResponse() for _ in items]
                await self._judge(
                    "VerifyStream",
                    items,
                    [reply.verdict for reply in replies],
                    policy,
                    caller,
                    context,
                    path=lambda _position: "scan",
                    first_position=answered,
                    scanned_at_in_place=True,
                )
                for reply in replies:
                    yield reply
                    answered += 1
                    credits.release()
                if batch[-1] is None:
                    break
            too_large = await reader  # re-raises what ended the request stream, if not the client
            if too_large is not None:
                await too_large.abort(context)
        finally:
            reader.cancel()  # cancellation of the call: read nothing more

    async def _judge(
        self,
        method: str,
        items: Sequence[verifier_pb2.Scan | Undecodable],
        verdicts: Sequence[verifier_pb2.Verdict],
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
        *,
        path: Callable[[int], str],
        first_position: int = 0,
        scanned_at_in_place: bool = False,
    ) -> None:
        """A batch, or one micro-batch of a stream: unusable items answered REJECTED /
        MALFORMED in place with the field in ``detail`` (``path`` of the item's position, then
        the field), the others verified in one core call; each item's verdict filled in
        ``verdicts`` (empty, in the reply), in item order. With ``scanned_at_in_place`` (a
        stream), an item with ``scanned_at`` from a caller without that right is answered in
        place too (SCANNED_AT_NOT_ALLOWED in ``detail``) instead of ending the call."""
        valid: list[verifier_pb2.Scan] = []
        targets: list[verifier_pb2.Verdict] = []
        positions: list[int] = []
        for position, (item, verdict) in enumerate(
            zip(items, verdicts, strict=True), first_position
        ):
            if isinstance(item, Undecodable):
                problem: FieldProblem | None = FieldProblem("REQUEST_UNDECODABLE", "", UNDECODABLE)
            else:
                problem = scan_problem(item)
                if (
                    problem is None
                    and scanned_at_in_place
                    and not policy.may_send_scanned_at
                    and item.HasField("scanned_at")
                ):
                    problem = SCANNED_AT_REFUSED
            if problem is None:
                assert not isinstance(item, Undecodable)
                valid.append(item)
                targets.append(verdict)
                positions.append(position)
                continue
            verdict.request_id = "" if isinstance(item, Undecodable) else item.request_id
            verdict.decision = verifier_pb2.DECISION_REJECTED
            verdict.reason = verifier_pb2.REASON_MALFORMED
            verdict.detail = str(_at(path(position), problem))
        if valid:
            await self._answer(
                method, valid, targets, policy, caller, context, positions=positions, path=path
            )


#: A stream item's ``scanned_at`` from a caller without ``may_send_scanned_at``.
SCANNED_AT_REFUSED = FieldProblem(
    "SCANNED_AT_NOT_ALLOWED",
    "scanned_at",
    "not allowed for this caller (SCANNED_AT_NOT_ALLOWED)",
)


def _reused_in_place(verdict: verifier_pb2.Verdict, request_id: str, path: str) -> None:
    """Answer in place a batch or stream item whose request id was already answered for
    another presentation: REJECTED, MALFORMED, the field and REQUEST_ID_REUSED in ``detail``."""
    verdict.request_id = request_id
    verdict.decision = verifier_pb2.DECISION_REJECTED
    verdict.reason = verifier_pb2.REASON_MALFORMED
    verdict.detail = f"{path}.request_id: {REUSED.description} ({REUSED.reason})"


async def _refuse(context: grpc.aio.ServicerContext, refused: CallRefused) -> NoReturn:
    await abort(context, grpc.StatusCode.PERMISSION_DENIED, refused.reason, str(refused))


async def _invalid_argument(
    context: grpc.aio.ServicerContext,
    problem: FieldProblem,
    message: str | None = None,
    *,
    metadata: dict[str, str] | None = None,
) -> NoReturn:
    """End the call INVALID_ARGUMENT: ``problem``'s reason, and its field violation."""
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        problem.reason,
        str(problem) if message is None else message,
        violations=[problem],
        metadata=metadata,
    )


def _at(path: str, problem: FieldProblem) -> FieldProblem:
    """``problem`` with its field given from the request message (``path`` = the scan's)."""
    field = f"{path}.{problem.field}" if problem.field else path
    return FieldProblem(problem.reason, field, problem.description)


def add_verifier_service(service: VerifierService, server: grpc.aio.Server) -> None:
    """Register ``service`` as ``apcv.verify.v1.VerifierService`` on ``server``, like the
    generated ``add_VerifierServiceServicer_to_server`` but with request deserializers that
    never raise: grpcio would answer a request it cannot decode with UNKNOWN and the
    exception text (unary) or end a whole stream for one bad message; here the service
    answers it (INVALID_ARGUMENT, or MALFORMED in place for a batch or stream item). They
    also measure each message: one over its limit is a :class:`TooLarge`, left undecoded."""
    # A batch is bounded by server.max_message_bytes, a request of one scan by
    # MAX_REQUEST_BYTES too (the setting is named only when it is the smaller bound).
    max_bytes = service._config.server.max_message_bytes
    setting = "server.max_message_bytes"
    scan_limit, scan_setting = (
        (max_bytes, setting) if max_bytes <= MAX_REQUEST_BYTES else (MAX_REQUEST_BYTES, None)
    )
    handlers = {
        "Verify": grpc.unary_unary_rpc_method_handler(
            service.Verify,
            request_deserializer=bounded(
                lenient(verifier_pb2.VerifyRequest), "request", scan_limit, scan_setting
            ),
            response_serializer=verifier_pb2.VerifyResponse.SerializeToString,
        ),
        "VerifyBatch": grpc.unary_unary_rpc_method_handler(
            service.VerifyBatch,
            request_deserializer=bounded(deserialize_batch, "batch", max_bytes, setting),
            response_serializer=verifier_pb2.VerifyBatchResponse.SerializeToString,
        ),
        "VerifyStream": grpc.stream_stream_rpc_method_handler(
            service.VerifyStream,
            request_deserializer=bounded(
                lenient(verifier_pb2.VerifyStreamRequest), "request", scan_limit, scan_setting
            ),
            response_serializer=verifier_pb2.VerifyStreamResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
