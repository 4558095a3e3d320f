"""``make soak``: a long run at a steady fraction of the measured capacity, against a real
server on loopback, watching for slow leaks and drift (docs/reliability.md "Soak").

1. Start ``apcv-verify serve`` (1 worker, in-memory replay store, audit log to a file) on
   127.0.0.1 with a fresh demo PKI, as ``make bench`` does (loadtest/bench.py).
2. Capacity: unary Verify calls in a closed loop (``--concurrency`` in flight) for
   ``--capacity-seconds``; capacity = answered calls per second.
3. Soak: an open loop at ``--fraction`` (70 %) of that capacity, or at ``--rate`` calls a
   second to compare runs at one rate, for ``--seconds`` (600): each call is sent at its
   scheduled time whatever the previous ones did, so a slowdown shows as latency and errors
   rather than as a lower offered rate. Every presentation is distinct and
   valid (loadtest/corpus.py), made by a helper process at most one segment ahead of its use,
   so any answer other than ACCEPTED, or a call error, is an error.
4. Each second: calls sent, accepted, errors; the server's resident memory (RSS, all its
   processes, from /proc), its CPU time and the machine's steal time (CPU time the host gave
   to other guests, /proc/stat), so that an episode of latency can be told apart: the server
   busy, the host taking the CPUs, or neither. Per 10-second window: p50 and p99 latency, the
   server's CPU and the steal in % of one CPU, and the ids the server's replay store holds
   (``apcv_replay_store_entries``, scraped as Prometheus would).
   At the end the server's own count of accepted verifications (``apcv_verifications_total``)
   is compared with the client's: nothing lost, nothing counted twice; and the server's count
   of its ``Verify`` calls by status (``grpc_server_handled_total``) is set beside the
   client's errors by kind, each with the first texts the client got for it, to tell where a
   status such as ``CANCELLED`` came from.

Results: a Markdown section between markers (``--write docs/reliability.md``) and a plot of
RSS, latency, errors and CPU over time (``--plot docs/soak.png``, matplotlib). ``--quick``
runs a few seconds (tests/test_soak.py keeps it working; no timing is asserted anywhere).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2  # noqa: E402
from apcv_verify.issuer import DemoPKI  # noqa: E402
from bench import (  # noqa: E402
    Case,
    _process_tree,
    cpu_seconds,
    decision_counts,
    machine,
    metric_samples,
    replace_section,
    start_server,
    stop_server,
)
from corpus import HOLDERS, READER_ID, make_pki  # noqa: E402

BEGIN = "<!-- soak:begin -->"
END = "<!-- soak:end -->"
VERIFY = "/apcv.verify.v1.VerifierService/Verify"
#: Seconds of load made ready at once by the helper process, one segment ahead: well inside a
#: presentation's lifetime (two minutes, loadtest/corpus.py), so none expires before use, and
#: short, so that the helper's signing and the segment's transfer are spread over the run:
#: 20-second segments (≈ 22,000 presentations at 1,100 calls/s) overloaded 2 shared cores in
#: a burst every 20 s, which the soak then read as the server's latency and errors
#: (docs/reliability.md "Soak").
SEGMENT_SECONDS = 2
#: Latency percentiles are taken over windows of this many seconds.
WINDOW_SECONDS = 10
CALL_TIMEOUT = 10.0
#: Channels (HTTP/2 connections) the load is spread over.
CHANNELS = 4
#: Distinct status texts kept per kind of call error (gRPC's or the server's own texts,
#: which name no reader-supplied data: docs/profile.md §9.1).
DETAILS_PER_KIND = 3


def make_requests(pki_dir: str, count: int, prefix: str) -> list[bytes]:
    """``count`` serialized VerifyRequests of distinct fresh presentations (in the helper)."""
    pki = DemoPKI.load(pki_dir)
    out = []
    for i in range(count):
        scan = verifier_pb2.Scan(
            request_id=f"{prefix}-{i}", nfc_bytes=pki.present(HOLDERS[i % len(HOLDERS)])
        )
        scan.reader.reader_id = READER_ID
        out.append(verifier_pb2.VerifyRequest(scan=scan).SerializeToString())
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants."""
    total = 0
    for member in _process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def machine_steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all CPUs together, since boot
    (``steal`` of /proc/stat's ``cpu`` line): CPU time this machine's processes, the server
    included, waited for while runnable."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")  # cpu user nice system idle … steal


@dataclass
class Second:
    """What happened to the calls scheduled in one second of the soak."""

    sent: int = 0
    accepted: int = 0
    errors: int = 0
    rss: int = 0
    #: When the second's sample was taken (the event loop's clock; NaN: not sampled), the
    #: server's CPU seconds (all its processes) and the machine's steal seconds until then.
    sampled_at: float = math.nan
    server_cpu: float = math.nan
    steal: float = math.nan
    #: The server's replay store entries, in the first second of each window.
    replay_entries: float | None = None
    latencies: list[float] = field(default_factory=list)


class Load:
    """Raw-bytes Verify stubs over a few channels, and the answer's judgement."""

    def __init__(self, address: str) -> None:
        self.channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
        self.stubs = [c.unary_unary(VERIFY) for c in self.channels]  # bytes in, bytes out
        #: The first distinct status texts of the call errors, by status.
        self.details: dict[str, list[str]] = {}
        #: The shortest and longest time to each kind of error (as :meth:`call` names it).
        self.error_seconds: dict[str, tuple[float, float]] = {}

    async def call(self, n: int, request: bytes) -> tuple[str, float]:
        """(error, seconds) of one call: the error is "" for an ACCEPTED verdict, else the
        call's status code (RESOURCE_EXHAUSTED: the server's limits shedding load) or the
        verdict's decision and reason."""
        start = time.perf_counter()
        try:
            reply = await self.stubs[n % CHANNELS](request, timeout=CALL_TIMEOUT)
            verdict = verifier_pb2.VerifyResponse.FromString(reply).verdict
            error = ""
            if verdict.decision != verifier_pb2.DECISION_ACCEPTED:
                decision = verifier_pb2.Decision.Name(verdict.decision).removeprefix("DECISION_")
                error = f"{decision}/{verifier_pb2.Reason.Name(verdict.reason)}"
        except grpc.aio.AioRpcError as failed:
            error = failed.code().name
            texts = self.details.setdefault(error, [])
            text = failed.details() or ""
            if len(texts) < DETAILS_PER_KIND and text not in texts:
                texts.append(text)
        seconds = time.perf_counter() - start
        if error:
            shortest, longest = self.error_seconds.get(error, (seconds, seconds))
            self.error_seconds[error] = (min(shortest, seconds), max(longest, seconds))
        return error, seconds

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def capacity(
    load: Load, requests: Iterator[tuple[int, bytes]], seconds: float, concurrency: int
) -> float:
    """Answered calls per second in a closed loop of ``concurrency`` callers, taking their
    requests from ``requests`` (shared with a warm-up run before)."""
    pending = requests
    answered = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def caller() -> None:
        nonlocal answered
        for n, request in pending:
            if time.perf_counter() > deadline:
                return
            await load.call(n, request)
            answered += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return answered / (time.perf_counter() - start)


def verify_counts(metrics_port: int) -> tuple[float, Counter[str]]:
    """From one scrape of the server's /metrics: the presentations accepted so far
    (``apcv_verifications_total``, ACCEPTED/OK) and the ``Verify`` calls by status
    (``grpc_server_handled_total``)."""
    samples = list(metric_samples(metrics_port))
    codes: Counter[str] = Counter()
    for sample in samples:
        if sample.name == "grpc_server_handled_total" and sample.labels["grpc_method"] == "Verify":
            codes[sample.labels["grpc_code"]] += int(sample.value)
    return decision_counts(samples).get("ACCEPTED/OK", 0.0), codes


def replay_entries(metrics_port: int) -> float | None:
    """``apcv_replay_store_entries`` from the server's /metrics (None if it has none)."""
    for sample in metric_samples(metrics_port):
        if sample.name == "apcv_replay_store_entries":
            return sample.value
    return None


async def soak(
    load: Load,
    pid: int,
    metrics_port: int,
    rate: float,
    seconds: int,
    supply: ProcessPoolExecutor,
    pki_dir: str,
) -> tuple[list[Second], Counter[str]]:
    """The open loop: ``rate`` calls per second for ``seconds``, segment by segment; what
    happened each second, and the errors by kind (:meth:`Load.call`)."""
    per_segment = max(1, round(rate * min(SEGMENT_SECONDS, seconds)))
    segments = -(-seconds // SEGMENT_SECONDS)

    def order(k: int) -> Future[list[bytes]]:
        return supply.submit(make_requests, pki_dir, per_segment, f"s{k}")

    ready = order(0).result()
    upcoming = order(1) if segments > 1 else None
    stats = [Second() for _ in range(seconds)]
    kinds: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(n: int, second: int, request: bytes) -> None:
        error, latency = await load.call(n, request)
        entry = stats[second]
        entry.latencies.append(latency)
        if not error:
            entry.accepted += 1
        else:
            entry.errors += 1
            kinds[error] += 1

    async def sample_rss() -> None:
        while True:
            second = int(loop.time() - start)
            if second >= seconds:
                return
            entry = stats[second]
            entry.rss = rss_bytes(pid)
            entry.sampled_at = loop.time()
            entry.server_cpu = cpu_seconds(pid)
            entry.steal = machine_steal_seconds()
            if second % WINDOW_SECONDS == 0 and entry.replay_entries is None:
                # Off the loop that sends the calls: the scrape waits for the server.
                entry.replay_entries = await asyncio.to_thread(replay_entries, metrics_port)
            await asyncio.sleep(1.0 - (loop.time() - start) % 1.0)

    sampler = loop.create_task(sample_rss())
    n = 0
    for k in range(segments):
        if k > 0:
            assert upcoming is not None
            ready = await asyncio.wrap_future(upcoming)
            upcoming = order(k + 1) if k + 1 < segments else None
        for request in ready:
            at = n / rate
            if at >= seconds:
                break
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            second = int(at)
            stats[second].sent += 1
            task = loop.create_task(one(n, second, request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
    if tasks:
        await asyncio.wait(tasks)
    await sampler
    return stats, kinds


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_percent(stats: list[Second], begin: int, end: int) -> tuple[float, float]:
    """The server's CPU and the machine's steal from second ``begin`` to ``end``, in % of one
    CPU: between the first samples at or after each (the last sample for ``end`` past the
    run). NaN when fewer than two samples fall there."""
    sampled = [i for i, s in enumerate(stats) if not math.isnan(s.sampled_at)]
    at = bisect_left(sampled, begin)
    to = min(bisect_left(sampled, end), len(sampled) - 1)
    if at >= len(sampled) or to <= at:
        return math.nan, math.nan
    first, last = stats[sampled[at]], stats[sampled[to]]
    span = last.sampled_at - first.sampled_at
    return (
        100 * (last.server_cpu - first.server_cpu) / span,
        100 * (last.steal - first.steal) / span,
    )


def windows(stats: list[Second]) -> list[dict[str, float]]:
    """Per ``WINDOW_SECONDS``: start second, sent, accepted, errors, p50/p99 ms, max RSS MiB,
    the server's CPU and the machine's steal in % of one CPU."""
    rows = []
    for begin in range(0, len(stats), WINDOW_SECONDS):
        part = stats[begin : begin + WINDOW_SECONDS]
        server_cpu, steal = cpu_percent(stats, begin, begin + WINDOW_SECONDS)
        latencies = [x for s in part for x in s.latencies]
        rows.append(
            {
                "t": begin,
                "sent": sum(s.sent for s in part),
                "accepted": sum(s.accepted for s in part),
                "errors": sum(s.errors for s in part),
                "p50_ms": percentile(latencies, 0.50) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
                "rss_mib": max((s.rss for s in part), default=0) / 2**20,
                "server_cpu_pct": server_cpu,
                "steal_pct": steal,
                "replay_entries": next(
                    (s.replay_entries for s in part if s.replay_entries is not None),
                    float("nan"),
                ),
            }
        )
    return rows


def plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] / 60 for r in rows]
    fig, (rss, p99, errors, cpu) = plt.subplots(4, 1, sharex=True, figsize=(8, 9))
    rss.plot(t, [r["rss_mib"] for r in rows])
    rss.set_ylabel("server RSS (MiB)")
    rss.set_ylim(bottom=0)
    p99.plot(t, [r["p99_ms"] for r in rows], label="p99")
    p99.plot(t, [r["p50_ms"] for r in rows], label="p50")
    p99.set_ylabel(f"latency per {WINDOW_SECONDS} s (ms)")
    p99.set_ylim(bottom=0)
    p99.legend()
    errors.plot(t, [r["errors"] for r in rows], color="tab:red")
    errors.set_ylabel(f"errors per {WINDOW_SECONDS} s")
    errors.set_ylim(bottom=0)
    cpu.plot(t, [r.get("server_cpu_pct", math.nan) for r in rows], label="server")
    cpu.plot(t, [r.get("steal_pct", math.nan) for r in rows], label="steal (host)")
    cpu.set_ylabel("% of one CPU")
    cpu.set_ylim(bottom=0)
    cpu.legend()
    cpu.set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(rows: list[dict[str, float]], info: dict[str, Any], args: argparse.Namespace) -> str:
    sent = sum(int(r["sent"]) for r in rows)
    accepted = sum(int(r["accepted"]) for r in rows)
    errors = sum(int(r["errors"]) for r in rows)
    minute = max(1, 60 // WINDOW_SECONDS)
    head = rows[:minute]
    tail = rows[-minute:]
    details = info.get("error_details", {})
    error_seconds = info.get("error_seconds", {})

    def kind_text(kind: str, count: int) -> str:
        text = f"{kind} {count}"
        if kind in error_seconds:
            shortest, longest = error_seconds[kind]
            text += f" after {shortest:.2f}–{longest:.2f} s"
        return text + "".join(f' ("{said}")' for said in details.get(kind, ()))

    kinds = ", ".join(kind_text(k, n) for k, n in info["error_kinds"].most_common())
    server_codes = info.get("server_codes")  # None: not read (report() alone, in tests)
    by_status = (
        []
        if server_codes is None
        else [
            "- The server's `Verify` calls by status over the soak (`grpc_server_handled_total`): "
            + ", ".join(f"{code} {n}" for code, n in server_codes.most_common())
            + "."
        ]
    )
    rss_head = statistics.median(r["rss_mib"] for r in head)
    rss_tail = statistics.median(r["rss_mib"] for r in tail)
    lines = [
        BEGIN,
        "",
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(info['started']))}: "
        f"`{info['command']}` on {info['machine']['nproc']} cores "
        f"({info['machine']['cpu']}, {info['machine']['memory']}), Python "
        f"{info['machine']['python']}, grpcio {info['machine']['grpcio']}; load average "
        f"{info['load_before']:.2f} before the run (other work on the machine shows there). "
        "Server and load generator share the cores.",
        "",
        f"- Capacity (closed loop, {args.concurrency} calls in flight, "
        f"{args.capacity_seconds:g} s): **{info['capacity']:.0f} Verify/s**.",
        f"- Soak: {args.seconds} s open loop at {info['share']:.0%} of it"
        + (" (a fixed rate), " if args.rate else ", ")
        + f"**{info['rate']:.0f} Verify/s** offered; {sent} calls, {accepted} accepted, "
        f"**{errors} errors** (call errors and verdicts other than ACCEPTED)"
        + (f", by kind: {kinds}." if kinds else "."),
        f"- Answer store (answer recovery): {_answer_bound(args, info['rate'])}.",
        f"- Server's own count of accepted verifications: {info['server_accepted']:.0f} "
        f"(client: {accepted}).",
        *by_status,
        f"- Server RSS: {rss_head:.1f} MiB over the first minute, {rss_tail:.1f} MiB over the "
        f"last (median of {WINDOW_SECONDS}-second maxima); peak "
        f"{max(r['rss_mib'] for r in rows):.1f} MiB.",
        f"- p99: {statistics.median(r['p99_ms'] for r in head):.1f} ms over the first minute, "
        f"{statistics.median(r['p99_ms'] for r in tail):.1f} ms over the last; worst "
        f"{WINDOW_SECONDS}-second window {max(r['p99_ms'] for r in rows):.1f} ms.",
        f"- CPU, in % of one CPU: the server {_mean(r.get('server_cpu_pct') for r in rows)} "
        f"on average; steal time (CPU time the host gave to other guests, the machine's "
        f"{info['machine']['nproc']} CPUs together) "
        f"{_mean(r.get('steal_pct') for r in rows)} on average, "
        f"{_most((r.get('steal_pct', math.nan) for r in rows), '.1f')} in the worst "
        f"{WINDOW_SECONDS}-second window.",
        "",
    ]
    if info.get("plot"):
        lines += [f"![RSS, latency, errors and CPU over the soak]({info['plot']})", ""]
    lines += [
        # p99, RSS, CPU and steal: the largest of the minute's 10-second windows.
        "| minute | sent | accepted | errors | p50 ms | p99 ms | RSS MiB | replay entries "
        "| server CPU % | steal % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for begin in range(0, len(rows), minute):
        part = rows[begin : begin + minute]
        lines.append(
            f"| {part[0]['t'] / 60:.0f} | {sum(int(r['sent']) for r in part)} "
            f"| {sum(int(r['accepted']) for r in part)} | {sum(int(r['errors']) for r in part)} "
            f"| {statistics.median(r['p50_ms'] for r in part):.1f} "
            f"| {max(r['p99_ms'] for r in part):.1f} "
            f"| {max(r['rss_mib'] for r in part):.1f} "
            f"| {_most(r.get('replay_entries', math.nan) for r in part)} "
            f"| {_most(r.get('server_cpu_pct', math.nan) for r in part)} "
            f"| {_most((r.get('steal_pct', math.nan) for r in part), '.1f')} |"
        )
    lines += ["", END, ""]
    return "\n".join(lines)


def _most(values: Iterator[float], spec: str = ".0f") -> str:
    """The largest of the values read (NaN: not read), or "–"."""
    read = [v for v in values if not math.isnan(v)]
    return format(max(read), spec) if read else "–"


def _mean(values: Iterator[float | None]) -> str:
    """The mean of the values read (None or NaN: not read) to one decimal, or "–"."""
    read = [v for v in values if v is not None and not math.isnan(v)]
    return f"{statistics.fmean(read):.1f}" if read else "–"


def _answer_bound(args: argparse.Namespace, rate: float) -> str:
    """What bounds the answers the server keeps during the soak, and when it is reached."""
    if args.answer_max_entries is None:
        return "the server's default bound (`replay.answer_max_entries`)"
    bound = args.answer_max_entries
    return (
        f"`replay.answer_max_entries` = {bound} answers, full after ≈ {bound / rate:.0f} s at"
        " this rate; every answer is kept a day by default, so until the store is full the"
        " server's memory grows with each acceptance, by design"
    )


def write_section(path: Path, section: str) -> None:
    """Replace the soak section of ``path`` (between the markers), or append it."""
    replace_section(path, section, BEGIN, END)


async def run(
    args: argparse.Namespace, work: Path
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    pki = make_pki(work / "pki")
    info: dict[str, Any] = {
        "started": time.time(),
        "machine": machine(),
        "load_before": os.getloadavg()[0],
    }
    env = {}
    if args.answer_max_entries is not None:
        env["APCV_REPLAY_ANSWER_MAX_ENTRIES"] = str(args.answer_max_entries)
    server = start_server(Case("soak", "Verify", 1, "memory"), pki.directory, None, work, env=env)
    try:
        # spawn, not fork: a forked child of a process with gRPC channels can hang.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as supply:
            load = Load(server.address)
            try:
                count = args.capacity_calls
                made = supply.submit(make_requests, str(pki.directory), count, "c").result()
                requests = iter(enumerate(made))
                if args.warmup_seconds > 0:  # caches, allocator, connections: not counted
                    await capacity(load, requests, args.warmup_seconds, args.concurrency)
                info["capacity"] = await capacity(
                    load, requests, args.capacity_seconds, args.concurrency
                )
                info["rate"] = args.rate or max(1.0, info["capacity"] * args.fraction)
                info["share"] = info["rate"] / info["capacity"]
                print(
                    f"capacity {info['capacity']:.0f}/s, soak at {info['rate']:.0f}/s", flush=True
                )
                accepted_before, codes_before = verify_counts(server.metrics_port)
                stats, info["error_kinds"] = await soak(
                    load,
                    server.process.pid,
                    server.metrics_port,
                    info["rate"],
                    args.seconds,
                    supply,
                    str(pki.directory),
                )
                accepted_after, codes_after = verify_counts(server.metrics_port)
                info["server_accepted"] = accepted_after - accepted_before
                info["server_codes"] = codes_after - codes_before
                info["error_details"] = load.details
                info["error_seconds"] = load.error_seconds
            finally:
                await load.close()
    finally:
        stop_server(server)
    return windows(stats), info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="length of the soak")
    parser.add_argument("--fraction", type=float, default=0.7, help="of measured capacity")
    parser.add_argument(
        "--rate", type=float, help="calls per second offered instead of --fraction of capacity"
    )
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="before capacity")
    parser.add_argument("--capacity-calls", type=int, default=20_000, help="at most")
    parser.add_argument("--concurrency", type=int, default=32, help="capacity run")
    parser.add_argument(
        "--answer-max-entries",
        type=int,
        help="the server's replay.answer_max_entries (default: the server's own, 1,000,000)",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: keeps it working")
    parser.add_argument("--write", type=Path, help="docs/reliability.md to update")
    parser.add_argument("--plot", type=Path, help="PNG of RSS, p99 and errors over time")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.capacity_seconds, args.capacity_calls = 4, 1.0, 300
        args.warmup_seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="apcv-soak-") as tmp:
        rows, info = asyncio.run(run(args, Path(tmp)))
    info["command"] = "python loadtest/soak.py " + shlex.join(sys.argv[1:])
    if args.plot:
        plot(rows, args.plot, f"soak at {info['rate']:.0f} Verify/s ({info['share']:.0%})")
        if args.write:
            info["plot"] = os.path.relpath(args.plot, args.write.parent)
    section = report(rows, info, args)
    print(section)
    if args.write:
        write_section(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
