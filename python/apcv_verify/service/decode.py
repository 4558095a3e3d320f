"""Request deserializers that never raise: bytes that do not decode become
:class:`Undecodable`, which the servicer answers (INVALID_ARGUMENT) instead of grpcio (UNKNOWN
with the exception text); bytes over their size limit become :class:`TooLarge`, unread. Batch
and stream messages are decoded by the core (``_native.WireBatch``), which answers an
undecodable item MALFORMED in place and an undecodable batch like :class:`Undecodable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from .errors import abort

__all__ = [
    "MAX_REQUEST_BYTES",
    "UNDECODABLE",
    "TooLarge",
    "Undecodable",
    "bounded",
    "lenient",
]

M = TypeVar("M", bound=Message)

#: Largest request of one scan (a Verify call, a VerifyStream request with ``scan``): the
#: largest presentation is 16 KiB of NFC bytes or 4,296 QR characters (docs/profile.md
#: §4.4), plus two 128-character ids and a 64-byte nonce, so a bigger one carries no real scan. It
#: also bounds what a stream of such requests holds: at most ``stream_window`` of them read
#: ahead. A VerifyBatch, and a VerifyStream request with ``scans``, are bounded by
#: ``server.max_message_bytes`` alone (and a stream's read-ahead by
#: ``server.stream_memory_bytes``).
MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True)
class Undecodable:
    """Bytes that are not a valid protobuf encoding of the expected message (broken framing,
    invalid UTF-8 in a string field): what the request deserializers give instead of raising,
    so that the servicer answers it (INVALID_ARGUMENT, or MALFORMED in place for an item)
    rather than grpcio (UNKNOWN with the exception text, or a stream ended as a whole)."""


@dataclass(frozen=True)
class TooLarge:
    """A message over its size limit: what the request deserializers give, measured on the raw
    bytes and left undecoded (:func:`bounded`), and what a batch's response is checked
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
        )


R = TypeVar("R")


def bounded(
    deserialize: Callable[[bytes], R], what: str, limit: int, setting: str | None
) -> Callable[[bytes], R | TooLarge]:
    """``deserialize``, except that bytes over ``limit`` become a :class:`TooLarge` unread
    (so an undecodable oversize message is refused for its size too)."""

    def bounded(data: bytes) -> R | TooLarge:
        if len(data) > limit:
            return TooLarge(what, len(data), limit, setting)
        return deserialize(data)

    return bounded


#: What an undecodable scan's field violation says (the field is the scan's path).
UNDECODABLE = "not a valid protobuf encoding (for instance invalid UTF-8 in a string field)"


def lenient(message_type: type[M]) -> Callable[[bytes], M | Undecodable]:
    """A request deserializer for ``message_type`` that returns :class:`Undecodable` rather
    than raising."""

    def deserialize(data: bytes) -> M | Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return Undecodable()

    return deserialize
