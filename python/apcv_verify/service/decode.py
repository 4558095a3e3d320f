"""Request deserializers that never raise: a request is left encoded for the core
(``_native.WireBatch``), which decodes it and answers an undecodable request
INVALID_ARGUMENT (not grpcio's UNKNOWN with the exception text) and an undecodable batch or
stream item MALFORMED in place; bytes over their size limit become :class:`TooLarge`, unread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import grpc

from .errors import abort

__all__ = [
    "MAX_REQUEST_BYTES",
    "UNDECODABLE",
    "TooLarge",
    "left_encoded",
]

#: Largest request of one scan (a Verify call, a VerifyStream request with ``scan``): the
#: largest presentation is 16 KiB of NFC bytes or 4,296 QR characters (docs/profile.md
#: §4.4), plus two 128-character ids and a 64-byte nonce, so a bigger one carries no real scan. It
#: also bounds what a stream of such requests holds: at most ``stream_window`` of them read
#: ahead. A VerifyBatch, and a VerifyStream request with ``scans``, are bounded by
#: ``server.max_message_bytes`` alone (and a stream's read-ahead by
#: ``server.stream_memory_bytes``).
MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True)
class TooLarge:
    """A message over its size limit: what the request deserializers give, measured on the raw
    bytes and left undecoded (:func:`left_encoded`), and what a batch's response is checked
    against. The service answers it RESOURCE_EXHAUSTED / ``MESSAGE_TOO_LARGE`` naming the
    limit and, when a setting bounds it, the setting to raise."""

    #: "request", "batch", "response" (a batch's), or a VerifyStream request of several scans
    #: ("stream request") or response ("stream response")
    what: str
    size: int
    limit: int
    setting: str | None  # the configuration key that sets ``limit`` (None: MAX_REQUEST_BYTES)

    def __str__(self) -> str:
        if self.setting is None:
            return (
                f"{self.what} of {self.size} bytes is over {self.limit} bytes, the most a"
                " request of one scan can be: no QR code or NFC read holds a larger presentation"
            )
        advice = {
            "request": "raise it in the server's configuration",
            "batch": f"send fewer scans per batch or raise {self.setting}",
            "stream request": f"send fewer scans per request or raise {self.setting}",
            "response": "send fewer scans per batch (include_fhir makes each answer several"
            f" kB) or raise {self.setting}",
            "stream response": "send fewer scans per request (include_fhir makes each answer"
            f" several kB) or raise {self.setting}",
        }[self.what]
        return f"{self.what} of {self.size} bytes is over {self.setting} ({self.limit}): {advice}"

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        setting = {} if self.setting is None else {"setting": self.setting}
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "MESSAGE_TOO_LARGE",
            str(self),
            metadata={"limit": str(self.limit), "size": str(self.size), **setting},
            retryable=False,  # the same bytes are refused again
        )


def left_encoded(what: str, limit: int, setting: str | None) -> Callable[[bytes], bytes | TooLarge]:
    """The deserializer of a request the core decodes: its bytes as they are, or a
    :class:`TooLarge` unread when over ``limit``. One Python call per message: grpcio calls
    it for every request."""

    def deserialize(data: bytes) -> bytes | TooLarge:
        if len(data) > limit:
            return TooLarge(what, len(data), limit, setting)
        return data

    return deserialize


#: What an undecodable scan's field violation says (the field is the scan's path).
UNDECODABLE = "not a valid protobuf encoding (for instance invalid UTF-8 in a string field)"
