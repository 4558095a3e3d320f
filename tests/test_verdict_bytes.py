"""A batch's and a stream's responses are written by the core straight from its decisions
(``rust/apcv-py/src/verdicts.rs``), not through ``prost`` messages: byte for byte what
``prost`` encodes for the same verdicts (``WireBatch.verdict``, the unary and FHIR path), for
every kind of item, every disclosure and answers given again (``resent``)."""

from __future__ import annotations

import asyncio
import time

import pytest
from apcv_verify import _native
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from apcv_verify.config import FIELD_GROUPS, USES
from apcv_verify.issuer import DemoPKI
from apcv_verify.replay.answers import AnswerRecovery, MemoryAnswers

from .test_wire import new_verifier, scans_of_every_kind

Scan = verifier_pb2.Scan


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(tag: int, data: bytes) -> bytes:
    """``data`` as a length-delimited field ``tag``."""
    return varint(tag << 3 | 2) + varint(len(data)) + data


@pytest.mark.parametrize("groups", [(), ("ins",), ("identity", "amo"), tuple(FIELD_GROUPS)])
def test_a_batch_response_is_the_prost_encoding_of_its_verdicts(
    pki: DemoPKI, groups: tuple[str, ...]
) -> None:
    now = int(time.time())
    scans = scans_of_every_kind(pki, now)
    batch = _native.WireBatch.batch(
        verifier_pb2.VerifyBatchRequest(scans=scans).SerializeToString()
    )
    assert batch is not None
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    disclosure = {use: list(groups) for use in ("", *USES)}
    verdicts = [batch.verdict(i, disclosure) for i in range(len(scans))]
    assert batch.response(disclosure) == b"".join(field(1, v) for v in verdicts)
    decoded = [verifier_pb2.Verdict.FromString(v) for v in verdicts]
    assert any(v.decision == verifier_pb2.DECISION_ACCEPTED for v in decoded)
    assert any(v.delegation.used for v in decoded)
    assert any(v.reason == verifier_pb2.REASON_MALFORMED for v in decoded)


def test_stream_responses_with_fhir_and_resent_answers_are_the_prost_encoding(
    pki: DemoPKI,
) -> None:
    now = int(time.time())
    verifier = new_verifier(pki, now)
    recovery = AnswerRecovery(MemoryAnswers(100), 3600)
    disclosure = {use: list(FIELD_GROUPS) for use in ("", *USES)}
    scans = scans_of_every_kind(pki, now)
    scans[0].include_fhir = True

    def answered(messages: list[bytes]) -> tuple[_native.WireBatch, list[bytes]]:
        batch = _native.WireBatch.stream(messages, 0, 1000)

        async def verify() -> None:
            verifier.verify_wire(batch, list(USES), now)

        asyncio.run(recovery.answer_wire(batch, "caller-1", now, verify))
        for index, _ in batch.fhir_wanted():
            batch.set_fhir(index, '{"resourceType": "Bundle", "é": 1}')
        return batch, batch.response(disclosure)

    one = [verifier_pb2.VerifyStreamRequest(scan=s).SerializeToString() for s in scans]
    several = verifier_pb2.VerifyStreamRequest(scans=scans).SerializeToString()
    # The second time, the same requests are resends: answered again from the kept answers.
    for round_ in range(2):
        batch, replies = answered([*one, several, b"\xff\xff"])
        assert len(replies) == len(scans) + 2
        for k, reply in enumerate(replies[: len(scans)]):
            assert reply == field(1, batch.verdict(k, disclosure))
        offset = len(scans)
        expected = b"".join(field(2, batch.verdict(offset + k, disclosure)) for k in range(offset))
        assert replies[offset] == expected
        assert replies[-1] == field(1, batch.verdict(2 * offset, disclosure))
        decoded = verifier_pb2.VerifyStreamResponse.FromString(replies[0]).verdict
        assert decoded.fhir_json and decoded.resent == (round_ == 1)
        verdicts = [
            verifier_pb2.Verdict.FromString(batch.verdict(k, disclosure)) for k in range(2 * offset)
        ]
        assert any(len(v.amc) == 2 for v in verdicts)
        # `scans` repeats the requests before it: answered again (`resent`) even in round 0.
        assert any(v.resent for v in verdicts[offset:])
