"""Where ``Verify``'s p99 goes: ghz at a fixed rate against a server with a probe inside.

Starts ``apcv-verify serve`` as ``make bench`` does (1 worker, memory store, audit log to a
file), through this file (``--serve``), which runs the server with a probe beside it:

* a loop-lag probe: ``asyncio.sleep(interval)`` timed in a loop; each wake-up late by more than
  0.5 ms is kept, with the event-loop thread's CPU time over that sleep (a late loop that was
  running something, or one that waited for a CPU);
* ``gc.callbacks``: each collection's generation and wall time;
* the audit buffer's ``drain`` (its writes to the audit file), timed.

Then, per setting and round (settings in alternating order), ghz at ``--rps`` for
``--seconds`` (concurrency 16, 4 connections, as the benchmark) and beside ghz's p50/p99: the
server's own ``Verify`` duration histogram (p50/p99 of the same calls), each server thread's
CPU, run-queue wait and time slices per call (``/proc/<pid>/task/*/schedstat``), ghz's CPU,
the load average and the probe's findings. Settings, joined with ``+``: ``base``; ``pin``
(the server on the first half of the CPUs, ghz on the other, as service_bench.py's latency
step); ``gmpN`` (ghz with GOMAXPROCS=N); ``gcoff`` (ghz's Go collector off, as in the
latency step); ``connN`` / ``concN`` (ghz's connections and concurrency); ``scrape``
(``/metrics`` read 4 times a second during the run).

Findings in docs/benchmarks.md "Unary latency: where the p99 goes". Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Case, ghz_command, start_server, stop_server  # noqa: E402
from corpus import make_pki, presentations, write_corpus  # noqa: E402
from service_bench import (  # noqa: E402
    SERVICE,
    _handling_seconds,
    _unary,
    encode_unary,
    ghz_environment,
    histogram_quantile,
    pinned,
    service_grpc_experiments,
)

#: Where the server's probe writes its findings (on SIGUSR1; SIGUSR2 starts them afresh).
PROBE_OUT = "APCV_P99_PROBE_OUT"
PROBE_INTERVAL = 0.005


# --- inside the server ---------------------------------------------------------------------------


class Probe:
    """The server's loop lag, collections and audit drains, kept until :meth:`dump`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.reset()
        self._gc_started = 0.0

    def reset(self) -> None:
        self.lags: list[tuple[float, float]] = []  # (late by, loop thread CPU over the sleep) ms
        self.collections: list[tuple[int, float]] = []  # (generation, wall ms)
        self.drains: list[float] = []  # ms
        self.samples = 0

    def dump(self) -> None:
        self.out.write_text(
            json.dumps(
                {
                    "lags": self.lags,
                    "collections": self.collections,
                    "drains": self.drains,
                    "samples": self.samples,
                }
            )
        )

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            wall = (time.perf_counter() - self._gc_started) * 1e3
            self.collections.append((info["generation"], wall))

    def time_drains(self) -> None:
        from apcv_verify.observe import logs

        drain = logs.BufferedLines.drain

        def timed(buffer: logs.BufferedLines) -> None:
            started = time.perf_counter()
            drain(buffer)
            self.drains.append((time.perf_counter() - started) * 1e3)

        logs.BufferedLines.drain = timed  # type: ignore[method-assign,assignment]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.dump)
        loop.add_signal_handler(signal.SIGUSR2, self.reset)
        while True:
            started, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(PROBE_INTERVAL)
            late = time.perf_counter() - started - PROBE_INTERVAL
            self.samples += 1
            if late > 0.0005:
                self.lags.append((late * 1e3, (time.thread_time() - cpu) * 1e3))


def serve_with_probe(argv: list[str]) -> int:
    """``apcv-verify`` with ``argv``, the probe running beside the server's event loop."""
    from apcv_verify.cli.main import main

    probe = Probe(Path(os.environ[PROBE_OUT]))
    gc.callbacks.append(probe.on_gc)
    probe.time_drains()
    from apcv_verify.service import startup

    serve_until_signalled = startup._serve_until_signalled

    async def with_probe(config: Any) -> None:
        task = asyncio.get_running_loop().create_task(probe.run())
        try:
            await serve_until_signalled(config)
        finally:
            task.cancel()

    # serve() runs this coroutine on the server's event loop: the probe runs on that loop.
    startup._serve_until_signalled = with_probe
    return main(argv)


# --- the driver ----------------------------------------------------------------------------------


def threads(pid: int) -> dict[str, tuple[str, int, int, int]]:
    """Each thread of ``pid``: its name, CPU ns, run-queue wait ns and time slices."""
    found = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            cpu, wait, slices = (task / "schedstat").read_text().split()[:3]
            found[task.name] = (
                (task / "comm").read_text().strip(),
                int(cpu),
                int(wait),
                int(slices),
            )
        except (OSError, ValueError):
            continue
    return found


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _scraping(port: int, stop: threading.Event, took: list[float]) -> Callable[[], None]:
    def scrape() -> None:
        while not stop.wait(0.25):
            started = time.perf_counter()
            _handling_seconds(port)
            took.append((time.perf_counter() - started) * 1e3)

    return scrape


def measure(setting: str, server: Any, data: Path, args: Any, probe_out: Path) -> list[str]:
    pid = server.process.pid
    parts = setting.split("+")
    env = ghz_environment(collector="gcoff" not in parts)
    concurrency, connections, pin = 16, 4, False
    for part in parts:
        if part.startswith("gmp"):
            env["GOMAXPROCS"] = part[3:]
        elif part.startswith("conc"):
            concurrency = int(part[4:])
        elif part.startswith("conn"):
            connections = int(part[4:])
        elif part == "pin":
            pin = True
    case = Case("p99", "Verify", 1, "memory", concurrency=concurrency, connections=connections)
    command = ghz_command(case, data, server.address, args.seconds)
    command[-1:-1] = ["--rps", str(int(args.rps))]
    stop = threading.Event()
    scrapes: list[float] = []
    scraper = None
    if "scrape" in setting:
        scraper = threading.Thread(target=_scraping(server.metrics_port, stop, scrapes))
    with pinned(pid, command, pin) as command:
        histogram = _handling_seconds(server.metrics_port)
        os.kill(pid, signal.SIGUSR2)
        load = os.getloadavg()[0]
        before, ghz_cpu = threads(pid), _children_cpu()
        if scraper is not None:
            scraper.start()
        run = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        stop.set()
        if scraper is not None:
            scraper.join()
        after, ghz_cpu = threads(pid), _children_cpu() - ghz_cpu
        later = _handling_seconds(server.metrics_port)
        os.kill(pid, signal.SIGUSR1)
    report = json.loads(run.stdout)
    latency = {int(d["percentage"]): d["latency"] / 1e6 for d in report["latencyDistribution"]}
    calls, seconds = max(1, report["count"]), report["total"] / 1e9
    waited = sum(t[2] - before.get(tid, t)[2] for tid, t in after.items() if tid in before)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the probe writes on SIGUSR1
        try:
            found = json.loads(probe_out.read_text())
            break
        except (OSError, ValueError):
            time.sleep(0.05)
    else:
        raise RuntimeError("the server's probe did not answer")
    probe_out.unlink()
    lags = found["lags"]
    long = [lag for lag in lags if lag[0] > 2]
    collections = found["collections"]
    slept = sum(lag[0] + PROBE_INTERVAL * 1e3 for lag in long)  # those sleeps' wall time
    lines = [
        f"{setting:12} load {load:.2f}  ghz p50 {latency[50]:.2f} p99 {latency[99]:.2f} ms"
        f" ({report['rps']:.0f}/s, ghz {ghz_cpu / seconds:.2f} cores)"
        f"  server p50 {histogram_quantile(histogram, later, 0.5):.2f}"
        f" p99 {histogram_quantile(histogram, later, 0.99):.2f} ms"
        f"  run-queue wait {waited / 1e6 / seconds:.0f} ms/s",
        f"{'':12} loop late >2 ms {len(long)} times (of {found['samples']} wake-ups), longest"
        f" {max((lag[0] for lag in lags), default=0):.1f} ms, loop thread on CPU"
        f" {sum(lag[1] for lag in long):.0f} of {slept:.0f} ms"
        f"  collections {len(collections)} (gen 2: {sum(g == 2 for g, _ in collections)}),"
        f" longest {max((w for _, w in collections), default=0):.2f} ms"
        f"  audit drains {len(found['drains'])}, longest {max(found['drains'], default=0):.2f} ms",
    ]
    if scrapes:
        lines.append(f"{'':12} /metrics read {len(scrapes)} times, longest {max(scrapes):.1f} ms")
    for tid, (name, cpu, wait, slices) in sorted(after.items()):
        _, cpu0, wait0, slices0 = before.get(tid, (name, 0, 0, 0))
        if (slices - slices0) / calls >= 0.05:
            lines.append(
                f"{'':12} thread {name:14} CPU {(cpu - cpu0) / calls / 1e3:7.1f} µs/call,"
                f" run-queue wait {(wait - wait0) / calls / 1e3:7.1f} µs/call,"
                f" {(slices - slices0) / calls:.2f} slices/call"
            )
    return lines


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        return serve_with_probe(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=float, default=487.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", default="base,pin", help="comma-separated (see above)")
    args = parser.parse_args()
    settings = args.settings.split(",")
    with tempfile.TemporaryDirectory(prefix="apcv-p99-") as temporary:
        work = Path(temporary)
        pki = make_pki(work / "pki")
        probe_out = work / "probe.json"
        server = start_server(
            Case("p99", "Verify", 1, "memory"),
            pki.directory,
            None,
            work,
            launcher=(sys.executable, __file__, "--serve"),
            # GRPC_EXPERIMENTS given from outside: this file imports grpc (service_bench) before
            # the server starts, too late for `apcv-verify serve` to set it itself.
            env={**service_grpc_experiments(), PROBE_OUT: str(probe_out)},
        )
        try:
            warm = list(presentations(pki, 300))
            asyncio.run(_unary(server.address, SERVICE + "Verify", encode_unary(warm, "w"), 8))
            runs = 0
            for round_ in range(args.rounds):
                for setting in settings if round_ % 2 == 0 else reversed(settings):
                    runs += 1
                    count = int(args.rps * args.seconds * 1.2) + 10
                    data = write_corpus(work, pki, count, prefix=f"p99-{runs}-")
                    for line in measure(setting, server, data, args, probe_out):
                        print(line, flush=True)
        finally:
            stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
