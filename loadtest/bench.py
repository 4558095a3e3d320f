"""``make bench``: ghz against real servers on loopback, compared side by side in one run.

Cases, each against a fresh ``apcv-verify serve`` on 127.0.0.1 with a demo PKI and a corpus
of distinct presentations (loadtest/corpus.py; no request is ever a replay):

* unary ``Verify`` with ``server.workers`` = 1 and = 2 (both on the Redis replay store, which
  more than one worker needs, so that only the worker count differs);
* ``VerifyBatch`` of 100 presentations with 1 and 2 workers (throughput per presentation);
* unary ``Verify`` with 1 worker on the in-memory replay store (the cost of Redis).

Machines are noisy: what matters are the ratios between cases measured in the same run,
each round running the cases in the opposite order of the previous one. Results, machine and
command go to docs/benchmarks.md. ghz (pinned) is installed into .tools/bin with
``go install`` when missing. The load generator runs on the same cores as the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import make_pki, write_corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GHZ_VERSION = "v0.120.0"
GHZ = REPO / ".tools" / "bin" / "ghz"
PROTO = "apcv/verify/v1/verifier.proto"
#: Where the core's part of docs/benchmarks.md begins (loadtest/core_bench.py).
CORE_BEGIN = "<!-- core-bench:begin -->"
#: Large enough for a VerifyBatch of 100 presentations and its answer.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # Verify or VerifyBatch
    workers: int
    backend: str  # redis or memory
    batch: int = 0  # presentations per VerifyBatch call
    concurrency: int = 32
    connections: int = 16

    @property
    def items_per_call(self) -> int:
        return self.batch or 1


CASES = (
    Case("verify-w1", "Verify", 1, "redis"),
    Case("verify-w2", "Verify", 2, "redis"),
    Case("batch100-w1", "VerifyBatch", 1, "redis", batch=100, concurrency=8, connections=8),
    Case("batch100-w2", "VerifyBatch", 2, "redis", batch=100, concurrency=8, connections=8),
    Case("verify-w1-memory", "Verify", 1, "memory"),
)


@dataclass
class Result:
    case: Case
    round: int
    calls: int
    rps: float
    p50_ms: float
    p99_ms: float
    status: dict[str, int]
    decisions: dict[str, float] = field(default_factory=dict)
    corpus: int = 0
    #: 1-minute load average when the case started: other work on the machine shows here.
    load_before: float = 0.0
    #: CPU used during the measured run, in cores (CPU seconds / wall seconds): the server
    #: (all its processes) and ghz.
    server_cores: float = 0.0
    ghz_cores: float = 0.0

    @property
    def items_per_second(self) -> float:
        return self.rps * self.case.items_per_call


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_ghz() -> Path:
    if not GHZ.exists():
        GHZ.parent.mkdir(parents=True, exist_ok=True)
        print(f"installing ghz {GHZ_VERSION} into {GHZ.parent}", flush=True)
        subprocess.run(
            ["go", "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
            check=True,
            env={**os.environ, "GOBIN": str(GHZ.parent)},
        )
    return GHZ


def machine() -> dict[str, str]:
    from apcv_verify import _native

    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
    ]
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": models[0] if models else platform.processor() or "unknown",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "ghz": GHZ_VERSION,
        # How the servers' native core was compiled (`make dev`: profile-guided, as the image).
        "native core build": _native.BUILD,
    }


@contextmanager
def redis_server(directory: Path) -> Iterator[str | None]:
    executable = shutil.which("redis-server")
    if executable is None:
        yield None
        return
    port = free_port()
    process = subprocess.Popen(
        [executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    address: str
    metrics_port: int
    log: Path


def start_server(
    case: Case,
    pki_dir: Path,
    redis_url: str | None,
    work: Path,
    launcher: Sequence[str] = (sys.executable, "-m", "apcv_verify.cli"),
    ready_seconds: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> Server:
    """``apcv-verify serve`` for ``case`` (``launcher`` runs the command: loadtest/p99_probe.py
    runs it with a probe inside; ``env`` adds to or replaces its environment), once it reports
    SERVING; stopped again if it does not within ``ready_seconds``, so that a failed start
    leaves no server behind."""
    address = f"127.0.0.1:{free_port()}"
    metrics_port = free_port()
    env = {
        **os.environ,
        "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "APCV_SERVER_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "APCV_AUDIT_HOLDER_REF_SECRET": secrets.token_hex(16),
        "APCV_REPLAY_BACKEND": case.backend,
        **(env or {}),
    }
    if case.backend == "redis":
        assert redis_url is not None
        env["APCV_REPLAY_REDIS_URL"] = redis_url
    log = work / f"{case.name}.log"
    command = [
        *launcher, "serve", "--listen", address,
        "--anchor", str(pki_dir / "anchor.pem"), "--trust-list", str(pki_dir / "trust-list.cose"),
        *[arg for path in sorted((pki_dir / "status").glob("*.cwt"))
          for arg in ("--status-list", str(path))],
        "--allow-test-identities", "--workers", str(case.workers),
    ]  # fmt: skip
    # The audit log (one JSON line per verification) goes to a file, as in production.
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(process, address, metrics_port, log)
    deadline = time.monotonic() + ready_seconds
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{case.name}: server exited:\n{log.read_text()}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                serving = False
            if serving and log.read_text().count('"event": "serving"') >= case.workers:
                return server
            if time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError(f"{case.name}: server not serving:\n{log.read_text()}")
            time.sleep(0.1)


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers of a multi-worker server)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _process_tree(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants, in seconds."""
    total = 0
    for member in _process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuReading:
    """A server's CPU time at one moment, read two ways: ``ticks`` as :func:`cpu_seconds`
    (clock ticks, 10 ms: ended threads included), ``threads`` each live thread's time on a
    CPU in ns (``/proc/<pid>/task/<tid>/schedstat``, user and system; empty without
    schedstats). Over a case of a few thousand presentations one tick is several µs per
    presentation, as much as the gap to a 1.2 × line: the ns reading is what can judge it."""

    ticks: float
    threads: dict[int, int]


def cpu_reading(pid: int) -> CpuReading:
    """``pid``'s :class:`CpuReading` (its threads, not its descendants: one worker)."""
    threads: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            threads[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return CpuReading(cpu_seconds(pid), threads)


def cpu_used(before: CpuReading, after: CpuReading) -> float:
    """Seconds of CPU between two readings of one process: from its threads' ns counters
    when every thread of ``before`` is still there (a thread started since counts whole),
    else from the ticks, which keep an ended thread's time."""
    if after.threads and before.threads.keys() <= after.threads.keys():
        spent = sum(ns - before.threads.get(tid, 0) for tid, ns in after.threads.items())
        return spent / 1e9
    return after.ticks - before.ticks


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def ghz_command(case: Case, data: Path, address: str, duration: float) -> list[str]:
    return [
        str(GHZ), "--insecure", "--proto", str(REPO / "protos" / PROTO),
        "--import-paths", str(REPO / "protos"),
        "--call", f"apcv.verify.v1.VerifierService/{case.method}",
        "--data-file", str(data),
        "--concurrency", str(case.concurrency), "--connections", str(case.connections),
        "--duration", f"{duration}s", "--max-send-message-size", str(MAX_MESSAGE_BYTES),
        "--max-recv-message-size", str(MAX_MESSAGE_BYTES), "--format", "json", address,
    ]  # fmt: skip


def metric_samples(metrics_port: int) -> Iterator[Sample]:
    """Every sample of the server's /metrics, read once."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        yield from family.samples


def decisions(metrics_port: int) -> dict[str, float]:
    """``apcv_verifications_total`` by decision/reason, from the server's /metrics."""
    return decision_counts(metric_samples(metrics_port))


def decision_counts(samples: Iterable[Sample]) -> dict[str, float]:
    """``apcv_verifications_total`` by decision/reason, from samples of /metrics."""
    counts: dict[str, float] = {}
    for sample in samples:
        if sample.name == "apcv_verifications_total":
            key = f"{sample.labels['decision']}/{sample.labels['reason']}"
            counts[key] = counts.get(key, 0) + sample.value
    return counts


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's children that have ended and been waited
    for, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(
    case: Case, round_: int, args: argparse.Namespace, redis_url: str | None, work: Path
) -> Result:
    case_dir = work / f"{case.name}-{round_}"
    case_dir.mkdir()
    load_before = os.getloadavg()[0]
    pki = make_pki(case_dir / "pki")
    server = start_server(case, pki.directory, redis_url, case_dir)
    try:
        # Warm-up (not measured), then the measured run; each on presentations made just
        # before it (a presentation is valid for two minutes). Request ids are new for each
        # case and round: the Redis cases share one redis-server, whose answer store refuses
        # an id answered before for another presentation (REQUEST_ID_REUSED).
        ids = f"{case.name}-{round_}-"
        (case_dir / "warm").mkdir()
        warm = write_corpus(
            case_dir / "warm", pki, 200 * case.items_per_call, case.batch, prefix=f"warm-{ids}"
        )
        subprocess.run(
            ghz_command(case, warm, server.address, 1.0), check=True, capture_output=True
        )
        count = args.corpus_batch if case.batch else args.corpus_verify
        data = write_corpus(case_dir, pki, count, case.batch, prefix=ids)
        server_cpu = cpu_seconds(server.process.pid)
        ghz_cpu = children_cpu_seconds()
        reply = subprocess.run(
            ghz_command(case, data, server.address, args.duration),
            check=True,
            capture_output=True,
            text=True,
        )
        server_cpu = cpu_seconds(server.process.pid) - server_cpu
        ghz_cpu = children_cpu_seconds() - ghz_cpu
        report = json.loads(reply.stdout)
        counted = decisions(server.metrics_port)
    finally:
        stop_server(server)
    latency = {int(d["percentage"]): d["latency"] / 1e6 for d in report["latencyDistribution"]}
    status = {str(k): int(v) for k, v in report.get("statusCodeDistribution", {}).items()}
    result = Result(
        case=case,
        round=round_,
        calls=int(report["count"]),
        # Answered calls only: not the few that ghz cuts off when its time is up.
        rps=status.get("OK", 0) / (report["total"] / 1e9),
        p50_ms=latency.get(50, float("nan")),
        p99_ms=latency.get(99, float("nan")),
        status=status,
        decisions=counted,
        corpus=count,
        load_before=load_before,
        server_cores=server_cpu / (report["total"] / 1e9),
        ghz_cores=ghz_cpu / (report["total"] / 1e9),
    )
    print(
        f"round {round_} {case.name:18} {result.rps:9.1f} calls/s "
        f"{result.items_per_second:9.1f} presentations/s  p50 {result.p50_ms:6.2f} ms "
        f"p99 {result.p99_ms:6.2f} ms  server {result.server_cores:.2f} cores "
        f"ghz {result.ghz_cores:.2f} cores  {result.status} {counted}",
        flush=True,
    )
    return result


RATIOS = (
    ("verify-w2", "verify-w1", "calls/s", "unary Verify: 2 workers / 1 worker"),
    ("batch100-w2", "batch100-w1", "presentations/s", "VerifyBatch(100): 2 workers / 1 worker"),
    ("batch100-w1", "verify-w1", "presentations/s", "VerifyBatch(100) / unary Verify, 1 worker"),
    ("batch100-w2", "verify-w2", "presentations/s", "VerifyBatch(100) / unary Verify, 2 workers"),
    ("verify-w1", "verify-w1-memory", "calls/s", "unary Verify, 1 worker: Redis / memory store"),
)


def ratio_rows(results: list[Result]) -> list[tuple[str, list[float], float]]:
    by_round: dict[int, dict[str, Result]] = {}
    for result in results:
        by_round.setdefault(result.round, {})[result.case.name] = result
    rows = []
    for top, bottom, _unit, label in RATIOS:
        values = [
            cases[top].items_per_second / cases[bottom].items_per_second
            for _, cases in sorted(by_round.items())
            if top in cases and bottom in cases
        ]
        if values:
            rows.append((label, values, statistics.median(values)))
    return rows


def verdict(rows: list[tuple[str, list[float], float]]) -> list[str]:
    medians = {label: median for label, _, median in rows}
    unary = medians.get("unary Verify: 2 workers / 1 worker")
    batch = medians.get("VerifyBatch(100): 2 workers / 1 worker")
    if unary is None:
        return ["Workers were not measured (no redis-server: more than one worker needs it)."]

    def judged(ratio: float) -> str:
        if ratio >= 1.10:
            return f"**yes** ({ratio:.2f}x)"
        if ratio <= 0.90:
            return f"**no, they cost** ({ratio:.2f}x)"
        return f"**no** ({ratio:.2f}x, within noise)"

    lines = [
        f"Do workers pay on {len(os.sched_getaffinity(0))} cores? For unary `Verify`: "
        f"{judged(unary)}, as the median ratio of 2 workers' throughput to 1 worker's."
    ]
    if batch is not None:
        lines.append(f"For `VerifyBatch` of 100: {judged(batch)}.")
    lines += [
        "",
        "Read the ratios with the CPU columns. Server plus ghz CPU near the number of cores"
        " means the machine was full: a second worker can then only share out the same CPU,"
        " not add any. One worker's unary calls are bound by the per-call Python and gRPC work"
        " under one GIL; a batch is verified on every core by the core's thread pool with the"
        " GIL released. With other work on the machine (load average above the cores), more"
        " server processes also win a larger share of the CPU from that work, which flatters"
        " the workers ratio: trust a run on a quiet machine.",
    ]
    return lines


def markdown(results: list[Result], info: dict[str, str], command: str, args: Any) -> str:
    rows = ratio_rows(results)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (loadtest/bench.py); do not edit by hand, run it again.",
        "Machines are noisy: compare the **ratios** between cases of one run, not absolute",
        "numbers across machines or runs. The load generator (ghz) runs on the same cores as",
        "the servers, so it takes part of the CPU that a real deployment would give them.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        f"Each case: a fresh `apcv-verify serve` on 127.0.0.1 (demo PKI, audit log to a file,"
        f" metrics on), a 1 s warm-up, then ghz for {args.duration:g} s over a corpus of distinct"
        " presentations of 4 demo holders by one reader (loadtest/corpus.py: a fresh cti each,"
        " so none is a replay). ghz: `--concurrency`/`--connections` as in the table (several"
        " connections, so that SO_REUSEPORT spreads them over the workers). Rounds run the cases"
        " in alternating order. Decisions are read from the server's `apcv_verifications_total`"
        " after each case (warm-up included). The load average before each case shows"
        " whether anything else was running on the machine.",
        "",
        "## Results",
        "",
        "| round | case | method | workers | replay store | concurrency / connections "
        "| answered calls/s | presentations/s | p50 ms | p99 ms | gRPC status | decisions "
        "| server CPU (cores) | ghz CPU (cores) | load avg before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.case
        method = f"VerifyBatch({c.batch})" if c.batch else c.method
        status = ", ".join(f"{k} {v}" for k, v in sorted(r.status.items()))
        counted = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.decisions.items()))
        if r.calls * c.items_per_call > r.corpus:
            counted += " (corpus wrapped: some presentations sent twice)"
        lines.append(
            f"| {r.round} | {c.name} | {method} | {c.workers} | {c.backend} "
            f"| {c.concurrency} / {c.connections} | {r.rps:.0f} | {r.items_per_second:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {status} | {counted} "
            f"| {r.server_cores:.2f} | {r.ghz_cores:.2f} | {r.load_before:.2f} |"
        )
    lines += [
        "",
        "A few `Unavailable` answers are ghz closing its connections at the end of a run with"
        " calls still in flight.",
        "",
        "## Ratios",
        "",
        "| ratio (throughput) | per round | median |",
        "|---|---|---|",
    ]
    for label, values, median in rows:
        lines.append(f"| {label} | {', '.join(f'{v:.2f}' for v in values)} | **{median:.2f}** |")
    lines += ["", "## Conclusion", "", *verdict(rows), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus-verify", type=int, default=25_000, help="presentations")
    parser.add_argument("--corpus-batch", type=int, default=60_000, help="presentations")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    args = parser.parse_args()
    # Killed: still run the finally blocks that stop the servers and redis-server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    ensure_ghz()
    chosen = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    info = machine()
    command = "make bench  # " + shlex.join(["python", "loadtest/bench.py", *sys.argv[1:]])
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="apcv-bench-") as temporary:
        work = Path(temporary)
        with redis_server(work) as redis_url:
            cases = [c for c in chosen if c.backend != "redis" or redis_url is not None]
            if len(cases) < len(chosen):
                print("redis-server not found: Redis and multi-worker cases skipped", flush=True)
            for round_ in range(1, args.rounds + 1):
                ordered = cases if round_ % 2 else list(reversed(cases))
                for case in ordered:
                    results.append(run_case(case, round_, args, redis_url, work))
    results.sort(key=lambda r: (r.round, CASES.index(r.case)))
    # Keep the core's part, from its section (loadtest/core_bench.py, run before this by
    # `make bench`) to the end of the file, where its notes follow it.
    held = args.output.read_text() if args.output.exists() else ""
    core = CORE_BEGIN + held.split(CORE_BEGIN, 1)[1] if CORE_BEGIN in held else ""
    text = markdown(results, info, command, args)
    args.output.write_text(text + ("\n" + core if core else ""))
    for label, values, median in ratio_rows(results):
        print(f"{label}: {', '.join(f'{v:.2f}' for v in values)} (median {median:.2f})")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def replace_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the part of ``path`` between the markers ``begin`` and ``end`` by ``section``
    (which carries the markers), or append it: each benchmark keeps its own section of one
    document."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)
