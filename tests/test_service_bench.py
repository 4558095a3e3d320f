"""The service benchmark keeps working (loadtest/service_bench.py --quick, no timing asserted):
it drives a real server with pre-encoded Verify, VerifyBatch and VerifyStream requests (one
scan per request, and 20), the floor server (Verify as the service's binding call alone) and
a bare echo server, and writes its section of
docs/benchmarks.md; and the latency step's pieces: the server's own quantile from its
histogram, the rows that keep the client-observed p99 as the figure, the CPU split."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_quick_service_benchmark_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nkept\n")
    png = tmp_path / "benchmarks-service.png"
    command = [sys.executable, str(REPO / "loadtest" / "service_bench.py"), "--quick"]
    command += ["--plot", str(png)]
    for _ in range(2):  # written again, the section is replaced, not appended
        run = subprocess.run(
            [*command, "--write", str(out)], capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n")
    assert text.count("<!-- service-bench:begin -->") == 1
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in text.splitlines()
        if line.startswith("| ")
    }
    cases = ("core1", "core100", "verify", "verify-floor", "batch100", "stream", "stream20")
    for case in (*cases, "echo"):
        # Every presentation answered, and every one accepted (distinct, valid, no replay).
        assert rows[case][3].rstrip(" |") == "200/200", rows[case]
    assert rows["echo-stream20"][3].rstrip(" |") == "200/200", rows["echo-stream20"]
    assert "VerifyBatch(100) / core" in text and "Verify / (core + 1.2 × echo)" in text
    assert "| VerifyStream (20 per message) / core (100 per call) |" in text
    assert "| Verify's floor (`verify-floor`: the binding call alone," in text
    assert "| Verify − verify-floor: the service's Python around its binding call, µs |" in text
    assert png.read_bytes().startswith(b"\x89PNG")  # linked from the section
    assert "](benchmarks-service.png)\n<!-- service-bench:end -->" in text


def _service_bench() -> Any:
    sys.path.insert(0, str(REPO / "loadtest"))
    import service_bench

    return service_bench


def test_a_server_that_never_serves_is_stopped_before_the_error(tmp_path: Path) -> None:
    _service_bench()  # loadtest/ on the path
    import bench

    # A launcher that starts, says who it is, and never answers a health check.
    pid_file = tmp_path / "pid"
    never = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    case = bench.Case("never", "Verify", 1, "memory")
    with pytest.raises(RuntimeError, match="never: server not serving"):
        bench.start_server(
            case, tmp_path, None, tmp_path, (sys.executable, "-c", never), ready_seconds=2.0
        )
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped, not left running


def test_server_side_quantile_reads_the_calls_between_two_scrapes() -> None:
    bench = _service_bench()
    before = {0.0005: 10.0, 0.001: 10.0, 0.0025: 10.0, float("inf"): 10.0}
    after = {0.0005: 100.0, 0.001: 109.0, 0.0025: 110.0, float("inf"): 110.0}
    # 100 calls in between: 90 under 0.5 ms, 9 between 0.5 and 1 ms, 1 up to 2.5 ms.
    assert bench.histogram_quantile(before, after, 0.5) == pytest.approx(0.5 * 50 / 90)
    assert bench.histogram_quantile(before, after, 0.99) == pytest.approx(1.0)
    assert bench.histogram_quantile(before, after, 1.0) == pytest.approx(2.5)
    beyond = {0.001: 0.0, float("inf"): 4.0}
    assert bench.histogram_quantile({}, beyond, 0.99) == pytest.approx(1.0)  # its last bound
    assert math.isnan(bench.histogram_quantile(after, after, 0.99))  # no call in between


def test_latency_rows_keep_the_client_observed_p99_as_the_figure() -> None:
    bench = _service_bench()
    one = {
        "rps": 480.0, "p50_ms": 1.8, "p99_ms": 9.0, "server_p50_ms": 0.4, "server_p99_ms": 0.9,
        "run_queue_us_per_call": 700.0, "ghz_cores": 0.4, "pinned": 1.0, "load": 4.5,
    }  # fmt: skip
    two = {**one, "p99_ms": 30.0, "server_p99_ms": 1.0, "load": 5.5}
    three = {**one, "p99_ms": 12.0, "load": 3.0}
    echo = [{**one, "p99_ms": 7.0}, {**one, "p99_ms": 20.0}]
    maxima = [{**one, "rps": 950.0}, {**one, "rps": 970.0}, {**one, "rps": 1010.0}]
    at_cpu_rate = [{**one, "rps": 700.0, "p99_ms": 3.0}, {**one, "rps": 720.0, "p99_ms": 5.0}]
    step = bench.LatencyStep(
        verify=[one, two, three], maxima=maxima, at_cpu_rate=at_cpu_rate, echo=echo
    )
    rows = bench.latency_rows(step)
    cells = [row.split(" | ") for row in rows]
    assert cells[0][0].startswith("| Verify p99 at half the maximum rate (ghz, 480/s: half of")
    assert "half of 970/s, ghz as fast as it answers (rounds 950, 970, 1010)" in cells[0][0]
    assert "server and ghz on separate CPUs" in cells[0][0]
    assert "rounds 9.00, 30.00, 12.00 ms" in cells[0][0]
    assert "load average before 4.50, 5.50, 3.00" in cells[0][0]
    assert cells[0][1:] == ["12.00 ms", "≤ 2 ms |"]  # ghz's, the median of the rounds
    assert cells[1][1] == "0.90 ms" and "server's clock" in cells[1][0]
    assert cells[3][1] == "4.00 ms" and "`verify` case's rate instead, 710/s" in cells[3][0]
    assert cells[4][1] == "13.50 ms" and "echo server" in cells[4][0]
    alone = bench.LatencyStep(verify=[{**one, "pinned": 0.0}])
    assert "sharing the CPUs" in bench.latency_rows(alone)[0]
    assert "as fast as" not in bench.latency_rows(alone)[0]  # no maximum measured: not said
    assert len(bench.latency_rows(alone)) == 3
    assert "ghz's Go collector off" in cells[0][0]  # a run without the key: off
    collected = bench.latency_rows(bench.LatencyStep(verify=[{**one, "ghz_collector": 1.0}]))[0]
    assert "collector" not in collected
    step.go = {"split": [{**one, "p99_ms": 4.5}], "shared": [{**one, "p99_ms": 1.1}]}
    go = [row.split(" | ") for row in bench.latency_rows(step)[5:]]
    assert go[0][1] == "4.50 ms" and "grpc-go server" in go[0][0] and "own CPU" in go[0][0]
    assert go[1][1] == "1.10 ms" and "sharing the CPUs" in go[1][0]


def test_ghz_runs_its_latency_step_without_its_collector() -> None:
    bench = _service_bench()
    off = bench.ghz_environment(collector=False)
    assert off["GOGC"] == "off" and off["GOMEMLIMIT"] == bench.GHZ_MEMORY_LIMIT
    on = bench.ghz_environment(collector=True)
    assert on.get("GOGC") == os.environ.get("GOGC")
    assert on.get("GOMEMLIMIT") == os.environ.get("GOMEMLIMIT")


def test_cores_split_in_two_disjoint_halves() -> None:
    bench = _service_bench()
    split = bench.split_cores()
    if split is None:
        assert len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None
        return
    server, load = split
    assert server and load and not server & load
    assert server | load == os.sched_getaffinity(0)


@pytest.mark.slow
@pytest.mark.usefixtures("ghz")
def test_the_latency_step_measures_its_own_maximum_rate(tmp_path: Path) -> None:
    """ghz unthrottled against the bare echo server, as the latency step measures ``Verify``'s
    maximum rate in its own placement: the rate of answers, then a run at half of it."""
    bench = _service_bench()
    from corpus import make_pki

    pki = make_pki(tmp_path / "pki")
    echo, address = bench._start_echo(600)
    try:
        target = SimpleNamespace(process=echo, address=address, metrics_port=None)
        step = SimpleNamespace(latency_seconds=1.0, pin=True, ghz_collector=False)
        top = bench.latency_at(target, pki, tmp_path, 5000.0, step, unthrottled=True)
        # The rate reached (answers, not the calls ghz ends when its time is up), not the
        # corpus's bound.
        assert 50 < top["rps"] != 5000.0, top
        assert top["pinned"] == float(bench.split_cores() is not None)
        half = bench.latency_at(target, pki, tmp_path, top["rps"] / 2, step)
        assert half["rps"] == top["rps"] / 2 and half["p99_ms"] > 0
    finally:
        echo.terminate()
        echo.wait(timeout=10)
