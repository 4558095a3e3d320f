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
CPU). Prints each run's p50, p90 and p99 and the load average before it, then the medians of
the rounds. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Case, free_port, ghz_command, start_server, stop_server  # noqa: E402
from corpus import make_pki, presentations, write_corpus  # noqa: E402
from service_bench import (  # noqa: E402
    SERVICE,
    _response_size,
    _set_affinity,
    _start_echo,
    _unary,
    encode_unary,
    split_cores,
)

GO_ECHO_SOURCE = Path(__file__).resolve().parent / "goecho"
SERVERS = ("service", "echo", "sync-echo", "go-echo")
PLACEMENTS = ("split", "shared")


def _echo_reply(size: int) -> bytes:
    """An encoded ``VerifyResponse`` of ``size`` bytes or a little more (ghz decodes it)."""
    from apcv_verify._proto.apcv.verify.v1 import verifier_pb2

    verdict = verifier_pb2.Verdict(request_id="x", detail="x" * max(0, size - 8))
    return verifier_pb2.VerifyResponse(verdict=verdict).SerializeToString()


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
    """``command`` (which ends with its port's place) started on a free port; returns when
    it prints ``serving``."""
    port = free_port()
    process = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in command], stdout=subprocess.PIPE
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
        reply = _echo_reply(reply_size).hex()
        process, address = _start_process(
            [sys.executable, __file__, "--serve-sync", "{port}", reply]
        )
    else:
        binary = work / "goecho"
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GO_ECHO_SOURCE, check=True)
        reply = _echo_reply(reply_size).hex()
        process, address = _start_process([str(binary), "127.0.0.1:{port}", reply])
    try:
        yield process.pid, address
    finally:
        process.terminate()
        process.wait(timeout=10)


def ghz_run(
    pid: int, address: str, placement: str, data: Path, rps: float, seconds: float
) -> dict[str, float]:
    """ghz at ``rps`` against ``address``: p50, p90, p99 (ms) and the load average before."""
    command = ghz_command(
        Case("p99-floor", "Verify", 1, "memory", concurrency=16, connections=4),
        data,
        address,
        seconds,
    )
    command[-1:-1] = ["--rps", str(max(1, int(rps)))]
    cores = split_cores() if placement == "split" else None
    if cores is not None:
        _set_affinity(pid, cores[0])
        command = ["taskset", "-c", ",".join(map(str, sorted(cores[1]))), *command]
    try:
        load = os.getloadavg()[0]
        run = subprocess.run(command, check=True, capture_output=True, text=True)
    finally:
        if cores is not None:
            _set_affinity(pid, cores[0] | cores[1])
    report = json.loads(run.stdout)
    if not report.get("latencyDistribution"):
        raise RuntimeError(f"ghz: no answered call: {report.get('errorDistribution')}")
    latency = {int(d["percentage"]): d["latency"] / 1e6 for d in report["latencyDistribution"]}
    return {
        "p50": latency[50],
        "p90": latency[90],
        "p99": latency[99],
        "rps": report["rps"],
        "load": load,
    }


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
    args = parser.parse_args()
    servers = args.servers.split(",")
    placements = args.placements.split(",")
    for name in (*servers, *placements):
        if name not in (*SERVERS, *PLACEMENTS):
            parser.error(f"unknown server or placement: {name}")
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
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
        pairs = [(name, placement) for name in servers for placement in placements]
        count = int(args.rps * args.seconds * 1.2) + 10
        for round_ in range(args.rounds):
            for n, (name, placement) in enumerate(pairs if round_ % 2 == 0 else pairs[::-1]):
                data = write_corpus(work, pki, count, prefix=f"floor-{round_}-{n}-")
                pid, address = running[name]
                run = ghz_run(pid, address, placement, data, args.rps, args.seconds)
                runs.setdefault((name, placement), []).append(run)
                print(
                    f"round {round_ + 1} {name:9} {placement:6} p50 {run['p50']:.2f}"
                    f" p90 {run['p90']:.2f} p99 {run['p99']:.2f} ms at {run['rps']:.0f}/s"
                    f" load {run['load']:.2f}",
                    flush=True,
                )
    print("\nmedian of the rounds (ms)")
    for (name, placement), results in runs.items():
        p99s = ", ".join(f"{r['p99']:.2f}" for r in results)
        print(
            f"{name:9} {placement:6} p50 {statistics.median(r['p50'] for r in results):.2f}"
            f" p90 {statistics.median(r['p90'] for r in results):.2f}"
            f" p99 {statistics.median(r['p99'] for r in results):.2f} (rounds {p99s})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
