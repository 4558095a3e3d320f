"""FHIR R4 output: the verified person and coverage as a Bundle, after HL7 France fr-core.

Built from the *already filtered* :class:`VerifyResponse` (policy.py), so the FHIR form never
discloses more than the protobuf one: no INS → no INS identifier and no identity reliability;
no identity traits → no name, gender, birth date or birth place; no AMO → no AMO Coverage;
no AMC → no AMC Coverage. The Bundle (type ``collection``) holds:

- one ``Patient`` (fr-core-patient-ins when the INS and the traits are both present, else
  fr-core-patient): INS identifier with the register OID as system and the fr-core identifier
  type; identity reliability QUAL collected by AV (Application carte Vitale); official name
  (family = birth name, given = first given name, the whole list in fr-core's
  birth-list-given-name extension, as fr-core-patient-ins requires ``given`` 1..1); gender;
  birth date; birth place (INSEE code);
- one ``Coverage`` for the AMO rights (payor = the AMO organisation regime+caisse+centre);
- one ``Coverage`` per *valid* AMC attestation.

Lunar birth dates (docs/profile.md §5.4): FHIR ``date`` is ``YYYY``, ``YYYY-MM`` or a real calendar
``YYYY-MM-DD``, so ``1957-00-00`` or ``1962-02-30`` cannot be a ``birthDate``. The profile says
such a date stands for its year where a date is needed, so ``birthDate`` holds the year
(``"1957"``) and the verbatim value is kept, unchanged, in an extension on the primitive
(``_birthDate``, URL :data:`VERBATIM_DATE_EXTENSION`). The same rule applies to the dates
of the AMO rights period.
"""

from __future__ import annotations

import calendar
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from ._proto.apcv.verify.v1 import verifier_pb2

__all__ = [
    "AMC_CONTRACT_SYSTEM",
    "AMC_NUMBER_SYSTEM",
    "AMO_ORGANISATION_SYSTEM",
    "INS_IDENTIFIERS",
    "VERBATIM_DATE_EXTENSION",
    "bundle",
    "bundle_json",
    "fhir_date",
]

FR_CORE = "https://hl7.fr/ig/fhir/core"
PATIENT_PROFILE = f"{FR_CORE}/StructureDefinition/fr-core-patient"
PATIENT_INS_PROFILE = f"{FR_CORE}/StructureDefinition/fr-core-patient-ins"
IDENTIFIER_TYPE_SYSTEM = f"{FR_CORE}/CodeSystem/fr-core-cs-v2-0203"
IDENTITY_RELIABILITY_EXTENSION = f"{FR_CORE}/StructureDefinition/fr-core-identity-reliability"
IDENTITY_STATUS_SYSTEM = f"{FR_CORE}/CodeSystem/fr-core-cs-identity-status"
METHOD_COLLECTION_SYSTEM = f"{FR_CORE}/CodeSystem/fr-core-cs-method-collection"
BIRTH_LIST_GIVEN_NAME_EXTENSION = (
    f"{FR_CORE}/StructureDefinition/fr-core-patient-birth-list-given-name"
)
INSEE_CODE_EXTENSION = f"{FR_CORE}/StructureDefinition/fr-core-address-insee-code"
BIRTH_PLACE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
#: French communes (incl. overseas), the code system fr-core uses for birth places.
COMMUNE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

#: Identifiers and extensions this service defines where fr-core has none.
APCV_FHIR = "https://apcv.example/fhir"
VERBATIM_DATE_EXTENSION = f"{APCV_FHIR}/StructureDefinition/verbatim-date"
THIRD_PARTY_PAYMENT_EXTENSION = f"{APCV_FHIR}/StructureDefinition/amc-third-party-payment"
CARE_DOMAIN_EXTENSION = f"{APCV_FHIR}/StructureDefinition/amc-care-domain"
#: AMO organisation: regime (2) + caisse (3) + centre (4) digits.
AMO_ORGANISATION_SYSTEM = f"{APCV_FHIR}/NamingSystem/amo-organisation"
AMC_NUMBER_SYSTEM = f"{APCV_FHIR}/NamingSystem/amc-number"
AMC_CONTRACT_SYSTEM = f"{APCV_FHIR}/NamingSystem/amc-contract"

#: INS register OID → (fr-core identifier type, identifier use), per fr-core-patient-ins:
#: INS-NIA is a temporary number (use ``temp``), the others ``official``.
INS_IDENTIFIERS: dict[str, tuple[str, str]] = {
    "1.2.250.1.213.1.4.8": ("INS-NIR", "official"),
    "1.2.250.1.213.1.4.9": ("INS-NIA", "temp"),
    "1.2.250.1.213.1.4.10": ("INS-NIR-TEST", "official"),
    "1.2.250.1.213.1.4.11": ("INS-NIR-DEMO", "official"),
}
_GENDERS = {"M": "male", "F": "female"}
_DATE_SHAPE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def fhir_date(value: str) -> tuple[str, bool]:
    """``(FHIR date, verbatim kept)``: the date itself, or its year for a lunar date."""
    match = _DATE_SHAPE.match(value)
    if match is None:  # the core only accepts this shape (docs/profile.md §5.4); be safe anyway
        return value[:4], True
    year, month, day = (int(part) for part in match.groups())
    if 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]:
        return value, False
    return match.group(1), True  # lunar: processed as its year (docs/profile.md §5.4)


def _set_date(target: dict[str, Any], key: str, value: str) -> None:
    """``target[key]`` = the FHIR date; a lunar date also kept verbatim in ``_key``."""
    date, lunar = fhir_date(value)
    target[key] = date
    if lunar:
        target[f"_{key}"] = {"extension": [{"url": VERBATIM_DATE_EXTENSION, "valueString": value}]}


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _patient(response: verifier_pb2.Verdict, verified_at: int) -> dict[str, Any]:
    person = response.person
    has_ins = person.HasField("ins")
    has_identity = person.HasField("identity")
    profile = PATIENT_INS_PROFILE if has_ins and has_identity else PATIENT_PROFILE
    patient: dict[str, Any] = {"resourceType": "Patient", "meta": {"profile": [profile]}}
    extensions: list[dict[str, Any]] = []
    if has_ins and response.HasField("identity_qualification"):
        qualification = response.identity_qualification
        extensions.append(
            {
                "url": IDENTITY_RELIABILITY_EXTENSION,
                "extension": [
                    {
                        "url": "identityStatus",
                        "valueCoding": {
                            "system": IDENTITY_STATUS_SYSTEM,
                            "code": qualification.status_code,
                            "display": "Identité qualifiée",
                        },
                    },
                    {
                        "url": "methodCollection",
                        "valueCoding": {
                            "system": METHOD_COLLECTION_SYSTEM,
                            "code": qualification.collection_method,
                            "display": "Application carte Vitale",
                        },
                    },
                    {"url": "dateCollection", "valueDate": _iso(verified_at)[:10]},
                ],
            }
        )
    if has_identity:
        place = person.identity.birth_place
        coding: dict[str, Any] = {"code": place}
        if not place.startswith("99"):  # 99xxx is a country code, not a commune
            coding = {"system": COMMUNE_SYSTEM, "code": place}
        extensions.append(
            {
                "url": BIRTH_PLACE_EXTENSION,
                "valueAddress": {
                    "extension": [{"url": INSEE_CODE_EXTENSION, "valueCoding": coding}]
                },
            }
        )
    if extensions:
        patient["extension"] = extensions
    if has_ins:
        type_code, use = INS_IDENTIFIERS.get(person.ins.oid, ("INS-NIR", "official"))
        patient["identifier"] = [
            {
                "use": use,
                "type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": type_code}]},
                "system": f"urn:oid:{person.ins.oid}",
                "value": person.ins.matricule,
            }
        ]
    if has_identity:
        identity = person.identity
        given = identity.given_names.split()
        patient["name"] = [
            {
                "extension": [
                    {"url": BIRTH_LIST_GIVEN_NAME_EXTENSION, "valueString": identity.given_names}
                ],
                "use": "official",
                "family": identity.birth_name,
                "given": given[:1],
            }
        ]
        patient["gender"] = _GENDERS.get(identity.sex, "unknown")
        _set_date(patient, "birthDate", identity.birth_date)
    return patient


def _amo_coverage(response: verifier_pb2.Verdict, patient_url: str) -> dict[str, Any]:
    amo = response.person.amo
    period: dict[str, Any] = {}
    _set_date(period, "start", amo.open_from)
    _set_date(period, "end", amo.open_to)
    return {
        "resourceType": "Coverage",
        "status": "active",
        "type": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "PUBLICPOL"}], "text": "AMO"},
        "beneficiary": {"reference": patient_url},
        "payor": [
            {
                "identifier": {
                    "system": AMO_ORGANISATION_SYSTEM,
                    "value": amo.regime + amo.caisse + amo.centre,
                },
                "display": response.issuer,
            }
        ],
        "period": period,
    }


def _amc_coverage(amc: verifier_pb2.AmcCoverage, patient_url: str) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = [
        {"url": CARE_DOMAIN_EXTENSION, "valueCode": domain} for domain in amc.domains
    ]
    if amc.HasField("third_party_payment"):
        extensions.insert(
            0, {"url": THIRD_PARTY_PAYMENT_EXTENSION, "valueBoolean": amc.third_party_payment}
        )
    coverage: dict[str, Any] = {
        "resourceType": "Coverage",
        "extension": extensions,
        "identifier": [{"system": AMC_CONTRACT_SYSTEM, "value": amc.contract}],
        "status": "active",
        "type": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "EHCPOL"}], "text": "AMC"},
        "beneficiary": {"reference": patient_url},
        "payor": [
            {
                "identifier": {"system": AMC_NUMBER_SYSTEM, "value": amc.amc_number},
                "display": amc.organisation,
            }
        ],
    }
    if amc.HasField("expires_at"):
        coverage["period"] = {"end": _iso(amc.expires_at.seconds)}
    return coverage


def bundle(response: verifier_pb2.Verdict, *, verified_at: int) -> dict[str, Any]:
    """The FHIR R4 Bundle of an accepted, already filtered response (empty when rejected)."""
    entries: list[dict[str, Any]] = []
    if response.decision == verifier_pb2.DECISION_ACCEPTED and response.HasField("person"):
        patient_url = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": patient_url, "resource": _patient(response, verified_at)})
        resources = []
        if response.person.HasField("amo"):
            resources.append(_amo_coverage(response, patient_url))
        resources += [_amc_coverage(amc, patient_url) for amc in response.amc if amc.valid]
        entries += [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in resources]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _iso(verified_at),
        "entry": entries,
    }


def bundle_json(response: verifier_pb2.Verdict, *, verified_at: int) -> str:
    """:func:`bundle` as compact JSON (UTF-8 text, names not escaped)."""
    return json.dumps(bundle(response, verified_at=verified_at), ensure_ascii=False)
