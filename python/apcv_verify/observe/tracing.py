"""OpenTelemetry tracing, off by default (``tracing.enabled``; docs/operations.md "Tracing").

When on, each call of the server gets a SERVER span (``apcv.verify.v1.VerifierService/Verify``,
…) continuing the caller's W3C ``traceparent`` if it sent one, and each core call a child span
``apcv.verify`` (the core's verification and the replay settlement of a call, a batch or a
stream's micro-batch: the time ``apcv_verification_seconds`` shares among its items). Every
log line written inside a span carries ``trace_id`` and ``span_id``; audit records carry the
call's ``trace_id``.

Everything else is the standard OpenTelemetry SDK configuration, read from the ``OTEL_*``
environment variables: the OTLP exporter (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` ``grpc`` (default) or ``http/protobuf``, headers, TLS,
timeout), the sampler (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``), the batch
processor (``OTEL_BSP_*``), the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``)
and the propagators (``OTEL_PROPAGATORS``); ``OTEL_SDK_DISABLED=true`` turns it off.

Off, nothing of OpenTelemetry is imported (it is the optional ``tracing`` extra) and the
service pays one test of a module global per core call and per log line. Span attributes are
method names, status codes and item counts: never request ids, reader ids or presentation
data (docs/profile.md §9).
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

__all__ = [
    "CORE_SPAN",
    "Tracing",
    "add_trace_ids",
    "configure_tracing",
    "core_span",
    "current_tracing",
    "shutdown_tracing",
    "trace_fields",
]

#: The name of the span of one core call (with its replay settlement).
CORE_SPAN = "apcv.verify"
#: The instrumentation scope of every span of this service.
SCOPE = "apcv_verify"


class Tracing:
    """A tracer provider with its exporter, and the tracer the service uses."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(SCOPE)
        self._trace = trace

    def trace_fields(self) -> dict[str, str] | None:
        """``trace_id`` and ``span_id`` (hex) of the current span, None outside any span."""
        context = self._trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


#: The tracing in force (None: off, the default).
_tracing: Tracing | None = None


def current_tracing() -> Tracing | None:
    return _tracing


def _disabled_by_environment() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _otlp_exporter() -> SpanExporter:
    """The OTLP span exporter of ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, as the Python SDK's own default, or
    ``http/protobuf``); each reads its endpoint, headers and TLS settings from ``OTEL_*``."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (grpc, http/protobuf)"
    )


def configure_tracing(
    enabled: bool, *, exporter: SpanExporter | None = None, batch: bool = True
) -> Tracing | None:
    """Turn tracing on for this process when ``enabled`` (and ``OTEL_SDK_DISABLED`` is not
    true): spans go to ``exporter``, by default the OTLP exporter configured by ``OTEL_*``,
    through a batch processor (``batch=False``: exported as each span ends, for tests).
    Off: nothing is imported. Raises ImportError naming the extra when the SDK is missing."""
    global _tracing
    if not enabled or _disabled_by_environment():
        _tracing = None
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as error:
        raise ImportError(
            "tracing.enabled needs the OpenTelemetry SDK: pip install 'apcv-verify[tracing]'"
        ) from error
    from .metrics import build_info

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    ours: dict[str, str] = {SERVICE_VERSION: build_info()["version"]}
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        ours[SERVICE_NAME] = "apcv-verify"
    provider = TracerProvider(resource=resource.merge(Resource(ours)))  # OTEL_TRACES_SAMPLER
    exporter = _otlp_exporter() if exporter is None else exporter
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _tracing = Tracing(provider)
    return _tracing


def shutdown_tracing() -> None:
    """Export what is buffered and stop (at shutdown); tracing is off afterwards."""
    global _tracing
    tracing, _tracing = _tracing, None
    if tracing is not None:
        tracing.provider.shutdown()


def core_span(method: str, items: int, seconds: float) -> None:
    """Record the span of one core call that ended now and took ``seconds`` for ``items``
    presentations, as a child of the current (call) span. Nothing when tracing is off."""
    tracing = _tracing
    if tracing is None:
        return
    end = time.time_ns()
    span = tracing.tracer.start_span(
        CORE_SPAN,
        start_time=end - int(seconds * 1e9),
        attributes={"apcv.method": method, "apcv.items": items},
    )
    span.end(end_time=end)


def trace_fields() -> dict[str, str] | None:
    """The current span's ids for a log record, None when tracing is off or outside a span."""
    tracing = _tracing
    return None if tracing is None else tracing.trace_fields()


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` of the current span, if any."""
    tracing = _tracing
    if tracing is not None:
        fields = tracing.trace_fields()
        if fields is not None:
            event_dict.update(fields)
    return event_dict
