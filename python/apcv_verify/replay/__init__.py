"""Replay stores: the in-process one, the Rust core's own (:class:`apcv_verify.MemoryReplayStore`,
made and measured in :mod:`.memory`), and Redis, shared by several workers or replicas
(:mod:`.redis`); answer recovery (:mod:`.answers`)."""
