"""Load-test corpus: a demo PKI and many distinct presentations of its holders.

Every presentation has its own ``cti`` (the replay key, docs/profile.md §7.4), so a load test is
never answered REPLAYED; they all come from the same reader. A presentation is valid for
``DEFAULT_PRESENTATION_LIFETIME`` seconds after it is made (two minutes): make the corpus
right before the run that sends it.

    python loadtest/corpus.py DIR --count 20000 [--batch 100]

writes the PKI to DIR/pki and the requests, as the protobuf JSON mapping that ghz and
grpcurl read, to DIR/verify.json (VerifyRequest) or DIR/batch-100.json (VerifyBatchRequest).
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Iterator, Sequence
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from apcv_verify.issuer import DemoPKI

__all__ = [
    "HOLDERS",
    "READER_ID",
    "batch_requests",
    "make_pki",
    "presentations",
    "scan",
    "verify_request",
]

#: Demo holders whose presentations are accepted (the demo PKI's "revoked" holder is not).
HOLDERS = ("alice", "corsica", "lunar", "family")
#: One reader sends everything: with distinct cti values no scan is a duplicate.
READER_ID = "loadtest-reader"


def make_pki(directory: Path) -> DemoPKI:
    """A fresh demo PKI (anchor, issuers, trust list, status list) in ``directory``."""
    return DemoPKI.create(directory, now=int(time.time()))


def presentations(pki: DemoPKI, count: int, holders: Sequence[str] = HOLDERS) -> Iterator[bytes]:
    """``count`` presentations, round robin over ``holders``, each with a fresh random cti."""
    for holder in islice(cycle(holders), count):
        yield pki.present(holder)


def scan(presentation: bytes, request_id: str) -> dict[str, Any]:
    """One ``Scan`` in the protobuf JSON mapping (bytes as base64)."""
    return {
        "request_id": request_id,
        "nfc_bytes": base64.b64encode(presentation).decode(),
        "reader": {"reader_id": READER_ID},
    }


def verify_request(presentation: bytes, request_id: str) -> dict[str, Any]:
    """One ``VerifyRequest`` in the protobuf JSON mapping."""
    return {"scan": scan(presentation, request_id)}


def batch_requests(items: Sequence[bytes], size: int, prefix: str = "") -> list[dict[str, Any]]:
    """``VerifyBatchRequest`` messages of ``size`` scans each (the last may be shorter)."""
    return [
        {
            "scans": [
                scan(p, f"{prefix}b{start // size}-{i}")
                for i, p in enumerate(items[start : start + size])
            ]
        }
        for start in range(0, len(items), size)
    ]


def write_corpus(
    directory: Path, pki: DemoPKI, count: int, batch: int = 0, prefix: str = ""
) -> Path:
    """Write ``count`` presentations as ghz data (a JSON array of messages); its path. The
    request ids start with ``prefix``: two corpora sent to one server need different ones,
    since a request id answered for one presentation is refused for another
    (``REQUEST_ID_REUSED``)."""
    items = list(presentations(pki, count))
    if batch:
        path = directory / f"batch-{batch}.json"
        messages = batch_requests(items, batch, prefix)
    else:
        path = directory / "verify.json"
        messages = [verify_request(p, f"{prefix}r{i}") for i, p in enumerate(items)]
    path.write_text(json.dumps(messages, separators=(",", ":")))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--count", type=int, default=10_000, help="presentations")
    parser.add_argument("--batch", type=int, default=0, help="VerifyBatch size (0: Verify)")
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    pki = make_pki(args.directory / "pki")
    print(write_corpus(args.directory, pki, args.count, args.batch))


if __name__ == "__main__":
    main()
