"""loadtest/locustfile.py runs: locust headless for a few seconds against a real server."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apcv_verify.issuer import DemoPKI

from .conftest import REPO, ServerProcess


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="locust is not installed (pip install -e '.[load]' or the `load` extra)",
)
def test_locustfile_verifies_without_failures(
    pki: DemoPKI, server: ServerProcess, tmp_path: Path
) -> None:
    reply = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"),
         "--headless", "--users", "4", "--spawn-rate", "4", "--run-time", "5s",
         "--host", server.address, "--csv", str(tmp_path / "run"), "--only-summary"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "APCV_LOADTEST_PKI": str(pki.directory)},
        cwd=tmp_path,
    )  # fmt: skip
    assert reply.returncode == 0, reply.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    verify = rows["/apcv.verify.v1.VerifierService/Verify"]
    assert int(verify["Request Count"]) > 0
    assert sum(int(row["Failure Count"]) for row in rows.values()) == 0, reply.stderr[-3000:]
