"""Every Python example of docs/integration.md runs as written against a real server and
prints what the text block after it shows (``<id>`` standing for a random request_id)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import REPO, ServerProcess

#: Real server processes (and, for some, their restarts): over about 3 s each.
pytestmark = pytest.mark.slow

DOC = REPO / "docs" / "integration.md"
BLOCK = re.compile(r"```python\n(.*?)```\n\n```text\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    return BLOCK.findall(DOC.read_text())


def test_the_document_has_its_examples() -> None:
    # hospital, typed error, answer recovery, batcher with callback, iterator
    assert len(examples()) == 5


@pytest.mark.parametrize("index", range(5))
def test_an_integration_example_runs_as_documented(
    index: int, server: ServerProcess, pki: DemoPKI, tmp_path: Path
) -> None:
    code, output = examples()[index]
    env = {
        **os.environ,
        "APCV_TARGET": server.address,
        "APCV_QR": "\n".join(qr_text(pki.present("alice")) for _ in range(2)),
        "APCV_SPOOL": str(tmp_path / "reader.spool"),
    }
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    expected = [
        re.escape(line).replace(re.escape("<id>"), r"[0-9a-f]{32}") for line in output.splitlines()
    ]
    printed = run.stdout.splitlines()
    assert len(printed) == len(expected), run.stdout
    for line, pattern in zip(printed, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
