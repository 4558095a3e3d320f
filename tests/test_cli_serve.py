"""The two ways a user starts a server: `serve` with a COSE_Key anchor and `demo --serve`."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apcv_verify.issuer import DemoPKI

from .conftest import REPO, free_port, start_server, stop_server, wait_serving


@pytest.mark.slow
def test_serve_takes_the_anchor_as_a_cose_key_file(pki: DemoPKI, tmp_path: Path) -> None:
    (pki.directory / "anchor.pem").unlink()  # only the COSE_Key form is left
    (pki.directory / "anchor.pem").symlink_to(pki.directory / "anchor.cose_key")
    server = start_server(pki.directory, tmp_path / "serve.log", "--allow-test-identities")
    stop_server(server)
    assert server.process.returncode == 0
    assert '"trust_list_seq": 1' in server.logs()


def test_demo_serve_prints_a_grpcurl_command_that_verifies(grpcurl: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "apcv_verify.cli", "demo", "--serve", "--listen", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "demo --serve exited early:\n" + "".join(lines)
            lines.append(line)
            if line.startswith("Serving on"):
                break
        wait_serving(address, process)
        # The command exactly as printed, run by a shell in the directory of `make demo`:
        # grpcurl named where `make tools` put it, the server still listening.
        (command,) = [line for line in lines if " -plaintext -d " in line]
        local = Path(".tools/bin/grpcurl")
        assert shlex.split(command)[0] == (str(local) if (REPO / local).exists() else "grpcurl")
        reply = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=30, check=True, cwd=REPO
        )
        answer = json.loads(reply.stdout)["verdict"]
        assert (answer["decision"], answer["reason"]) == ("DECISION_ACCEPTED", "REASON_OK")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert process.returncode == 0
