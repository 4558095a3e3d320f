"""An edge reader (EdgeBatcher in a process of its own) and the server, both killed with
SIGKILL in the middle of a run and started again, with the Redis replay store so that a
restarted server still knows the presentations it accepted: every scan ends with exactly one
final answer, none is lost, none is answered REPLAYED because of a resend.

The reader process is this module run as ``python -m tests.test_client_crash`` (see
:func:`main`): it submits the scans of a JSON-lines file that its spool does not know yet,
and appends every answer delivered to it to another JSON-lines file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apcv_verify.client import Answer, Decision, EdgeBatcher, Reason, RetryPolicy
from apcv_verify.client.spool import Spool
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import REPO, RedisServer, free_port, nir_numbers, personal_values, stop_server
from .test_client import serve_on

#: Real server processes (and, for some, their restarts): over about 3 s each.
pytestmark = pytest.mark.slow

READER_ID = "edge-crash"


# -- the reader process ----------------------------------------------------------------------


class CountingMetrics:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def count(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def gauge(self, name: str, value: float) -> None:
        pass


async def run_reader(args: argparse.Namespace) -> None:
    scans = [json.loads(line) for line in Path(args.scans).read_text().splitlines()]
    metrics = CountingMetrics()
    with open(args.answers, "a") as out:

        def record(answer: Answer) -> None:
            verdict = answer.verdict
            line = {
                "request_id": answer.request_id,
                "echoed": verdict.request_id,
                "decision": Decision.Name(verdict.decision),
                "reason": Reason.Name(verdict.reason),
                "duplicate": verdict.duplicate,
                "redelivered": answer.redelivered,
                "sha256": hashlib.sha256(verdict.SerializeToString()).hexdigest(),
            }
            out.write(json.dumps(line) + "\n")
            out.flush()
            os.fsync(out.fileno())

        async with EdgeBatcher(
            args.target,
            spool=args.spool,
            reader_id=READER_ID,
            on_answer=record,
            metrics=metrics,
            max_batch=8,
            max_delay=0.02,
            retry=RetryPolicy(initial_backoff=0.1, max_backoff=1.0),
        ) as batcher:
            for scan in scans:
                if await batcher.state(scan["id"]) is None:  # not spooled by a previous run
                    await batcher.submit(scan["qr"], request_id=scan["id"])
                    await asyncio.sleep(args.pace)
            await batcher.drain(timeout=args.timeout)
    Path(args.metrics).write_text(json.dumps(metrics.counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("target", "spool", "scans", "answers", "metrics"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--pace", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=120.0)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(run_reader(parser.parse_args()))


if __name__ == "__main__":
    main()


# -- the test ----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the reader exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_answers(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_server_and_reader_killed_mid_run_every_scan_has_one_final_answer(
    pki: DemoPKI, tmp_path: Path, redis_server: RedisServer
) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {"APCV_REPLAY_BACKEND": "redis", "APCV_REPLAY_REDIS_URL": redis_server.url}
    server = serve_on(pki, address, tmp_path / "server-1.log", env)

    samples = pki.samples()
    rejected = {
        "expired": "CREDENTIAL_EXPIRED",
        "revoked": "REVOKED",
        "tampered": "BAD_DEVICE_SIGNATURE",
    }
    scans: list[dict[str, str]] = []
    expected: dict[str, str] = {}
    for i in range(200):
        kind = list(rejected)[i // 10 % 3] if i % 10 == 5 else "fresh"
        request_id = f"scan-{i:03d}"
        presentation = pki.present("alice") if kind == "fresh" else samples[kind]
        scans.append({"id": request_id, "qr": qr_text(presentation)})
        expected[request_id] = rejected.get(kind, "OK")
    scans_path, answers_path = tmp_path / "scans.jsonl", tmp_path / "answers.jsonl"
    scans_path.write_text("".join(json.dumps(scan) + "\n" for scan in scans))
    spool_path = tmp_path / "reader.spool"

    def start_reader(run: int) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "tests.test_client_crash", "--target", address,
            "--spool", str(spool_path), "--scans", str(scans_path),
            "--answers", str(answers_path), "--metrics", str(tmp_path / f"metrics-{run}.json"),
        ]  # fmt: skip
        with (tmp_path / f"reader-{run}.log").open("w") as log:
            return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def answered() -> int:
        return len(read_answers(answers_path))

    reader = start_reader(1)
    try:
        wait_until(lambda: answered() >= 30, reader, "30 answers")
        server.process.send_signal(signal.SIGKILL)  # mid-stream
        server.process.wait()
        time.sleep(0.5)  # the reader goes on scanning into its spool
        server = serve_on(pki, address, tmp_path / "server-2.log", env)
        wait_until(lambda: answered() >= 100, reader, "100 answers")
        reader.send_signal(signal.SIGKILL)
        reader.wait()
        reader = start_reader(2)  # the same spool: resends what was pending
        wait_until(lambda: answered() >= 150, reader, "150 answers")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        server = serve_on(pki, address, tmp_path / "server-3.log", env)
        assert reader.wait(timeout=120) == 0, (tmp_path / "reader-2.log").read_text()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        stop_server(server)

    answers = read_answers(answers_path)
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for answer in answers:
        by_id[answer["request_id"]].append(answer)
    assert sorted(by_id) == sorted(expected)  # none lost, none unknown
    for request_id, delivered in by_id.items():
        # One final answer: delivered again only after a crash, and then the same one.
        assert len({answer["sha256"] for answer in delivered}) == 1, delivered
        assert all(answer["redelivered"] for answer in delivered[1:]), delivered
        first = delivered[0]
        assert first["echoed"] == request_id
        assert first["reason"] == f"REASON_{expected[request_id]}", (request_id, first)
        accepted = expected[request_id] == "OK"
        assert first["decision"] == ("DECISION_ACCEPTED" if accepted else "DECISION_REJECTED")
    assert not [answer for answer in answers if answer["reason"] == "REASON_REPLAYED"]

    async def spooled() -> list[tuple[str, str, int | None]]:
        spool = await Spool.open(spool_path)
        try:
            return [(row.request_id, row.state, row.reason) for row in await spool.summaries()]
        finally:
            await spool.close()

    rows = asyncio.run(spooled())
    assert [row[0] for row in rows] == [scan["id"] for scan in scans]  # in scan order
    assert {row[1] for row in rows} == {"delivered"}
    assert all(Reason.Name(row[2] or 0) == by_id[row[0]][0]["reason"] for row in rows)
    # The client logs no scan and no person either.
    for run in (1, 2):
        text = (tmp_path / f"reader-{run}.log").read_text()
        assert not [value for value in personal_values(pki) if value in text]
        assert not nir_numbers(text) and "APCV1:" not in text
    # The server kill broke an open stream: the reader reopened it and resent.
    first_run = (tmp_path / "reader-1.log").read_text()
    assert "stream ended with UNAVAILABLE" in first_run
    resumed = json.loads((tmp_path / "metrics-2.json").read_text())
    assert resumed["answers_delivered"] > 0
    # The servers' audit records: only these scans, none judged a replay. A server killed
    # with SIGKILL loses the records it had buffered (at most 50 ms of them, as
    # docs/operations.md says); the last server, stopped with SIGTERM, loses none.
    audit = [
        json.loads(line)
        for run in (1, 2, 3)
        for line in (tmp_path / f"server-{run}.log").read_text().splitlines()
        if '"kind": "audit"' in line
    ]
    assert {record["request_id"] for record in audit} <= set(expected)
    assert not [record for record in audit if record["reason"] == "REPLAYED"]
    last_server = [
        line
        for line in (tmp_path / "server-3.log").read_text().splitlines()
        if '"kind": "audit"' in line
    ]
    assert last_server, "the server stopped with SIGTERM flushed its audit records"
    duplicates = sum(answer["duplicate"] for answer in answers)
    print(f"{duplicates} answers were accepted duplicates of a resend")
