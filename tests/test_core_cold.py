"""loadtest/core_cold.py keeps working: the core and the unary binding call measured warm and
after other work between calls, every presentation accepted (no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_the_core_is_measured_warm_and_after_other_work() -> None:
    command = [sys.executable, str(REPO / "loadtest" / "core_cold.py"), "--rounds", "1"]
    command += ["--items", "20", "--touch", "0,0.5,pages"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    for what in ("core", "unary"):
        for touch in ("0", "0.5", "pages"):
            assert re.search(rf"^round 1 {what} +touch +{touch} +[\d.]+ µs$", text, re.M), text
            median = rf"^{what} +touch +{touch} +[\d.]+ \([\d.]+–[\d.]+\) +[+-][\d.]+$"
            assert re.search(median, text, re.M), text
