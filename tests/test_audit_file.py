"""RotatingAuditFile writes and rotates as logging's RotatingFileHandler fed the same chunks."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import pytest
from apcv_verify.observe.logs import RotatingAuditFile


def _files(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("max_bytes", [0, 1000, 4096])
def test_rotation_as_the_handler_would(tmp_path: Path, max_bytes: int) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    audit = RotatingAuditFile(str(ours / "audit.jsonl"), max_bytes, 3)
    handler = logging.handlers.RotatingFileHandler(
        theirs / "audit.jsonl", maxBytes=max_bytes, backupCount=3, encoding="utf-8"
    )
    handler.terminator = ""
    for size in [10, 300, 999, 1, 2500, 40, 700, 1200, 5000, 3, 640, 900] * 3:
        chunk = f'{{"n": "{"é" * (size % 7)}{"x" * size}"}}\n'
        audit.write(chunk)
        audit.flush()
        handler.emit(logging.makeLogRecord({"msg": chunk}))
    audit.close()
    handler.close()
    assert _files(ours) == _files(theirs)
    assert len(_files(ours)) == (1 if max_bytes == 0 else 4)


def test_a_failed_write_is_handed_to_the_handler_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = RotatingAuditFile(str(tmp_path / "audit.jsonl"), 0, 1)
    audit.write("first\n")
    failures: list[BaseException | None] = []
    # _AuditFileHandler.handleError, which logs audit_write_failed.
    monkeypatch.setattr(
        audit._handler, "handleError", lambda _record: failures.append(sys.exc_info()[1])
    )
    stream = audit._handler.stream
    assert stream is not None  # opened by the first write
    stream.close()  # the next write fails
    assert audit.write("second\n") == len("second\n")
    assert len(failures) == 1 and isinstance(failures[0], ValueError)
