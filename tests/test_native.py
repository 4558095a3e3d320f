"""Tests of the binding apcv_verify._native: exception mapping, frozen classes, reprs without
personal data, and a verify_batch round trip.

Objects are built here with cbor2 + cryptography by a small self-contained helper (not the
issuer toolkit), so that the binding is tested against an independent encoder.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import cbor2
import pytest
from apcv_verify import _native
from apcv_verify._native import (
    CoseKeyError,
    InvalidSignature,
    MalformedError,
    MemoryReplayStore,
    NativeError,
    Policy,
    Scan,
    StatusList,
    StatusListError,
    TrustList,
    TrustListError,
    Verifier,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

NOW = 1_750_000_000
DAY = 86_400
YEAR = 365 * DAY
ISS = "https://amo.example/fr"
URI = "https://status.example/lists/1"
AMC_ISS = "https://amc.example/mutuelle"
BIRTH_NAME = "DUPONT-ZYXWVU"
GIVEN_NAMES = "MARIE QWERTY"
BIRTH_DATE = "1985-07-00"  # lunar date: day 00


# ------------------------------------------------------------------ helpers


def nir(number13: str) -> str:
    """A matricule with its key (RG_BS603: 2A/2B read as 19/18)."""
    n = int(number13.replace("2A", "19").replace("2B", "18"))
    return f"{number13}{97 - n % 97:02d}"


HOLDER_INS = nir("2850775123456")
CORSICAN_INS = nir("215022B321321")


def b45encode(data: bytes) -> str:
    """RFC 9285 base45."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
    out = []
    for i in range(0, len(data), 2):
        chunk = data[i : i + 2]
        if len(chunk) == 2:
            n = chunk[0] * 256 + chunk[1]
            out += [alphabet[n % 45], alphabet[n // 45 % 45], alphabet[n // 2025]]
        else:
            out += [alphabet[chunk[0] % 45], alphabet[chunk[0] // 45]]
    return "".join(out)


def qr_text(presentation: bytes) -> str:
    return "APCV1:" + b45encode(zlib.compress(presentation, 9))


@dataclass
class Key:
    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def xy(self) -> tuple[bytes, bytes]:
        nums = self.private.public_key().public_numbers()
        return nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")

    def cose_key(self) -> dict[int, Any]:
        x, y = self.xy()
        return {1: 2, -1: 1, -2: x, -3: y, 3: -7}

    def cose_key_bytes(self) -> bytes:
        return cbor2.dumps(self.cose_key())

    def thumbprint(self) -> bytes:
        # RFC 9679: required members only, keys 1, -1, -2, -3 (bytewise order 01 20 21 22).
        x, y = self.xy()
        return hashlib.sha256(cbor2.dumps({1: 2, -1: 1, -2: x, -3: y})).digest()

    def kid(self) -> bytes:
        return self.thumbprint()[:8]

    def sign(self, data: bytes) -> bytes:
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign1(key: Key, payload: bytes, *, kid: bool = True, tagged: bool = True) -> bytes:
    protected: dict[int, Any] = {1: -7}
    if kid:
        protected[4] = key.kid()
    body = cbor2.dumps(protected)
    tbs = cbor2.dumps(["Signature1", body, b"", payload])
    msg = [body, {}, payload, key.sign(tbs)]
    return cbor2.dumps(cbor2.CBORTag(18, msg) if tagged else msg)


def person(m: str, rank: int | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {} if rank is None else {"rank": rank}
    p |= {
        "ins": {"m": m, "oid": "1.2.250.1.213.1.4.8"},
        "id": {
            "bn": BIRTH_NAME,
            "gn": GIVEN_NAMES,
            "sex": "F",
            "dob": BIRTH_DATE,
            "pob": "75056",
        },
        "amo": {
            "reg": "01",
            "caisse": "751",
            "centre": "1234",
            "from": "2024-01-01",
            "to": "2026-12-31",
        },
    }
    return p


@dataclass
class Pki:
    anchor: Key = field(default_factory=Key)
    amo: Key = field(default_factory=Key)
    status: Key = field(default_factory=Key)
    device: Key = field(default_factory=Key)
    amc: Key = field(default_factory=Key)
    delegate: Key = field(default_factory=Key)

    def entry(
        self, key: Key, role: str, kid: bytes | None = None, iss: str = ISS
    ) -> dict[str, Any]:
        return {
            "kid": key.kid() if kid is None else kid,
            "role": role,
            "iss": iss,
            "key": key.cose_key(),
            "nbf": NOW - YEAR,
            "exp": NOW + 5 * YEAR,
        }

    def trust_list(self, seq: int = 1, entries: list[dict[str, Any]] | None = None) -> bytes:
        if entries is None:
            entries = [
                self.entry(self.amo, "amo"),
                self.entry(self.status, "status"),
                self.entry(self.amc, "amc", iss=AMC_ISS),
            ]
        payload = {"v": 1, "seq": seq, "iat": NOW - DAY, "exp": NOW + YEAR, "keys": entries}
        return sign1(self.anchor, cbor2.dumps(payload))

    def status_list(
        self, statuses: dict[int, int], bits: int = 2, signer: Key | None = None
    ) -> bytes:
        raw = bytearray(64 * bits // 8)
        for index, value in statuses.items():
            raw[index * bits // 8] |= value << (index * bits % 8)  # draft §4.1, LSB first
        payload = {
            2: URI,
            6: NOW - 60,
            4: NOW + DAY,
            65534: 3600,
            65533: {"bits": bits, "lst": zlib.compress(bytes(raw))},
        }
        return sign1(signer or self.status, cbor2.dumps(payload))

    def credential(self, **apcv_changes: Any) -> bytes:
        x, y = self.device.xy()
        apcv = {"v": 1, **person(HOLDER_INS), "ben": [person(CORSICAN_INS, rank=2)]}
        apcv |= apcv_changes
        claims = {
            1: ISS,
            2: "cred-0001",
            4: NOW + YEAR,
            5: NOW - DAY,
            6: NOW - DAY,
            8: {1: {1: 2, -1: 1, -2: x, -3: y}},
            65535: {"status_list": {"idx": 5, "uri": URI}},
            "apcv": apcv,
        }
        return sign1(self.amo, cbor2.dumps(claims))

    def delegation(
        self, status_index: int = 10, apcv_changes: dict[str, Any] | None = None
    ) -> bytes:
        x, y = self.delegate.xy()
        apcv = {"v": 1, "for": "cred-0001", "ben": [0, 2], "use": ["care"], "who": "Mamie"}
        apcv |= apcv_changes or {}
        claims = {
            1: ISS,
            2: "dlg-0001",
            4: NOW + DAY,
            5: NOW - DAY,
            6: NOW - DAY,
            8: {1: {1: 2, -1: 1, -2: x, -3: y}},
            65535: {"status_list": {"idx": status_index, "uri": URI}},
            "apcv": apcv,
        }
        return sign1(self.amo, cbor2.dumps(claims))

    def amc_attestation(
        self, covered: list[str], *, exp: int = NOW + YEAR, signer: Key | None = None
    ) -> bytes:
        claims = {
            1: AMC_ISS,
            2: "contract-42",
            4: exp,
            5: NOW - DAY,
            6: NOW - DAY,
            "apcv": {"v": 1, "for": covered, "amc": "012345678", "tp": True, "dom": ["PHAR"]},
        }
        return sign1(signer or self.amc, cbor2.dumps(claims))

    def credential_with_status(self, index: int) -> bytes:
        claims = cbor2.loads(cbor2.loads(self.credential()).value[2])
        claims[65535]["status_list"]["idx"] = index
        return sign1(self.amo, cbor2.dumps(claims))

    def presentation(
        self,
        cti: int,
        *,
        cred: bytes | None = None,
        times: tuple[int, int] | None = None,
        signer: Key | None = None,
        **changes: Any,
    ) -> bytes:
        claims: dict[Any, Any] = {
            6: NOW - 10,
            4: NOW + 110,
            7: cti.to_bytes(16, "big"),
            "cred": cred if cred is not None else self.credential(),
            "ben": 0,
            "use": "care",
        }
        claims |= changes
        if times is not None:
            claims[6], claims[4] = times
        return sign1(signer or self.device, cbor2.dumps(claims), kid=False)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def trust_list(pki: Pki) -> TrustList:
    return TrustList.verify(pki.trust_list(), [pki.anchor.cose_key_bytes()], NOW)


@pytest.fixture
def verifier(pki: Pki, trust_list: TrustList) -> Verifier:
    status = StatusList.verify(pki.status_list({1: 1, 2: 2}), trust_list, NOW)
    return Verifier(trust_list, [status], Policy(), MemoryReplayStore())


# ------------------------------------------------------------------ exception mapping


def test_exception_hierarchy() -> None:
    for exc in (TrustListError, StatusListError, CoseKeyError, MalformedError, InvalidSignature):
        assert issubclass(exc, NativeError)
        assert exc.__module__ == "apcv_verify._native"
    assert issubclass(NativeError, Exception)
    assert issubclass(CoseKeyError, ValueError)
    assert issubclass(MalformedError, ValueError)
    assert not issubclass(InvalidSignature, ValueError)


def test_verify_sign1_errors(pki: Pki) -> None:
    key = pki.amo.cose_key_bytes()
    signed = sign1(pki.amo, b"payload")
    assert _native.verify_sign1(signed, key) == b"payload"
    assert _native.verify_sign1(sign1(pki.amo, b"p", tagged=False), key, b"") == b"p"
    with pytest.raises(InvalidSignature, match="signature does not verify"):
        _native.verify_sign1(signed, key, b"other aad")
    with pytest.raises(InvalidSignature):
        _native.verify_sign1(signed, pki.device.cose_key_bytes())
    with pytest.raises(MalformedError, match="trailing bytes"):
        _native.verify_sign1(signed + b"\x00", key)
    with pytest.raises(MalformedError, match="indefinite-length"):
        _native.verify_sign1(b"\xd2\x9f\xff", key)
    with pytest.raises(MalformedError, match="duplicate CBOR map key"):
        _native.verify_sign1(b"\xa2\x01\x00\x01\x00", key)
    with pytest.raises(MalformedError, match="nesting too deep"):
        _native.verify_sign1(b"\x81" * 17 + b"\x00", key)
    with pytest.raises(CoseKeyError, match="unusable COSE_Key"):
        _native.verify_sign1(signed, b"\xa0")


def test_verify_signature_and_thumbprint(pki: Pki) -> None:
    key = pki.amo
    sig = key.sign(b"msg")
    assert _native.verify_signature(-7, key.cose_key_bytes(), b"msg", sig) is True
    assert _native.verify_signature(-7, key.cose_key_bytes(), b"msh", sig) is False
    der = key.private.sign(b"msg", ec.ECDSA(hashes.SHA256()))
    assert _native.verify_signature(-7, key.cose_key_bytes(), b"msg", der) is False
    with pytest.raises(CoseKeyError, match="unsupported algorithm"):
        _native.verify_signature(-35, key.cose_key_bytes(), b"msg", sig)
    with pytest.raises(CoseKeyError, match="does not match"):
        _native.verify_signature(-8, key.cose_key_bytes(), b"msg", sig)
    with pytest.raises(ValueError):  # CoseKeyError is a ValueError
        _native.verify_signature(-7, b"not cbor \xff", b"msg", sig)
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_key = cbor2.dumps({1: 1, -1: 6, -2: ed.public_key().public_bytes_raw()})
    assert _native.verify_signature(-8, ed_key, b"m", ed.sign(b"m")) is True
    assert _native.cose_key_thumbprint(key.cose_key_bytes()) == key.thumbprint()
    assert len(_native.cose_key_thumbprint(ed_key)) == 32


def test_trust_list_errors_name_the_problem(pki: Pki) -> None:
    anchors = [pki.anchor.cose_key_bytes()]
    data = pki.trust_list(seq=5)
    with pytest.raises(TrustListError, match="^unknown trust anchor$"):
        TrustList.verify(data, [Key().cose_key_bytes()], NOW)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(TrustListError, match="^bad trust list signature$"):
        TrustList.verify(tampered, anchors, NOW)
    with pytest.raises(TrustListError, match="^rollback: sequence 5 is lower than held 6$"):
        TrustList.verify(data, anchors, NOW, held_seq=6)
    assert TrustList.verify(data, anchors, NOW, held_seq=5).seq == 5
    with pytest.raises(TrustListError, match="^trust list expired$"):
        TrustList.verify(data, anchors, NOW + 2 * YEAR)
    bad_kid = pki.trust_list(entries=[pki.entry(pki.amo, "amo", kid=b"\x00" * 8)])
    with pytest.raises(TrustListError, match="^key 0: kid is not the RFC 9679 thumbprint prefix$"):
        TrustList.verify(bad_kid, anchors, NOW)
    with pytest.raises(TrustListError, match="^malformed trust list: "):
        TrustList.verify(b"\x01", anchors, NOW)
    with pytest.raises(CoseKeyError):
        TrustList.verify(data, [b"\x01"], NOW)


def test_status_list_errors_and_reads(pki: Pki, trust_list: TrustList) -> None:
    sl = StatusList.verify(pki.status_list({0: 1, 3: 2}), trust_list, NOW)
    assert (sl.uri, sl.bits, sl.ttl, len(sl)) == (URI, 2, 3600, 64)
    assert (sl.issued_at, sl.expires_at) == (NOW - 60, NOW + DAY)
    assert [sl.status(i) for i in range(4)] == [1, 0, 0, 2]
    for bad_index in (64, -1, 2**64, -(2**70)):
        with pytest.raises(IndexError):
            sl.status(bad_index)
    with pytest.raises(TypeError):
        sl.status("0")  # type: ignore[arg-type]
    with pytest.raises(StatusListError, match="^unknown status list signer$"):
        StatusList.verify(pki.status_list({}, signer=pki.amo), trust_list, NOW)
    with pytest.raises(StatusListError, match="^status list expired$"):
        StatusList.verify(pki.status_list({}), trust_list, NOW + 2 * DAY)
    one_bit = _native.decode_status_list(
        cbor2.dumps({"bits": 1, "lst": zlib.compress(b"\xb9\xa3")})
    )
    assert (one_bit.bits, len(one_bit)) == (1, 16)
    assert [one_bit.status(i) for i in range(8)] == [1, 0, 0, 1, 1, 1, 0, 1]
    with pytest.raises(StatusListError, match="malformed status list"):
        _native.decode_status_list(cbor2.dumps({"bits": 3, "lst": zlib.compress(b"\x00")}))


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="clock_skew"):
        Policy(clock_skew=-1)
    with pytest.raises(ValueError, match="unknown use"):
        Scan("APCV1:", "r", allowed_uses=["care", "shopping"])
    with pytest.raises(TypeError):
        Scan(123, "r")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Policy(True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="max_scan_delay"):
        Policy(max_scan_delay=-1)
    p = Policy(allow_test_identities=True, clock_skew=30, status_grace=600, max_scan_delay=900)
    assert (p.allow_test_identities, p.clock_skew, p.status_grace) == (True, 30, 600)
    assert p.max_scan_delay == 900
    assert Policy().max_scan_delay == 0
    assert repr(p) == (
        "Policy(allow_test_identities=True, clock_skew=30, status_grace=600, max_scan_delay=900)"
    )
    assert Scan("x", "r").scanned_at is None
    assert Scan("x", "r", scanned_at=NOW - 5).scanned_at == NOW - 5
    assert MemoryReplayStore().max_entries == 1_000_000


# ------------------------------------------------------------------ frozen classes, reprs


def _accepted(verifier: Verifier, pki: Pki, cti: int, **changes: Any) -> _native.VerificationResult:
    (result,) = verifier.verify_batch([Scan(pki.presentation(cti, **changes), "desk-1")], NOW)
    assert result.accepted, (result.reason, result.detail)
    return result


def test_classes_are_frozen_and_final(verifier: Verifier, pki: Pki, trust_list: TrustList) -> None:
    result = _accepted(verifier, pki, 1)
    assert result.person is not None
    targets: list[tuple[object, str]] = [
        (result, "accepted"),
        (result, "reason"),
        (result.person, "birth_name"),
        (result.person.amo, "caisse"),
        (trust_list, "seq"),
        (Policy(), "clock_skew"),
        (Scan("x", "r"), "reader_id"),
        (_accepted(verifier, pki, 3, amc=[pki.amc_attestation([HOLDER_INS])]).amc[0], "valid"),
    ]
    for obj, attr in targets:
        with pytest.raises(AttributeError):
            setattr(obj, attr, None)
        with pytest.raises(AttributeError):
            obj.new_attribute = 1  # type: ignore[attr-defined]
    for cls in (
        Verifier,
        TrustList,
        StatusList,
        Policy,
        Scan,
        _native.VerificationResult,
        _native.AmcCoverage,
    ):
        with pytest.raises(TypeError):
            type("Sub", (cls,), {})


def test_reprs_show_no_personal_data(verifier: Verifier, pki: Pki) -> None:
    result = _accepted(verifier, pki, 2)
    person = result.person
    assert person is not None
    assert repr(result) == "<VerificationResult accepted=True reason=OK duplicate=False>"
    assert repr(person) == "<Person>"
    assert repr(Scan("APCV1:", "reader secret text")) == "<Scan qr>"
    assert repr(person.amo) == "<AmoRights>"
    secrets = [BIRTH_NAME, GIVEN_NAMES, BIRTH_DATE, HOLDER_INS, "75056", "751", "cred-0001"]
    for text in (repr(result), str(result), repr(person), str(person), repr(person.amo)):
        for secret in secrets:
            assert secret not in text
    rejected = verifier.verify_batch([Scan(b"junk", "desk-1")], NOW)[0]
    assert repr(rejected) == "<VerificationResult accepted=False reason=MALFORMED duplicate=False>"


# ------------------------------------------------------------------ verify_batch round trip


def test_verify_batch_round_trip(verifier: Verifier, pki: Pki) -> None:
    qr = qr_text(pki.presentation(10))
    scans = [
        Scan(qr, "desk-1"),  # QR text
        Scan(pki.presentation(11, ben=2), "desk-1", allowed_uses=["care"]),  # NFC, beneficiary
        Scan(b"\x00garbage", "desk-1"),
        Scan(qr, "desk-1"),  # same reader again: duplicate
        Scan(pki.presentation(12, use="dmp"), "desk-1", allowed_uses=["care", "dp"]),
        Scan(pki.presentation(13, cred=pki.credential(v=2)), "desk-1"),
        Scan(pki.presentation(14, nonce=b"n0"), "desk-1", nonce=b"n1"),
        Scan(pki.presentation(15, nonce=b"n0"), "desk-1", nonce=b"n0"),
    ]
    results = verifier.verify_batch(scans, NOW)
    assert [(r.reason, r.duplicate) for r in results] == [
        ("OK", False),
        ("OK", False),
        ("MALFORMED", False),
        ("OK", True),
        ("PURPOSE_NOT_ALLOWED", False),
        ("UNSUPPORTED_VERSION", False),
        ("NONCE_MISMATCH", False),
        ("OK", False),
    ]
    holder, beneficiary = results[0], results[1]
    assert holder.person is not None and beneficiary.person is not None
    assert (holder.use, holder.credential_id, holder.issuer) == ("care", "cred-0001", ISS)
    assert holder.credential_expires_at == NOW + YEAR
    p = holder.person
    assert (p.rank, p.ins, p.ins_oid, p.sex) == (0, HOLDER_INS, "1.2.250.1.213.1.4.8", "F")
    assert (p.birth_name, p.given_names, p.birth_date, p.birth_place) == (
        BIRTH_NAME,
        GIVEN_NAMES,
        BIRTH_DATE,  # lunar date returned verbatim
        "75056",
    )
    amo = p.amo
    assert (amo.regime, amo.caisse, amo.centre, amo.open_from, amo.open_to) == (
        "01",
        "751",
        "1234",
        "2024-01-01",
        "2026-12-31",
    )
    assert (beneficiary.person.rank, beneficiary.person.ins) == (2, CORSICAN_INS)
    assert results[3].detail == "already accepted for this reader"
    rejected = results[2]
    assert rejected.person is None and rejected.use is None and rejected.credential_id is None
    assert results[4].person is None and results[4].use == "dmp"
    # Within one batch the earlier item wins the replay entry (docs/profile.md §7.4).
    twice = pki.presentation(16)
    first, second = verifier.verify_batch([Scan(twice, "desk-9"), Scan(twice, "desk-8")], NOW)
    assert (first.reason, second.reason) == ("OK", "REPLAYED")
    # Another reader presenting the same QR: replayed.
    (replayed,) = verifier.verify_batch([Scan(qr, "desk-2")], NOW)
    assert (replayed.accepted, replayed.reason) == (False, "REPLAYED")
    assert verifier.verify_batch([], NOW) == []


def test_snapshots_share_the_replay_store(pki: Pki, trust_list: TrustList) -> None:
    store = MemoryReplayStore(max_entries=10)
    base = Verifier(trust_list, [], Policy(), store)
    (r,) = base.verify_batch([Scan(pki.presentation(20), "desk-1")], NOW)
    assert r.reason == "STATUS_UNAVAILABLE"
    revoked = StatusList.verify(pki.status_list({5: 1}), trust_list, NOW)
    (r,) = base.with_status_lists([revoked]).verify_batch([Scan(pki.presentation(21), "d")], NOW)
    assert r.reason == "REVOKED"
    good = base.with_status_lists([StatusList.verify(pki.status_list({}), trust_list, NOW)])
    newer = TrustList.verify(pki.trust_list(seq=2), [pki.anchor.cose_key_bytes()], NOW)
    refreshed = good.with_trust_list(newer)
    (r,) = refreshed.verify_batch([Scan(pki.presentation(22), "desk-1")], NOW)
    assert r.accepted
    assert len(store) == 1
    (r,) = good.verify_batch([Scan(pki.presentation(22), "desk-2")], NOW)  # same store
    assert r.reason == "REPLAYED"
    full = Verifier(trust_list, [revoked], Policy(), MemoryReplayStore(max_entries=0))
    ok_list = [StatusList.verify(pki.status_list({}), trust_list, NOW)]
    (r,) = full.with_status_lists(ok_list).verify_batch([Scan(pki.presentation(23), "d")], NOW)
    assert r.reason == "REPLAY_UNAVAILABLE"


def test_policy_allows_test_identities(pki: Pki, trust_list: TrustList) -> None:
    cred = pki.credential(ins={"m": HOLDER_INS, "oid": "1.2.250.1.213.1.4.10"})
    status = [StatusList.verify(pki.status_list({}), trust_list, NOW)]

    def run(policy: Policy) -> str:
        v = Verifier(trust_list, status, policy, MemoryReplayStore())
        return v.verify_batch([Scan(pki.presentation(30, cred=cred), "d")], NOW)[0].reason

    assert run(Policy()) == "CLAIMS_INVALID"
    assert run(Policy(allow_test_identities=True)) == "OK"


def test_verify_batch_runs_concurrently_from_threads(verifier: Verifier, pki: Pki) -> None:
    batches = [
        [Scan(pki.presentation(1000 + 10 * t + i), f"desk-{t}") for i in range(10)]
        for t in range(4)
    ]
    out: dict[int, list[str]] = {}

    def work(t: int) -> Callable[[], None]:
        def run() -> None:
            out[t] = [r.reason for r in verifier.verify_batch(batches[t], NOW)]

        return run

    threads = [threading.Thread(target=work(t)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert out == {t: ["OK"] * 10 for t in range(4)}


# ------------------------------------------------------------- delayed scans (docs/profile.md §7.5)


def test_delayed_scan_freshness_at_scan_time_status_at_now(pki: Pki, trust_list: TrustList) -> None:
    status = [StatusList.verify(pki.status_list({1: 1}), trust_list, NOW)]
    verifier = Verifier(trust_list, status, Policy(max_scan_delay=3600), MemoryReplayStore())
    old = NOW - 1800
    stale = pki.presentation(40, times=(old, old + 120))

    def run(data: bytes, scanned_at: int | None, reader: str = "edge-1") -> tuple[str, str]:
        (r,) = verifier.verify_batch([Scan(data, reader, scanned_at=scanned_at)], NOW)
        return r.reason, r.detail

    assert run(stale, None)[0] == "PRESENTATION_EXPIRED"
    assert run(stale, old + 5) == ("OK", "")
    assert run(pki.presentation(41), NOW - 3601) == (
        "SCAN_TIME_INVALID",
        "scan time is older than the allowed delay",
    )
    assert run(pki.presentation(42), NOW + 61) == (
        "SCAN_TIME_INVALID",
        "scan time is in the future",
    )
    # Revocation is judged at verification time, even for a scan made before it.
    revoked = pki.presentation(43, cred=pki.credential_with_status(1), times=(old, old + 120))
    assert run(revoked, old + 5)[0] == "REVOKED"
    # The default policy honours no delay at all.
    strict = Verifier(trust_list, status, Policy(), MemoryReplayStore())
    (r,) = strict.verify_batch([Scan(pki.presentation(44), "e", scanned_at=NOW - 1)], NOW)
    assert r.reason == "SCAN_TIME_INVALID"


# -------------------------------------------------- delegation, AMC (docs/profile.md §2.6, §2.7)


def test_delegation_through_the_binding(verifier: Verifier, pki: Pki) -> None:
    def run(cti: int, *, signer: Key | None = None, **changes: Any) -> _native.VerificationResult:
        data = pki.presentation(cti, signer=signer or pki.delegate, **changes)
        return verifier.verify_batch([Scan(data, "desk-1")], NOW)[0]

    ok = run(60, dlg=pki.delegation())
    assert (ok.reason, ok.delegation_label) == ("OK", "Mamie")
    unlabelled = run(61, dlg=_without_who(pki))
    assert (unlabelled.reason, unlabelled.delegation_label) == ("OK", "")
    child = run(62, dlg=pki.delegation(), ben=2)
    assert child.accepted and child.person is not None and child.person.rank == 2
    assert _accepted(verifier, pki, 63).delegation_label is None
    holder = run(64, signer=pki.device, dlg=pki.delegation())
    assert (holder.reason, holder.detail) == (
        "DELEGATION_INVALID",
        "presentation signed by the holder, not the delegate",
    )
    assert holder.delegation_label is None
    revoked = run(65, dlg=pki.delegation(status_index=1))
    assert (revoked.reason, revoked.detail) == ("DELEGATION_INVALID", "delegation revoked")
    assert run(66, dlg=pki.delegation(), use="dmp").reason == "DELEGATION_INVALID"
    assert (
        run(67, dlg=pki.delegation(apcv_changes={"for": "cred-other"})).reason
        == "DELEGATION_INVALID"
    )
    assert run(68, dlg=b"\xa0").reason == "MALFORMED"


def _without_who(pki: Pki) -> bytes:
    claims = cbor2.loads(cbor2.loads(pki.delegation()).value[2])
    del claims["apcv"]["who"]
    return sign1(pki.amo, cbor2.dumps(claims))


def test_amc_coverage_through_the_binding(verifier: Verifier, pki: Pki) -> None:
    good = pki.amc_attestation([HOLDER_INS])
    result = _accepted(
        verifier,
        pki,
        70,
        amc=[
            good,
            pki.amc_attestation([HOLDER_INS], exp=NOW - DAY),
            pki.amc_attestation([CORSICAN_INS]),
            pki.amc_attestation([HOLDER_INS], signer=Key()),
            b"junk",
        ],
    )
    valid, expired, other_person, unknown, junk = result.amc
    assert (valid.valid, valid.reason, valid.detail) == (True, "OK", "")
    assert (valid.organisation, valid.amc_number, valid.contract) == (
        AMC_ISS,
        "012345678",
        "contract-42",
    )
    assert (valid.third_party_payment, valid.domains, valid.expires_at) == (
        True,
        ["PHAR"],
        NOW + YEAR,
    )
    valid.domains.append("X")  # a copy: the result does not change
    assert valid.domains == ["PHAR"]
    assert (expired.valid, expired.reason, expired.expires_at) == (
        False,
        "ATTESTATION_EXPIRED",
        NOW - DAY,
    )
    for empty, reason in (
        (other_person, "NOT_APPLICABLE"),
        (unknown, "UNKNOWN_ISSUER"),
        (junk, "MALFORMED"),
    ):
        assert (empty.valid, empty.reason) == (False, reason)
        assert (empty.organisation, empty.amc_number, empty.contract) == (None, None, None)
        assert (empty.third_party_payment, empty.domains, empty.expires_at) == (None, [], None)
    assert repr(valid) == "<AmcCoverage valid=True reason=OK>"
    for secret in ("contract-42", "012345678", AMC_ISS, "PHAR"):
        assert secret not in repr(valid)
    # The child (rank 2) is presented: the holder's attestation does not apply to them.
    child = _accepted(verifier, pki, 71, ben=2, amc=[good])
    assert child.amc[0].reason == "NOT_APPLICABLE"
    # Beyond the cap of 8 attestations the presentation is MALFORMED; a rejection has none.
    (r,) = verifier.verify_batch([Scan(pki.presentation(72, amc=[good] * 9), "desk-1")], NOW)
    assert (r.reason, r.detail, r.amc) == (
        "MALFORMED",
        "presentation: too many AMC attestations",
        [],
    )
    assert _accepted(verifier, pki, 73).amc == []


# ------------------------------------------------------------------ answer recovery


def test_answer_records_are_compact_and_rebuild_the_answer(verifier: Verifier, pki: Pki) -> None:
    """What answer recovery keeps of an answer (docs/operations.md "Answer recovery"): 26
    bytes for an accepted presentation without AMC, 2 more per AMC outcome plus its phrase;
    no personal data; the person and coverage rebuilt from the resent presentation, with
    nothing judged again."""
    keys = _native.AnswerKeys(b"0123456789abcdef")
    presentation = pki.presentation(
        80, amc=[pki.amc_attestation([HOLDER_INS]), pki.amc_attestation([CORSICAN_INS])]
    )
    item = Scan(presentation, "desk-1")
    (result,) = verifier.verify_batch([item], NOW)
    assert result.accepted and [a.reason for a in result.amc] == ["OK", "NOT_APPLICABLE"]
    record = keys.record(item, result, NOW)
    detail = result.amc[1].detail.encode()
    assert len(record) == 26 + 2 + 2 + len(detail)
    for secret in (HOLDER_INS, "contract-42", "012345678", AMC_ISS, b"desk-1"):
        assert (secret if isinstance(secret, bytes) else secret.encode()) not in record
    (plain,) = verifier.verify_batch([Scan(pki.presentation(81), "desk-1")], NOW)
    assert len(keys.record(Scan(pki.presentation(81), "desk-1"), plain, NOW)) == 26
    again = keys.recover(item, record)
    assert again is not None
    assert (again.resent, again.verified_at, again.reason, again.duplicate) == (
        True,
        NOW,
        "OK",
        False,
    )
    assert result.resent is False and result.verified_at is None
    assert again.person is not None and result.person is not None
    assert (again.person.ins, again.person.birth_name) == (
        result.person.ins,
        result.person.birth_name,
    )
    assert [(a.reason, a.detail, a.contract) for a in again.amc] == [
        (a.reason, a.detail, a.contract) for a in result.amc
    ]
    assert (again.issuer, again.use, again.credential_id) == (
        result.issuer,
        result.use,
        result.credential_id,
    )
    assert repr(again) == "<VerificationResult accepted=True reason=OK duplicate=False resent=True>"
    # Another presentation under the same key: not this record's (the caller refuses it).
    assert keys.recover(Scan(pki.presentation(82), "desk-1"), record) is None
    # Another key cannot read the digest; a damaged record is an error.
    assert _native.AnswerKeys(b"another key 0123").recover(item, record) is None
    with pytest.raises(ValueError, match="unreadable"):
        keys.recover(item, record[:-1])
    assert len(keys.key("caller", "desk-1", "r-1")) == 16
    assert keys.key("caller", "desk-1", "r-1") != keys.key("caller", "desk-2", "r-1")


def test_memory_answer_store_keeps_the_first_answer_and_drops_the_oldest() -> None:
    store = _native.MemoryAnswerStore(2)
    a, b, c = (bytes([n]) * 16 for n in (1, 2, 3))
    assert store.insert_or_get(a, b"first", NOW + 10, NOW) is None
    assert store.insert_or_get(a, b"second", NOW + 10, NOW) == b"first"
    assert store.get_many([a, b], NOW) == [b"first", None]
    assert store.insert_or_get(b, b"x", NOW + 20, NOW) is None
    assert store.insert_or_get(c, b"y", NOW + 30, NOW) is None  # full: the oldest goes
    assert (len(store), store.evicted, store.max_entries) == (2, 1, 2)
    assert store.get_many([a, b, c], NOW) == [None, b"x", b"y"]
    assert store.get_many([b], NOW + 21) == [None]  # expired
    with pytest.raises(ValueError):
        store.get_many([b"short"], NOW)


# ------------------------------------------------------------------ external replay store


def test_external_replay_store_results_are_pending_until_settled(
    pki: Pki, trust_list: TrustList
) -> None:
    status = StatusList.verify(pki.status_list({1: 1, 2: 2}), trust_list, NOW)
    external = Verifier(trust_list, [status], Policy(clock_skew=60), None)
    assert external.external_replay and "replay=external" in repr(external)
    assert not Verifier(trust_list, [status], Policy(), MemoryReplayStore()).external_replay
    presentation = pki.presentation(30)
    pending, junk = external.verify_batch([Scan(presentation, "desk-1"), Scan(b"x", "d")], NOW)
    # A rejection by steps 1-8 is final; the store is not asked.
    assert (junk.reason, junk.replay_pending, junk.replay_key) == ("MALFORMED", False, None)
    with pytest.raises(ValueError, match="not pending"):
        junk.with_replay_outcome("new")
    # Pending reads as REPLAY_UNAVAILABLE without the person: never settled = fail closed.
    assert pending.replay_pending and not pending.accepted
    assert (pending.reason, pending.detail) == ("REPLAY_UNAVAILABLE", "replay check pending")
    assert pending.person is None and pending.amc == [] and pending.delegation_label is None
    assert pending.credential_id == "cred-0001" and pending.use == "care"
    assert pending.replay_key == (30).to_bytes(16, "big")  # the presentation's cti
    # Kept until the presentation's exp + skew + max_scan_delay (docs/profile.md §7.4, §7.5).
    assert pending.replay_expires_at == NOW + 110 + 60
    assert "replay_pending=True" in repr(pending)
    # The same pending result settled each way; the pending one is unchanged (frozen).
    new = pending.with_replay_outcome("new")
    assert (new.accepted, new.reason, new.duplicate) == (True, "OK", False)
    assert not new.replay_pending
    assert new.person is not None and new.person.ins == HOLDER_INS and new.replay_key is None
    same = pending.with_replay_outcome("same_reader")
    assert (same.accepted, same.duplicate, same.detail) == (
        True,
        True,
        "already accepted for this reader",
    )
    other = pending.with_replay_outcome("other_reader")
    assert (other.accepted, other.reason, other.person) == (False, "REPLAYED", None)
    down = pending.with_replay_outcome("unavailable")
    assert (down.reason, down.detail, down.person) == (
        "REPLAY_UNAVAILABLE",
        "replay store unavailable",
        None,
    )
    assert not down.replay_unchecked
    unchecked = pending.with_replay_outcome("unchecked")
    assert unchecked.accepted and unchecked.replay_unchecked and unchecked.person is not None
    assert unchecked.detail == "accepted without replay check: replay store unavailable"
    assert "replay_unchecked=True" in repr(unchecked)
    assert pending.replay_pending and not pending.accepted
    with pytest.raises(ValueError, match="outcome must be"):
        pending.with_replay_outcome("maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not pending"):
        new.with_replay_outcome("new")
    # Derived snapshots keep the external store; nothing was recorded in-process.
    again = external.with_status_lists([status]).verify_batch([Scan(presentation, "desk-2")], NOW)
    assert again[0].replay_pending


def test_replay_messages_match_the_embedded_store(pki: Pki, trust_list: TrustList) -> None:
    status = StatusList.verify(pki.status_list({}), trust_list, NOW)
    embedded = Verifier(trust_list, [status], Policy(), MemoryReplayStore())
    external = Verifier(trust_list, [status], Policy(), None)
    presentation = pki.presentation(31)
    settled = []
    steps: list[tuple[str, Literal["new", "same_reader", "other_reader"]]] = [
        ("r1", "new"),
        ("r1", "same_reader"),
        ("r2", "other_reader"),
    ]
    for reader, outcome in steps:
        (expected,) = embedded.verify_batch([Scan(presentation, reader)], NOW)
        (pending,) = external.verify_batch([Scan(presentation, reader)], NOW)
        got = pending.with_replay_outcome(outcome)
        settled.append(got.reason)
        assert (got.accepted, got.reason, got.detail, got.duplicate) == (
            expected.accepted,
            expected.reason,
            expected.detail,
            expected.duplicate,
        )
    assert settled == ["OK", "OK", "REPLAYED"]
