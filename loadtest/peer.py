"""A plain-Python verifier of the open profile, as a Python team would write it (cbor2 +
cryptography + base45): the peer the core is measured against in ``make bench``
(loadtest/core_bench.py).

It follows docs/profile.md §7.2 for a presentation of a credential, with the same reason codes:
decode (QR text or NFC bytes, with the §4.4 limits), parse (COSE_Sign1, protected ``alg`` and
``kid``, the claims with their types), trust (the credential's ``kid`` selects a usable ``"amo"``
key, ``alg`` and ``iss`` agree), the identity rules of §5, the times of §7.3 with the clock skew,
the status of §6.6–6.8, **both signatures** (the issuer's over the credential, the device's over
the presentation, ES256 or Ed25519 per the trust list), the context of step 8 and replay (§7.4,
in a dict). The trust list and the status lists are verified at load under the anchor and the
``"status"`` keys. Delegations and AMC attestations are out of its scope (a presentation
carrying one is refused as MALFORMED): the benchmark corpus has none. It is a yardstick, not a
second implementation: the core is the verifier of this project.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import base45  # type: ignore[import-untyped]  # no stubs or py.typed upstream
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["PeerVerifier", "Rejected"]

ES256, EDDSA = -7, -8
QR_PREFIX = "APCV1:"
MAX_QR_CHARS, MAX_NFC_BYTES, MAX_INFLATED = 4296, 16384, 16384
MAX_LIFETIME = 300
USES = frozenset({"care", "dmp", "dp", "auth"})
OIDS = {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9"}
TEST_OIDS = {"1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
_DATE = re.compile(r"\d{4}-(0\d|1[0-2])-([0-2]\d|3[01])\Z")
_DIGITS = re.compile(r"\d+\Z")
_POB = re.compile(r"[0-9AB]{5}\Z")

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class Rejected(Exception):
    """A presentation that is not accepted, with its reason code (docs/profile.md §8)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _public_key(cose_key: Mapping[int, Any]) -> PublicKey:
    """A COSE_Key (EC2 P-256 or OKP Ed25519) as a cryptography public key."""
    if cose_key.get(1) == 2 and cose_key.get(-1) == 1:
        x, y = cose_key[-2], cose_key[-3]
        if not (isinstance(x, bytes) and isinstance(y, bytes) and len(x) == len(y) == 32):
            raise ValueError("bad EC2 key")
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    if cose_key.get(1) == 1 and cose_key.get(-1) == 6:
        return ed25519.Ed25519PublicKey.from_public_bytes(cose_key[-2])
    raise ValueError("unsupported key")


def _signature_ok(key: PublicKey, alg: int, data: bytes, signature: bytes) -> bool:
    try:
        if alg == ES256 and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
            return True
        if alg == EDDSA and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
    except InvalidSignature:
        return False
    return False


@dataclass
class _Sign1:
    protected: bytes
    header: Mapping[Any, Any]
    payload: bytes
    signature: bytes

    @classmethod
    def parse(cls, data: bytes) -> _Sign1:
        obj = cbor2.loads(data)
        if isinstance(obj, cbor2.CBORTag):
            if obj.tag != 18:
                raise ValueError("unexpected tag")
            obj = obj.value
        if not (isinstance(obj, list | tuple) and len(obj) == 4):
            raise ValueError("not a COSE_Sign1")
        protected, unprotected, payload, signature = obj
        if not (
            isinstance(protected, bytes)
            and isinstance(unprotected, Mapping)
            and isinstance(payload, bytes)
            and isinstance(signature, bytes)
        ):
            raise ValueError("not a COSE_Sign1")
        header = cbor2.loads(protected) if protected else {}
        if not isinstance(header, Mapping) or not isinstance(header.get(1), int):
            raise ValueError("alg not in protected header")
        return cls(protected, header, payload, signature)

    @property
    def alg(self) -> int:
        return int(self.header[1])

    def verifies(self, key: PublicKey, alg: int) -> bool:
        tbs = cbor2.dumps(["Signature1", self.protected, b"", self.payload])
        return _signature_ok(key, alg, tbs, self.signature)


@dataclass(frozen=True)
class _TrustedKey:
    key: PublicKey
    alg: int
    role: str
    iss: str
    nbf: int
    exp: int


@dataclass(frozen=True)
class _StatusList:
    bits: int
    packed: bytes
    exp: int


def _nir_key_ok(m: str) -> bool:
    if len(m) != 15 or not m.isascii():
        return False
    number = m[:5] + {"2A": "19", "2B": "18"}.get(m[5:7], m[5:7]) + m[7:13]
    if not (_DIGITS.match(number) and _DIGITS.match(m[13:])):
        return False
    return 97 - int(number) % 97 == int(m[13:])


class PeerVerifier:
    """Verifies presentations against one trust list and its status lists."""

    def __init__(
        self,
        anchor: PublicKey,
        trust_list: bytes,
        status_lists: list[bytes],
        *,
        now: int,
        allow_test_identities: bool = False,
        clock_skew: int = 60,
        status_grace: int = 0,
    ) -> None:
        self.allow_test_identities = allow_test_identities
        self.skew = clock_skew
        self.grace = status_grace
        signed = _Sign1.parse(trust_list)
        if not signed.verifies(anchor, signed.alg):
            raise ValueError("bad trust list signature")
        tl = cbor2.loads(signed.payload)
        if tl["v"] != 1 or now > tl["exp"]:
            raise ValueError("trust list refused")
        self.keys: dict[bytes, _TrustedKey] = {}
        for k in tl["keys"]:
            self.keys[k["kid"]] = _TrustedKey(
                _public_key(k["key"]), k["key"][3], k["role"], k["iss"], k["nbf"], k["exp"]
            )
        self.status: dict[str, _StatusList] = {}
        for data in status_lists:
            s = _Sign1.parse(data)
            signer = self._key(s.header.get(4), "status", now)
            if signer is None or s.alg != signer.alg or not s.verifies(signer.key, s.alg):
                raise ValueError("bad status list signature")
            claims = cbor2.loads(s.payload)
            lst = claims[65533]
            if now > claims[4]:
                raise ValueError("status list expired")
            self.status[claims[2]] = _StatusList(
                lst["bits"], zlib.decompress(lst["lst"]), claims[4]
            )
        self.replay: dict[bytes, tuple[str, int]] = {}

    def _key(self, kid: Any, role: str, now: int) -> _TrustedKey | None:
        key = self.keys.get(kid) if isinstance(kid, bytes) else None
        if key is None or key.role != role or not key.nbf <= now <= key.exp:
            return None
        return key

    def verify(self, scan: bytes | str, reader_id: str, now: int) -> dict[str, Any]:
        """The presented person's claims, or :class:`Rejected` with the reason code."""
        # 1. Decode.
        if isinstance(scan, str):
            if len(scan) > MAX_QR_CHARS or not scan.startswith(QR_PREFIX):
                raise Rejected("MALFORMED")
            try:
                inflater = zlib.decompressobj()
                data = inflater.decompress(
                    base45.b45decode(scan[len(QR_PREFIX) :]), MAX_INFLATED + 1
                )
            except (ValueError, zlib.error) as e:
                raise Rejected("MALFORMED") from e
            if len(data) > MAX_INFLATED or inflater.unconsumed_tail or not inflater.eof:
                raise Rejected("MALFORMED")
        else:
            if len(scan) > MAX_NFC_BYTES:
                raise Rejected("MALFORMED")
            data = scan
        # 2. Parse.
        try:
            pres = _Sign1.parse(data)
            p = cbor2.loads(pres.payload)
            cred = _Sign1.parse(p["cred"])
            c = cbor2.loads(cred.payload)
            apcv = c["apcv"]
            if apcv["v"] != 1:
                raise Rejected("UNSUPPORTED_VERSION")
            iat, exp, cti, ben, use = p[6], p[4], p[7], p["ben"], p["use"]
            if not (isinstance(cti, bytes) and len(cti) == 16) or use not in USES:
                raise Rejected("MALFORMED")
            if "dlg" in p or "amc" in p:
                raise Rejected("MALFORMED")  # out of the peer's scope
            kid = cred.header.get(4)
            device_cose = c[8][1]
            device_key = _public_key(device_cose)
            persons = [(0, apcv)] + [(b["rank"], b) for b in apcv.get("ben", [])]
        except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as e:
            raise Rejected("MALFORMED") from e
        # 3. Trust.
        key = self._key(kid, "amo", now)
        if key is None:
            raise Rejected("UNKNOWN_ISSUER")
        if cred.alg != key.alg or pres.alg != ES256 or device_cose.get(3, ES256) != ES256:
            raise Rejected("ALG_MISMATCH")
        if c[1] != key.iss:
            raise Rejected("ISSUER_MISMATCH")
        # 4. Claims (§5) of the holder and the beneficiaries.
        ranks = [rank for rank, _ in persons[1:]]
        if any(r < 1 for r in ranks) or len(set(ranks)) != len(ranks):
            raise Rejected("CLAIMS_INVALID")
        for _, person in persons:
            self._check_person(person)
        # 5. Times (no delayed scans in this peer: freshness at now).
        if c[5] > now + self.skew:
            raise Rejected("CREDENTIAL_NOT_YET_VALID")
        if c[4] < now - self.skew:
            raise Rejected("CREDENTIAL_EXPIRED")
        if iat > now + self.skew:
            raise Rejected("PRESENTATION_NOT_YET_VALID")
        if exp < now - self.skew:
            raise Rejected("PRESENTATION_EXPIRED")
        if not 0 <= exp - iat <= MAX_LIFETIME:
            raise Rejected("PRESENTATION_LIFETIME_EXCEEDED")
        # 6. Status.
        ref = c[65535]["status_list"]
        lst = self.status.get(ref["uri"])
        if lst is None or now > lst.exp + self.grace:
            raise Rejected("STATUS_UNAVAILABLE")
        bit = ref["idx"] * lst.bits
        if bit // 8 >= len(lst.packed):
            raise Rejected("STATUS_UNAVAILABLE")
        status = (lst.packed[bit // 8] >> (bit % 8)) & ((1 << lst.bits) - 1)
        if status == 2:
            raise Rejected("SUSPENDED")
        if status != 0:
            raise Rejected("REVOKED")
        # 7. Signatures: the issuer's, then the device's.
        if not cred.verifies(key.key, key.alg):
            raise Rejected("BAD_ISSUER_SIGNATURE")
        if not pres.verifies(device_key, ES256):
            raise Rejected("BAD_DEVICE_SIGNATURE")
        # 8. Context.
        if 3 in p and p[3] != reader_id:
            raise Rejected("AUDIENCE_MISMATCH")
        if "nonce" in p:
            raise Rejected("NONCE_MISMATCH")
        presented = dict(persons).get(ben)
        if presented is None:
            raise Rejected("UNKNOWN_BENEFICIARY")
        # 9. Replay.
        held = self.replay.get(cti)
        if held is not None and held[1] >= now:
            if held[0] != reader_id:
                raise Rejected("REPLAYED")
        else:
            self.replay[cti] = (reader_id, exp + self.skew)
        return {"rank": ben, "ins": presented["ins"]["m"], "id": presented["id"], "use": use}

    def _check_person(self, person: Mapping[str, Any]) -> None:
        try:
            ins, ident, amo = person["ins"], person["id"], person["amo"]
            oid = ins["oid"]
            ok = (
                _nir_key_ok(ins["m"])
                and (oid in OIDS or (self.allow_test_identities and oid in TEST_OIDS))
                and ident["sex"] in ("M", "F")
                and _DATE.match(ident["dob"]) is not None
                and _POB.match(ident["pob"]) is not None
                and isinstance(ident["bn"], str)
                and isinstance(ident["gn"], str)
                and all(
                    isinstance(amo[k], str) and len(amo[k]) == n and amo[k].isdigit()
                    for k, n in (("reg", 2), ("caisse", 3), ("centre", 4))
                )
                and _DATE.match(amo["from"]) is not None
                and _DATE.match(amo["to"]) is not None
            )
        except (KeyError, TypeError) as e:
            raise Rejected("MALFORMED") from e
        if not ok:
            raise Rejected("CLAIMS_INVALID")
