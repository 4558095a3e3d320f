"""The servicer's fuzz target (tests/fuzz_servicer.py) stays runnable and its checks bite: a
bounded atheris run over the committed seeds, each seed in process, and a broken servicer
caught. The core's cargo-fuzz targets run as property tests in `cargo test`
(rust/apcv-core/tests/fuzz_targets.rs); docs/reliability.md "Fuzzing" says what runs where."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apcv_verify.service.servicer import VerifierService

from .conftest import REPO

SEEDS = REPO / "tests" / "fuzz-corpus" / "servicer"
RUNS = 400

try:
    from . import fuzz_servicer
except ImportError:  # atheris, a dev extra, is missing
    fuzz_servicer = None  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def atheris_installed() -> None:
    if fuzz_servicer is None:
        if os.environ.get("CI"):
            pytest.fail("atheris is missing: `make dev` installs it (dev extra)")
        pytest.skip("atheris is missing: `make dev` installs it (dev extra)")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Any]:
    running = fuzz_servicer.Target(tmp_path)
    yield running
    running.close()


def _seeds() -> list[Path]:
    found = sorted(SEEDS.iterdir())
    assert found, "no committed seeds"
    return found


def test_every_committed_and_fresh_seed_gets_a_well_formed_answer(
    target: Any, tmp_path: Path
) -> None:
    for path in [*_seeds(), *sorted(target.fresh_seeds(tmp_path / "fresh").iterdir())]:
        target.one_input(path.read_bytes())


def test_a_call_error_outside_the_contract_is_reported(
    target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the servicer")

    def broken_unary(*args: Any, **kwargs: Any) -> Any:  # a plain call, not a coroutine
        raise RuntimeError("a bug in the servicer")

    monkeypatch.setattr(VerifierService, "_answer", broken)
    monkeypatch.setattr(VerifierService, "_answer_unary", broken_unary)  # in-process stores
    with pytest.raises(AssertionError, match="call ended INTERNAL"):
        target.one_input((SEEDS / "verify-accepted").read_bytes())


@pytest.mark.slow
def test_a_bounded_fuzzing_run_finds_nothing(tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    ran = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_servicer", f"-runs={RUNS}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(work), str(SEEDS)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = ran.stdout[-3000:] + ran.stderr[-3000:]
    assert ran.returncode == 0, report
    assert f"Done {RUNS} runs" in ran.stderr, report
    assert not list(tmp_path.glob("crash-*")), report
