"""apcv-verify: verification service for the open ApCV presentation profile.

The compiled core lives in the private module :mod:`apcv_verify._native`; its public names
are re-exported here.
"""

from ._native import (
    AmcCoverage,
    AmoRights,
    CoseKeyError,
    InvalidSignature,
    MalformedError,
    MemoryReplayStore,
    NativeError,
    Person,
    Policy,
    Scan,
    StatusBits,
    StatusList,
    StatusListError,
    TrustList,
    TrustListError,
    VerificationResult,
    Verifier,
    cose_key_thumbprint,
    decode_status_list,
    verify_sign1,
    verify_signature,
)

__all__ = [
    "AmcCoverage",
    "AmoRights",
    "CoseKeyError",
    "InvalidSignature",
    "MalformedError",
    "MemoryReplayStore",
    "NativeError",
    "Person",
    "Policy",
    "Scan",
    "StatusBits",
    "StatusList",
    "StatusListError",
    "TrustList",
    "TrustListError",
    "VerificationResult",
    "Verifier",
    "cose_key_thumbprint",
    "decode_status_list",
    "verify_sign1",
    "verify_signature",
]
