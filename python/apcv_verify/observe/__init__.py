"""What the service tells its operators: Prometheus metrics (:mod:`.metrics`), structured logs
(:mod:`.logs`) and the audit trail of every decision (:mod:`.audit`)."""
