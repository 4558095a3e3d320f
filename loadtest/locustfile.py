"""Locust users for the verifier: only tasks here (the gRPC plumbing is in grpc_user.py).

The server must trust the demo PKI the users present from: make one and serve it, e.g.

    python loadtest/corpus.py /tmp/load --count 1
    APCV_METRICS_LISTEN= apcv-verify serve --listen 127.0.0.1:50051 \\
        --anchor /tmp/load/pki/anchor.pem --trust-list /tmp/load/pki/trust-list.cose \\
        --status-list /tmp/load/pki/status/amo-1.cwt --allow-test-identities
    APCV_LOADTEST_PKI=/tmp/load/pki locust -f loadtest/locustfile.py --host 127.0.0.1:50051

Each request carries a presentation made just before it (a fresh cti: never a replay).
"""

from __future__ import annotations

import os
import secrets
import sys
from itertools import count
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc  # noqa: E402
from apcv_verify.issuer import DemoPKI  # noqa: E402
from corpus import HOLDERS, READER_ID  # noqa: E402
from grpc_user import GrpcUser  # noqa: E402
from locust import between, task  # noqa: E402

PKI = DemoPKI.load(os.environ.get("APCV_LOADTEST_PKI", "loadtest-pki"))
#: Presentations per VerifyBatch: 50 (about 35 kB); the default server.max_message_bytes
#: (2 MiB) takes up to server.max_batch (1,000) of them.
BATCH_SIZE = int(os.environ.get("APCV_LOADTEST_BATCH", "50"))
_ids = count()
#: Request ids unique across locust processes and runs against one server: a request id
#: answered for one presentation is refused for another (REQUEST_ID_REUSED).
_RUN = secrets.token_hex(4)


def _scan(holder: str) -> verifier_pb2.Scan:
    return verifier_pb2.Scan(
        request_id=f"locust-{_RUN}-{next(_ids)}",
        nfc_bytes=PKI.present(holder),
        reader=verifier_pb2.ReaderContext(reader_id=READER_ID),
    )


class ReceptionDesk(GrpcUser):
    """A reception desk scanning one phone at a time, and now and then a reader's batch."""

    stub_class = verifier_pb2_grpc.VerifierServiceStub
    wait_time = between(0.0, 0.01)

    @task(10)
    def verify(self) -> None:
        scan = _scan(HOLDERS[next(_ids) % len(HOLDERS)])
        self.stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10)

    @task(1)
    def verify_batch(self) -> None:
        scans = [_scan(HOLDERS[i % len(HOLDERS)]) for i in range(BATCH_SIZE)]
        self.stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(scans=scans), timeout=30)
