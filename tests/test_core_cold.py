"""loadtest/core_cold.py keeps working: the core and the unary binding call measured warm and
after other work between calls, every presentation accepted, and ES256 alone in Rust after
the same work (no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_the_core_is_measured_warm_and_after_other_work() -> None:
    command = [sys.executable, str(REPO / "loadtest" / "core_cold.py"), "--rounds", "1"]
    command += ["--items", "20", "--touch", "0,0.5,1,pages", "--crypto", "ring"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    for what in ("core", "unary"):
        for touch in ("0", "0.5", "1", "pages"):
            assert re.search(rf"^round 1 {what} +touch +{touch} +[\d.]+ µs$", text, re.M), text
            median = rf"^{what} +touch +{touch} +[\d.]+ \([\d.]+–[\d.]+\) +[+-][\d.]+$"
            assert re.search(median, text, re.M), text
    # The signature alone, in Rust, after the whole MiB only (ring: built without AWS-LC).
    for touch in ("0", "1"):
        crypto = rf"^ES256 Ring +touch +{touch} +[\d.]+ \([\d.]+–[\d.]+\) +[+-][\d.]+$"
        assert re.search(crypto, text, re.M), text
    assert not re.search(r"^ES256 \S+ +touch +0\.5 ", text, re.M), text


def test_one_case_alone_for_the_cache_simulator() -> None:
    """`--what` runs only the cases asked for (loadtest/cachegrind_native.py compares two
    such runs under Valgrind, where every other call would count too)."""
    command = [sys.executable, str(REPO / "loadtest" / "core_cold.py"), "--rounds", "1"]
    command += ["--items", "5", "--touch", "0,1", "--what", "unary"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^unary +touch +1 +[\d.]+ \(", run.stdout, re.M), run.stdout
    assert not re.search(r"^(round 1 )?core ", run.stdout, re.M), run.stdout
    wrong = subprocess.run(command[:-1] + ["unary,warm"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--what" in wrong.stderr
