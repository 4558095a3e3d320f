"""The audit trail: one structured record per verification, and its metrics.

A record says who asked (caller, reader), what was decided (decision, reason, duplicate),
how long it took, and *which holder* only as a pseudonym: ``holder_ref`` =
HMAC-SHA-256(secret, credential id), hex, truncated to :data:`HOLDER_REF_HEX_CHARS`. The same
credential gives the same reference under one secret, so an operator can follow a
credential's verifications (or answer a holder's access request, given their credential id)
without the log ever holding an identity. Never a name, NIR/INS, birth date or raw scan
(docs/profile.md §9, docs/operations.md "The audit record").
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from .. import _native
from ..config import ANONYMOUS_CALLER
from .logs import (
    AUDIT_LOGGER,
    audit_chunk_bytes,
    audit_lines,
    audit_queued,
    native_audit_tail,
    native_tail_queue,
    write_audit_lines,
)
from .tracing import core_span

if TYPE_CHECKING:
    from ..config import Config
    from .metrics import ServiceMetrics

__all__ = [
    "ANONYMOUS_CALLER",
    "HOLDER_REF_HEX_CHARS",
    "AuditTrail",
    "holder_ref",
]

log = structlog.get_logger(AUDIT_LOGGER)


#: One decision of ``WireBatch.audit_rows``: position (None for a unary call's scan), request
#: id, reader id, accepted, reason, duplicate, credential id, replay unchecked, resent.
AuditRow = tuple[int | None, str, str, bool, str, bool, str | None, bool, bool]

#: ``WireBatch.answer_unary``'s ``audit``: the holder reference key, the decision counts (None
#: when the metrics are not kept in the binding) and the audit buffer's queue.
UnaryAudit = tuple[_native.HolderRefKey, _native.VerificationCounts | None, _native.AuditQueue]

#: The keys of an audit record, in order (``replay_unchecked`` only when set).
RECORD_KEYS = frozenset(
    {
        "kind",
        "request_id",
        "caller",
        "reader_id",
        "method",
        "decision",
        "reason",
        "duplicate",
        "latency_ms",
        "holder_ref",
        "item",
        "replay_unchecked",
        "resent",
    }
)

#: 32 hex characters = 128 bits of the HMAC: collisions stay negligible for billions of
#: credentials, and the reference stays short in every log line.
HOLDER_REF_HEX_CHARS = 32
#: Bytes of the per-process secret used when none is configured.
EPHEMERAL_SECRET_BYTES = 32


def holder_ref(secret: bytes, credential_id: str) -> str:
    """The pseudonymous holder reference of ``credential_id`` under ``secret``."""
    digest = hmac.new(secret, credential_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:HOLDER_REF_HEX_CHARS]


class AuditTrail:
    """Writes the audit record and the verification metrics of each decision."""

    def __init__(
        self,
        secret: bytes,
        metrics: ServiceMetrics | None = None,
        *,
        replay_backend: str = "memory",
    ) -> None:
        if not secret:
            raise ValueError("the holder reference secret must not be empty")
        #: The keyed HMAC before any message: copied per record, never rebuilt (the key
        #: schedule is done once).
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        #: The same key for the core, which renders a batch's records (:meth:`record_wire`).
        self._key = _native.HolderRefKey(secret)
        self._metrics = metrics
        self._replay_backend = replay_backend
        if metrics is not None:  # exported from 0, so that rate() and increase() see the first
            metrics.replay_store_errors.labels(backend=replay_backend)

    def __repr__(self) -> str:
        return "AuditTrail(secret=***)"

    @classmethod
    def from_config(cls, config: Config, metrics: ServiceMetrics | None = None) -> AuditTrail:
        """The trail for ``config``; without ``audit.holder_ref_secret``, a random one.

        A random secret is fine for a laptop but makes references differ after every
        restart and between replicas, so it is logged as a warning.
        """
        configured = config.audit.holder_ref_secret
        if configured:
            secret = configured.encode("utf-8")
        else:
            secret = secrets.token_bytes(EPHEMERAL_SECRET_BYTES)
            log.warning(
                "audit_secret_ephemeral",
                detail="audit.holder_ref_secret is not set: holder_ref values are not stable "
                "across restarts or replicas; set it in production",
            )
        return cls(secret, metrics, replay_backend=config.replay.backend)

    def holder_ref(self, credential_id: str | None) -> str | None:
        """``None`` when the presentation was too broken to name a credential."""
        if credential_id is None:
            return None
        mac = self._mac.copy()
        mac.update(credential_id.encode("utf-8"))
        return mac.hexdigest()[:HOLDER_REF_HEX_CHARS]

    def record_batch(self, size: int) -> None:
        """Observe one verified batch's size in ``apcv_batch_size`` (its items are audited)."""
        if self._metrics is not None:
            self._metrics.observe_batch(size)

    def record_refusals(self, method: str, counts: Sequence[tuple[str, int]]) -> None:
        """Count the items of a batch answered in place instead of verified, ``(reason,
        count)`` (``WireBatch.refusal_counts``), in ``apcv_refused_items_total``. They have
        no audit record: nothing was verified, and there is no holder to refer to."""
        if self._metrics is not None:
            self._metrics.observe_refused(method, counts)

    def record_rows(
        self,
        method: str,
        rows: Sequence[AuditRow],
        latency_seconds: float,
        *,
        caller: str = ANONYMOUS_CALLER,
    ) -> None:
        """Audit decisions given as rows (``WireBatch.audit_rows``: position, request id,
        reader id, accepted, reason, duplicate, credential id, replay unchecked, resent),
        verified together in ``latency_seconds`` (one core call): one record per decision,
        their lines written together; each counted in ``apcv_verifications_total``; the
        latency metric gets each decision's share of ``latency_seconds``, observed once for
        all of them (:meth:`~apcv_verify.observe.metrics.ServiceMetrics.observe_latency`)."""
        if self._metrics is not None and rows:
            self._metrics.observe_latency(method=method, seconds=latency_seconds, count=len(rows))
        core_span(method, len(rows), latency_seconds)  # tracing on: the core call's span
        fields = self._fields
        # A row is (position, the record's fields in _fields' order).
        _emit([fields(method, *row[1:], latency_seconds, caller, row[0]) for row in rows])

    def unary_in_core(self) -> UnaryAudit | None:
        """``WireBatch.answer_unary``'s ``audit`` argument when the core can audit a unary
        call's decision as :meth:`record_wire` would (logging configured, the usual tail,
        tracing off, the decision metrics kept in the binding or none); else None: then
        :meth:`record_wire` after the call. Its results go to :meth:`recorded_in_core`."""
        queue = native_tail_queue(RECORD_KEYS)
        if queue is None:
            return None
        metrics = self._metrics
        if metrics is None:
            return self._key, None, queue
        counts = metrics.verification_counts
        if counts is None:  # several workers: prometheus_client's files
            return None
        return self._key, counts, queue

    def recorded_in_core(self, queued_bytes: int, replay_unavailable: int) -> None:
        """The rest of :meth:`record_wire` for a decision audited by ``answer_unary``
        (:meth:`unary_in_core`): the audit buffer told of the record left in its queue (about
        ``queued_bytes`` waiting there), and a REPLAY_UNAVAILABLE decision counted as the
        replay store's error."""
        if queued_bytes:
            audit_queued(queued_bytes)
        if replay_unavailable and self._metrics is not None:
            self._metrics.observe_verification(
                method="Verify",
                decision="REJECTED",
                reason="REPLAY_UNAVAILABLE",
                replay_backend=self._replay_backend,
                count=replay_unavailable,
                counted=True,
            )

    def record_wire(
        self,
        method: str,
        batch: _native.WireBatch,
        latency_seconds: float,
        *,
        caller: str = ANONYMOUS_CALLER,
    ) -> None:
        """:meth:`record_rows` of a verified batch's decisions: the same records, metrics and
        core call span, the records rendered by the core (``WireBatch.audit_lines``, ending
        with the same keys, ``trace_id`` and ``span_id`` included when tracing is on) and the
        decision counter updated once per kind of decision, when logging is configured; else
        record by record."""
        tail = native_audit_tail(RECORD_KEYS)
        if tail is None:
            self.record_rows(method, batch.audit_rows(), latency_seconds, caller=caller)
            return
        metrics = self._metrics
        sink = None if metrics is None else metrics.verification_counts
        # One call: the decisions counted (in the core's counts when the metrics keep them
        # there), the latency shared among them, the lines rendered (the usual tail there).
        counts, lines = batch.audit(
            self._key,
            caller,
            method,
            # json.dumps of a finite float is its repr (float.__repr__), without the encoder's
            # per-call set-up, a tenth of a unary call's audit record in a profile.
            repr(round(latency_seconds * 1000, 3)),
            None if tail is True else tail,
            sink,
            latency_seconds,
            # Joined as the buffer writes them: one string per write, not one per record.
            audit_chunk_bytes(),
        )
        decided = 0
        for accepted, reason, count in counts:
            decided += count
            if metrics is not None and (sink is None or reason == "REPLAY_UNAVAILABLE"):
                metrics.observe_verification(
                    method=method,
                    decision="ACCEPTED" if accepted else "REJECTED",
                    reason=reason,
                    replay_backend=self._replay_backend,
                    count=count,
                    counted=sink is not None,
                )
        if metrics is not None and sink is None and decided:
            metrics.observe_latency(method=method, seconds=latency_seconds, count=decided)
        core_span(method, decided, latency_seconds)  # tracing on: the core call's span
        if lines:
            write_audit_lines(lines)

    def _fields(
        self,
        method: str,
        request_id: str,
        reader_id: str,
        accepted: bool,
        reason: str,
        duplicate: bool,
        credential_id: str | None,
        replay_unchecked: bool,
        resent: bool,
        latency_seconds: float,
        caller: str,
        item: int | None,
    ) -> dict[str, object]:
        """One decision's audit record, counted in the metrics (its latency is observed by
        the caller, once per core call)."""
        decision = "ACCEPTED" if accepted else "REJECTED"
        if self._metrics is not None:
            self._metrics.observe_verification(
                method=method,
                decision=decision,
                reason=reason,
                replay_backend=self._replay_backend,
            )
        fields: dict[str, object] = {
            "kind": "audit",
            "request_id": request_id,
            "caller": caller,
            "reader_id": reader_id,
            "method": method,
            "decision": decision,
            "reason": reason,
            "duplicate": duplicate,
            "latency_ms": round(latency_seconds * 1000, 3),
            "holder_ref": self.holder_ref(credential_id),
        }
        if item is not None:
            fields["item"] = item
        if replay_unchecked:  # replay.on_store_error = "accept" while Redis was down
            fields["replay_unchecked"] = True
        if resent:  # the answer kept for an earlier request, given again
            fields["resent"] = True
        return fields


def _emit(records: list[dict[str, object]]) -> None:
    """Write ``records`` (one line each, written together), as ``log.info("verification",
    ...)`` of each would (:func:`~apcv_verify.observe.logs.audit_lines`)."""
    if not audit_lines(records):
        for fields in records:
            log.info("verification", **fields)
