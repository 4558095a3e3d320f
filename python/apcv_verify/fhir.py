"""FHIR R4 output: the verified person and coverage as a Bundle, after HL7 France fr-core.

docs/fhir.md maps every element to its source in the presentation and names the fr-core version
followed (:data:`FR_CORE_VERSION`). Built from the *already filtered* :class:`Verdict`
(service/policy.py), so the FHIR form never discloses more than the protobuf one: no INS → no INS
identifier and no identity reliability; no identity traits → no name, gender, birth date or
birth place; no AMO → no AMO Coverage; no AMC → no AMC Coverage. The Bundle (type
``collection``) holds:

- one ``Patient`` (fr-core-patient-ins when the INS and the traits are both present, else
  fr-core-patient): INS identifier with the register OID as system and the fr-core identifier
  type; identity reliability QUAL collected by AV (Application carte Vitale); official name
  (family = birth name, given = first given name, the whole list in fr-core's
  birth-list-given-name extension, as fr-core-patient-ins requires ``given`` 1..1); gender;
  birth date; birth place (INSEE commune or country code);
- one ``Coverage`` for the AMO rights (payor = the AMO organisation regime+caisse+centre);
- one ``Coverage`` per *valid* AMC attestation.

Every resource has an ``id`` (its Bundle entry's ``fullUrl`` is ``urn:uuid:<id>``) and a
generated narrative of the data it carries.

Lunar dates (docs/profile.md §5.4): FHIR ``date`` is ``YYYY``, ``YYYY-MM`` or a real calendar
``YYYY-MM-DD``, so ``1957-00-00`` or ``1962-02-30`` cannot be one. Such a date stands for its
year where a date is needed, so the FHIR date holds the year (``"1957"``) and the verbatim value
is kept: for the birth date in fr-core's ``fr-core-lunar-date`` extension on the Patient, for
the AMO rights period (fr-core has nothing for it) in this service's ``verbatim-date``
extension on the primitive (``_start`` / ``_end``).
"""

from __future__ import annotations

import calendar
import html
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._proto.apcv.verify.v1 import verifier_pb2
from .config import DEFAULT_FHIR_CANONICAL_BASE

__all__ = [
    "COUNTRY_SYSTEM",
    "COMMUNE_SYSTEM",
    "FR_CORE",
    "FR_CORE_VERSION",
    "INS_IDENTIFIERS",
    "LUNAR_DATE_EXTENSION",
    "Canonicals",
    "bundle",
    "bundle_json",
    "fhir_date",
]

FR_CORE = "https://hl7.fr/ig/fhir/core"
#: The fr-core version this output follows element by element (docs/fhir.md "Target"). fr-core
#: versions its definitions (StructureDefinition.version), so ``meta.profile`` names it.
FR_CORE_VERSION = "2.2.0-ballot-2"
PATIENT_PROFILE = f"{FR_CORE}/StructureDefinition/fr-core-patient|{FR_CORE_VERSION}"
PATIENT_INS_PROFILE = f"{FR_CORE}/StructureDefinition/fr-core-patient-ins|{FR_CORE_VERSION}"
IDENTIFIER_TYPE_SYSTEM = f"{FR_CORE}/CodeSystem/fr-core-cs-v2-0203"
IDENTITY_RELIABILITY_EXTENSION = f"{FR_CORE}/StructureDefinition/fr-core-identity-reliability"
IDENTITY_STATUS_SYSTEM = f"{FR_CORE}/CodeSystem/fr-core-cs-identity-status"
METHOD_COLLECTION_SYSTEM = f"{FR_CORE}/CodeSystem/fr-core-cs-method-collection"
BIRTH_LIST_GIVEN_NAME_EXTENSION = (
    f"{FR_CORE}/StructureDefinition/fr-core-patient-birth-list-given-name"
)
LUNAR_DATE_EXTENSION = f"{FR_CORE}/StructureDefinition/fr-core-lunar-date"
INSEE_CODE_EXTENSION = f"{FR_CORE}/StructureDefinition/fr-core-address-insee-code"
BIRTH_PLACE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
#: The two code systems of fr-core's birth-place value set (fr-core-vs-cog-commune-pays):
#: French communes (incl. overseas) and, for INSEE codes 99xxx, countries.
COMMUNE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"
COUNTRY_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R20-Pays/FHIR/TRE-R20-Pays"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
XHTML = "http://www.w3.org/1999/xhtml"

#: INS register OID → fr-core identifier type. Every INS identifier has ``use`` ``official``:
#: fr-core-patient-ins binds it to fr-core-vs-patient-identifier-use-ins (official | old), and
#: for the INS-NIA the guide settled on ``official`` (it is the official number while it lasts);
#: ``old`` is for a deactivated INS, which a verified presentation never carries.
INS_IDENTIFIERS: dict[str, str] = {
    "1.2.250.1.213.1.4.8": "INS-NIR",
    "1.2.250.1.213.1.4.9": "INS-NIA",
    "1.2.250.1.213.1.4.10": "INS-NIR-TEST",
    "1.2.250.1.213.1.4.11": "INS-NIR-DEMO",
}
_GENDERS = {"M": "male", "F": "female"}
_DATE_SHAPE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


@dataclass(frozen=True)
class Canonicals:
    """URLs of the extensions and naming systems this service defines where fr-core has none,
    under the configured base (``fhir.canonical_base``, docs/fhir.md "Canonical base")."""

    base: str = DEFAULT_FHIR_CANONICAL_BASE

    @property
    def verbatim_date(self) -> str:
        """Extension (on a ``date`` primitive): the lunar date the FHIR year stands for."""
        return f"{self.base}/StructureDefinition/verbatim-date"

    @property
    def third_party_payment(self) -> str:
        """Extension (Coverage, boolean): the AMC attestation's third-party-payment flag."""
        return f"{self.base}/StructureDefinition/amc-third-party-payment"

    @property
    def care_domain(self) -> str:
        """Extension (Coverage, code, repeated): one care domain of the AMC attestation."""
        return f"{self.base}/StructureDefinition/amc-care-domain"

    @property
    def amo_organisation(self) -> str:
        """Identifier system: AMO organisation, regime (2) + caisse (3) + centre (4) digits."""
        return f"{self.base}/NamingSystem/amo-organisation"

    @property
    def amc_number(self) -> str:
        """Identifier system: AMC organisation number."""
        return f"{self.base}/NamingSystem/amc-number"

    @property
    def amc_contract(self) -> str:
        """Identifier system: AMC contract id (the attestation's ``sub``)."""
        return f"{self.base}/NamingSystem/amc-contract"


def fhir_date(value: str) -> tuple[str, bool]:
    """``(FHIR date, lunar)``: the date itself, or its year for a lunar date."""
    match = _DATE_SHAPE.match(value)
    if match is None:  # the core only accepts this shape (profile §5.4); be safe anyway
        return value[:4], True
    year, month, day = (int(part) for part in match.groups())
    if 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]:
        return value, False
    return match.group(1), True  # lunar: processed as its year (profile §5.4)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _narrative(*lines: str) -> dict[str, str]:
    """A generated narrative (FHIR dom-6): the lines, escaped, one paragraph each."""
    body = "".join(f"<p>{html.escape(line, quote=False)}</p>" for line in lines)
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


#: Displays of the identity-qualification codes the response carries (README "Identity
#: qualification"), from fr-core-cs-identity-status and fr-core-cs-method-collection.
_STATUS_DISPLAYS = {"QUAL": "Identité qualifiée"}
_METHOD_DISPLAYS = {"AV": "Application carte Vitale"}


def _coding(system: str, code: str, displays: dict[str, str]) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if code in displays:
        coding["display"] = displays[code]
    return coding


def _reliability(qualification: verifier_pb2.IdentityQualification) -> dict[str, Any]:
    """fr-core-identity-reliability as the targeted version defines it: an INS from the Appli
    carte Vitale is qualified (QUAL), collected by AV (RNIV 1, §4.3.4). ``dateInterrogationINSi``
    is left out: no INSi teleservice call is made for an ApCV identity, and the guide excludes
    that date for it (docs/fhir.md "Identity reliability")."""
    method = qualification.collection_method
    status = qualification.status_code
    return {
        "url": IDENTITY_RELIABILITY_EXTENSION,
        "extension": [
            {
                "url": "methodCollection",
                "valueCoding": _coding(METHOD_COLLECTION_SYSTEM, method, _METHOD_DISPLAYS),
            },
            {
                "url": "identityStatus",
                "valueCoding": _coding(IDENTITY_STATUS_SYSTEM, status, _STATUS_DISPLAYS),
            },
        ],
    }


def _patient(response: verifier_pb2.Verdict, resource_id: str) -> dict[str, Any]:
    person = response.person
    has_ins = person.HasField("ins")
    has_identity = person.HasField("identity")
    profile = PATIENT_INS_PROFILE if has_ins and has_identity else PATIENT_PROFILE
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": resource_id,
        "meta": {"profile": [profile]},
    }
    lines: list[str] = []
    extensions: list[dict[str, Any]] = []
    qualified = has_ins and response.HasField("identity_qualification")
    if qualified:
        extensions.append(_reliability(response.identity_qualification))
    if has_identity:
        identity = person.identity
        place = identity.birth_place
        system = COUNTRY_SYSTEM if place.startswith("99") else COMMUNE_SYSTEM  # INSEE 99xxx
        extensions.append(
            {
                "url": BIRTH_PLACE_EXTENSION,
                "valueAddress": {
                    "extension": [
                        {
                            "url": INSEE_CODE_EXTENSION,
                            "valueCoding": {"system": system, "code": place},
                        }
                    ]
                },
            }
        )
        birth_date, lunar = fhir_date(identity.birth_date)
        if lunar:
            extensions.append({"url": LUNAR_DATE_EXTENSION, "valueString": identity.birth_date})
    if extensions:
        patient["extension"] = extensions
    if has_ins:
        type_code = INS_IDENTIFIERS.get(person.ins.oid, "INS-NIR")
        patient["identifier"] = [
            {
                "use": "official",
                "type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": type_code}]},
                "system": f"urn:oid:{person.ins.oid}",
                "value": person.ins.matricule,
            }
        ]
        lines.append(f"{type_code} {person.ins.matricule}")
        if qualified:
            qualification = response.identity_qualification
            lines.append(
                f"Fiabilité : {qualification.status_code}"
                f" (recueil {qualification.collection_method})"
            )
    if has_identity:
        name: dict[str, Any] = {"use": "official"}
        if identity.birth_name:  # FHIR JSON has no empty strings or arrays
            name["family"] = identity.birth_name
        if identity.given_names.split():
            name = {
                "extension": [
                    {"url": BIRTH_LIST_GIVEN_NAME_EXTENSION, "valueString": identity.given_names}
                ],
                **name,
                "given": identity.given_names.split()[:1],
            }
        patient["name"] = [name]
        patient["gender"] = _GENDERS.get(identity.sex, "unknown")
        patient["birthDate"] = birth_date
        lines[:0] = [
            f"{identity.birth_name}, {identity.given_names} ({identity.sex})",
            f"Né(e) le {identity.birth_date} à {place} (INSEE)",
        ]
    patient["text"] = _narrative(*lines) if lines else _narrative("Identité non communiquée")
    return _ordered(patient)


def _period_date(period: dict[str, Any], key: str, value: str, urls: Canonicals) -> None:
    """``period[key]`` = the FHIR date; a lunar date also kept verbatim in ``_key``."""
    date, lunar = fhir_date(value)
    period[key] = date
    if lunar:
        period[f"_{key}"] = {"extension": [{"url": urls.verbatim_date, "valueString": value}]}


def _amo_coverage(
    response: verifier_pb2.Verdict, resource_id: str, patient_url: str, urls: Canonicals
) -> dict[str, Any]:
    amo = response.person.amo
    period: dict[str, Any] = {}
    _period_date(period, "start", amo.open_from, urls)
    _period_date(period, "end", amo.open_to, urls)
    organisation = amo.regime + amo.caisse + amo.centre
    return {
        "resourceType": "Coverage",
        "id": resource_id,
        "text": _narrative(
            f"AMO : régime {amo.regime}, caisse {amo.caisse}, centre {amo.centre}",
            f"Droits ouverts du {amo.open_from} au {amo.open_to}",
        ),
        "status": "active",
        "type": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "PUBLICPOL"}], "text": "AMO"},
        "beneficiary": {"reference": patient_url},
        "period": period,
        # No display: the presentation names the organisation only by its code (docs/fhir.md).
        "payor": [{"identifier": {"system": urls.amo_organisation, "value": organisation}}],
    }


def _amc_coverage(
    amc: verifier_pb2.AmcCoverage, resource_id: str, patient_url: str, urls: Canonicals
) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = []
    if amc.HasField("third_party_payment"):
        extensions.append(
            {"url": urls.third_party_payment, "valueBoolean": amc.third_party_payment}
        )
    extensions += [{"url": urls.care_domain, "valueCode": domain} for domain in amc.domains]
    lines = [f"AMC {amc.amc_number}, contrat {amc.contract}"]
    if amc.HasField("third_party_payment"):
        lines.append(f"Tiers payant : {'oui' if amc.third_party_payment else 'non'}")
    if amc.domains:
        lines.append("Domaines : " + ", ".join(amc.domains))
    coverage: dict[str, Any] = {
        "resourceType": "Coverage",
        "id": resource_id,
        "text": None,
        "extension": extensions,
        "identifier": [{"system": urls.amc_contract, "value": amc.contract}],
        "status": "active",
        "type": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "EHCPOL"}], "text": "AMC"},
        "beneficiary": {"reference": patient_url},
        # No display: the attestation's iss is an organisation id, not a name (docs/fhir.md).
        "payor": [{"identifier": {"system": urls.amc_number, "value": amc.amc_number}}],
    }
    if not extensions:
        del coverage["extension"]
    period: dict[str, str] = {}
    if amc.HasField("valid_from"):
        period["start"] = _iso(amc.valid_from.seconds)
        lines.append(f"Valable à partir du {period['start']}")
    if amc.HasField("expires_at"):
        period["end"] = _iso(amc.expires_at.seconds)
        lines.append(f"Valable jusqu'au {period['end']}")
    if period:  # the attestation's nbf and exp (docs/profile.md §2.7)
        coverage["period"] = period
    coverage["text"] = _narrative(*lines)
    return coverage


def _ordered(patient: dict[str, Any]) -> dict[str, Any]:
    """The Patient's keys in FHIR's element order (text before extension), for readers."""
    order = ("resourceType", "id", "meta", "text", "extension", "identifier", "name", "gender")
    first = {key: patient[key] for key in order if key in patient}
    return first | {key: value for key, value in patient.items() if key not in first}


def bundle(
    response: verifier_pb2.Verdict,
    *,
    verified_at: int,
    canonical_base: str = DEFAULT_FHIR_CANONICAL_BASE,
) -> dict[str, Any]:
    """The FHIR R4 Bundle of an accepted, already filtered response (empty when rejected).

    ``canonical_base`` is the configured ``fhir.canonical_base`` (see :class:`Canonicals`).
    """
    urls = Canonicals(canonical_base)
    entries: list[dict[str, Any]] = []
    if response.decision == verifier_pb2.DECISION_ACCEPTED and response.HasField("person"):
        patient_id = str(uuid.uuid4())
        patient_url = f"urn:uuid:{patient_id}"
        resources = [_patient(response, patient_id)]
        if response.person.HasField("amo"):
            resources.append(_amo_coverage(response, str(uuid.uuid4()), patient_url, urls))
        resources += [
            _amc_coverage(amc, str(uuid.uuid4()), patient_url, urls)
            for amc in response.amc
            if amc.valid
        ]
        entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
    result: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "timestamp": _iso(verified_at),
    }
    if entries:  # FHIR JSON has no empty arrays
        result["entry"] = entries
    return result


def bundle_json(
    response: verifier_pb2.Verdict,
    *,
    verified_at: int,
    canonical_base: str = DEFAULT_FHIR_CANONICAL_BASE,
) -> str:
    """:func:`bundle` as compact JSON (UTF-8 text, names not escaped)."""
    return json.dumps(
        bundle(response, verified_at=verified_at, canonical_base=canonical_base),
        ensure_ascii=False,
    )
