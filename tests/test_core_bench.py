"""The core benchmark keeps working (loadtest/core_bench.py --quick, no timing asserted), and its
plain-Python peer (loadtest/peer.py) really verifies: it gives the core's reason on the demo's
samples, signatures included."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from apcv_verify import _native
from apcv_verify.issuer import DemoPKI, qr_text, tamper_signature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .conftest import REPO

sys.path.insert(0, str(REPO / "loadtest"))
import core_bench  # noqa: E402
from peer import PeerVerifier, Rejected  # noqa: E402


@pytest.mark.slow
def test_quick_benchmark_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nkept\n")
    run = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "core_bench.py"), "--quick", "--write", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n")
    for heading in ("### 1. Crypto floor", "### 2–3. Core from Python", "### 5. Scale"):
        assert heading in text
    assert "| peer-qr-1-none | 1 |" in text
    # The replay store at a steady rate: 500 new entries a second, each kept 60 s.
    assert "| 100,000 | 500 | 60 | 30,500 |" in text
    # Written again, the section is replaced, not appended.
    section = text.split("kept\n", 1)[1]
    core_bench._write_section(out, section.strip() + "\n")
    assert out.read_text().count("<!-- core-bench:begin -->") == 1


def _peer(pki: DemoPKI, now: int) -> PeerVerifier:
    anchor = load_pem_public_key(pki.anchor.public_pem())
    assert isinstance(anchor, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
    return PeerVerifier(
        anchor,
        pki.trust_list,
        list(pki.status_lists.values()),
        now=now,
        allow_test_identities=True,
    )


def _core(pki: DemoPKI, now: int) -> _native.Verifier:
    trust = _native.TrustList.verify(pki.trust_list, [pki.anchor_cose_key], now)
    lists = [_native.StatusList.verify(s, trust, now) for s in pki.status_lists.values()]
    policy = _native.Policy(allow_test_identities=True)
    return _native.Verifier(trust, lists, policy, _native.MemoryReplayStore())


def _peer_reason(peer: PeerVerifier, scan: bytes | str, reader: str, now: int) -> str:
    try:
        peer.verify(scan, reader, now)
    except Rejected as r:
        return r.reason
    return "OK"


@pytest.mark.parametrize("holder", ["alice", "corsica", "lunar", "family"])
def test_peer_gives_the_core_reasons(pki: DemoPKI, holder: str) -> None:
    now = int(time.time())
    peer, core = _peer(pki, now), _core(pki, now)
    samples = dict(pki.samples(now=now, holder=holder))
    credential = pki.holder(holder).credential
    samples["bad_issuer_signature"] = pki.present(
        holder, iat=now, credential=tamper_signature(credential, byte_index=5)
    )
    expected = {
        "accepted": "OK",
        "expired": "CREDENTIAL_EXPIRED",
        "revoked": "REVOKED",
        "replayed": "OK",
        "tampered": "BAD_DEVICE_SIGNATURE",
        "wrong_issuer": "UNKNOWN_ISSUER",
        "bad_issuer_signature": "BAD_ISSUER_SIGNATURE",
    }
    for name, presentation in samples.items():
        for scan in (presentation, qr_text(presentation)):
            got = _peer_reason(peer, scan, "desk-1", now)
            core_reason = core.verify_batch([_native.Scan(scan, "desk-1")], now)[0].reason
            assert got == core_reason == expected[name], (name, got, core_reason)
    replayed = samples["replayed"]
    assert _peer_reason(peer, replayed, "desk-2", now) == "REPLAYED"
