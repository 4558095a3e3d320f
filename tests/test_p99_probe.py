"""loadtest/p99_probe.py keeps working: a server run with its probe inside answers ghz, and
the probe reports the loop, the collections, the audit drains and the server's threads (no
timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
@pytest.mark.usefixtures("ghz")
def test_probe_reports_the_server_beside_ghz() -> None:
    command = [sys.executable, str(REPO / "loadtest" / "p99_probe.py"), "--rounds", "1"]
    command += ["--seconds", "1", "--rps", "100", "--settings", "base"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    assert re.search(r"^base +load [\d.]+ +ghz p50 [\d.]+ p99 [\d.]+ ms", text, re.M), text
    assert re.search(r"server p50 [\d.]+ p99 [\d.]+ ms", text), text
    assert re.search(r"collections \d+ \(gen 2: \d+\)", text), text
    assert re.search(r"audit drains [1-9]\d*", text), text  # the calls' audit records written
    assert re.search(r"thread \S+ +CPU +[\d.]+ µs/call", text), text
