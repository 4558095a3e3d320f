"""``make loadtest``: a corpus, a real server on loopback, locust headless, CSV and HTML reports.

    python loadtest/run.py --out .loadtest --count 20000 --users 16 --run-time 60s

1. ``apcv-verify corpus`` writes ``--count`` scans (default mix, ``--seed``) to OUT/corpus;
2. ``apcv-verify serve`` starts on a free 127.0.0.1 port with its trust anchor, trust list and
   status lists (``--workers`` processes; more than one needs Redis, so 1 by default);
3. locust runs headless: ``--users`` users (hospital systems on ``Verify`` and edge readers on
   ``VerifyStream``, 3:1), until ``--run-time`` or the end of the corpus, every answer checked
   against the corpus (loadtest/locustfile.py);
4. the reports go to OUT: ``report.html``, ``run_stats.csv``, ``run_stats_history.csv``,
   ``run_failures.csv``, ``run_exceptions.csv``, ``summary.json`` (answers right and wrong
   per kind of scan) and ``server.log``.

Exit status: locust's (1 when any call failed or any answer was wrong). docs/operations.md
"Load test" says how to read the reports.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_serving(address: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}: see server.log")
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"the server on {address} was not serving after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".loadtest"))
    parser.add_argument("--count", type=int, default=20_000, help="corpus scans")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=8.0)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "apcv_verify.cli"]
    corpus = out / "corpus"
    subprocess.run(
        [*cli, "corpus", "--out", str(corpus), "--count", str(args.count),
         "--seed", str(args.seed), "--force"],
        check=True,
    )  # fmt: skip
    manifest = json.loads((corpus / "corpus.json").read_text())
    left = manifest["valid_until"] - time.time()
    print(f"corpus ready: its presentations expire in {left:.0f} s (the run stops then)")
    pki = corpus / "pki"
    address = f"127.0.0.1:{free_port()}"
    with (out / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [*cli, "serve", "--listen", address, "--workers", str(args.workers),
             "--anchor", str(pki / "anchor.pem"), "--trust-list", str(pki / "trust-list.cose"),
             *[a for path in sorted((pki / "status").glob("*.cwt"))
               for a in ("--status-list", str(path))],
             "--allow-test-identities"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "APCV_METRICS_LISTEN": ""},
        )  # fmt: skip
    try:
        wait_serving(address, server)
        locust = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
             "--host", address, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
             "--run-time", args.run_time, "--csv", str(out / "run"), "--csv-full-history",
             "--html", str(out / "report.html"), "--only-summary"],
            env={**os.environ, "APCV_LOADTEST_CORPUS": str(corpus),
                 "APCV_LOADTEST_SUMMARY": str(out / "summary.json")},
            check=False,
        )  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"reports in {out}: report.html, run_stats.csv, summary.json")
    return locust.returncode


if __name__ == "__main__":
    sys.exit(main())
