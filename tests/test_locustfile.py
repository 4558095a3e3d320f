"""loadtest/locustfile.py runs: locust headless, hospital users on Verify and an edge reader
on VerifyStream, sending a corpus to a real server and checking every answer against it — a
wrong decision is a locust failure."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apcv_verify.issuer import make_corpus, parse_mix

from .conftest import REPO, start_server, stop_server


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="locust is not installed (pip install -e '.[load]' or the `load` extra)",
)
def test_locust_sends_the_corpus_and_fails_on_a_wrong_decision(tmp_path: Path) -> None:
    # Many replayed pairs: their second scan must be REPLAYED whichever user sends each.
    mix = parse_mix(
        "valid=50,replayed=16,beneficiary=5,amc=5,delegated=5,expired=3,revoked=3,"
        "suspended=3,tampered=3,unknown_issuer=3,malformed=4"
    )
    corpus = make_corpus(tmp_path / "corpus", count=500, seed=4, mix=mix)
    # One planted mistake: a revoked credential "expected" accepted.
    scans = corpus.scans_path.read_text().splitlines()
    planted = next(n for n, line in enumerate(scans) if '"kind": "revoked"' in line)
    item = json.loads(scans[planted])
    item["expect"] = {"decision": "ACCEPTED", "reason": "OK"}
    scans[planted] = json.dumps(item)
    corpus.scans_path.write_text("\n".join(scans) + "\n")

    server = start_server(corpus.pki_directory, tmp_path / "server.log", "--allow-test-identities")
    try:
        reply = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"),
             "--headless", "--users", "4", "--spawn-rate", "4", "--run-time", "60s",
             "--host", server.address, "--csv", str(tmp_path / "run"), "--only-summary"],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "APCV_LOADTEST_CORPUS": str(corpus.directory),
                 "APCV_LOADTEST_SUMMARY": str(tmp_path / "summary.json"),
                 "APCV_LOADTEST_STREAM_BATCH": "8"},
            cwd=tmp_path,
        )  # fmt: skip
    finally:
        stop_server(server)
    assert reply.returncode == 1, reply.stderr[-3000:]  # locust: there were failures
    assert "corpus used up: stopping the run" in reply.stderr  # well before --run-time
    with (tmp_path / "run_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    unary = rows["/apcv.verify.v1.VerifierService/Verify"]
    stream = rows["/apcv.verify.v1.VerifierService/VerifyStream"]
    assert int(unary["Request Count"]) > 0 and int(stream["Request Count"]) > 0
    assert int(unary["Request Count"]) + int(stream["Request Count"]) == 500
    assert int(rows["Aggregated"]["Failure Count"]) == 1, reply.stderr[-3000:]
    with (tmp_path / "run_failures.csv").open() as handle:
        (failure,) = list(csv.DictReader(handle))
    assert failure["Error"] == "WrongDecision('revoked: REJECTED REVOKED, expected ACCEPTED OK')"
    summary = json.loads((tmp_path / "summary.json").read_text())
    kinds = corpus.manifest["kinds"]
    assert summary["answered_wrong"] == {"revoked": 1}
    assert summary["answered_right"] == {
        kind: count - (kind == "revoked") for kind, count in kinds.items()
    }
    assert summary["answered_right"]["replayed"] == kinds["replayed"] == 40
