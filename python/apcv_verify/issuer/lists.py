"""The trust list (docs/profile.md §2.8) and status lists (Token Status List draft, CWT form;
docs/profile.md §2.9)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .claims import (
    _CLAIM_EXP,
    _CLAIM_IAT,
    _CLAIM_STATUS_LIST,
    _CLAIM_SUB,
    _CLAIM_TTL,
    PROFILE_VERSION,
)
from .cose import _HEADER_TYP, sign1
from .keys import SigningKey, VerifyingKey, _as_verifying_key

#: Trust-list roles (profile §2.8).
AMO_ROLE = "amo"
AMC_ROLE = "amc"
STATUS_ROLE = "status"

#: Token Status List media type, protected header ``typ`` (label 16, RFC 9596).
STATUS_LIST_TYP = "application/statuslist+cwt"

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
