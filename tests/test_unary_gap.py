"""loadtest/unary_gap.py keeps working: the full service, the floor handler (the service's
binding call with none of its Python around it), the bare echo server and the core, each
measured, every presentation accepted, and the unary ratio reported (no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_the_gap_measures_the_service_its_floor_and_the_echo_call() -> None:
    command = [sys.executable, str(REPO / "loadtest" / "unary_gap.py"), "--rounds", "1"]
    command += ["--items", "40", "--concurrency", "4", "--echo", "base", "--core"]
    command += ["--service", "full,floor"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    for label in ("svc-full:verify", "svc-floor:verify"):
        # The floor verifies as the service does: a rejected presentation would show here.
        assert re.search(rf"^round 1 {label} +[\d.]+ µs/call .* accepted 40/40 ", text, re.M), text
        assert re.search(rf"^{label} +[\d.]+ \([\d.]+–[\d.]+\)$", text, re.M), text
        assert re.search(rf"^{label} +\d\.\d{{3}} \(\d\.\d{{3}}–\d\.\d{{3}}\)$", text, re.M), text
    assert re.search(r"^round 1 core1 +[\d.]+ µs/call$", text, re.M), text
    assert re.search(r"^round 1 echo-base +[\d.]+ µs/call .* accepted 40/40 ", text, re.M), text
