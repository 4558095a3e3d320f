"""The stream guard's idle timeout, one timer per stream (service/limits.py): a wait for the
next request that lasts ``server.stream_idle_seconds`` ends the stream, time spent between
requests (answering them) does not count, and a cancellation that is not the timer's stays a
cancellation, as with an ``asyncio.timeout`` around each wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from apcv_verify.service.limits import _StreamGuard, _StreamIdle


async def paced(delays: list[float]) -> AsyncIterator[bytes]:
    """A request after each delay, then the end of the stream."""
    for index, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield b"request %d" % index


def test_requests_closer_than_the_idle_time_keep_the_stream_whatever_its_length() -> None:
    async def scenario() -> int:
        # Margins wide enough for a loaded machine: each wait 0.4 s under the idle time.
        guard = _StreamGuard(0.6, None)
        count = 0
        async for _request in guard.requests(paced([0.2] * 6)):  # 1.2 s in all
            count += 1
            guard.answered()
            await asyncio.sleep(0.8)  # answering: not a wait for the client
        return count

    assert asyncio.run(scenario()) == 6


def test_a_wait_of_the_whole_idle_time_ends_the_stream() -> None:
    async def scenario() -> tuple[int, float]:
        guard = _StreamGuard(0.6, None)
        count = 0
        started = 0.0
        with pytest.raises(_StreamIdle):
            async for _request in guard.requests(paced([0.05, 0.05, 5.0])):
                count += 1
                started = time.monotonic()
        return count, time.monotonic() - started

    count, waited = asyncio.run(scenario())
    assert count == 2
    assert 0.55 <= waited < 2.0


def test_a_cancelled_wait_is_a_cancellation_not_an_idle_stream() -> None:
    async def scenario() -> None:
        guard = _StreamGuard(0.3, None)

        async def consume() -> None:
            async for _request in guard.requests(paced([5.0])):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)  # the timer, had it stayed armed, would have fired

    asyncio.run(scenario())
