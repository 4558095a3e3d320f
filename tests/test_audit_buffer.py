"""The audit buffer (:class:`~apcv_verify.observe.logs.BufferedLines`): a batch's lines written
at once (``write_lines``) reach the file as line by line, in whole lines of at most the limit;
the records the core leaves in its queue keep their place among them."""

from __future__ import annotations

import asyncio
import io
import json
import time

from apcv_verify import _native
from apcv_verify._proto.apcv.verify.v1.verifier_pb2 import Scan
from apcv_verify.config import USES
from apcv_verify.issuer import DemoPKI
from apcv_verify.observe.logs import BufferedLines

from .test_wire import new_verifier, unary_call


class _Writes(io.StringIO):
    """A file that records each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


LINES = [f'{{"n": {i}, "pad": "{"x" * (i % 7 * 9)}"}}\n' for i in range(40)]


def test_write_lines_matches_line_by_line_writes_outside_a_loop() -> None:
    one, many = _Writes(), _Writes()
    single = BufferedLines(one, limit=200)
    batch = BufferedLines(many, limit=200)
    for line in LINES:
        single.write(line)
    batch.write_lines(LINES)
    single.drain()
    batch.drain()
    assert many.getvalue() == one.getvalue() == "".join(LINES)
    # Whole lines only, each write at most the limit (or one line alone).
    for chunk in many.writes:
        assert chunk.endswith("\n")
        assert len(chunk) <= 200 or chunk.count("\n") == 1


def test_write_lines_below_the_limit_waits_for_the_timer_then_drains() -> None:
    out = _Writes()

    async def run() -> None:
        buffer = BufferedLines(out, interval=0.01, limit=1 << 20)
        buffer.write_lines(LINES[:3])
        buffer.write_lines(LINES[3:5])
        buffer.write_lines([])
        assert out.getvalue() == ""  # buffered until the timer fires
        await asyncio.sleep(0.05)
        assert out.getvalue() == "".join(LINES[:5])
        assert len(out.writes) == 1  # one timer for both batches

    asyncio.run(run())


def test_write_lines_over_the_limit_drains_at_once() -> None:
    out = _Writes()

    async def run() -> None:
        buffer = BufferedLines(out, interval=60, limit=100)
        buffer.write_lines(LINES)
        assert out.getvalue() == "".join(LINES)

    asyncio.run(run())


def _queue_records(buffer: BufferedLines, pki: DemoPKI, count: int) -> int:
    """``count`` unary calls' audit records left in ``buffer``'s queue, as the service's
    ``Verify`` leaves them; about the bytes then waiting there."""
    now = int(time.time())
    verifier = new_verifier(pki, now)
    view = _native.CallerView(list(USES), {use: [] for use in ("", *USES)})
    key = _native.HolderRefKey(b"buffer-secret")
    queued = 0
    for n in range(count):
        scan = Scan(request_id=f"r-{n}", nfc_bytes=pki.present("alice"))
        scan.reader.reader_id = "reader-01"
        queued = unary_call(scan).answer_unary(
            verifier, view, now, caller="caller-1", audit=(key, None, buffer.queue)
        )[4]
    return queued


def test_queued_records_keep_their_place_among_the_lines(pki: DemoPKI) -> None:
    """Records the core left in the queue are rendered where they were queued: before the
    lines written after them, after those written before."""
    out = _Writes()

    async def run() -> None:
        buffer = BufferedLines(out, interval=60, limit=1 << 20)
        buffer.write_lines(LINES[:2])
        _queue_records(buffer, pki, 2)
        buffer.write_lines(LINES[2:3])
        _queue_records(buffer, pki, 1)
        assert out.getvalue() == ""  # nothing drained: the timer and the limit are far
        buffer.drain()
        assert len(buffer.queue) == 0

    asyncio.run(run())
    written = out.getvalue().splitlines(keepends=True)
    assert len(written) == 6
    assert written[:2] == LINES[:2] and written[4] == LINES[2]
    records = [json.loads(line) for line in written[2:4] + written[5:]]
    assert [r["request_id"] for r in records] == ["r-0", "r-1", "r-0"]
    assert {r["kind"] for r in records} == {"audit"} and records[0]["caller"] == "caller-1"


def test_queued_records_wait_for_the_timer_or_drain_when_full(pki: DemoPKI) -> None:
    out = _Writes()

    async def run() -> None:
        buffer = BufferedLines(out, interval=0.01, limit=1 << 20)
        buffer.queued(_queue_records(buffer, pki, 2))
        buffer.queued(_queue_records(buffer, pki, 1))
        assert out.getvalue() == ""  # waiting for the timer
        await asyncio.sleep(0.05)
        assert len(out.writes) == 1 and out.getvalue().count("\n") == 3
        full = BufferedLines(out, interval=60, limit=1000)
        queued = _queue_records(full, pki, 4)
        assert queued >= 1000  # four lines of about 325 bytes
        full.queued(queued)
        assert len(full.queue) == 0 and out.getvalue().count("\n") == 7
        for chunk in out.writes[1:]:  # whole lines of at most the limit
            assert chunk.endswith("\n") and len(chunk) <= 1000

    asyncio.run(run())


def test_queued_records_are_written_at_once_outside_a_loop(pki: DemoPKI) -> None:
    out = _Writes()
    buffer = BufferedLines(out, limit=1 << 20)
    buffer.queued(_queue_records(buffer, pki, 1))
    assert json.loads(out.getvalue())["request_id"] == "r-0"
