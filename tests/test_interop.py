"""Interoperability of the Rust core with an independent COSE library (pycose).

The other direction (pycose verifies the toolkit's objects) is in ``test_issuer.py``.
"""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest
from apcv_verify import _native
from apcv_verify.issuer import DemoPKI, SigningKey, parse_sign1, qr_text, tamper_signature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P256, Ed25519
from pycose.messages import Sign1Message


def pycose_private_key(key: SigningKey) -> EC2Key | OKPKey:
    """``key`` as a pycose private key, from the raw scalar / seed (not our CBOR)."""
    private = serialization.load_pem_private_key(key.to_pem(), password=None)
    cose_key = key.cose_key()
    if isinstance(private, ec.EllipticCurvePrivateKey):
        d = private.private_numbers().private_value.to_bytes(32, "big")
        return EC2Key(crv=P256, d=d, x=cose_key[-2], y=cose_key[-3])
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return OKPKey(crv=Ed25519, d=seed, x=cose_key[-2])


def pycose_sign1(key: SigningKey, payload: bytes, *, kid: bool = True) -> bytes:
    header: dict[Any, Any] = {Algorithm: Es256 if key.alg == -7 else EdDSA}
    if kid:
        header[KID] = key.kid
    message = Sign1Message(phdr=header, payload=payload, key=pycose_private_key(key))
    return bytes(message.encode())


@pytest.mark.parametrize("alg", [-7, -8])
def test_core_verifies_pycose_sign1(alg: int) -> None:
    key = SigningKey.generate(alg)
    payload = cbor2.dumps({1: "signed by pycose"})
    signed = pycose_sign1(key, payload)
    assert _native.verify_sign1(signed, key.cose_key_bytes()) == payload
    with pytest.raises(_native.InvalidSignature):
        _native.verify_sign1(tamper_signature(signed, byte_index=10), key.cose_key_bytes())
    other = SigningKey.generate(alg)
    with pytest.raises(_native.InvalidSignature):
        _native.verify_sign1(signed, other.cose_key_bytes())


def test_core_accepts_a_presentation_whose_every_signature_pycose_made(tmp_path: Any) -> None:
    """Credential signed by pycose with the AMO key, presentation by pycose with the phone key."""
    now = int(time.time())
    pki = DemoPKI.create(tmp_path / "pki", now=now)
    holder = pki.holder("corsica")  # Ed25519 issuer
    credential_claims = parse_sign1(holder.credential).payload
    credential = pycose_sign1(pki.keys[holder.issuer], credential_claims)
    presentation_claims = parse_sign1(pki.present("corsica", credential=credential)).payload
    presentation = pycose_sign1(holder.device_key, presentation_claims, kid=False)

    trust_list = _native.TrustList.verify(pki.trust_list, [pki.anchor_cose_key], now)
    status_lists = [_native.StatusList.verify(data, trust_list, now) for data in
                    pki.status_lists.values()]  # fmt: skip
    verifier = _native.Verifier(
        trust_list,
        status_lists,
        _native.Policy(allow_test_identities=True),
        _native.MemoryReplayStore(),
    )
    (result,) = verifier.verify_batch([_native.Scan(qr_text(presentation), "desk-1")], now)
    assert (result.accepted, result.reason) == (True, "OK")
    assert result.person is not None and result.person.birth_place == "2A004"
