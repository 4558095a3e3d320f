"""Issuer toolkit for the open ApCV profile v1.

Keys, credentials, presentations, QR text, trust lists and status lists, plus a ready-made
demonstration PKI. Used by the tests, the demo, load-test corpora and integrators' test benches.
Pure Python on purpose (``cryptography`` + ``cbor2`` + ``base45``): it must never depend on the
native verifier it is used to test.

The toolkit does not police claim values (a wrong NIR key, an unknown ``use``, a lifetime over 300 s
are all emitted as given) so that test benches can build every kind of invalid object; the verifier
is the judge. It only refuses what it cannot encode or sign.

Section references (§N) are to ``docs/profile.md``, which pins the wire format byte for byte.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import secrets
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import base45  # type: ignore[import-untyped]  # no stubs or py.typed upstream
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "AMC_ROLE",
    "AMO_ROLE",
    "INS_DEMO_OID",
    "INS_NIA_OID",
    "INS_NIR_OID",
    "INS_TEST_OID",
    "QR_PREFIX",
    "STATUS_ROLE",
    "Alg",
    "AmoRights",
    "Beneficiary",
    "DemoPKI",
    "Identity",
    "Person",
    "Sign1",
    "SigningKey",
    "StatusListBuilder",
    "TrustEntry",
    "VerifyingKey",
    "cose_key_from_public_pem",
    "deterministic_cbor",
    "issue_credential",
    "make_amc_attestation",
    "make_delegation",
    "make_presentation",
    "make_status_list",
    "make_trust_list",
    "matricule",
    "nir_key",
    "nir_key_is_valid",
    "parse_sign1",
    "presentation_from_qr_text",
    "qr_text",
    "sign1",
    "tamper_signature",
    "thumbprint",
    "verify_sign1",
]

# --- Constants ------------------------------------------------------------------------------------

#: INS object identifiers (profile §2.4 "ins"). Test and demonstration OIDs are accepted by a
#: verifier only when its policy allows test identities.
INS_NIR_OID = "1.2.250.1.213.1.4.8"
INS_NIA_OID = "1.2.250.1.213.1.4.9"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
INS_DEMO_OID = "1.2.250.1.213.1.4.11"

#: Trust-list roles (profile §2.8).
AMO_ROLE = "amo"
AMC_ROLE = "amc"
STATUS_ROLE = "status"

#: QR payload prefix (profile "Encodings"): ``"APCV1:" + base45(zlib(presentation))``.
QR_PREFIX = "APCV1:"

#: Default presentation lifetime; the verifier rejects anything over 300 s (profile §2.5).
DEFAULT_PRESENTATION_LIFETIME = 120

#: Length of ``cti``, the presentation id and replay key (profile §2.5).
CTI_LENGTH = 16

#: ``kid`` is the first 8 bytes of the RFC 9679 thumbprint (profile "Signed headers").
KID_LENGTH = 8

#: Profile data version carried in ``"apcv": {"v": 1}`` (profile §2.4).
PROFILE_VERSION = 1

#: Token Status List media type, protected header ``typ`` (label 16, RFC 9596).
STATUS_LIST_TYP = "application/statuslist+cwt"

# COSE labels (RFC 9052 §3.1, RFC 9596 for typ).
_HEADER_ALG = 1
_HEADER_KID = 4
_HEADER_TYP = 16
_COSE_SIGN1_TAG = 18  # RFC 9052 §4.2

# COSE_Key labels and values (RFC 9052 §7, RFC 9053 §7).
_KEY_KTY = 1
_KEY_ALG = 3
_KEY_CRV = -1
_KEY_X = -2
_KEY_Y = -3
_KTY_OKP = 1
_KTY_EC2 = 2
_CRV_P256 = 1
_CRV_ED25519 = 6

# CWT claim keys (RFC 8392 §4; 8 = cnf RFC 8747; 65535 = status, 65533/65534 Token Status List).
_CLAIM_ISS = 1
_CLAIM_SUB = 2
_CLAIM_AUD = 3
_CLAIM_EXP = 4
_CLAIM_NBF = 5
_CLAIM_IAT = 6
_CLAIM_CTI = 7
_CLAIM_CNF = 8
_CNF_COSE_KEY = 1  # RFC 8747 §3.1
_CLAIM_STATUS = 65535
_CLAIM_STATUS_LIST = 65533
_CLAIM_TTL = 65534


class Alg(enum.IntEnum):
    """COSE algorithms the profile allows (RFC 9053 §2.1, §2.2; profile "Signed headers")."""

    ES256 = -7
    EDDSA = -8


# --- Deterministic CBOR ---------------------------------------------------------------------------


def deterministic_cbor(value: Any) -> bytes:
    """Encode ``value`` with RFC 8949 §4.2.1 core deterministic encoding.

    cbor2 already emits definite lengths and shortest integer/length forms. What it gets wrong is
    the key order: ``canonical=True`` implements the *old* RFC 7049 §3.9 "canonical CBOR" order
    (shorter encoded key first, then bytewise), whereas RFC 8949 §4.2.1 sorts by the plain bytewise
    lexicographic order of the encoded keys. The two differ e.g. for ``{"a": 0, 1000: 0}``:
    ``61 61`` sorts before ``19 03 e8`` by length, after it bytewise. So we rebuild every map in
    bytewise order ourselves (recursively) and let cbor2 keep insertion order (``canonical=False``).

    Floats are refused: the profile has none, and deterministic floats need shortest-form logic.
    """
    return cbor2.dumps(_in_deterministic_order(value), canonical=False)


def _in_deterministic_order(value: Any) -> Any:
    if isinstance(value, Mapping):
        encoded_items = [
            (deterministic_cbor(key), _in_deterministic_order(item)) for key, item in value.items()
        ]
        ordered = sorted(encoded_items, key=lambda pair: pair[0])
        # Rebuild from the encoded keys so nested key maps are themselves in deterministic order.
        return {cbor2.loads(encoded_key): item for encoded_key, item in ordered}
    if isinstance(value, list | tuple):
        return [_in_deterministic_order(item) for item in value]
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _in_deterministic_order(value.value))
    if isinstance(value, float):
        raise TypeError("floats are not part of the ApCV profile and are not encoded")
    return value


# --- Keys -----------------------------------------------------------------------------------------

_PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def thumbprint(cose_key: Mapping[int, Any] | bytes) -> bytes:
    """RFC 9679 COSE_Key thumbprint: SHA-256 of the deterministic encoding of required parameters.

    Required parameters: EC2 ``1, -1, -2, -3``; OKP ``1, -1, -2`` (RFC 9679 §4). Everything else
    (``alg``, ``kid``, ...) is left out, so a key with or without ``alg`` has the same thumbprint.
    """
    key_map = cbor2.loads(cose_key) if isinstance(cose_key, bytes) else cose_key
    kty = key_map[_KEY_KTY]
    required: tuple[int, ...]
    if kty == _KTY_EC2:
        required = (_KEY_KTY, _KEY_CRV, _KEY_X, _KEY_Y)
    elif kty == _KTY_OKP:
        required = (_KEY_KTY, _KEY_CRV, _KEY_X)
    else:
        raise ValueError(f"unsupported COSE_Key kty {kty!r}")
    return hashlib.sha256(
        deterministic_cbor({label: key_map[label] for label in required})
    ).digest()


@dataclass(frozen=True)
class VerifyingKey:
    """A public key: ES256 on P-256 or EdDSA on Ed25519 (profile "Signed headers")."""

    alg: Alg
    public_key: _PublicKey

    @classmethod
    def from_cryptography(cls, public_key: _PublicKey) -> VerifyingKey:
        """Wrap a ``cryptography`` public key, taking the algorithm from the key type."""
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            return cls(Alg.EDDSA, public_key)
        if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
            public_key.curve, ec.SECP256R1
        ):
            return cls(Alg.ES256, public_key)
        raise ValueError("only P-256 (ES256) and Ed25519 (EdDSA) keys are used by the profile")

    @classmethod
    def from_pem(cls, pem: bytes | str) -> VerifyingKey:
        """Load a SubjectPublicKeyInfo PEM public key."""
        data = pem.encode() if isinstance(pem, str) else pem
        public_key = serialization.load_pem_public_key(data)
        if not isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise ValueError("only P-256 (ES256) and Ed25519 (EdDSA) keys are used by the profile")
        return cls.from_cryptography(public_key)

    @classmethod
    def from_cose_key(cls, cose_key: Mapping[int, Any] | bytes) -> VerifyingKey:
        """Read an EC2 P-256 or OKP Ed25519 COSE_Key (RFC 9052 §7, RFC 9053 §7.1-7.2)."""
        key_map = cbor2.loads(cose_key) if isinstance(cose_key, bytes) else cose_key
        kty, crv = key_map.get(_KEY_KTY), key_map.get(_KEY_CRV)
        if kty == _KTY_EC2 and crv == _CRV_P256:
            point = b"\x04" + bytes(key_map[_KEY_X]) + bytes(key_map[_KEY_Y])
            key = cls(
                Alg.ES256, ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            )
        elif kty == _KTY_OKP and crv == _CRV_ED25519:
            key = cls(Alg.EDDSA, ed25519.Ed25519PublicKey.from_public_bytes(key_map[_KEY_X]))
        else:
            raise ValueError("COSE_Key is neither EC2 P-256 nor OKP Ed25519")
        if _KEY_ALG in key_map and key_map[_KEY_ALG] != key.alg:
            raise ValueError("COSE_Key alg does not match its key type")
        return key

    def cose_key(self, include_alg: bool = True) -> dict[int, Any]:
        """COSE_Key: EC2 ``{1:2, -1:1, -2:x, -3:y}`` or OKP ``{1:1, -1:6, -2:x}``, + alg (3)."""
        if isinstance(self.public_key, ed25519.Ed25519PublicKey):
            raw = self.public_key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            key_map: dict[int, Any] = {_KEY_KTY: _KTY_OKP, _KEY_CRV: _CRV_ED25519, _KEY_X: raw}
        else:
            numbers = self.public_key.public_numbers()
            key_map = {
                _KEY_KTY: _KTY_EC2,
                _KEY_CRV: _CRV_P256,
                _KEY_X: numbers.x.to_bytes(32, "big"),
                _KEY_Y: numbers.y.to_bytes(32, "big"),
            }
        if include_alg:
            key_map[_KEY_ALG] = int(self.alg)
        return key_map

    def cose_key_bytes(self, include_alg: bool = True) -> bytes:
        """The COSE_Key, deterministically encoded (what trust anchors are configured with)."""
        return deterministic_cbor(self.cose_key(include_alg))

    @property
    def thumbprint(self) -> bytes:
        """RFC 9679 thumbprint (32 bytes)."""
        return thumbprint(self.cose_key(include_alg=False))

    @property
    def kid(self) -> bytes:
        """First 8 bytes of the RFC 9679 thumbprint (profile "Signed headers")."""
        return self.thumbprint[:KID_LENGTH]

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Check a raw signature (ES256 r‖s 64 bytes, RFC 9053 §2.1; Ed25519 64 bytes)."""
        try:
            if isinstance(self.public_key, ed25519.Ed25519PublicKey):
                self.public_key.verify(signature, data)
            else:
                if len(signature) != 64:  # DER or truncated: never valid in COSE (RFC 9053 §2.1)
                    return False
                r = int.from_bytes(signature[:32], "big")
                s = int.from_bytes(signature[32:], "big")
                self.public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private signing key: ES256 (P-256) or EdDSA (Ed25519) (profile "Signed headers").

    Issuer keys may use either algorithm; device keys are ES256 only (profile §2.5: the iOS Secure
    Enclave offers P-256 only).
    """

    alg: Alg
    private_key: _PrivateKey

    @classmethod
    def generate(cls, alg: Alg | int = Alg.ES256) -> SigningKey:
        """A fresh random key for ``alg`` (``Alg.ES256`` / -7 or ``Alg.EDDSA`` / -8)."""
        alg = Alg(alg)
        if alg is Alg.ES256:
            return cls(alg, ec.generate_private_key(ec.SECP256R1()))
        return cls(alg, ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes | str) -> SigningKey:
        """Load an unencrypted PKCS#8 (or traditional) PEM private key."""
        data = pem.encode() if isinstance(pem, str) else pem
        private_key = serialization.load_pem_private_key(data, password=None)
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            return cls(Alg.EDDSA, private_key)
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        ):
            return cls(Alg.ES256, private_key)
        raise ValueError("only P-256 (ES256) and Ed25519 (EdDSA) keys are used by the profile")

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (test material only: these keys protect nothing real)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> VerifyingKey:
        """The public half."""
        return VerifyingKey(self.alg, self.private_key.public_key())

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public half."""
        return self.public_key.public_pem()

    def cose_key(self, include_alg: bool = True) -> dict[int, Any]:
        """COSE_Key map of the public half (see :meth:`VerifyingKey.cose_key`)."""
        return self.public_key.cose_key(include_alg)

    def cose_key_bytes(self, include_alg: bool = True) -> bytes:
        """Deterministically encoded COSE_Key of the public half."""
        return self.public_key.cose_key_bytes(include_alg)

    @property
    def kid(self) -> bytes:
        """First 8 bytes of the RFC 9679 thumbprint of the public half."""
        return self.public_key.kid

    def sign(self, data: bytes) -> bytes:
        """Raw signature: ES256 r‖s (2 × 32 bytes big-endian, RFC 9053 §2.1; never DER), Ed25519."""
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        r, s = decode_dss_signature(self.private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _as_verifying_key(key: SigningKey | VerifyingKey) -> VerifyingKey:
    return key.public_key if isinstance(key, SigningKey) else key


def cose_key_from_public_pem(pem: bytes | str, include_alg: bool = True) -> bytes:
    """PEM public key → deterministic COSE_Key bytes (the form trust anchors are configured in)."""
    return VerifyingKey.from_pem(pem).cose_key_bytes(include_alg)


# --- COSE_Sign1 -----------------------------------------------------------------------------------


def _sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    # RFC 9052 §4.4: ["Signature1", body_protected, external_aad, payload]; external_aad is
    # empty in the profile.
    return deterministic_cbor(["Signature1", protected, external_aad, payload])


def sign1(
    key: SigningKey,
    payload: Mapping[Any, Any] | bytes,
    *,
    protected_extra: Mapping[int, Any] | None = None,
    kid: bool = True,
) -> bytes:
    """Make a tagged (18) COSE_Sign1 (RFC 9052 §4.2) with an empty unprotected map.

    Protected header: ``{1: alg, 4: kid}`` for issuer-signed objects (``kid=True``), ``{1: alg}``
    for presentations (``kid=False``; profile §2.5), plus ``protected_extra``. A mapping payload is
    encoded deterministically; bytes are embedded as they are.
    """
    protected_map: dict[int, Any] = {_HEADER_ALG: int(key.alg)}
    if kid:
        protected_map[_HEADER_KID] = key.kid
    if protected_extra:
        protected_map.update(protected_extra)
    protected = deterministic_cbor(protected_map)
    payload_bytes = payload if isinstance(payload, bytes) else deterministic_cbor(payload)
    signature = key.sign(_sig_structure(protected, payload_bytes))
    return deterministic_cbor(
        cbor2.CBORTag(_COSE_SIGN1_TAG, [protected, {}, payload_bytes, signature])
    )


@dataclass(frozen=True)
class Sign1:
    """A decoded COSE_Sign1 (RFC 9052 §4.2); ``protected_bytes`` are kept exactly as received."""

    protected_bytes: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    @property
    def alg(self) -> int | None:
        """The protected ``alg`` (label 1), or None."""
        return self.protected.get(_HEADER_ALG)

    @property
    def kid(self) -> bytes | None:
        """The protected ``kid`` (label 4), or None."""
        return self.protected.get(_HEADER_KID)

    def claims(self) -> Any:
        """The payload decoded as CBOR (a CWT claims map for every profile object)."""
        return cbor2.loads(self.payload)

    def signed_bytes(self) -> bytes:
        """The Sig_structure the signature covers (RFC 9052 §4.4)."""
        return _sig_structure(self.protected_bytes, self.payload)


def parse_sign1(data: bytes) -> Sign1:
    """Decode a tagged or untagged COSE_Sign1 (a lenient test helper, not the strict verifier)."""
    item = cbor2.loads(data)
    tagged = isinstance(item, cbor2.CBORTag)
    if tagged:
        if item.tag != _COSE_SIGN1_TAG:
            raise ValueError("not a COSE_Sign1 (tag is not 18)")
        item = item.value
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise ValueError("not a COSE_Sign1 (expected a 4-element array)")
    protected_bytes, unprotected, payload, signature = item
    protected = cbor2.loads(protected_bytes) if protected_bytes else {}
    return Sign1(
        protected_bytes=bytes(protected_bytes),
        protected=dict(protected),
        unprotected=dict(unprotected),
        payload=bytes(payload),
        signature=bytes(signature),
        tagged=tagged,
    )


def verify_sign1(data: bytes, key: SigningKey | VerifyingKey) -> bytes:
    """Verify a COSE_Sign1 under ``key`` and return its payload.

    The protected ``alg`` must be there and equal the key's algorithm (profile "Signed headers": no
    algorithm is taken from the message alone). Raises ``ValueError`` on any failure.
    """
    message = parse_sign1(data)
    verifying_key = _as_verifying_key(key)
    if message.alg != verifying_key.alg:
        raise ValueError("protected alg missing or not the key's algorithm")
    if not verifying_key.verify(message.signature, message.signed_bytes()):
        raise ValueError("bad signature")
    return message.payload


def tamper_signature(cose_sign1: bytes, byte_index: int = 0) -> bytes:
    """Return ``cose_sign1`` with one bit of its signature flipped (a BAD_*_SIGNATURE sample)."""
    message = parse_sign1(cose_sign1)
    signature = bytearray(message.signature)
    signature[byte_index] ^= 0x01
    body = [message.protected_bytes, message.unprotected, message.payload, bytes(signature)]
    item: Any = cbor2.CBORTag(_COSE_SIGN1_TAG, body) if message.tagged else body
    return deterministic_cbor(item)


# --- Identity data (profile §2.4 "apcv") ----------------------------------------------------------

_CORSICA_SUBSTITUTES = {"2A": "19", "2B": "18"}  # RG_BS603 (CNAM billing rules)


def nir_key(number13: str) -> str:
    """The 2-digit NIR/NIA key: ``97 − (number mod 97)`` (profile §5.2, RG_BS603).

    Characters 6–7 (the département) may be ``2A``/``2B`` (Corsica): they count as ``19``/``18``.
    """
    if len(number13) != 13:
        raise ValueError("an NIR/NIA number has 13 characters")
    departement = number13[5:7]
    digits = number13[:5] + _CORSICA_SUBSTITUTES.get(departement, departement) + number13[7:]
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("an NIR/NIA number is digits, except 2A/2B as département")
    return f"{97 - int(digits) % 97:02d}"


def matricule(number13: str) -> str:
    """The 15-character matricule: the 13-character number followed by its key (profile §5.1)."""
    return number13 + nir_key(number13)


def nir_key_is_valid(matricule15: str) -> bool:
    """True when the last two characters of a 15-character matricule are the right key."""
    if len(matricule15) != 15:
        return False
    try:
        return nir_key(matricule15[:13]) == matricule15[13:]
    except ValueError:
        return False


@dataclass(frozen=True)
class AmoRights:
    """Open rights with the mandatory scheme (profile §2.4 ``"amo"``): codes are digit strings."""

    regime: str  # 2 digits
    caisse: str  # 3 digits
    centre: str  # 4 digits
    open_from: str  # YYYY-MM-DD
    open_to: str  # YYYY-MM-DD

    def to_claims(self) -> dict[str, str]:
        return {
            "reg": self.regime,
            "caisse": self.caisse,
            "centre": self.centre,
            "from": self.open_from,
            "to": self.open_to,
        }

    def __repr__(self) -> str:  # keep identity data out of logs and tracebacks
        return "AmoRights(...)"


@dataclass(frozen=True)
class Identity:
    """INS identity traits (profile §2.4 ``"id"``); lunar dates (``1957-00-00``) are valid as is."""

    birth_name: str
    given_names: str  # space-separated, INS order
    sex: str  # "M" | "F"
    birth_date: str  # YYYY-MM-DD, possibly lunar
    birth_place: str  # 5-character INSEE code (99xxx: born abroad)

    def to_claims(self) -> dict[str, str]:
        return {
            "bn": self.birth_name,
            "gn": self.given_names,
            "sex": self.sex,
            "dob": self.birth_date,
            "pob": self.birth_place,
        }

    def __repr__(self) -> str:
        return "Identity(...)"


@dataclass(frozen=True)
class Person:
    """A covered person: INS (15-char matricule + OID), identity and AMO rights (profile §2.4)."""

    ins: str  # matricule, see matricule()
    ins_oid: str  # INS_NIR_OID, INS_NIA_OID, INS_TEST_OID or INS_DEMO_OID
    identity: Identity
    amo: AmoRights

    def to_claims(self) -> dict[str, Any]:
        return {
            "ins": {"m": self.ins, "oid": self.ins_oid},
            "id": self.identity.to_claims(),
            "amo": self.amo.to_claims(),
        }

    def __repr__(self) -> str:
        return "Person(...)"


@dataclass(frozen=True)
class Beneficiary:
    """A person attached to the holder (profile §2.4 ``"ben"``); rank ≥ 1, the holder is rank 0."""

    rank: int
    person: Person

    def to_claims(self) -> dict[str, Any]:
        return {"rank": self.rank, **self.person.to_claims()}


# --- Credential and presentation (profile §2.4, §2.5) ---------------------------------------------


def issue_credential(
    issuer_key: SigningKey,
    *,
    iss: str,
    sub: str,
    device_key: SigningKey | VerifyingKey,
    holder: Person,
    beneficiaries: Sequence[Beneficiary] = (),
    status_uri: str,
    status_index: int,
    iat: int,
    nbf: int,
    exp: int,
    version: int = PROFILE_VERSION,
) -> bytes:
    """Issue a credential CWT (profile §2.4) signed by an AMO issuer key; tagged COSE_Sign1 bytes.

    ``device_key`` is the holder's phone key (only its public half is used) and goes into ``cnf``
    (RFC 8747 §3.1) without ``alg``, as the profile shows it. ``"ben"`` is left out when empty (the
    verifier defaults it to ``[]``). ``version`` other than 1 makes an UNSUPPORTED_VERSION sample.
    """
    apcv: dict[str, Any] = {"v": version, **holder.to_claims()}
    if beneficiaries:
        apcv["ben"] = [beneficiary.to_claims() for beneficiary in beneficiaries]
    claims = {
        _CLAIM_ISS: iss,
        _CLAIM_SUB: sub,
        _CLAIM_EXP: exp,
        _CLAIM_NBF: nbf,
        _CLAIM_IAT: iat,
        _CLAIM_CNF: {_CNF_COSE_KEY: _as_verifying_key(device_key).cose_key(include_alg=False)},
        _CLAIM_STATUS: {"status_list": {"idx": status_index, "uri": status_uri}},
        "apcv": apcv,
    }
    return sign1(issuer_key, claims)


def make_presentation(
    device_key: SigningKey,
    credential: bytes,
    *,
    ben: int = 0,
    use: str = "care",
    iat: int,
    exp: int | None = None,
    cti: bytes | None = None,
    aud: str | None = None,
    nonce: bytes | None = None,
    amc: Sequence[bytes] | None = None,
    dlg: bytes | None = None,
) -> bytes:
    """Make a presentation (§2.5) signed by the device key; protected header ``{1: -7}`` only.

    ``exp`` defaults to ``iat + 120``; ``cti`` to 16 random bytes (the replay key). ``amc`` and
    ``dlg`` take ready-made attestation / delegation bytes (:func:`make_amc_attestation`,
    :func:`make_delegation`); with ``dlg``, ``device_key`` is the delegate's phone key.
    """
    if device_key.alg is not Alg.ES256:
        raise ValueError("device keys are ES256 (P-256) only (profile §2.5)")
    claims: dict[Any, Any] = {
        _CLAIM_IAT: iat,
        _CLAIM_EXP: iat + DEFAULT_PRESENTATION_LIFETIME if exp is None else exp,
        _CLAIM_CTI: secrets.token_bytes(CTI_LENGTH) if cti is None else cti,
        "cred": credential,
        "ben": ben,
        "use": use,
    }
    if aud is not None:
        claims[_CLAIM_AUD] = aud
    if nonce is not None:
        claims["nonce"] = nonce
    if amc is not None:
        claims["amc"] = list(amc)
    if dlg is not None:
        claims["dlg"] = dlg
    return sign1(device_key, claims, kid=False)


# --- Delegation and AMC attestation (profile §2.6, §2.7) ------------------------------------------


def make_delegation(
    issuer_key: SigningKey,
    *,
    iss: str,
    sub: str,
    delegate_key: SigningKey | VerifyingKey,
    for_credential: str,
    ben: Sequence[int],
    use: Sequence[str],
    who: str | None = None,
    status_uri: str,
    status_index: int,
    iat: int,
    nbf: int,
    exp: int,
) -> bytes:
    """A delegation (profile §2.6) signed by an AMO issuer key; tagged COSE_Sign1 bytes.

    ``delegate_key`` is the delegate's phone key (only its public half is used; ``cnf`` without
    ``alg``); ``for_credential`` the ``sub`` of the holder's credential; ``ben`` the ranks and
    ``use`` the uses the delegate may present. ``who`` (a display label) is left out when None.
    The presentation that carries it must be signed by ``delegate_key``.
    """
    apcv: dict[str, Any] = {
        "v": PROFILE_VERSION,
        "for": for_credential,
        "ben": list(ben),
        "use": list(use),
    }
    if who is not None:
        apcv["who"] = who
    claims = {
        _CLAIM_ISS: iss,
        _CLAIM_SUB: sub,
        _CLAIM_EXP: exp,
        _CLAIM_NBF: nbf,
        _CLAIM_IAT: iat,
        _CLAIM_CNF: {_CNF_COSE_KEY: _as_verifying_key(delegate_key).cose_key(include_alg=False)},
        _CLAIM_STATUS: {"status_list": {"idx": status_index, "uri": status_uri}},
        "apcv": apcv,
    }
    return sign1(issuer_key, claims)


def make_amc_attestation(
    amc_key: SigningKey,
    *,
    iss: str,
    sub: str,
    covered: Sequence[str],
    amc_number: str,
    third_party_payment: bool,
    domains: Sequence[str],
    iat: int,
    nbf: int,
    exp: int,
    status_uri: str | None = None,
    status_index: int | None = None,
) -> bytes:
    """An AMC attestation (profile §2.7) signed by a complementary insurer's key (role ``amc``).

    ``iss`` is the AMC organisation id, ``sub`` the contract id, ``covered`` the INS matricules
    it applies to, ``amc_number`` the organisation number (text: leading zeros matter). The
    ``status`` claim is optional: give both ``status_uri`` and ``status_index``, or neither.
    """
    if (status_uri is None) != (status_index is None):
        raise ValueError("give both status_uri and status_index, or neither")
    claims: dict[Any, Any] = {
        _CLAIM_ISS: iss,
        _CLAIM_SUB: sub,
        _CLAIM_EXP: exp,
        _CLAIM_NBF: nbf,
        _CLAIM_IAT: iat,
        "apcv": {
            "v": PROFILE_VERSION,
            "for": list(covered),
            "amc": amc_number,
            "tp": third_party_payment,
            "dom": list(domains),
        },
    }
    if status_uri is not None:
        claims[_CLAIM_STATUS] = {"status_list": {"idx": status_index, "uri": status_uri}}
    return sign1(amc_key, claims)


def qr_text(presentation: bytes) -> str:
    """QR payload ``"APCV1:" + base45(zlib(presentation))`` (profile "Encodings", RFC 9285)."""
    return QR_PREFIX + base45.b45encode(zlib.compress(presentation, 9)).decode("ascii")


def presentation_from_qr_text(text: str) -> bytes:
    """Inverse of :func:`qr_text` (no size limits: a test helper, not the verifier's decoder)."""
    if not text.startswith(QR_PREFIX):
        raise ValueError("QR text does not start with APCV1:")
    return zlib.decompress(base45.b45decode(text[len(QR_PREFIX) :]))


# --- Trust list (profile §2.8) --------------------------------------------------------------------


@dataclass(frozen=True)
class TrustEntry:
    """One trusted key (profile §2.8): only the public part of ``key`` is published."""

    key: SigningKey | VerifyingKey
    role: str  # AMO_ROLE | AMC_ROLE | STATUS_ROLE
    iss: str
    nbf: int
    exp: int

    def to_claims(self) -> dict[str, Any]:
        public = _as_verifying_key(self.key)
        return {
            "kid": public.kid,
            "role": self.role,
            "iss": self.iss,
            "key": public.cose_key(include_alg=True),  # alg is required in the list (profile §2.8)
            "nbf": self.nbf,
            "exp": self.exp,
        }


def make_trust_list(
    anchor_key: SigningKey, *, seq: int, iat: int, exp: int, entries: Sequence[TrustEntry]
) -> bytes:
    """Trust list signed by a trust anchor (profile §2.8): protected ``{1: alg, 4: anchor kid}``."""
    payload = {
        "v": PROFILE_VERSION,
        "seq": seq,
        "iat": iat,
        "exp": exp,
        "keys": [entry.to_claims() for entry in entries],
    }
    return sign1(anchor_key, payload)


# --- Status list (Token Status List draft, CWT form; profile §2.9) --------------------------------

_ALLOWED_STATUS_BITS = (1, 2, 4, 8)  # Token Status List draft §4.1; the profile issues 1 or 2

#: Status values (Token Status List draft §7.1).
STATUS_VALID = 0
STATUS_INVALID = 1
STATUS_SUSPENDED = 2


class StatusListBuilder:
    """A mutable array of statuses packed ``bits`` per entry, LSB first (Token Status List §4.1).

    Entry ``i`` lives in byte ``i * bits // 8`` at bit offset ``(i * bits) % 8``: with 1 bit,
    entry 0 is the least significant bit of byte 0.
    """

    def __init__(self, size: int, bits: int = 1) -> None:
        if bits not in _ALLOWED_STATUS_BITS:
            raise ValueError("bits must be 1, 2, 4 or 8")
        if size < 0:
            raise ValueError("size must not be negative")
        self.bits = bits
        self.size = size
        self._packed = bytearray((size * bits + 7) // 8)

    @classmethod
    def from_statuses(cls, statuses: Sequence[int], bits: int = 1) -> StatusListBuilder:
        builder = cls(len(statuses), bits)
        for index, status in enumerate(statuses):
            if status:
                builder.set(index, status)
        return builder

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.size:
            raise IndexError("status index outside the list")
        bit_position = index * self.bits
        return bit_position // 8, bit_position % 8

    def set(self, index: int, status: int) -> None:
        """Set entry ``index`` to ``status`` (0 valid, 1 invalid/revoked, 2 suspended, ...)."""
        if not 0 <= status < 1 << self.bits:
            raise ValueError(f"status {status} does not fit in {self.bits} bit(s)")
        byte_index, shift = self._locate(index)
        mask = ((1 << self.bits) - 1) << shift
        self._packed[byte_index] = (self._packed[byte_index] & ~mask) | (status << shift)

    def get(self, index: int) -> int:
        byte_index, shift = self._locate(index)
        return (self._packed[byte_index] >> shift) & ((1 << self.bits) - 1)

    def packed(self) -> bytes:
        """The uncompressed byte array."""
        return bytes(self._packed)

    def status_list_claim(self) -> dict[str, Any]:
        """The ``status_list`` claim (65533): ``{"bits", "lst": zlib(bytes)}`` (draft §4.2)."""
        return {"bits": self.bits, "lst": zlib.compress(self.packed(), 9)}

    def sign(
        self, signer_key: SigningKey, *, uri: str, iat: int, exp: int, ttl: int | None = None
    ) -> bytes:
        """Status list CWT (§2.9): protected ``{1, 4, 16: "application/statuslist+cwt"}``."""
        claims: dict[int, Any] = {
            _CLAIM_SUB: uri,
            _CLAIM_IAT: iat,
            _CLAIM_EXP: exp,
            _CLAIM_STATUS_LIST: self.status_list_claim(),
        }
        if ttl is not None:
            claims[_CLAIM_TTL] = ttl
        return sign1(signer_key, claims, protected_extra={_HEADER_TYP: STATUS_LIST_TYP})


def make_status_list(
    signer_key: SigningKey,
    *,
    uri: str,
    statuses: Sequence[int],
    bits: int = 1,
    iat: int,
    exp: int,
    ttl: int | None = None,
) -> bytes:
    """Status list CWT with one entry per item of ``statuses`` (see :class:`StatusListBuilder`)."""
    builder = StatusListBuilder.from_statuses(statuses, bits)
    return builder.sign(signer_key, uri=uri, iat=iat, exp=exp, ttl=ttl)


# --- Demonstration PKI ----------------------------------------------------------------------------

DEMO_AMO_ISS = "https://amo.apcv.example"
DEMO_AMC_ISS = "https://amc.apcv.example"
DEMO_STATUS_ISS = "https://status.apcv.example"
DEMO_STATUS_URI = "https://status.apcv.example/amo/1"
#: AMC organisation number of the demo complementary insurer (fictional).
DEMO_AMC_NUMBER = "012345678"
#: Default care domains of demo AMC attestations.
DEMO_AMC_DOMAINS = ("PHAR", "MED", "HOSP", "OPT", "DENT")
DEMO_DELEGATION_VALIDITY = 30 * 86_400

_DAY = 86_400
_YEAR = 365 * _DAY
#: Demo material is meant to stay usable for a while after it is made (the demo, CI caches).
DEMO_LIST_VALIDITY = _YEAR
DEMO_KEY_VALIDITY = 5 * _YEAR
DEMO_CREDENTIAL_VALIDITY = _YEAR
#: 1,024 entries × 2 bits: room for revoked (1) and suspended (2) samples (profile §2.9).
DEMO_STATUS_LIST_SIZE = 1024
DEMO_STATUS_BITS = 2
DEMO_STATUS_TTL = 3600

_MANIFEST = "pki.json"
_MANIFEST_FORMAT = "apcv-demo-pki/1"
_ANCHOR = "anchor"
_AMO_ES256 = "amo-es256"
_AMO_ED25519 = "amo-ed25519"
_AMC = "amc"
_STATUS = "status"
_ROGUE_AMO = "rogue-amo"

#: Trusted demo keys: name → (algorithm, trust-list role, iss).
_DEMO_TRUSTED_KEYS: dict[str, tuple[Alg, str, str]] = {
    _AMO_ES256: (Alg.ES256, AMO_ROLE, DEMO_AMO_ISS),
    _AMO_ED25519: (Alg.EDDSA, AMO_ROLE, DEMO_AMO_ISS),
    _AMC: (Alg.ES256, AMC_ROLE, DEMO_AMC_ISS),
    _STATUS: (Alg.ES256, STATUS_ROLE, DEMO_STATUS_ISS),
}

#: Names of the sample presentations :meth:`DemoPKI.samples` makes (the demo's six cases).
DEMO_SAMPLE_NAMES = ("accepted", "expired", "revoked", "replayed", "tampered", "wrong_issuer")


@dataclass(frozen=True)
class _DemoHolderSpec:
    name: str
    note: str
    number13: str
    identity: Identity
    issuer: str = _AMO_ES256
    children: tuple[tuple[int, str, Identity], ...] = ()
    revoked: bool = False


def _demo_holder_specs() -> tuple[_DemoHolderSpec, ...]:
    """Fictional people; NIR numbers are made up, keys computed (profile §5.2)."""
    return (
        _DemoHolderSpec(
            "alice",
            "ordinary holder, ES256 issuer",
            "2850675115042",
            Identity("MARTIN", "Alice Jeanne", "F", "1985-06-14", "75115"),
        ),
        _DemoHolderSpec(
            "corsica",
            "born in Corse-du-Sud (2A), Ed25519 issuer",
            "172032A004057",
            Identity("SANTONI", "Ange Marie", "M", "1972-03-08", "2A004"),
            issuer=_AMO_ED25519,
        ),
        _DemoHolderSpec(
            "lunar",
            "lunar birth date 1957-00-00, born abroad",
            "2572099350012",
            Identity("BENALI", "Fatima", "F", "1957-00-00", "99350"),
        ),
        _DemoHolderSpec(
            "family",
            "holder with a beneficiary child of rank 1",
            "1800569123087",
            Identity("DURAND", "Paul Henri", "M", "1980-05-17", "69123"),
            children=((1, "2150969123045", Identity("DURAND", "Léa", "F", "2015-09-21", "69123")),),
        ),
        _DemoHolderSpec(
            "revoked",
            "credential revoked in the status list",
            "1491159350121",
            Identity("LEROY", "Bernard", "M", "1949-11-02", "59350"),
            revoked=True,
        ),
    )


@dataclass(frozen=True)
class DemoHolder:
    """A demo holder: phone key, credential and where its status lives."""

    name: str
    device_key: SigningKey
    credential: bytes
    issuer: str  # name of the issuer key in the PKI
    status_uri: str
    status_index: int
    beneficiary_ranks: tuple[int, ...]

    def __repr__(self) -> str:
        return f"DemoHolder({self.name!r})"


def _now() -> int:
    return int(time.time())


def _write_bytes(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    if private:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # atomic: a watcher reloading the file never reads half of it


class DemoPKI:
    """A complete, self-consistent demonstration PKI kept in a directory.

    Layout (paths relative to ``directory``)::

        pki.json                         manifest (no personal data)
        anchor.cose_key, anchor.pem      trust anchor public key (COSE_Key bytes / PEM)
        keys/<name>.pem                  private keys (PKCS#8): anchor, amo-es256, amo-ed25519,
                                         amc, status, rogue-amo (NOT in the trust list)
        trust-list.cose                  trust list signed by the anchor (profile §2.8)
        status/amo-1.cwt                 status list for https://status.apcv.example/amo/1 (2 bits)
        holders/<name>/device.key.pem    the holder's phone key (ES256)
        holders/<name>/credential.cose   the holder's credential (profile §2.4)

    Holders: ``alice`` (ordinary), ``corsica`` (born in 2A, Ed25519 issuer), ``lunar`` (birth date
    1957-00-00), ``family`` (child beneficiary rank 1), ``revoked`` (revoked in the status list).
    With ``test_identities=True`` they carry the demonstration OID ``INS_DEMO_OID``, so the
    verifier must run with a policy that allows test identities.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.keys: dict[str, SigningKey] = {
            name: SigningKey.from_pem((directory / entry["file"]).read_bytes())
            for name, entry in manifest["keys"].items()
        }
        self.holders: dict[str, DemoHolder] = {
            name: DemoHolder(
                name=name,
                device_key=SigningKey.from_pem(
                    (directory / entry["dir"] / "device.key.pem").read_bytes()
                ),
                credential=(directory / entry["dir"] / "credential.cose").read_bytes(),
                issuer=entry["issuer"],
                status_uri=entry["status_uri"],
                status_index=entry["status_index"],
                beneficiary_ranks=tuple(entry["beneficiary_ranks"]),
            )
            for name, entry in manifest["holders"].items()
        }

    # -- creation and loading ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        now: int | None = None,
        test_identities: bool = True,
    ) -> DemoPKI:
        """Make a fresh PKI in ``directory`` (created if needed; existing demo files replaced)."""
        root = Path(directory)
        now = _now() if now is None else now
        key_nbf, key_exp = now - 30 * _DAY, now + DEMO_KEY_VALIDITY
        manifest: dict[str, Any] = {
            "format": _MANIFEST_FORMAT,
            "created_at": now,
            "test_identities": test_identities,
            "keys": {},
            "holders": {},
            "status_lists": {},
        }

        def new_key(name: str, alg: Alg, **info: Any) -> SigningKey:
            key = SigningKey.generate(alg)
            file = f"keys/{name}.pem"
            _write_bytes(root / file, key.to_pem(), private=True)
            manifest["keys"][name] = {"file": file, "alg": int(alg), "kid": key.kid.hex(), **info}
            return key

        anchor = new_key(_ANCHOR, Alg.ES256, role="anchor")
        _write_bytes(root / "anchor.cose_key", anchor.cose_key_bytes())
        _write_bytes(root / "anchor.pem", anchor.public_pem())
        manifest["anchor"] = {"cose_key": "anchor.cose_key", "public_pem": "anchor.pem"}
        for name, (alg, role, iss) in _DEMO_TRUSTED_KEYS.items():
            new_key(name, alg, role=role, iss=iss, nbf=key_nbf, exp=key_exp, trusted=True)
        # Same iss as the real AMO: a forger's credential that only a trust lookup can catch.
        new_key(_ROGUE_AMO, Alg.ES256, role=AMO_ROLE, iss=DEMO_AMO_ISS, trusted=False)
        manifest["status_lists"][DEMO_STATUS_URI] = {
            "file": "status/amo-1.cwt",
            "signer": _STATUS,
            "bits": DEMO_STATUS_BITS,
            "size": DEMO_STATUS_LIST_SIZE,
            "ttl": DEMO_STATUS_TTL,
            "statuses": {},
        }
        manifest["trust_list"] = {"file": "trust-list.cose", "seq": 0}
        _write_bytes(root / _MANIFEST, json.dumps(manifest).encode())

        pki = cls(root, manifest)
        oid = INS_DEMO_OID if test_identities else INS_NIR_OID
        year = time.gmtime(now).tm_year
        rights = AmoRights("01", "751", "0001", f"{year - 1}-01-01", f"{year + 1}-12-31")
        for spec in _demo_holder_specs():
            children = [
                Beneficiary(rank, Person(matricule(number13), oid, identity, rights))
                for rank, number13, identity in spec.children
            ]
            pki.add_holder(
                spec.name,
                Person(matricule(spec.number13), oid, spec.identity, rights),
                beneficiaries=children,
                issuer=spec.issuer,
                note=spec.note,
                now=now,
            )
            if spec.revoked:
                pki.manifest["status_lists"][DEMO_STATUS_URI]["statuses"][
                    str(pki.holders[spec.name].status_index)
                ] = STATUS_INVALID
        pki.new_trust_list(seq=1, now=now)
        pki.write_status_lists(now=now)
        return pki

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DemoPKI:
        """Re-open a PKI made by :meth:`create`."""
        root = Path(directory)
        manifest = json.loads((root / _MANIFEST).read_text())
        if manifest.get("format") != _MANIFEST_FORMAT:
            raise ValueError(f"{root / _MANIFEST} is not an ApCV demo PKI manifest")
        return cls(root, manifest)

    def _save_manifest(self) -> None:
        _write_bytes(self.directory / _MANIFEST, json.dumps(self.manifest, indent=2).encode())

    def _issue_time(self, now: int | None) -> int:
        # Never before the PKI's own creation time, so a PKI made "in the future" for a test
        # keeps lists that are valid at that time.
        return now if now is not None else max(self.manifest["created_at"], _now())

    # -- keys and files --------------------------------------------------------------------------

    @property
    def anchor(self) -> SigningKey:
        """Trust anchor (ES256); configure verifiers with :attr:`anchor_cose_key`."""
        return self.keys[_ANCHOR]

    @property
    def anchor_cose_key(self) -> bytes:
        return (self.directory / "anchor.cose_key").read_bytes()

    @property
    def amo_issuer(self) -> SigningKey:
        """AMO credential issuer, ES256."""
        return self.keys[_AMO_ES256]

    @property
    def amo_issuer_ed25519(self) -> SigningKey:
        """Second AMO credential issuer, EdDSA (Ed25519)."""
        return self.keys[_AMO_ED25519]

    @property
    def amc_issuer(self) -> SigningKey:
        """Complementary insurer (AMC) attestation key."""
        return self.keys[_AMC]

    @property
    def status_signer(self) -> SigningKey:
        """Status list signer (trust-list role ``status``)."""
        return self.keys[_STATUS]

    @property
    def rogue_issuer(self) -> SigningKey:
        """An ES256 key NOT in the trust list (wrong-issuer samples)."""
        return self.keys[_ROGUE_AMO]

    @property
    def trust_list_path(self) -> Path:
        return self.directory / self.manifest["trust_list"]["file"]

    @property
    def trust_list(self) -> bytes:
        return self.trust_list_path.read_bytes()

    @property
    def trust_list_seq(self) -> int:
        return int(self.manifest["trust_list"]["seq"])

    @property
    def status_list_paths(self) -> dict[str, Path]:
        """Status list files by URI."""
        return {
            uri: self.directory / entry["file"]
            for uri, entry in self.manifest["status_lists"].items()
        }

    @property
    def status_lists(self) -> dict[str, bytes]:
        """Signed status lists by URI."""
        return {uri: path.read_bytes() for uri, path in self.status_list_paths.items()}

    def trust_entries(self) -> list[TrustEntry]:
        """The trusted keys (everything in ``keys`` marked trusted), in manifest order."""
        return [
            TrustEntry(self.keys[name], info["role"], info["iss"], info["nbf"], info["exp"])
            for name, info in self.manifest["keys"].items()
            if info.get("trusted")
        ]

    # -- holders -----------------------------------------------------------------------------------

    def _allocate_status_index(self, uri: str) -> int:
        used = {holder.status_index for holder in self.holders.values() if holder.status_uri == uri}
        used.update(self.manifest["status_lists"][uri].get("allocated", []))
        size = self.manifest["status_lists"][uri]["size"]
        for index in range(size):
            if index not in used:
                return index
        raise ValueError("status list is full")

    def add_holder(
        self,
        name: str,
        person: Person,
        *,
        beneficiaries: Sequence[Beneficiary] = (),
        issuer: str = _AMO_ES256,
        note: str = "",
        now: int | None = None,
    ) -> DemoHolder:
        """Enrol a new phone for ``person``: device key, credential, status index; saved to disk."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError("holder name must be a plain directory name")
        if name in self.holders:
            raise ValueError("a holder with this name already exists")
        issued_at = self._issue_time(now) - _DAY
        uri = DEMO_STATUS_URI
        index = self._allocate_status_index(uri)
        device_key = SigningKey.generate(Alg.ES256)
        credential = issue_credential(
            self.keys[issuer],
            iss=self.manifest["keys"][issuer]["iss"],
            sub="cred-" + secrets.token_hex(8),
            device_key=device_key,
            holder=person,
            beneficiaries=beneficiaries,
            status_uri=uri,
            status_index=index,
            iat=issued_at,
            nbf=issued_at,
            exp=issued_at + DEMO_CREDENTIAL_VALIDITY,
        )
        holder_dir = f"holders/{name}"
        _write_bytes(
            self.directory / holder_dir / "device.key.pem", device_key.to_pem(), private=True
        )
        _write_bytes(self.directory / holder_dir / "credential.cose", credential)
        holder = DemoHolder(
            name=name,
            device_key=device_key,
            credential=credential,
            issuer=issuer,
            status_uri=uri,
            status_index=index,
            beneficiary_ranks=tuple(b.rank for b in beneficiaries),
        )
        self.holders[name] = holder
        self.manifest["holders"][name] = {
            "dir": holder_dir,
            "note": note,
            "issuer": issuer,
            "status_uri": uri,
            "status_index": index,
            "beneficiary_ranks": list(holder.beneficiary_ranks),
        }
        self._save_manifest()
        return holder

    def holder(self, name: str) -> DemoHolder:
        """The holder called ``name``; ``KeyError`` naming the known holders otherwise."""
        try:
            return self.holders[name]
        except KeyError:
            known = ", ".join(sorted(self.holders))
            raise KeyError(f"unknown holder {name!r} (known: {known})") from None

    def present(
        self,
        holder: str = "alice",
        *,
        credential: bytes | None = None,
        ben: int = 0,
        use: str = "care",
        iat: int | None = None,
        exp: int | None = None,
        cti: bytes | None = None,
        aud: str | None = None,
        nonce: bytes | None = None,
        amc: Sequence[bytes] | None = None,
        dlg: bytes | None = None,
        signer: SigningKey | None = None,
    ) -> bytes:
        """A presentation by ``holder``'s phone (§2.5); ``iat`` defaults to the current time.

        ``credential`` replaces the holder's own (e.g. :meth:`expired_credential`); ``signer``
        replaces the holder's phone key (e.g. the delegate's key from :meth:`delegate`, with
        ``dlg``).
        """
        demo_holder = self.holder(holder)
        return make_presentation(
            demo_holder.device_key if signer is None else signer,
            demo_holder.credential if credential is None else credential,
            ben=ben,
            use=use,
            iat=_now() if iat is None else iat,
            exp=exp,
            cti=cti,
            aud=aud,
            nonce=nonce,
            amc=amc,
            dlg=dlg,
        )

    def _allocate_extra_status_index(self, uri: str) -> int:
        """A status index for a delegation or an attestation, recorded so it is never reused."""
        index = self._allocate_status_index(uri)
        self.manifest["status_lists"][uri].setdefault("allocated", []).append(index)
        self._save_manifest()
        return index

    def matricules(self, holder: str = "alice") -> dict[int, str]:
        """The INS matricules of ``holder``'s credential by rank (0 = the holder)."""
        apcv = parse_sign1(self.holder(holder).credential).claims()["apcv"]
        ranks = {0: apcv["ins"]["m"]}
        ranks.update({b["rank"]: b["ins"]["m"] for b in apcv.get("ben", [])})
        return ranks

    def delegate(
        self,
        holder: str = "alice",
        *,
        ben: Sequence[int] = (0,),
        use: Sequence[str] = ("care",),
        who: str | None = None,
        delegate_key: SigningKey | None = None,
        now: int | None = None,
        nbf: int | None = None,
        exp: int | None = None,
    ) -> tuple[SigningKey, bytes]:
        """A delegation of ``holder``'s credential (profile §2.6) by the holder's AMO issuer.

        Returns the delegate's phone key (new unless ``delegate_key`` is given) and the
        delegation; present with ``present(holder, dlg=delegation, signer=key)``. A status index
        is allocated for it, so :meth:`revoke_object` can revoke it. Valid from ``now − 1 day``
        for 30 days unless ``nbf`` / ``exp`` say otherwise.
        """
        demo_holder = self.holder(holder)
        issued_at = self._issue_time(now) - _DAY
        key = SigningKey.generate(Alg.ES256) if delegate_key is None else delegate_key
        uri = DEMO_STATUS_URI
        delegation = make_delegation(
            self.keys[demo_holder.issuer],
            iss=self.manifest["keys"][demo_holder.issuer]["iss"],
            sub="dlg-" + secrets.token_hex(8),
            delegate_key=key,
            for_credential=parse_sign1(demo_holder.credential).claims()[_CLAIM_SUB],
            ben=ben,
            use=use,
            who=who,
            status_uri=uri,
            status_index=self._allocate_extra_status_index(uri),
            iat=issued_at,
            nbf=issued_at if nbf is None else nbf,
            exp=issued_at + DEMO_DELEGATION_VALIDITY if exp is None else exp,
        )
        return key, delegation

    def amc_attestation(
        self,
        holder: str = "alice",
        *,
        ranks: Sequence[int] | None = None,
        covered: Sequence[str] | None = None,
        contract: str | None = None,
        amc_number: str = DEMO_AMC_NUMBER,
        third_party_payment: bool = True,
        domains: Sequence[str] = DEMO_AMC_DOMAINS,
        revocable: bool = True,
        signer: SigningKey | None = None,
        now: int | None = None,
        nbf: int | None = None,
        exp: int | None = None,
    ) -> bytes:
        """An AMC attestation (profile §2.7) by the demo complementary insurer for ``holder``.

        It covers the persons of ``ranks`` (default: everyone in the credential) or the
        matricules ``covered``. With ``revocable`` (default) it gets a status index, so
        :meth:`revoke_object` can revoke it. Valid from ``now − 1 day`` for a year unless
        ``nbf`` / ``exp`` say otherwise; ``signer`` replaces the AMC key (e.g. an untrusted one).
        """
        if covered is None:
            by_rank = self.matricules(holder)
            covered = [by_rank[r] for r in (sorted(by_rank) if ranks is None else ranks)]
        issued_at = self._issue_time(now) - _DAY
        uri = DEMO_STATUS_URI if revocable else None
        return make_amc_attestation(
            self.amc_issuer if signer is None else signer,
            iss=self.manifest["keys"][_AMC]["iss"],
            sub="contract-" + secrets.token_hex(6) if contract is None else contract,
            covered=covered,
            amc_number=amc_number,
            third_party_payment=third_party_payment,
            domains=domains,
            iat=issued_at,
            nbf=issued_at if nbf is None else nbf,
            exp=issued_at + _YEAR if exp is None else exp,
            status_uri=uri,
            status_index=None if uri is None else self._allocate_extra_status_index(uri),
        )

    def revoke_object(
        self, signed: bytes, status: int = STATUS_INVALID, *, now: int | None = None
    ) -> bytes:
        """Set the status of the object whose status claim ``signed`` carries (a credential,
        delegation or attestation), rewrite its status list, and return the new signed list."""
        claims = parse_sign1(signed).claims()
        if _CLAIM_STATUS not in claims:
            raise ValueError("the object carries no status claim")
        entry = claims[_CLAIM_STATUS]["status_list"]
        return self.set_status(entry["idx"], status, uri=entry["uri"], now=now)

    def credential_variant(
        self,
        holder: str = "alice",
        *,
        signer: SigningKey | None = None,
        iss: str | None = None,
        iat: int | None = None,
        nbf: int | None = None,
        exp: int | None = None,
    ) -> bytes:
        """Re-sign ``holder``'s credential claims with other times and/or another key."""
        demo_holder = self.holder(holder)
        claims = parse_sign1(demo_holder.credential).claims()
        for claim, value in (
            (_CLAIM_ISS, iss),
            (_CLAIM_IAT, iat),
            (_CLAIM_NBF, nbf),
            (_CLAIM_EXP, exp),
        ):
            if value is not None:
                claims[claim] = value
        return sign1(self.keys[demo_holder.issuer] if signer is None else signer, claims)

    def expired_credential(self, holder: str = "alice", *, now: int | None = None) -> bytes:
        """``holder``'s credential, properly signed but expired a day before ``now``."""
        expired_at = (_now() if now is None else now) - _DAY
        issued_at = expired_at - DEMO_CREDENTIAL_VALIDITY
        return self.credential_variant(holder, iat=issued_at, nbf=issued_at, exp=expired_at)

    def rogue_credential(self, holder: str = "alice") -> bytes:
        """``holder``'s credential signed by :attr:`rogue_issuer` (→ UNKNOWN_ISSUER)."""
        return self.credential_variant(holder, signer=self.rogue_issuer)

    def samples(self, *, now: int | None = None, holder: str = "alice") -> dict[str, bytes]:
        """The demo's six presentations, by name (see ``DEMO_SAMPLE_NAMES``).

        ``accepted`` — valid; ``expired`` — expired credential; ``revoked`` — holder ``revoked``;
        ``replayed`` — valid, meant to be scanned by one reader and then by another (→ REPLAYED
        the second time); ``tampered`` — device signature with a flipped bit; ``wrong_issuer`` —
        credential signed by a key outside the trust list.
        """
        now = _now() if now is None else now
        return {
            "accepted": self.present(holder, iat=now),
            "expired": self.present(
                holder, iat=now, credential=self.expired_credential(holder, now=now)
            ),
            "revoked": self.present("revoked", iat=now),
            "replayed": self.present(holder, iat=now),
            "tampered": tamper_signature(self.present(holder, iat=now)),
            "wrong_issuer": self.present(holder, iat=now, credential=self.rogue_credential(holder)),
        }

    # -- lists -----------------------------------------------------------------------------------

    def new_trust_list(
        self,
        seq: int | None = None,
        *,
        now: int | None = None,
        entries: Sequence[TrustEntry] | None = None,
    ) -> bytes:
        """Sign and write a new trust list (default: next seq, trusted keys); returns its bytes."""
        seq = self.trust_list_seq + 1 if seq is None else seq
        iat = self._issue_time(now)
        exp = iat + DEMO_LIST_VALIDITY
        trust_list = make_trust_list(
            self.anchor,
            seq=seq,
            iat=iat,
            exp=exp,
            entries=self.trust_entries() if entries is None else entries,
        )
        self.manifest["trust_list"].update(seq=seq, iat=iat, exp=exp)
        _write_bytes(self.trust_list_path, trust_list)
        self._save_manifest()
        return trust_list

    def write_status_lists(self, *, now: int | None = None) -> None:
        """Sign and write every status list from the statuses held in the manifest."""
        iat = self._issue_time(now)
        for uri, entry in self.manifest["status_lists"].items():
            builder = StatusListBuilder(entry["size"], entry["bits"])
            for index, status in entry["statuses"].items():
                builder.set(int(index), status)
            signed = builder.sign(
                self.keys[entry["signer"]],
                uri=uri,
                iat=iat,
                exp=iat + DEMO_LIST_VALIDITY,
                ttl=entry["ttl"],
            )
            entry.update(iat=iat, exp=iat + DEMO_LIST_VALIDITY)
            _write_bytes(self.directory / entry["file"], signed)
        self._save_manifest()

    def set_statuses(
        self, statuses: Mapping[int, int], *, uri: str = DEMO_STATUS_URI, now: int | None = None
    ) -> bytes:
        """Set entries (index → status) of a status list, then re-sign and rewrite it once.

        Every change is checked before any is applied. Returns the new signed list.
        """
        entry = self.manifest["status_lists"][uri]
        range_check = StatusListBuilder(entry["size"], entry["bits"])
        for index, status in statuses.items():
            try:
                range_check.set(index, status)
            except (IndexError, ValueError) as error:
                raise type(error)(f"index {index}: {error}") from None
        for index, status in statuses.items():
            if status == STATUS_VALID:
                entry["statuses"].pop(str(index), None)
            else:
                entry["statuses"][str(index)] = status
        self.write_status_lists(now=now)
        return self.status_lists[uri]

    def set_status(
        self, index: int, status: int, *, uri: str = DEMO_STATUS_URI, now: int | None = None
    ) -> bytes:
        """Set one entry of a status list and rewrite its file; returns the new signed list."""
        return self.set_statuses({index: status}, uri=uri, now=now)

    def revoke(
        self,
        index: int,
        status: int = STATUS_INVALID,
        *,
        uri: str = DEMO_STATUS_URI,
        now: int | None = None,
    ) -> bytes:
        """Mark ``index`` revoked (1) — or ``status`` — and rewrite the status list file."""
        return self.set_status(index, status, uri=uri, now=now)

    def suspend(self, index: int, *, uri: str = DEMO_STATUS_URI, now: int | None = None) -> bytes:
        """Mark ``index`` suspended (2) and rewrite the status list file."""
        return self.set_status(index, STATUS_SUSPENDED, uri=uri, now=now)
