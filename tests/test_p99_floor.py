"""loadtest/p99_floor.py keeps working: ghz at a fixed rate against the bare grpc.aio and
grpc-go servers, each run's percentiles and the medians reported (no timing asserted)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO

GHZ = REPO / ".tools" / "bin" / "ghz"


@pytest.mark.slow
def test_the_floor_reports_each_server_and_placement() -> None:
    missing = [
        tool for tool, found in (("ghz", GHZ.exists()), ("go", shutil.which("go"))) if not found
    ]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(
                f"{', '.join(missing)} missing: `make tools` installs ghz, Go is a prerequisite"
            )
        pytest.skip(f"{', '.join(missing)} missing; run `make tools`")
    command = [sys.executable, str(REPO / "loadtest" / "p99_floor.py"), "--rounds", "1"]
    command += ["--seconds", "1", "--rps", "50", "--servers", "echo,go-echo"]
    command += ["--placements", "shared", "--ghz-collector", "off,on"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    percentiles = r"p50 [\d.]+ p90 [\d.]+ p99 [\d.]+"
    for server in ("echo", "go-echo"):
        for collector in ("off", "on"):
            setting = rf"{server} +shared ghz collector {collector} +"
            each_run = rf"^round 1 {setting}{percentiles} ms at [1-9]\d*/s"
            assert re.search(each_run, text, re.M), text
            assert re.search(rf"^{setting}{percentiles} \(rounds", text, re.M), text
