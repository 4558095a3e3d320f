"""PEM certificates and keys renewed on disk while a process runs (cert-manager, an ACME
client, a hospital PKI's agent): files read again when they change, the last good reading
kept when a new one fails, and whether a certificate and a key make a pair. The server's
``[tls]`` (service/certificates.py) and the client's :class:`~apcv_verify.client.TLSFiles`
read their files again on these rules."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["FileSignature", "KeyPairError", "RenewedFiles", "file_signature", "pair_certificate"]

Reading = TypeVar("Reading")

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


class RenewedFiles(Generic[Reading]):
    """What ``read`` makes of the files at ``paths``, read again when they change on disk.

    :meth:`renew` compares the files' signature (:func:`file_signature`) with the one last
    read, and only when it differs calls ``read`` again. A reading that fails — half a
    renewal, a file that does not parse, any error — keeps the last good one and is handed to
    ``refused``; its signature is remembered, so the files are read again when they next
    change, not at each look. A file missing for a moment (while it is replaced) is looked
    at again at the next one. ``read`` is called once at once: its errors raise here.
    Callers may share one from several threads (gRPC asks the server's from its own).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        read: Callable[[], Reading],
        refused: Callable[[Exception], None],
    ) -> None:
        self._paths = tuple(paths)
        self._read = read
        self._refused = refused
        self._lock = threading.Lock()
        self._seen = file_signature(self._paths)
        #: The reading in use, and how many renewals were taken since the first.
        self.current = read()
        self.generation = 0

    def renew(self) -> Reading | None:
        """The new reading when the files changed into one ``read`` takes, else None."""
        with self._lock:
            try:
                signature = file_signature(self._paths)
            except OSError as error:
                self._refused(error)
                return None
            if signature == self._seen:
                return None
            self._seen = signature
            try:
                renewed = self._read()
            except Exception as error:  # noqa: BLE001 (the last good reading stays in use)
                self._refused(error)
                return None
            self.current, self.generation = renewed, self.generation + 1
            return renewed
