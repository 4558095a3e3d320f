"""Issuer toolkit (apcv_verify.issuer, cli.issue): encoding, keys, objects, DemoPKI, CLI.

Pure Python: none of this needs the native verifier, except the delegation and AMC round trips at
the end, which show that what the toolkit mints is what the verifier accepts. Interoperability is
checked against pycose, an independent COSE implementation, in both directions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import base45  # type: ignore[import-untyped]
import cbor2
import pytest
from apcv_verify.cli import issue as cli_issue
from apcv_verify.issuer import (
    DEMO_AMC_NUMBER,
    DEMO_SAMPLE_NAMES,
    DEMO_STATUS_URI,
    INS_DEMO_OID,
    INS_NIR_OID,
    STATUS_LIST_TYP,
    AmoRights,
    Beneficiary,
    DemoPKI,
    Identity,
    Person,
    SigningKey,
    StatusListBuilder,
    TrustEntry,
    VerifyingKey,
    cose_key_from_public_pem,
    deterministic_cbor,
    issue_credential,
    make_amc_attestation,
    make_delegation,
    make_presentation,
    make_status_list,
    make_trust_list,
    matricule,
    nir_key,
    nir_key_is_valid,
    parse_sign1,
    presentation_from_qr_text,
    qr_text,
    sign1,
    tamper_signature,
    thumbprint,
    verify_sign1,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P256, Ed25519
from pycose.messages import Sign1Message

NOW = 1_780_000_000  # fixed clock (2026-05-28) so the tests do not depend on the wall clock


# --- helpers --------------------------------------------------------------------------------------


def sample_person(oid: str = INS_DEMO_OID) -> Person:
    return Person(
        ins=matricule("2850675115042"),
        ins_oid=oid,
        identity=Identity("MARTIN", "Alice Jeanne", "F", "1985-06-14", "75115"),
        amo=AmoRights("01", "751", "0001", "2026-01-01", "2026-12-31"),
    )


def sample_credential(issuer_key: SigningKey, device_key: SigningKey, **overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "iss": "https://amo.apcv.example",
        "sub": "cred-1",
        "device_key": device_key.public_key,
        "holder": sample_person(),
        "status_uri": DEMO_STATUS_URI,
        "status_index": 7,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 1000,
    }
    arguments.update(overrides)
    return issue_credential(issuer_key, **arguments)


def pycose_key(key: SigningKey) -> EC2Key | OKPKey:
    """The public half of ``key`` as a pycose key, built from raw coordinates (not our CBOR)."""
    cose_key = key.cose_key()
    if key.alg == -7:
        return EC2Key(crv=P256, x=cose_key[-2], y=cose_key[-3])
    return OKPKey(crv=Ed25519, x=cose_key[-2])


def pycose_decode(encoded: bytes) -> Sign1Message:
    """``Sign1Message.decode`` for a tagged COSE_Sign1, working around pycose issue #141.

    cbor2 6 decodes fixed-size arrays inside tags as tuples (and maps as ``frozendict``), which
    pycose 1.1's ``isinstance(..., list)`` check refuses (TimothyClaeys/pycose#141). Hand it the
    same four items as list and dict; pycose still does all the COSE work itself.
    """
    try:
        return Sign1Message.decode(encoded)
    except TypeError:
        item = cbor2.loads(encoded)
        assert isinstance(item, cbor2.CBORTag) and item.tag == 18
        protected, unprotected, payload, signature = item.value
        return Sign1Message.from_cose_obj(
            [protected, dict(unprotected), payload, signature], allow_unknown_attributes=True
        )


@pytest.fixture(scope="module")
def demo_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPKI:
    """A demo PKI that tests only read (mutating tests make their own)."""
    return DemoPKI.create(tmp_path_factory.mktemp("pki"), now=NOW)


# --- deterministic CBOR (RFC 8949 §4.2.1) ---------------------------------------------------------


def test_map_keys_sorted_bytewise_not_length_first() -> None:
    # "a" encodes as 61 61 (2 bytes), 1000 as 19 03 e8 (3 bytes): length-first ordering (cbor2's
    # canonical=True, RFC 7049) puts "a" first; RFC 8949 bytewise ordering puts 0x19 < 0x61 first.
    assert deterministic_cbor({"a": 0, 1000: 0}) == bytes.fromhex("a21903e800616100")
    assert cbor2.dumps({"a": 0, 1000: 0}, canonical=True) != deterministic_cbor({"a": 0, 1000: 0})


def test_nested_maps_are_sorted_and_profile_claim_keys_order() -> None:
    encoded = deterministic_cbor({"z": {-3: 0, -1: 0, 1: 0, -2: 0}, 65535: 0, 1: 0, "apcv": 0})
    # Top level: 1 (01) < 65535 (19 ff ff) < "z" (61 7a) < "apcv" (64 ...); inner: 1, -1, -2, -3.
    assert list(cbor2.loads(encoded)) == [1, 65535, "z", "apcv"]
    assert bytes.fromhex("a40100200021002200") in encoded


def test_deterministic_cbor_refuses_floats() -> None:
    with pytest.raises(TypeError, match="floats"):
        deterministic_cbor({"x": 1.5})


# --- NIR / NIA keys (profile §5.2, RG_BS603) ------------------------------------------------------


@pytest.mark.parametrize(
    ("number13", "key"),
    [
        ("2690549588157", "80"),  # INSEE's published example 2 69 05 49 588 157 80
        ("1850775123456", "08"),  # key < 10 is zero-padded
        ("172032A004057", "48"),  # Corse-du-Sud: 2A counts as 19 → 1720319004057
        ("180022B123456", "63"),  # Haute-Corse: 2B counts as 18 → 1800218123456
    ],
)
def test_nir_key(number13: str, key: str) -> None:
    assert nir_key(number13) == key
    assert matricule(number13) == number13 + key
    assert nir_key_is_valid(number13 + key)


def test_wrong_or_malformed_nir_keys() -> None:
    assert not nir_key_is_valid("269054958815781")  # wrong key
    assert not nir_key_is_valid("2690549588157")  # no key
    with pytest.raises(ValueError, match="13 characters"):
        nir_key("26905495881")
    with pytest.raises(ValueError, match="2A/2B"):
        nir_key("2A90549588157")  # 2A outside the département position


# --- keys, kid, signatures ------------------------------------------------------------------------


def test_thumbprint_rfc9679_example() -> None:
    # RFC 9679 §6: the kid (label 2) is not a required parameter and is left out of the hash.
    key = {
        1: 2,
        -1: 1,
        -2: bytes.fromhex("65eda5a12577c2bae829437fe338701a10aaa375e1bb5b5de108de439c08551d"),
        -3: bytes.fromhex("1e52ed75701163f7f9e40ddf9f341b3dc9ba860af7e0ca7ca7e9eecd0084d19c"),
        2: b"meriadoc.brandybuck@buckland.example",
    }
    expected = "496bd8afadf307e5b08c64b0421bf9dc01528a344a43bda88fadd1669da253ec"
    assert thumbprint(key).hex() == expected
    assert thumbprint(cbor2.dumps(key)).hex() == expected


@pytest.mark.parametrize("alg", [-7, -8])
def test_kid_is_thumbprint_prefix_and_alg_does_not_change_it(alg: int) -> None:
    key = SigningKey.generate(alg)
    required = {k: v for k, v in key.cose_key(include_alg=False).items()}
    by_hand = hashlib.sha256(cbor2.dumps(required)).digest()  # already in 1, -1, -2, -3 order
    assert key.kid == by_hand[:8]
    assert thumbprint(key.cose_key(include_alg=True)) == by_hand
    assert key.cose_key()[3] == alg


def test_cose_key_layouts() -> None:
    ec2 = SigningKey.generate(-7).cose_key_bytes()
    okp = SigningKey.generate(-8).cose_key_bytes()
    # {1: 2, 3: -7, -1: 1, -2: x, -3: y} in bytewise order: 01 03 20 21 22.
    assert ec2.startswith(bytes.fromhex("a5010203262001215820"))
    assert okp.startswith(bytes.fromhex("a4010103272006215820"))


def test_pem_round_trips() -> None:
    for alg in (-7, -8):
        key = SigningKey.generate(alg)
        again = SigningKey.from_pem(key.to_pem())
        assert b"BEGIN PRIVATE KEY" in key.to_pem()  # PKCS#8
        assert again.cose_key() == key.cose_key()
        assert cose_key_from_public_pem(key.public_pem()) == key.cose_key_bytes()
        assert VerifyingKey.from_cose_key(key.cose_key_bytes()).kid == key.kid


def test_es256_signature_is_raw_r_s() -> None:
    key = SigningKey.generate(-7)
    signature = key.sign(b"message")
    assert len(signature) == 64
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public = key.private_key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(encode_dss_signature(r, s), b"message", ec.ECDSA(hashes.SHA256()))


def test_ed25519_signature_is_64_bytes() -> None:
    key = SigningKey.generate(-8)
    signature = key.sign(b"message")
    assert len(signature) == 64
    assert key.public_key.verify(signature, b"message")
    assert not key.public_key.verify(signature, b"other message")


# --- COSE_Sign1 -----------------------------------------------------------------------------------


def test_sign1_is_tagged_with_alg_and_kid_protected() -> None:
    key = SigningKey.generate(-7)
    message = sign1(key, {1: "x"})
    assert message[0] == 0xD2  # tag 18
    parsed = parse_sign1(message)
    assert parsed.protected_bytes == deterministic_cbor({1: -7, 4: key.kid})
    assert parsed.unprotected == {}
    assert verify_sign1(message, key.public_key) == deterministic_cbor({1: "x"})


def test_verify_sign1_rejects_tampering_and_alg_confusion() -> None:
    key = SigningKey.generate(-7)
    message = sign1(key, b"payload")
    with pytest.raises(ValueError, match="bad signature"):
        verify_sign1(tamper_signature(message), key)
    with pytest.raises(ValueError, match="alg"):
        verify_sign1(message, SigningKey.generate(-8))


# --- credential and presentation (profile §2.4, §2.5) ---------------------------------------------


def test_credential_claims() -> None:
    issuer, device = SigningKey.generate(-7), SigningKey.generate(-7)
    child = Beneficiary(1, sample_person())
    credential = sample_credential(issuer, device, beneficiaries=[child])
    parsed = parse_sign1(credential)
    assert parsed.protected == {1: -7, 4: issuer.kid}
    claims = parsed.claims()
    assert list(claims) == [1, 2, 4, 5, 6, 8, 65535, "apcv"]  # bytewise key order
    assert claims[8] == {1: device.cose_key(include_alg=False)}
    assert claims[65535] == {"status_list": {"idx": 7, "uri": DEMO_STATUS_URI}}
    apcv = claims["apcv"]
    assert apcv["v"] == 1
    assert apcv["ins"] == {"m": "285067511504214", "oid": INS_DEMO_OID}
    assert apcv["id"]["dob"] == "1985-06-14"
    assert apcv["amo"] == {
        "reg": "01",
        "caisse": "751",
        "centre": "0001",
        "from": "2026-01-01",
        "to": "2026-12-31",
    }
    assert [b["rank"] for b in apcv["ben"]] == [1]
    assert "ben" not in parse_sign1(sample_credential(issuer, device)).claims()["apcv"]


def test_presentation_claims_and_header() -> None:
    issuer, device = SigningKey.generate(-8), SigningKey.generate(-7)
    credential = sample_credential(issuer, device)
    presentation = make_presentation(
        device, credential, iat=NOW, aud="reader-1", nonce=b"\x01\x02", ben=0, use="dmp"
    )
    parsed = parse_sign1(presentation)
    assert parsed.protected_bytes == bytes.fromhex("a10126")  # {1: -7} only, no kid
    claims = parsed.claims()
    assert claims[6] == NOW and claims[4] == NOW + 120
    assert len(claims[7]) == 16
    assert claims[3] == "reader-1" and claims["nonce"] == b"\x01\x02"
    assert claims["cred"] == credential and claims["use"] == "dmp" and claims["ben"] == 0
    assert "amc" not in claims and "dlg" not in claims
    verify_sign1(presentation, device.public_key)
    other = parse_sign1(make_presentation(device, credential, iat=NOW)).claims()
    assert other[7] != claims[7]  # fresh cti each time


def test_presentation_passes_through_premade_amc_and_dlg() -> None:
    device = SigningKey.generate(-7)
    claims = parse_sign1(
        make_presentation(device, b"cred", iat=NOW, exp=NOW + 60, amc=[b"a1"], dlg=b"d")
    ).claims()
    assert claims["amc"] == [b"a1"] and claims["dlg"] == b"d" and claims[4] == NOW + 60


def test_device_key_must_be_es256() -> None:
    with pytest.raises(ValueError, match="ES256"):
        make_presentation(SigningKey.generate(-8), b"cred", iat=NOW)


def test_qr_text_round_trip() -> None:
    device = SigningKey.generate(-7)
    presentation = make_presentation(
        device, sample_credential(SigningKey.generate(-7), device), iat=NOW
    )
    text = qr_text(presentation)
    assert text.startswith("APCV1:")
    # Everything is in the QR alphanumeric set, so the code uses alphanumeric mode (RFC 9285 §4).
    assert set(text) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    assert zlib.decompress(base45.b45decode(text[6:])) == presentation
    assert presentation_from_qr_text(text) == presentation
    assert len(text) < 1600  # profile goal for a QR-sized presentation


# --- trust list and status list (profile §2.8, §2.9) ----------------------------------------------


def test_trust_list_payload() -> None:
    anchor, amo = SigningKey.generate(-7), SigningKey.generate(-8)
    entry = TrustEntry(amo.public_key, "amo", "https://amo.apcv.example", NOW - 1, NOW + 1)
    trust_list = make_trust_list(anchor, seq=3, iat=NOW, exp=NOW + 10, entries=[entry])
    assert parse_sign1(trust_list).kid == anchor.kid
    payload = cbor2.loads(verify_sign1(trust_list, anchor))
    assert payload == {
        "v": 1,
        "seq": 3,
        "iat": NOW,
        "exp": NOW + 10,
        "keys": [
            {
                "kid": amo.kid,
                "role": "amo",
                "iss": "https://amo.apcv.example",
                "key": amo.cose_key(include_alg=True),
                "nbf": NOW - 1,
                "exp": NOW + 1,
            }
        ],
    }


def test_status_packing_is_lsb_first_draft_examples() -> None:
    # Token Status List draft §4.1 examples: 1-bit list → b9 a3; 2-bit list → c9 44 f9.
    one_bit = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    assert StatusListBuilder.from_statuses(one_bit, bits=1).packed() == bytes.fromhex("b9a3")
    two_bits = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]
    assert StatusListBuilder.from_statuses(two_bits, bits=2).packed() == bytes.fromhex("c944f9")


def test_status_builder_set_get_and_limits() -> None:
    builder = StatusListBuilder(10, bits=2)
    builder.set(9, 2)
    builder.set(9, 1)  # overwrite clears the old bits
    assert builder.get(9) == 1 and builder.packed() == bytes.fromhex("000004")
    with pytest.raises(ValueError, match="does not fit"):
        builder.set(0, 4)
    with pytest.raises(IndexError):
        builder.set(10, 1)
    with pytest.raises(ValueError, match="bits"):
        StatusListBuilder(8, bits=3)


def test_signed_status_list() -> None:
    signer = SigningKey.generate(-7)
    signed = make_status_list(
        signer, uri=DEMO_STATUS_URI, statuses=[0, 1, 2], bits=2, iat=NOW, exp=NOW + 60, ttl=30
    )
    parsed = parse_sign1(signed)
    assert parsed.protected == {1: -7, 4: signer.kid, 16: STATUS_LIST_TYP}
    claims = cbor2.loads(verify_sign1(signed, signer))
    assert claims[2] == DEMO_STATUS_URI and claims[6] == NOW and claims[4] == NOW + 60
    assert claims[65534] == 30
    assert claims[65533]["bits"] == 2
    assert zlib.decompress(claims[65533]["lst"]) == bytes([0b100100])


# --- pycose interoperability ----------------------------------------------------------------------


@pytest.mark.parametrize("alg", [-7, -8])
def test_pycose_verifies_toolkit_sign1(alg: int) -> None:
    key = SigningKey.generate(alg)
    encoded = sign1(key, {1: "iss", 2: "sub"})
    message = pycose_decode(encoded)
    message.key = pycose_key(key)
    assert message.verify_signature()
    assert message.payload is not None
    assert cbor2.loads(message.payload) == {1: "iss", 2: "sub"}
    tampered = pycose_decode(tamper_signature(encoded))
    tampered.key = pycose_key(key)
    assert not tampered.verify_signature()


def test_pycose_verifies_toolkit_presentation_and_credential(demo_pki: DemoPKI) -> None:
    presentation = demo_pki.present("corsica", iat=NOW)  # Ed25519-issued credential inside
    message = pycose_decode(presentation)
    message.key = pycose_key(demo_pki.holder("corsica").device_key)
    assert message.verify_signature() and message.payload is not None
    credential = pycose_decode(cbor2.loads(message.payload)["cred"])
    credential.key = pycose_key(demo_pki.amo_issuer_ed25519)
    assert credential.verify_signature()


@pytest.mark.parametrize(("alg", "pycose_alg"), [(-7, Es256), (-8, EdDSA)])
def test_toolkit_verifies_pycose_sign1(alg: int, pycose_alg: Any) -> None:
    private: EC2Key | OKPKey
    if alg == -7:
        private = EC2Key.generate_key(crv=P256)
        public = VerifyingKey.from_cose_key({1: 2, -1: 1, -2: private.x, -3: private.y})
    else:
        private = OKPKey.generate_key(crv=Ed25519)
        public = VerifyingKey.from_cose_key({1: 1, -1: 6, -2: private.x})
    payload = cbor2.dumps({1: "pycose"})
    message = Sign1Message(
        phdr={Algorithm: pycose_alg, KID: public.kid}, payload=payload, key=private
    )
    encoded = message.encode()  # tagged
    assert verify_sign1(encoded, public) == payload
    assert parse_sign1(encoded).kid == public.kid
    with pytest.raises(ValueError, match="bad signature"):
        verify_sign1(tamper_signature(encoded, byte_index=63), public)


# --- DemoPKI --------------------------------------------------------------------------------------


def test_demo_pki_files(demo_pki: DemoPKI) -> None:
    root = demo_pki.directory
    for relative in (
        "pki.json",
        "anchor.cose_key",
        "anchor.pem",
        "trust-list.cose",
        "status/amo-1.cwt",
        "keys/anchor.pem",
        "keys/amo-es256.pem",
        "keys/amo-ed25519.pem",
        "keys/amc.pem",
        "keys/status.pem",
        "keys/rogue-amo.pem",
    ):
        assert (root / relative).is_file(), relative
    assert set(demo_pki.holders) == {"alice", "corsica", "lunar", "family", "revoked"}
    for name in demo_pki.holders:
        assert (root / "holders" / name / "device.key.pem").is_file()
        assert (root / "holders" / name / "credential.cose").is_file()
    assert b"PRIVATE" not in (root / "anchor.pem").read_bytes()
    assert (root / "anchor.cose_key").read_bytes() == demo_pki.anchor.cose_key_bytes()
    assert cose_key_from_public_pem((root / "anchor.pem").read_bytes()) == demo_pki.anchor_cose_key


def test_demo_trust_list(demo_pki: DemoPKI) -> None:
    anchor = VerifyingKey.from_cose_key(demo_pki.anchor_cose_key)
    payload = cbor2.loads(verify_sign1(demo_pki.trust_list, anchor))
    assert payload["seq"] == 1 and payload["iat"] <= NOW < payload["exp"]
    entries = {(entry["role"], entry["key"][3]) for entry in payload["keys"]}
    assert entries == {("amo", -7), ("amo", -8), ("amc", -7), ("status", -7)}
    for entry in payload["keys"]:
        assert entry["kid"] == thumbprint(entry["key"])[:8]
        assert entry["nbf"] <= NOW <= entry["exp"]
    assert demo_pki.rogue_issuer.kid not in {entry["kid"] for entry in payload["keys"]}


def test_demo_holders_identities(demo_pki: DemoPKI) -> None:
    def apcv(name: str) -> dict[str, Any]:
        holder = demo_pki.holder(name)
        issuer_key = demo_pki.keys[holder.issuer]
        return cbor2.loads(verify_sign1(holder.credential, issuer_key))["apcv"]

    people = {name: apcv(name) for name in demo_pki.holders}
    for data in people.values():
        for person in [data, *data.get("ben", [])]:
            assert person["ins"]["oid"] == INS_DEMO_OID
            assert nir_key_is_valid(person["ins"]["m"])
    assert people["lunar"]["id"]["dob"] == "1957-00-00"
    assert people["corsica"]["id"]["pob"].startswith("2A")
    assert people["corsica"]["ins"]["m"][5:7] == "2A"
    assert [child["rank"] for child in people["family"]["ben"]] == [1]
    assert demo_pki.holder("corsica").issuer == "amo-ed25519"


def status_at(packed: bytes, bits: int, index: int) -> int:
    """Token Status List draft §4.1 read-out, written out independently of StatusListBuilder."""
    return (packed[index * bits // 8] >> (index * bits % 8)) & ((1 << bits) - 1)


def test_demo_status_list_revoked_holder(demo_pki: DemoPKI) -> None:
    signed = demo_pki.status_lists[DEMO_STATUS_URI]
    claims = cbor2.loads(verify_sign1(signed, demo_pki.status_signer))
    assert claims[2] == DEMO_STATUS_URI and claims[65533]["bits"] == 2
    packed = zlib.decompress(claims[65533]["lst"])
    for name, holder in demo_pki.holders.items():
        assert holder.status_uri == DEMO_STATUS_URI
        assert status_at(packed, 2, holder.status_index) == (1 if name == "revoked" else 0)


def test_demo_pki_load_matches_create(demo_pki: DemoPKI) -> None:
    loaded = DemoPKI.load(demo_pki.directory)
    assert loaded.anchor.kid == demo_pki.anchor.kid
    assert loaded.rogue_issuer.kid == demo_pki.rogue_issuer.kid
    assert loaded.holder("family").credential == demo_pki.holder("family").credential
    assert loaded.holder("family").beneficiary_ranks == (1,)
    presentation = loaded.present("family", ben=1, iat=NOW)
    verify_sign1(presentation, demo_pki.holder("family").device_key)
    manifest = json.loads((demo_pki.directory / "pki.json").read_text())
    assert "MARTIN" not in json.dumps(manifest)  # no identity data in the manifest


def test_demo_unknown_holder_message(demo_pki: DemoPKI) -> None:
    with pytest.raises(KeyError, match="known: alice"):
        demo_pki.present("nobody")


def test_demo_samples(demo_pki: DemoPKI) -> None:
    samples = demo_pki.samples(now=NOW)
    assert tuple(samples) == DEMO_SAMPLE_NAMES
    alice = demo_pki.holder("alice")

    def credential_of(presentation: bytes) -> dict[Any, Any]:
        return parse_sign1(parse_sign1(presentation).claims()["cred"]).claims()

    verify_sign1(samples["accepted"], alice.device_key)
    verify_sign1(parse_sign1(samples["accepted"]).claims()["cred"], demo_pki.amo_issuer)
    assert credential_of(samples["expired"])[4] < NOW
    verify_sign1(parse_sign1(samples["expired"]).claims()["cred"], demo_pki.amo_issuer)
    assert credential_of(samples["revoked"])[65535]["status_list"]["idx"] == (
        demo_pki.holder("revoked").status_index
    )
    with pytest.raises(ValueError, match="bad signature"):
        verify_sign1(samples["tampered"], alice.device_key)
    rogue_credential = parse_sign1(samples["wrong_issuer"]).claims()["cred"]
    assert parse_sign1(rogue_credential).kid == demo_pki.rogue_issuer.kid
    verify_sign1(rogue_credential, demo_pki.rogue_issuer)
    ctis = {parse_sign1(sample).claims()[7] for sample in samples.values()}
    assert len(ctis) == len(samples)


def test_demo_revoke_and_new_trust_list(tmp_path: Path) -> None:
    pki = DemoPKI.create(tmp_path / "pki", now=NOW)
    index = pki.holder("alice").status_index
    signed = pki.revoke(index)
    assert signed == (tmp_path / "pki/status/amo-1.cwt").read_bytes()
    pki.suspend(pki.holder("lunar").status_index)
    reloaded = DemoPKI.load(tmp_path / "pki")
    claims = cbor2.loads(verify_sign1(reloaded.status_lists[DEMO_STATUS_URI], pki.status_signer))
    packed = zlib.decompress(claims[65533]["lst"])
    assert status_at(packed, 2, index) == 1
    assert status_at(packed, 2, pki.holder("lunar").status_index) == 2
    pki.new_trust_list(seq=5)
    assert DemoPKI.load(tmp_path / "pki").trust_list_seq == 5
    assert cbor2.loads(verify_sign1(pki.trust_list, pki.anchor))["seq"] == 5


def test_demo_pki_with_real_oid(tmp_path: Path) -> None:
    pki = DemoPKI.create(tmp_path / "pki", now=NOW, test_identities=False)
    claims = parse_sign1(pki.holder("alice").credential).claims()
    assert claims["apcv"]["ins"]["oid"] == INS_NIR_OID


# --- CLI ------------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="apcv-verify")
    cli_issue.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_pki_presentation_status_and_trust_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki_dir = tmp_path / "pki"
    assert run_cli("issue", "pki", "--out", str(pki_dir), "--now", "2026-05-28T00:00:00Z") == 0
    pki = DemoPKI.load(pki_dir)
    assert pki.manifest["created_at"] == 1_779_926_400
    capsys.readouterr()

    png, svg = tmp_path / "qr.png", tmp_path / "qr.svg"
    code = run_cli(
        "issue", "presentation", "--pki", str(pki_dir), "--holder", "family", "--ben", "1",
        "--aud", "reader-1", "--nonce", "00ff", "--png", str(png), "--svg", str(svg),
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out.strip()
    claims = parse_sign1(presentation_from_qr_text(text)).claims()
    assert claims["ben"] == 1 and claims[3] == "reader-1" and claims["nonce"] == b"\x00\xff"
    assert png.read_bytes().startswith(b"\x89PNG") and b"<svg" in svg.read_bytes()

    alice = pki.holder("alice").status_index
    assert run_cli("issue", "status-list", "--pki", str(pki_dir), "--revoke", str(alice)) == 0
    assert DemoPKI.load(pki_dir).manifest["status_lists"][DEMO_STATUS_URI]["statuses"] == {
        str(alice): 1,
        str(pki.holder("revoked").status_index): 1,
    }
    assert run_cli("issue", "trust-list", "--pki", str(pki_dir), "--seq", "9") == 0
    assert cbor2.loads(verify_sign1(pki.trust_list, pki.anchor))["seq"] == 9


def test_cli_errors_exit_2_without_personal_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("issue", "presentation", "--pki", str(tmp_path / "missing")) == 2
    assert "no pki.json" in capsys.readouterr().err
    pki_dir = tmp_path / "pki"
    assert run_cli("issue", "pki", "--out", str(pki_dir)) == 0
    assert run_cli("issue", "pki", "--out", str(pki_dir)) == 2  # no silent overwrite
    capsys.readouterr()
    assert run_cli("issue", "presentation", "--pki", str(pki_dir), "--holder", "bob") == 2
    assert run_cli("issue", "status-list", "--pki", str(pki_dir), "--revoke", "99999") == 2
    assert run_cli("issue", "status-list", "--pki", str(pki_dir)) == 2
    err = capsys.readouterr().err
    assert "unknown holder" in err and "index 99999" in err and "nothing to do" in err
    for personal in ("MARTIN", "Alice", "285067511504214", "1985"):
        assert personal not in err


# --- delegation and AMC attestation (profile §2.6, §2.7) ------------------------------------------


def test_delegation_claims() -> None:
    issuer, delegate = SigningKey.generate(-7), SigningKey.generate(-7)
    delegation = make_delegation(
        issuer,
        iss="https://amo.example",
        sub="dlg-1",
        delegate_key=delegate,
        for_credential="cred-1",
        ben=[0, 1],
        use=["care", "dp"],
        who="Mamie",
        status_uri="https://status.example/1",
        status_index=7,
        iat=NOW,
        nbf=NOW,
        exp=NOW + 3600,
    )
    parsed = parse_sign1(delegation)
    assert parsed.kid == issuer.kid and parsed.alg == -7
    claims = parsed.claims()
    assert (claims[1], claims[2], claims[4], claims[5], claims[6]) == (
        "https://amo.example",
        "dlg-1",
        NOW + 3600,
        NOW,
        NOW,
    )
    assert claims[8] == {1: delegate.public_key.cose_key(include_alg=False)}
    assert claims[65535] == {"status_list": {"idx": 7, "uri": "https://status.example/1"}}
    assert claims["apcv"] == {
        "v": 1,
        "for": "cred-1",
        "ben": [0, 1],
        "use": ["care", "dp"],
        "who": "Mamie",
    }
    verify_sign1(delegation, issuer.public_key)
    assert parsed.payload == deterministic_cbor(claims)
    unlabelled = make_delegation(
        issuer,
        iss="i",
        sub="s",
        delegate_key=delegate.public_key,
        for_credential="c",
        ben=[0],
        use=["care"],
        status_uri="u",
        status_index=0,
        iat=NOW,
        nbf=NOW,
        exp=NOW,
    )
    assert "who" not in parse_sign1(unlabelled).claims()["apcv"]


def test_amc_attestation_claims() -> None:
    amc = SigningKey.generate(-8)
    common: dict[str, Any] = {
        "iss": "https://amc.example",
        "sub": "contract-1",
        "covered": [matricule("1841275056123")],
        "amc_number": "000123456",
        "third_party_payment": False,
        "domains": ("PHAR", "OPT"),
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 3600,
    }
    attestation = make_amc_attestation(amc, **common)
    claims = cbor2.loads(verify_sign1(attestation, amc.public_key))
    assert 65535 not in claims
    assert (claims[1], claims[2], claims[4]) == ("https://amc.example", "contract-1", NOW + 3600)
    assert claims["apcv"] == {
        "v": 1,
        "for": ["184127505612355"],
        "amc": "000123456",
        "tp": False,
        "dom": ["PHAR", "OPT"],
    }
    with_status = make_amc_attestation(amc, **common, status_uri="u", status_index=3)
    assert parse_sign1(with_status).claims()[65535] == {"status_list": {"idx": 3, "uri": "u"}}
    with pytest.raises(ValueError, match="both"):
        make_amc_attestation(amc, **common, status_uri="u")


def test_demo_delegate_and_amc_allocate_status_indexes(tmp_path: Path) -> None:
    pki = DemoPKI.create(tmp_path / "pki", now=NOW)
    holder_indexes = {h.status_index for h in pki.holders.values()}
    key, delegation = pki.delegate("family", ben=[0, 1], use=["care"], who="Papi", now=NOW)
    claims = parse_sign1(delegation).claims()
    assert claims[8] == {1: key.public_key.cose_key(include_alg=False)}
    assert claims["apcv"]["for"] == parse_sign1(pki.holder("family").credential).claims()[2]
    assert claims["apcv"]["who"] == "Papi" and claims["apcv"]["ben"] == [0, 1]
    verify_sign1(delegation, pki.amo_issuer)
    dlg_index = claims[65535]["status_list"]["idx"]
    assert dlg_index not in holder_indexes
    attestation = pki.amc_attestation("family", now=NOW)
    amc_claims = cbor2.loads(verify_sign1(attestation, pki.amc_issuer))
    assert amc_claims["apcv"]["for"] == list(pki.matricules("family").values())
    assert amc_claims["apcv"]["amc"] == DEMO_AMC_NUMBER
    amc_index = amc_claims[65535]["status_list"]["idx"]
    assert amc_index not in holder_indexes | {dlg_index}
    only_child = pki.amc_attestation("family", ranks=[1], revocable=False, now=NOW)
    child_claims = parse_sign1(only_child).claims()
    assert child_claims["apcv"]["for"] == [pki.matricules("family")[1]]
    assert 65535 not in child_claims
    # Allocations survive a reload; a new holder does not take them.
    reloaded = DemoPKI.load(tmp_path / "pki")
    new_holder = reloaded.add_holder("late", sample_person(), now=NOW)
    assert new_holder.status_index not in {dlg_index, amc_index}
    # revoke_object revokes what the object's status claim names.
    signed = pki.revoke_object(delegation)
    packed = zlib.decompress(cbor2.loads(verify_sign1(signed, pki.status_signer))[65533]["lst"])
    assert status_at(packed, 2, dlg_index) == 1
    with pytest.raises(ValueError, match="no status claim"):
        pki.revoke_object(only_child)


def test_demo_present_with_signer(tmp_path: Path) -> None:
    pki = DemoPKI.create(tmp_path / "pki", now=NOW)
    key, delegation = pki.delegate("alice", now=NOW)
    presentation = pki.present("alice", iat=NOW, dlg=delegation, signer=key)
    verify_sign1(presentation, key.public_key)
    with pytest.raises(Exception, match="signature"):
        verify_sign1(presentation, pki.holder("alice").device_key.public_key)
    assert parse_sign1(presentation).claims()["dlg"] == delegation


def test_demo_delegation_and_amc_through_the_verifier(tmp_path: Path) -> None:
    from apcv_verify import _native

    pki = DemoPKI.create(tmp_path / "pki", now=NOW)
    trust = _native.TrustList.verify(pki.trust_list, [pki.anchor_cose_key], NOW)
    policy = _native.Policy(allow_test_identities=True)

    def verifier() -> _native.Verifier:
        lists = [_native.StatusList.verify(b, trust, NOW) for b in pki.status_lists.values()]
        return _native.Verifier(trust, lists, policy, _native.MemoryReplayStore())

    key, delegation = pki.delegate("family", ben=[1], use=["care"], who="Papi", now=NOW)
    attestation = pki.amc_attestation("family", now=NOW)
    data = pki.present("family", ben=1, iat=NOW, dlg=delegation, signer=key, amc=[attestation])
    (r,) = verifier().verify_batch([_native.Scan(data, "desk")], NOW)
    assert (r.reason, r.delegation_label) == ("OK", "Papi"), r.detail
    assert r.person is not None and r.person.rank == 1
    (coverage,) = r.amc
    assert coverage.valid and coverage.amc_number == DEMO_AMC_NUMBER
    # Revoking the attestation: the presentation stays accepted, the coverage does not.
    pki.revoke_object(attestation, now=NOW)
    data = pki.present("family", ben=1, iat=NOW, dlg=delegation, signer=key, amc=[attestation])
    (r,) = verifier().verify_batch([_native.Scan(data, "desk")], NOW)
    assert r.accepted and r.amc[0].reason == "REVOKED"
    # Revoking the delegation stops it at the next status-list load.
    pki.revoke_object(delegation, now=NOW)
    data = pki.present("family", ben=1, iat=NOW, dlg=delegation, signer=key)
    (r,) = verifier().verify_batch([_native.Scan(data, "desk")], NOW)
    assert (r.reason, r.detail) == ("DELEGATION_INVALID", "delegation revoked")


def test_cli_delegated_presentation_with_amc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki_dir = tmp_path / "pki"
    assert run_cli("issue", "pki", "--out", str(pki_dir), "--now", str(NOW)) == 0
    capsys.readouterr()
    code = run_cli(
        "issue", "presentation", "--pki", str(pki_dir), "--holder", "family", "--ben", "1",
        "--use", "dp", "--who", "Papi", "--amc", "--iat", str(NOW),
    )  # fmt: skip
    assert code == 0
    claims = parse_sign1(presentation_from_qr_text(capsys.readouterr().out.strip())).claims()
    delegation = parse_sign1(claims["dlg"]).claims()
    assert delegation["apcv"]["who"] == "Papi"
    assert (delegation["apcv"]["ben"], delegation["apcv"]["use"]) == ([1], ["dp"])
    (attestation,) = claims["amc"]
    assert parse_sign1(attestation).claims()["apcv"]["amc"] == DEMO_AMC_NUMBER
    # Plain presentations carry neither.
    assert run_cli("issue", "presentation", "--pki", str(pki_dir)) == 0
    plain = parse_sign1(presentation_from_qr_text(capsys.readouterr().out.strip())).claims()
    assert "dlg" not in plain and "amc" not in plain
