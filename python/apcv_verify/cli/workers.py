"""Several worker processes on one port (``server.workers`` > 1; docs/operations.md "Workers").

The core verifies a batch on every core with the GIL released, but decoding protobuf,
building responses and running gRPC around it happen under one process's GIL. With
``server.workers = N`` the parent forks N children before any gRPC or asyncio state exists
(gRPC core does not survive a fork once started); each child runs the ordinary server on the
same ``server.listen`` with SO_REUSEPORT and the kernel spreads connections across them.

The parent only supervises: SIGTERM/SIGINT are forwarded to the children (each drains as a
single server does), a child that ends stops the others, and the parent exits with the
children's status. Metrics use Prometheus multiprocess mode: the children write their
counters and histograms to files in a fresh ``PROMETHEUS_MULTIPROC_DIR`` and the parent
serves their sum on ``metrics.listen``, with ``apcv_build_info`` and the ``process_*`` series
of itself and of each live worker (labelled ``worker``, read from ``/proc`` at scrape time).
The trust gauges reach it as each worker publishes them (:mod:`apcv_verify.trust.metrics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..config import Config, MetricsSection
from ..observe.logs import flush_audit
from ..observe.metrics import BuildInfoCollector, WorkerProcessCollector, start_metrics_server

__all__ = ["serve_workers", "worker_audit_path"]

log = structlog.get_logger("apcv_verify.cli.workers")

#: Seconds the parent waits beyond server.grace_seconds for children to exit after a stop
#: signal before it kills them.
KILL_AFTER_GRACE_SECONDS = 5.0
#: How often the parent looks for exited children.
POLL_SECONDS = 0.05


def _exit_code(wait_status: int) -> int:
    """A shell's view of a child's end: its exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


def worker_audit_path(path: str, index: int) -> str:
    """Worker ``index``'s audit file: ``audit.jsonl`` → ``audit.0.jsonl``."""
    file = Path(path)
    return str(file.with_name(f"{file.stem}.{index}{file.suffix}"))


def _child(config: Config, index: int) -> NoReturn:
    """Run one worker's server; never returns (``os._exit``, so no parent cleanup runs twice)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)  # the server installs its own once started
    code = 1
    try:
        structlog.contextvars.bind_contextvars(worker=index)
        # prometheus_client chooses how values are stored (memory or multiprocess files)
        # when it is imported, which the CLI did before PROMETHEUS_MULTIPROC_DIR was set.
        # Metrics read values.ValueClass when they are created: choose again, here, so the
        # files are this child's (they are named by its pid).
        prometheus_values.ValueClass = prometheus_values.get_value_class()
        from ..service.startup import serve

        # The parent serves /metrics for every worker; each worker rotates its own audit file
        # (two processes renaming one file would lose records).
        audit = config.audit
        if audit.path:
            audit = dataclasses.replace(audit, path=worker_audit_path(audit.path, index))
        serve(dataclasses.replace(config, metrics=MetricsSection(listen=""), audit=audit))
        code = 0
    except BaseException as error:  # noqa: BLE001 (a worker reports any end, then exits)
        log.error("worker_failed", error=f"{type(error).__name__}: {error}")
    finally:
        flush_audit()  # os._exit runs no exit handler
        sys.stdout.flush()
        os._exit(code)


def serve_workers(config: Config) -> int:
    """Fork ``server.workers`` servers on one port and supervise them; their exit status."""
    directory = tempfile.mkdtemp(prefix="apcv-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    children: dict[int, int] = {}  # pid -> worker index
    stop_signal: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stop_signal.append(signum)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # ended, not yet reaped
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.stdout.flush()  # nothing buffered may be written twice by the children
    try:
        for index in range(config.server.workers):
            pid = os.fork()
            if pid == 0:
                _child(config, index)
            children[pid] = index
        return _supervise(config, children, directory, stop_signal)
    finally:
        for pid in children:  # only on an error in the parent itself
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(directory, ignore_errors=True)


def _supervise(
    config: Config, children: dict[int, int], directory: str, stop_signal: list[int]
) -> int:
    """Wait for the children; the first one to end stops the others. Their worst status."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    registry.register(BuildInfoCollector())
    parent = os.getpid()
    registry.register(
        WorkerProcessCollector(
            lambda: {"parent": parent} | {str(index): pid for pid, index in children.copy().items()}
        )
    )
    metrics_http = None
    if config.metrics.listen:
        try:
            metrics_http = start_metrics_server(config.metrics.listen, registry)
        except OSError as error:  # as a single server: metrics are not worth an outage
            log.error("metrics_unavailable", listen=config.metrics.listen, error=str(error))
    log.info(
        "workers_started",
        workers=len(children),
        pids=sorted(children),
        listen=config.server.listen,
        metrics_dir=directory,
        metrics_port=None if metrics_http is None else metrics_http.server_port,
    )
    status = 0
    kill_at: float | None = None
    try:
        while children:
            if stop_signal and kill_at is None:
                kill_at = time.monotonic() + config.server.grace_seconds + KILL_AFTER_GRACE_SECONDS
            if kill_at is not None and time.monotonic() > kill_at:
                for pid in children:
                    log.error("worker_killed", worker=children[pid], pid=pid)
                    os.kill(pid, signal.SIGKILL)
                kill_at = float("inf")
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(POLL_SECONDS)
                continue
            index = children.pop(pid)
            mark_process_dead(pid, directory)
            code = _exit_code(wait_status)
            log.info("worker_exited", worker=index, pid=pid, status=code)
            status = status or code
            if not stop_signal:
                # A worker ended on its own: stop the rest and exit with its status, so the
                # process manager (Kubernetes, systemd) sees the failure and restarts us all.
                log.error("worker_ended_stopping_all", worker=index, status=code)
                signal.raise_signal(signal.SIGTERM)  # runs forward(): same path as a stop
        return status
    finally:
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
