"""The latency floor under ``Verify``'s p99: ghz at one fixed rate against four servers.

The service's p99 target (docs/benchmarks.md "Unary latency: where the p99 goes") is judged
with ghz on the benchmark's machine. This asks what part of the tail is the service's, by
sending the same calls at the same rate to:

* ``service``: ``apcv-verify serve`` as ``make bench`` starts it (1 worker, memory store,
  audit log to a file);
* ``echo``: grpc.aio answering fixed bytes (service_bench.py's echo server), the stack the
  service is built on with nothing behind it;
* ``sync-echo``: grpcio's thread-pool server answering the same bytes;
* ``go-echo``: grpc-go answering the same bytes (loadtest/goecho, built here with ``go
  build``): what the load generator and the machine allow, without grpcio.

Each server is started once; per round, each (server, placement) pair in alternating order
gets ghz at ``--rps`` for ``--seconds`` (concurrency 16, 4 connections, as the benchmark's
latency step), with fresh request ids. Placements: ``split`` (the server on the first half of
the CPUs, ghz on the other, as service_bench.py's latency step) and ``shared`` (both on every
CPU). ghz runs with its Go collector off, as in the latency step; ``--ghz-collector off,on``
alternates both in each round (the collector's pauses count as the calls' latency). Prints
each run's p50, p90 and p99 and the load average before it, then the medians of the rounds.
Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Case, free_port, start_server, stop_server  # noqa: E402
from corpus import make_pki, presentations  # noqa: E402
from service_bench import (  # noqa: E402
    SERVICE,
    _response_size,
    _start_echo,
    _unary,
    echo_reply,
    encode_unary,
    latency_at,
    service_environment,
    start_go_echo,
)

SERVERS = ("service", "echo", "sync-echo", "go-echo")
PLACEMENTS = ("split", "shared")


def serve_sync(port: int, reply: bytes) -> None:
    """grpcio's thread-pool server answering every unary call with ``reply``."""

    class Answer(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(lambda request, context: reply)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[Answer()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def _start_process(command: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """``command`` started on a free port (``{port}`` in its arguments stands for it);
    returns when it prints ``serving``."""
    port = free_port()
    process = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in command],
        stdout=subprocess.PIPE,
        env=service_environment(),
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"serving":
        process.kill()
        raise RuntimeError(f"{command[0]} did not start")
    return process, f"127.0.0.1:{port}"


@contextmanager
def started(name: str, pki: Any, work: Path, reply_size: int) -> Iterator[tuple[int, str]]:
    """Server ``name`` running: its pid and address."""
    if name == "service":
        server = start_server(Case("p99-floor", "Verify", 1, "memory"), pki.directory, None, work)
        try:
            yield server.process.pid, server.address
        finally:
            stop_server(server)
        return
    if name == "echo":
        process, address = _start_echo(reply_size)
    elif name == "sync-echo":
        reply = echo_reply(reply_size).hex()
        process, address = _start_process(
            [sys.executable, __file__, "--serve-sync", "{port}", reply]
        )
    else:
        go_echo = start_go_echo(reply_size, work)
        if go_echo is None:
            raise SystemExit("go is missing: the go-echo server needs Go")
        process, address = go_echo
    try:
        yield process.pid, address
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> int:
    if sys.argv[1:2] == ["--serve-sync"]:
        serve_sync(int(sys.argv[2]), bytes.fromhex(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=float, default=650.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--placements", default=",".join(PLACEMENTS), help="comma-separated")
    parser.add_argument(
        "--ghz-collector",
        default="off",
        help="ghz's Go collector: off, on, or off,on for both in each round",
    )
    args = parser.parse_args()
    servers = args.servers.split(",")
    placements = args.placements.split(",")
    collectors = args.ghz_collector.split(",")
    for name in (*servers, *placements):
        if name not in (*SERVERS, *PLACEMENTS):
            parser.error(f"unknown server or placement: {name}")
    if not set(collectors) <= {"off", "on"}:
        parser.error(f"--ghz-collector: off, on or both, not {args.ghz_collector}")
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="apcv-p99-floor-") as temporary, ExitStack() as stack:
        work = Path(temporary)
        pki = make_pki(work / "pki")
        service = stack.enter_context(started("service", pki, work, 0))
        warm = list(presentations(pki, 300))
        asyncio.run(_unary(service[1], SERVICE + "Verify", encode_unary(warm, "w"), 8))
        reply_size = _response_size(service[1], warm[0])  # the echo servers answer as much
        running = {"service": service}
        for name in servers:
            if name not in running:
                running[name] = stack.enter_context(started(name, pki, work, reply_size))
        pairs = [
            (name, placement, collector)
            for name in servers
            for placement in placements
            for collector in collectors
        ]
        for round_ in range(args.rounds):
            for name, placement, collector in pairs if round_ % 2 == 0 else pairs[::-1]:
                pid, address = running[name]
                # service_bench.py's latency step: ghz with fresh request ids, the server
                # and ghz on separate CPUs when pinned; no server histogram read here.
                server = SimpleNamespace(
                    process=SimpleNamespace(pid=pid), address=address, metrics_port=None
                )
                step = SimpleNamespace(
                    latency_seconds=args.seconds,
                    pin=placement == "split",
                    ghz_collector=collector == "on",
                )
                run = latency_at(server, pki, work, args.rps, step)
                if not run:
                    parser.error("ghz is missing: `make tools` installs it")
                runs.setdefault((name, placement, collector), []).append(run)
                print(
                    f"round {round_ + 1} {name:9} {placement:6} ghz collector {collector:3}"
                    f" p50 {run['p50_ms']:.2f}"
                    f" p90 {run['p90_ms']:.2f} p99 {run['p99_ms']:.2f} ms"
                    f" at {args.rps:.0f}/s load {run['load']:.2f}",
                    flush=True,
                )
    print("\nmedian of the rounds (ms)")
    for (name, placement, collector), results in runs.items():
        p99s = ", ".join(f"{r['p99_ms']:.2f}" for r in results)
        print(
            f"{name:9} {placement:6} ghz collector {collector:3}"
            f" p50 {statistics.median(r['p50_ms'] for r in results):.2f}"
            f" p90 {statistics.median(r['p90_ms'] for r in results):.2f}"
            f" p99 {statistics.median(r['p99_ms'] for r in results):.2f} (rounds {p99s})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
