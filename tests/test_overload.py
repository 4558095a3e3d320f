"""loadtest/overload.py keeps working: ghz against a server, the calls by status with their
times and texts, the server's resident size and the project's client beside ghz, reported
(no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

sys.path.insert(0, str(REPO / "loadtest"))
import overload  # noqa: E402

GHZ_CSV = """\
duration (ms),status,error
12.50,OK,
1.20,Canceled,rpc error: code = Canceled desc = CANCELLED
0.40,Canceled,rpc error: code = Canceled desc = CANCELLED
300.00,Unavailable,rpc error: code = Unavailable desc = read tcp 127.0.0.1:41000->127.0.0.1:5000: x
"""


def test_calls_are_grouped_by_status_with_their_times_and_general_texts() -> None:
    found = overload.outcomes(GHZ_CSV)
    assert sorted(found) == ["Canceled", "OK", "Unavailable"]
    assert found["Canceled"].milliseconds == [1.2, 0.4]
    assert found["OK"].texts == {}
    (text,) = found["Unavailable"].texts
    assert text == "rpc error: code = Unavailable desc = read tcp <address>-><address>: x"
    lines = overload.report("echo", overload.Run(found, (80.0, 90.5, 85.25)), 2.0).splitlines()
    assert lines[0] == "echo: 0 OK/s over 2 s; RSS 80.0 MiB before, 90.5 at its peak, 85.2 after"
    assert lines[1] == "  Canceled                 2 calls, ms: p10 0 p50 1 p90 1 max 1"
    assert lines[2].split()[:2] == ["2", "rpc"]
    run = overload.Run(found, (80.0, 90.5, 85.25), [80.0, 90.4], server_cores=0.98, ghz_cores=1.0)
    timed = overload.report("echo", run, 2.0).splitlines()
    assert timed[1:3] == ["  RSS every 10 s, MiB: 80, 90", "  CPU, cores: server 0.98, ghz 1.00"]


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert overload.percentile(values, 0.1) == 2.0
    assert overload.percentile(values, 0.5) == 6.0
    assert overload.percentile(values, 0.99) == 10.0


@pytest.mark.slow
@pytest.mark.usefixtures("ghz")
def test_a_short_run_reports_the_service_and_the_echo_server() -> None:
    command = [sys.executable, str(REPO / "loadtest" / "overload.py"), "--rps", "100"]
    command += ["--concurrency", "8", "--connections", "2", "--seconds", "1"]
    command += ["--servers", "service,echo", "--client-calls", "20"]
    command += ["--max-pending-calls", "0,50"]  # gRPC's own bound, then one of 50
    command += ["--pin"]  # the server and ghz each on its half of the CPUs
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    servers = ["service, server.max_pending_calls = 0", "service, server.max_pending_calls = 50"]
    for server in [*servers, "echo"]:
        head = rf"^{server}: [1-9]\d* OK/s over 1 s; RSS [\d.]+ MiB before, [\d.]+ at its peak"
        assert re.search(head, run.stdout, re.M), run.stdout
    cpu = r"^  CPU, cores: server [\d.]+, ghz [\d.]+$"
    assert len(re.findall(cpu, run.stdout, re.M)) == 3, run.stdout
    ok = r"^  OK +[1-9]\d* calls, ms: p10 \d+ p50 \d+ p90 \d+ max \d+$"
    assert len(re.findall(ok, run.stdout, re.M)) == 3, run.stdout
    # Under its capacity, the service answers every call: ghz's, counted, and the client's.
    counted = r"^  the service's own count of its calls: OK [1-9]\d*$"
    assert len(re.findall(counted, run.stdout, re.M)) == 2, run.stdout
    assert re.search(r"^  the service's own p99 of those calls: [\d.]+ ms$", run.stdout, re.M)
    # gRPC's own count of the calls it received: under capacity none ended before the
    # service took them but those of the 8 in flight that ghz may cut off at its end.
    ended = r"^  calls gRPC ended before the service took them: (\d+)$"
    not_taken = re.findall(ended, run.stdout, re.M)
    assert len(not_taken) == 2 and all(int(count) <= 8 for count in not_taken), run.stdout
    assert run.stdout.count("  VerifierClient beside ghz, 20 calls: answered 20\n") == 2
