"""Where a unary ``Verify`` call's server CPU goes beyond the bare echo call's.

Starts several servers side by side and measures the server CPU of unary calls to each
(``/proc/<pid>/stat`` utime + stime, as ``service_bench.py``), round after round, in an
alternating order, changing one thing per server:

* echo servers (``--echo-server``), the bare grpc.aio server of ``service_bench.py --echo``
  with one addition each: ``icpt`` the service's interceptor (``CallInterceptor``), ``opts``
  the service's channel options (``startup.server_options``), ``extra`` the health and
  reflection services, ``ident`` identity (bytes) serializers, ``registered`` the handlers
  also as registered methods (``add_registered_method_handlers``), as the service registers
  its own, ``burn<N>`` a handler that first spends N µs of CPU in plain Python,
  ``stdloop`` on the standard library's event loop (the others run on the service's,
  ``server.event_loop``), ``grpcdefaults`` with gRPC's own experiments (the others with the
  service's, ``server.grpc_experiments``);
* service servers (``apcv-verify serve`` as ``service_bench.py`` starts it, through this file
  so that one piece can be left out, ``APCV_GAP``): every one also answers the echo method with
  the echo server's handler, so the same server's ``Verify`` and echo calls can be compared;
  ``floor`` leaves out all of the service's Python around its binding call
  (``service_bench.add_floor_verify``).

With ``--core`` and the ``base`` echo server, each ``Verify`` figure is also given as the
benchmark's unary ratio: server CPU per call over the core's plus 1.2 × the echo call's.
``--pin`` holds every server to the first half of the CPUs and this process (the client,
and ``core1``) to the other, as the benchmark's latency step places the server and ghz:
a server's thread then no longer moves between CPUs, nor shares one with the client.

Usage: ``python loadtest/unary_gap.py --echo base,icpt --service full,noregistered``
(``+`` joins two pieces left out, ``=PYTHONPATH`` runs another copy of the package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2  # noqa: E402
from bench import MAX_MESSAGE_BYTES, Case, free_port, start_server, stop_server  # noqa: E402
from corpus import make_pki, presentations  # noqa: E402
from service_bench import (  # noqa: E402
    ECHO,
    SERVICE,
    _identity,
    _response_size,
    _set_affinity,
    _unary,
    add_floor_verify,
    encode_unary,
    measure_core,
    measure_server,
    service_environment,
    service_grpc_experiments,
    service_loop,
    split_cores,
)

ECHO_SERVICE = "apcv.bench.Echo"


def _burn(microseconds: float) -> None:
    """Spend ``microseconds`` of this thread's CPU in plain Python."""
    end = time.thread_time() + microseconds / 1e6
    while time.thread_time() < end:
        pass


def _echo_handlers(response_size: int, identity: bool, burn: float = 0.0) -> dict[str, Any]:
    verdict = verifier_pb2.Verdict(request_id="x", detail="x" * max(0, response_size - 8))
    reply = verifier_pb2.VerifyResponse(verdict=verdict)
    if identity:
        encoded = reply.SerializeToString()

        async def echo_bytes(request: bytes, context: Any) -> bytes:
            return encoded

        return {"Echo": grpc.unary_unary_rpc_method_handler(echo_bytes, _identity, _identity)}

    async def echo(request: verifier_pb2.VerifyRequest, context: Any) -> Any:
        if burn:
            _burn(burn)
        return reply

    return {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=verifier_pb2.VerifyRequest.FromString,
            response_serializer=verifier_pb2.VerifyResponse.SerializeToString,
        )
    }


async def _echo_server(port: int, response_size: int, variant: str) -> None:
    """The echo server of ``service_bench.py`` with ``variant``'s one addition."""
    from apcv_verify.config import Config
    from apcv_verify.observe.metrics import ServiceMetrics
    from apcv_verify.service.interceptors import (
        CallInterceptor,
        ErrorInterceptor,
        MetricsInterceptor,
    )
    from apcv_verify.service.limits import LimitMetrics, LimitsInterceptor
    from apcv_verify.service.startup import server_options

    config = Config()
    options: list[tuple[str, int]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    interceptors = []
    if variant == "opts":
        options = server_options(config.server)
    if variant == "icpt":
        metrics = ServiceMetrics(stream_services=(ECHO_SERVICE,))
        interceptors = [
            CallInterceptor(
                MetricsInterceptor(metrics),
                ErrorInterceptor(),
                LimitsInterceptor(
                    config.server, LimitMetrics(metrics.registry), stream_services=()
                ),
            )
        ]
    burn = float(variant[4:]) if variant.startswith("burn") else 0.0
    handlers = _echo_handlers(response_size, identity=variant == "ident", burn=burn)
    server = grpc.aio.server(interceptors=interceptors, options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),))
    if variant == "registered":
        server.add_registered_method_handlers(ECHO_SERVICE, handlers)
    if variant == "extra":
        from grpc_health.v1 import health, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        reflection.enable_server_reflection((ECHO_SERVICE, reflection.SERVICE_NAME), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()


def _time_pieces(spent: list[Any]) -> None:
    """Add to ``spent`` the thread CPU of the core call, the audit record and answer
    recovery (core call included), printed with the handler's total."""
    from apcv_verify.observe.audit import AuditTrail
    from apcv_verify.replay.answers import AnswerRecovery
    from apcv_verify.service.servicer import VerifierService

    pieces = {"core": 0.0, "audit": 0.0, "recovery": 0.0}
    spent.append(pieces)

    class Timed:
        def __init__(self, verifier: Any) -> None:
            self._verifier = verifier

        def verify_wire(self, *args: Any) -> Any:
            started = time.thread_time()
            try:
                return self._verifier.verify_wire(*args)
            finally:
                pieces["core"] += time.thread_time() - started

    choose = VerifierService._verifier

    def verifier(self: Any, *args: Any) -> Any:
        chosen = choose(self, *args)
        return chosen if isinstance(chosen, tuple) else Timed(chosen)

    # A package whose unary calls verify in one binding call (WireBatch.answer_unary, which
    # takes only the native verifier): the core is timed within answer recovery's piece.
    if not hasattr(VerifierService, "_answer_unary"):
        VerifierService._verifier = verifier  # type: ignore[method-assign,assignment]

    def adding_to(name: str, function: Any) -> Any:
        """``function``, its thread CPU added to ``pieces[name]``."""

        def timed_piece(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                pieces[name] += time.thread_time() - started

        return timed_piece

    def timing(name: str, function: Any) -> Any:
        pieces[name] = 0.0
        return adding_to(name, function)

    AuditTrail.record_wire = adding_to("audit", AuditTrail.record_wire)  # type: ignore[method-assign]
    # A package whose unary calls are audited within ``answer_unary`` (its rendering then
    # falls in answer recovery's piece): what is left of the record, after the call.
    if hasattr(AuditTrail, "recorded_in_core"):
        AuditTrail.recorded_in_core = adding_to(  # type: ignore[method-assign]
            "audit", AuditTrail.recorded_in_core
        )
    # Within the audit record: its tail, the buffer write, the metrics.
    from apcv_verify.observe import audit as audit_module
    from apcv_verify.observe.metrics import ServiceMetrics

    # The package's tail function: native_audit_tail since the core renders the usual tail.
    tail_name = "native_audit_tail" if hasattr(audit_module, "native_audit_tail") else "audit_tail"
    tail = timing("audit.tail", getattr(audit_module, tail_name))
    again = timing("audit.tail-again", getattr(audit_module, tail_name))

    def tail_twice(*args: Any) -> Any:  # the second call, discarded: the same work, warm
        result = tail(*args)
        if os.environ.get("APCV_GAP_TAIL_TWICE"):
            again(*args)
        return result

    setattr(audit_module, tail_name, tail_twice)
    audit_module.write_audit_lines = timing("audit.write", audit_module.write_audit_lines)
    ServiceMetrics.observe_verification = timing(  # type: ignore[method-assign]
        "audit.metric1", ServiceMetrics.observe_verification
    )
    ServiceMetrics.observe_latency = timing(  # type: ignore[method-assign]
        "audit.metric2", ServiceMetrics.observe_latency
    )
    answer = AnswerRecovery.answer_wire

    async def answer_wire(self: Any, *args: Any) -> Any:
        started = time.thread_time()
        try:
            return await answer(self, *args)
        finally:
            pieces["recovery"] += time.thread_time() - started

    AnswerRecovery.answer_wire = answer_wire  # type: ignore[method-assign,assignment]
    if hasattr(AnswerRecovery, "answer_unary"):
        AnswerRecovery.answer_unary = adding_to(  # type: ignore[method-assign]
            "recovery", AnswerRecovery.answer_unary
        )


def _patched_serve(argv: list[str]) -> int:
    """``apcv-verify serve`` with the echo method added and ``APCV_GAP``'s pieces left out."""
    from apcv_verify.cli.main import main
    from apcv_verify.service import startup

    leave_out = set(filter(None, os.environ.get("APCV_GAP", "").split("+")))
    added = startup.add_verifier_service

    def add(service: Any, server: grpc.aio.Server) -> None:
        if "noregistered" in leave_out:
            server.add_registered_method_handlers = lambda *_: None
        if "floor" in leave_out:
            add_floor_verify(service, server)
        else:
            added(service, server)
        handlers = _echo_handlers(int(os.environ["APCV_GAP_SIZE"]), identity=False)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),)
        )

    startup.add_verifier_service = add
    if "timed" in leave_out:  # the handler's own CPU (no await suspends on success)
        from apcv_verify.service.servicer import VerifierService

        verify = VerifierService.Verify
        spent: list[Any] = [0.0, 0]

        async def timed(self: Any, request: Any, context: Any) -> Any:
            started = time.thread_time()
            try:
                return await verify(self, request, context)
            finally:
                spent[0] += time.thread_time() - started
                spent[1] += 1
                if spent[1] == 1000:
                    import contextvars

                    names = sorted(k.name for k in contextvars.copy_context())
                    print(f"gap-timed context variables: {len(names)} {names[:12]}", flush=True)
                if spent[1] % 2000 == 0:
                    parts = " ".join(f"{k} {v / spent[1] * 1e6:.1f}" for k, v in spent[2].items())
                    print(f"gap-timed {spent[0] / spent[1] * 1e6:.1f} µs: {parts}", flush=True)

        VerifierService.Verify = timed  # type: ignore[method-assign]
        _time_pieces(spent)
    if "nointerceptors" in leave_out:
        server_factory = grpc.aio.server

        def bare(*args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
            return server_factory(*args, **kwargs)

        startup.grpc.aio.server = bare
    if "notrust" in leave_out:  # no trust refresh task, no health follower
        from apcv_verify.trust.sources import TrustSource

        TrustSource.start = lambda self, on_loaded=None: None  # type: ignore[method-assign]

        async def idle(*args: Any) -> None:
            return None

        startup._follow_trust = idle  # type: ignore[assignment]
    return main(argv)


def _start_service(name: str, pki: Any, work: Path, size: int) -> Any:
    """``name``: what to leave out (``APCV_GAP``; "full" for nothing), optionally with
    ``=PYTHONPATH``, the folder of another copy of the package to run."""
    name, _, path = name.partition("=")
    leave_out = "" if name.startswith("full") else name
    # The patched server loads gRPC before `serve` could give it server.grpc_experiments:
    # given here instead, as `apcv-verify serve` would.
    env = {**service_grpc_experiments(), "APCV_GAP": leave_out, "APCV_GAP_SIZE": str(size)}
    if "grpcdefaults" in leave_out:  # gRPC's own experiments, not server.grpc_experiments
        env["GRPC_EXPERIMENTS"] = ""
    if path:
        env["PYTHONPATH"] = path
    if "nometrics" in leave_out:
        env["APCV_GAP_NOMETRICS"] = "1"
    if "stdloop" in leave_out:  # the standard library's event loop instead of uvloop
        env["APCV_SERVER_EVENT_LOOP"] = "asyncio"
    # bench.start_server runs ``<launcher> serve ...``: a wrapper that runs this file's
    # _patched_serve instead of ``python -m apcv_verify.cli``.
    wrapper = work / "python-gap"
    wrapper.write_text(
        f"#!/bin/sh\nshift 2\n"
        f'[ -n "$APCV_GAP_NOMETRICS" ] && export APCV_METRICS_LISTEN=""\n'
        f'exec {sys.executable} {__file__} --patched-serve "$@"\n'
    )
    wrapper.chmod(0o755)
    launcher = (str(wrapper), "-m", "apcv_verify.cli")
    case = Case(f"gap-{name}", "Verify", 1, "memory")
    return start_server(case, pki.directory, None, work, launcher=launcher, env=env)


def _start_echo(variant: str, size: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = service_environment()
    if variant == "grpcdefaults":
        environment["GRPC_EXPERIMENTS"] = ""
    process = subprocess.Popen(
        [sys.executable, __file__, "--echo-server", str(port), variant, str(size)],
        stdout=subprocess.PIPE,
        env=environment,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"serving":
        raise RuntimeError(f"echo server {variant} did not start")
    return process, f"127.0.0.1:{port}"


PERF_EVENTS = "task-clock,context-switches,cpu-migrations,page-faults"


def _perf_stat(pid: int) -> subprocess.Popen[str]:
    """``perf stat`` of ``pid``'s software events until interrupted (:func:`_perf_read`)."""
    process = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-e", PERF_EVENTS, "-p", str(pid)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    return process


def _perf_record(pid: int, output: Path) -> subprocess.Popen[str]:
    """``perf record`` of ``pid``'s CPU samples into ``output`` until interrupted (read it
    with ``perf report -i OUTPUT --sort dso``: the call's CPU by library)."""
    process = subprocess.Popen(
        ["perf", "record", "-q", "-F", "2999", "-p", str(pid), "-o", str(output)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    return process


def _perf_read(process: subprocess.Popen[str], calls: int) -> str:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    counts = {}
    for line in err.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            counts[fields[2]] = float(fields[0])
    return " ".join(f"{name} {value / calls:.2f}/call" for name, value in counts.items())


def run(args: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="apcv-unary-gap-") as temporary:
        work = Path(temporary)
        pki = make_pki(work / "pki")
        services: dict[str, Any] = {}
        echoes: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            size = 0
            for spec in args.service:
                name = spec.partition("=")[0]
                (work / name).mkdir()
                services[name] = _start_service(spec, pki, work / name, size or 600)
                if not size:
                    size = _response_size(services[name].address, next(presentations(pki, 1)))
            for variant in args.echo:
                echoes[variant] = _start_echo(variant, size or 600)
            targets: list[tuple[str, str, int, str]] = []  # label, case, pid, address
            for name, server in services.items():
                targets.append((f"svc-{name}:verify", "verify", server.process.pid, server.address))
                if args.service_echo:
                    targets.append((f"svc-{name}:echo", "echo", server.process.pid, server.address))
            for variant, (process, address) in echoes.items():
                targets.append((f"echo-{variant}", "echo", process.pid, address))
            if args.core:
                targets.append(("core1", "core1", 0, ""))
            cores = split_cores() if args.pin else None
            if cores is not None:  # every server on the first half, this client on the other
                for _, _, pid, _ in targets:
                    if pid:
                        _set_affinity(pid, cores[0])
                _set_affinity(os.getpid(), cores[1])
            for _, case, _, address in targets:  # warm up
                if case == "core1":
                    continue
                method = ECHO if case == "echo" else SERVICE + "Verify"
                warm = encode_unary(list(presentations(pki, 200)), "w")
                asyncio.run(_unary(address, method, warm, 8))
            results: dict[str, list[float]] = {label: [] for label, *_ in targets}
            for round_ in range(1, args.rounds + 1):
                order = targets if round_ % 2 else list(reversed(targets))
                for label, case, pid, address in order:
                    items = list(presentations(pki, args.items))
                    if case == "core1":
                        result = measure_core(pki, items, 1, round_)
                        results[label].append(result.cpu_us_per_item)
                        print(f"round {round_} {label:26} {result.cpu_us_per_item:7.1f} µs/call")
                        continue
                    counter = _perf_stat(pid) if args.perf_stat else None
                    recorder = None
                    if args.perf_record:
                        output = args.perf_record / f"{label.replace(':', '-')}-{round_}.data"
                        recorder = _perf_record(pid, output)
                    result = measure_server(case, pid, address, items, round_, args)
                    if recorder is not None:
                        recorder.send_signal(signal.SIGINT)
                        recorder.communicate(timeout=60)
                    if counter is not None:
                        print(f"round {round_} {label:26} {_perf_read(counter, args.items)}")
                    results[label].append(result.cpu_us_per_item)
                    print(
                        f"round {round_} {label:26} {result.cpu_us_per_item:7.1f} µs/call"
                        f" {result.rate:7.1f}/s accepted {result.accepted}/{result.items}"
                        f" load {result.load_before:.2f}",
                        flush=True,
                    )
            print("\nmedian (min–max) µs of server CPU per call")
            for label, values in results.items():
                print(
                    f"{label:26} {statistics.median(values):7.1f} "
                    f"({min(values):.0f}–{max(values):.0f})"
                )
            if "core1" in results and "echo-base" in results:
                print("\nthe unary ratio, server CPU / (core + 1.2 × echo), per round")
                for label, values in results.items():
                    if not label.endswith(":verify"):
                        continue
                    ratios = [
                        value / (core + 1.2 * echo)
                        for value, core, echo in zip(
                            values, results["core1"], results["echo-base"], strict=True
                        )
                    ]
                    print(
                        f"{label:26} {statistics.median(ratios):7.3f} "
                        f"({min(ratios):.3f}–{max(ratios):.3f})"
                    )
            for name, server in services.items():  # the timed handler's pieces
                for line in server.log.read_text().splitlines():
                    if line.startswith("gap-timed"):
                        print(f"svc-{name}: {line}")
        finally:
            for process, _ in echoes.values():
                process.terminate()
                process.wait(timeout=10)
            for server in services.values():
                stop_server(server)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--patched-serve":
        return _patched_serve(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "--echo-server":
        port, variant, size = sys.argv[2:5]
        new_loop = asyncio.new_event_loop if variant == "stdloop" else service_loop()
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(_echo_server(int(port), int(size), variant))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--items", type=int, default=2000, help="calls per case and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--echo", type=lambda s: s.split(","), default=["base"])
    parser.add_argument("--service", type=lambda s: s.split(","), default=["full"])
    parser.add_argument("--core", action="store_true", help="also the core alone (core1)")
    parser.add_argument("--perf-stat", action="store_true", help="perf stat per case")
    parser.add_argument(
        "--perf-record", type=Path, help="folder for a perf record of each server and round"
    )
    parser.add_argument("--service-echo", action="store_true", help="also echo on the service")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the servers on the first half of the CPUs, the client (and core1) on the other",
    )
    args = parser.parse_args()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
