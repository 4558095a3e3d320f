"""Structured JSON logs on stdout (structlog).

Privacy rule (README, docs/profile.md §9): log records carry decisions, reason codes, ids chosen by
callers and latencies, never a name, NIR/INS, birth date or raw scan.

Audit records (the logger named :data:`AUDIT_LOGGER`, one per verification) are many: they
are buffered and written together, whole lines only, at most :data:`AUDIT_FLUSH_SECONDS`
after the first of them, when the buffer holds :data:`AUDIT_FLUSH_BYTES`, and at shutdown
(:func:`flush_audit`, also at interpreter exit). Every other record is written at once.
They go to stdout with the logs, or to a file of their own rotated by size
(:func:`configure_audit_file`, ``audit.path``).
The audit trail renders its records itself (:func:`audit_lines`): the same JSON line as
structlog's chain, for a fraction of its cost.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import json
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Literal, TextIO

import structlog

from .. import _native
from .tracing import add_trace_ids, current_tracing, trace_fields

__all__ = [
    "AUDIT_FLUSH_BYTES",
    "AUDIT_FLUSH_SECONDS",
    "AUDIT_LOGGER",
    "BufferedLines",
    "RotatingAuditFile",
    "audit_lines",
    "configure_audit_file",
    "configure_logging",
    "flush_audit",
]

#: The name of the audit trail's logger (:mod:`apcv_verify.observe.audit`).
AUDIT_LOGGER = "apcv_verify.observe.audit"
#: The longest an audit record waits in the buffer.
AUDIT_FLUSH_SECONDS = 0.05
#: At most this many bytes per write, whole lines only: a pipe write of at most PIPE_BUF
#: (4,096 bytes on Linux) is atomic, so several worker processes on one stdout never split
#: one another's lines.
AUDIT_FLUSH_BYTES = 4096


class BufferedLines:
    """A file-like object for structlog's ``WriteLogger`` that keeps the lines written to it
    and writes them to ``file`` later, in writes of whole lines of at most ``limit`` bytes
    (a line longer than that alone): ``flush()`` (which the logger calls after each record)
    does nothing; :meth:`drain` writes. A first line arms a timer on the running event loop
    to drain after ``interval`` seconds; outside an event loop each line is written at once.

    The core may also leave records in :attr:`queue` (``WireBatch.answer_unary``), rendered
    here when the buffer next takes lines or writes: they keep their place among the lines
    written to it, and :meth:`queued` applies the same timer and size bound to them."""

    def __init__(
        self, file: TextIO, *, interval: float = AUDIT_FLUSH_SECONDS, limit: int = AUDIT_FLUSH_BYTES
    ) -> None:
        self._file = file
        self._interval = interval
        self._limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._armed = False
        self._lock = threading.Lock()
        #: Records kept by the core as their fields, rendered when taken.
        self.queue = _native.AuditQueue()

    @property
    def limit(self) -> int:
        """The most one write takes (unless one line is longer)."""
        return self._limit

    def write(self, text: str) -> int:
        self.write_lines((text,))
        return len(text)

    def write_lines(self, lines: Sequence[str]) -> None:
        """Buffer ``lines`` (each ends with its newline) under one lock, with one decision
        for all of them: drain now when the buffer reached its size bound, else arm the
        drain timer if it is not armed yet (a batch's records at once, or one record)."""
        if not lines:
            return
        size = sum(map(len, lines))
        with self._lock:
            if self.queue:  # queued before these lines: rendered first, to keep the order
                self._take_queue()
            self._lines.extend(lines)
            self._size += size
            full = self._size >= self._limit
            arm = not full and not self._armed
            if arm:
                self._armed = True
        if full:
            self.drain()
        elif arm:
            self._arm()

    def queued(self, size: int) -> None:
        """Records were left in :attr:`queue`, whose lines take about ``size`` bytes: drain
        now if the buffer is full with them, else arm the timer if it is not armed yet."""
        if size + self._size >= self._limit:
            self.drain()
            return
        if self._armed:
            return
        with self._lock:
            arm = not self._armed
            self._armed = True
        if arm:
            self._arm()

    def _arm(self) -> None:
        try:
            asyncio.get_running_loop().call_later(self._interval, self.drain)
        except RuntimeError:  # no event loop in this thread: nothing would drain later
            self.drain()

    def _take_queue(self) -> None:
        """Render the queued records after the buffered lines (under the lock)."""
        taken = self.queue.take()
        self._lines.extend(taken)
        self._size += sum(map(len, taken))

    def flush(self) -> None:
        """Called after each record: the timer, the size bound or shutdown writes instead."""

    def redirect(self, file: TextIO) -> None:
        """Write what is buffered to the current file, then everything after to ``file``."""
        self.drain()
        with self._lock:
            self._file = file

    def drain(self) -> None:
        """Write every buffered line now."""
        with self._lock:
            if self.queue:
                self._take_queue()
            lines, self._lines, self._size, self._armed = self._lines, [], 0, False
            if not lines:
                return
            chunk: list[str] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > self._limit:
                    self._file.write("".join(chunk))
                    self._file.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            self._file.write("".join(chunk))
            self._file.flush()


class _AuditFileHandler(logging.handlers.RotatingFileHandler):
    """The rotation of :mod:`logging` (rename to ``.1``, ``.2``… past ``maxBytes``), fed whole
    chunks of lines. A failed write is logged without its lines (never echoed to stderr)."""

    terminator = ""  # the chunks end with their own newline

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        structlog.get_logger("apcv_verify.observe.logs").error(
            "audit_write_failed",
            path=self.baseFilename,
            error=type(error).__name__ if error is not None else "unknown",
            detail=getattr(error, "strerror", None),
        )


#: handleError's record, which :class:`_AuditFileHandler` does not read.
_NO_RECORD = logging.makeLogRecord({"msg": ""})


class RotatingAuditFile:
    """A file for :class:`BufferedLines`: each write (whole lines) is appended to ``path``,
    which is rotated before a write would take it past ``max_bytes`` (0 = never), keeping
    ``backup_count`` rotated files (``path.1`` the newest). Flushed after each write."""

    def __init__(self, path: str, max_bytes: int, backup_count: int) -> None:
        self._handler = _AuditFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )

    def write(self, text: str) -> int:
        # What the handler's emit() does for a record of ``text`` (shouldRollover, then
        # FileHandler.emit), without the LogRecord, its formatting and the two stat calls
        # of each write: at 4 KiB per write, the LogRecord path cost 6-8 times the write
        # itself (docs/benchmarks.md "Service, sixth pass").
        handler = self._handler
        try:
            stream = handler.stream
            if stream is None:  # first write, or after a failed rollover
                stream = handler.stream = handler._open()
            path = handler.baseFilename
            # The handler's rule (the end's position, where other workers may have appended,
            # + len(text + "\n") >= maxBytes), and never a rollover of anything but a
            # regular file (bpo-45401).
            if (
                handler.maxBytes > 0
                and stream.seek(0, 2) + len(text) + 1 >= handler.maxBytes
                and (not os.path.exists(path) or os.path.isfile(path))
            ):
                handler.doRollover()  # reopens the stream (the handler does not delay)
                stream = handler.stream = handler.stream or handler._open()
            stream.write(text)
            stream.flush()
        except Exception:
            handler.handleError(_NO_RECORD)
        return len(text)

    def flush(self) -> None:
        self._handler.flush()

    def close(self) -> None:
        self._handler.close()


_audit_buffer: BufferedLines | None = None
#: Whether records at level info are logged (the audit's level).
_audit_enabled = True
_stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
#: :func:`audit_tail` without bound context variables or a span: its keys, and its text up to
#: the timestamp's value (``_stamp``'s format: ``datetime.isoformat`` in UTC, with "Z").
_PLAIN_TAIL_KEYS = frozenset({"event", "level", "timestamp"})
_PLAIN_TAIL = '"event": "verification", "level": "info", "timestamp": "'


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def audit_lines(records: Sequence[dict[str, object]]) -> bool:
    """Write ``records`` (the fields of audit records, each one line) as the audit logger
    would write ``log.info("verification", **fields)`` under :func:`configure_logging` (the
    same keys: the fields, ``event``, the bound context variables, ``level`` and one
    ``timestamp``), without its processor chain per record; False (nothing written) when
    :func:`configure_logging` did not configure logging, for the caller to log them itself."""
    buffer = _audit_buffer
    if buffer is None:
        return False
    if not _audit_enabled:
        return True
    common = _common_fields()
    dumps = json.dumps
    buffer.write_lines([dumps({**record, **common}) + "\n" for record in records])
    return True


#: The context variables structlog made for the keys ever bound in this process
#: (``bind_contextvars``; the values of unbound and cleared keys are ``...``). Private to
#: structlog: without it, :func:`get_contextvars`.
_STRUCTLOG_VARS: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


def _nothing_bound() -> bool:
    """``not structlog.contextvars.get_contextvars()``, without copying the whole context
    (every context variable of the call's task) to find structlog's: only the variables
    structlog made are read, usually none (≈ 12 µs of a unary call in the server)."""
    made = _STRUCTLOG_VARS
    if made is None:
        return not structlog.contextvars.get_contextvars()
    return not made or all(var.get(...) is ... for var in list(made.values()))


def _common_fields() -> dict[str, object]:
    """The keys an audit line carries after its record's: the event, the bound context
    variables, the trace (tracing on), the level and the timestamp."""
    common: dict[str, object] = {"event": "verification"}
    common.update(structlog.contextvars.get_contextvars())
    traced = trace_fields()  # tracing on: the call's trace_id and span_id
    if traced is not None:
        common.update(traced)
    common["level"] = "info"
    _stamp(None, "info", common)
    return common


def audit_tail(record_keys: frozenset[str]) -> str | None:
    """The keys :func:`audit_lines` adds after a record's, rendered as the end of its JSON line
    (``"event": "verification", …, "timestamp": "…"}``), for records rendered elsewhere (the
    core's, ``WireBatch.audit_lines``); "" when the audit's level is not logged; None when
    they cannot be (logging not configured by :func:`configure_logging`, or a bound context
    variable named like one of ``record_keys``): then use :func:`audit_lines`. Tracing on,
    the current span's ``trace_id`` and ``span_id`` are among those keys, as there."""
    if _audit_buffer is None:
        return None
    if not _audit_enabled:
        return ""
    if _nothing_bound() and trace_fields() is None:
        # The usual case, nothing bound and no span: the keys are fixed and the timestamp
        # (digits, "-", ":", "T", "." and "Z") needs no escaping, so the line's end is put
        # together directly — the same text as below, without a dict and its json.dumps.
        if not record_keys.isdisjoint(_PLAIN_TAIL_KEYS):
            return None
        return _PLAIN_TAIL + _utc_now().isoformat().replace("+00:00", "Z") + '"}'
    common = _common_fields()
    if not record_keys.isdisjoint(common):
        return None
    return json.dumps(common)[1:]


def _core_tail_applies(record_keys: frozenset[str]) -> bool:
    """Whether the usual tail ends a record of ``record_keys`` now, as the core renders it
    (``audit::plain_tail``): logging configured at the audit's level, nothing bound in the
    log context, ``record_keys`` apart from the tail's. The trace is the callers' check."""
    return (
        _audit_buffer is not None
        and _audit_enabled
        and _nothing_bound()
        and record_keys.isdisjoint(_PLAIN_TAIL_KEYS)
    )


def native_audit_tail(record_keys: frozenset[str]) -> str | Literal[True] | None:
    """:func:`audit_tail` for records rendered by the core, which renders the usual tail
    itself (``WireBatch.audit`` with no tail: the same text, its timestamp read there): True
    in that case (:func:`_core_tail_applies`, and no span), else what :func:`audit_tail`
    returns."""
    if _core_tail_applies(record_keys) and trace_fields() is None:
        return True
    return audit_tail(record_keys)


def native_tail_queue(record_keys: frozenset[str]) -> _native.AuditQueue | None:
    """The audit buffer's :attr:`~BufferedLines.queue` when the core may render a record of
    ``record_keys`` with the usual tail (:func:`_core_tail_applies`) and tracing is off: the
    tail it renders later is the one that applies now. Else None. One check per unary call
    instead of the tail's and the trace's."""
    buffer = _audit_buffer
    if buffer is None or current_tracing() is not None or not _core_tail_applies(record_keys):
        return None
    return buffer.queue


def audit_queued(size: int) -> None:
    """Records were left in :func:`native_tail_queue`'s queue, whose lines now take about
    ``size`` bytes (:meth:`BufferedLines.queued`)."""
    buffer = _audit_buffer
    if buffer is not None:
        buffer.queued(size)


def audit_chunk_bytes() -> int:
    """The most the audit buffer writes at once: lines joined into chunks of whole lines of
    at most this size are written as they are (``WireBatch.audit``'s ``chunk_bytes``)."""
    buffer = _audit_buffer
    return AUDIT_FLUSH_BYTES if buffer is None else buffer.limit


def write_audit_lines(lines: Sequence[str]) -> None:
    """Write audit lines rendered with :func:`audit_tail` (each ends with its newline), or
    chunks of such lines of at most :func:`audit_chunk_bytes`."""
    buffer = _audit_buffer
    if buffer is not None:
        buffer.write_lines(lines)


def flush_audit() -> None:
    """Write the buffered audit records now (at shutdown; also registered at exit)."""
    if _audit_buffer is not None:
        _audit_buffer.drain()


atexit.register(flush_audit)


def configure_audit_file(path: str, max_bytes: int, backup_count: int) -> None:
    """Write the audit records to ``path`` (:class:`RotatingAuditFile`) instead of stdout,
    from now on (what was buffered goes where it was meant to). After
    :func:`configure_logging`; ``path`` "" keeps them on stdout."""
    if _audit_buffer is None:
        raise RuntimeError("configure_logging() first")
    if path:
        _audit_buffer.redirect(RotatingAuditFile(path, max_bytes, backup_count))  # type: ignore[arg-type]


class _LoggerFactory:
    """structlog ``WriteLogger``s on ``file``, the audit logger's on a :class:`BufferedLines`."""

    def __init__(self, file: TextIO, audit: BufferedLines) -> None:
        self._file = file
        self._audit = audit

    def __call__(self, *args: Any) -> structlog.WriteLogger:
        if args and args[0] == AUDIT_LOGGER:
            return structlog.WriteLogger(file=self._audit)  # type: ignore[arg-type]
        return structlog.WriteLogger(file=self._file)


def configure_logging(level: str = "info") -> None:
    """One JSON object per line on stdout, with an ISO timestamp and the level."""
    global _audit_buffer, _audit_enabled
    flush_audit()  # what an earlier configuration buffered
    _audit_buffer = BufferedLines(sys.stdout)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    _audit_enabled = threshold <= logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,  # tracing.enabled: trace_id and span_id of the current span
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # One write per record, newline included (print() writes the newline separately):
        # with PYTHONUNBUFFERED or several worker processes on one stdout, two writes per
        # line let another process's line land between a record and its newline.
        logger_factory=_LoggerFactory(sys.stdout, _audit_buffer),
        cache_logger_on_first_use=True,
    )
