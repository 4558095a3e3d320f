"""Structured JSON logs on stdout (structlog).

Privacy rule (README, docs/profile.md §9): log records carry decisions, reason codes, ids chosen by
callers and latencies, never a name, NIR/INS, birth date or raw scan.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str = "info") -> None:
    """One JSON object per line on stdout, with an ISO timestamp and the level."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write per record, newline included (print() writes the newline separately):
        # with PYTHONUNBUFFERED or several worker processes on one stdout, two writes per
        # line let another process's line land between a record and its newline.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
