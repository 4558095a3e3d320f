"""The gRPC service: ``apcv.verify.v1.VerifierService`` with health and reflection.

- :mod:`.servicer` — the servicer, thin: protobuf in, the Rust core's decision out;
- :mod:`.decode` — request deserializers that never raise; :mod:`.messages` — protobuf ↔ core;
- :mod:`.policy` — callers and what each may see; :mod:`.errors` — call errors with details;
- :mod:`.interceptors` — metrics and the exception-to-status mapping;
- :mod:`.startup` — starting and stopping a server (:func:`~.startup.start_server`, ``serve``).
"""
