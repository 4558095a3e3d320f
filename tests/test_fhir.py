"""FHIR R4 output (python/apcv_verify/fhir.py), validated against the rules we implement.

The validator below checks what fr-core and FHIR R4 require of the resources we emit:
required elements, identifier systems (the INS register OID), fr-core identifier types and
uses, FHIR date/dateTime formats, references inside the Bundle, and lunar birth dates kept
verbatim in the ``_birthDate`` extension with the year in ``birthDate``.
"""

from __future__ import annotations

import calendar
import json
import re
from typing import Any

import pytest
from apcv_verify import fhir
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import INS_DEMO_OID, DemoPKI, qr_text

from .conftest import ServerProcess

# FHIR R4 primitive formats (https://hl7.org/fhir/R4/datatypes.html).
FHIR_DATE = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"
)
FHIR_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
URN_UUID = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
INS_TYPES = {
    "urn:oid:1.2.250.1.213.1.4.8": ("INS-NIR", "official"),
    "urn:oid:1.2.250.1.213.1.4.9": ("INS-NIA", "temp"),
    "urn:oid:1.2.250.1.213.1.4.10": ("INS-NIR-TEST", "official"),
    "urn:oid:1.2.250.1.213.1.4.11": ("INS-NIR-DEMO", "official"),
}
FR_CORE = "https://hl7.fr/ig/fhir/core"


def check_date(value: str) -> None:
    """A FHIR date, and when complete a real calendar date (the regex allows 02-31)."""
    assert FHIR_DATE.match(value), value
    if len(value) == 10:
        year, month, day = (int(part) for part in value.split("-"))
        assert day <= calendar.monthrange(year, month)[1], value


def check_date_element(owner: dict[str, Any], key: str) -> None:
    check_date(owner[key])
    if f"_{key}" in owner:  # a lunar date: the year, and the verbatim value in the extension
        (extension,) = owner[f"_{key}"]["extension"]
        assert extension["url"] == fhir.VERBATIM_DATE_EXTENSION
        assert len(owner[key]) == 4 and extension["valueString"][:4] == owner[key]


def extension(owner: dict[str, Any], url: str) -> dict[str, Any] | None:
    found = [item for item in owner.get("extension", []) if item["url"] == url]
    assert len(found) <= 1
    return found[0] if found else None


def validate_patient(patient: dict[str, Any]) -> None:
    (profile,) = patient["meta"]["profile"]
    assert profile in (f"{FR_CORE}/StructureDefinition/fr-core-patient",
                       f"{FR_CORE}/StructureDefinition/fr-core-patient-ins")  # fmt: skip
    for identifier in patient.get("identifier", []):
        type_code, use = INS_TYPES[identifier["system"]]
        (coding,) = identifier["type"]["coding"]
        assert coding == {"system": f"{FR_CORE}/CodeSystem/fr-core-cs-v2-0203", "code": type_code}
        assert identifier["use"] == use
        assert re.fullmatch(r"[0-9]{5}(2A|2B|[0-9]{2})[0-9]{8}", identifier["value"])
    reliability = extension(patient, f"{FR_CORE}/StructureDefinition/fr-core-identity-reliability")
    if reliability is not None:
        parts = {item["url"]: item for item in reliability["extension"]}
        assert parts["identityStatus"]["valueCoding"]["code"] == "QUAL"
        assert parts["methodCollection"]["valueCoding"]["code"] == "AV"
        check_date(parts["dateCollection"]["valueDate"])
        assert "identifier" in patient  # a qualified identity carries its INS
    if "name" in patient:
        (name,) = patient["name"]
        assert name["use"] == "official" and name["family"]
        assert len(name["given"]) == 1  # fr-core-patient-ins: the first given name
        given_list = extension(
            name, f"{FR_CORE}/StructureDefinition/fr-core-patient-birth-list-given-name"
        )
        assert given_list is not None
        assert given_list["valueString"].split()[0] == name["given"][0]
    if "gender" in patient:
        assert patient["gender"] in ("male", "female")
    if "birthDate" in patient:
        check_date_element(patient, "birthDate")
    if profile.endswith("-ins"):  # the profile's required elements
        assert reliability is not None and patient["identifier"] and patient["name"]
        assert patient["gender"] and patient["birthDate"]
        place = extension(patient, "http://hl7.org/fhir/StructureDefinition/patient-birthPlace")
        assert place is not None
        (insee,) = place["valueAddress"]["extension"]
        assert insee["url"] == f"{FR_CORE}/StructureDefinition/fr-core-address-insee-code"
        assert re.fullmatch(r"[0-9AB]{5}", insee["valueCoding"]["code"])


def validate_coverage(coverage: dict[str, Any], patients: set[str]) -> None:
    # Coverage 1..1 status, beneficiary, 1..* payor (FHIR R4).
    assert coverage["status"] == "active"
    assert coverage["beneficiary"]["reference"] in patients
    assert coverage["payor"]
    for payor in coverage["payor"]:
        assert payor["identifier"]["system"].startswith("https://")
        assert payor["identifier"]["value"]
    period = coverage.get("period", {})
    for key in ("start", "end"):
        if key in period:
            value = period[key]
            if "T" in value:
                assert FHIR_INSTANT.match(value), value
            else:
                check_date_element(period, key)


def validate_bundle(bundle: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Validate and return the resources by type."""
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert FHIR_INSTANT.match(bundle["timestamp"])
    by_type: dict[str, list[dict[str, Any]]] = {}
    urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert all(URN_UUID.match(url) for url in urls) and len(set(urls)) == len(urls)
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    patients = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"}
    for patient in by_type.get("Patient", []):
        validate_patient(patient)
    for coverage in by_type.get("Coverage", []):
        validate_coverage(coverage, patients)
    assert set(by_type) <= {"Patient", "Coverage"}
    return by_type


def accepted(**person: Any) -> verifier_pb2.Verdict:
    response = verifier_pb2.Verdict(
        decision=verifier_pb2.DECISION_ACCEPTED,
        reason=verifier_pb2.REASON_OK,
        use="care",
        issuer="AMO",
    )
    response.person.CopyFrom(verifier_pb2.VerifiedPerson(rank=0, **person))
    return response


IDENTITY = verifier_pb2.IdentityTraits(
    birth_name="BENALI", given_names="Fatima Zohra", sex="F", birth_date="1957-00-00",
    birth_place="99350",
)  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected", "lunar"),
    [
        ("1985-06-14", "1985-06-14", False),
        ("2000-02-29", "2000-02-29", False),
        ("1957-00-00", "1957", True),
        ("1962-02-30", "1962", True),
        ("1900-02-29", "1900", True),  # 1900 is not a leap year
        ("1980-04-31", "1980", True),
        ("1971-13-01", "1971", True),
    ],
)
def test_lunar_dates_become_their_year(value: str, expected: str, lunar: bool) -> None:
    assert fhir.fhir_date(value) == (expected, lunar)


def test_lunar_birth_date_kept_verbatim_in_the_extension() -> None:
    response = accepted(
        ins=verifier_pb2.Ins(matricule="257209935001283", oid="1.2.250.1.213.1.4.8"),
        identity=IDENTITY,
    )
    response.identity_qualification.status_code = "QUAL"
    response.identity_qualification.collection_method = "AV"
    by_type = validate_bundle(fhir.bundle(response, verified_at=1_790_000_000))
    (patient,) = by_type["Patient"]
    assert patient["birthDate"] == "1957"
    assert patient["_birthDate"]["extension"][0]["valueString"] == "1957-00-00"
    assert patient["name"][0]["given"] == ["Fatima"]
    assert patient["identifier"][0]["system"] == "urn:oid:1.2.250.1.213.1.4.8"
    assert patient["gender"] == "female"
    # 99350 is a country (INSEE 99xxx), not a commune: no commune code system is claimed.
    place = extension(patient, "http://hl7.org/fhir/StructureDefinition/patient-birthPlace")
    assert place is not None
    assert place["valueAddress"]["extension"][0]["valueCoding"] == {"code": "99350"}


def test_nia_is_a_temporary_identifier() -> None:
    response = accepted(
        ins=verifier_pb2.Ins(matricule="184127505612355", oid="1.2.250.1.213.1.4.9")
    )
    (patient,) = validate_bundle(fhir.bundle(response, verified_at=1_790_000_000))["Patient"]
    (identifier,) = patient["identifier"]
    assert identifier["use"] == "temp" and identifier["type"]["coding"][0]["code"] == "INS-NIA"
    # INS without traits: plain fr-core-patient, no name, no birth date.
    assert patient["meta"]["profile"] == [f"{FR_CORE}/StructureDefinition/fr-core-patient"]
    assert "name" not in patient and "birthDate" not in patient


def test_one_coverage_per_valid_amc_attestation() -> None:
    response = accepted(
        amo=verifier_pb2.AmoRights(
            regime="01", caisse="751", centre="0001", open_from="2025-01-01", open_to="2027-00-00"
        )
    )
    valid = verifier_pb2.AmcCoverage(
        valid=True, reason=verifier_pb2.REASON_OK, organisation="Mutuelle Exemple",
        amc_number="12345678", contract="C-1", third_party_payment=True, domains=["PHAR", "OPT"],
    )  # fmt: skip
    valid.expires_at.FromSeconds(1_800_000_000)
    invalid = verifier_pb2.AmcCoverage(valid=False, reason=verifier_pb2.REASON_NOT_APPLICABLE)
    response.amc.extend([valid, invalid])
    by_type = validate_bundle(fhir.bundle(response, verified_at=1_790_000_000))
    amo, amc = by_type["Coverage"]
    assert amo["payor"][0]["identifier"]["value"] == "017510001"
    assert amo["period"] == {
        "start": "2025-01-01",
        "end": "2027",
        "_end": {"extension": [{"url": fhir.VERBATIM_DATE_EXTENSION, "valueString": "2027-00-00"}]},
    }
    assert amc["payor"][0]["display"] == "Mutuelle Exemple"
    assert amc["identifier"][0]["value"] == "C-1"
    flags = {item["url"].rsplit("/", 1)[1]: item for item in amc["extension"]}
    assert flags["amc-third-party-payment"]["valueBoolean"] is True
    domains = [item["valueCode"] for item in amc["extension"] if "valueCode" in item]
    assert domains == ["PHAR", "OPT"]


def test_rejection_gives_an_empty_bundle() -> None:
    response = verifier_pb2.Verdict(
        decision=verifier_pb2.DECISION_REJECTED, reason=verifier_pb2.REASON_REVOKED
    )
    assert validate_bundle(fhir.bundle(response, verified_at=1_790_000_000)) == {}


def fhir_verify(server: ServerProcess, presentation: bytes, **fields: Any) -> Any:
    scan = verifier_pb2.Scan(request_id="f-1", qr_text=qr_text(presentation), **fields)
    scan.reader.reader_id = "desk-1"
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        return stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10).verdict


def test_fhir_over_grpc_for_a_lunar_birth_date(server: ServerProcess, pki: DemoPKI) -> None:
    response = fhir_verify(server, pki.present("lunar"), include_fhir=True)
    assert verifier_pb2.Reason.Name(response.reason).removeprefix("REASON_") == "OK"
    by_type = validate_bundle(json.loads(response.fhir_json))
    (patient,) = by_type["Patient"]
    assert patient["meta"]["profile"] == [f"{FR_CORE}/StructureDefinition/fr-core-patient-ins"]
    assert patient["identifier"][0]["system"] == f"urn:oid:{INS_DEMO_OID}"
    assert patient["identifier"][0]["value"] == response.person.ins.matricule
    assert (patient["birthDate"], patient["_birthDate"]["extension"][0]["valueString"]) == (
        "1957",
        response.person.identity.birth_date,
    )
    (amo,) = by_type["Coverage"]
    rights = response.person.amo
    assert amo["period"] == {"start": rights.open_from, "end": rights.open_to}


def test_no_fhir_unless_asked(server: ServerProcess, pki: DemoPKI) -> None:
    assert fhir_verify(server, pki.present("alice")).fhir_json == ""
    corsica = fhir_verify(server, pki.present("corsica"), include_fhir=True)
    (patient,) = validate_bundle(json.loads(corsica.fhir_json))["Patient"]
    assert patient["birthDate"] == corsica.person.identity.birth_date  # a calendar date
    assert "_birthDate" not in patient


def test_fhir_over_grpc_has_a_coverage_per_valid_amc(server: ServerProcess, pki: DemoPKI) -> None:
    valid = pki.amc_attestation("family", ranks=[1], contract="C-7", domains=["PHAR", "DENT"])
    for_the_holder = pki.amc_attestation("family", ranks=[0])
    tap = pki.present("family", ben=1, amc=[valid, for_the_holder])
    response = fhir_verify(server, tap, include_fhir=True)
    assert [
        verifier_pb2.Reason.Name(amc.reason).removeprefix("REASON_") for amc in response.amc
    ] == [
        "OK",
        "NOT_APPLICABLE",
    ]
    by_type = validate_bundle(json.loads(response.fhir_json))
    (patient,) = by_type["Patient"]
    assert patient["identifier"][0]["value"] == response.person.ins.matricule  # the child
    amo, amc = by_type["Coverage"]
    assert amo["type"]["text"] == "AMO" and amc["type"]["text"] == "AMC"
    assert amc["identifier"] == [{"system": fhir.AMC_CONTRACT_SYSTEM, "value": "C-7"}]
    assert [e["valueCode"] for e in amc["extension"] if "valueCode" in e] == ["PHAR", "DENT"]
