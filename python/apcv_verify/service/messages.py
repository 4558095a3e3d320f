"""Protobuf ↔ core conversions of the verifier service: a request's ``Scan`` checked, a core
decision turned into a ``Verdict`` carrying only the field groups the caller may see.
"""

from __future__ import annotations

import time
from typing import cast

from .. import _native, fhir
from .._proto.apcv.verify.v1 import verifier_pb2
from ..config import DEFAULT_FHIR_CANONICAL_BASE, FIELD_GROUPS
from .errors import FieldProblem

__all__ = [
    "ALL_GROUPS",
    "INS_QUALIFICATION",
    "MAX_ID_LENGTH",
    "MAX_NONCE_BYTES",
    "fill_verdict",
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


def _fill_person(
    message: verifier_pb2.VerifiedPerson, person: _native.Person, disclosed: frozenset[str]
) -> None:
    """The presented person with only the disclosed field groups set (the rest unset).
    Fields are set in place: a submessage is present once one of its fields is set, even to
    its default value."""
    message.rank = person.rank
    if "ins" in disclosed:
        ins = message.ins
        ins.matricule = person.ins
        ins.oid = person.ins_oid
    if "identity" in disclosed:
        identity = message.identity
        identity.birth_name = person.birth_name
        identity.given_names = person.given_names
        identity.sex = person.sex
        identity.birth_date = person.birth_date
        identity.birth_place = person.birth_place
    if "amo" in disclosed:
        amo = person.amo
        rights = message.amo
        rights.regime = amo.regime
        rights.caisse = amo.caisse
        rights.centre = amo.centre
        rights.open_from = amo.open_from
        rights.open_to = amo.open_to


def _fill_amc(message: verifier_pb2.AmcCoverage, coverage: _native.AmcCoverage) -> None:
    """One AMC attestation's verdict (docs/profile.md §2.7, §8.1): validity, reason, content."""
    message.valid = coverage.valid
    message.reason = _reason(coverage.reason)  # REASON_ + the §8.1 code
    message.detail = coverage.detail
    message.organisation = coverage.organisation or ""
    message.amc_number = coverage.amc_number or ""
    message.contract = coverage.contract or ""
    message.domains.extend(coverage.domains)
    third_party_payment = coverage.third_party_payment
    if third_party_payment is not None:
        message.third_party_payment = third_party_payment
    expires_at = coverage.expires_at
    if expires_at is not None:
        message.expires_at.FromSeconds(expires_at)
    valid_from = coverage.valid_from
    if valid_from is not None:
        message.valid_from.FromSeconds(valid_from)


#: ``Reason`` values by the core's code (docs/profile.md §8), filled as codes are met.
_REASONS: dict[str, verifier_pb2.Reason] = {}


def _reason(code: str) -> verifier_pb2.Reason:
    """The ``Reason`` value ``REASON_`` + ``code`` (ValueError for a code the contract lacks)."""
    value = _REASONS.get(code)
    if value is None:
        value = _REASONS[code] = cast(
            verifier_pb2.Reason, verifier_pb2.Reason.Value(f"REASON_{code}")
        )
    return value


def response_message(
    request_id: str,
    result: _native.VerificationResult,
    *,
    disclosed: frozenset[str] = ALL_GROUPS,
    include_fhir: bool = False,
    verified_at: int | None = None,
    fhir_canonical_base: str = DEFAULT_FHIR_CANONICAL_BASE,
) -> verifier_pb2.Verdict:
    """The protobuf form of one core decision, carrying only the ``disclosed`` field groups
    (:func:`fill_verdict` of a new ``Verdict``)."""
    response = verifier_pb2.Verdict()
    fill_verdict(
        response,
        request_id,
        result,
        disclosed=disclosed,
        include_fhir=include_fhir,
        verified_at=verified_at,
        fhir_canonical_base=fhir_canonical_base,
    )
    return response


def fill_verdict(
    response: verifier_pb2.Verdict,
    request_id: str,
    result: _native.VerificationResult,
    *,
    disclosed: frozenset[str] = ALL_GROUPS,
    include_fhir: bool = False,
    verified_at: int | None = None,
    fhir_canonical_base: str = DEFAULT_FHIR_CANONICAL_BASE,
) -> None:
    """Set the empty ``response`` (a new ``Verdict``, or one in place in the reply) to one
    core decision, carrying only the ``disclosed`` field groups.

    Groups (``ins``, ``identity``, ``amo``, ``amc``) outside ``disclosed`` are absent, not
    blanked; the identity qualification goes with the INS; FHIR JSON, when asked for, is
    built from this already-filtered message, so it can disclose nothing more.
    """
    accepted = result.accepted
    response.request_id = request_id
    response.decision = (
        verifier_pb2.DECISION_ACCEPTED if accepted else verifier_pb2.DECISION_REJECTED
    )
    response.reason = _reason(result.reason)  # REASON_ + the docs/profile.md §8 code
    response.detail = result.detail
    response.duplicate = result.duplicate
    if result.resent:  # the kept answer of an earlier request (answer recovery)
        response.resent = True
    response.use = result.use or ""
    person = result.person if accepted else None
    if person is None:
        return  # on rejection no person is returned (docs/profile.md §7.6)
    _fill_person(response.person, person, disclosed)
    response.issuer = result.issuer or ""
    if "ins" in disclosed:
        qualification = response.identity_qualification
        qualification.status = INS_QUALIFICATION.status
        qualification.status_code = INS_QUALIFICATION.status_code
        qualification.collection_method = INS_QUALIFICATION.collection_method
    if "amc" in disclosed:
        for item in result.amc:
            _fill_amc(response.amc.add(), item)
    delegation_label = result.delegation_label
    if delegation_label is not None:  # "" for a delegation without a label
        delegation = response.delegation
        delegation.used = True
        delegation.label = delegation_label
    if include_fhir:
        now = int(time.time()) if verified_at is None else verified_at
        response.fhir_json = fhir.bundle_json(
            response, verified_at=now, canonical_base=fhir_canonical_base
        )


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
