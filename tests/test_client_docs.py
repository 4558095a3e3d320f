"""Every example of docs/integration.md runs as written against a real server and prints what
the text block after it shows (``<id>`` standing for a random request_id, ``<date>`` for a
date): the Python examples, the grpcurl commands, and the Go and Java programs of examples/
(built by ``make examples``), whose excerpts in the document are their own lines."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import REPO, ServerProcess, stop_server
from .test_client import CancellingGate
from .test_tls import CertificateAuthority, serve_tls

DOC = REPO / "docs" / "integration.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
TOOLS = REPO / ".tools" / "bin"
#: The programs a shell example may run, and the files whose lines its excerpts quote.
BUILT = {
    "examples/go/bin/verify-example": "go",
    "examples/java/target/apcv-verify-example-1.jar": "java",
}
SOURCES = {
    "go": REPO / "examples" / "go" / "main.go",
    "java": REPO / "examples/java/src/main/java/fr/apcv/examples/VerifyExample.java",
}
PLACEHOLDERS = {"<id>": r"[0-9a-f]{32}", "<date>": r"\d{4}-\d{2}-\d{2}"}


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    #: The text block that follows it with only blank lines between, if any.
    output: str | None


def blocks() -> list[Block]:
    text = DOC.read_text()
    found = list(FENCE.finditer(text))
    result: list[Block] = []
    for index, match in enumerate(found):
        if match.group(1) == "text":
            continue
        after = found[index + 1] if index + 1 < len(found) else None
        output = None
        if (
            after is not None
            and after.group(1) == "text"
            and not text[match.end() : after.start()].strip()
        ):
            output = after.group(2)
        result.append(Block(match.group(1), match.group(2), output))
    return result


def examples(language: str) -> list[Block]:
    return [block for block in blocks() if block.language == language and block.output]


def check_output(printed: str, output: str) -> None:
    expected = [re.escape(line) for line in output.splitlines()]
    for placeholder, pattern in PLACEHOLDERS.items():
        expected = [line.replace(re.escape(placeholder), pattern) for line in expected]
    lines = printed.splitlines()
    assert len(lines) == len(expected), printed
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_the_document_has_its_examples() -> None:
    # hospital, typed error, answer recovery, batcher with callback, iterator
    assert len(examples("python")) == 5
    # grpcurl: list, verify, resends, an error; the Go and the Java program
    assert len(examples("sh")) == 6
    assert [block.code for block in examples("sh")[-2:]] == [
        "examples/go/bin/verify-example\n",
        'java -cp "examples/java/target/apcv-verify-example-1.jar:'
        '$(cat examples/java/target/classpath.txt)" \\\n    fr.apcv.examples.VerifyExample\n',
    ]


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_the_documents_excerpts_are_the_programs_own_lines(language: str) -> None:
    """Each Go or Java block of the document is a run of consecutive lines of its program
    (indentation aside), so what the reader sees is what the tests run."""
    source = [line.strip() for line in SOURCES[language].read_text().splitlines()]
    excerpts = [block for block in blocks() if block.language == language]
    assert len(excerpts) >= 3
    for excerpt in excerpts:
        lines = [line.strip() for line in excerpt.code.splitlines()]
        starts = [i for i in range(len(source)) if source[i : i + len(lines)] == lines]
        assert starts, f"not in {SOURCES[language].name}:\n{excerpt.code}"


@pytest.mark.slow  # a real server process: over about 3 s
@pytest.mark.parametrize("index", range(5))
def test_an_integration_example_runs_as_documented(
    index: int, server: ServerProcess, pki: DemoPKI, tmp_path: Path
) -> None:
    example = examples("python")[index]
    env = {
        **os.environ,
        "APCV_TARGET": server.address,
        "APCV_QR": "\n".join(qr_text(pki.present("alice")) for _ in range(2)),
        "APCV_SPOOL": str(tmp_path / "reader.spool"),
    }
    run = subprocess.run(
        [sys.executable, "-c", example.code], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert example.output is not None
    check_output(run.stdout, example.output)


@pytest.mark.slow  # a real server process: over about 3 s
@pytest.mark.parametrize("index", range(6))
def test_a_shell_example_runs_as_documented(
    index: int, server: ServerProcess, pki: DemoPKI, grpcurl: str
) -> None:
    """grpcurl from `make tools`, the Go and Java programs from `make examples`, run by bash
    from the repository's root."""
    example = examples("sh")[index]
    for path, language in BUILT.items():
        if path in example.code and not (REPO / path).exists():
            message = f"the {language} example is not built: `make examples` builds it"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    env = {
        **os.environ,
        "PATH": f"{Path(grpcurl).parent}{os.pathsep}{TOOLS}{os.pathsep}{os.environ['PATH']}",
        "APCV_TARGET": server.address,
        "APCV_QR": qr_text(pki.present("alice")),
    }
    run = subprocess.run(
        ["bash", "-c", example.code], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert example.output is not None
    check_output(run.stdout, example.output)


#: The Go and Java programs as the document runs them, from the repository's root.
PROGRAMS = {
    "go": ["examples/go/bin/verify-example"],
    "java": [
        "bash",
        "-c",
        'exec java -cp "examples/java/target/apcv-verify-example-1.jar:'
        '$(cat examples/java/target/classpath.txt)" fr.apcv.examples.VerifyExample',
    ],
}


@pytest.mark.slow  # a real server process: over about 3 s
@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_the_go_and_java_examples_resend_a_call_the_server_cancelled(
    language: str, server: ServerProcess, pki: DemoPKI
) -> None:
    """Their channels' retry policy at work: the first ``Verify`` ends ``CANCELLED``, as an
    overloaded server ends the calls it cannot take, and gRPC itself sends it again,
    unchanged; the program then runs as documented."""
    require_built(language)

    async def scenario() -> tuple[int, str, list[bytes]]:
        async with CancellingGate(1, server.address) as gate:
            env = {**os.environ, "APCV_TARGET": gate.address}
            env["APCV_QR"] = qr_text(pki.present("alice"))
            program = await asyncio.create_subprocess_exec(
                *PROGRAMS[language], env=env, cwd=REPO,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            printed, _ = await asyncio.wait_for(program.communicate(), timeout=120)
            return program.returncode or 0, printed.decode(), gate.seen

    returncode, printed, seen = asyncio.run(scenario())
    assert returncode == 0, printed
    assert len(seen) >= 2 and seen[1] == seen[0]  # the cancelled call, sent again unchanged


def require_built(language: str) -> None:
    """Skip (fail under CI) when the ``language`` example is not built."""
    built = next(path for path, name in BUILT.items() if name == language)
    if not (REPO / built).exists():
        message = f"the {language} example is not built: `make examples` builds it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow  # a real server process: over about 3 s
@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_the_go_and_java_examples_speak_mtls_with_their_certificate_files(
    language: str, pki: DemoPKI, tmp_path: Path
) -> None:
    """With APCV_TLS_CA, APCV_TLS_CERT and APCV_TLS_KEY the programs call an mTLS server (its
    name checked against the CA's certificate) as the caller their certificate's CN names,
    and print what the document shows."""
    require_built(language)
    ca = CertificateAuthority()
    server = serve_tls(pki, tmp_path, ca)
    client = ca.issue("his-1")
    (tmp_path / "client.pem").write_bytes(client.cert_pem)
    (tmp_path / "client.key").write_bytes(client.key_pem)
    env = {
        **os.environ,
        "APCV_TARGET": server.address,
        "APCV_QR": qr_text(pki.present("alice")),
        "APCV_TLS_CA": str(tmp_path / "clients-ca.pem"),  # the same CA signed the server's
        "APCV_TLS_CERT": str(tmp_path / "client.pem"),
        "APCV_TLS_KEY": str(tmp_path / "client.key"),
    }
    try:
        run = subprocess.run(
            PROGRAMS[language], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
    finally:
        stop_server(server)
    assert run.returncode == 0, run.stdout + run.stderr
    documented = examples("sh")[-2 if language == "go" else -1].output
    assert documented is not None
    check_output(run.stdout, documented)
    assert '"caller": "his-1"' in server.logs()
