"""Hands a corpus (``apcv-verify corpus``) to locust users and judges every answer.

Each item is sent once: a corpus is consumed, not cycled, since a presentation sent again
is a replay. Items are handed out in corpus order, except the second presentation of a
replayed code (``after`` in the corpus): it waits until the item it names has been answered,
so that it is expected ``REPLAYED`` whatever connection, user or call each of the two goes
out on; when that first one got no answer (a gRPC error), the second is dropped, as its
outcome is then unknown. Every other item is independent (its own ``cti``), so concurrent
users may send them in any order.

An answer is right when its decision and reason are the expected ones, it echoes the item's
``request_id`` and it is not a ``duplicate`` (no item is sent twice). A wrong one is a
:class:`WrongDecision`, which the users report as a locust failure; its message names the
kind and the codes only (no scan, no person), so locust groups the failures by kind.

One process, one feed: under locust's distributed mode give each worker its own corpus.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apcv_verify._proto.apcv.verify.v1 import verifier_pb2

__all__ = ["CorpusExpired", "CorpusFeed", "Item", "WrongDecision"]

log = logging.getLogger("apcv_loadtest")

#: A corpus is refused when less than this many seconds of its validity are left.
MIN_SECONDS_LEFT = 5


class WrongDecision(Exception):
    """An answer other than the corpus expects."""


class CorpusExpired(RuntimeError):
    """The corpus's presentations have expired (or are about to): make a new one."""


@dataclass(frozen=True)
class Item:
    request_id: str
    reader_id: str
    kind: str
    decision: str
    reason: str
    qr_text: str | None
    nfc: bytes | None
    after: str | None

    def scan(self) -> verifier_pb2.Scan:
        scan = verifier_pb2.Scan(
            request_id=self.request_id,
            reader=verifier_pb2.ReaderContext(reader_id=self.reader_id),
        )
        if self.nfc is not None:
            scan.nfc_bytes = self.nfc
        else:
            scan.qr_text = self.qr_text or ""
        return scan


def _item(line: dict[str, Any]) -> Item:
    nfc = line.get("nfc")
    return Item(
        request_id=line["request_id"],
        reader_id=line["reader_id"],
        kind=line["kind"],
        decision=line["expect"]["decision"],
        reason=line["expect"]["reason"],
        qr_text=line.get("qr_text"),
        nfc=None if nfc is None else base64.b64decode(nfc),
        after=line.get("after"),
    )


class CorpusFeed:
    """The items of the corpus in ``directory``, handed out once each (not thread-safe: one
    locust process runs its users as greenlets of one thread). Nothing more is handed out
    once the corpus's ``valid_until`` has passed: the run then ends."""

    def __init__(self, directory: str | Path, *, now: float | None = None) -> None:
        root = Path(directory)
        self.manifest = json.loads((root / "corpus.json").read_text())
        left = self.manifest["valid_until"] - (time.time() if now is None else now)
        if left < MIN_SECONDS_LEFT:
            raise CorpusExpired(
                f"{root}: the corpus's presentations expired"
                f" {-left:.0f} s ago: make a new one (apcv-verify corpus)"
                if left < 0
                else f"{root}: the corpus expires in {left:.0f} s: make a new one"
            )
        self.seconds_left = left
        self.valid_until = float(self.manifest["valid_until"])
        self._ready: deque[Item] = deque()
        self._waiting: dict[str, Item] = {}  # first presentation's id -> its replay
        self._out: dict[str, Item] = {}  # handed out, not answered yet
        with (root / self.manifest["scans"]).open(encoding="utf-8") as lines:
            for line in lines:
                item = _item(json.loads(line))
                if item.after is None:
                    self._ready.append(item)
                else:
                    self._waiting[item.after] = item
        self.total = len(self._ready) + len(self._waiting)
        self.right: Counter[str] = Counter()
        self.wrong: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.expired = 0  # items left unsent because the corpus expired during the run

    def take(self, count: int = 1) -> list[Item]:
        """Up to ``count`` items to send now (none when the rest waits for answers, or when
        all were handed out: see :attr:`exhausted`)."""
        taken: list[Item] = []
        if (self._ready or self._waiting) and time.time() >= self.valid_until:
            # What is left would be answered PRESENTATION_EXPIRED: not a failure to measure.
            self.expired = len(self._ready) + len(self._waiting)
            log.warning("the corpus expired with %d scans not sent: stopping", self.expired)
            self._ready.clear()
            self._waiting.clear()
        while self._ready and len(taken) < count:
            item = self._ready.popleft()
            self._out[item.request_id] = item
            taken.append(item)
        return taken

    @property
    def exhausted(self) -> bool:
        """Every item handed out and answered (or dropped): nothing more will come."""
        return not (self._ready or self._waiting or self._out)

    def item(self, request_id: str) -> Item | None:
        return self._out.get(request_id)

    def answered(self, item: Item, verdict: verifier_pb2.Verdict) -> WrongDecision | None:
        """Record ``verdict`` as the answer to ``item``; the failure it stands for, if any."""
        self._out.pop(item.request_id, None)
        follower = self._waiting.pop(item.request_id, None)
        if follower is not None:
            self._ready.appendleft(follower)  # its first presentation is answered: send it
        decision = verifier_pb2.Decision.Name(verdict.decision).removeprefix("DECISION_")
        reason = verifier_pb2.Reason.Name(verdict.reason).removeprefix("REASON_")
        problem = None
        if verdict.request_id != item.request_id:
            problem = f"{item.kind}: an answer for another request"
        elif (decision, reason) != (item.decision, item.reason):
            problem = f"{item.kind}: {decision} {reason}, expected {item.decision} {item.reason}"
        elif verdict.duplicate:
            problem = f"{item.kind}: answered as a duplicate, though sent once"
        if problem is None:
            self.right[item.kind] += 1
            return None
        self.wrong[item.kind] += 1
        return WrongDecision(problem)

    def unanswered(self, item: Item) -> None:
        """``item``'s call failed: its answer is unknown, and so is its replay's."""
        self._out.pop(item.request_id, None)
        self.failed[item.kind] += 1
        follower = self._waiting.pop(item.request_id, None)
        if follower is not None:
            self.dropped[follower.kind] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "answered_right": dict(self.right),
            "answered_wrong": dict(self.wrong),
            "call_failed": dict(self.failed),
            "dropped": dict(self.dropped),
            "not_sent": len(self._ready) + len(self._waiting),
            "not_sent_expired": self.expired,
            "in_flight_at_stop": len(self._out),
        }
