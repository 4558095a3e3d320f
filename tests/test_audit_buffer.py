"""The audit buffer (:class:`~apcv_verify.observe.logs.BufferedLines`): a batch's lines written
at once (``write_lines``) reach the file as line by line, in whole lines of at most the limit."""

from __future__ import annotations

import asyncio
import io

from apcv_verify.observe.logs import BufferedLines


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
