"""Protobuf ↔ core conversions of the verifier service: a request's ``Scan`` checked and
turned into the core's :class:`~apcv_verify._native.Scan`, a core decision turned into a
``Verdict`` carrying only the field groups the caller may see.
"""

from __future__ import annotations

import time

from .. import _native, fhir
from .._proto.apcv.verify.v1 import verifier_pb2
from ..config import DEFAULT_FHIR_CANONICAL_BASE, FIELD_GROUPS, CallerPolicy
from .errors import FieldProblem
from .policy import scanned_at_permission

__all__ = [
    "ALL_GROUPS",
    "INS_QUALIFICATION",
    "MAX_ID_LENGTH",
    "MAX_NONCE_BYTES",
    "core_scan",
    "response_message",
    "scan_problem",
]

#: Caller-chosen identifiers are echoed and logged; bound them.
MAX_ID_LENGTH = 128
#: An NFC challenge is a short random value (docs/profile.md §2.5 "nonce").
MAX_NONCE_BYTES = 64

#: RNIV identity status of an INS read from the Appli carte Vitale: qualified. The RNIV
#: (1 - Principes communs v2.0, §4.3.4) counts an identity obtained by scanning or reading the
#: ApCV as qualified, for holders and their attached beneficiaries alike; fr-core codes it
#: QUAL (fr-core-cs-identity-status) with collection method AV (fr-core-cs-method-collection).
INS_QUALIFICATION = verifier_pb2.IdentityQualification(
    status="QUALIFIED", status_code="QUAL", collection_method="AV"
)
#: Every field group: what a response carries when no policy narrows it.
ALL_GROUPS = frozenset(FIELD_GROUPS)


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


def scan_problem(scan: verifier_pb2.Scan) -> FieldProblem | None:
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


def core_scan(request: verifier_pb2.Scan, policy: CallerPolicy, caller: str) -> _native.Scan:
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
