"""Writes the fuzz fixture and seed corpora from the issuer toolkit (apcv_verify.issuer).

Run once with the project's venv (``.venv/bin/python rust/apcv-core/fuzz/make_corpus.py``);
the output is committed, so the fuzz targets and the bounded property tests of ``make test``
need neither Python nor randomness. Everything is issued at the fixed time ``NOW`` that the
targets verify at (``src/lib.rs``), so the seeds stay valid whatever the date.

Writes, under this directory:

- ``fixture/``: the trust anchor's public COSE_Key, the anchor's and the status signer's
  private keys (PKCS#8 DER; test keys made here, worth nothing), the signed trust list and
  status list the targets load;
- ``corpus/<target>/``: seeds of each cargo-fuzz target;
- ``../../../tests/fuzz-corpus/servicer/``: seeds of the atheris target
  (``tests/fuzz_servicer.py``): a method byte then a serialized request.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cbor2
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from apcv_verify.issuer import DemoPKI, parse_sign1, qr_text
from cryptography.hazmat.primitives import serialization

#: The time the fixture is issued at and the targets verify at (2025-06-15T15:06:40Z).
NOW = 1_750_000_000
HERE = Path(__file__).resolve().parent
SERVICER = HERE.parents[2] / "tests" / "fuzz-corpus" / "servicer"
#: The atheris target's method selector (first byte of a seed).
VERIFY, BATCH, STREAM = 0, 1, 2


def _pkcs8(pki: DemoPKI, name: str) -> bytes:
    """The private key ``name`` of ``pki`` as PKCS#8 DER (what ring reads)."""
    pem = (pki.directory / pki.manifest["keys"][name]["file"]).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(directory: Path, seeds: dict[str, bytes]) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


def _scan(request_id: str, presentation: bytes, *, qr: bool) -> verifier_pb2.Scan:
    scan = verifier_pb2.Scan(request_id=request_id)
    if qr:
        scan.qr_text = qr_text(presentation)
    else:
        scan.nfc_bytes = presentation
    scan.reader.reader_id = "desk-1"
    return scan


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = DemoPKI.create(Path(tmp) / "pki", now=NOW)
        samples = pki.samples(now=NOW)
        key, delegation = pki.delegate("alice", now=NOW)
        delegated = pki.present("alice", dlg=delegation, signer=key, iat=NOW)
        with_amc = pki.present("alice", amc=[pki.amc_attestation("alice", now=NOW)], iat=NOW)
        family = pki.present("family", ben=1, iat=NOW, aud="desk-1", nonce=b"\x01" * 16)
        presentations = {**samples, "delegated": delegated, "amc": with_amc, "family": family}
        status = pki.status_lists
        (status_uri, status_list), *_ = status.items()
        _write(
            HERE / "fixture",
            {
                "anchor.cose_key": pki.anchor_cose_key,
                "anchor.pkcs8": _pkcs8(pki, _anchor_name(pki)),
                "status.pkcs8": _pkcs8(pki, _signer_name(pki, status_uri)),
                "trust-list.cose": pki.trust_list,
                "status-list.cwt": status_list,
            },
        )
        credential = pki.holder("alice").credential
        status_payload = parse_sign1(status_list).payload
        _write(
            HERE / "corpus" / "qr_nfc",
            {
                **{f"qr-{name}": qr_text(p).encode() for name, p in presentations.items()},
                "nfc-accepted": presentations["accepted"],
            },
        )
        _write(
            HERE / "corpus" / "cose_cwt",
            {
                **{name: p for name, p in presentations.items()},
                "credential": credential,
                "delegation": delegation,
                "anchor-cose-key": pki.anchor_cose_key,
            },
        )
        _write(
            HERE / "corpus" / "status_list",
            {
                "signed": status_list,
                # The payload alone: the target signs what follows a 0x01 byte (src/lib.rs).
                "payload": b"\x01" + status_payload,
                "bits": b"\x02" + cbor2.dumps(cbor2.loads(status_payload)[65533]),
            },
        )
        trust_payload = parse_sign1(pki.trust_list).payload
        _write(
            HERE / "corpus" / "trust_list",
            {"signed": pki.trust_list, "payload": b"\x01" + trust_payload},
        )
        batch = verifier_pb2.VerifyBatchRequest(
            scans=[_scan(f"b-{i}", p, qr=i % 2 == 0) for i, p in enumerate(presentations.values())]
        )
        servicer = {
            f"verify-{name}": bytes([VERIFY])
            + verifier_pb2.VerifyRequest(scan=_scan("r-1", p, qr=True)).SerializeToString()
            for name, p in presentations.items()
        }
        servicer["verify-nfc"] = (
            bytes([VERIFY])
            + verifier_pb2.VerifyRequest(
                scan=_scan("r-2", samples["accepted"], qr=False)
            ).SerializeToString()
        )
        servicer["batch"] = bytes([BATCH]) + batch.SerializeToString()
        servicer["stream"] = (
            bytes([STREAM])
            + verifier_pb2.VerifyStreamRequest(
                scan=_scan("s-1", samples["accepted"], qr=True)
            ).SerializeToString()
        )
        _write(SERVICER, servicer)


def _anchor_name(pki: DemoPKI) -> str:
    (name,) = [n for n, e in pki.manifest["keys"].items() if e.get("role") == "anchor"]
    return name


def _signer_name(pki: DemoPKI, uri: str) -> str:
    return str(pki.manifest["status_lists"][uri]["signer"])


if __name__ == "__main__":
    main()
