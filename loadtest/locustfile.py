"""Locust users for the verifier: only tasks here (the gRPC plumbing is in grpc_user.py, the
corpus and its checks in corpus_feed.py).

They send a corpus made by ``apcv-verify corpus`` to a server that trusts its PKI, and check
every answer against the corpus's expected decision (a wrong one is a locust failure):

    apcv-verify corpus --out /tmp/load --count 20000 --seed 1
    APCV_METRICS_LISTEN= apcv-verify serve …   # the command `apcv-verify corpus` prints
    APCV_LOADTEST_CORPUS=/tmp/load locust -f loadtest/locustfile.py --host 127.0.0.1:50051

``make loadtest`` does all three (loadtest/run.py; docs/operations.md "Load test"). Users:

- :class:`HospitalUser` — a hospital system: one unary ``Verify`` per scan;
- :class:`EdgeReaderUser` — a regional edge reader: one ``VerifyStream`` kept open, scans
  written in micro-batches of ``APCV_LOADTEST_STREAM_BATCH`` (16), each micro-batch as one
  request of several scans (``scans``), each answer checked and timed on its own (one locust
  request per scan, named after the method).

Each corpus item is sent once, by whichever user takes it; the run stops when the corpus is
used up (or at ``--run-time``). A presentation lives 300 s: make the corpus right before the
run, large enough for it (rate × duration), and give each locust worker process its own.
``APCV_LOADTEST_SUMMARY=FILE`` writes, at the end, the answers right and wrong per kind.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc  # noqa: E402
from corpus_feed import CorpusExpired, CorpusFeed  # noqa: E402
from grpc_user import GrpcUser, StreamSession  # noqa: E402
from locust import between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402
from locust.stats import CSV_STATS_INTERVAL_SEC  # noqa: E402

log = logging.getLogger("apcv_loadtest")

try:
    FEED = CorpusFeed(os.environ.get("APCV_LOADTEST_CORPUS", "loadtest-corpus"))
except (OSError, CorpusExpired) as error:  # one line, not a traceback, before any user starts
    raise SystemExit(f"loadtest: no corpus to send: {error} (set APCV_LOADTEST_CORPUS)") from None
#: Scans an edge reader writes, as one request, before reading their answers.
STREAM_BATCH = int(os.environ.get("APCV_LOADTEST_STREAM_BATCH", "16"))
VERIFY_STREAM = "/apcv.verify.v1.VerifierService/VerifyStream"
#: How long a user waits when every item left waits for another's answer.
WAIT_FOR_ANSWERS = 0.005


@events.test_start.add_listener
def _announce(environment: Environment, **_: Any) -> None:
    log.info(
        "corpus of %d scans, %.0f s of validity left (%s)",
        FEED.total,
        FEED.seconds_left,
        ", ".join(f"{kind} {count}" for kind, count in FEED.manifest["kinds"].items()),
    )


@events.test_stop.add_listener
def _summarise(environment: Environment, **_: Any) -> None:
    summary = FEED.summary()
    log.info("corpus answers: %s", json.dumps(summary, sort_keys=True))
    if path := os.environ.get("APCV_LOADTEST_SUMMARY"):
        Path(path).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


class _CorpusUser(GrpcUser):
    abstract = True
    stub_class = verifier_pb2_grpc.VerifierServiceStub
    #: Users started and not yet stopped: the last one to stop at the end of the corpus ends
    #: the run (none is then left to be killed in the middle of closing its channel).
    running = 0

    def on_start(self) -> None:
        _CorpusUser.running += 1

    def on_stop(self) -> None:
        try:
            super().on_stop()
        finally:
            _CorpusUser.running -= 1
            if FEED.exhausted and _CorpusUser.running == 0 and self.environment.runner:
                log.info("corpus used up: stopping the run")
                # locust writes its CSV files every CSV_STATS_INTERVAL_SEC, not at exit:
                # let it write the last answers first.
                gevent.spawn_later(CSV_STATS_INTERVAL_SEC + 0.5, self.environment.runner.quit)

    def _next(self, count: int) -> list[Any]:
        """Items to send, waiting while the rest waits for answers; at the end of the
        corpus this user stops."""
        while True:
            items = FEED.take(count)
            if items:
                return items
            if FEED.exhausted:
                raise StopUser()
            gevent.sleep(WAIT_FOR_ANSWERS)


class HospitalUser(_CorpusUser):
    """A hospital system verifying one scan at a time with unary ``Verify``."""

    weight = 3
    wait_time = between(0.0, 0.005)

    def judge(self, request: Any, response: Any) -> Exception | None:
        item = FEED.item(request.scan.request_id)
        return None if item is None else FEED.answered(item, response.verdict)

    @task
    def verify(self) -> None:
        (item,) = self._next(1)
        try:
            self.stub.Verify(verifier_pb2.VerifyRequest(scan=item.scan()), timeout=10)
        except grpc.RpcError:  # reported as a failure by the interceptor
            FEED.unanswered(item)


class EdgeReaderUser(_CorpusUser):
    """An edge reader: one ``VerifyStream`` open, each micro-batch of scans written as one
    request (``scans``) and answered by one response (``verdicts[i]`` answers ``scans[i]``),
    each answer a locust request timed from its batch's write."""

    weight = 1
    wait_time = between(0.0, 0.01)
    session: StreamSession | None = None

    def on_stop(self) -> None:
        try:
            if self.session is not None:
                self.session.close()
        finally:  # even when the runner stops this user in the middle of it
            super().on_stop()

    @task
    def stream(self) -> None:
        items = self._next(STREAM_BATCH)
        if self.session is None:
            self.session = StreamSession(self.stream_stub.VerifyStream)
        request = verifier_pb2.VerifyStreamRequest(scans=[item.scan() for item in items])
        started = time.perf_counter()
        answered = 0
        try:
            for response in self.session.exchange([request]):
                for item, verdict in zip(items, response.verdicts, strict=False):
                    answered += 1
                    problem = FEED.answered(item, verdict)
                    self.fire(VERIFY_STREAM, started, verdict.ByteSize(), problem)
        except grpc.RpcError as error:  # the stream ended: the rest is unanswered
            self.session = None
            for item in items[answered:]:
                FEED.unanswered(item)
                self.fire(VERIFY_STREAM, started, 0, error)
        else:
            for item in items[answered:]:  # a response without a verdict for each scan
                FEED.unanswered(item)
                self.fire(VERIFY_STREAM, started, 0, RuntimeError("no verdict for the scan"))
