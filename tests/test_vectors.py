"""Public conformance vectors run through the native core (apcv_verify._native).

Families (see ../shared/vectors/README.md):
  * Wycheproof ECDSA P-256/SHA-256 (IEEE P1363 r||s) and Ed25519 -> verify_signature
  * COSE WG Examples: sign1-tests/, ecdsa-sig-01, eddsa-sig-01, CWT A.3 -> verify_sign1
  * Token Status List draft examples (1/2/4/8 bits, signed CWTs) -> decode_status_list, verify_sign1

The vectors are third-party data kept outside the repository; the module skips, with a
reason, when they are absent (e.g. a fresh clone).
"""

from __future__ import annotations

import base64
import json
import os
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import cbor2
import pytest
from apcv_verify._native import (
    InvalidSignature,
    MalformedError,
    decode_status_list,
    verify_sign1,
    verify_signature,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("APCV_VECTORS_DIR") or REPO.parent / "shared" / "vectors")
if not VECTORS.is_dir():
    pytest.skip(
        f"public conformance vectors not found at {VECTORS}; set APCV_VECTORS_DIR",
        allow_module_level=True,
    )

ES256, EDDSA = -7, -8
ALGS = {"ES256": ES256, "EdDSA": EDDSA}


# --------------------------------------------------------------------------- helpers


def load_json(rel: str) -> Any:
    return json.loads((VECTORS / rel).read_text())


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ec2_key(x: bytes, y: bytes, alg: int | None = None) -> bytes:
    """COSE_Key EC2 P-256 {1: 2, -1: 1, -2: x, -3: y} (+ 3: alg)."""
    assert len(x) == 32 and len(y) == 32
    key: dict[int, Any] = {1: 2, -1: 1, -2: x, -3: y}
    if alg is not None:
        key[3] = alg
    return cbor2.dumps(key)


def okp_key(x: bytes, alg: int | None = None) -> bytes:
    """COSE_Key OKP Ed25519 {1: 1, -1: 6, -2: x} (+ 3: alg)."""
    assert len(x) == 32
    key: dict[int, Any] = {1: 1, -1: 6, -2: x}
    if alg is not None:
        key[3] = alg
    return cbor2.dumps(key)


def jwk_param(jwk: dict[str, str], name: str) -> bytes:
    """The COSE WG files give a coordinate either as base64url `x` or as hex `x_hex`."""
    return b64url(jwk[name]) if name in jwk else bytes.fromhex(jwk[f"{name}_hex"])


def jwk_to_cose_key(jwk: dict[str, str]) -> bytes:
    alg = ALGS[jwk["alg"]] if "alg" in jwk else None
    if jwk["kty"] == "EC":
        assert jwk["crv"] == "P-256"
        return ec2_key(jwk_param(jwk, "x"), jwk_param(jwk, "y"), alg)
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
    return okp_key(jwk_param(jwk, "x"), alg)


def markdown_hex(rel: str) -> bytes:
    """The draft's example files: hex split over lines, sometimes after other text."""
    lines = (VECTORS / rel).read_text().splitlines()
    return bytes.fromhex(
        "".join(ln.strip() for ln in lines if re.fullmatch(r"[0-9a-fA-F]+", ln.strip()))
    )


# --------------------------------------------------------------------------- Wycheproof

WYCHEPROOF = {
    # file: (alg, expected total, valid, invalid) -- counts from vectors/README.md
    "ecdsa_secp256r1_sha256_p1363_test.json": (ES256, 262, 173, 89),
    "ed25519_test.json": (EDDSA, 151, 88, 63),
}


def wycheproof_key(group: dict[str, Any]) -> bytes:
    pk = group["publicKey"]
    if pk["type"] == "EcPublicKey":
        assert pk["curve"] == "secp256r1" and group["sha"] == "SHA-256"
        point = bytes.fromhex(pk["uncompressed"])
        assert len(point) == 65 and point[0] == 4
        return ec2_key(point[1:33], point[33:])
    assert pk["type"] == "EDDSAPublicKey" and pk["curve"] == "edwards25519"
    return okp_key(bytes.fromhex(pk["pk"]))


def wycheproof_params(filename: str) -> list[Any]:
    doc = load_json(f"wycheproof/{filename}")
    return [
        pytest.param(
            wycheproof_key(group),
            bytes.fromhex(t["msg"]),
            bytes.fromhex(t["sig"]),
            t["result"],
            id=f"tc{t['tcId']}",
        )
        for group in doc["testGroups"]
        for t in group["tests"]
    ]


P256_CASES = wycheproof_params("ecdsa_secp256r1_sha256_p1363_test.json")
ED25519_CASES = wycheproof_params("ed25519_test.json")


@pytest.mark.parametrize("filename", sorted(WYCHEPROOF))
def test_wycheproof_counts_match_readme(filename: str) -> None:
    # No "acceptable" results exist in these two files, so no policy choice is needed for them:
    # every case is either "valid" (must return True) or "invalid" (must return False).
    _, total, valid, invalid = WYCHEPROOF[filename]
    doc = load_json(f"wycheproof/{filename}")
    results = Counter(t["result"] for g in doc["testGroups"] for t in g["tests"])
    assert doc["numberOfTests"] == total
    assert results == {"valid": valid, "invalid": invalid}


@pytest.mark.parametrize("filename", sorted(WYCHEPROOF))
def test_wycheproof_cose_keys_are_the_published_keys(filename: str) -> None:
    """Our COSE_Key construction reproduces each group's DER key, and every key is a valid point.

    So no Wycheproof case expects CoseKeyError: a CoseKeyError in the cases below is a core bug.
    """
    for group in load_json(f"wycheproof/{filename}")["testGroups"]:
        der_key = serialization.load_der_public_key(bytes.fromhex(group["publicKeyDer"]))
        cose = cbor2.loads(wycheproof_key(group))
        if isinstance(der_key, ec.EllipticCurvePublicKey):
            point = b"\x04" + cose[-2] + cose[-3]
            rebuilt = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            assert rebuilt.public_numbers() == der_key.public_numbers()
        else:
            assert isinstance(der_key, ed25519.Ed25519PublicKey)
            assert der_key.public_bytes_raw() == cose[-2]


@pytest.mark.parametrize(("cose_key", "msg", "sig", "result"), P256_CASES)
def test_wycheproof_es256(cose_key: bytes, msg: bytes, sig: bytes, result: str) -> None:
    assert verify_signature(ES256, cose_key, msg, sig) is (result == "valid")


@pytest.mark.parametrize(("cose_key", "msg", "sig", "result"), ED25519_CASES)
def test_wycheproof_ed25519(cose_key: bytes, msg: bytes, sig: bytes, result: str) -> None:
    assert verify_signature(EDDSA, cose_key, msg, sig) is (result == "valid")


def test_wycheproof_case_lists_are_complete() -> None:
    assert len(P256_CASES) == WYCHEPROOF["ecdsa_secp256r1_sha256_p1363_test.json"][1]
    assert len(ED25519_CASES) == WYCHEPROOF["ed25519_test.json"][1]


# --------------------------------------------------------------------------- COSE WG Examples

PASS = "pass"
# Expected outcome of verify_sign1 for every COSE WG file, and why.
COSE_WG: dict[str, str | type[Exception]] = {
    "sign1-tests/sign-pass-02.json": PASS,  # external AAD 11aa22bb...
    "sign1-tests/sign-pass-03.json": PASS,  # untagged COSE_Sign1 (tag is optional)
    "ecdsa-examples/ecdsa-sig-01.json": PASS,  # ES256, protected {1: -7, 3: 0}
    "eddsa-examples/eddsa-sig-01.json": PASS,  # EdDSA, protected {1: -8, 3: 0}
    "CWT/A_3.json": PASS,  # RFC 8392 A.3 signed CWT, ES256, empty unprotected map
    "sign1-tests/sign-fail-01.json": MalformedError,  # tag 998 instead of 18 (signature is valid)
    "sign1-tests/sign-fail-02.json": InvalidSignature,  # payload changed ('.' -> '/')
    "sign1-tests/sign-fail-03.json": MalformedError,  # protected alg -999: not an algorithm we know
    "sign1-tests/sign-fail-04.json": MalformedError,  # protected alg "unknown": text, wrong type
    "sign1-tests/sign-fail-06.json": InvalidSignature,  # protected ctyp added after signing
    "sign1-tests/sign-fail-07.json": InvalidSignature,  # protected ctyp removed after signing
    # sign-pass-01: alg only in the unprotected bucket, protected = h'A0'. The profile contract says
    # "alg in unprotected only -> MALFORMED", so the COSE WG "pass" label does not apply here; see
    # test_cose_wg_sign_pass_01 for what the vector itself shows.
    "sign1-tests/sign-pass-01.json": MalformedError,
}


def cose_wg_case(rel: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(COSE_Sign1 bytes, COSE_Key, external_aad, expected payload) of one COSE WG example."""
    doc = load_json(f"cose-wg/{rel}")
    sign0 = doc["input"]["sign0"]
    inp = doc["input"]
    payload = (
        inp["plaintext"].encode() if "plaintext" in inp else bytes.fromhex(inp["plaintext_hex"])
    )
    return (
        bytes.fromhex(doc["output"]["cbor"]),
        jwk_to_cose_key(sign0["key"]),
        bytes.fromhex(sign0.get("external", "")),
        payload,
    )


def test_cose_wg_table_covers_every_file() -> None:
    on_disk = {
        p.relative_to(VECTORS / "cose-wg").as_posix() for p in (VECTORS / "cose-wg").rglob("*.json")
    }
    assert on_disk == set(COSE_WG)
    sign1 = [load_json(f"cose-wg/{rel}") for rel in COSE_WG if rel.startswith("sign1-tests/")]
    assert Counter(bool(doc.get("fail")) for doc in sign1) == {True: 6, False: 3}  # README


@pytest.mark.parametrize("rel", sorted(r for r, exp in COSE_WG.items() if exp == PASS))
def test_cose_wg_pass(rel: str) -> None:
    message, key, aad, payload = cose_wg_case(rel)
    assert verify_sign1(message, key, aad) == payload
    if aad:  # the external AAD is really bound: without it the signature must not verify
        with pytest.raises(InvalidSignature):
            verify_sign1(message, key)


@pytest.mark.parametrize("rel", sorted(r for r, exp in COSE_WG.items() if exp != PASS))
def test_cose_wg_fail(rel: str) -> None:
    message, key, aad, _ = cose_wg_case(rel)
    error = COSE_WG[rel]
    assert not isinstance(error, str)  # not PASS: the exception it must raise
    with pytest.raises(error):
        verify_sign1(message, key, aad)


def test_cose_wg_sign_pass_01() -> None:
    """sign-pass-01 ("Redo protected") cannot be a pass for a strict profile verifier.

    1. alg (-7) is only in the unprotected bucket: the contract requires MalformedError
       (covered by test_cose_wg_fail).
    2. Its signature was made over body_protected = h'' (the vector's own ToBeSign_hex has 0x40),
       not over the received h'A0'. Signing "over the bytes as received" (RFC 9052 §4.4, coset)
       therefore cannot verify it -- the vector is disputed upstream (cose-wg/Examples#107).
    Checked here with the raw primitive so the data fact stays visible.
    """
    doc = load_json("cose-wg/sign1-tests/sign-pass-01.json")
    message, key, _, payload = cose_wg_case("sign1-tests/sign-pass-01.json")
    protected, unprotected, body, signature = cbor2.loads(message).value
    assert (protected, dict(unprotected)) == (b"\xa0", {1: ES256, 4: b"11"})
    as_received = cbor2.dumps(["Signature1", protected, b"", body])
    as_vector = bytes.fromhex(doc["intermediates"]["ToBeSign_hex"])
    assert as_vector == cbor2.dumps(["Signature1", b"", b"", payload])
    assert verify_signature(ES256, key, as_vector, signature) is True
    assert verify_signature(ES256, key, as_received, signature) is False


# --------------------------------------------------------------------------- Status lists

# Expected statuses: draft-ietf-oauth-status-list, "Test vectors for Status List encoding" (every
# index not listed is 0) and the two short examples of §4 (byte arrays b9a3 and c944f9).
STATUS_8BIT_INDEX_OF_VALUE = [  # status[STATUS_8BIT_INDEX_OF_VALUE[v]] == v, v = 0..255
    233478, 52451, 576778, 513575, 468106, 292632, 214947, 182323, 884834, 66653, 62489,
    196493, 458517, 487925, 55649, 416992, 879796, 462297, 942059, 583408, 13628, 334829,
    886286, 713557, 582738, 326064, 451545, 705889, 214350, 194502, 796765, 202828, 752834,
    721327, 554740, 91122, 963483, 261779, 793844, 165255, 614839, 758403, 403258, 145867,
    96100, 477937, 606890, 167335, 488197, 211815, 797182, 582952, 950870, 765108, 341110,
    776325, 745056, 439368, 559893, 149741, 358903, 513405, 342679, 969429, 795775, 566121,
    460566, 680070, 117310, 480348, 67319, 661552, 841303, 561493, 138807, 442463, 659927,
    445910, 1046963, 829700, 962282, 299623, 555493, 292826, 517215, 551009, 898490, 837603,
    759161, 459948, 290102, 1034977, 190650, 98810, 229950, 320531, 335506, 885333, 133227,
    806915, 800313, 981571, 527253, 24077, 240232, 559572, 713399, 233941, 615514, 911768,
    331680, 951527, 6805, 552366, 374660, 223159, 625884, 417146, 320527, 784154, 338792,
    1199, 679804, 1024680, 40845, 234603, 761225, 644903, 502167, 121477, 505144, 165165,
    179628, 1019195, 145149, 263738, 269256, 996739, 346296, 555864, 887384, 444173, 421844,
    653716, 836747, 783119, 918762, 946835, 253764, 519895, 471224, 134272, 709016, 44112,
    482585, 461829, 15080, 148883, 123467, 480125, 141348, 65877, 692958, 148598, 499131,
    584009, 1017987, 449287, 277478, 991262, 509602, 991896, 853666, 399318, 197815, 203278,
    903979, 743015, 888308, 862143, 979421, 113605, 206397, 127113, 844358, 711569, 229153,
    521470, 401793, 398896, 940810, 293983, 884749, 384802, 584151, 970201, 523882, 158093,
    929312, 205329, 106091, 30949, 195586, 495723, 348779, 852312, 1018463, 1009481, 448260,
    841042, 122967, 345269, 794764, 4520, 818773, 556171, 954221, 598210, 887110, 1020623,
    324632, 398244, 622241, 456551, 122648, 127837, 657676, 119884, 105156, 999897, 330160,
    119285, 168005, 389703, 143699, 142524, 493258, 846778, 251420, 516351, 83344, 171931,
    879178, 663475, 546865, 428362, 658891, 500560, 557034, 830023, 274471, 629139, 958869,
    663071, 152133, 19535,
]  # fmt: skip
ONE_MEG = 2**20
STATUS_LISTS = {
    # file: (bits, number of entries, {index: status} for every non-zero entry)
    "status_list_encoding_cbor.md": (
        1, 16, {0: 1, 3: 1, 4: 1, 5: 1, 7: 1, 8: 1, 9: 1, 13: 1, 15: 1},
    ),
    "status_list_encoding2_cbor.md": (
        2, 12, {0: 1, 1: 2, 3: 3, 5: 1, 7: 1, 8: 1, 9: 2, 10: 3, 11: 3},
    ),
    "status_list_encoding1_long_cbor.md": (
        1, ONE_MEG,
        dict.fromkeys([0, 1993, 25460, 159495, 495669, 554353, 645645, 723232, 854545,
                       934534, 1000345], 1),
    ),
    "status_list_encoding2_long_cbor.md": (
        2, ONE_MEG,
        {0: 1, 1993: 2, 25460: 1, 159495: 3, 495669: 1, 554353: 1, 645645: 2, 723232: 1,
         854545: 1, 934534: 2, 1000345: 3},
    ),
    "status_list_encoding4_cbor.md": (
        4, ONE_MEG,
        {0: 1, 1993: 2, 35460: 3, 459495: 4, 595669: 5, 754353: 6, 845645: 7, 923232: 8,
         924445: 9, 934534: 10, 1004534: 11, 1000345: 12, 1030203: 13, 1030204: 14, 1030205: 15},
    ),
    "status_list_encoding8_cbor.md": (
        8, ONE_MEG, {i: v for v, i in enumerate(STATUS_8BIT_INDEX_OF_VALUE) if v},
    ),
}  # fmt: skip


def reference_statuses(status_list_map: bytes) -> list[int]:
    """Independent decoder (draft §4.1, LSB first), used to cross-check the expectations."""
    sl = cbor2.loads(status_list_map)
    raw, bits = zlib.decompress(sl["lst"]), sl["bits"]
    mask = (1 << bits) - 1
    return [(raw[i * bits // 8] >> (i * bits % 8)) & mask for i in range(len(raw) * 8 // bits)]


@pytest.mark.parametrize("name", sorted(STATUS_LISTS))
def test_status_list_expectations_match_the_vector_data(name: str) -> None:
    bits, count, nonzero = STATUS_LISTS[name]
    statuses = reference_statuses(markdown_hex(f"status-list/{name}"))
    assert len(statuses) == count
    assert {i: s for i, s in enumerate(statuses) if s} == nonzero
    byte_array = re.search(r"byte_array = \[(.*)\]", (VECTORS / "status-list" / name).read_text())
    if byte_array:  # the short examples also print the uncompressed bytes
        raw = bytes(int(b, 16) for b in byte_array.group(1).split(","))
        assert zlib.decompress(cbor2.loads(markdown_hex(f"status-list/{name}"))["lst"]) == raw


@pytest.mark.parametrize("name", sorted(STATUS_LISTS))
def test_status_list_decoding(name: str) -> None:
    bits, count, nonzero = STATUS_LISTS[name]
    decoded = decode_status_list(markdown_hex(f"status-list/{name}"))
    assert decoded.bits == bits
    assert len(decoded) == count
    for index, status in nonzero.items():
        assert decoded.status(index) == status, f"status[{index}]"
    got = [decoded.status(i) for i in range(count)]  # every other entry is 0
    assert got == [nonzero.get(i, 0) for i in range(count)]
    with pytest.raises(IndexError):
        decoded.status(count)


def example_key() -> bytes:
    return jwk_to_cose_key(load_json("status-list/example-key.json"))  # ES256 P-256, kid "12"


def test_status_list_cwt_signature_and_content() -> None:
    """Protected {1: -7, 16: "application/statuslist+cwt"}, unprotected {4: h'3132'} (kid "12")."""
    message = markdown_hex("status-list/status_list_cwt.md")
    claims = cbor2.loads(verify_sign1(message, example_key()))
    assert claims[2] == "https://example.com/statuslists/1"
    assert (claims[6], claims[4], claims[65534]) == (1686920170, 2291720170, 43200)
    status_map = cbor2.dumps(claims[65533])  # same bytes as the 1-bit short example
    assert status_map == markdown_hex("status-list/status_list_encoding_cbor.md")
    decoded = decode_status_list(status_map)
    assert [decoded.status(i) for i in range(len(decoded))] == [
        1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1,
    ]  # fmt: skip


def test_status_list_cwt_tampered_signature() -> None:
    message = bytearray(markdown_hex("status-list/status_list_cwt.md"))
    message[-1] ^= 0x01  # last byte of the signature
    with pytest.raises(InvalidSignature):
        verify_sign1(bytes(message), example_key())


def test_referenced_token_cwt_points_into_the_status_list() -> None:
    """The referenced token (protected {1: -7}) points at index 0 of the list: INVALID (1)."""
    token = cbor2.loads(
        verify_sign1(markdown_hex("status-list/referenced_token_cwt.md"), example_key())
    )
    ref = token[65535]["status_list"]
    assert ref == {"idx": 0, "uri": "https://example.com/statuslists/1"}
    status_list = cbor2.loads(
        verify_sign1(markdown_hex("status-list/status_list_cwt.md"), example_key())
    )
    assert status_list[2] == ref["uri"]
    assert decode_status_list(cbor2.dumps(status_list[65533])).status(ref["idx"]) == 1
