"""``apcv.verify.v1.VerifierService`` over grpc.aio.

The servicer is thin: the request's bytes → the Rust core → the response's bytes. Signature,
status and replay checks all happen in the core (docs/architecture.md "The core decides, Python
transports"); Python never sees CBOR or curves. ``Verify`` requests, ``VerifyBatch`` requests
and ``VerifyStream`` micro-batches go to the core as the bytes gRPC received
(:class:`~apcv_verify._native.WireBatch`: decoded, checked and answered in Rust by the rules
of :mod:`~apcv_verify.service.messages`), so no Python object is built per item; Python keeps
the call errors, the caller policy, the I/O and the FHIR form.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from .. import _native, fhir
from .._proto.apcv.verify.v1 import verifier_pb2
from ..config import USES, CallerPolicy, Config
from ..observe.audit import AuditTrail
from ..replay.answers import REUSED, AnswerRecovery
from ..replay.redis import RedisReplayStore
from ..trust.sources import TrustSource
from .decode import MAX_REQUEST_BYTES, UNDECODABLE, TooLarge, left_encoded
from .errors import FieldProblem, Refusal, abort
from .interceptors import Registration
from .policy import (
    CALLER,
    CallRefused,
    CertificateRefused,
    RefusalLog,
    caller_id,
    reader_refusal,
    refuse_certificate,
    resolve_caller,
    scanned_at_permission,
)
from .revocation import ClientRevocation, certificate_pem

__all__ = ["SERVICE_NAME", "VerifierService", "add_verifier_service"]

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name
#: Up to this many scans are verified on the event loop, more in a worker thread
#: (docs/benchmarks.md: the hop to a thread and back costs about half a scan's core time).
INLINE_SCANS = 2
#: The setting that bounds batches, stream requests of several scans and every response.
_MAX_BYTES = "server.max_message_bytes"
#: The reader-id sets kept at most (one per caller policy, or per caller for a policy whose
#: readers name the caller): past it they are made again as calls come.
MAX_READER_ID_SETS = 4096


class VerifierService:
    """``apcv.verify.v1.VerifierService``: encoded requests in, the core's decisions out,
    filtered by caller policy. Its requests come from the deserializers of
    :func:`add_verifier_service`, which leave them encoded (or a :class:`TooLarge`), so an
    undecodable request or item is answered here, not by grpcio."""

    def __init__(
        self,
        trust: TrustSource,
        config: Config,
        audit: AuditTrail,
        replay: RedisReplayStore | None = None,
        recovery: AnswerRecovery | None = None,
        revocation: ClientRevocation | None = None,
    ) -> None:
        #: Read once per call (``trust.current``): a refresh swaps the snapshot, never edits it.
        self._trust = trust
        self._config = config
        self._audit = audit
        #: The shared replay store (replay.backend = "redis"), else None (in-process store).
        self._replay = replay
        #: Answer recovery (replay.answer_retention_seconds > 0), else None.
        self._recovery = recovery
        #: The client certificates' CRLs (tls.client_crls), else None: the wrappers check
        #: each call as it starts; a stream is checked again as it goes on.
        self._revocation = revocation
        self._disclosures: dict[tuple[str, str], frozenset[str]] = {}
        self._disclosure_tables: dict[str, dict[str, list[str]]] = {}
        self._views: dict[str, _native.CallerView] = {}
        self._readers: dict[tuple[str, str], _native.ReaderIds] = {}
        #: Who the callers table refused, for the log (the metrics cannot name callers).
        self._refusals = RefusalLog()
        #: A unary call's scan goes through the binding in one call (answer_unary) unless the
        #: replay store or the answers are in Redis (their round trips are Python's).
        self._unary_in_core = replay is None and (recovery is None or recovery.in_process)

    def _caller(
        self, context: grpc.aio.ServicerContext, method: str
    ) -> tuple[str, CallerPolicy | CallRefused]:
        """The caller of this ``method`` call and its policy, or why it may not call (to
        abort with: see :func:`_refuse`)."""
        caller = CALLER.get()  # read by the unary call's wrapper, if any
        if caller is None:
            caller = caller_id(context.auth_context())
        try:
            return caller, resolve_caller(self._config, caller)
        except CallRefused as refused:
            self._refusals.tell(caller, refused.reason, method)
            return caller, refused

    def _disclosed(self, policy: CallerPolicy, use: str) -> frozenset[str]:
        """``policy.disclosed(use)``, computed once per caller and use (the policies are the
        configuration's: fixed for the server's life)."""
        key = (policy.id, use)
        groups = self._disclosures.get(key)
        if groups is None:
            groups = self._disclosures[key] = policy.disclosed(use)
        return groups

    def _disclosure(self, policy: CallerPolicy) -> dict[str, list[str]]:
        """The groups disclosed to ``policy``'s caller for each use ("" for none), as
        :meth:`~apcv_verify._native.WireBatch.response` takes them."""
        table = self._disclosure_tables.get(policy.id)
        if table is None:
            table = self._disclosure_tables[policy.id] = {
                use: sorted(self._disclosed(policy, use)) for use in ("", *USES)
            }
        return table

    def _view(self, policy: CallerPolicy) -> _native.CallerView:
        """The uses and disclosure of ``policy`` for the binding, made once per caller."""
        view = self._views.get(policy.id)
        if view is None:
            view = self._views[policy.id] = _native.CallerView(
                list(policy.uses), self._disclosure(policy)
            )
        return view

    def _reader_ids(self, policy: CallerPolicy, caller: str) -> _native.ReaderIds:
        """The reader ids ``caller`` may send under ``policy``, for the binding: made once
        per policy, or once per caller when they name it (``{caller}``)."""
        key = (policy.id, caller if policy.readers_name_the_caller else "")
        readers = self._readers.get(key)
        if readers is None:
            if len(self._readers) >= MAX_READER_ID_SETS:
                self._readers.clear()  # bounded, however many certificates a "*" entry takes
            readers = self._readers[key] = _native.ReaderIds(list(policy.readers), caller)
        return readers

    def _certificate_check(self, context: grpc.aio.ServicerContext) -> Callable[[], None] | None:
        """With ``tls.client_crls``, the check of this call's client certificate against the
        CRLs in use at each moment (raises CertificateRefused), for a call that goes on."""
        if self._revocation is None:
            return None
        pem = certificate_pem(context.auth_context())
        return None if pem is None else functools.partial(self._revocation.check, pem)

    async def Verify(  # noqa: N802 (gRPC method name)
        self,
        request: bytes | TooLarge,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        """An encoded ``VerifyRequest`` in (see :func:`add_verifier_service`), an encoded
        ``VerifyResponse`` out: a batch of one, through the same code as ``VerifyBatch`` and
        ``VerifyStream``, except that an unusable scan, a ``scanned_at`` without the right
        and a reused request id end the call instead of being answered in place."""
        if isinstance(request, TooLarge):
            await request.abort(context)
        call = _native.WireBatch.unary(request)
        if call is None:
            await _invalid_argument(
                context, FieldProblem("REQUEST_UNDECODABLE", "scan", UNDECODABLE)
            )
        problem = call.problem
        if problem is not None:
            await _invalid_argument(context, FieldProblem(*problem))
        caller, policy = self._caller(context, "Verify")
        if isinstance(policy, CallRefused):
            await _refuse(context, policy)
        if self._unary_in_core:
            answer = self._answer_unary(call, policy, caller, context)
            if isinstance(answer, Refusal):
                await abort(context, *answer)
            return answer
        reply: bytes = await self._answer("Verify", call, policy, caller, context)
        return reply

    def _answer_unary(
        self,
        call: _native.WireBatch,
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
    ) -> bytes | Refusal:
        """:meth:`_answer` of a unary call's usable scan with the in-process replay store and
        answers: the same checks, answer, audit and outcomes, with answer recovery,
        verification and the response in one binding call
        (:meth:`~apcv_verify._native.WireBatch.answer_unary`) and no closure. A plain call,
        not a coroutine, as :meth:`_verifier`: the response, or why the call must end (as
        :func:`abort`'s code, reason and message)."""
        verifier = self._verifier("Verify", call, policy, caller, context)
        if isinstance(verifier, Refusal):
            return verifier
        now = int(time.time())
        started = time.perf_counter()
        view = self._view(policy)
        # The usual audit record is made in the same binding call (timed there); else after.
        in_core = self._audit.unary_in_core()
        recovery = self._recovery
        if recovery is None:
            _, _, _, reply, queued, unavailable = call.answer_unary(
                verifier, view, now, caller=caller, audit=in_core
            )
        else:
            reply, reused, queued, unavailable = recovery.answer_unary(
                call, verifier, view, caller, now, in_core
            )
            if reused:  # a unary call's reused request id ends the call (not audited)
                return Refusal(
                    grpc.StatusCode.ALREADY_EXISTS,
                    REUSED.reason,
                    f"scan.request_id: {REUSED.description}",
                )
        if in_core is None:
            self._audit.record_wire("Verify", call, time.perf_counter() - started, caller=caller)
        else:
            self._audit.recorded_in_core(queued, unavailable)
        if reply is None:  # FHIR JSON asked for: built here, as for a batch
            reply = self._with_fhir(call, policy, now)
        return reply

    async def VerifyBatch(  # noqa: N802 (gRPC method name)
        self,
        request: bytes | TooLarge,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        """An encoded ``VerifyBatchRequest`` in (see :func:`add_verifier_service`), an encoded
        ``VerifyBatchResponse`` out."""
        if isinstance(request, TooLarge):
            await request.abort(context)
        batch = _native.WireBatch.batch(request)
        if batch is None:  # not even the batch's framing decodes
            await _invalid_argument(
                context, FieldProblem("REQUEST_UNDECODABLE", "scans", UNDECODABLE)
            )
        count = len(batch)
        limit = self._config.server.max_batch
        if not count:
            await _invalid_argument(context, FieldProblem("BATCH_EMPTY", "scans", "empty batch"))
        if count > limit:
            await _invalid_argument(
                context,
                FieldProblem(
                    "BATCH_TOO_LARGE", "scans", f"at most {limit} scans (server.max_batch)"
                ),
                f"batch of {count} scans is over the limit of {limit} (server.max_batch)",
                metadata={"max_batch": str(limit), "count": str(count)},
            )
        caller, policy = self._caller(context, "VerifyBatch")
        if isinstance(policy, CallRefused):
            await _refuse(context, policy)
        reply: bytes = await self._answer("VerifyBatch", batch, policy, caller, context)
        self._audit.record_batch(count)
        max_bytes = self._config.server.max_message_bytes
        if len(reply) > max_bytes:
            # gRPC would refuse to send it with a message naming nothing. The scans are
            # verified (and audited): a retry from the same reader is a duplicate, not REPLAYED.
            await TooLarge("response", len(reply), max_bytes, "server.max_message_bytes").abort(
                context
            )
        return reply

    async def VerifyStream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[bytes | TooLarge],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        """Answer a stream of requests (encoded ``VerifyStreamRequest``s of one scan or of
        several, see :func:`add_verifier_service`) in request order with one encoded
        ``VerifyStreamResponse`` each, ``server.stream_window`` requests at most read ahead of
        the answers, verifying whatever has arrived as one micro-batch of whole requests, up
        to ``server.max_batch`` scans."""
        caller, policy = self._caller(context, "VerifyStream")
        if isinstance(policy, CallRefused):
            await _refuse(context, policy)
        recheck = self._certificate_check(context)
        max_batch = self._config.server.max_batch
        max_bytes = self._config.server.max_message_bytes
        # One credit per request read and not yet answered: with none left the reader stops
        # reading, and HTTP/2 flow control stops the client (docs/operations.md "Streaming").
        credits = asyncio.Semaphore(self._config.server.stream_window)
        arrived = _Arrivals()

        async def read() -> TooLarge | None:
            try:
                while True:
                    await credits.acquire()
                    request = await anext(aiter(request_iterator), None)
                    if request is None:  # the client half-closed
                        return None
                    if isinstance(request, TooLarge):  # answered up to here, then the call ends
                        return request
                    arrived.put(request)
            finally:
                arrived.end()

        reader = asyncio.create_task(read(), name="VerifyStream reader")
        position = 0  # of the next item in the stream, for the audit
        try:
            while messages := await arrived.micro_batch(max_batch):
                if recheck is not None:
                    # Revoked (or its CRL expired) since the stream opened: no more answers.
                    try:
                        recheck()
                    except CertificateRefused as refused:
                        await refuse_certificate(context, refused)
                items = _native.WireBatch.stream(messages, position, max_batch)
                position += len(items)
                # A stream's item with scanned_at or another reader's id is answered in
                # place, not the call.
                if not policy.may_send_scanned_at:
                    items.refuse_scanned_at()
                if policy.readers:
                    items.refuse_readers(self._reader_ids(policy, caller))
                replies = await self._answer("VerifyStream", items, policy, caller, context)
                for reply in replies:
                    if len(reply) > max_bytes:  # gRPC would end the call naming nothing
                        oversize = TooLarge("stream response", len(reply), max_bytes, _MAX_BYTES)
                        await oversize.abort(context)
                    yield reply
                    credits.release()
            too_large = await reader  # re-raises what ended the request stream, if not the client
            if too_large is not None:
                await too_large.abort(context)
        finally:
            reader.cancel()  # cancellation of the call: read nothing more

    async def _answer(
        self,
        method: str,
        batch: _native.WireBatch,
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        """A batch, one micro-batch of a stream or a unary call's scan: unusable items
        answered REJECTED / MALFORMED in place with the field in ``detail``, the others
        verified in one core call (one snapshot, one ``now``, replay in item order), audited,
        and answered with the groups the caller may see. With answer recovery, a resend gets
        its kept answer (``resent``) instead of a verification, and another presentation under
        a request id already answered is answered in place (REQUEST_ID_REUSED in ``detail``,
        not audited) — or, for ``Verify``, ends the call ALREADY_EXISTS. The encoded response
        (a list of encoded stream responses for a stream).

        One coroutine from the bytes to the answer: the checks that may end the call are
        plain tests, with an ``await`` only on the way out."""
        if batch.valid:
            verifier = self._verifier(method, batch, policy, caller, context)
            if isinstance(verifier, Refusal):
                await abort(context, *verifier)
            now = int(time.time())
            started = time.perf_counter()
            uses = list(policy.uses)

            async def verify() -> None:
                if batch.fresh <= INLINE_SCANS:
                    verifier.verify_wire(batch, uses, now)
                else:  # the GIL is released for the whole batch: off the event loop
                    await asyncio.to_thread(verifier.verify_wire, batch, uses, now)
                if self._replay is not None:  # step 9 on the shared store: one round trip
                    await self._replay.settle_wire(batch, now)

            if self._recovery is None:
                await verify()
            else:
                await self._recovery.answer_wire(batch, caller, now, verify)
                if method == "Verify" and batch.recovery_counts()[1]:
                    # A unary call's reused request id ends the call (not audited).
                    await abort(
                        context,
                        grpc.StatusCode.ALREADY_EXISTS,
                        REUSED.reason,
                        f"scan.request_id: {REUSED.description}",
                    )
            self._audit.record_wire(method, batch, time.perf_counter() - started, caller=caller)
            self._refused_in_place(method, batch, caller)
            return self._with_fhir(batch, policy, now)
        self._refused_in_place(method, batch, caller)
        return batch.response({})

    def _refused_in_place(self, method: str, batch: _native.WireBatch, caller: str) -> None:
        """Count the items of ``batch`` answered in place instead of verified, and log those
        the caller's entry refused."""
        counts = batch.refusal_counts()
        if counts:
            self._audit.record_refusals(method, counts)
            self._refusals.tell_items(caller, method, counts)

    def _with_fhir(self, batch: _native.WireBatch, policy: CallerPolicy, now: int) -> Any:
        """The response of a verified ``batch``, with the FHIR JSON of the accepted items that
        asked for it (built from the verdict filtered for ``policy``'s caller; ``now`` the
        verification time of those decided now)."""
        disclosure = self._disclosure(policy)
        canonical_base = self._config.fhir.canonical_base
        for index, verified_at in batch.fhir_wanted():
            verdict = verifier_pb2.Verdict.FromString(batch.verdict(index, disclosure))
            bundle = fhir.bundle_json(
                verdict,
                verified_at=now if verified_at is None else verified_at,
                canonical_base=canonical_base,
            )
            batch.set_fhir(index, bundle)
        return batch.response(disclosure)

    def _verifier(
        self,
        method: str,
        batch: _native.WireBatch,
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
    ) -> _native.Verifier | Refusal:
        """The verifier of this call's snapshot for ``policy``, or why the call must end
        (a ``scanned_at`` in ``batch`` without the caller's right, deadline passed, no usable
        trust list) as :func:`abort`'s code, reason and message: a plain test, so that each
        RPC stays one coroutine with an ``await`` only on the way out. A refusal by the
        caller's entry is logged (:class:`RefusalLog`)."""
        if batch.scanned_at:
            try:
                scanned_at_permission(policy, caller)
            except CallRefused as refused:
                self._refusals.tell(caller, refused.reason, method)
                return Refusal(grpc.StatusCode.PERMISSION_DENIED, refused.reason, str(refused))
        if policy.readers:
            field = batch.reader_outside(self._reader_ids(policy, caller))
            if field is not None:
                self._refusals.tell(caller, "READER_NOT_ALLOWED", method)
                return reader_refusal(caller, field)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # nobody waits for the answer any more
            return Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_PASSED", "deadline passed")
        snapshot = self._trust.current  # the one read of this call: it verifies on this
        if snapshot is None:
            return Refusal(
                grpc.StatusCode.UNAVAILABLE, "TRUST_LIST_NOT_LOADED", "no trust list loaded yet"
            )
        if self._trust.refuses(snapshot, time.time()):
            return Refusal(
                grpc.StatusCode.UNAVAILABLE,
                "TRUST_LIST_EXPIRED",
                "the trust list in use expired more than trust.expired_grace_seconds ago;"
                " waiting for a valid one",
            )
        return snapshot.verifiers[policy.max_scan_delay_seconds]


class _Arrivals:
    """A stream's requests read and not yet taken for verification, with their number of
    scans, and whether the request stream has ended."""

    def __init__(self) -> None:
        self._waiting: deque[tuple[bytes, int]] = deque()
        self._changed = asyncio.Event()
        self._ended = False

    def put(self, message: bytes) -> None:
        self._waiting.append((message, max(1, _native.WireBatch.stream_scans(message))))
        self._changed.set()

    def end(self) -> None:
        self._ended = True
        self._changed.set()

    async def micro_batch(self, max_scans: int) -> list[bytes]:
        """The requests waiting, oldest first and whole, up to ``max_scans`` scans in all but
        never fewer than one request (waiting for one); [] once the stream has ended and
        every request was taken."""
        while not self._waiting and not self._ended:
            self._changed.clear()
            await self._changed.wait()
        batch: list[bytes] = []
        scans = 0
        while self._waiting and (not batch or scans + self._waiting[0][1] <= max_scans):
            message, count = self._waiting.popleft()
            batch.append(message)
            scans += count
        return batch


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


def _stream_request(
    scan_limit: int, scan_setting: str | None, max_bytes: int
) -> Callable[[bytes], bytes | TooLarge]:
    """The ``VerifyStream`` request deserializer: a request left encoded, or a
    :class:`TooLarge` when one of one scan is over ``scan_limit`` (MAX_REQUEST_BYTES, or
    ``server.max_message_bytes`` when smaller) or one with ``scans`` over ``max_bytes``."""

    def deserialize(data: bytes) -> bytes | TooLarge:
        size = len(data)
        if size <= scan_limit:
            return data
        if not _native.WireBatch.stream_scans(data):
            return TooLarge("request", size, scan_limit, scan_setting)
        if size > max_bytes:
            return TooLarge("stream request", size, max_bytes, _MAX_BYTES)
        return data

    return deserialize


def add_verifier_service(service: VerifierService, server: grpc.aio.Server | Registration) -> None:
    """Register ``service`` as ``apcv.verify.v1.VerifierService`` on ``server``, like the
    generated ``add_VerifierServiceServicer_to_server`` but with request deserializers that
    never raise: grpcio would answer a request it cannot decode with UNKNOWN and the
    exception text (unary) or end a whole stream for one bad message; here the service
    answers it (INVALID_ARGUMENT, or MALFORMED in place for a batch or stream item). They
    also measure each message: one over its limit is a :class:`TooLarge`, left undecoded.
    Every message is left as bytes both ways: the core decodes the requests and encodes the
    responses (:class:`~apcv_verify._native.WireBatch`)."""
    # A batch and a stream request of several scans are bounded by server.max_message_bytes,
    # a request of one scan by MAX_REQUEST_BYTES too (the setting is named only when it is
    # the smaller bound).
    max_bytes = service._config.server.max_message_bytes
    setting = _MAX_BYTES
    scan_limit, scan_setting = (
        (max_bytes, setting) if max_bytes <= MAX_REQUEST_BYTES else (MAX_REQUEST_BYTES, None)
    )
    handlers = {
        "Verify": grpc.unary_unary_rpc_method_handler(
            service.Verify,
            request_deserializer=left_encoded("request", scan_limit, scan_setting),
            response_serializer=None,  # encoded by the core
        ),
        "VerifyBatch": grpc.unary_unary_rpc_method_handler(
            service.VerifyBatch,
            request_deserializer=left_encoded("batch", max_bytes, setting),
            response_serializer=None,  # encoded by the core
        ),
        "VerifyStream": grpc.stream_stream_rpc_method_handler(
            service.VerifyStream,
            request_deserializer=_stream_request(scan_limit, scan_setting, max_bytes),
            response_serializer=None,  # encoded by the core
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
