"""The service's CPU per Redis round trip of the replay store and answer recovery.

Each round trip alone, in-process, against a throw-away ``redis-server`` on loopback (or
``--url``): the answer lookup before verification (``RedisAnswers.lookup``), the replay
settlement (the store-epoch marker and ``SET … NX GET EX`` per item,
``RedisReplayStore``) and the keeping of the answers (``RedisAnswers.keep``), one after the
other, for 1 item (a unary ``Verify``) and 100 (a ``VerifyBatch`` of 100). Printed: CPU time
of this process per round trip (Redis's own CPU is not counted), and wall time. Every key is
new, as in a run without resends. ``--no-hiredis`` measures redis-py's Python reply parser.
Figures and their reading: docs/benchmarks.md "Redis: the cost of answer recovery".
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port: int = listener.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server without persistence on a free loopback port, stopped at the end."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server not found: `make system-deps` installs it")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="apcv-redis-cost-") as directory:
        process = subprocess.Popen(
            [executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait()


async def measure(url: str, sizes: Sequence[int], items: int) -> list[dict[str, Any]]:
    """CPU and wall µs per round trip of each kind and size, ``items`` items per case."""
    from apcv_verify.config import ReplaySection
    from apcv_verify.replay.answers import RedisAnswers
    from apcv_verify.replay.redis import RedisReplayStore

    config = ReplaySection(backend="redis", redis_url=url, timeout_seconds=2.0)
    store = RedisReplayStore(config)
    answers = RedisAnswers(store, config)
    try:
        if not await store.ping() or await answers.keys() is None:
            raise RuntimeError(f"Redis at {store.location} did not answer")
        now = int(time.time())
        record = secrets.token_bytes(26)  # an answer without AMC attestations
        rows = []
        for size in sizes:
            calls = max(20, items // size)
            keys = [[secrets.token_bytes(16) for _ in range(size)] for _ in range(calls + 1)]
            kinds: dict[str, Callable[[list[bytes]], Awaitable[Sequence[object] | None]]] = {
                "lookup": lambda k: answers.lookup(k, now),
                "settle": lambda k: store._outcomes(
                    [(key, "reader-1", now + 180, now) for key in k], now
                ),
                "keep": lambda k: answers.keep([(key, record) for key in k], now + 86400, now),
            }
            for kind, round_trip in kinds.items():
                await round_trip(keys[-1])  # connected, warm
                cpu, wall = time.process_time(), time.perf_counter()
                for batch in keys[:calls]:
                    found = await round_trip(batch)
                    assert found is not None and len(found) == size
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                rows.append(
                    {"kind": kind, "items": size, "cpu_us": cpu / calls * 1e6,
                     "wall_us": wall / calls * 1e6}
                )  # fmt: skip
        return rows
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing Redis (default: a throw-away redis-server)")
    parser.add_argument("--items", type=int, default=3000, help="items per case")
    parser.add_argument("--sizes", default="1,100", help="items per round trip")
    parser.add_argument("--no-hiredis", action="store_true", help="redis-py's Python parser")
    args = parser.parse_args()
    if args.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # before redis is imported
    sizes = [int(size) for size in args.sizes.split(",")]
    with redis_server() if args.url is None else _given(args.url) as url:
        rows = asyncio.run(measure(url, sizes, args.items))
    import redis.utils

    print(f"reply parser: {'hiredis' if redis.utils.HIREDIS_AVAILABLE else 'Python'}")
    for row in rows:
        print(
            f"{row['kind']:<7} {row['items']:>4} items: {row['cpu_us']:9.1f} µs CPU per round "
            f"trip, {row['cpu_us'] / row['items']:7.1f} per item (wall {row['wall_us']:9.1f})"
        )
    return 0


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    sys.exit(main())
