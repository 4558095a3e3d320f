"""Fault injection with real processes on loopback (docs/reliability.md "Fault injection"):

* a worker of ``serve --workers 2`` killed with SIGKILL in the middle of an edge reader's
  stream, while the reader (EdgeBatcher, in a process of its own) resends what was unanswered;
* clock skew between the phone, the reader and the server, within and beyond
  ``policy.clock_skew_seconds``, each scan sent twice as after a lost answer.

For each: what the service answered, that no request was lost or answered twice with different
decisions, and the metric that showed it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import (
    REPO,
    RedisServer,
    free_port,
    reason,
    scrape,
    start_server,
    stop_server,
    value,
    verify,
)
from .test_client import serve_on
from .test_client_crash import read_answers, wait_until
from .test_workers import log_events, wait_for

#: Real server and reader processes: over about 3 s each.
pytestmark = pytest.mark.slow


def test_a_worker_killed_mid_stream_loses_no_scan_and_decides_none_twice(
    pki: DemoPKI, tmp_path: Path, redis_server: RedisServer
) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {
        "APCV_REPLAY_BACKEND": "redis",
        "APCV_REPLAY_REDIS_URL": redis_server.url,
        "APCV_SERVER_WORKERS": "2",
        "APCV_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    server = serve_on(pki, address, tmp_path / "server-1.log", env)
    wait_for(lambda: len(log_events(server, "serving")) == 2, "both workers serving")
    (started,) = log_events(server, "workers_started")
    listed = started["pids"]
    assert isinstance(listed, list)
    pids = [int(pid) for pid in listed]

    samples = pki.samples()
    expected: dict[str, str] = {}
    scans = []
    for i in range(150):
        rejected = i % 10 == 5
        request_id = f"scan-{i:03d}"
        presentation = samples["revoked"] if rejected else pki.present("alice")
        scans.append({"id": request_id, "qr": qr_text(presentation)})
        expected[request_id] = "REVOKED" if rejected else "OK"
    scans_path, answers_path = tmp_path / "scans.jsonl", tmp_path / "answers.jsonl"
    scans_path.write_text("".join(json.dumps(scan) + "\n" for scan in scans))
    reader_metrics = tmp_path / "reader-metrics.json"
    command = [
        sys.executable, "-m", "tests.test_client_crash", "--target", address,
        "--spool", str(tmp_path / "reader.spool"), "--scans", str(scans_path),
        "--answers", str(answers_path), "--metrics", str(reader_metrics),
    ]  # fmt: skip
    with (tmp_path / "reader.log").open("w") as log:
        reader = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(read_answers(answers_path)) >= 40, reader, "40 answers")
        # The worker that holds the reader's stream: the one that audits its scans.
        audited = [event for event in log_events(server, "verification") if "worker" in event]
        victim = pids[int(audited[-1]["worker"])]  # type: ignore[call-overload]
        # Frozen first, so that the reader's next scans are written to its stream and left
        # unanswered (in flight), then killed: their answers are lost with it.
        os.kill(victim, signal.SIGSTOP)
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)  # mid-stream
        # The supervisor stops the other worker and exits with the killed one's status, so
        # that Kubernetes or systemd restarts the set; here the test does.
        assert server.process.wait(timeout=60) == 128 + signal.SIGKILL
        statuses = {e["pid"]: e["status"] for e in log_events(server, "worker_exited")}
        assert statuses[victim] == 128 + signal.SIGKILL
        time.sleep(0.5)  # the reader goes on scanning into its spool meanwhile
        server = serve_on(pki, address, tmp_path / "server-2.log", env)
        assert reader.wait(timeout=120) == 0, (tmp_path / "reader.log").read_text()
        found = scrape(int(env["APCV_METRICS_LISTEN"].rpartition(":")[2]))
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        stop_server(server)

    # What the reader got: one final answer per scan, the expected one, none REPLAYED.
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for answer in read_answers(answers_path):
        by_id[answer["request_id"]].append(answer)
    assert sorted(by_id) == sorted(expected)  # none lost
    assert all(len(answers) == 1 for answers in by_id.values())  # none delivered twice
    for request_id, (answer,) in by_id.items():
        assert answer["reason"] == f"REASON_{expected[request_id]}", (request_id, answer)
    # What the servers decided: a scan verified by both runs (sent before the kill, its answer
    # lost with the worker, resent after) got the same decision both times.
    decided: dict[str, set[tuple[str, str]]] = defaultdict(set)
    audits = 0
    for run in (1, 2):
        for line in (tmp_path / f"server-{run}.log").read_text().splitlines():
            if '"kind": "audit"' in line:
                record = json.loads(line)
                decided[record["request_id"]].add((record["decision"], record["reason"]))
                audits += 1
    assert all(len(outcomes) == 1 for outcomes in decided.values()), decided
    # Audit records wait up to AUDIT_FLUSH_SECONDS (50 ms) in a buffer: those of the last
    # moment of a SIGKILLed worker are lost with it (docs/reliability.md).
    unaudited = set(expected) - set(decided)
    assert set(decided) <= set(expected) and len(unaudited) <= 16, unaudited
    # The metrics that showed it: the reader resent after reconnecting, and the restarted set
    # judged no resend a replay (a resend gets its first answer back, or is verified again as a
    # same-reader duplicate when the killed worker had not kept it).
    counts = json.loads(reader_metrics.read_text())
    assert counts["reconnects"] >= 1 and counts["scans_resent"] >= 1, counts
    assert value(found, "apcv_verifications_total", decision="REJECTED", method="VerifyStream",
                 reason="REPLAYED") == 0  # fmt: skip
    twice = audits - len(decided)
    print(f"{counts['scans_resent']} resent, {twice} verified twice, {len(unaudited)} unaudited")


#: The callers table of the skew test: edge readers may send scanned_at up to an hour old.
EDGE_CALLERS = [
    {"id": "*", "uses": ["care"], "may_send_scanned_at": True, "max_scan_delay_seconds": 3600}
]


def test_clock_skew_within_the_allowed_skew_is_accepted_and_beyond_it_rejected_the_same_twice(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """policy.clock_skew_seconds = 60 (the default). The phone's clock sets the presentation's
    iat/exp, the reader's clock sets scanned_at; the server judges both against its own."""
    metrics_port = free_port()
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={
            "APCV_CALLERS": json.dumps(EDGE_CALLERS),
            "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        },
    )
    now = int(time.time())

    def phone(offset: int) -> bytes:
        """A presentation made by a phone whose clock is ``offset`` seconds off."""
        return pki.present("alice", iat=now + offset, exp=now + offset + 300)

    cases: list[tuple[str, bytes, int | None, str]] = [
        ("phone-ahead-40s", phone(40), None, "OK"),
        ("phone-ahead-180s", phone(180), None, "PRESENTATION_NOT_YET_VALID"),
        ("phone-behind-330s", phone(-330), None, "OK"),  # exp 30 s ago: within the skew
        ("phone-behind-420s", phone(-420), None, "PRESENTATION_EXPIRED"),
        ("reader-ahead-40s", phone(0), now + 40, "OK"),
        ("reader-ahead-180s", phone(0), now + 180, "SCAN_TIME_INVALID"),
        ("reader-behind-590s", phone(-600), now - 590, "OK"),  # a delayed scan, honoured
        ("reader-behind-2h", phone(-7200), now - 7200, "SCAN_TIME_INVALID"),
    ]
    try:
        answers: dict[str, list[verifier_pb2.Verdict]] = defaultdict(list)
        for _attempt in range(2):  # the answer is lost: the reader sends the same scan again
            for name, presentation, scanned_at, _expected in cases:
                answers[name].append(
                    verify(
                        server,
                        presentation,
                        "edge-skewed",
                        request_id=name,
                        scanned_at=scanned_at,
                    )
                )
        found = scrape(metrics_port)
    finally:
        stop_server(server)
    for name, _presentation, _scanned_at, expected in cases:
        first, again = answers[name]
        assert (reason(first), reason(again)) == (expected, expected), name
        assert first.decision == again.decision
        # The resend, under the same request id, is the first answer given back.
        assert not first.resent and again.resent, name
        assert not first.duplicate and not again.duplicate, name
    # The metric: each reason counted once per send, nothing else decided.
    tally: dict[str, int] = defaultdict(int)
    for _name, _presentation, _scanned_at, expected in cases:
        tally[expected] += 2
    for code, count in tally.items():
        decision = "ACCEPTED" if code == "OK" else "REJECTED"
        counted = value(
            found, "apcv_verifications_total", decision=decision, method="Verify", reason=code
        )
        assert counted == count, code
    total = sum(
        sample for (name, _labels), sample in found.items() if name == "apcv_verifications_total"
    )
    assert total == 2 * len(cases)
