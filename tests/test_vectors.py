"""Public conformance vectors run through the native core (apcv_verify._native).

Families (see ../shared/vectors/README.md):
  * Wycheproof ECDSA P-256/SHA-256 (IEEE P1363 r||s) and Ed25519 -> verify_signature
  * COSE WG Examples: sign1-tests/, ecdsa-sig-01, eddsa-sig-01, CWT A.3 -> verify_sign1
  * Token Status List draft examples (1/2/4/8 bits, signed CWTs) -> decode_status_list, verify_sign1

Every file of the folders is run, not only those the README lists: each case's expected
outcome comes from the file itself (a Wycheproof ``result``, a COSE WG ``fail`` flag, a
status list's own bytes read by an independent decoder), with the profile's stricter rules
written out below for the files where they differ, and the exact contents the README
describes checked where those files are present. A file of a scheme the profile does not
use (another curve, hash or signature encoding; a COSE structure other than COSE_Sign1) is
reported as skipped with the reason.

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
    CoseKeyError,
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


def files(folder: str, pattern: str) -> list[str]:
    """The files of a vector folder matching ``pattern``, relative to it, sorted."""
    root = VECTORS / folder
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(pattern))


def need(rel: str) -> None:
    """Skips the calling test when the vector file it is about is not in this vector set."""
    if not (VECTORS / rel).is_file():
        pytest.skip(f"{rel} is not in the vector set at {VECTORS}")


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


#: COSE curve identifiers (RFC 9053 §7.1) of the JWK names the COSE WG files use.
COSE_CURVES = {"P-256": 1, "P-384": 2, "P-521": 3, "X25519": 4, "X448": 5, "Ed25519": 6, "Ed448": 7}


def profile_key(jwk: dict[str, str]) -> bool:
    """Whether a COSE WG key is one the profile signs with: EC2 P-256 or OKP Ed25519."""
    return (jwk["kty"], jwk.get("crv")) in {("EC", "P-256"), ("EC2", "P-256"), ("OKP", "Ed25519")}


def jwk_to_cose_key(jwk: dict[str, str]) -> bytes:
    """The COSE_Key of a COSE WG file's key (kty ``EC`` or ``EC2``, ``OKP``); any other
    curve is kept as it is, for the core to refuse."""
    alg = ALGS.get(jwk["alg"]) if "alg" in jwk else None
    if jwk["kty"] in ("EC", "EC2") and jwk["crv"] == "P-256":
        return ec2_key(jwk_param(jwk, "x"), jwk_param(jwk, "y"), alg)
    if (jwk["kty"], jwk.get("crv")) == ("OKP", "Ed25519"):
        return okp_key(jwk_param(jwk, "x"), alg)
    key: dict[int, Any] = {-2: jwk_param(jwk, "x")} if "x" in jwk or "x_hex" in jwk else {}
    if jwk["kty"] in ("EC", "EC2"):
        key.update({1: 2, -1: COSE_CURVES[jwk["crv"]], -3: jwk_param(jwk, "y")})
    elif jwk["kty"] == "OKP":
        key.update({1: 1, -1: COSE_CURVES[jwk["crv"]]})
    else:  # RSA, symmetric: a key type the profile has no use for
        key[1] = {"RSA": 3, "oct": 4}.get(jwk["kty"], 0)
    return cbor2.dumps(key)


def markdown_hex(rel: str) -> bytes:
    """The draft's example files: hex split over lines, sometimes after other text."""
    lines = (VECTORS / rel).read_text().splitlines()
    return bytes.fromhex(
        "".join(ln.strip() for ln in lines if re.fullmatch(r"[0-9a-fA-F]+", ln.strip()))
    )


# --------------------------------------------------------------------------- Wycheproof

#: The Wycheproof files the vectors README describes, with the family it names each by.
WYCHEPROOF_README = {
    "ecdsa_secp256r1_sha256_p1363_test.json": (ES256, "ECDSA P-256"),
    "ed25519_test.json": (EDDSA, "Ed25519"),
}


def readme_counts(family: str) -> tuple[int, int, int] | None:
    """Cases, valid and invalid the vectors README states for a Wycheproof family ("…: 262
    cases, 173 valid / 89 invalid"), or None where it states none."""
    readme = VECTORS / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    stated = re.search(
        re.escape(family) + r"[^:;]*: (\d+) cases, (\d+) valid / (\d+) invalid", text
    )
    return None if stated is None else (int(stated[1]), int(stated[2]), int(stated[3]))


def wycheproof_alg(group: dict[str, Any]) -> int | None:
    """The profile's algorithm a Wycheproof test group exercises, or None: ES256 is ECDSA on
    P-256 with SHA-256 and the IEEE P1363 r||s encoding (COSE's); EdDSA is Ed25519."""
    curve = group.get("publicKey", {}).get("curve")
    if (group.get("type"), curve, group.get("sha")) == ("EcdsaP1363Verify", "secp256r1", "SHA-256"):
        return ES256
    if (group.get("type"), curve) == ("EddsaVerify", "edwards25519"):
        return EDDSA
    return None


def wycheproof_key(group: dict[str, Any]) -> bytes:
    pk = group["publicKey"]
    if pk["type"] == "EcPublicKey":
        assert pk["curve"] == "secp256r1" and group["sha"] == "SHA-256"
        point = bytes.fromhex(pk["uncompressed"])
        assert len(point) == 65 and point[0] == 4
        return ec2_key(point[1:33], point[33:])
    assert pk["type"] == "EDDSAPublicKey" and pk["curve"] == "edwards25519"
    return okp_key(bytes.fromhex(pk["pk"]))


def wycheproof_groups(filename: str) -> list[dict[str, Any]]:
    """The test groups of a file that the profile's algorithms are tested by."""
    doc = load_json(f"wycheproof/{filename}")
    return [g for g in doc.get("testGroups", []) if wycheproof_alg(g) is not None]


WYCHEPROOF_FILES = files("wycheproof", "*.json")
#: Files with at least one group of the profile's algorithms; the others are reported skipped.
WYCHEPROOF_USED = [f for f in WYCHEPROOF_FILES if wycheproof_groups(f)]
#: (file, case) of every case of those groups.
WYCHEPROOF_FILE_CASES = [
    (
        filename,
        pytest.param(
            wycheproof_alg(group),
            wycheproof_key(group),
            bytes.fromhex(t["msg"]),
            bytes.fromhex(t["sig"]),
            t["result"],
            id=f"{Path(filename).stem}-tc{t['tcId']}",
        ),
    )
    for filename in WYCHEPROOF_USED
    for group in wycheproof_groups(filename)
    for t in group["tests"]
]
WYCHEPROOF_CASES = [case for _, case in WYCHEPROOF_FILE_CASES]


@pytest.mark.parametrize(
    "filename",
    [
        pytest.param(
            f,
            marks=()
            if f in WYCHEPROOF_USED
            else pytest.mark.skip(reason=f"{f}: no ES256 (P-256, SHA-256, r||s) or Ed25519 group"),
        )
        for f in WYCHEPROOF_FILES
    ],
)
def test_wycheproof_files_are_whole_and_every_case_runs(filename: str) -> None:
    """A file the profile's algorithms use is whole (its ``numberOfTests``), each result is
    one Wycheproof defines, and every case of its groups is among those run below."""
    doc = load_json(f"wycheproof/{filename}")
    everything = [t for g in doc["testGroups"] for t in g["tests"]]
    assert doc["numberOfTests"] == len(everything)
    assert {t["result"] for t in everything} <= {"valid", "invalid", "acceptable"}
    used = sum(len(g["tests"]) for g in wycheproof_groups(filename))
    assert used == sum(1 for of_file, _ in WYCHEPROOF_FILE_CASES if of_file == filename)


@pytest.mark.parametrize("filename", sorted(WYCHEPROOF_README))
def test_wycheproof_counts_match_readme(filename: str) -> None:
    # No "acceptable" results exist in these two files, so no policy choice is needed for them:
    # every case is either "valid" (must return True) or "invalid" (must return False).
    need(f"wycheproof/{filename}")
    counts = readme_counts(WYCHEPROOF_README[filename][1])
    if counts is None:
        pytest.skip(f"the vectors README states no counts for {filename}")
    total, valid, invalid = counts
    doc = load_json(f"wycheproof/{filename}")
    results = Counter(t["result"] for g in doc["testGroups"] for t in g["tests"])
    assert doc["numberOfTests"] == total
    assert results == {"valid": valid, "invalid": invalid}


@pytest.mark.parametrize("filename", WYCHEPROOF_USED)
def test_wycheproof_cose_keys_are_the_published_keys(filename: str) -> None:
    """Our COSE_Key construction reproduces each group's DER key, and every key is a valid point.

    So no Wycheproof case expects CoseKeyError: a CoseKeyError in the cases below is a core bug.
    """
    for group in wycheproof_groups(filename):
        der_key = serialization.load_der_public_key(bytes.fromhex(group["publicKeyDer"]))
        cose = cbor2.loads(wycheproof_key(group))
        if isinstance(der_key, ec.EllipticCurvePublicKey):
            point = b"\x04" + cose[-2] + cose[-3]
            rebuilt = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            assert rebuilt.public_numbers() == der_key.public_numbers()
        else:
            assert isinstance(der_key, ed25519.Ed25519PublicKey)
            assert der_key.public_bytes_raw() == cose[-2]


@pytest.mark.parametrize(("alg", "cose_key", "msg", "sig", "result"), WYCHEPROOF_CASES)
def test_wycheproof(alg: int, cose_key: bytes, msg: bytes, sig: bytes, result: str) -> None:
    """``valid`` must verify, ``invalid`` must not; ``acceptable`` (legacy encodings a
    library may take or refuse) must get an answer either way, never an error."""
    verified = verify_signature(alg, cose_key, msg, sig)
    if result == "acceptable":
        assert isinstance(verified, bool)
    else:
        assert verified is (result == "valid")


def test_wycheproof_runs_both_profile_algorithms() -> None:
    algs = {case.values[0] for case in WYCHEPROOF_CASES}
    for filename, (alg, *_) in WYCHEPROOF_README.items():
        if (VECTORS / "wycheproof" / filename).is_file():
            assert alg in algs


# --------------------------------------------------------------------------- COSE WG Examples

PASS = "pass"
# Expected outcome of verify_sign1 for the COSE WG files the README lists, and why: the error
# a strict profile verifier raises, or the profile's own verdict where it differs from the
# file's ``fail`` flag (sign-pass-01). Other files are judged by their flag (cose_wg_expected).
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
#: Files whose ``fail`` flag the profile overrules (COSE_WG says why).
COSE_WG_OVERRULED = frozenset({"sign1-tests/sign-pass-01.json"})
#: What verify_sign1 raises for a message or key it will not check: any of them is a refusal.
REFUSALS = (InvalidSignature, MalformedError, CoseKeyError)
#: Refusals before any signature is checked: a key or algorithm that is not the profile's.
NOT_THE_PROFILES = (CoseKeyError, MalformedError)


def cose_wg_sign1(rel: str) -> dict[str, Any] | None:
    """A COSE WG file's ``sign0`` input if it is a COSE_Sign1 example with its encoding."""
    doc = load_json(f"cose-wg/{rel}")
    sign0 = doc.get("input", {}).get("sign0")
    return sign0 if isinstance(sign0, dict) and "cbor" in doc.get("output", {}) else None


def cose_wg_expected(rel: str) -> str | tuple[type[Exception], ...]:
    """PASS, or the errors one of which verify_sign1 must raise, for a COSE_Sign1 example:
    COSE_WG's for the README's files; for another file, a refusal (CoseKeyError or
    MalformedError) when its key or algorithm is not the profile's, else what its own
    ``fail`` flag says."""
    if rel in COSE_WG:
        expected = COSE_WG[rel]
        return expected if isinstance(expected, str) else (expected,)
    sign0 = cose_wg_sign1(rel)
    assert sign0 is not None
    if not profile_key(sign0["key"]) or sign0.get("alg", "ES256") not in ALGS:
        return NOT_THE_PROFILES
    return REFUSALS if load_json(f"cose-wg/{rel}").get("fail") else PASS


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


COSE_WG_FILES = files("cose-wg", "*.json")
COSE_WG_SIGN1 = [rel for rel in COSE_WG_FILES if cose_wg_sign1(rel) is not None]


def test_cose_wg_table_agrees_with_the_files() -> None:
    """The README's files are COSE_Sign1 examples, and each verdict of the table is the
    file's own ``fail`` flag except where the profile overrules it."""
    for rel, expected in COSE_WG.items():
        if not (VECTORS / "cose-wg" / rel).is_file():
            continue
        assert rel in COSE_WG_SIGN1
        fails = bool(load_json(f"cose-wg/{rel}").get("fail"))
        assert fails is (expected != PASS) or rel in COSE_WG_OVERRULED, rel


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param(
            rel,
            marks=()
            if rel in COSE_WG_SIGN1
            else pytest.mark.skip(reason=f"{rel}: not a COSE_Sign1 example"),
        )
        for rel in COSE_WG_FILES
    ],
)
def test_cose_wg(rel: str) -> None:
    message, key, aad, payload = cose_wg_case(rel)
    expected = cose_wg_expected(rel)
    if isinstance(expected, tuple):
        with pytest.raises(expected):
            verify_sign1(message, key, aad)
        return
    assert verify_sign1(message, key, aad) == payload
    if aad:  # the external AAD is really bound: without it the signature must not verify
        with pytest.raises(InvalidSignature):
            verify_sign1(message, key)


def test_cose_wg_sign_pass_01() -> None:
    """sign-pass-01 ("Redo protected") cannot be a pass for a strict profile verifier.

    1. alg (-7) is only in the unprotected bucket: the contract requires MalformedError
       (covered by test_cose_wg).
    2. Its signature was made over body_protected = h'' (the vector's own ToBeSign_hex has 0x40),
       not over the received h'A0'. Signing "over the bytes as received" (RFC 9052 §4.4, coset)
       therefore cannot verify it -- the vector is disputed upstream (cose-wg/Examples#107).
    Checked here with the raw primitive so the data fact stays visible.
    """
    need("cose-wg/sign1-tests/sign-pass-01.json")
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


def status_list_map(name: str) -> bytes | None:
    """A status-list file's CBOR Status List ({"bits", "lst"}), or None for another file."""
    data = markdown_hex(f"status-list/{name}")
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, EOFError, ValueError):
        return None
    return data if isinstance(value, dict) and {"bits", "lst"} <= value.keys() else None


STATUS_LIST_FILES = [name for name in files("status-list", "*.md") if status_list_map(name)]


@pytest.mark.parametrize("name", STATUS_LIST_FILES)
def test_status_list_decoding_matches_an_independent_decoder(name: str) -> None:
    """Every Status List of the folder, listed in STATUS_LISTS or not, decodes to the
    statuses an independent reading of draft §4.1 gives, entry by entry."""
    data = status_list_map(name)
    assert data is not None
    expected = reference_statuses(data)
    decoded = decode_status_list(data)
    assert decoded.bits == cbor2.loads(data)["bits"]
    assert len(decoded) == len(expected)
    assert [decoded.status(i) for i in range(len(decoded))] == expected


@pytest.mark.parametrize("name", sorted(STATUS_LISTS))
def test_status_list_expectations_match_the_vector_data(name: str) -> None:
    need(f"status-list/{name}")
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
    need(f"status-list/{name}")
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
    need("status-list/example-key.json")
    return jwk_to_cose_key(load_json("status-list/example-key.json"))  # ES256 P-256, kid "12"


def test_status_list_cwt_signature_and_content() -> None:
    """Protected {1: -7, 16: "application/statuslist+cwt"}, unprotected {4: h'3132'} (kid "12")."""
    need("status-list/status_list_cwt.md")
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
    need("status-list/status_list_cwt.md")
    message = bytearray(markdown_hex("status-list/status_list_cwt.md"))
    message[-1] ^= 0x01  # last byte of the signature
    with pytest.raises(InvalidSignature):
        verify_sign1(bytes(message), example_key())


def test_referenced_token_cwt_points_into_the_status_list() -> None:
    """The referenced token (protected {1: -7}) points at index 0 of the list: INVALID (1)."""
    need("status-list/referenced_token_cwt.md")
    need("status-list/status_list_cwt.md")
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
