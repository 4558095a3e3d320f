"""Type stub of the compiled core (rust/apcv-py). Hand-written; checked by mypy.stubtest."""

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self, final

__all__ = [
    "AnswerKeys",
    "AuditQueue",
    "BUILD",
    "CORE_VERSION",
    "CallerView",
    "ReaderIds",
    "AmcCoverage",
    "AmoRights",
    "CoseKeyError",
    "HolderRefKey",
    "InvalidSignature",
    "MalformedError",
    "MemoryAnswerStore",
    "MemoryReplayStore",
    "NativeError",
    "Person",
    "Policy",
    "Scan",
    "StatusBits",
    "StatusList",
    "StatusListError",
    "TrustList",
    "TrustListError",
    "VerificationCounts",
    "VerificationResult",
    "Verifier",
    "WireBatch",
    "cose_key_thumbprint",
    "decode_status_list",
    "verify_sign1",
    "verify_signature",
]

#: The version of the core crate (rust/apcv-core).
CORE_VERSION: str
#: How the module was compiled: "debug", "release", "instrumented" or "profile-guided" (`make dev`).
BUILD: str

class NativeError(Exception):
    """Base of every error raised by the native core."""

class TrustListError(NativeError):
    """Trust list refused; the message names the problem."""

class StatusListError(NativeError):
    """Status list refused (bad signature, signer not role "status", malformed, expired)."""

class CoseKeyError(NativeError, ValueError):
    """Unusable COSE_Key, or an algorithm the profile does not allow."""

class MalformedError(NativeError, ValueError):
    """verify_sign1: the bytes are not a strict COSE_Sign1."""

class InvalidSignature(NativeError):
    """verify_sign1: the signature does not verify."""

def verify_signature(alg: int, cose_key: bytes, message: bytes, signature: bytes) -> bool:
    """Raw primitive: alg -7 (ES256, r||s) or -8 (EdDSA). CoseKeyError for an unusable key."""

def verify_sign1(cose_sign1: bytes, cose_key: bytes, external_aad: bytes = ...) -> bytes:
    """Strict parse + verify with the protected alg; returns the payload.

    Raises InvalidSignature on a bad signature, MalformedError on bad structure (including an
    alg missing from the protected header or not one of -7/-8), CoseKeyError for an unusable key
    or a key alg parameter that differs from the header alg.
    """

def cose_key_thumbprint(cose_key: bytes) -> bytes:
    """RFC 9679 thumbprint (SHA-256, 32 bytes)."""

def decode_status_list(status_list_map: bytes) -> StatusBits:
    """Decodes the CBOR {"bits", "lst"} map; StatusListError when malformed."""

@final
class StatusBits:
    @property
    def bits(self) -> int: ...
    def __len__(self) -> int: ...
    def status(self, index: int) -> int:
        """Status of entry `index`; IndexError outside the list."""

@final
class TrustList:
    @staticmethod
    def verify(
        data: bytes, anchors: Sequence[bytes], now: int, held_seq: int | None = None
    ) -> TrustList:
        """Verifies a signed trust list; TrustListError names the problem."""
    @property
    def seq(self) -> int: ...
    @property
    def issued_at(self) -> int: ...
    @property
    def expires_at(self) -> int: ...
    def __len__(self) -> int: ...

@final
class StatusList:
    @staticmethod
    def verify(data: bytes, trust_list: TrustList, now: int) -> StatusList:
        """Verifies a signed status-list CWT; StatusListError names the problem."""
    @property
    def uri(self) -> str: ...
    @property
    def bits(self) -> int: ...
    @property
    def issued_at(self) -> int: ...
    @property
    def expires_at(self) -> int: ...
    @property
    def ttl(self) -> int | None: ...
    def __len__(self) -> int: ...
    def status(self, index: int) -> int:
        """Status of entry `index`; IndexError outside the list."""

@final
class Policy:
    def __new__(
        cls,
        *,
        allow_test_identities: bool = False,
        clock_skew: int = 60,
        status_grace: int = 0,
        max_scan_delay: int = 0,
    ) -> Self: ...
    @property
    def allow_test_identities(self) -> bool: ...
    @property
    def clock_skew(self) -> int: ...
    @property
    def status_grace(self) -> int: ...
    @property
    def max_scan_delay(self) -> int:
        """How old a scan's ``scanned_at`` may be, in seconds (docs/profile.md §7.5)."""

@final
class MemoryReplayStore:
    def __new__(cls, max_entries: int = 1_000_000) -> Self: ...
    @property
    def max_entries(self) -> int: ...
    def __len__(self) -> int: ...

@final
class Scan:
    def __new__(
        cls,
        data: str | bytes,
        reader_id: str,
        *,
        nonce: bytes | None = None,
        allowed_uses: Sequence[str] | None = None,
        scanned_at: int | None = None,
    ) -> Self: ...
    @property
    def reader_id(self) -> str: ...
    @property
    def scanned_at(self) -> int | None:
        """When the reader scanned the code (delayed scan, docs/profile.md §7.5), or None."""

@final
class AmoRights:
    @property
    def regime(self) -> str: ...
    @property
    def caisse(self) -> str: ...
    @property
    def centre(self) -> str: ...
    @property
    def open_from(self) -> str: ...
    @property
    def open_to(self) -> str: ...

@final
class Person:
    @property
    def rank(self) -> int: ...
    @property
    def ins(self) -> str: ...
    @property
    def ins_oid(self) -> str: ...
    @property
    def birth_name(self) -> str: ...
    @property
    def given_names(self) -> str: ...
    @property
    def sex(self) -> str: ...
    @property
    def birth_date(self) -> str: ...
    @property
    def birth_place(self) -> str: ...
    @property
    def amo(self) -> AmoRights: ...

@final
class AmcCoverage:
    """One AMC attestation's outcome (docs/profile.md §2.7); coverage fields set only when it is
    signed by a trusted "amc" key and names the presented person."""

    @property
    def valid(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def organisation(self) -> str | None: ...
    @property
    def amc_number(self) -> str | None: ...
    @property
    def contract(self) -> str | None: ...
    @property
    def third_party_payment(self) -> bool | None: ...
    @property
    def domains(self) -> list[str]:
        """Care domains (a new list each time)."""
    @property
    def expires_at(self) -> int | None: ...
    @property
    def valid_from(self) -> int | None:
        """The attestation's ``nbf``: when the coverage starts."""

@final
class VerificationResult:
    @property
    def accepted(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def duplicate(self) -> bool: ...
    @property
    def use(self) -> str | None: ...
    @property
    def credential_id(self) -> str | None: ...
    @property
    def issuer(self) -> str | None: ...
    @property
    def credential_expires_at(self) -> int | None: ...
    @property
    def person(self) -> Person | None: ...
    @property
    def delegation_label(self) -> str | None:
        """The delegation's "who" label when accepted through one ("" if unlabelled), else None."""
    @property
    def amc(self) -> list[AmcCoverage]:
        """One entry per AMC attestation, in presentation order; empty unless accepted."""
    @property
    def replay_unchecked(self) -> bool:
        """Accepted although the replay store could not be asked (fail-open policy)."""
    @property
    def replay_pending(self) -> bool:
        """True while the result waits for an external replay store; it then reads as
        REPLAY_UNAVAILABLE until :meth:`with_replay_outcome` settles it."""
    @property
    def replay_key(self) -> bytes | None:
        """The replay key (the presentation's 16-byte ``cti``) while pending, else None."""
    @property
    def replay_expires_at(self) -> int | None:
        """While pending: keep the replay entry until this time (seconds), else None."""
    @property
    def replay_issued_at(self) -> int | None:
        """While pending: the presentation's ``iat`` (seconds), else None."""
    def with_replay_outcome(
        self, outcome: Literal["new", "same_reader", "other_reader", "unavailable", "unchecked"]
    ) -> VerificationResult:
        """The final result of a pending one, given the external store's answer."""
    @property
    def resent(self) -> bool:
        """The answer kept for an earlier request with the same caller, reader id and request
        id, given again (answer recovery): decided at ``verified_at``, not now."""
    @property
    def verified_at(self) -> int | None:
        """When a resent answer was decided (seconds); None for a fresh one (decided now)."""

@final
class AnswerKeys:
    """The keyed hashes of answer recovery (HMAC-SHA256 under ``secret``, 16 bytes) and the
    record of an answer: what is kept of it, without personal data."""

    def __new__(cls, secret: bytes) -> Self: ...
    def key(self, caller: str, reader_id: str, request_id: str) -> bytes:
        """The 16-byte key of a request: (caller, reader id, request id), keyed."""
    def record(self, scan: Scan, result: VerificationResult, verified_at: int) -> bytes:
        """The record of ``result`` (final, not pending) for ``scan``, decided at
        ``verified_at``: the presentation's keyed digest and the decision without the person."""
    def recover(self, scan: Scan, record: bytes) -> VerificationResult | None:
        """The answer kept in ``record`` given again for the resent ``scan`` (``resent``
        set): the person and coverage rebuilt by decoding the presentation, nothing judged
        again. None when ``record`` is another presentation's; ValueError when unreadable."""

@final
class MemoryAnswerStore:
    """The in-process store of answer records: at most ``max_entries``, each kept until its
    expiry; when full, the oldest is dropped (``evicted`` counts them)."""

    def __new__(cls, max_entries: int) -> Self: ...
    def get_many(self, keys: list[bytes], now: int) -> list[bytes | None]:
        """The records kept under ``keys`` and live at ``now`` (None where there is none)."""
    def insert_or_get(self, key: bytes, record: bytes, expires_at: int, now: int) -> bytes | None:
        """Keeps ``record`` under ``key`` until ``expires_at`` unless a live record is
        already there: that one is returned then (the first answer stays), else None."""
    def __len__(self) -> int: ...
    @property
    def max_entries(self) -> int: ...
    @property
    def evicted(self) -> int:
        """Live answers dropped so far to make room for newer ones."""

@final
class Verifier:
    def __new__(
        cls,
        trust_list: TrustList,
        status_lists: Sequence[StatusList],
        policy: Policy,
        replay_store: MemoryReplayStore | None,
        signature_cache_entries: int = 262144,
    ) -> Self:
        """``replay_store=None``: an external store; accepted results come back pending
        (``VerificationResult.with_replay_outcome`` settles them). ``signature_cache_entries``
        bounds the cache of verified issuer signatures (0: none); a new trust list empties it."""
    @property
    def external_replay(self) -> bool:
        """True when built without a replay store: accepted results come back pending."""
    @property
    def signature_cache_len(self) -> int:
        """Issuer signatures held by the cache of this snapshot's trust list."""
    def with_trust_list(self, trust_list: TrustList) -> Verifier: ...
    def with_status_lists(self, status_lists: Sequence[StatusList]) -> Verifier: ...
    def verify_batch(self, scans: Sequence[Scan], now: int) -> list[VerificationResult]:
        """Verifies every scan with the GIL released (rayon-parallel); results in input order."""
    def verify_wire(self, batch: WireBatch, uses: Sequence[str], now: int) -> None:
        """Verifies the usable items of ``batch`` at ``now`` with the GIL released (once per
        batch), each allowing ``uses``."""

@final
class WireBatch:
    """The scans of one encoded ``VerifyBatchRequest``, of a ``VerifyStream`` micro-batch or of
    a unary ``VerifyRequest``, decoded in Rust, verified in one core call and answered
    encoded: an unusable item is REJECTED / MALFORMED in place with its field in ``detail``
    (a unary call ends INVALID_ARGUMENT with :attr:`problem` instead)."""
    @staticmethod
    def batch(data: bytes) -> WireBatch | None:
        """None when not even the batch's framing decodes."""
    @staticmethod
    def stream(messages: Sequence[bytes], first_position: int, max_batch: int) -> WireBatch:
        """The items of encoded ``VerifyStreamRequest``s (one per ``scan``, one per entry of
        ``scans``), the first the ``first_position``-th of the stream; a request with more
        than ``max_batch`` scans, or with both fields, is answered in place."""
    @staticmethod
    def stream_scans(message: bytes) -> int:
        """The number of ``scans`` in an encoded ``VerifyStreamRequest``, from its framing
        alone (0 for a request of one scan, or when the framing does not decode)."""
    @staticmethod
    def unary(data: bytes) -> WireBatch | None:
        """The scan of an encoded ``VerifyRequest``; None when it does not decode."""
    @property
    def problem(self) -> tuple[str, str, str] | None:
        """``(reason, field, description)`` of the first unusable scan (field from the
        request message, ``scan.reader.reader_id``), or None."""
    def __len__(self) -> int: ...
    @property
    def valid(self) -> int:
        """Usable items (to verify)."""
    @property
    def fresh(self) -> int:
        """Usable items not answered by answer recovery (to verify)."""
    def refuse_scanned_at(self) -> None:
        """Answers in place each usable item that sets ``scanned_at`` (SCANNED_AT_NOT_ALLOWED)."""
    def reader_outside(self, readers: ReaderIds) -> str | None:
        """The field of the first usable item whose reader id is not one of ``readers``
        (``scans[3].reader.reader_id``), or None."""
    def refuse_readers(self, readers: ReaderIds) -> None:
        """Answers in place each usable item whose reader id is not one of ``readers``
        (READER_NOT_ALLOWED in ``detail``)."""
    def answer_keys(self, keys: AnswerKeys, caller: str) -> list[bytes]:
        """The answer key of each usable item, in item order."""
    def recover(self, keys: AnswerKeys, found: Sequence[bytes | None]) -> int:
        """Answers the items whose records were found (one per answer key): resent, or
        REQUEST_ID_REUSED for another presentation's. The number of unreadable records."""
    def records(self, keys: AnswerKeys, now: int) -> list[tuple[bytes, bytes]]:
        """``(key, record)`` of each verified item's answer to keep (not REPLAY_UNAVAILABLE)."""
    def keep_earlier(self, keys: AnswerKeys, earlier: Sequence[bytes | None]) -> int:
        """Answers the items of :meth:`records` whose key held a record already with that
        one. The number of unreadable records."""
    def recover_from(
        self, store: MemoryAnswerStore, keys: AnswerKeys, caller: str, now: int
    ) -> int:
        """:meth:`answer_keys` then :meth:`recover` with the records ``store`` holds, in one
        call. The number of unreadable records."""
    def keep_in(self, store: MemoryAnswerStore, keys: AnswerKeys, now: int, expires_at: int) -> int:
        """:meth:`records` kept in ``store`` until ``expires_at``, then :meth:`keep_earlier`
        with the records it held already, in one call. The number of unreadable records."""
    def recovery_counts(self) -> tuple[int, int]:
        """``(resent, reused)``: the items answer recovery answered."""
    def refusal_counts(self) -> list[tuple[str, int]]:
        """``(reason, count)`` of the items answered in place instead of verified (unusable,
        refused by the caller's policy, or a reused request id), in the order first met."""
    @property
    def scanned_at(self) -> bool:
        """Whether a usable item sets ``scanned_at``."""
    def pending(self) -> list[tuple[int, bytes, str, int, int]]:
        """Items waiting for an external replay store: ``(n, key, reader_id, keep_until,
        issued_at)``."""
    def settle(self, outcomes: Sequence[tuple[int, str]]) -> None:
        """Settles pending items, ``(n, outcome)`` as for ``with_replay_outcome``."""
    def audit_rows(
        self,
    ) -> list[tuple[int | None, str, str, bool, str, bool, str | None, bool, bool]]:
        """``(position, request_id, reader_id, accepted, reason, duplicate, credential_id,
        replay_unchecked, resent)`` of each answered item (verified or resent)."""
    def decision_counts(self) -> list[tuple[bool, str, int]]:
        """``(accepted, reason, count)`` of the verified items, in the order first met."""
    def audit_lines(
        self, key: HolderRefKey, caller: str, method: str, latency_ms: str, tail: str
    ) -> list[str]:
        """Each verified item's audit line (newline included) as the audit trail writes it:
        ``caller``, ``method``, ``latency_ms`` as JSON values, ``tail`` the common keys."""
    def audit(
        self,
        key: HolderRefKey,
        caller: str,
        method: str,
        latency_ms: str,
        tail: str | None,
        counts: VerificationCounts | None = None,
        latency_seconds: float = 0.0,
        chunk_bytes: int = 0,
    ) -> tuple[list[tuple[bool, str, int]], list[str]]:
        """``(decision_counts(), audit_lines(...))`` in one call, ``caller`` and ``method`` as
        they are; ``tail`` None for the usual end of the line (nothing bound, tracing off),
        rendered with the current time, "" for no lines; with ``counts``, the decisions and
        ``latency_seconds`` (shared among them) counted there; with ``chunk_bytes``, the lines
        joined in order into chunks of whole lines of at most that many bytes (a longer
        line alone)."""
    def fhir_wanted(self) -> list[tuple[int, int | None]]:
        """``(index, verified_at)`` of the accepted items that asked for FHIR JSON
        (``verified_at`` of a resent answer, else None)."""
    def verdict(self, index: int, disclosure: Mapping[str, Sequence[str]]) -> bytes:
        """The encoded ``Verdict`` of item ``index``."""
    def set_fhir(self, index: int, json: str) -> None: ...
    def response(self, disclosure: Mapping[str, Sequence[str]]) -> Any:
        """An encoded ``VerifyBatchResponse``, a list of encoded ``VerifyStreamResponse``s
        (bytes, one per request) for a stream, an encoded ``VerifyResponse`` for a unary
        call; ``disclosure``: the field groups disclosed for each use."""
    def answer_unary(
        self,
        verifier: Verifier,
        view: CallerView,
        now: int,
        store: MemoryAnswerStore | None = None,
        keys: AnswerKeys | None = None,
        caller: str = "",
        expires_at: int = 0,
        audit: tuple[HolderRefKey, VerificationCounts | None, AuditQueue] | None = None,
    ) -> tuple[int, int, int, bytes | None, int, int]:
        """A unary call's usable scan in one call: :meth:`recover_from` ``store`` (when
        given), verified at ``now`` unless answered from it, :meth:`keep_in` ``store`` until
        ``expires_at``, and :meth:`response` with what ``view`` discloses; with ``audit``
        (``(key, counts, queue)``), also the decision counted and its record queued, as
        :meth:`audit` with the usual tail would render it, for ``caller`` and ``Verify``, this
        call's time as its latency (not when the request id was reused). ``(unreadable,
        resent, reused, response, queued_bytes, replay_unavailable)``: response None when the
        scan asked for FHIR JSON or its request id was reused; about the bytes of the lines
        waiting in ``queue`` (0 when nothing was queued) and the number of REPLAY_UNAVAILABLE
        decisions among the queued ones. Not for a verifier with an external replay store."""

@final
class CallerView:
    """What one caller's policy lets a unary call verify for (``uses``) and see (the field
    groups of each use, "" for none), converted once for :meth:`WireBatch.answer_unary`."""
    def __new__(cls, uses: Sequence[str], disclosure: Mapping[str, Sequence[str]]) -> Self: ...

@final
class ReaderIds:
    """The reader ids one caller may send (``callers.readers``): exact ids, and prefixes
    written with a final ``*``, ``{caller}`` in either replaced by ``caller`` (a final ``*``
    read before, so a caller id ending in ``*`` stays exact); made once per caller policy
    (and caller, with ``{caller}``)."""
    def __new__(cls, patterns: Sequence[str], caller: str = "") -> Self: ...
    def allows(self, reader_id: str) -> bool:
        """Whether ``reader_id`` is one of these readers."""

@final
class VerificationCounts:
    """The counts behind ``apcv_verifications_total`` and ``apcv_verification_seconds``
    (bucket ``bounds`` ascending), updated by :meth:`WireBatch.audit`."""

    def __new__(cls, bounds: Sequence[float]) -> Self: ...
    def count(self, decision: str, reason: str, method: str, count: int) -> None:
        """Count ``count`` decisions ("ACCEPTED" or "REJECTED")."""
    def observe(self, method: str, amount: float, count: int) -> None:
        """Observe ``amount`` seconds ``count`` times in ``method``'s histogram."""
    def snapshot(
        self,
    ) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, list[int], float]]]:
        """``(decision, reason, method, count)`` and ``(method, cumulative buckets, sum)``."""

@final
class AuditQueue:
    """Audit records kept as their fields by :meth:`WireBatch.answer_unary`, rendered when
    taken; repr shows only their number."""
    def __new__(cls) -> Self: ...
    def take(self, chunk_bytes: int = 0) -> list[str]:
        """The records' lines in queued order (each ends with its newline), the queue
        emptied: one per line, or joined into chunks of whole lines of at most
        ``chunk_bytes`` bytes (a longer line alone)."""
    def __len__(self) -> int: ...

@final
class HolderRefKey:
    """The audit trail's HMAC key for the core; repr shows nothing of it."""
    def __new__(cls, secret: bytes) -> Self: ...
    def holder_ref(self, credential_id: str) -> str:
        """HMAC-SHA-256(secret, credential id), hex, truncated to 32 characters."""
