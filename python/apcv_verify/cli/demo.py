"""The embedded default: an ephemeral demo PKI, a real server and real gRPC calls.

``apcv-verify demo`` (``make demo``) verifies six sample presentations in seven scans (the
replayed one is scanned at two desks) and exits 0 when every decision is the expected one;
``--serve`` keeps the server up for grpcurl. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import segno

from .._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from ..config import ServerSection, load_config
from ..issuer import DemoPKI, qr_text
from ..service.startup import event_loop_factory, start_server
from ..trust.material import load_trust_material

__all__ = ["run_demo"]

DEFAULT_SERVE_LISTEN = "127.0.0.1:50051"


@dataclass(frozen=True)
class Sample:
    label: str
    sample: str  # key of DemoPKI.samples()
    reader_id: str
    expected_decision: str
    expected_reason: str


# The scans `make demo` shows (README "Quick start"): six sample presentations, one of them
# scanned at two desks.
SAMPLES = (
    Sample("valid presentation", "accepted", "reception-desk-1", "ACCEPTED", "OK"),
    Sample("expired credential", "expired", "reception-desk-1", "REJECTED", "CREDENTIAL_EXPIRED"),
    Sample("revoked credential", "revoked", "reception-desk-1", "REJECTED", "REVOKED"),
    Sample("first scan at desk 1", "replayed", "reception-desk-1", "ACCEPTED", "OK"),
    Sample("same QR at pharmacy 2", "replayed", "pharmacy-desk-2", "REJECTED", "REPLAYED"),
    Sample("tampered device signature", "tampered", "reception-desk-1", "REJECTED",
           "BAD_DEVICE_SIGNATURE"),
    Sample("issuer not in trust list", "wrong_issuer", "reception-desk-1", "REJECTED",
           "UNKNOWN_ISSUER"),
)  # fmt: skip


#: Where `make tools` installs grpcurl, relative to the repository (the demo's working directory
#: under `make demo`).
LOCAL_GRPCURL = Path(".tools") / "bin" / "grpcurl"


def grpcurl_command(
    address: str, text: str, reader_id: str = "reception-desk-1", *, grpcurl: str = "grpcurl"
) -> str:
    """The shell command that verifies ``text`` on ``address``, as printed for the user."""
    scan = {"request_id": "grpcurl-1", "qr_text": text, "reader": {"reader_id": reader_id}}
    body = json.dumps({"scan": scan})
    return (
        f"{shlex.quote(grpcurl)} -plaintext -d {shlex.quote(body)} {address}"
        " apcv.verify.v1.VerifierService/Verify"
    )


async def _verify_samples(address: str, pki: DemoPKI) -> bool:
    presentations = pki.samples(now=int(time.time()))
    all_expected = True
    print(f"{'sample':<28} {'reader':<18} {'decision':<9} {'reason':<22} expected")
    print("-" * 88)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        for number, sample in enumerate(SAMPLES, start=1):
            scan = verifier_pb2.Scan(
                request_id=f"demo-{number}",
                qr_text=qr_text(presentations[sample.sample]),
                reader=verifier_pb2.ReaderContext(reader_id=sample.reader_id),
            )
            verdict = (await stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10)).verdict
            # Shown as in docs/profile.md §8: the enum names less their DECISION_/REASON_ prefix.
            decision = verifier_pb2.Decision.Name(verdict.decision).removeprefix("DECISION_")
            reason = verifier_pb2.Reason.Name(verdict.reason).removeprefix("REASON_")
            matches = (decision, reason) == (sample.expected_decision, sample.expected_reason)
            all_expected &= matches
            expected = "yes" if matches else f"NO (want {sample.expected_reason})"
            print(
                f"{sample.label:<28} {sample.reader_id:<18} {decision:<9} {reason:<22} {expected}"
            )
    return all_expected


def _shown_path(path: Path) -> str:
    """``path`` as a user in the current directory can type it (relative when below it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def serve_command() -> str:
    """How to start the demo that keeps serving, with the ``apcv-verify`` of this install
    (``.venv/bin/apcv-verify`` from the repository), else the one on PATH."""
    script = Path(sys.executable).parent / "apcv-verify"
    program = _shown_path(script) if script.is_file() else "apcv-verify"
    return f"{shlex.quote(program)} demo --serve"


def find_grpcurl() -> str | None:
    """grpcurl as a user in this directory would type it: ``.tools/bin/grpcurl`` when `make
    tools` installed it here, else ``grpcurl`` when it is on PATH, else None."""
    if LOCAL_GRPCURL.is_file():
        return str(LOCAL_GRPCURL)
    return "grpcurl" if shutil.which("grpcurl") else None


async def _show_qr(address: str, pki: DemoPKI, *, serving: bool) -> None:
    now = int(time.time())
    text = qr_text(pki.present("alice", iat=now, exp=now + 300))
    print("\nA fresh presentation (valid for 5 minutes), as the phone shows it:\n")
    segno.make(text, error="l").terminal(compact=True)
    grpcurl = find_grpcurl()
    command = grpcurl_command(address, text, grpcurl=grpcurl or str(LOCAL_GRPCURL))
    missing = "" if grpcurl else " (grpcurl is not installed: `make tools` installs it)"
    if serving:
        print(
            f"\nQR text ({len(text)} characters). While this demo serves, this command verifies"
            f" it{missing}:\n{command}"
        )
        return
    if grpcurl is None:
        print(f"\nQR text ({len(text)} characters); grpcurl is not installed (`make tools`).")
    else:
        # The server runs on this event loop: the client must not block it.
        process = await asyncio.create_subprocess_exec(
            *shlex.split(command),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        print(f"\nQR text ({len(text)} characters), verified by grpcurl:\n{command}")
        print("\ngrpcurl answered (a fictional demo person):")
        print(output.decode(errors="replace"))
    # That server stops with this demo: a command for it would find nothing listening.
    print(
        "This demo's server stops now. To verify codes yourself, run"
        f" `{serve_command()}`: it keeps a server on {DEFAULT_SERVE_LISTEN} and prints a grpcurl"
        " command that works as shown while it runs."
    )


async def _run(serve: bool, listen: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="apcv-demo-") as workdir:
        pki = DemoPKI.create(Path(workdir) / "pki", now=int(time.time()))
        pki.revoke(pki.holder("revoked").status_index)
        config = load_config(
            None,
            environ={},
            overrides={
                "server.listen": listen or (DEFAULT_SERVE_LISTEN if serve else "127.0.0.1:0"),
                "server.grace_seconds": 2.0,
                "trust.anchors": [str(pki.directory / "anchor.pem")],
                "trust.trust_list": str(pki.trust_list_path),
                "trust.status_lists": [str(path) for path in pki.status_list_paths.values()],
                # The demo people carry the INS demonstration OID (docs/profile.md §5.3).
                "policy.allow_test_identities": True,
                # Everything is ephemeral here: a per-run audit key (no "not stable" warning
                # in the table) and /metrics only when the demo keeps serving.
                "audit.holder_ref_secret": secrets.token_hex(32),
                "metrics.listen": None if serve else "",
            },
        )
        running = await start_server(config, load_trust_material(config))
        address = f"{config.server.listen.rpartition(':')[0]}:{running.port}"
        try:
            print(f"apcv-verify demo: server on {address}, demo PKI in {pki.directory}\n")
            all_expected = await _verify_samples(address, pki)
            await _show_qr(address, pki, serving=serve)
            if serve:
                print(f"\nServing on {address}; Ctrl-C to stop.")
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
                await stop.wait()
        finally:
            await running.stop(config.server.grace_seconds)
    if not all_expected:
        print("\nSome decisions differ from the expected ones.")
        return 1
    presentations = len({sample.sample for sample in SAMPLES})
    print(
        f"\nAll {len(SAMPLES)} decisions as expected ({presentations} sample presentations;"
        " the replayed one is scanned at two desks)."
    )
    return 0


def run_demo(*, serve: bool = False, listen: str | None = None) -> int:
    # On the event loop `apcv-verify serve` runs by default (server.event_loop).
    with asyncio.Runner(loop_factory=event_loop_factory(ServerSection().event_loop)) as runner:
        return runner.run(_run(serve, listen))
