"""The gRPC service: ``apcv.verify.v1.VerifierService`` over grpc.aio, with health and
reflection.

The servicer is thin: protobuf → :class:`~apcv_verify._native.Scan`
→ the Rust core → protobuf. Signature, status and replay checks all happen in the core
(docs/architecture.md "The core decides, Python transports"); Python never sees CBOR or curves.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import _native, fhir
from ._proto.apcv.verify.v1 import verifier_pb2
from .audit import AuditTrail
from .config import (
    DEFAULT_FHIR_CANONICAL_BASE,
    FIELD_GROUPS,
    CallerPolicy,
    Config,
    ServerSection,
)
from .errors import ErrorInterceptor, FieldProblem, abort
from .metrics import ServiceMetrics, start_metrics_server
from .policy import CallRefused, caller_id, resolve_caller, scanned_at_permission
from .replay import RedisReplayStore
from .trust_source import Snapshot, TrustMaterial, TrustSource, read_anchor

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "RunningServer",
    "TrustMaterial",
    "TrustSource",
    "VerifierService",
    "add_verifier_service",
    "load_trust_material",
    "serve",
    "start_server",
]

log = structlog.get_logger("apcv_verify.server")

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name

M = TypeVar("M", bound=Message)

#: Caller-chosen identifiers are echoed and logged; bound them.
MAX_ID_LENGTH = 128
#: An NFC challenge is a short random value (docs/profile.md §2.5 "nonce").
MAX_NONCE_BYTES = 64
#: Largest request of one scan (a Verify call, one VerifyStream message): the largest
#: presentation is 16 KiB of NFC bytes or 4,296 QR characters (docs/profile.md §4.4), plus
#: two 128-character ids and a 64-byte nonce, so a bigger request carries no real scan. It
#: also bounds what a stream holds: at most ``stream_window`` requests of this size read ahead.
#: A VerifyBatch is bounded by ``server.max_message_bytes`` alone.
MAX_REQUEST_BYTES = 64 * 1024
#: gRPC's own receive limit is this many times ``server.max_message_bytes``: a message up to
#: it is read and refused by the service with a message naming the setting to raise (gRPC's
#: refusal names none, and carries no details); only a larger one is refused by gRPC before it
#: is read whole.
TRANSPORT_LIMIT_FACTOR = 2

#: RNIV identity status of an INS read from the Appli carte Vitale: qualified. The RNIV
#: (1 - Principes communs v2.0, §4.3.4) counts an identity obtained by scanning or reading the
#: ApCV as qualified, for holders and their attached beneficiaries alike; fr-core codes it
#: QUAL (fr-core-cs-identity-status) with collection method AV (fr-core-cs-method-collection).
INS_QUALIFICATION = verifier_pb2.IdentityQualification(
    status="QUALIFIED", status_code="QUAL", collection_method="AV"
)
#: Every field group: what a response carries when no policy narrows it.
ALL_GROUPS = frozenset(FIELD_GROUPS)


def load_trust_material(config: Config, *, now: int | None = None) -> TrustMaterial:
    """Read and verify the anchors, the trust list and the status list files of ``config``
    (the service itself loads and refreshes them with :class:`TrustSource`, URLs included).

    Raises :class:`~apcv_verify._native.TrustListError` / ``StatusListError`` naming the
    problem; nothing partial is returned.
    """
    now = int(time.time()) if now is None else now
    anchors = [read_anchor(path) for path in config.trust.anchors]
    trust_list = _native.TrustList.verify(Path(config.trust.trust_list).read_bytes(), anchors, now)
    status_lists = tuple(
        _native.StatusList.verify(Path(path).read_bytes(), trust_list, now)
        for path in config.trust.status_lists
    )
    return TrustMaterial(trust_list, status_lists)


def build_verifiers(config: Config, material: TrustMaterial) -> dict[int, _native.Verifier]:
    """One core verifier per distinct ``max_scan_delay`` of the callers table, by delay.

    They share one replay store, so a presentation accepted for one caller is a replay for
    every other (docs/profile.md §7.4); only the scan-delay bound of the policy differs. With
    ``replay.backend = "redis"`` they have none: accepted results come back pending and the
    service settles them with :class:`~apcv_verify.replay.RedisReplayStore`.
    """
    store = (
        None
        if config.replay.backend == "redis"
        else _native.MemoryReplayStore(max_entries=config.replay.max_entries)
    )
    delays = {0} | {caller.max_scan_delay_seconds for caller in config.callers}
    verifiers = {}
    for delay in sorted(delays):
        policy = _native.Policy(
            allow_test_identities=config.policy.allow_test_identities,
            clock_skew=config.policy.clock_skew_seconds,
            status_grace=config.policy.status_grace_seconds,
            max_scan_delay=delay,
        )
        verifiers[delay] = _native.Verifier(
            material.trust_list, material.status_lists, policy, store
        )
    return verifiers


def _person_message(
    person: _native.Person, disclosed: frozenset[str]
) -> verifier_pb2.VerifiedPerson:
    """The presented person with only the disclosed field groups set (the rest unset)."""
    message = verifier_pb2.VerifiedPerson(rank=person.rank)
    if "ins" in disclosed:
        message.ins.CopyFrom(verifier_pb2.Ins(matricule=person.ins, oid=person.ins_oid))
    if "identity" in disclosed:
        message.identity.CopyFrom(
            verifier_pb2.IdentityTraits(
                birth_name=person.birth_name,
                given_names=person.given_names,
                sex=person.sex,
                birth_date=person.birth_date,
                birth_place=person.birth_place,
            )
        )
    if "amo" in disclosed:
        amo = person.amo
        message.amo.CopyFrom(
            verifier_pb2.AmoRights(
                regime=amo.regime,
                caisse=amo.caisse,
                centre=amo.centre,
                open_from=amo.open_from,
                open_to=amo.open_to,
            )
        )
    return message


def _amc_message(coverage: _native.AmcCoverage) -> verifier_pb2.AmcCoverage:
    """One AMC attestation's verdict (docs/profile.md §2.7, §8.1): validity, reason, content."""
    message = verifier_pb2.AmcCoverage(
        valid=coverage.valid,
        reason=f"REASON_{coverage.reason}",  # REASON_ + the §8.1 code
        detail=coverage.detail,
        organisation=coverage.organisation or "",
        amc_number=coverage.amc_number or "",
        contract=coverage.contract or "",
        domains=list(coverage.domains),
    )
    if coverage.third_party_payment is not None:
        message.third_party_payment = coverage.third_party_payment
    if coverage.expires_at is not None:
        message.expires_at.FromSeconds(coverage.expires_at)
    if coverage.valid_from is not None:
        message.valid_from.FromSeconds(coverage.valid_from)
    return message


def response_message(
    request_id: str,
    result: _native.VerificationResult,
    *,
    disclosed: frozenset[str] = ALL_GROUPS,
    include_fhir: bool = False,
    verified_at: int | None = None,
    fhir_canonical_base: str = DEFAULT_FHIR_CANONICAL_BASE,
) -> verifier_pb2.Verdict:
    """The protobuf form of one core decision, carrying only the ``disclosed`` field groups.

    Groups (``ins``, ``identity``, ``amo``, ``amc``) outside ``disclosed`` are absent, not
    blanked; the identity qualification goes with the INS; FHIR JSON, when asked for, is
    built from this already-filtered message, so it can disclose nothing more.
    """
    response = verifier_pb2.Verdict(
        request_id=request_id,
        decision=verifier_pb2.DECISION_ACCEPTED
        if result.accepted
        else verifier_pb2.DECISION_REJECTED,
        reason=f"REASON_{result.reason}",  # REASON_ + the docs/profile.md §8 code
        detail=result.detail,
        duplicate=result.duplicate,
        use=result.use or "",
    )
    if not result.accepted or result.person is None:
        return response  # on rejection no person is returned (docs/profile.md §7.6)
    response.person.CopyFrom(_person_message(result.person, disclosed))
    response.issuer = result.issuer or ""
    if "ins" in disclosed:
        response.identity_qualification.CopyFrom(INS_QUALIFICATION)
    if "amc" in disclosed:
        response.amc.extend(_amc_message(item) for item in result.amc)
    if result.delegation_label is not None:  # "" for a delegation without a label
        response.delegation.CopyFrom(
            verifier_pb2.Delegation(used=True, label=result.delegation_label)
        )
    if include_fhir:
        now = int(time.time()) if verified_at is None else verified_at
        response.fhir_json = fhir.bundle_json(
            response, verified_at=now, canonical_base=fhir_canonical_base
        )
    return response


def _scan_problem(scan: verifier_pb2.Scan) -> FieldProblem | None:
    """Why a scan is unusable (its field relative to the Scan), or None: INVALID_ARGUMENT for
    Verify, a MALFORMED verdict in place for a batch or stream item."""
    kind = scan.WhichOneof("presentation")
    if kind is None:
        return FieldProblem("PRESENTATION_MISSING", "presentation", "no qr_text or nfc_bytes")
    if not (scan.qr_text if kind == "qr_text" else scan.nfc_bytes):
        return FieldProblem("PRESENTATION_EMPTY", kind, "empty presentation")
    ids = (
        ("request_id", scan.request_id, "REQUEST_ID_MISSING"),
        ("reader.reader_id", scan.reader.reader_id, "READER_ID_MISSING"),
    )
    for field, value, missing in ids:
        if not value:  # replay and retries are judged per request id and reader
            return FieldProblem(missing, field, "required")
        if len(value) > MAX_ID_LENGTH:
            return FieldProblem("ID_TOO_LONG", field, f"at most {MAX_ID_LENGTH} characters")
    if len(scan.reader.nonce) > MAX_NONCE_BYTES:
        return FieldProblem("NONCE_TOO_LONG", "reader.nonce", f"at most {MAX_NONCE_BYTES} bytes")
    return None


@dataclass(frozen=True)
class Undecodable:
    """Bytes that are not a valid protobuf encoding of the expected message (broken framing,
    invalid UTF-8 in a string field): what the request deserializers give instead of raising,
    so that the servicer answers it (INVALID_ARGUMENT, or MALFORMED in place for an item)
    rather than grpcio (UNKNOWN with the exception text, or a stream ended as a whole)."""


@dataclass(frozen=True)
class TooLarge:
    """A message over its size limit: what the request deserializers give, measured on the raw
    bytes and left undecoded (:func:`_bounded`), and what a batch's response is checked
    against. The service answers it RESOURCE_EXHAUSTED / ``MESSAGE_TOO_LARGE`` naming the
    limit and, when a setting bounds it, the setting to raise."""

    what: str  # "request", "batch" or "response"
    size: int
    limit: int
    setting: str | None  # the configuration key that sets ``limit`` (None: MAX_REQUEST_BYTES)

    def __str__(self) -> str:
        if self.setting is None:
            return (
                f"{self.what} of {self.size} bytes is over {self.limit} bytes, the most a"
                " request of one scan can be: no QR code or NFC read holds a larger presentation"
            )
        advice = {
            "request": "raise it in the server's configuration",
            "batch": f"send fewer scans per batch or raise {self.setting}",
            "response": "send fewer scans per batch (include_fhir makes each answer several"
            f" kB) or raise {self.setting}",
        }[self.what]
        return f"{self.what} of {self.size} bytes is over {self.setting} ({self.limit}): {advice}"

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        setting = {} if self.setting is None else {"setting": self.setting}
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "MESSAGE_TOO_LARGE",
            str(self),
            metadata={"limit": str(self.limit), "size": str(self.size), **setting},
        )


R = TypeVar("R")


def _bounded(
    deserialize: Callable[[bytes], R], what: str, limit: int, setting: str | None
) -> Callable[[bytes], R | TooLarge]:
    """``deserialize``, except that bytes over ``limit`` become a :class:`TooLarge` unread
    (so an undecodable oversize message is refused for its size too)."""

    def bounded(data: bytes) -> R | TooLarge:
        if len(data) > limit:
            return TooLarge(what, len(data), limit, setting)
        return deserialize(data)

    return bounded


#: What an undecodable scan's field violation says (the field is the scan's path).
UNDECODABLE = "not a valid protobuf encoding (for instance invalid UTF-8 in a string field)"


def _lenient(message_type: type[M]) -> Callable[[bytes], M | Undecodable]:
    """A request deserializer for ``message_type`` that returns :class:`Undecodable` rather
    than raising."""

    def deserialize(data: bytes) -> M | Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return Undecodable()

    return deserialize


def _raw_batch_type() -> type[Message]:
    """``VerifyBatchRequest`` with its scans left as bytes (same field number, and a
    length-delimited field parses as bytes without any check), so that one undecodable scan
    is answered in place instead of making the whole batch undecodable."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="apcv_verify/raw_batch.proto", package="apcv_verify.internal", syntax="proto3"
    )
    proto.message_type.add(name="RawBatch").field.add(
        name="scans",
        number=verifier_pb2.VerifyBatchRequest.SCANS_FIELD_NUMBER,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("apcv_verify.internal.RawBatch")
    )


_RAW_BATCH = _raw_batch_type()
_scan_or_undecodable = _lenient(verifier_pb2.Scan)

#: A batch's scans, each decoded or not (what the batch deserializer gives when the batch as
#: a whole does not decode but its framing does).
BatchItems = list[verifier_pb2.Scan | Undecodable]


def _deserialize_batch(data: bytes) -> verifier_pb2.VerifyBatchRequest | BatchItems | Undecodable:
    try:
        return verifier_pb2.VerifyBatchRequest.FromString(data)  # the usual case: one parse
    except DecodeError:
        pass
    try:
        raw = _RAW_BATCH.FromString(data)
    except DecodeError:
        return Undecodable()  # not even the batch's framing
    return [_scan_or_undecodable(item) for item in raw.scans]  # type: ignore[attr-defined]


def _scan(request: verifier_pb2.Scan, policy: CallerPolicy, caller: str) -> _native.Scan:
    """The core's view of one scan under the caller's policy (CallRefused if not allowed)."""
    data: str | bytes = (
        request.qr_text if request.WhichOneof("presentation") == "qr_text" else request.nfc_bytes
    )
    scanned_at = None
    if request.HasField("scanned_at"):
        scanned_at_permission(policy, caller)
        scanned_at = request.scanned_at.seconds  # whole seconds, as the core's NumericDates
    return _native.Scan(
        data,
        request.reader.reader_id,
        nonce=request.reader.nonce or None,
        allowed_uses=list(policy.uses),
        scanned_at=scanned_at,
    )


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
    ) -> None:
        #: Read once per call (``trust.current``): a refresh swaps the snapshot, never edits it.
        self._trust = trust
        self._config = config
        self._audit = audit
        #: The shared replay store (replay.backend = "redis"), else None (in-process store).
        self._replay = replay

    async def _caller(self, context: grpc.aio.ServicerContext) -> tuple[str, CallerPolicy]:
        caller = caller_id(context.auth_context())
        try:
            return caller, resolve_caller(self._config, caller)
        except CallRefused as refused:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, refused.reason, str(refused))

    async def _scans(
        self,
        requests: Sequence[verifier_pb2.Scan],
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
    ) -> list[_native.Scan]:
        try:
            return [_scan(request, policy, caller) for request in requests]
        except CallRefused as refused:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, refused.reason, str(refused))

    async def _snapshot(self, context: grpc.aio.ServicerContext) -> Snapshot:
        snapshot = self._trust.current  # the one read of this call: it verifies on this
        if snapshot is None:
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "TRUST_LIST_NOT_LOADED",
                "no trust list loaded yet",
            )
        return snapshot

    async def _verify(
        self,
        policy: CallerPolicy,
        scans: Sequence[_native.Scan],
        now: int,
        context: grpc.aio.ServicerContext,
    ) -> list[_native.VerificationResult]:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # nobody waits for the answer any more
            await abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_PASSED", "deadline passed"
            )
        snapshot = await self._snapshot(context)
        verifier = snapshot.verifiers[policy.max_scan_delay_seconds]
        # verify_batch releases the GIL for the whole batch: run it off the event loop.
        results = await asyncio.to_thread(verifier.verify_batch, scans, now)
        if self._replay is not None:  # step 9 on the shared store: one round trip per batch
            results = await self._replay.settle(scans, results, now)
        return results

    def _response(
        self,
        request: verifier_pb2.Scan,
        result: _native.VerificationResult,
        policy: CallerPolicy,
        now: int,
    ) -> verifier_pb2.Verdict:
        return response_message(
            request.request_id,
            result,
            disclosed=policy.disclosed(result.use or ""),
            include_fhir=request.include_fhir,
            verified_at=now,
            fhir_canonical_base=self._config.fhir.canonical_base,
        )

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
        problem = _scan_problem(scan)
        if problem is not None:
            await _invalid_argument(context, _at("scan", problem))
        caller, policy = await self._caller(context)
        scans = await self._scans([scan], policy, caller, context)
        now = int(time.time())
        started = time.perf_counter()
        (result,) = await self._verify(policy, scans, now, context)
        self._audit.record_verification(
            method="Verify",
            request_id=scan.request_id,
            reader_id=scan.reader.reader_id,
            result=result,
            latency_seconds=time.perf_counter() - started,
            caller=caller,
        )
        return verifier_pb2.VerifyResponse(verdict=self._response(scan, result, policy, now))

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
        caller, policy = await self._caller(context)
        verdicts = await self._judge(
            "VerifyBatch", items, policy, caller, context, path=lambda index: f"scans[{index}]"
        )
        self._audit.record_batch(len(items))
        reply = verifier_pb2.VerifyBatchResponse(verdicts=verdicts)
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
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
        *,
        positions: Sequence[int],
    ) -> list[verifier_pb2.Verdict]:
        """Verify valid ``items`` in one core call (one snapshot, one ``now``, replay in
        item order), audit each decision and answer them in order. ``positions`` number
        them in the audit (a batch's items by their index, a stream's by their place in it)."""
        scans = await self._scans(items, policy, caller, context)
        now = int(time.time())
        started = time.perf_counter()
        results = await self._verify(policy, scans, now, context)
        latency = time.perf_counter() - started
        for position, item, result in zip(positions, items, results, strict=True):
            self._audit.record_verification(
                method=method,
                request_id=item.request_id,
                reader_id=item.reader.reader_id,
                result=result,
                latency_seconds=latency,
                caller=caller,
                item=position,
            )
        return [
            self._response(item, result, policy, now)
            for item, result in zip(items, results, strict=True)
        ]

    async def VerifyStream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[verifier_pb2.VerifyStreamRequest | Undecodable | TooLarge],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[verifier_pb2.VerifyStreamResponse]:
        """Answer a stream of requests in request order, ``server.stream_window`` at most
        read ahead of the answers, verifying whatever has arrived as one micro-batch."""
        caller, policy = await self._caller(context)
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
                for verdict in await self._judge(
                    "VerifyStream",
                    items,
                    policy,
                    caller,
                    context,
                    path=lambda _position: "scan",
                    first_position=answered,
                ):
                    yield verifier_pb2.VerifyStreamResponse(verdict=verdict)
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
        policy: CallerPolicy,
        caller: str,
        context: grpc.aio.ServicerContext,
        *,
        path: Callable[[int], str],
        first_position: int = 0,
    ) -> list[verifier_pb2.Verdict]:
        """A batch, or one micro-batch of a stream: unusable items answered REJECTED /
        MALFORMED in place with the field in ``detail`` (``path`` of the item's position, then
        the field), the others verified in one core call; verdicts in item order."""
        answers: list[verifier_pb2.Verdict | None] = []
        valid: list[verifier_pb2.Scan] = []
        positions: list[int] = []
        for position, item in enumerate(items, first_position):
            if isinstance(item, Undecodable):
                problem: FieldProblem | None = FieldProblem("REQUEST_UNDECODABLE", "", UNDECODABLE)
            else:
                problem = _scan_problem(item)
            if problem is None:
                assert not isinstance(item, Undecodable)
                valid.append(item)
                positions.append(position)
                answers.append(None)
                continue
            answers.append(
                verifier_pb2.Verdict(
                    request_id="" if isinstance(item, Undecodable) else item.request_id,
                    decision=verifier_pb2.DECISION_REJECTED,
                    reason=verifier_pb2.REASON_MALFORMED,
                    detail=str(_at(path(position), problem)),
                )
            )
        verified = iter(
            await self._answer(method, valid, policy, caller, context, positions=positions)
            if valid
            else []
        )
        return [answer if answer is not None else next(verified) for answer in answers]


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
            request_deserializer=_bounded(
                _lenient(verifier_pb2.VerifyRequest), "request", scan_limit, scan_setting
            ),
            response_serializer=verifier_pb2.VerifyResponse.SerializeToString,
        ),
        "VerifyBatch": grpc.unary_unary_rpc_method_handler(
            service.VerifyBatch,
            request_deserializer=_bounded(_deserialize_batch, "batch", max_bytes, setting),
            response_serializer=verifier_pb2.VerifyBatchResponse.SerializeToString,
        ),
        "VerifyStream": grpc.stream_stream_rpc_method_handler(
            service.VerifyStream,
            request_deserializer=_bounded(
                _lenient(verifier_pb2.VerifyStreamRequest), "request", scan_limit, scan_setting
            ),
            response_serializer=verifier_pb2.VerifyStreamResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


@dataclass
class RunningServer:
    """A started server, the port it bound, its health service and its metrics."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    metrics: ServiceMetrics | None = None
    #: The ``/metrics`` HTTP server (None when ``metrics.listen`` is "" or could not bind).
    metrics_http: WSGIServer | None = None
    #: The trust material holder and its background refresh.
    trust: TrustSource | None = None
    #: The shared replay store client (replay.backend = "redis").
    replay: RedisReplayStore | None = None
    #: The plaintext health-only server of ``server.health_listen`` (None when unset).
    health_server: grpc.aio.Server | None = None
    #: The port ``health_server`` bound.
    health_port: int | None = None

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING first, then let in-flight calls finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        if self.trust is not None:
            await self.trust.stop()
        await self.server.stop(grace_seconds)
        if self.health_server is not None:
            # Last, so that probes see NOT_SERVING for the whole drain.
            await self.health_server.stop(None)
        if self.replay is not None:
            await self.replay.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()


def server_credentials(config: Config) -> grpc.ServerCredentials:
    """TLS credentials from ``[tls]``; with ``client_ca``, every client must present a
    certificate that chains to it, and its subject CN names the caller (policy.caller_id)."""
    tls = config.tls
    key_pair = (Path(tls.server_key).read_bytes(), Path(tls.server_cert).read_bytes())
    client_ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    # Config.validate: client_ca is set exactly when client certificates are required.
    return grpc.ssl_server_credentials(
        [key_pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def server_options(server: ServerSection) -> list[tuple[str, int]]:
    """The gRPC channel arguments of ``[server]``: message size, keepalive, connection age
    (docs/operations.md "Limits"); timers in seconds become gRPC's milliseconds."""

    def ms(seconds: float) -> int:
        return round(seconds * 1000)

    options = [
        # The service refuses messages over max_message_bytes with a message naming it;
        # gRPC itself only those over TRANSPORT_LIMIT_FACTOR times it (see that constant).
        ("grpc.max_receive_message_length", TRANSPORT_LIMIT_FACTOR * server.max_message_bytes),
        ("grpc.max_send_message_length", server.max_message_bytes),
        ("grpc.keepalive_time_ms", ms(server.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", ms(server.keepalive_timeout_seconds)),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            ms(server.keepalive_min_ping_interval_seconds),
        ),
        ("grpc.keepalive_permit_without_calls", int(server.keepalive_permit_without_calls)),
    ]
    if server.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", ms(server.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", ms(server.max_connection_age_grace_seconds)),
        ]
    # server.workers > 1: every worker binds the same port and the kernel spreads the
    # connections over them (apcv_verify.workers). One worker: a port already in use is an
    # error, not a silent share with whatever holds it.
    options.append(("grpc.so_reuseport", int(server.workers > 1)))
    return options


async def start_server(config: Config, material: TrustMaterial | None = None) -> RunningServer:
    """Start serving; ``server.listen`` may use port 0 to pick a free port.

    Without ``material`` the trust list and status lists are loaded from their sources
    (a failing file raises; a failing URL leaves the server NOT_SERVING until a refresh
    loads it). Either way they are refreshed every ``trust.refresh_seconds``.
    """
    metrics = ServiceMetrics(stream_services=(SERVICE_NAME,))
    trust = TrustSource(
        config, lambda loaded: build_verifiers(config, loaded), registry=metrics.registry
    )
    if material is not None:
        trust.seed(material)
    else:
        await trust.load_initial()
    metrics.watch_trust_material(lambda: trust.material)
    server = grpc.aio.server(
        # Metrics first, so that they see the status the error mapping sets.
        interceptors=[metrics.interceptor(), ErrorInterceptor()],
        options=server_options(config.server),
        maximum_concurrent_rpcs=config.server.max_concurrent_rpcs or None,
    )
    replay = RedisReplayStore(config.replay, metrics) if config.replay.backend == "redis" else None
    if replay is not None:
        # Logged either way; an unreachable Redis does not stop the start (docs/profile.md §7.4: the
        # verifications that need it fail closed, or open by policy, until it answers).
        log.info("replay_store", backend="redis", location=replay.location, up=await replay.ping())
    add_verifier_service(
        VerifierService(trust, config, AuditTrail.from_config(config, metrics), replay), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # grpc.reflection.v1alpha: grpcio-reflection has no grpc.reflection.v1 service yet; clients
    # such as grpcurl try v1 first and fall back to v1alpha.
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = (
        server.add_secure_port(config.server.listen, server_credentials(config))
        if config.tls.enabled
        else server.add_insecure_port(config.server.listen)
    )
    if port == 0:
        raise OSError(f"cannot listen on {config.server.listen}")
    await server.start()
    health_server, health_port = await _start_health_server(config.server, health_servicer)
    metrics_http = _start_metrics_http(config.metrics.listen, metrics)

    async def ready() -> None:
        # SERVING only once a trust list is loaded (ignored after a graceful shutdown began).
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    loaded = trust.material
    await (ready() if loaded is not None else _not_serving(health_servicer))
    trust.start(on_loaded=ready)
    log.info(
        "serving" if loaded is not None else "waiting_for_trust_list",
        listen=config.server.listen,
        port=port,
        tls=config.tls.enabled,
        client_auth=bool(config.tls.client_ca),
        trust_list_seq=None if loaded is None else loaded.trust_list.seq,
        status_lists=0 if loaded is None else len(loaded.status_lists),
        refresh_seconds=config.trust.refresh_seconds,
        metrics_port=None if metrics_http is None else metrics_http.server_port,
        health_port=health_port,
    )
    return RunningServer(
        server,
        port,
        health_servicer,
        metrics,
        metrics_http,
        trust,
        replay,
        health_server=health_server,
        health_port=health_port,
    )


async def _start_health_server(
    server_config: ServerSection, health_servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server | None, int | None]:
    """The plaintext port of ``server.health_listen``: the health service and nothing else.

    Kubernetes gRPC probes speak neither TLS nor mTLS; this port lets them see the status the
    main port reports (the same servicer: NOT_SERVING until a trust list is loaded and while
    draining) without offering any verification or reflection in clear text.
    """
    if not server_config.health_listen:
        return None, None
    health_server = grpc.aio.server(
        # server.workers > 1: every worker binds it, as server.listen (server_options).
        options=[("grpc.so_reuseport", int(server_config.workers > 1))],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    port = health_server.add_insecure_port(server_config.health_listen)
    if port == 0:
        raise OSError(f"cannot listen on {server_config.health_listen}")
    await health_server.start()
    return health_server, port


async def _not_serving(health_servicer: health.aio.HealthServicer) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def _start_metrics_http(listen: str, metrics: ServiceMetrics) -> WSGIServer | None:
    """The ``/metrics`` endpoint; a port already taken is logged, not fatal.

    Verification matters more than its metrics: a second server on a laptop, or a port
    clash, must not stop the service (docs/operations.md "Metrics").
    """
    if not listen:
        return None
    try:
        return start_metrics_server(listen, metrics.registry)
    except OSError as error:
        log.error("metrics_unavailable", listen=listen, error=error.strerror or str(error))
        return None


async def _serve_until_signalled(config: Config) -> None:
    running = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping", grace_seconds=config.server.grace_seconds)
    await running.stop(config.server.grace_seconds)


def serve(config: Config) -> None:
    """Load and verify the trust material, then serve (refreshing it) until SIGINT/SIGTERM."""
    asyncio.run(_serve_until_signalled(config))
