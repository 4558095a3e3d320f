"""Past capacity: how ``Verify`` callers are answered when more calls come than a server can
take, and what the server holds meanwhile.

ghz sends unary ``Verify`` calls at ``--rps`` (above the server's capacity: ``make bench``
measures it) with up to ``--concurrency`` calls in flight over ``--connections`` HTTP/2
connections, each call with a ``--timeout`` deadline, for ``--seconds``, to each of:

* ``service``: ``apcv-verify serve`` as ``make bench`` starts it (1 worker, memory store,
  audit log to a file), once per ``--max-pending-calls`` value (``server.max_pending_calls``:
  how many calls gRPC holds for it; its default unless given; 0 keeps gRPC's own bound);
* ``echo``: grpc.aio answering fixed bytes of the service's response size (the stack the
  service is built on, with nothing behind it: loadtest/service_bench.py's echo server);
* ``sync-echo``: grpcio's thread-pool server answering the same bytes (gRPC's core without
  grpc.aio);
* ``go-echo``: grpc-go answering the same bytes (loadtest/goecho, built with ``go build``).

For each server it prints the calls answered ``OK`` per second (the goodput), then for each
status the calls that ended with it and the time they took (ghz's own timing per call:
p10, p50, p90, max), with each status's most frequent texts (addresses and ports taken out),
and the server's resident size (its processes') before, at its peak (sampled every 0.2 s)
and after, and every 10 s from before ghz starts (ghz first reads its data), and the CPU
the server and ghz each used, in cores (ghz near one core under ``--pin`` means the run
found ghz's limit, not the server's); for the service also its own count of the run's
``Verify`` calls by status
(``grpc_server_handled_total``: a call it never handled is not in it) and its own p99 of
them (``grpc_server_handling_seconds``, from its handler's start) and the calls gRPC ended
before any handler took them (``apcv_grpc_calls_received_total`` less
``grpc_server_started_total``), then, in a second
run of ghz, how the calls of the project's own client end beside it: ``--client-calls``
calls of :class:`~apcv_verify.client.VerifierClient` (16 in flight, its default deadline and
retries), each with a fresh presentation, from 2 s into the run.
``--pin`` holds the server to the first half of the CPUs and ghz to the other half, so that
ghz's own growing work over a long run (it keeps every call's result) does not take the
server's CPU. ghz ends the calls still in flight when its time is up: those count as
``Unavailable`` ("use of closed network connection"). ``--open-loop`` lets ghz send at
``--rps`` however many calls are in flight (ghz's ``--async``), as independent callers do:
then how many calls a server ends does not change how many more are sent. No claim is checked here:
docs/reliability.md "Past capacity" reads the figures. Sends to loopback only, for a bounded
time.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import math
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apcv_verify.client import VerifierClient, VerifierError, make_scan
from apcv_verify.config import ServerSection
from apcv_verify.issuer import qr_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    GHZ,
    Case,
    children_cpu_seconds,
    cpu_seconds,
    ghz_command,
    metric_samples,
    start_server,
    stop_server,
)
from corpus import make_pki, presentations, write_corpus  # noqa: E402
from p99_floor import started  # noqa: E402
from service_bench import (  # noqa: E402
    SERVICE,
    _response_size,
    _unary,
    encode_unary,
    ghz_environment,
    histogram_quantile,
    pinned,
)
from soak import percentile, rss_bytes  # noqa: E402

SERVERS = ("service", "echo", "sync-echo", "go-echo")
#: How often the server's resident size is read during a run, and printed.
RSS_EVERY_SECONDS = 0.2
RSS_TIMELINE_SECONDS = 10.0
#: The texts shown per status.
TEXTS_PER_STATUS = 2
#: The project's client beside ghz: its calls in flight, and when it starts in the run.
CLIENT_IN_FLIGHT = 16
CLIENT_DELAY_SECONDS = 2.0


def resident_mib(pid: int) -> float:
    """The resident size of ``pid`` and its descendants, MiB."""
    return rss_bytes(pid) / 2**20


class PeakResident:
    """The largest resident size of ``pid`` seen while in the ``with`` block, and one reading
    every :data:`RSS_TIMELINE_SECONDS` from its start (``timeline``)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = resident_mib(pid)
        self.timeline = [self.peak]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(RSS_EVERY_SECONDS):
            now = resident_mib(self._pid)
            self.peak = max(self.peak, now)
            if time.monotonic() - start >= len(self.timeline) * RSS_TIMELINE_SECONDS:
                self.timeline.append(now)

    def __enter__(self) -> PeakResident:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_mib(self._pid))


@dataclass
class Outcome:
    """One status's calls in a run: the time each took (ms) and their texts."""

    milliseconds: list[float] = field(default_factory=list)
    texts: Counter[str] = field(default_factory=Counter)


def general_text(error: str) -> str:
    """ghz's error text without what differs between calls: addresses and ports."""
    return re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "<address>", error)


def outcomes(ghz_csv: str) -> dict[str, Outcome]:
    """ghz's per-call CSV (``duration (ms),status,error``) by status."""
    by_status: dict[str, Outcome] = defaultdict(Outcome)
    for row in csv.reader(ghz_csv.splitlines()):
        if len(row) < 2 or not row[0][:1].isdigit():  # the header, blank lines
            continue
        outcome = by_status[row[1]]
        outcome.milliseconds.append(float(row[0]))
        if len(row) > 2 and row[2]:
            outcome.texts[general_text(row[2])] += 1
    return dict(by_status)


@dataclass
class Run:
    """One ghz run against a server: its calls by status, the server's resident size (MiB)
    before, at its peak and after, and every :data:`RSS_TIMELINE_SECONDS` from before ghz
    starts (ghz first reads its data), the CPU the server and ghz each used (cores: CPU
    seconds per second of the run; ghz near 1 with ``--pin`` means the run measured ghz's
    limit, not the server's), and what ran beside ghz reported ("" if nothing did)."""

    found: dict[str, Outcome]
    rss: tuple[float, float, float]
    timeline: list[float] = field(default_factory=list)
    server_cores: float = math.nan
    ghz_cores: float = math.nan
    aside: str = ""


def report(name: str, run: Run, seconds: float) -> str:
    """The lines printed for one server's run."""
    answered = len(run.found.get("OK", Outcome()).milliseconds)
    rss = run.rss
    lines = [
        f"{name}: {answered / seconds:.0f} OK/s over {seconds:g} s;"
        f" RSS {rss[0]:.1f} MiB before, {rss[1]:.1f} at its peak, {rss[2]:.1f} after"
    ]
    if run.timeline:
        every = ", ".join(f"{mib:.0f}" for mib in run.timeline)
        lines.append(f"  RSS every {RSS_TIMELINE_SECONDS:g} s, MiB: {every}")
    if not math.isnan(run.server_cores):
        lines.append(f"  CPU, cores: server {run.server_cores:.2f}, ghz {run.ghz_cores:.2f}")
    found = run.found
    for status, outcome in sorted(found.items(), key=lambda item: -len(item[1].milliseconds)):
        times = outcome.milliseconds
        lines.append(
            f"  {status:18} {len(times):7} calls, ms: p10 {percentile(times, 0.1):.0f}"
            f" p50 {percentile(times, 0.5):.0f} p90 {percentile(times, 0.9):.0f}"
            f" max {max(times):.0f}"
        )
        for text, count in outcome.texts.most_common(TEXTS_PER_STATUS):
            lines.append(f"    {count:7} {text}")
    return "\n".join(lines)


async def client_calls(address: str, scans: list[str]) -> Counter[str]:
    """How ``VerifierClient.verify`` calls of ``scans`` (QR texts) to ``address`` end, made
    :data:`CLIENT_IN_FLIGHT` at a time from :data:`CLIENT_DELAY_SECONDS` on: ``answered``,
    or the typed error's class and status."""
    await asyncio.sleep(CLIENT_DELAY_SECONDS)
    ended: Counter[str] = Counter()
    in_flight = asyncio.Semaphore(CLIENT_IN_FLIGHT)
    async with VerifierClient(address) as client:

        async def verify(scan: str) -> None:
            async with in_flight:
                try:
                    await client.verify(make_scan(scan, reader_id="overload"))
                    ended["answered"] += 1
                except VerifierError as error:
                    ended[f"{type(error).__name__} ({error.code.name})"] += 1

        await asyncio.gather(*(verify(scan) for scan in scans))
    return ended


def client_report(address: str, scans: list[str]) -> str:
    """:func:`client_calls`, as one line."""
    ended = asyncio.run(client_calls(address, scans))
    return ", ".join(f"{how} {count}" for how, count in sorted(ended.items()))


def overload(
    address: str, pid: int, data: Path, args: Any, beside: Callable[[], str] | None = None
) -> Run:
    """One ghz run past capacity against the server at ``address`` (process ``pid``), with
    ``beside`` run meanwhile."""
    case = Case(
        "overload", "Verify", 1, "memory",
        concurrency=args.concurrency, connections=args.connections,
    )  # fmt: skip
    command = ghz_command(case, data, address, args.seconds)
    command[command.index("--format") + 1] = "csv"  # one row per call: time, status, text
    command[-1:-1] = ["--rps", str(args.rps), "--timeout", f"{args.timeout}s"]
    if args.open_loop:  # each worker sends on schedule, without waiting for its calls
        command[-1:-1] = ["--async"]
    before = resident_mib(pid)
    # --pin: the server on the first half of the CPUs, ghz on the other.
    with (
        pinned(pid, command, args.pin) as command,
        PeakResident(pid) as watched,
        tempfile.TemporaryFile("w+") as printed,
    ):
        server_cpu, ghz_cpu, start = cpu_seconds(pid), children_cpu_seconds(), time.monotonic()
        ghz = subprocess.Popen(
            command,
            stdout=printed,
            stderr=subprocess.STDOUT,
            text=True,
            env=ghz_environment(False),
        )
        aside = beside() if beside is not None else ""
        ghz.wait()
        elapsed = time.monotonic() - start
        server_cores = (cpu_seconds(pid) - server_cpu) / elapsed
        ghz_cores = (children_cpu_seconds() - ghz_cpu) / elapsed  # ghz: the child just reaped
        printed.seek(0)
        text = printed.read()
    if ghz.returncode != 0:
        raise RuntimeError(f"ghz failed: {text[-2000:]}")
    rss = (before, watched.peak, resident_mib(pid))
    return Run(outcomes(text), rss, watched.timeline, server_cores, ghz_cores, aside)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=int, default=4000, help="calls per second sent")
    parser.add_argument("--concurrency", type=int, default=5000, help="calls in flight, at most")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=10.0, help="each call's deadline, s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument(
        "--client-calls", type=int, default=300, help="VerifierClient calls beside ghz (service)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the server on the first half of the CPUs, ghz on the other half",
    )
    parser.add_argument(
        "--open-loop",
        action="store_true",
        help="ghz sends at --rps however many calls are in flight (its --async), as callers "
        "that do not wait for each other do; without it, at most --concurrency in flight",
    )
    parser.add_argument(
        "--max-pending-calls",
        default=str(ServerSection.max_pending_calls),
        help="the service's server.max_pending_calls, comma-separated: one run each",
    )
    args = parser.parse_args()
    pending_bounds = [int(bound) for bound in args.max_pending_calls.split(",")]
    servers = args.servers.split(",")
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if not GHZ.exists():
        parser.error("ghz is missing: `make tools` installs it")
    with tempfile.TemporaryDirectory(prefix="apcv-overload-") as temporary, ExitStack() as stack:
        work = Path(temporary)
        pki = make_pki(work / "pki")
        server = start_server(
            Case("overload", "Verify", 1, "memory"),
            pki.directory,
            None,
            work,
            env=pending(pending_bounds[0]),
        )
        stack.callback(stop_server, server)
        warm = list(presentations(pki, 300))
        asyncio.run(_unary(server.address, SERVICE + "Verify", encode_unary(warm, "w"), 8))
        reply_size = _response_size(server.address, warm[0])  # the echo servers answer as much
        # Enough presentations for the whole run, with request ids of their own per server
        # (a request id answered for one presentation is refused for another).
        count = int(args.rps * args.seconds * 1.1) + 100
        for name in servers:
            if name != "service":
                data = write_corpus(work, pki, count, prefix=f"{name}-")
                pid, address = stack.enter_context(started(name, pki, work, reply_size))
                print(report(name, overload(address, pid, data, args), args.seconds), flush=True)
                continue
            for index, bound in enumerate(pending_bounds):
                label = f"service, server.max_pending_calls = {bound}"
                if index:  # the first bound's server is warm already; each other a new one
                    case = Case(f"overload-{index}", "Verify", 1, "memory")
                    server = start_server(case, pki.directory, None, work, env=pending(bound))
                    stack.callback(stop_server, server)
                data = write_corpus(work, pki, count, prefix=f"{name}-{index}-")
                service_run(label, server, data, args)
                if args.client_calls:  # a second run, with the project's client beside ghz
                    scans = [qr_text(pki.present()) for _ in range(args.client_calls)]
                    beside = functools.partial(client_report, server.address, scans)
                    data = write_corpus(work, pki, count, prefix=f"{name}-{index}-client-")
                    pid = server.process.pid
                    client = overload(server.address, pid, data, args, beside).aside
                    print(f"  VerifierClient beside ghz, {len(scans)} calls: {client}", flush=True)
    return 0


def pending(bound: int) -> dict[str, str]:
    """The service's environment for ``server.max_pending_calls`` = ``bound``."""
    return {"APCV_SERVER_MAX_PENDING_CALLS": str(bound)}


@dataclass
class ServiceCounts:
    """What the service's ``/metrics`` says of its calls at one moment (one scrape)."""

    #: ``Verify`` calls by status (``grpc_server_handled_total``).
    handled: Counter[str] = field(default_factory=Counter)
    #: ``Verify``'s duration histogram: cumulative count by upper bound.
    durations: dict[float, float] = field(default_factory=dict)
    #: Calls gRPC received (``apcv_grpc_calls_received_total``).
    received: float = 0.0
    #: Calls a handler took, every method (``grpc_server_started_total``).
    taken: float = 0.0


def service_counts(metrics_port: int) -> ServiceCounts:
    counts = ServiceCounts()
    for sample in metric_samples(metrics_port):
        verify = sample.labels.get("grpc_method") == "Verify"
        if sample.name == "grpc_server_handled_total" and verify:
            counts.handled[sample.labels["grpc_code"]] += int(sample.value)
        elif sample.name == "grpc_server_handling_seconds_bucket" and verify:
            counts.durations[float(sample.labels["le"])] = sample.value
        elif sample.name == "apcv_grpc_calls_received_total":
            counts.received = sample.value
        elif sample.name == "grpc_server_started_total":
            counts.taken += sample.value
    return counts


def service_run(label: str, server: Any, data: Path, args: Any) -> None:
    """One run against the service, printed with its own count and p99 of the calls and the
    calls gRPC ended before the service took them."""
    before = service_counts(server.metrics_port)
    run = overload(server.address, server.process.pid, data, args)
    after = service_counts(server.metrics_port)
    handled = after.handled - before.handled
    p99 = histogram_quantile(before.durations, after.durations, 0.99)
    not_taken = (after.received - before.received) - (after.taken - before.taken)
    print(report(label, run, args.seconds), flush=True)
    counted = ", ".join(f"{code} {count}" for code, count in sorted(handled.items()))
    print(f"  the service's own count of its calls: {counted or 'none'}", flush=True)
    print(f"  the service's own p99 of those calls: {p99:.2f} ms", flush=True)
    print(f"  calls gRPC ended before the service took them: {not_taken:.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
