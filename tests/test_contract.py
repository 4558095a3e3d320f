"""The v1 contract as a client sees it: ``google.rpc.Status`` details on call errors,
undecodable requests answered (INVALID_ARGUMENT, or MALFORMED in place for batch and stream
items), required ids, reflection, and Go code generated from the proto as it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, qr_text
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .conftest import REPO, ServerProcess
from .test_verdict_bytes import field, varint

SERVICE = "/apcv.verify.v1.VerifierService"
DOMAIN = "apcv.verify.v1"
#: Bytes that are not UTF-8, put where a string field's value goes.
NOT_UTF8 = b"\xff\xfe\xfd\xfc"
#: A length-delimited field whose length runs past the end of the message.
TRUNCATED = b"\x0a\x40\x0a\x02r1"


def scan(request_id: str, presentation: str, reader_id: str = "edge-1") -> verifier_pb2.Scan:
    return verifier_pb2.Scan(
        request_id=request_id,
        qr_text=presentation,
        reader=verifier_pb2.ReaderContext(reader_id=reader_id),
    )


def not_utf8(message: verifier_pb2.Scan) -> bytes:
    """``message`` encoded with its request_id ("XXXX") replaced by invalid UTF-8: the
    framing is intact, only protobuf's UTF-8 check of string fields fails."""
    assert message.request_id == "XXXX"
    encoded = message.SerializeToString()
    assert encoded.count(b"XXXX") == 1
    return encoded.replace(b"XXXX", NOT_UTF8)


def raw_unary(channel: grpc.Channel, method: str, payload: bytes, response_type: Any) -> Any:
    """Call ``method`` with ``payload`` as the request's bytes, as they are."""
    call = channel.unary_unary(
        f"{SERVICE}/{method}",
        request_serializer=None,
        response_deserializer=response_type.FromString,
    )
    return call(payload, timeout=10)


def status_details(
    error: grpc.RpcError,
) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """The ErrorInfo and the BadRequest field violations (field, reason) of a failed call, as
    a client reads them with grpcio-status."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0] and status.message == error.details()
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    kinds = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            kinds.append("ErrorInfo")
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.reason) for v in bad.field_violations]
            kinds.append("BadRequest")
    assert "ErrorInfo" in kinds and info.domain == DOMAIN
    return info, violations


def test_an_undecodable_verify_is_invalid_argument_with_details_and_no_exception_text(
    server: ServerProcess, pki: DemoPKI
) -> None:
    good = scan("XXXX", qr_text(pki.present("alice")))
    for payload in (field(1, not_utf8(good)), TRUNCATED):
        with server.channel() as channel, pytest.raises(grpc.RpcError) as refused:
            raw_unary(channel, "Verify", payload, verifier_pb2.VerifyResponse)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        message = refused.value.details() or ""
        assert message.startswith("scan: not a valid protobuf encoding")
        for leaked in ("Error", "parsing", "Exception", "Traceback", "utf-8", "decode"):
            assert leaked not in message
        info, violations = status_details(refused.value)
        assert info.reason == "REQUEST_UNDECODABLE"
        assert violations == [("scan", "REQUEST_UNDECODABLE")]
    # The server is unharmed and the same scan, well encoded, is verified.
    with server.channel() as channel:
        good.request_id = "r-1"
        verdict = (
            verifier_pb2_grpc.VerifierServiceStub(channel)
            .Verify(verifier_pb2.VerifyRequest(scan=good), timeout=10)
            .verdict
        )
    assert verdict.reason == verifier_pb2.REASON_OK


def test_a_broken_item_in_a_stream_is_malformed_in_place_and_later_items_are_answered(
    server: ServerProcess, pki: DemoPKI
) -> None:
    codes = [qr_text(pki.present("alice")), qr_text(pki.present("lunar"))]
    messages = [
        verifier_pb2.VerifyStreamRequest(scan=scan("s-0", codes[0])).SerializeToString(),
        field(1, not_utf8(scan("XXXX", codes[1]))),  # invalid UTF-8 in its request_id
        TRUNCATED,  # broken framing
        verifier_pb2.VerifyStreamRequest(scan=scan("", codes[1])).SerializeToString(),
        verifier_pb2.VerifyStreamRequest(scan=scan("s-4", codes[1])).SerializeToString(),
    ]
    with server.channel() as channel:
        call = channel.stream_stream(
            f"{SERVICE}/VerifyStream",
            request_serializer=None,
            response_deserializer=verifier_pb2.VerifyStreamResponse.FromString,
        )(iter(messages), timeout=30)
        verdicts = [response.verdict for response in call]
        assert call.code() == grpc.StatusCode.OK
    assert [(v.request_id, verifier_pb2.Reason.Name(v.reason)) for v in verdicts] == [
        ("s-0", "REASON_OK"),
        ("", "REASON_MALFORMED"),
        ("", "REASON_MALFORMED"),
        ("", "REASON_MALFORMED"),
        ("s-4", "REASON_OK"),
    ]
    assert verdicts[1].decision == verifier_pb2.DECISION_REJECTED
    assert verdicts[1].detail.startswith("scan: not a valid protobuf encoding")
    assert verdicts[2].detail == verdicts[1].detail
    assert verdicts[3].detail == "scan.request_id: required"


#: Fields v1 does not know, one of each wire type a later minor version could add (numbers
#: 1000-1003): a varint, a length-delimited string, a fixed64 and a fixed32.
UNKNOWN_FIELDS = (
    varint(1000 << 3 | 0) + varint(7)
    + field(1001, b"new")
    + varint(1002 << 3 | 1) + bytes(8)
    + varint(1003 << 3 | 5) + bytes(4)
)  # fmt: skip


def test_fields_a_later_client_adds_are_ignored_by_every_method(
    server: ServerProcess, pki: DemoPKI
) -> None:
    """Proto3's rule for unknown fields: a request carrying fields of a later minor version
    (in the request, a scan and its reader) is answered as if they were absent."""

    def newer(scan_message: verifier_pb2.Scan) -> bytes:
        reader = scan_message.reader.SerializeToString() + UNKNOWN_FIELDS
        scan_message.ClearField("reader")
        reader_field = verifier_pb2.Scan.DESCRIPTOR.fields_by_name["reader"].number
        return scan_message.SerializeToString() + field(reader_field, reader) + UNKNOWN_FIELDS

    def fresh(request_id: str) -> bytes:
        return newer(scan(request_id, qr_text(pki.present("alice"))))

    with server.channel() as channel:
        unary = raw_unary(
            channel, "Verify", field(1, fresh("n-1")) + UNKNOWN_FIELDS, verifier_pb2.VerifyResponse
        )
        batch = raw_unary(
            channel,
            "VerifyBatch",
            field(1, fresh("n-2")) + UNKNOWN_FIELDS + field(1, fresh("n-3")),
            verifier_pb2.VerifyBatchResponse,
        )
        stream = channel.stream_stream(
            f"{SERVICE}/VerifyStream",
            request_serializer=None,
            response_deserializer=verifier_pb2.VerifyStreamResponse.FromString,
        )(iter([field(1, fresh("n-4")) + UNKNOWN_FIELDS]), timeout=30)
        streamed = [response.verdict for response in stream]
    answered = [unary.verdict, *batch.verdicts, *streamed]
    assert [(v.request_id, verifier_pb2.Reason.Name(v.reason)) for v in answered] == [
        (f"n-{i}", "REASON_OK") for i in range(1, 5)
    ]


def test_a_batch_answers_bad_items_in_place_and_verifies_the_others(
    server: ServerProcess, pki: DemoPKI
) -> None:
    codes = [qr_text(pki.present(holder)) for holder in ("alice", "lunar", "corsica")]
    scans = [
        scan("b-0", codes[0]),
        scan("b-1", codes[1], reader_id=""),
        verifier_pb2.Scan(request_id="b-2", reader=verifier_pb2.ReaderContext(reader_id="e")),
        scan("b-3", codes[2]),
        scan("", codes[2]),
        scan("b-5", "APCV1:" + "A" * 10, reader_id="r" * 129),
    ]
    with server.channel() as channel:
        reply = verifier_pb2_grpc.VerifierServiceStub(channel).VerifyBatch(
            verifier_pb2.VerifyBatchRequest(scans=scans), timeout=30
        )
    verdicts = list(reply.verdicts)
    assert [(v.request_id, verifier_pb2.Reason.Name(v.reason), v.detail) for v in verdicts] == [
        ("b-0", "REASON_OK", verdicts[0].detail),
        ("b-1", "REASON_MALFORMED", "scans[1].reader.reader_id: required"),
        ("b-2", "REASON_MALFORMED", "scans[2].presentation: no qr_text or nfc_bytes"),
        ("b-3", "REASON_OK", verdicts[3].detail),
        ("", "REASON_MALFORMED", "scans[4].request_id: required"),
        ("b-5", "REASON_MALFORMED", "scans[5].reader.reader_id: at most 128 characters"),
    ]
    assert all(v.decision == verifier_pb2.DECISION_REJECTED for v in verdicts[1:3])
    assert verdicts[0].person.rank == 0 and not verdicts[1].HasField("person")
    # The same codes were not consumed by the bad items: b-1's code is still fresh.
    with server.channel() as channel:
        again = verifier_pb2_grpc.VerifierServiceStub(channel).VerifyBatch(
            verifier_pb2.VerifyBatchRequest(scans=[scan("c-0", codes[1])]), timeout=30
        )
    assert again.verdicts[0].reason == verifier_pb2.REASON_OK


def test_an_undecodable_batch_item_is_answered_in_place_a_broken_batch_is_refused(
    server: ServerProcess, pki: DemoPKI
) -> None:
    code = qr_text(pki.present("alice"))
    payload = b"".join(
        [
            field(1, scan("u-0", code).SerializeToString()),
            field(1, not_utf8(scan("XXXX", code))),
            field(1, scan("u-2", "APCV1:%%").SerializeToString()),
        ]
    )
    with server.channel() as channel:
        reply = raw_unary(channel, "VerifyBatch", payload, verifier_pb2.VerifyBatchResponse)
        assert [(v.request_id, v.reason) for v in reply.verdicts] == [
            ("u-0", verifier_pb2.REASON_OK),
            ("", verifier_pb2.REASON_MALFORMED),
            ("u-2", verifier_pb2.REASON_MALFORMED),
        ]
        assert reply.verdicts[1].detail.startswith("scans[1]: not a valid protobuf encoding")
        with pytest.raises(grpc.RpcError) as refused:
            raw_unary(channel, "VerifyBatch", TRUNCATED, verifier_pb2.VerifyBatchResponse)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = status_details(refused.value)
    assert info.reason == "REQUEST_UNDECODABLE"
    assert violations == [("scans", "REQUEST_UNDECODABLE")]


@pytest.mark.parametrize(
    ("request_id", "reader_id", "reason", "path"),
    [
        ("", "desk-1", "REQUEST_ID_MISSING", "scan.request_id"),
        ("r-1", "", "READER_ID_MISSING", "scan.reader.reader_id"),
        ("r" * 129, "desk-1", "ID_TOO_LONG", "scan.request_id"),
    ],
)
def test_verify_requires_request_id_and_reader_id(
    server: ServerProcess, pki: DemoPKI, request_id: str, reader_id: str, reason: str, path: str
) -> None:
    request = verifier_pb2.VerifyRequest(
        scan=scan(request_id, qr_text(pki.present("alice")), reader_id)
    )
    with server.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        verifier_pb2_grpc.VerifierServiceStub(channel).Verify(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = status_details(refused.value)
    assert (info.reason, violations) == (reason, [(path, reason)])
    assert (refused.value.details() or "").startswith(f"{path}: ")


def test_call_level_errors_carry_a_stable_reason(server: ServerProcess, pki: DemoPKI) -> None:
    code = qr_text(pki.present("alice"))
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        with pytest.raises(grpc.RpcError) as empty:
            stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(), timeout=10)
        info, violations = status_details(empty.value)
        assert (info.reason, violations) == ("BATCH_EMPTY", [("scans", "BATCH_EMPTY")])

        with pytest.raises(grpc.RpcError) as large:
            stub.VerifyBatch(
                verifier_pb2.VerifyBatchRequest(scans=[scan("x", "APCV1:")] * 1001), timeout=10
            )
        assert large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info, violations = status_details(large.value)
        assert info.reason == "BATCH_TOO_LARGE"
        assert dict(info.metadata) == {"max_batch": "1000", "count": "1001"}

        delayed = scan("d-1", code)
        delayed.scanned_at.GetCurrentTime()
        with pytest.raises(grpc.RpcError) as denied:
            stub.Verify(verifier_pb2.VerifyRequest(scan=delayed), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info, violations = status_details(denied.value)
        assert (info.reason, violations) == ("SCANNED_AT_NOT_ALLOWED", [])


def test_reflection_lists_the_service_and_describes_its_messages(
    server: ServerProcess, grpcurl: str
) -> None:
    """grpcio-reflection offers ``grpc.reflection.v1alpha`` only (no ``v1`` in Python yet):
    grpcurl asks for v1 first and falls back to it."""

    def run(*args: str) -> str:
        completed = subprocess.run(
            [grpcurl, "-plaintext", server.address, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    services = run("list").split()
    assert "apcv.verify.v1.VerifierService" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert run("list", "apcv.verify.v1.VerifierService").split() == [
        "apcv.verify.v1.VerifierService.Verify",
        "apcv.verify.v1.VerifierService.VerifyBatch",
        "apcv.verify.v1.VerifierService.VerifyStream",
    ]
    described = run("describe", "apcv.verify.v1.Scan")
    assert "string request_id = 1;" in described and "ReaderContext reader = 4;" in described


@pytest.mark.slow
def test_the_proto_generates_a_go_client_that_compiles_without_extra_flags(
    tmp_path: Path,
) -> None:
    """buf.gen.yaml as committed (protoc-gen-go, protoc-gen-go-grpc from `make tools`) and
    the proto's go_package: the generated package builds under its import path."""
    tools = REPO / ".tools" / "bin"
    needed = [tools / name for name in ("buf", "protoc-gen-go", "protoc-gen-go-grpc")]
    go = shutil.which("go")
    if go is None or not all(path.exists() for path in needed):
        if os.environ.get("CI"):
            pytest.fail("go, buf or the Go protoc plugins are missing: `make tools` installs them")
        pytest.skip("go, buf or the Go protoc plugins are missing; run `make tools`")
    environment = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}

    def run(*command: str, cwd: Path = tmp_path) -> None:
        completed = subprocess.run(
            command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr

    run(str(tools / "buf"), "generate", "--output", str(tmp_path), cwd=REPO)
    package = tmp_path / "gen" / "go" / "apcv" / "verify" / "v1"
    assert sorted(path.name for path in package.iterdir()) == [
        "verifier.pb.go",
        "verifier_grpc.pb.go",
    ]
    # A client of the generated package, in a module whose path makes go_package's import
    # path resolve (as in the repository that generated it): the Go example's module, so
    # its pinned versions and checksums serve here too, and nothing is resolved again.
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "main.go").write_text(GO_CLIENT)
    for name in ("go.mod", "go.sum"):
        shutil.copy(REPO / "examples" / "go" / name, tmp_path / name)
    run(go, "vet", "./...")
    run(go, "build", "-o", str(tmp_path / "client-bin"), "./client")
    assert (tmp_path / "client-bin").exists()


GO_CLIENT = """package main

import (
	"context"
	"log"
	"time"

	verifyv1 "apcv.example/apcv-verify/gen/go/apcv/verify/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	conn, err := grpc.NewClient("127.0.0.1:50051",
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := verifyv1.NewVerifierServiceClient(conn).Verify(ctx, &verifyv1.VerifyRequest{
		Scan: &verifyv1.Scan{
			RequestId:    "go-1",
			Presentation: &verifyv1.Scan_QrText{QrText: "APCV1:"},
			Reader:       &verifyv1.ReaderContext{ReaderId: "desk-1"},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Println(reply.GetVerdict().GetDecision() == verifyv1.Decision_DECISION_ACCEPTED)
}
"""


def test_grpcurl_json_uses_the_prefixed_enum_names(
    server: ServerProcess, pki: DemoPKI, grpcurl: str
) -> None:
    body = {"scan": {"request_id": "j-1", "qr_text": "APCV1:%%", "reader": {"reader_id": "d"}}}
    completed = subprocess.run(
        [grpcurl, "-plaintext", "-d", json.dumps(body), server.address,
         "apcv.verify.v1.VerifierService/Verify"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    verdict = json.loads(completed.stdout)["verdict"]
    assert (verdict["decision"], verdict["reason"]) == ("DECISION_REJECTED", "REASON_MALFORMED")
