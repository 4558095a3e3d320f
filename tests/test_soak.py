"""The soak (loadtest/soak.py, `make soak`) keeps working: a few seconds of --quick against a
real server write the section and the plot, every call answered ACCEPTED and counted once by
the server. No timing is asserted (docs/reliability.md "Soak")."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_quick_soak_writes_its_section_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "reliability.md"
    out.write_text("# Reliability\n\n## Fault injection\n\nkept\n")
    plot = tmp_path / "soak.png"
    run = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "soak.py"), "--quick",
         "--write", str(out), "--plot", str(plot)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Reliability\n\n## Fault injection\n\nkept\n")
    assert text.count("<!-- soak:begin -->") == 1 and "![RSS, latency, errors and CPU" in text
    assert plot.read_bytes().startswith(b"\x89PNG")
    calls = re.search(r"; (\d+) calls, (\d+) accepted", text)
    assert calls is not None
    sent, accepted = map(int, calls.groups())
    assert sent > 0 and accepted == sent
    assert "**0 errors**" in text
    # The replay store's entries, read from the server's /metrics in the first window, then
    # the server's CPU and the machine's steal (the server verified: it used some CPU).
    row = re.search(r"\| [\d.]+ \| \d+ \| (\d+) \| (\d+\.\d) \|\n", text)
    assert row is not None, text
    assert int(row.group(1)) > 0
    average = re.search(r"the server (\d+\.\d) on average; steal time", text)
    assert average is not None and float(average.group(1)) > 0, text
    server = re.search(r"accepted verifications: (\d+) \(client: (\d+)\)", text)
    assert server is not None and server.group(1) == server.group(2) == str(sent)
    # Every call of the soak ended OK on the server's side too (the capacity step's excluded).
    assert f"by status over the soak (`grpc_server_handled_total`): OK {sent}.\n" in text


def test_the_report_names_the_errors_by_kind_and_the_answer_bound() -> None:
    sys.path.insert(0, str(REPO / "loadtest"))
    from collections import Counter
    from types import SimpleNamespace

    import soak

    row = {"t": 0, "sent": 10, "accepted": 6, "errors": 4, "p50_ms": 1.0, "p99_ms": 2.0}
    info = {
        "started": 0.0,
        "command": "python loadtest/soak.py",
        "machine": {"nproc": 2, "cpu": "cpu", "memory": "1 GiB", "python": "3", "grpcio": "1"},
        "load_before": 0.0,
        "capacity": 20.0,
        "rate": 10.0,
        "share": 0.5,
        "server_accepted": 6,
        "error_kinds": Counter({"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 3}),
    }
    args = SimpleNamespace(
        concurrency=32,
        capacity_seconds=20.0,
        seconds=10,
        fraction=0.5,
        rate=None,
        answer_max_entries=None,
    )
    text = soak.report([{**row, "rss_mib": 80.0}], info, args)  # type: ignore[arg-type]
    assert (
        "**4 errors** (call errors and verdicts other than ACCEPTED), by kind: "
        "RESOURCE_EXHAUSTED 3, DEADLINE_EXCEEDED 1." in text
    )
    assert "- Answer store (answer recovery): the server's default bound" in text
    assert "| RSS MiB | replay entries | server CPU % | steal % |" in text
    assert "| 80.0 | – | – | – |" in text
    assert "the server – on average" in text
    cpu = {"server_cpu_pct": 71.4, "steal_pct": 3.25}
    text = soak.report([{**row, "rss_mib": 80.0, "replay_entries": 1234.0, **cpu}], info, args)  # type: ignore[arg-type]
    assert "| 80.0 | 1234 | 71 | 3.2 |" in text
    assert "the server 71.4 on average" in text and "3.2 on average, 3.2 in the worst" in text
    assert "by status over the soak" not in text  # not read: not reported
    info["error_details"] = {"DEADLINE_EXCEEDED": ["Deadline Exceeded"]}
    info["error_seconds"] = {"DEADLINE_EXCEEDED": (10.0, 10.004)}
    info["server_codes"] = Counter({"OK": 6, "RESOURCE_EXHAUSTED": 3, "CANCELLED": 1})
    text = soak.report([{**row, "rss_mib": 80.0}], info, args)  # type: ignore[arg-type]
    assert (
        "by kind: RESOURCE_EXHAUSTED 3, "
        'DEADLINE_EXCEEDED 1 after 10.00–10.00 s ("Deadline Exceeded").' in text
    )
    assert (
        "- The server's `Verify` calls by status over the soak (`grpc_server_handled_total`): "
        "OK 6, RESOURCE_EXHAUSTED 3, CANCELLED 1." in text
    )
    args.answer_max_entries = 50
    info["error_kinds"] = Counter()
    text = soak.report([{**row, "errors": 0, "rss_mib": 80.0}], info, args)  # type: ignore[arg-type]
    assert "(call errors and verdicts other than ACCEPTED)." in text
    assert "`replay.answer_max_entries` = 50 answers, full after ≈ 5 s at this rate" in text


def test_cpu_and_steal_are_read_between_the_samples_around_a_window() -> None:
    sys.path.insert(0, str(REPO / "loadtest"))
    import soak

    stats = [soak.Second() for _ in range(30)]
    # Samples at seconds 0, 1, 2 and 12: 0.5 s of the server's CPU a second, then idle; the
    # host took 0.2 s in second 1 to 2 and 1 s over seconds 2 to 12.
    samples = {0: (0.0, 0.0), 1: (0.5, 0.0), 2: (1.0, 0.2), 12: (1.0, 1.2)}
    for second, (cpu, steal) in samples.items():
        stats[second].sampled_at = 100.0 + second
        stats[second].server_cpu = cpu
        stats[second].steal = steal
    assert soak.cpu_percent(stats, 0, 1) == (50.0, 0.0)
    server, steal = soak.cpu_percent(stats, 0, 10)  # seconds 0 to 12, the next sample
    assert (round(server, 6), round(steal, 6)) == (round(100 / 12, 6), 10.0)
    server, steal = soak.cpu_percent(stats, 10, 20)  # one sample only: not measured
    assert math.isnan(server) and math.isnan(steal)
    rows = soak.windows(stats)
    assert math.isclose(rows[0]["server_cpu_pct"], 100 / 12) and rows[0]["steal_pct"] == 10.0
    assert math.isnan(rows[1]["server_cpu_pct"]) and math.isnan(rows[2]["steal_pct"])
    assert soak.machine_steal_seconds() >= 0
