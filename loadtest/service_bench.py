"""The service against its core: server CPU per presentation, side by side in one run.

Part of ``make bench`` (after loadtest/bench.py). Each round starts a fresh demo PKI, an
``apcv-verify serve`` (1 worker, in-memory replay store, audit log to a file as in production)
and a bare grpc.aio echo server (this file with ``--echo``: the same Python, grpcio,
event loop and protobuf, the request parsed as a ``VerifyRequest`` and a ``VerifyResponse``
of the service's size sent back), then runs, in the opposite order of the previous round:

* ``core``: ``_native.Verifier.verify_batch`` from Python on the same presentations as
  ``Scan`` objects, one per call and 100 per call (this process's CPU time);
* ``verify``: unary ``Verify``; ``batch100``: ``VerifyBatch`` of 100; ``stream``:
  ``VerifyStream`` with one scan per request, ``--streams`` streams each keeping up to 64
  requests in flight; ``stream20``: ``VerifyStream`` with 20 scans per request (``scans``, as
  an edge reader's batcher sends them), up to 12 requests (240 scans) in flight per stream;
* ``verify-floor``: unary ``Verify`` to a server whose ``Verify`` is the service's binding
  call alone, with none of the service's Python around it (:func:`add_floor_verify`): the
  least any handler on grpc.aio does with this core, beside ``verify``;
* ``echo``: unary calls to the echo server with the ``Verify`` request and response sizes;
  ``echo-batch100``, ``echo-stream`` and ``echo-stream20``: the ``VerifyBatch`` and the two
  ``VerifyStream`` shapes on it (what gRPC and protobuf alone cost per presentation in each).

The client (a grpc.aio channel in this process) sends requests it encoded before the run, so
its own cost is small and never counted: the figure is the server process's own CPU
accounting before and after (each thread's time on a CPU in ns,
``/proc/<pid>/task/*/schedstat``; ``/proc/<pid>/stat`` utime + stime, in clock ticks, when a
thread ended meanwhile: see ``bench.cpu_used``), divided by the presentations answered. Then
the unary latency (:func:`measure_latency`), with ``ghz`` (when installed in .tools/bin by
loadtest/bench.py), the server on one half of the CPUs and ghz on the other (``--no-pin``:
sharing them) and ghz's Go collector off (``--ghz-collector``: on): ``Verify``'s maximum rate
in that placement (ghz as fast as the server answers), then p50/p99 at half of it, with the
server's own duration histogram and its threads' wait for a CPU reported beside
(:func:`latency_at`); beside it the bare echo and grpc-go servers at the same rate, and
``Verify`` at half the ``verify`` case's rate.

``--variant NAME=PYTHONPATH`` also runs the server of another copy of the package (its
``python`` folder, native module included) side by side in every round, with ``--cases`` a
lever's before and after; ``--variant-core`` adds each copy's own ``core100``, measured in a
child process with that copy's native module (a lever in the binding may change the core's
cost too).

Results (median of the rounds) go to docs/benchmarks.md between the service-bench markers;
``--plot`` draws them (server CPU per presentation by case) into a PNG linked from there.
``--quick`` is a short run for the tests (tests/test_service_bench.py): numbers, no claims.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apcv_verify import _native  # noqa: E402
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2  # noqa: E402
from apcv_verify.cli.main import grpc_experiments_environment  # noqa: E402
from apcv_verify.config import ServerSection  # noqa: E402
from apcv_verify.service.startup import event_loop_factory  # noqa: E402
from bench import (  # noqa: E402
    GHZ,
    MAX_MESSAGE_BYTES,
    Case,
    cpu_reading,
    cpu_used,
    free_port,
    ghz_command,
    metric_samples,
    replace_section,
    start_server,
    stop_server,
)
from corpus import READER_ID, make_pki, presentations, write_corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEGIN = "<!-- service-bench:begin -->"
END = "<!-- service-bench:end -->"
SERVICE = "/apcv.verify.v1.VerifierService/"
ECHO = "/apcv.bench.Echo/Echo"
ECHO_BATCH = "/apcv.bench.Echo/EchoBatch"
ECHO_STREAM = "/apcv.bench.Echo/EchoStream"
BATCH = 100
STREAM_WINDOW = 64
#: Scans per request of the ``stream20`` cases, and their requests in flight per stream:
#: about the client SDK's EdgeBatcher default of 256 scans in flight.
STREAM_SCANS = 20
STREAM_SCANS_WINDOW = 256 // STREAM_SCANS
SERVER_CASES = ("verify", "batch100", "stream", "stream20", "echo")
#: The echo server's cases (no variant has them).
ECHO_CASES = ("echo", "echo-batch100", "echo-stream", "echo-stream20")


def _identity(data: bytes) -> bytes:
    return data


# --- the bare echo server ------------------------------------------------------------------------


def _echo_verdict(size: int) -> verifier_pb2.Verdict:
    """A verdict whose encoded ``VerifyResponse`` is ``size`` bytes or a little more."""
    return verifier_pb2.Verdict(request_id="x", detail="x" * max(0, size - 8))


def echo_reply(size: int) -> bytes:
    """The encoded ``VerifyResponse`` the echo servers answer a ``Verify`` call with."""
    return verifier_pb2.VerifyResponse(verdict=_echo_verdict(size)).SerializeToString()


def service_grpc_experiments() -> dict[str, str]:
    """The GRPC_EXPERIMENTS entry ``apcv-verify serve`` starts gRPC with by default
    (``grpc_experiments_environment``), for servers started by other means."""
    return grpc_experiments_environment(ServerSection())


def service_environment() -> dict[str, str]:
    """This environment with :func:`service_grpc_experiments`: the echo servers get it too,
    so that the echo call is the same stack as the service's."""
    return {**os.environ, **service_grpc_experiments()}


def service_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    """How the service makes its event loop by default (``server.event_loop``): the echo
    servers run on it too, so that the echo call is the same stack as the service's."""
    return event_loop_factory(ServerSection().event_loop)


async def _echo_server(port: int, response_size: int) -> None:
    """grpc.aio, the service's three shapes with nothing behind them: ``Echo`` parses a
    VerifyRequest and answers ``response_size`` bytes of an encoded VerifyResponse (the
    service's answer size); ``EchoBatch`` parses a VerifyBatchRequest and answers as many such
    verdicts; ``EchoStream`` parses each VerifyStreamRequest of a stream and answers each with
    one VerifyStreamResponse of that size, or of as many such verdicts as it has ``scans``.
    What gRPC and protobuf cost per call, per message. ``Echo`` is also served as
    ``apcv.verify.v1.VerifierService/Verify``, for ghz's latency run (:func:`latency_at`)."""
    verdict = _echo_verdict(response_size)
    reply = verifier_pb2.VerifyResponse(verdict=verdict)
    stream_reply = verifier_pb2.VerifyStreamResponse(verdict=verdict)

    async def echo(request: verifier_pb2.VerifyRequest, context: Any) -> Any:
        return reply

    async def echo_batch(request: verifier_pb2.VerifyBatchRequest, context: Any) -> Any:
        return verifier_pb2.VerifyBatchResponse(verdicts=[verdict] * len(request.scans))

    async def echo_stream(requests: Any, context: Any) -> Any:
        async for request in requests:
            if request.scans:
                yield verifier_pb2.VerifyStreamResponse(verdicts=[verdict] * len(request.scans))
            else:
                yield stream_reply

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=verifier_pb2.VerifyRequest.FromString,
            response_serializer=verifier_pb2.VerifyResponse.SerializeToString,
        ),
        "EchoBatch": grpc.unary_unary_rpc_method_handler(
            echo_batch,
            request_deserializer=verifier_pb2.VerifyBatchRequest.FromString,
            response_serializer=verifier_pb2.VerifyBatchResponse.SerializeToString,
        ),
        "EchoStream": grpc.stream_stream_rpc_method_handler(
            echo_stream,
            request_deserializer=verifier_pb2.VerifyStreamRequest.FromString,
            response_serializer=verifier_pb2.VerifyStreamResponse.SerializeToString,
        ),
    }
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    # ``Echo`` also under the service's own name, for ghz (which reads the service's proto).
    as_verify = {"Verify": handlers["Echo"]}
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("apcv.bench.Echo", handlers),
            grpc.method_handlers_generic_handler("apcv.verify.v1.VerifierService", as_verify),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()


# --- the pre-encoding client ---------------------------------------------------------------------


def _scan(presentation: bytes, request_id: str) -> verifier_pb2.Scan:
    return verifier_pb2.Scan(
        request_id=request_id,
        nfc_bytes=presentation,
        reader=verifier_pb2.ReaderContext(reader_id=READER_ID),
    )


def encode_unary(items: Sequence[bytes], prefix: str) -> list[bytes]:
    return [
        verifier_pb2.VerifyRequest(scan=_scan(p, f"{prefix}{i}")).SerializeToString()
        for i, p in enumerate(items)
    ]


def encode_batches(items: Sequence[bytes], prefix: str) -> list[bytes]:
    return [
        verifier_pb2.VerifyBatchRequest(
            scans=[_scan(p, f"{prefix}{s}-{i}") for i, p in enumerate(items[s : s + BATCH])]
        ).SerializeToString()
        for s in range(0, len(items), BATCH)
    ]


def encode_stream(items: Sequence[bytes], prefix: str) -> list[bytes]:
    return [
        verifier_pb2.VerifyStreamRequest(scan=_scan(p, f"{prefix}{i}")).SerializeToString()
        for i, p in enumerate(items)
    ]


def encode_stream_scans(items: Sequence[bytes], prefix: str) -> list[bytes]:
    """Stream requests of ``STREAM_SCANS`` scans each (``scans``)."""
    return [
        verifier_pb2.VerifyStreamRequest(
            scans=[_scan(p, f"{prefix}{s}-{i}") for i, p in enumerate(items[s : s + STREAM_SCANS])]
        ).SerializeToString()
        for s in range(0, len(items), STREAM_SCANS)
    ]


async def _unary(address: str, method: str, requests: list[bytes], concurrency: int) -> list[bytes]:
    replies: list[bytes] = []
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    ) as channel:
        call = channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        queue = iter(requests)

        async def worker() -> None:
            for request in queue:
                replies.append(await call(request, timeout=60))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies


async def _streams(
    address: str,
    requests: list[bytes],
    streams: int,
    path: str = SERVICE + "VerifyStream",
    window: int = STREAM_WINDOW,
) -> list[bytes]:
    replies: list[bytes] = []
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.stream_stream(
            path, request_serializer=_identity, response_deserializer=_identity
        )

        async def one(part: list[bytes]) -> None:
            credits = asyncio.Semaphore(window)

            async def send() -> Any:
                for request in part:
                    await credits.acquire()
                    yield request

            call = method(send(), timeout=300)
            async for reply in call:
                replies.append(reply)
                credits.release()

        await asyncio.gather(*(one(requests[i::streams]) for i in range(streams)))
    return replies


@dataclass
class Measured:
    case: str
    round: int
    items: int
    cpu_us_per_item: float
    wall_s: float
    accepted: int
    load_before: float

    @property
    def rate(self) -> float:
        return self.items / self.wall_s


def _accepted(case: str, replies: list[bytes]) -> int:
    if case == "echo" or case == "echo-stream":
        return len(replies)
    if case == "echo-stream20":
        return sum(len(verifier_pb2.VerifyStreamResponse.FromString(r).verdicts) for r in replies)
    if case == "stream20":
        return sum(
            v.decision == verifier_pb2.DECISION_ACCEPTED
            for r in replies
            for v in verifier_pb2.VerifyStreamResponse.FromString(r).verdicts
        )
    if case == "echo-batch100":
        return sum(len(verifier_pb2.VerifyBatchResponse.FromString(r).verdicts) for r in replies)
    if case == "batch100":
        return sum(
            v.decision == verifier_pb2.DECISION_ACCEPTED
            for r in replies
            for v in verifier_pb2.VerifyBatchResponse.FromString(r).verdicts
        )
    kind = verifier_pb2.VerifyResponse if case == "verify" else verifier_pb2.VerifyStreamResponse
    return sum(
        kind.FromString(r).verdict.decision == verifier_pb2.DECISION_ACCEPTED for r in replies
    )


def measure_server(
    case: str, pid: int, address: str, items: Sequence[bytes], round_: int, args: Any
) -> Measured:
    prefix = f"{case}{round_}-"
    if case in ("verify", "echo"):
        requests = encode_unary(items, prefix)
    elif case in ("batch100", "echo-batch100"):
        requests = encode_batches(items, prefix)
    elif case in ("stream20", "echo-stream20"):
        requests = encode_stream_scans(items, prefix)
    else:
        requests = encode_stream(items, prefix)
    if case == "stream":
        run = _streams(address, requests, args.streams)
    elif case == "echo-stream":
        run = _streams(address, requests, args.streams, ECHO_STREAM)
    elif case == "stream20":
        stream = SERVICE + "VerifyStream"
        run = _streams(address, requests, args.streams, stream, STREAM_SCANS_WINDOW)
    elif case == "echo-stream20":
        run = _streams(address, requests, args.streams, ECHO_STREAM, STREAM_SCANS_WINDOW)
    elif case == "batch100":
        run = _unary(address, SERVICE + "VerifyBatch", requests, args.batch_concurrency)
    elif case == "echo-batch100":
        run = _unary(address, ECHO_BATCH, requests, args.batch_concurrency)
    else:
        method = ECHO if case == "echo" else SERVICE + "Verify"
        run = _unary(address, method, requests, args.concurrency)
    load = os.getloadavg()[0]
    before = cpu_reading(pid)
    started = time.perf_counter()
    replies = asyncio.run(run)
    wall = time.perf_counter() - started
    used = cpu_used(before, cpu_reading(pid))
    return Measured(
        case, round_, len(items), used / len(items) * 1e6, wall, _accepted(case, replies), load
    )


def core_verifier(pki: Any, now: int) -> _native.Verifier:
    """A fresh verifier of ``pki``'s trust and status lists at ``now``, as ``core1`` and
    ``core100`` use it (the service's default signature cache, a new memory replay store)."""
    trust = _native.TrustList.verify(pki.trust_list, [pki.anchor_cose_key], now)
    lists = [_native.StatusList.verify(s, trust, now) for s in pki.status_lists.values()]
    return _native.Verifier(
        trust, lists, _native.Policy(allow_test_identities=True), _native.MemoryReplayStore()
    )


def measure_core(pki: Any, items: Sequence[bytes], per_call: int, round_: int) -> Measured:
    now = int(time.time())
    verifier = core_verifier(pki, now)
    scans = [_native.Scan(p, READER_ID) for p in items]
    load = os.getloadavg()[0]
    accepted = 0
    cpu = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(scans), per_call):
        accepted += sum(
            r.accepted for r in verifier.verify_batch(scans[start : start + per_call], now)
        )
    wall = time.perf_counter() - started
    used = time.process_time() - cpu
    return Measured(
        f"core{per_call}", round_, len(items), used / len(items) * 1e6, wall, accepted, load
    )


def measure_variant_core(
    path: str, pki: Any, items: Sequence[bytes], per_call: int, round_: int
) -> Measured:
    """:func:`measure_core` with the native module of the copy at ``path`` (``--variant``), in
    a child process: a lever in the binding (its allocator, say) may change the core's cost
    too, so each copy's server is compared with its own core."""
    with tempfile.NamedTemporaryFile(suffix=".json") as given:
        inputs = {
            "trust_list": pki.trust_list.hex(),
            "anchor": pki.anchor_cose_key.hex(),
            "status_lists": [s.hex() for s in pki.status_lists.values()],
            "items": [p.hex() for p in items],
            "per_call": per_call,
            "round": round_,
        }
        Path(given.name).write_text(json.dumps(inputs))
        env = {**os.environ, "PYTHONPATH": path}
        command = [sys.executable, __file__, "--core-from", given.name]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return Measured(**json.loads(output.stdout))


def _core_from(path: Path) -> None:
    """The child of :func:`measure_variant_core`: its measurement as JSON on stdout."""
    given = json.loads(path.read_text())
    pki = SimpleNamespace(
        trust_list=bytes.fromhex(given["trust_list"]),
        anchor_cose_key=bytes.fromhex(given["anchor"]),
        status_lists={n: bytes.fromhex(s) for n, s in enumerate(given["status_lists"])},
    )
    items = [bytes.fromhex(p) for p in given["items"]]
    print(json.dumps(vars(measure_core(pki, items, given["per_call"], given["round"]))))


def _start_echo(response_size: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--echo", str(port), "--response-size", str(response_size)],
        stdout=subprocess.PIPE,
        env=service_environment(),
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"serving":
        raise RuntimeError("echo server did not start")
    return process, f"127.0.0.1:{port}"


#: A bare grpc-go server answering fixed bytes (loadtest/goecho): the latency floor of ghz and
#: the machine, beside grpcio's.
GO_ECHO_SOURCE = Path(__file__).resolve().parent / "goecho"


def start_go_echo(response_size: int, work: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """The grpc-go server built (``go build``, into ``work``) and started on a free port,
    answering every unary call with :func:`echo_reply`; None without Go."""
    if shutil.which("go") is None:
        print("go is missing: no grpc-go floor in the latency step", file=sys.stderr)
        return None
    binary = work / "goecho"
    if not binary.exists():
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GO_ECHO_SOURCE, check=True)
    port = free_port()
    command = [str(binary), f"127.0.0.1:{port}", echo_reply(response_size).hex()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"serving":
        process.kill()
        raise RuntimeError("the grpc-go echo server did not start")
    return process, f"127.0.0.1:{port}"


def _response_size(address: str, item: bytes) -> int:
    (reply,) = asyncio.run(_unary(address, SERVICE + "Verify", encode_unary([item], "size-"), 1))
    return len(reply)


def _handling_seconds(metrics_port: int) -> dict[float, float]:
    """The server's own ``Verify`` duration histogram (``grpc_server_handling_seconds``, from
    the interceptor's start of the call to its answer): cumulative count by upper bound."""
    buckets: dict[float, float] = {}
    for sample in metric_samples(metrics_port):
        if (
            sample.name == "grpc_server_handling_seconds_bucket"
            and sample.labels.get("grpc_method") == "Verify"
        ):
            buckets[float(sample.labels["le"])] = sample.value
    return buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The ``q`` quantile in ms of the calls counted between two readings of a cumulative
    histogram, linearly within its bucket (as Prometheus' ``histogram_quantile``); nan
    without calls, the last finite bound when it falls in ``+Inf``."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    target = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= target:
            if bound == float("inf"):
                return lower * 1e3
            return (lower + (bound - lower) * (target - below) / max(count - below, 1e-12)) * 1e3
        lower, below = bound, count
    return float("nan")


def run_queue_seconds(pid: int) -> float:
    """Time the threads of ``pid`` spent runnable but waiting for a CPU (``schedstat``'s
    second field, summed over the threads alive now), in seconds; 0 where not available."""
    waited = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            waited += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waited / 1e9


def split_cores() -> tuple[set[int], set[int]] | None:
    """The CPUs this process may use, split in two: the server's first half and the load
    generator's second (``--pin``), or None with fewer than 2 CPUs or without ``taskset``."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (threads started later inherit it from theirs)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def pinned(pid: int, command: list[str], pin: bool) -> Iterator[list[str]]:
    """The load generator's ``command`` to run while the server ``pid`` holds the first half
    of the CPUs and the command the other (:func:`split_cores`), when ``pin`` asks for it and
    the machine allows it; else ``command`` as it is. The server gets every CPU back after."""
    cores = split_cores() if pin else None
    if cores is None:
        yield command
        return
    _set_affinity(pid, cores[0])
    try:
        yield ["taskset", "-c", ",".join(map(str, sorted(cores[1]))), *command]
    finally:
        _set_affinity(pid, cores[0] | cores[1])


_LATENCY_RUNS = itertools.count()


#: ghz's heap in the latency run when its Go collector is off: the bound past which Go
#: collects all the same (ghz keeps every call's result; 8 s at 760 calls/s peaked at 560 MB).
GHZ_MEMORY_LIMIT = "2GiB"


def ghz_environment(collector: bool) -> dict[str, str]:
    """The environment ghz's latency run starts in: with ``collector`` False, Go's garbage
    collector off up to :data:`GHZ_MEMORY_LIMIT`. ghz's collections hold up its own sending
    and receiving, and ghz counts that as the calls' latency: with it on, a bare grpc-go server
    on this machine shows a 4–5 ms p99, with it off about 1 ms (docs/benchmarks.md "The load
    generator's collector")."""
    environment = dict(os.environ)
    if not collector:
        environment.update(GOGC="off", GOMEMLIMIT=GHZ_MEMORY_LIMIT)
    return environment


def latency_at(
    server: Any, pki: Any, work: Path, rps: float, args: Any, *, unthrottled: bool = False
) -> dict[str, float]:
    """ghz at ``rps`` for ``args.latency_seconds`` against ``server`` (a started
    :class:`bench.Server`, or the echo server with ``metrics_port`` None): ghz's p50 and p99
    in ms, the calls' client-observed latency, and beside them the server's own view (its
    ``Verify`` duration histogram's p50 and p99; nan for the echo server), the server
    threads' wait for a CPU per call, ghz's CPU, whether they were pinned and the load
    average before (empty without ghz). With ``args.pin`` and 2+ CPUs the server runs on the
    first half of the CPUs and ghz on the other (docs/benchmarks.md "Unary latency: where the
    p99 goes"): the load generator no longer takes the server's core at the moment a call
    arrives. ghz's Go collector is off unless ``args.ghz_collector`` (:func:`ghz_environment`).

    ``unthrottled``: ghz as fast as the server answers (no ``--rps``; ``rps`` only bounds the
    corpus, which must outlast the run), and ``rps`` in the result is the rate reached: the
    server's maximum rate in this placement."""
    if not GHZ.exists() or args.latency_seconds <= 0:
        return {}
    count = int(rps * args.latency_seconds * 1.2) + 10
    # New request ids each time (a reused one with another presentation is refused).
    data = write_corpus(work, pki, count, prefix=f"latency-{next(_LATENCY_RUNS)}-")
    case = Case("latency", "Verify", 1, "memory", concurrency=16, connections=4)
    command = ghz_command(case, data, server.address, args.latency_seconds)
    if not unthrottled:
        command[-1:-1] = ["--rps", str(max(1, int(rps)))]
    pid = server.process.pid
    with pinned(pid, command, args.pin) as run_command:
        load = os.getloadavg()[0]
        histogram = _handling_seconds(server.metrics_port) if server.metrics_port else {}
        waited = run_queue_seconds(pid)
        ghz_cpu = _children_cpu()
        run = subprocess.run(
            run_command,
            check=True,
            capture_output=True,
            text=True,
            env=ghz_environment(args.ghz_collector),
        )
        ghz_cpu = _children_cpu() - ghz_cpu
        waited = run_queue_seconds(pid) - waited
        after = _handling_seconds(server.metrics_port) if server.metrics_port else {}
    report = json.loads(run.stdout)
    if not report.get("latencyDistribution"):
        raise RuntimeError(f"ghz: no answered call: {report.get('errorDistribution')}")
    latency = {int(d["percentage"]): d["latency"] / 1e6 for d in report["latencyDistribution"]}
    calls = max(1, report["count"])
    if unthrottled:  # the rate of answers: ghz ends the calls in flight when its time is up
        failed = sum(report.get("errorDistribution", {}).values())
        if failed > case.concurrency:
            raise RuntimeError(f"ghz: calls failed: {report['errorDistribution']}")
        rps = (calls - failed) / (report["total"] / 1e9)
    return {
        "rps": rps,
        "p50_ms": latency.get(50, float("nan")),
        "p90_ms": latency.get(90, float("nan")),
        "p99_ms": latency.get(99, 0.0),
        "server_p50_ms": histogram_quantile(histogram, after, 0.50),
        "server_p99_ms": histogram_quantile(histogram, after, 0.99),
        "run_queue_us_per_call": waited / calls * 1e6,
        "ghz_cores": ghz_cpu / (report["total"] / 1e9),
        "pinned": float(run_command is not command),  # taskset put before it
        "ghz_collector": float(args.ghz_collector),
        "load": load,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _start_variant(name: str, path: str | None, pki: Any, work: Path) -> Any:
    """The server of the package in this checkout (``path`` None), or of the copy at ``path``
    (its ``python`` folder, native module included: ``--variant``)."""
    work.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("PYTHONPATH")
    if path is not None:
        os.environ["PYTHONPATH"] = path
    try:
        return start_server(
            Case(f"service-{name}", "Verify", 1, "memory"), pki.directory, None, work
        )
    finally:
        if path is not None:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved


#: The unary case against the floor server (:func:`add_floor_verify`): ``Verify`` with none
#: of the service's Python around its binding call.
FLOOR = "verify-floor"


def add_floor_verify(service: Any, server: Any) -> None:
    """Register, in place of the service's handlers, ``Verify`` reduced to the work no handler
    can leave out, on the gRPC server itself (no wrapper: no metrics, limits or error
    mapping): the request decoded, verified, kept for answer recovery, audited and answered in
    the binding call the service makes (``answer_unary``), and the audit lines written. No
    caller lookup (the policy of ``anonymous``, the benchmark's caller, resolved once), no
    request or deadline checks, no trust list expiry check. What it costs over the echo call
    and the core is the floor under the service's unary ratio: no arrangement of the
    service's Python, in Python or in the binding, costs less (docs/benchmarks.md "Unary: the
    floor under the ratio")."""
    from apcv_verify.config import ANONYMOUS_CALLER
    from apcv_verify.service.policy import resolve_caller
    from apcv_verify.service.servicer import SERVICE_NAME

    raw = getattr(server, "_server", server)  # the gRPC server under the service's Registration
    policy = resolve_caller(service._config, ANONYMOUS_CALLER)
    view = service._view(policy)
    delay = policy.max_scan_delay_seconds
    trust, audit, recovery = service._trust, service._audit, service._recovery
    unary = _native.WireBatch.unary

    async def floor(request: bytes, context: Any) -> bytes:
        call = unary(request)
        assert call is not None, "the benchmark's requests decode"
        verifier = trust.current.verifiers[delay]
        now = int(time.time())
        in_core = audit.unary_in_core()
        # ``audited``: the audit lines, or the bytes of those queued, as the build returns.
        if recovery is None:
            reply, audited, unavailable = call.answer_unary(
                verifier, view, now, caller=ANONYMOUS_CALLER, audit=in_core
            )[3:]
        else:
            reply, _, audited, unavailable = recovery.answer_unary(
                call, verifier, view, ANONYMOUS_CALLER, now, in_core
            )
        audit.recorded_in_core(audited, unavailable)
        assert reply is not None, "the floor answers the benchmark's requests: no FHIR JSON"
        return reply

    handlers = {"Verify": grpc.unary_unary_rpc_method_handler(floor)}
    raw.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    raw.add_registered_method_handlers(SERVICE_NAME, handlers)


def _floor_serve(argv: list[str]) -> int:
    """``apcv-verify serve`` (``argv``: ``serve`` and its options) with the floor ``Verify``
    (:func:`add_floor_verify`) as its only service method."""
    from apcv_verify.cli.main import main as cli_main
    from apcv_verify.service import startup

    startup.add_verifier_service = add_floor_verify
    return cli_main(argv)


def start_floor(pki: Any, work: Path) -> Any:
    """The floor server (:func:`add_floor_verify`) on ``pki``'s trust material, started as
    the service is (1 worker, memory store, audit to a file)."""
    work.mkdir(parents=True, exist_ok=True)
    return start_server(
        Case("service-floor", "Verify", 1, "memory"),
        pki.directory,
        None,
        work,
        launcher=(sys.executable, __file__, "--floor-serve"),
        # This file loads gRPC before `serve` could give it server.grpc_experiments: given
        # here instead, as `apcv-verify serve` would.
        env=service_grpc_experiments(),
    )


#: The latency step's runs against the grpc-go server, by placement (``split``: the server
#: on one half of the CPUs and ghz on the other, as the service's; ``shared``).
Floor = dict[str, list[dict[str, float]]]


@dataclass
class LatencyStep:
    """The latency step's ghz runs (:func:`latency_at`), one per round in each list."""

    #: ``Verify`` at half its maximum rate in the step's own placement: the target's figure.
    verify: list[dict[str, float]] = field(default_factory=list)
    #: ghz as fast as ``Verify`` answers, in the same placement: that maximum (``rps``).
    maxima: list[dict[str, float]] = field(default_factory=list)
    #: ``Verify`` at half the ``verify`` case's rate (the server on every CPU, beside this
    #: process's client): the rate the step used before it measured its own maximum.
    at_cpu_rate: list[dict[str, float]] = field(default_factory=list)
    #: The bare grpc.aio echo server at the same rate and placement as ``verify``.
    echo: list[dict[str, float]] = field(default_factory=list)
    #: The grpc-go server at the same rate, by placement.
    go: Floor = field(default_factory=lambda: {"split": [], "shared": []})


def measure_latency(
    step: LatencyStep,
    round_: int,
    args: Any,
    pki: Any,
    work: Path,
    server: Any,
    cpu_case_rate: float,
    bare: Any,
    go_echo: tuple[subprocess.Popen[bytes], str] | None,
) -> None:
    """One round of the latency step into ``step``. First ``Verify``'s maximum rate in the
    step's own placement (ghz as fast as the server answers); then, in alternating order,
    ``Verify`` at half of it, the bare echo server at the same rate (what gRPC alone shows on
    this machine), the grpc-go server split as the service and sharing the CPUs (what ghz and
    the machine allow), and ``Verify`` at half the ``verify`` case's rate (``cpu_case_rate``,
    measured with the server on every CPU beside this process's client: the rate this step
    used before it measured its own maximum, kept beside it)."""

    def placed(pin: bool) -> SimpleNamespace:
        return SimpleNamespace(
            latency_seconds=args.latency_seconds, pin=pin, ghz_collector=args.ghz_collector
        )

    where = work / f"pki-{round_}"
    # The corpus must outlast the run: the server's rate on every CPU bounds it on half.
    top = latency_at(server, pki, where, 2 * cpu_case_rate, placed(args.pin), unthrottled=True)
    if not top:
        return
    step.maxima.append(top)
    print(f"round {round_} Verify's maximum rate, as the latency step: {top['rps']:.0f}/s")
    targets = [
        ("Verify", server, step.verify, args.pin, top["rps"] / 2),
        ("echo", bare, step.echo, args.pin, top["rps"] / 2),
        ("Verify at half the verify case's", server, step.at_cpu_rate, args.pin, cpu_case_rate / 2),
    ]
    if go_echo is not None:
        go = SimpleNamespace(process=go_echo[0], address=go_echo[1], metrics_port=None)
        targets += [
            ("grpc-go echo, split", go, step.go["split"], True, top["rps"] / 2),
            ("grpc-go echo, shared", go, step.go["shared"], False, top["rps"] / 2),
        ]
    for name, target, into, pin, rate in targets if round_ % 2 else reversed(targets):
        latency = latency_at(target, pki, where, rate, placed(pin))
        if latency:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in latency.items())
            print(f"round {round_} {name} at {rate:.0f}/s: {shown}")
            into.append(latency)


def run(args: Any) -> tuple[list[Measured], LatencyStep]:
    results: list[Measured] = []
    step = LatencyStep()
    variants: dict[str, str | None] = dict(v.split("=", 1) for v in args.variant)
    with tempfile.TemporaryDirectory(prefix="apcv-service-bench-") as temporary:
        work = Path(temporary)
        for round_ in range(1, args.rounds + 1):
            pki = make_pki(work / f"pki-{round_}")
            others = {
                name: _start_variant(name, path, pki, work / name)
                for name, path in variants.items()
            }
            server = _start_variant(f"{round_}", None, pki, work)
            floor_server = None
            echo = None
            go_echo: tuple[subprocess.Popen[bytes], str] | None = None
            try:
                if not args.cases or FLOOR in args.cases:
                    floor_server = start_floor(pki, work / f"floor-{round_}")
                for other in others.values():
                    warm = list(presentations(pki, 100))
                    asyncio.run(
                        _unary(other.address, SERVICE + "Verify", encode_unary(warm, "w"), 8)
                    )
                # Warm the server up (and learn its answer size for the echo server).
                warm = list(presentations(pki, 200))
                size = _response_size(server.address, warm[0])
                asyncio.run(
                    _unary(server.address, SERVICE + "Verify", encode_unary(warm[1:], "w"), 8)
                )
                if floor_server is not None:
                    asyncio.run(
                        _unary(
                            floor_server.address,
                            SERVICE + "Verify",
                            encode_unary(warm[1:], "w"),
                            8,
                        )
                    )
                echo, echo_address = _start_echo(size)
                asyncio.run(_unary(echo_address, ECHO, encode_unary(warm, "w"), 8))
                cases = ["core1", "core100", *SERVER_CASES, FLOOR]
                cases += ["echo-batch100", "echo-stream", "echo-stream20"]
                cases += [f"{c}@{name}" for name in others for c in SERVER_CASES if c != "echo"]
                if args.variant_core:  # each copy's own core (its native module)
                    cases += [f"core{n}@{name}" for name in others for n in (1, 100)]
                if args.cases:  # a lever's check: only these cases (and their variants)
                    cases = [c for c in cases if c.partition("@")[0] in args.cases]
                for case in cases if round_ % 2 else list(reversed(cases)):
                    items = list(presentations(pki, args.items))
                    kind, _, variant = case.partition("@")
                    if case.startswith("core") and variant:
                        result = measure_variant_core(
                            variants[variant] or "", pki, items, int(kind[4:]), round_
                        )
                        result.case = case
                    elif case.startswith("core"):
                        result = measure_core(pki, items, int(case[4:]), round_)
                    elif case in ECHO_CASES:
                        result = measure_server(case, echo.pid, echo_address, items, round_, args)
                    elif case == FLOOR:
                        assert floor_server is not None
                        result = measure_server(
                            "verify",
                            floor_server.process.pid,
                            floor_server.address,
                            items,
                            round_,
                            args,
                        )
                        result.case = case
                    else:
                        target = others[variant] if variant else server
                        result = measure_server(
                            kind, target.process.pid, target.address, items, round_, args
                        )
                        result.case = case
                    print(
                        f"round {round_} {result.case:9} {result.cpu_us_per_item:8.1f} µs CPU/item"
                        f" {result.rate:9.1f} items/s accepted {result.accepted}/{result.items}"
                        f" load {result.load_before:.2f}",
                        flush=True,
                    )
                    results.append(result)
                verify = next((r for r in reversed(results) if r.case == "verify"), None)
                if verify is not None and args.latency_seconds > 0 and GHZ.exists():
                    go_echo = start_go_echo(size, work)  # only now: idle beside the CPU cases
                    bare = SimpleNamespace(process=echo, address=echo_address, metrics_port=None)
                    measure_latency(
                        step, round_, args, pki, work, server, verify.rate, bare, go_echo
                    )
            finally:
                for process in (echo, None if go_echo is None else go_echo[0]):
                    if process is not None:
                        process.terminate()
                        process.wait(timeout=10)
                stop_server(server)
                if floor_server is not None:
                    stop_server(floor_server)
                for other in others.values():
                    stop_server(other)
    return results, step


def median(results: list[Measured], case: str, key: str = "cpu_us_per_item") -> float:
    return statistics.median(getattr(r, key) for r in results if r.case == case)


def report(results: list[Measured], step: LatencyStep, args: Any) -> str:
    variants = sorted({r.case.partition("@")[2] for r in results} - {""})
    cases = ["core1", "core100", *SERVER_CASES, FLOOR]
    cases += ["echo-batch100", "echo-stream", "echo-stream20"]
    cases += [f"{c}@{name}" for name in variants for c in SERVER_CASES if c != "echo"]
    core1, core100 = median(results, "core1"), median(results, "core100")
    echo = median(results, "echo")
    loads = ", ".join(f"{r.load_before:.2f}" for r in results)
    command = "make bench  # " + shlex.join(["python", "loadtest/service_bench.py", *sys.argv[1:]])
    lines = [
        BEGIN,
        "## Service against its core (loadtest/service_bench.py)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, grpcio {grpc.__version__}, native core"
        f" {_native.BUILD} build.",
        f"Command: `{command}`. {args.rounds} rounds of interleaved cases, {args.items}"
        " presentations per case and round (distinct, none a replay), 1 worker, in-memory replay"
        " store, audit log to a file. Server CPU is the server process's own accounting"
        " (each thread's time on a CPU in ns, `/proc/<pid>/task/*/schedstat`; the clock ticks"
        " of `/proc/<pid>/stat` if a thread ended during the case) over the case, per"
        " presentation answered; the core's"
        " is this process's CPU time around `verify_batch`. The client sends requests it encoded"
        f" beforehand (unary concurrency {args.concurrency}, batch concurrency"
        f" {args.batch_concurrency}, {args.streams} streams with up to {STREAM_WINDOW} requests"
        f" in flight each; `stream20`: {STREAM_SCANS} scans per `VerifyStreamRequest`, up to"
        f" {STREAM_SCANS_WINDOW} requests in flight per stream). Medians of the rounds.",
        "",
        "| case | CPU µs / presentation | presentations/s | accepted |",
        "|---|---|---|---|",
    ]
    for case in cases:
        rows = [r for r in results if r.case == case]
        rate = statistics.median(r.rate for r in rows)
        accepted = f"{sum(r.accepted for r in rows)}/{sum(r.items for r in rows)}"
        lines.append(f"| {case} | {median(results, case):.1f} | {rate:.0f} | {accepted} |")
    unary_bound = core1 + 1.2 * echo
    lines += [
        "",
        f"Load average before each case, in order: {loads}.",
        "",
        "| ratio | value | target |",
        "|---|---|---|",
    ]
    for name in ["", *variants]:
        at = f"@{name}" if name else ""
        of = f" ({name})" if name else ""
        verify = median(results, f"verify{at}")
        lines += [
            f"| VerifyBatch(100) / core (100 per call){of}"
            f" | {median(results, f'batch100{at}') / core100:.2f} | ≤ 1.2 |",
            f"| VerifyStream ({STREAM_SCANS} per message) / core (100 per call){of}"
            f" | {median(results, f'stream20{at}') / core100:.2f} | ≤ 1.2 |",
            f"| VerifyStream (1 per message) / core (100 per call){of}"
            f" | {median(results, f'stream{at}') / core100:.2f} | |",
            f"| Verify / (core + 1.2 × echo){of} | {verify / unary_bound:.2f}"
            f" ({verify:.0f} / {unary_bound:.0f} µs) | ≤ 1 |",
            f"| Verify / core (1 per call){of} | {verify / core1:.2f} | |",
        ]
    bare = median(results, FLOOR)
    lines += [
        f"| Verify's floor (`{FLOOR}`: the binding call alone, none of the service's Python)"
        f" / (core + 1.2 × echo) | {bare / unary_bound:.2f} ({bare:.0f} / {unary_bound:.0f}"
        f" µs) | |",
        f"| Verify − {FLOOR}: the service's Python around its binding call, µs"
        f" | {median(results, 'verify') - bare:.0f} | |",
    ]
    echo_batch, echo_stream = median(results, "echo-batch100"), median(results, "echo-stream")
    echo_stream_scans = median(results, "echo-stream20")
    lines += [
        f"| gRPC + protobuf alone, VerifyBatch(100) shape (echo-batch100) / core (100 per call)"
        f" | {echo_batch / core100:.2f} | |",
        f"| gRPC + protobuf alone, VerifyStream shape (echo-stream) / core (100 per call)"
        f" | {echo_stream / core100:.2f} | |",
        f"| gRPC + protobuf alone, VerifyStream shape of {STREAM_SCANS} per message"
        f" (echo-stream20) / core (100 per call) | {echo_stream_scans / core100:.2f} | |",
        f"| VerifyStream − echo-stream − core (100 per call): the service's own work, µs"
        f" | {median(results, 'stream') - echo_stream - core100:.0f} | |",
        f"| VerifyStream ({STREAM_SCANS} per message) − echo-stream20 − core (100 per call):"
        f" the service's own work, µs"
        f" | {median(results, 'stream20') - echo_stream_scans - core100:.0f} | |",
        f"| VerifyBatch(100) − echo-batch100 − core (100 per call): the service's own work, µs"
        f" | {median(results, 'batch100') - echo_batch - core100:.0f} | |",
    ]
    if step.verify:
        lines += latency_rows(step)
    lines += [END, ""]
    return "\n".join(lines)


def latency_rows(step: LatencyStep) -> list[str]:
    """The p99 row of the ratio table (ghz: the client-observed latency of real calls, the
    figure the target is about, at half the maximum rate measured in the same placement) and,
    beside it, the same calls on the server's own clock, and what the run shared the CPUs with,
    ``Verify``'s p99 at half the ``verify`` case's rate (the step's rate before it measured its
    own maximum), the bare echo server's p99 at the same rate, and the grpc-go server's in each
    placement: medians of the rounds, each round's value after."""
    latencies = step.verify

    def values(key: str, digits: int = 2) -> tuple[float, str]:
        each = [x[key] for x in latencies]
        return statistics.median(each), ", ".join(f"{v:.{digits}f}" for v in each)

    p99, p99_rounds = values("p99_ms")
    p50, _ = values("p50_ms")
    rps, _ = values("rps", 0)
    server_p99, server_rounds = values("server_p99_ms")
    server_p50, _ = values("server_p50_ms")
    waited, waited_rounds = values("run_queue_us_per_call", 0)
    ghz, _ = values("ghz_cores")
    _, loads = values("load")
    pinned = (
        "server and ghz on separate CPUs"
        if all(x["pinned"] for x in latencies)
        else "server and ghz sharing the CPUs"
    )
    if not any(x.get("ghz_collector") for x in latencies):
        pinned += ", ghz's Go collector off"
    maximum = ""
    if step.maxima:
        most = statistics.median(x["rps"] for x in step.maxima)
        each = ", ".join(f"{x['rps']:.0f}" for x in step.maxima)
        maximum = f": half of {most:.0f}/s, ghz as fast as it answers (rounds {each})"
    rows = [
        f"| Verify p99 at half the maximum rate (ghz, {rps:.0f}/s{maximum}; {pinned}; p50"
        f" {p50:.2f} ms; rounds {p99_rounds} ms; load average before {loads})"
        f" | {p99:.2f} ms | ≤ 2 ms |",
        f"| the same calls on the server's clock (its `Verify` duration histogram; p50"
        f" {server_p50:.2f} ms; rounds {server_rounds} ms) | {server_p99:.2f} ms | |",
        f"| the server's threads waiting for a CPU, µs per call (rounds {waited_rounds});"
        f" ghz's CPU {ghz:.2f} cores | {waited:.0f} | |",
    ]
    if step.at_cpu_rate:
        rate = statistics.median(x["rps"] for x in step.at_cpu_rate)
        rows.append(
            _reference_row(
                f"Verify at half the `verify` case's rate instead, {rate:.0f}/s, same placement",
                step.at_cpu_rate,
                "that case's server had every CPU, beside this benchmark's client",
            )
        )
    if step.echo:
        rows.append(
            _reference_row(
                "the bare echo server at the same rate and placement",
                step.echo,
                "what gRPC alone shows here",
            )
        )
    for placement, runs in step.go.items():
        if runs:
            where = "on its own CPU as the service" if placement == "split" else "sharing the CPUs"
            rows.append(
                _reference_row(
                    f"a bare grpc-go server at the same rate, {where}",
                    runs,
                    "what ghz and the machine allow",
                )
            )
    return rows


def _reference_row(server: str, runs: Sequence[dict[str, float]], meaning: str) -> str:
    """A reference server's p99 row beside the service's: the median of its rounds' p99, its
    p50 and each round's p99."""
    p99 = statistics.median(x["p99_ms"] for x in runs)
    p50 = statistics.median(x["p50_ms"] for x in runs)
    rounds = ", ".join(f"{x['p99_ms']:.2f}" for x in runs)
    return f"| {server} (ghz; p50 {p50:.2f} ms; rounds {rounds} ms): {meaning} | {p99:.2f} ms | |"


def plot(results: list[Measured], path: Path) -> str:
    """A bar plot of the server CPU per presentation (medians of the rounds), each call shape
    beside the core's work on the same presentations and the bare echo server's: written to
    ``path`` (PNG), the markdown line that shows it returned (``path`` taken as next to the
    document)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = list(dict.fromkeys(r.case for r in results))  # in the order first measured
    shapes = [  # (label, the service's cases, the core's, the echo server's)
        ("Verify", ("verify", FLOOR), "core1", "echo"),
        ("VerifyBatch(100)", ("batch100",), "core100", "echo-batch100"),
        ("VerifyStream", ("stream",), "core100", "echo-stream"),
    ]
    known = {c for _, cases, core, echo in shapes for c in (*cases, core, echo)}
    groups = [
        (label, [c for c in measured if c.partition("@")[0] in cases] + [core, echo])
        for label, cases, core, echo in shapes
    ]
    others = [c for c in measured if c.partition("@")[0] not in known]
    if others:
        groups.append(("other", others))
    colours = {"core": "tab:green", "echo": "tab:grey"}
    width = max(8.0, 0.5 * sum(len(g) for _, g in groups) + 2)
    fig, ax = plt.subplots(figsize=(width, 4.8))
    x, positions, names = 0.0, [], []
    for label, cases in groups:
        start = x
        for case in (c for c in cases if c in measured):
            kind = "core" if case.startswith("core") else "echo" if "echo" in case else ""
            value = median(results, case)
            colour = colours.get(kind, "tab:orange" if "@" in case else "tab:blue")
            ax.bar(x, value, color=colour)
            ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
            positions.append(x)
            names.append(case)
            x += 1
        if x > start:
            middle = (start + x - 1) / 2
            ax.text(middle, 1.01, label, transform=ax.get_xaxis_transform(), ha="center")
        x += 0.8
    ax.set_xticks(positions, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("CPU µs / presentation (median of the rounds)")
    ax.set_title(
        "server CPU: this checkout (blue), --variant (orange), bare grpc.aio echo (grey);"
        " the core from Python in-process (green)",
        fontsize=8,
        pad=18,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return f"![service CPU per presentation]({path.name})"


def write_section(path: Path, section: str) -> None:
    """Replace the service section of ``path`` (between the markers), or append it."""
    replace_section(path, section, BEGIN, END)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--floor-serve":  # start_floor's server
        return _floor_serve(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=3000, help="presentations per case")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-concurrency", type=int, default=2)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the latency run with the server and ghz on separate halves of the CPUs",
    )
    parser.add_argument(
        "--ghz-collector",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the latency run with ghz's Go garbage collector on (its pauses count as latency)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 200, no ghz run")
    parser.add_argument(
        "--cases",
        type=lambda text: text.split(","),
        default=[],
        help="only these cases, comma-separated (e.g. core100,batch100,stream20): the per-round"
        " lines and their medians, no report",
    )
    parser.add_argument("--write", type=Path, help="docs/benchmarks.md to update")
    parser.add_argument("--plot", type=Path, help="PNG of the CPU per presentation by case")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=PYTHONPATH",
        help="also measure the server of another copy of the package (a lever's before/after)",
    )
    parser.add_argument(
        "--variant-core",
        action="store_true",
        help="with --variant: also each copy's own core1 and core100, with its native module",
    )
    parser.add_argument("--core-from", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--response-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        with asyncio.Runner(loop_factory=service_loop()) as runner:
            runner.run(_echo_server(args.echo, args.response_size))
        return 0
    if args.core_from:
        _core_from(args.core_from)
        return 0
    if args.quick:
        args.rounds, args.items, args.latency_seconds = 1, 200, 0.0
    results, step = run(args)
    if args.cases:
        for case in dict.fromkeys(r.case for r in results):
            print(f"median {case:9} {median(results, case):8.1f} µs CPU/item")
        return 0
    section = report(results, step, args)
    if args.plot:  # linked from the section (the PNG next to the document)
        section = section.replace(END, f"\n{plot(results, args.plot)}\n{END}")
    print(section)
    if args.write:
        write_section(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
