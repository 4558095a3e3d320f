"""The edge reader's durable spool: one SQLite file (WAL mode, stdlib ``sqlite3``) that holds
every scan from the moment it is submitted until its final answer is stored, and that answer
until it has been delivered.

A row goes ``pending`` (the serialized request, to be sent and resent) → ``answered`` (the
serialized verdict, to be delivered; the request is dropped) → ``delivered`` (only the
``request_id``, the time and the decision, reason and ``duplicate`` flag are kept, so that an
id is never reused and the reader can count outcomes; no scan, no person). The first answer
stored is final: a later one for the same id never replaces it. Every change is committed
with ``synchronous = FULL`` before the call returns, so a killed process or a power cut loses
nothing that was acknowledged. The file (and its ``-wal``) is created readable by its owner
only, and the connection holds it exclusively: one batcher per spool.

All SQLite work runs on one thread of its own, off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "DuplicateScanError",
    "PendingScan",
    "Spool",
    "SpoolBusyError",
    "StoredAnswer",
    "SpoolSummary",
]

_T = TypeVar("_T")

_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS scans (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id   TEXT    NOT NULL UNIQUE,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'answered', 'delivered')),
    scanned_at   REAL    NOT NULL,
    request      BLOB,
    verdict      BLOB,
    answered_at  REAL,
    delivered_at REAL,
    decision     INTEGER,
    reason       INTEGER,
    duplicate    INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS scans_state ON scans (state, seq)",
)


class DuplicateScanError(ValueError):
    """The ``request_id`` is already in the spool: ids are never reused on one spool."""


class SpoolBusyError(RuntimeError):
    """Another process or batcher holds the spool file."""


@dataclass(frozen=True)
class PendingScan:
    request_id: str
    request: bytes
    scanned_at: float


@dataclass(frozen=True)
class StoredAnswer:
    request_id: str
    verdict: bytes
    scanned_at: float


@dataclass(frozen=True)
class Answered:
    """A final answer to store: the verdict and what is kept of it after delivery."""

    request_id: str
    verdict: bytes
    decision: int
    reason: int
    duplicate: bool


@dataclass(frozen=True)
class SpoolSummary:
    """One row as kept after delivery (``decision``/``reason`` are the proto enum numbers)."""

    request_id: str
    state: str
    decision: int | None
    reason: int | None
    duplicate: bool | None


class Spool:
    """The SQLite spool at ``path``; use :meth:`open`, then :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apcv-spool")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: str | Path) -> Spool:
        spool = cls(Path(path))
        try:
            await spool._run(spool._connect)
        except BaseException:
            await spool.close()
            raise
        return spool

    async def _run(self, function: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only before SQLite opens it: SQLite gives the -wal file the same mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        db = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        try:
            # Exclusive: no second batcher on the same file (and no shared-memory index).
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            db.execute("PRAGMA journal_mode = WAL").fetchone()
            db.execute("PRAGMA synchronous = FULL")
            with _transaction(db):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, _SCHEMA_VERSION):
                    raise RuntimeError(f"spool schema {version} is newer than this client's")
                for statement in _SCHEMA:  # not executescript(): it would commit first
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.OperationalError as error:
            db.close()
            if "locked" in str(error):
                raise SpoolBusyError(f"spool {self.path} is in use by another batcher") from None
            raise
        except BaseException:
            db.close()
            raise
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the spool is closed")
        return self._db

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        try:
            await self._run(close)
        finally:
            self._executor.shutdown(wait=True)

    async def add(self, request_id: str, request: bytes, scanned_at: float) -> None:
        """Keep a new scan (``pending``); committed when this returns."""

        def add() -> None:
            db = self._conn()
            try:
                with _transaction(db):
                    db.execute(
                        "INSERT INTO scans (request_id, state, scanned_at, request)"
                        " VALUES (?, 'pending', ?, ?)",
                        (request_id, scanned_at, request),
                    )
            except sqlite3.IntegrityError:
                raise DuplicateScanError(f"request_id {request_id!r} is already spooled") from None

        await self._run(add)

    async def pending(self) -> list[PendingScan]:
        """Every scan without a final answer, in submission order."""

        def pending() -> list[PendingScan]:
            rows = self._conn().execute(
                "SELECT request_id, request, scanned_at FROM scans"
                " WHERE state = 'pending' ORDER BY seq"
            )
            return [PendingScan(row[0], row[1], row[2]) for row in rows]

        return await self._run(pending)

    async def undelivered(self) -> list[StoredAnswer]:
        """Every final answer stored and not yet delivered, in submission order."""

        def undelivered() -> list[StoredAnswer]:
            rows = self._conn().execute(
                "SELECT request_id, verdict, scanned_at FROM scans"
                " WHERE state = 'answered' ORDER BY seq"
            )
            return [StoredAnswer(row[0], row[1], row[2]) for row in rows]

        return await self._run(undelivered)

    async def store_answers(self, answers: Sequence[Answered]) -> list[str]:
        """Store final answers in one transaction; the ids whose answer this stored (an id
        already answered keeps its first answer and is left out)."""

        def store() -> list[str]:
            db = self._conn()
            stored: list[str] = []
            now = time.time()
            with _transaction(db):
                for answer in answers:
                    cursor = db.execute(
                        "UPDATE scans SET state = 'answered', verdict = ?, request = NULL,"
                        " answered_at = ?, decision = ?, reason = ?, duplicate = ?"
                        " WHERE request_id = ? AND state = 'pending'",
                        (
                            answer.verdict,
                            now,
                            answer.decision,
                            answer.reason,
                            int(answer.duplicate),
                            answer.request_id,
                        ),
                    )
                    if cursor.rowcount == 1:
                        stored.append(answer.request_id)
            return stored

        return await self._run(store)

    async def mark_delivered(self, request_ids: Iterable[str]) -> None:
        """The answers were delivered: drop them, keep the row's summary."""
        ids = list(request_ids)

        def mark() -> None:
            db = self._conn()
            now = time.time()
            with _transaction(db):
                db.executemany(
                    "UPDATE scans SET state = 'delivered', verdict = NULL, delivered_at = ?"
                    " WHERE request_id = ? AND state = 'answered'",
                    [(now, request_id) for request_id in ids],
                )

        if ids:
            await self._run(mark)

    async def purge(self, delivered_before: float) -> int:
        """Forget delivered rows older than ``delivered_before`` (Unix time); how many."""

        def purge() -> int:
            db = self._conn()
            with _transaction(db):
                cursor = db.execute(
                    "DELETE FROM scans WHERE state = 'delivered' AND delivered_at < ?",
                    (delivered_before,),
                )
            return cursor.rowcount

        return await self._run(purge)

    async def summaries(self) -> list[SpoolSummary]:
        """Every row's id, state and outcome, in submission order."""

        def summaries() -> list[SpoolSummary]:
            rows = self._conn().execute(
                "SELECT request_id, state, decision, reason, duplicate FROM scans ORDER BY seq"
            )
            return [
                SpoolSummary(
                    row[0], row[1], row[2], row[3], None if row[4] is None else bool(row[4])
                )
                for row in rows
            ]

        return await self._run(summaries)

    async def state(self, request_id: str) -> str | None:
        """``pending``, ``answered``, ``delivered``, or ``None`` for an unknown id."""

        def state() -> str | None:
            row = (
                self._conn()
                .execute("SELECT state FROM scans WHERE request_id = ?", (request_id,))
                .fetchone()
            )
            return None if row is None else str(row[0])

        return await self._run(state)


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
