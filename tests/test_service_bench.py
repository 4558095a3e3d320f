"""The service benchmark keeps working (loadtest/service_bench.py --quick, no timing asserted):
it drives a real server with pre-encoded Verify, VerifyBatch and VerifyStream requests (one
scan per request, and 20) and a bare echo server, and writes its section of
docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    for case in ("core1", "core100", "verify", "batch100", "stream", "stream20", "echo"):
        # Every presentation answered, and every one accepted (distinct, valid, no replay).
        assert rows[case][3].rstrip(" |") == "200/200", rows[case]
    assert rows["echo-stream20"][3].rstrip(" |") == "200/200", rows["echo-stream20"]
    assert "VerifyBatch(100) / core" in text and "Verify / (core + 1.2 × echo)" in text
    assert "| VerifyStream (20 per message) / core (100 per call) |" in text
    assert png.read_bytes().startswith(b"\x89PNG")  # linked from the section
    assert "](benchmarks-service.png)\n<!-- service-bench:end -->" in text
