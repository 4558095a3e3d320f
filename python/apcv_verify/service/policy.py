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

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import NoReturn

import grpc
import structlog

from ..config import ANONYMOUS_CALLER, CallerPolicy, Config
from .errors import Refusal, abort

__all__ = [
    "CALLER",
    "CallRefused",
    "CertificateRefused",
    "POLICY_REASONS",
    "RefusalLog",
    "caller_id",
    "reader_refusal",
    "refuse_certificate",
    "resolve_caller",
    "scanned_at_permission",
]

log = structlog.get_logger("apcv_verify.policy")

#: The reasons a caller's own entry refuses a call or a stream item for: what
#: :class:`RefusalLog` tells about (the rest of a refused item's reasons are the scan's).
POLICY_REASONS = frozenset({"CALLER_NOT_ALLOWED", "SCANNED_AT_NOT_ALLOWED", "READER_NOT_ALLOWED"})
#: Seconds between two log lines of one caller and reason (the alert's window is minutes).
REFUSAL_LOG_INTERVAL = 60.0
#: Callers and reasons remembered at most: past it the next refusal of each is told again.
_REMEMBERED_REFUSALS = 4096

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


class RefusalLog:
    """The ``caller_refused`` log lines that say who a caller's entry refused, and for
    what: the first refusal of each caller and reason, then at most one line a minute,
    with the number of refusals since the last line (a refused caller may call again and
    again; the metrics count them all but cannot name the caller). The caller id is the
    certificate's CN, as in the audit record; no reader id, request id or field value."""

    def __init__(
        self,
        interval: float = REFUSAL_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        #: (caller, reason) → (when last told, refusals since).
        self._told: dict[tuple[str, str], tuple[float, int]] = {}

    def tell(self, caller: str, reason: str, method: str, count: int = 1) -> None:
        """``count`` refusals of ``caller`` for ``reason`` on ``method``."""
        key = (caller, reason)
        now = self._clock()
        told = self._told.get(key)
        if told is not None and now - told[0] < self._interval:
            self._told[key] = (told[0], told[1] + count)
            return
        if told is None and len(self._told) >= _REMEMBERED_REFUSALS:
            self._told.clear()
        self._told[key] = (now, 0)
        refusals = count + (0 if told is None else told[1])
        log.warning(
            "caller_refused", caller=caller, reason=reason, method=method, refusals=refusals
        )

    def tell_items(self, caller: str, method: str, counts: Iterable[tuple[str, int]]) -> None:
        """The stream items of ``counts`` (``WireBatch.refusal_counts``) that ``caller``'s
        entry refused."""
        for reason, count in counts:
            if reason in POLICY_REASONS:
                self.tell(caller, reason, method, count)


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
