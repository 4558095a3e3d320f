"""Who is calling, and what the purpose policy lets that caller do and see.

The caller id comes from the transport: with mTLS (``[tls] client_ca``) it is the subject
CN of the client certificate that the TLS handshake verified; a call without a client
certificate is the caller ``anonymous``. The ``[[callers]]`` table of the configuration
(:class:`~apcv_verify.config.CallerPolicy`) then gives its allowed uses (PURPOSE_NOT_ALLOWED
in the core otherwise), the field groups disclosed per use, whether it may send
``scanned_at``, and the reader ids it may send. Fields a caller may not see are left out of
the response (unset), never blanked (docs/profile.md §9.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import NoReturn

import grpc

from ..config import ANONYMOUS_CALLER, CallerPolicy, Config
from .errors import Refusal, abort

__all__ = [
    "CALLER",
    "CallRefused",
    "CertificateRefused",
    "caller_id",
    "reader_refusal",
    "refuse_certificate",
    "resolve_caller",
    "scanned_at_permission",
]

#: The auth-context property gRPC fills with the verified client certificate's subject CN.
_CN_PROPERTY = "x509_common_name"


#: The caller id of the unary call running in this task, set by the wrapper that read it for
#: the limits (:class:`~apcv_verify.service.interceptors.CallInterceptor`), so that the
#: handler does not read ``auth_context()`` again; None where no wrapper set it.
CALLER: ContextVar[str | None] = ContextVar("apcv_caller", default=None)


class CallRefused(Exception):
    """The call itself is not allowed (mapped to PERMISSION_DENIED with this message and
    ``reason``, the ``ErrorInfo`` reason: ``CALLER_NOT_ALLOWED``, ``SCANNED_AT_NOT_ALLOWED``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class CertificateRefused(Exception):
    """The client certificate may not call: revoked by its CA, or its revocation cannot be
    checked (service.revocation). The call ends with ``code``, this message and ``reason``."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


async def refuse_certificate(
    context: grpc.aio.ServicerContext, refused: CertificateRefused
) -> NoReturn:
    """End the call as ``refused`` says: UNAUTHENTICATED is not retried (the same
    certificate is refused again), UNAVAILABLE is."""
    await abort(
        context,
        refused.code,
        refused.reason,
        str(refused),
        retryable=refused.code == grpc.StatusCode.UNAVAILABLE,
    )


def caller_id(auth_context: Mapping[str, Sequence[bytes]]) -> str:
    """The caller id of a call: the client certificate's subject CN, else ``anonymous``.

    gRPC only puts ``x509_common_name`` in the auth context after the handshake verified the
    certificate against ``tls.client_ca``, so the CN is authenticated, not claimed.
    """
    names = auth_context.get(_CN_PROPERTY) or ()
    for name in names:
        text = name.decode("utf-8", errors="replace")
        if text:
            return text
    return ANONYMOUS_CALLER


def resolve_caller(config: Config, caller: str) -> CallerPolicy:
    """The policy of ``caller``; CallRefused when the table has neither it nor ``*``."""
    policy = config.caller(caller)
    if policy is None:
        raise CallRefused(f"caller {caller!r} is not in the callers table", "CALLER_NOT_ALLOWED")
    return policy


def scanned_at_permission(policy: CallerPolicy, caller: str) -> None:
    """CallRefused unless ``caller`` may send ``scanned_at`` (docs/profile.md §7.5)."""
    if not policy.may_send_scanned_at:
        raise CallRefused(
            f"caller {caller!r} may not send scanned_at (callers.may_send_scanned_at is false)",
            "SCANNED_AT_NOT_ALLOWED",
        )


def reader_refusal(caller: str, field: str) -> Refusal:
    """A ``Verify`` or ``VerifyBatch`` whose scan at ``field`` names a reader that is not
    one of ``caller``'s (``callers.readers``): PERMISSION_DENIED, READER_NOT_ALLOWED, the
    field in the message and in the ``ErrorInfo`` metadata. The reader id itself is not
    echoed: the caller has it, and errors reach logs."""
    return Refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        "READER_NOT_ALLOWED",
        f"{field}: not one of caller {caller!r}'s readers (callers.readers)",
        {"field": field},
    )
