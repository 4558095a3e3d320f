"""COSE_Sign1 (RFC 9052 §4.2) as the profile signs it: protected ``alg``, ``kid`` and
``typ`` headers, detached from nothing, and a raw signature (docs/profile.md "Signed headers")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from .keys import SigningKey, VerifyingKey, _as_verifying_key, deterministic_cbor

# COSE labels (RFC 9052 §3.1, RFC 9596 for typ).
_HEADER_ALG = 1
_HEADER_KID = 4
_HEADER_TYP = 16
_COSE_SIGN1_TAG = 18  # RFC 9052 §4.2

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
