"""PEM certificates and keys renewed on disk while a process runs (cert-manager, an ACME
client, a hospital PKI's agent): whether the files changed, and whether a certificate and a
key read from them make a pair. The server's ``[tls]`` (service/certificates.py) and the
client's :class:`~apcv_verify.client.TLSFiles` read their files again on these rules."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["FileSignature", "KeyPairError", "file_signature", "pair_certificate"]

#: The modification time (ns) and size of each file, in order.
FileSignature = tuple[tuple[int, int], ...]

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class KeyPairError(ValueError):
    """A certificate chain and a key that do not make a pair; ``part`` names the file at
    fault: ``"certificate"`` or ``"key"``."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


def file_signature(paths: Iterable[str | Path]) -> FileSignature:
    """What changes when one of ``paths`` is rewritten or replaced: three ``stat`` calls for
    three files, cheap enough to look at before each new connection. Raises OSError when a
    file is missing (as it may be for a moment while it is replaced)."""
    stats = [os.stat(path) for path in paths]
    return tuple((stat.st_mtime_ns, stat.st_size) for stat in stats)


def pair_certificate(chain: bytes, key: bytes) -> x509.Certificate:
    """The first certificate of the PEM ``chain`` when the PEM ``key`` is its private key.
    Raises :class:`KeyPairError` otherwise — a renewal caught halfway, with the new
    certificate and the old key, is one."""
    try:
        certificate = x509.load_pem_x509_certificates(chain)[0]
    except ValueError as error:
        raise KeyPairError("certificate", f"not a PEM certificate chain ({error})") from None
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise KeyPairError("key", f"not an unencrypted PEM key ({error})") from None
    public = certificate.public_key().public_bytes(*_SPKI)
    if private_key.public_key().public_bytes(*_SPKI) != public:
        raise KeyPairError("key", "not the key of the certificate")
    return certificate
