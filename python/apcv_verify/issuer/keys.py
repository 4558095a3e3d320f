"""Keys of the issuer toolkit: ES256 (P-256) and EdDSA (Ed25519) signing and verifying keys,
COSE_Key encoding, RFC 9679 thumbprints and deterministic CBOR (docs/profile.md "Signed
headers")."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

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

#: ``kid`` is the first 8 bytes of the RFC 9679 thumbprint (profile "Signed headers").
KID_LENGTH = 8


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
