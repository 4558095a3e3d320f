"""Request deserializers that never raise: bytes that do not decode become
:class:`Undecodable`, which the servicer answers (INVALID_ARGUMENT, or MALFORMED in place for a
batch or stream item) instead of grpcio (UNKNOWN with the exception text, or a whole stream
ended for one bad message); bytes over their size limit become :class:`TooLarge`, unread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from .._proto.apcv.verify.v1 import verifier_pb2
from .errors import abort

__all__ = [
    "MAX_REQUEST_BYTES",
    "UNDECODABLE",
    "BatchItems",
    "TooLarge",
    "Undecodable",
    "bounded",
    "deserialize_batch",
    "lenient",
]

M = TypeVar("M", bound=Message)

#: Largest request of one scan (a Verify call, one VerifyStream message): the largest
#: presentation is 16 KiB of NFC bytes or 4,296 QR characters (docs/profile.md §4.4), plus
#: two 128-character ids and a 64-byte nonce, so a bigger request carries no real scan. It
#: also bounds what a stream holds: at most ``stream_window`` requests of this size read ahead.
#: A VerifyBatch is bounded by ``server.max_message_bytes`` alone.
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

    what: str  # "request", "batch" or "response"
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
            "response": "send fewer scans per batch (include_fhir makes each answer several"
            f" kB) or raise {self.setting}",
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


def _raw_batch_type() -> type[Message]:
    """``VerifyBatchRequest`` with its scans left as bytes (same field number, and a
    length-delimited field parses as bytes without any check), so that one undecodable scan
    is answered in place instead of making the whole batch undecodable."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="apcv_verify/raw_batch.proto", package="apcv_verify.internal", syntax="proto3"
    )
    proto.message_type.add(name="RawBatch").field.add(
        name="scans",
        number=verifier_pb2.VerifyBatchRequest.SCANS_FIELD_NUMBER,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("apcv_verify.internal.RawBatch")
    )


_RAW_BATCH = _raw_batch_type()
_scan_or_undecodable = lenient(verifier_pb2.Scan)

#: A batch's scans, each decoded or not (what the batch deserializer gives when the batch as
#: a whole does not decode but its framing does).
BatchItems = list[verifier_pb2.Scan | Undecodable]


def deserialize_batch(data: bytes) -> verifier_pb2.VerifyBatchRequest | BatchItems | Undecodable:
    try:
        return verifier_pb2.VerifyBatchRequest.FromString(data)  # the usual case: one parse
    except DecodeError:
        pass
    try:
        raw = _RAW_BATCH.FromString(data)
    except DecodeError:
        return Undecodable()  # not even the batch's framing
    return [_scan_or_undecodable(item) for item in raw.scans]  # type: ignore[attr-defined]
