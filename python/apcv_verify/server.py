"""The gRPC service: ``apcv.verify.v1.Verifier`` over grpc.aio, with health and reflection.

The servicer is thin (STYLE.md, TGI ``server/``): protobuf → :class:`~apcv_verify._native.Scan`
→ the Rust core → protobuf. Signature, status and replay checks all happen in the core
(ARCHITECTURE.md "The core"); Python never sees CBOR or curves.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import _native
from ._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from .config import Config
from .issuer import cose_key_from_public_pem

__all__ = [
    "RunningServer",
    "TrustMaterial",
    "VerifierService",
    "load_trust_material",
    "serve",
    "start_server",
]

log = structlog.get_logger("apcv_verify.server")

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name

#: Caller-chosen identifiers are echoed and logged; bound them.
MAX_ID_LENGTH = 128
#: An NFC challenge is a short random value (PROFILE §2 "nonce").
MAX_NONCE_BYTES = 64


def read_anchor(path: str | Path) -> bytes:
    """A trust anchor as COSE_Key bytes, from a PEM public key or a COSE_Key file."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return cose_key_from_public_pem(data)
    return data


@dataclass(frozen=True)
class TrustMaterial:
    """One consistent snapshot of what the service trusts (ARCHITECTURE.md: swapped whole)."""

    trust_list: _native.TrustList
    status_lists: tuple[_native.StatusList, ...]


def load_trust_material(config: Config, *, now: int | None = None) -> TrustMaterial:
    """Read and verify the anchors, the trust list and the status lists named in ``config``.

    Raises :class:`~apcv_verify._native.TrustListError` / ``StatusListError`` naming the
    problem; nothing partial is returned.
    """
    now = int(time.time()) if now is None else now
    anchors = [read_anchor(path) for path in config.trust.anchors]
    trust_list = _native.TrustList.verify(Path(config.trust.trust_list).read_bytes(), anchors, now)
    status_lists = tuple(
        _native.StatusList.verify(Path(path).read_bytes(), trust_list, now)
        for path in config.trust.status_lists
    )
    return TrustMaterial(trust_list, status_lists)


def build_verifier(config: Config, material: TrustMaterial) -> _native.Verifier:
    policy = _native.Policy(
        allow_test_identities=config.policy.allow_test_identities,
        clock_skew=config.policy.clock_skew_seconds,
        status_grace=config.policy.status_grace_seconds,
    )
    store = _native.MemoryReplayStore(max_entries=config.replay.max_entries)
    return _native.Verifier(material.trust_list, material.status_lists, policy, store)


def _person_message(person: _native.Person) -> verifier_pb2.VerifiedPerson:
    amo = person.amo
    return verifier_pb2.VerifiedPerson(
        rank=person.rank,
        ins=verifier_pb2.Ins(matricule=person.ins, oid=person.ins_oid),
        identity=verifier_pb2.IdentityTraits(
            birth_name=person.birth_name,
            given_names=person.given_names,
            sex=person.sex,
            birth_date=person.birth_date,
            birth_place=person.birth_place,
        ),
        amo=verifier_pb2.AmoRights(
            regime=amo.regime,
            caisse=amo.caisse,
            centre=amo.centre,
            open_from=amo.open_from,
            open_to=amo.open_to,
        ),
    )


def response_message(
    request_id: str, result: _native.VerificationResult
) -> verifier_pb2.VerifyResponse:
    """The protobuf form of one core decision."""
    response = verifier_pb2.VerifyResponse(
        request_id=request_id,
        decision=verifier_pb2.ACCEPTED if result.accepted else verifier_pb2.REJECTED,
        reason=result.reason,  # the core's codes are the enum's names (PROFILE §8)
        detail=result.detail,
        duplicate=result.duplicate,
        use=result.use or "",
    )
    if result.accepted and result.person is not None:
        response.person.CopyFrom(_person_message(result.person))
        response.issuer = result.issuer or ""
    return response


class VerifierService(verifier_pb2_grpc.VerifierServicer):
    """``apcv.verify.v1.Verifier``: protobuf in, core decision out."""

    def __init__(self, verifier: _native.Verifier) -> None:
        self._verifier = verifier

    async def Verify(  # noqa: N802 (gRPC method name)
        self, request: verifier_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.VerifyResponse:
        kind = request.WhichOneof("presentation")
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no presentation in request")
        data: str | bytes = request.qr_text if kind == "qr_text" else request.nfc_bytes
        if not data:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty presentation")
        if len(request.request_id) > MAX_ID_LENGTH or len(request.reader.reader_id) > MAX_ID_LENGTH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request_id and reader_id are limited to {MAX_ID_LENGTH} characters",
            )
        if len(request.reader.nonce) > MAX_NONCE_BYTES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"nonce is limited to {MAX_NONCE_BYTES} bytes"
            )
        scan = _native.Scan(data, request.reader.reader_id, nonce=request.reader.nonce or None)
        started = time.perf_counter()
        # verify_batch releases the GIL for the whole batch: run it off the event loop.
        (result,) = await asyncio.to_thread(self._verifier.verify_batch, [scan], int(time.time()))
        log.info(
            "verification",
            method="Verify",
            request_id=request.request_id,
            reader=request.reader.reader_id,
            decision="ACCEPTED" if result.accepted else "REJECTED",
            reason=result.reason,
            duplicate=result.duplicate,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return response_message(request.request_id, result)


@dataclass
class RunningServer:
    """A started server, the port it bound and its health service."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING first, then let in-flight calls finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


async def start_server(config: Config, material: TrustMaterial) -> RunningServer:
    """Start serving; ``server.listen`` may use port 0 to pick a free port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.server.max_message_bytes),
            ("grpc.max_send_message_length", config.server.max_message_bytes),
        ]
    )
    verifier_pb2_grpc.add_VerifierServicer_to_server(
        VerifierService(build_verifier(config, material)), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(config.server.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.server.listen}")
    await server.start()
    # A trust list is loaded (start refuses otherwise): ready to serve.
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        listen=config.server.listen,
        port=port,
        trust_list_seq=material.trust_list.seq,
        status_lists=len(material.status_lists),
    )
    return RunningServer(server, port, health_servicer)


async def _serve_until_signalled(config: Config, material: TrustMaterial) -> None:
    running = await start_server(config, material)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping", grace_seconds=config.server.grace_seconds)
    await running.stop(config.server.grace_seconds)


def serve(config: Config) -> None:
    """Load and verify the trust material, then serve until SIGINT/SIGTERM."""
    material = load_trust_material(config)
    asyncio.run(_serve_until_signalled(config, material))
