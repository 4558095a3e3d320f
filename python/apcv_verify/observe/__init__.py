"""What the service tells its operators: Prometheus metrics (:mod:`.metrics`), structured logs
(:mod:`.logs`), the audit trail of every decision (:mod:`.audit`) and, when enabled,
OpenTelemetry traces (:mod:`.tracing`)."""
