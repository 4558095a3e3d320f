"""Replay stores shared by several workers or replicas: Redis (:mod:`.redis`). The in-process
store is the Rust core's own (:class:`apcv_verify.MemoryReplayStore`)."""
