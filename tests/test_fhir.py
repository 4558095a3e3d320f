"""FHIR R4 output (python/apcv_verify/fhir.py, docs/fhir.md).

Two layers of checks on every Bundle the tests produce: the fr-core rules this output follows
(checked here, since the fr-core package cannot be loaded into the validator, docs/fhir.md
"Validation"), and the official HAPI FHIR validator against base R4, run once over all of them
(tools/fhir-validator, built by ``make fhir-validator``): no error, and no warning outside
:data:`EXPECTED_WARNINGS`.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from apcv_verify import fhir
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from apcv_verify.cli.config_print import config_toml
from apcv_verify.config import DEFAULT_FHIR_CANONICAL_BASE, ConfigError, load_config
from apcv_verify.issuer import INS_DEMO_OID, DemoPKI, qr_text

from .conftest import REPO, ServerProcess, start_server, stop_server, verify

# FHIR R4 primitive formats (https://hl7.org/fhir/R4/datatypes.html).
FHIR_DATE = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"
)
FHIR_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
FR_CORE = "https://hl7.fr/ig/fhir/core"
VERSION = "2.2.0-ballot-2"
PATIENT = f"{FR_CORE}/StructureDefinition/fr-core-patient|{VERSION}"
PATIENT_INS = f"{FR_CORE}/StructureDefinition/fr-core-patient-ins|{VERSION}"
INS_TYPES = {
    "urn:oid:1.2.250.1.213.1.4.8": "INS-NIR",
    "urn:oid:1.2.250.1.213.1.4.9": "INS-NIA",
    "urn:oid:1.2.250.1.213.1.4.10": "INS-NIR-TEST",
    "urn:oid:1.2.250.1.213.1.4.11": "INS-NIR-DEMO",
}
RELIABILITY = f"{FR_CORE}/StructureDefinition/fr-core-identity-reliability"
LUNAR_DATE = f"{FR_CORE}/StructureDefinition/fr-core-lunar-date"
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
INSEE_CODE = f"{FR_CORE}/StructureDefinition/fr-core-address-insee-code"
COMMUNE = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"
COUNTRY = "https://mos.esante.gouv.fr/NOS/TRE_R20-Pays/FHIR/TRE-R20-Pays"
OWN = fhir.Canonicals()  # the default canonical base
#: The test server's ``fhir.canonical_base``, set through its environment.
SERVED = fhir.Canonicals("https://fhir.chu.test/apcv")
NOW = 1_790_000_000


def check_date(value: str) -> None:
    """A FHIR date, and when complete a real calendar date (the regex allows 02-31)."""
    assert FHIR_DATE.match(value), value
    if len(value) == 10:
        year, month, day = (int(part) for part in value.split("-"))
        assert day <= calendar.monthrange(year, month)[1], value


def extension(owner: dict[str, Any], url: str) -> dict[str, Any] | None:
    found = [item for item in owner.get("extension", []) if item["url"] == url]
    assert len(found) <= 1
    return found[0] if found else None


def check_narrative(resource: dict[str, Any]) -> None:
    text = resource["text"]  # dom-6: a resource should have a narrative
    assert text["status"] == "generated"
    assert text["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml"><p>')


def check_patient(patient: dict[str, Any]) -> None:
    """The fr-core rules (FR_CORE_VERSION) the validator cannot check without the package."""
    (profile,) = patient["meta"]["profile"]
    assert profile in (PATIENT, PATIENT_INS)
    check_narrative(patient)
    for identifier in patient.get("identifier", []):
        (coding,) = identifier["type"]["coding"]
        assert coding == {
            "system": f"{FR_CORE}/CodeSystem/fr-core-cs-v2-0203",
            "code": INS_TYPES[identifier["system"]],
        }
        assert identifier["use"] == "official"  # fr-core-vs-patient-identifier-use-ins
        assert re.fullmatch(r"[0-9]{5}(2A|2B|[0-9]{2})[0-9]{8}", identifier["value"])
    reliability = extension(patient, RELIABILITY)
    if reliability is not None:
        parts = {item["url"]: item for item in reliability["extension"]}
        assert set(parts) == {"methodCollection", "identityStatus"}  # no INSi date for AV
        assert parts["identityStatus"]["valueCoding"] == {
            "system": f"{FR_CORE}/CodeSystem/fr-core-cs-identity-status",
            "code": "QUAL",
            "display": "Identité qualifiée",
        }
        assert parts["methodCollection"]["valueCoding"] == {
            "system": f"{FR_CORE}/CodeSystem/fr-core-cs-method-collection",
            "code": "AV",
            "display": "Application carte Vitale",
        }
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
    lunar = extension(patient, LUNAR_DATE)
    if "birthDate" in patient:
        check_date(patient["birthDate"])
        assert "_birthDate" not in patient
        if lunar is not None:  # the year, and the verbatim value in fr-core-lunar-date
            assert len(patient["birthDate"]) == 4
            assert lunar["valueString"][:4] == patient["birthDate"]
            assert fhir.fhir_date(lunar["valueString"]) == (patient["birthDate"], True)
    else:
        assert lunar is None
    place = extension(patient, BIRTH_PLACE)
    if place is not None:
        (insee,) = place["valueAddress"]["extension"]
        assert insee["url"] == INSEE_CODE
        code = insee["valueCoding"]["code"]
        assert re.fullmatch(r"[0-9AB]{5}", code)
        # fr-core-vs-cog-commune-pays: communes, and countries for INSEE 99xxx.
        assert insee["valueCoding"]["system"] == (COUNTRY if code.startswith("99") else COMMUNE)
    if profile == PATIENT_INS:  # the profile's required elements
        assert reliability is not None and patient["identifier"] and patient["name"]
        assert patient["gender"] and patient["birthDate"] and place is not None


def check_coverage(coverage: dict[str, Any], patients: set[str]) -> None:
    check_narrative(coverage)
    assert coverage["status"] == "active"  # Coverage 1..1 status, beneficiary, 1..* payor
    assert coverage["beneficiary"]["reference"] in patients
    for payor in coverage["payor"]:
        # Identified by its code; the presentation carries no organisation name.
        assert set(payor) == {"identifier"}
        assert payor["identifier"]["system"].startswith("https://")
        assert payor["identifier"]["value"]
    period = coverage.get("period", {})
    for key in ("start", "end"):
        if key in period and "T" in period[key]:
            assert FHIR_INSTANT.match(period[key]), period[key]
        elif key in period:
            check_date(period[key])
            if f"_{key}" in period:
                (verbatim,) = period[f"_{key}"]["extension"]
                assert verbatim["url"].endswith("/StructureDefinition/verbatim-date")
                assert fhir.fhir_date(verbatim["valueString"]) == (period[key], True)


def check_bundle(bundle: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Check and return the resources by type."""
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert re.fullmatch(UUID, bundle["id"])
    assert FHIR_INSTANT.match(bundle["timestamp"])
    by_type: dict[str, list[dict[str, Any]]] = {}
    entries = bundle.get("entry", [])
    assert entries != []  # FHIR JSON has no empty arrays
    for entry in entries:
        resource = entry["resource"]
        assert re.fullmatch(UUID, resource["id"])
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        by_type.setdefault(resource["resourceType"], []).append(resource)
    assert len({entry["fullUrl"] for entry in entries}) == len(entries)
    patients = {e["fullUrl"] for e in entries if e["resource"]["resourceType"] == "Patient"}
    for patient in by_type.get("Patient", []):
        check_patient(patient)
    for coverage in by_type.get("Coverage", []):
        check_coverage(coverage, patients)
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


def qualified(response: verifier_pb2.Verdict) -> verifier_pb2.Verdict:
    response.identity_qualification.CopyFrom(
        verifier_pb2.IdentityQualification(
            status="QUALIFIED", status_code="QUAL", collection_method="AV"
        )
    )
    return response


NIA = verifier_pb2.Ins(matricule="184127505612355", oid="1.2.250.1.213.1.4.9")
IDENTITY = verifier_pb2.IdentityTraits(
    birth_name="BENALI", given_names="Fatima Zohra", sex="F", birth_date="1962-02-30",
    birth_place="99350",
)  # fmt: skip


# --- Bundles built from a response message --------------------------------------------------


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


def nia_bundle() -> dict[str, Any]:
    """An INS-NIA holder, lunar birth date, born abroad, with lunar AMO rights."""
    response = qualified(accepted(ins=NIA, identity=IDENTITY))
    response.person.amo.CopyFrom(
        verifier_pb2.AmoRights(
            regime="01", caisse="751", centre="0001", open_from="2025-01-01", open_to="2027-00-00"
        )
    )
    return fhir.bundle(response, verified_at=NOW)


def test_an_ins_nia_is_official_and_the_patient_is_fr_core_patient_ins() -> None:
    (patient,) = check_bundle(nia_bundle())["Patient"]
    assert patient["meta"]["profile"] == [PATIENT_INS]
    (identifier,) = patient["identifier"]
    assert identifier == {
        "use": "official",
        "type": {"coding": [{"system": f"{FR_CORE}/CodeSystem/fr-core-cs-v2-0203",
                             "code": "INS-NIA"}]},
        "system": "urn:oid:1.2.250.1.213.1.4.9",
        "value": "184127505612355",
    }  # fmt: skip


def test_a_lunar_birth_date_is_its_year_and_fr_core_lunar_date() -> None:
    (patient,) = check_bundle(nia_bundle())["Patient"]
    assert patient["birthDate"] == "1962"
    assert extension(patient, LUNAR_DATE) == {"url": LUNAR_DATE, "valueString": "1962-02-30"}
    assert patient["name"][0]["given"] == ["Fatima"]
    assert patient["gender"] == "female"


def test_a_birth_place_abroad_is_a_country_code() -> None:
    (patient,) = check_bundle(nia_bundle())["Patient"]
    place = extension(patient, BIRTH_PLACE)
    assert place is not None
    assert place["valueAddress"]["extension"][0]["valueCoding"] == {
        "system": COUNTRY,
        "code": "99350",
    }


def test_lunar_rights_dates_keep_their_verbatim_value_in_the_own_extension() -> None:
    (amo,) = check_bundle(nia_bundle())["Coverage"]
    assert amo["payor"] == [
        {"identifier": {"system": f"{DEFAULT_FHIR_CANONICAL_BASE}/NamingSystem/amo-organisation",
                        "value": "017510001"}}
    ]  # fmt: skip
    assert amo["period"] == {
        "start": "2025-01-01",
        "end": "2027",
        "_end": {"extension": [{"url": OWN.verbatim_date, "valueString": "2027-00-00"}]},
    }


def test_the_canonical_base_is_configurable() -> None:
    response = accepted(
        amo=verifier_pb2.AmoRights(
            regime="01", caisse="751", centre="0001", open_from="2025-01-01", open_to="2027-00-00"
        )
    )
    base = "https://fhir.hopital.test/apcv"
    (amo,) = check_bundle(fhir.bundle(response, verified_at=NOW, canonical_base=base))["Coverage"]
    assert amo["payor"][0]["identifier"]["system"] == f"{base}/NamingSystem/amo-organisation"
    assert amo["period"]["_end"]["extension"][0]["url"] == (
        f"{base}/StructureDefinition/verbatim-date"
    )


def test_the_canonical_base_is_a_config_key(tmp_path: Path) -> None:
    for name in ("anchor.pem", "trust-list.cose"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "apcv.toml").write_text(
        '[trust]\nanchors = ["anchor.pem"]\ntrust_list = "trust-list.cose"\n'
        '[fhir]\ncanonical_base = "https://fhir.chu.test/apcv"\n'
    )
    config = load_config(tmp_path / "apcv.toml", environ={})
    assert config.fhir.canonical_base == "https://fhir.chu.test/apcv"
    assert '[fhir]\ncanonical_base = "https://fhir.chu.test/apcv"' in config_toml(config)
    (tmp_path / "plain.toml").write_text(
        '[trust]\nanchors = ["anchor.pem"]\ntrust_list = "trust-list.cose"\n'
    )
    default = load_config(tmp_path / "plain.toml", environ={}).fhir.canonical_base
    assert default == DEFAULT_FHIR_CANONICAL_BASE
    for bad in ("apcv.test/fhir", "https://fhir.chu.test/apcv/", "https://x.test/f?v=1", ""):
        with pytest.raises(ConfigError, match=r"fhir\.canonical_base: expected an http\(s\) URL"):
            load_config(tmp_path / "apcv.toml", environ={"APCV_FHIR_CANONICAL_BASE": bad})


def test_one_coverage_per_valid_amc_attestation() -> None:
    response = accepted()
    valid = verifier_pb2.AmcCoverage(
        valid=True, reason=verifier_pb2.REASON_OK, organisation="https://amc.test",
        amc_number="12345678", contract="C-1", third_party_payment=True, domains=["PHAR", "OPT"],
    )  # fmt: skip
    valid.expires_at.FromSeconds(1_800_000_000)
    valid.valid_from.FromSeconds(1_780_000_000)
    invalid = verifier_pb2.AmcCoverage(valid=False, reason=verifier_pb2.REASON_NOT_APPLICABLE)
    response.amc.extend([valid, invalid])
    (amc,) = check_bundle(fhir.bundle(response, verified_at=NOW))["Coverage"]
    assert amc["payor"] == [{"identifier": {"system": OWN.amc_number, "value": "12345678"}}]
    assert amc["identifier"] == [{"system": OWN.amc_contract, "value": "C-1"}]
    assert amc["extension"] == [
        {"url": OWN.third_party_payment, "valueBoolean": True},
        {"url": OWN.care_domain, "valueCode": "PHAR"},
        {"url": OWN.care_domain, "valueCode": "OPT"},
    ]
    assert amc["period"] == {"start": "2026-05-28T20:26:40Z", "end": "2027-01-15T08:00:00Z"}


def test_rejection_gives_a_bundle_without_entries() -> None:
    response = verifier_pb2.Verdict(
        decision=verifier_pb2.DECISION_REJECTED, reason=verifier_pb2.REASON_REVOKED
    )
    assert "entry" not in fhir.bundle(response, verified_at=NOW)


def test_empty_names_leave_no_empty_values() -> None:
    identity = verifier_pb2.IdentityTraits()
    identity.CopyFrom(IDENTITY)
    identity.birth_name, identity.given_names = "", " "
    (patient,) = fhir.bundle(accepted(identity=identity), verified_at=NOW)["entry"]
    assert patient["resource"]["name"] == [{"use": "official"}]


def test_the_narrative_is_escaped() -> None:
    identity = verifier_pb2.IdentityTraits()
    identity.CopyFrom(IDENTITY)
    identity.birth_name = "O'NEIL <b>&"
    (patient,) = check_bundle(fhir.bundle(accepted(identity=identity), verified_at=NOW))["Patient"]
    assert "O'NEIL &lt;b&gt;&amp;" in patient["text"]["div"]


# --- Bundles over gRPC, from the demo PKI ------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPKI:
    return DemoPKI.create(tmp_path_factory.mktemp("fhir") / "pki", now=int(time.time()))


@pytest.fixture(scope="module")
def server(pki: DemoPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("fhir-server") / "server.log"
    env = {"APCV_FHIR_CANONICAL_BASE": SERVED.base}
    running = start_server(pki.directory, log, "--allow-test-identities", env=env)
    yield running
    stop_server(running)


@dataclass(frozen=True)
class Produced:
    response: Any
    bundle: dict[str, Any]


@pytest.fixture(scope="module")
def over_grpc(server: ServerProcess, pki: DemoPKI) -> dict[str, Produced]:
    """Every kind of Bundle the service produces, by name."""
    delegate, delegation = pki.delegate("family", ben=(1,), use=("care",), who="Mamie")
    child_amc = pki.amc_attestation("family", ranks=[1], contract="C-7", domains=["PHAR", "DENT"])
    taps = {
        "holder": pki.present("alice"),
        "holder-auth": pki.present("alice", use="auth"),  # INS only (default disclosure)
        "lunar-abroad": pki.present("lunar"),
        "corsica": pki.present("corsica"),
        "beneficiary-amc": pki.present(
            "family", ben=1, amc=[child_amc, pki.amc_attestation("family", ranks=[0])]
        ),
        "delegation": pki.present("family", ben=1, dlg=delegation, signer=delegate),
    }
    produced = {}
    for name, tap in taps.items():
        response = verify(server, qr_text(tap), request_id=f"f-{name}", include_fhir=True)
        assert verifier_pb2.Reason.Name(response.reason) == "REASON_OK", name
        produced[name] = Produced(response, json.loads(response.fhir_json))
    return produced


def test_no_fhir_unless_asked(server: ServerProcess, pki: DemoPKI) -> None:
    assert verify(server, qr_text(pki.present("alice"))).fhir_json == ""


def test_a_holder_over_grpc(over_grpc: dict[str, Produced]) -> None:
    produced = over_grpc["holder"]
    by_type = check_bundle(produced.bundle)
    (patient,) = by_type["Patient"]
    person = produced.response.person
    assert patient["meta"]["profile"] == [PATIENT_INS]
    assert patient["identifier"][0]["system"] == f"urn:oid:{INS_DEMO_OID}"
    assert patient["identifier"][0]["value"] == person.ins.matricule
    assert patient["birthDate"] == person.identity.birth_date  # a calendar date
    assert extension(patient, LUNAR_DATE) is None
    place = extension(patient, BIRTH_PLACE)
    assert place is not None
    assert place["valueAddress"]["extension"][0]["valueCoding"] == {
        "system": COMMUNE,
        "code": person.identity.birth_place,
    }
    (amo,) = by_type["Coverage"]
    assert amo["period"] == {"start": person.amo.open_from, "end": person.amo.open_to}
    assert amo["payor"][0]["identifier"]["value"] == (
        person.amo.regime + person.amo.caisse + person.amo.centre
    )


def test_the_auth_use_gives_the_ins_only(over_grpc: dict[str, Produced]) -> None:
    (patient,) = check_bundle(over_grpc["holder-auth"].bundle)["Patient"]
    assert patient["meta"]["profile"] == [PATIENT]
    assert extension(patient, RELIABILITY) is not None
    assert {"name", "birthDate", "gender"}.isdisjoint(patient)
    assert "Coverage" not in check_bundle(over_grpc["holder-auth"].bundle)


def test_a_lunar_birth_date_abroad_over_grpc(over_grpc: dict[str, Produced]) -> None:
    produced = over_grpc["lunar-abroad"]
    (patient,) = check_bundle(produced.bundle)["Patient"]
    identity = produced.response.person.identity
    assert identity.birth_date == "1957-00-00"
    assert patient["birthDate"] == "1957"
    assert extension(patient, LUNAR_DATE) == {"url": LUNAR_DATE, "valueString": "1957-00-00"}
    place = extension(patient, BIRTH_PLACE)
    assert place is not None
    assert place["valueAddress"]["extension"][0]["valueCoding"]["system"] == COUNTRY


def test_a_beneficiary_with_amc_attestations_over_grpc(over_grpc: dict[str, Produced]) -> None:
    produced = over_grpc["beneficiary-amc"]
    assert [verifier_pb2.Reason.Name(amc.reason) for amc in produced.response.amc] == [
        "REASON_OK",
        "REASON_NOT_APPLICABLE",
    ]
    by_type = check_bundle(produced.bundle)
    (patient,) = by_type["Patient"]
    assert patient["identifier"][0]["value"] == produced.response.person.ins.matricule  # child
    amo, amc = by_type["Coverage"]
    assert amo["type"]["text"] == "AMO" and amc["type"]["text"] == "AMC"
    assert amc["identifier"] == [{"system": SERVED.amc_contract, "value": "C-7"}]
    assert amc["payor"][0]["identifier"]["system"] == SERVED.amc_number
    assert [e["valueCode"] for e in amc["extension"] if "valueCode" in e] == ["PHAR", "DENT"]
    attestation = produced.response.amc[0]
    assert attestation.valid_from.seconds < attestation.expires_at.seconds
    assert amc["period"] == {
        "start": fhir._iso(attestation.valid_from.seconds),  # the attestation's nbf
        "end": fhir._iso(attestation.expires_at.seconds),  # and exp
    }


def test_a_delegated_presentation_over_grpc(over_grpc: dict[str, Produced]) -> None:
    produced = over_grpc["delegation"]
    assert produced.response.delegation.used
    (patient,) = check_bundle(produced.bundle)["Patient"]
    assert patient["identifier"][0]["value"] == produced.response.person.ins.matricule
    assert "Mamie" not in json.dumps(produced.bundle)  # nothing about the delegate


# --- The HAPI FHIR validator ------------------------------------------------------------------

VALIDATOR = REPO / "tools" / "fhir-validator" / "target"

#: The warnings that only the missing fr-core package causes (the FHIR package registry is not
#: reachable here, docs/fhir.md "Validation"): (message id, what the text must name, why).
EXPECTED_WARNINGS: tuple[tuple[str, str, str], ...] = (
    (
        "Validation_VAL_Profile_Unknown",
        rf"'{re.escape(FR_CORE)}/StructureDefinition/fr-core-patient(-ins)?\|{re.escape(VERSION)}'",
        "meta.profile names fr-core-patient(-ins), which is in the fr-core package",
    ),
    (
        "Terminology_PassThrough_TX_Message",
        rf"unknown and can't be validated: {re.escape(FR_CORE)}/CodeSystem/fr-core-cs-v2-0203 ",
        "the INS identifier type's code system is in the fr-core package",
    ),
    (
        "Terminology_TX_NoValid_2_CC",
        rf"\(codes = {re.escape(FR_CORE)}/CodeSystem/fr-core-cs-v2-0203#INS-[A-Z-]+\)$",
        "base R4's extensible identifier-type binding; fr-core-patient-ins's INS slices fix this"
        " type, and the validator cannot see them without the package",
    ),
)


def expected_warning(message: Message) -> bool:
    return any(
        message.message_id == message_id and re.search(pattern, message.text)
        for message_id, pattern, _ in EXPECTED_WARNINGS
    )


@dataclass(frozen=True)
class Message:
    file: str
    severity: str
    location: str
    message_id: str
    text: str


def hapi_validate(directory: Path) -> list[Message]:
    """Every message of the HAPI validator over the ``*.json`` of ``directory``, one JVM."""
    jar = VALIDATOR / "apcv-fhir-validator-1.jar"
    classpath = VALIDATOR / "classpath.txt"
    if not (jar.is_file() and classpath.is_file()):
        reason = "the HAPI FHIR validator is not built: run `make fhir-validator` (needs Maven)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    run = subprocess.run(
        ["java", "-cp", f"{jar}{os.pathsep}{classpath.read_text().strip()}",
         "fr.apcv.fhirvalidator.Validate", str(directory)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    *lines, done = run.stdout.splitlines()
    files = len(list(directory.glob("*.json")))
    assert done == f"#done {files} {len(lines)}", done  # every file was validated
    messages = [Message(*line.split("\t")) for line in lines]
    # Locations name the resource (".../*Patient/<id>*/.birthDate"): keep the path only.
    return [replace(m, location=re.sub(r"/\*.*?\*/", "", m.location)) for m in messages]


@pytest.mark.slow
def test_every_bundle_passes_the_hapi_validator(
    over_grpc: dict[str, Produced], tmp_path: Path
) -> None:
    bundles = {name: produced.bundle for name, produced in over_grpc.items()}
    bundles["nia-lunar-abroad"] = nia_bundle()
    for name, bundle in bundles.items():
        check_bundle(bundle)
        (tmp_path / f"{name}.json").write_text(json.dumps(bundle, ensure_ascii=False))
    # The proof that a finding fails this test: a Bundle the validator must reject.
    broken = nia_bundle()
    patient = broken["entry"][0]["resource"]
    patient["birthDate"] = "1962-02-30"  # not a FHIR date
    del broken["entry"][1]["resource"]["beneficiary"]  # Coverage.beneficiary is 1..1
    (tmp_path / "~broken.json").write_text(json.dumps(broken))

    messages = hapi_validate(tmp_path)
    findings = [
        m for m in messages if m.file == "~broken.json" and m.severity in ("ERROR", "FATAL")
    ]
    assert {m.location for m in findings} >= {
        "Bundle.entry[0].resource.birthDate",
        "Bundle.entry[1].resource",
    }, findings
    problems = [
        m
        for m in messages
        if m.file != "~broken.json"
        and (
            m.severity in ("ERROR", "FATAL")
            or (m.severity == "WARNING" and not expected_warning(m))
        )
    ]
    assert not problems, "\n".join(map(str, problems))
    # Each listed warning still occurs: the list does not outlive its reason.
    for message_id, pattern, _ in EXPECTED_WARNINGS:
        assert any(m.message_id == message_id and re.search(pattern, m.text) for m in messages), (
            message_id
        )
