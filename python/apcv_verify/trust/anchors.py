"""Trust anchors: the keys a trust list must be signed with, configured as COSE_Key files or
PEM public keys (docs/operations.md "Configuration", ``trust.anchors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

__all__ = ["cose_key_from_public_pem", "read_anchor"]

# COSE_Key labels and values (RFC 9052 §7, RFC 9053 §7), and COSE algorithms (RFC 9053 §2).
_KTY, _ALG, _CRV, _X, _Y = 1, 3, -1, -2, -3
_KTY_OKP, _KTY_EC2 = 1, 2
_CRV_P256, _CRV_ED25519 = 1, 6
_ES256, _EDDSA = -7, -8


def cose_key_from_public_pem(pem: bytes | str, include_alg: bool = True) -> bytes:
    """A SubjectPublicKeyInfo PEM public key (P-256 or Ed25519, the profile's two key types) as
    deterministically encoded COSE_Key bytes (RFC 8949 §4.2.1), with ``alg`` unless told not.

    Raises ValueError for any other key type.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    public_key = serialization.load_pem_public_key(data)
    key: dict[int, Any]
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        key = {_KTY: _KTY_OKP, _CRV: _CRV_ED25519, _X: raw}
        alg = _EDDSA
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        numbers = public_key.public_numbers()
        key = {
            _KTY: _KTY_EC2,
            _CRV: _CRV_P256,
            _X: numbers.x.to_bytes(32, "big"),
            _Y: numbers.y.to_bytes(32, "big"),
        }
        alg = _ES256
    else:
        raise ValueError("only P-256 (ES256) and Ed25519 (EdDSA) keys are used by the profile")
    if include_alg:
        key[_ALG] = alg
    # Deterministic encoding of a flat map: keys in the bytewise order of their encodings.
    return cbor2.dumps(dict(sorted(key.items(), key=lambda item: cbor2.dumps(item[0]))))


def read_anchor(path: str | Path) -> bytes:
    """A trust anchor as COSE_Key bytes, from a PEM public key or a COSE_Key file."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return cose_key_from_public_pem(data)
    return data
