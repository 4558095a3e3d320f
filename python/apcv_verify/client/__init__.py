"""The Python client of ``apcv.verify.v1`` (asyncio, typed): docs/integration.md.

- :class:`VerifierClient` — ``Verify`` and ``VerifyBatch`` for hospital systems: deadlines,
  retries with the same ``request_id`` on ``UNAVAILABLE`` and on the server's ``CANCELLED``,
  TLS and mTLS, typed errors.
- :class:`EdgeBatcher` — an edge reader's scans over one ``VerifyStream``, in a durable SQLite
  spool from the scan to its delivered answer, resent after a reconnection or a restart.

The messages are the generated ones of ``protos/apcv/verify/v1/verifier.proto``
(:data:`Scan`, :data:`Verdict`, :data:`Decision`, :data:`Reason`).
"""

from .._proto.apcv.verify.v1 import verifier_pb2 as _pb
from .batcher import (
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    Answer,
    BatcherClosedError,
    BatcherMetrics,
    EdgeBatcher,
)
from .errors import (
    ERROR_DOMAIN,
    CallCancelledError,
    DeadlineExceededError,
    FieldViolation,
    InvalidRequestError,
    MessageTooLargeError,
    PermissionDeniedError,
    RequestIdReusedError,
    ServerBusyError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
    VerifierError,
    error_from_rpc,
)
from .spool import DuplicateScanError, SpoolBusyError
from .transport import RetryPolicy, TLSConfig, TLSFiles
from .unary import MAX_ID_LENGTH, VerifierClient, make_scan, new_request_id

Scan = _pb.Scan
ReaderContext = _pb.ReaderContext
Verdict = _pb.Verdict
Decision = _pb.Decision
Reason = _pb.Reason

__all__ = [
    "ERROR_DOMAIN",
    "MAX_ID_LENGTH",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "Answer",
    "BatcherClosedError",
    "BatcherMetrics",
    "CallCancelledError",
    "DeadlineExceededError",
    "Decision",
    "DuplicateScanError",
    "EdgeBatcher",
    "FieldViolation",
    "InvalidRequestError",
    "MessageTooLargeError",
    "PermissionDeniedError",
    "ReaderContext",
    "Reason",
    "RequestIdReusedError",
    "RetryPolicy",
    "Scan",
    "ServerBusyError",
    "ServerError",
    "SpoolBusyError",
    "TLSConfig",
    "TLSFiles",
    "UnauthenticatedError",
    "UnavailableError",
    "Verdict",
    "VerifierClient",
    "VerifierError",
    "error_from_rpc",
    "make_scan",
    "new_request_id",
]
