"""``apcv-verify config --template``: a commented configuration file to start from.

Every key of every section is there with its default value, taken from the configuration
dataclasses (``{}`` below is replaced by the default), so the template cannot
drift from the code: loaded as it is, it is the default configuration, except that
``trust.anchors`` and ``trust.trust_list`` have no default and must be filled in.
"""

from __future__ import annotations

import re

from ..config import Config
from .config_print import toml_value

__all__ = ["config_template"]

_TEMPLATE = """\
# apcv-verify configuration: `apcv-verify serve --config FILE`.
# Every key below shows its default; delete the ones you keep as they are.
# Each key can be overridden by an environment variable APCV_<SECTION>_<KEY>
# (server.max_batch -> APCV_SERVER_MAX_BATCH) and some by serve's flags:
# defaults < this file < environment < flags. `apcv-verify config --print --config FILE`
# shows the result. Relative paths in [trust], [tls] and audit.path are relative to this file.

[server]
listen = {}  # HOST:PORT; port 0 picks a free port
health_listen = {}  # plaintext, health service only; "" = off
# Largest message accepted or sent, in bytes: a whole VerifyBatch must fit (a QR code of
# 1,600 characters takes about 1.7 kB, so the default holds max_batch of them), and so must
# a VerifyStream request of several scans. A request of one scan (Verify, a VerifyStream
# request with scan) is at most 64 KiB whatever this says.
max_message_bytes = {}
max_batch = {}  # most scans in one VerifyBatch or VerifyStream request
stream_window = {}  # VerifyStream: requests read ahead of answers
grace_seconds = {}  # SIGTERM: open calls get this long
max_concurrent_rpcs = {}  # then RESOURCE_EXHAUSTED; health apart; 0 = no limit
max_streams_per_connection = {}  # calls open on one connection; 0 = no limit
max_streams_per_caller = {}  # per client CN (mTLS) or peer IP; 0 = no limit
max_pending_calls = {}  # calls waiting for the process; then CANCELLED; 0 = gRPC's bound
stream_idle_seconds = {}  # VerifyStream without a request: UNAVAILABLE; 0 = never
stream_memory_bytes = {}  # stream requests read ahead, all streams; 0 = no budget
keepalive_time_seconds = {}  # server pings each connection
keepalive_timeout_seconds = {}  # no ping answer: connection closed
keepalive_min_ping_interval_seconds = {}  # clients pinging more: GOAWAY
keepalive_permit_without_calls = {}  # idle readers stay connected
max_connection_age_seconds = {}  # GOAWAY, streams rebalance; 0 = never
max_connection_age_grace_seconds = {}  # then streams end UNAVAILABLE
workers = {}  # processes on the port; >1 needs redis
event_loop = {}  # "uvloop" or "asyncio" (the standard library's)
grpc_experiments = {}  # gRPC's GRPC_EXPERIMENTS; "" = gRPC's defaults

[trust]
# REQUIRED: trust anchor public keys, PEM or COSE_Key files (files only: out of band).
anchors = {}
# REQUIRED: the signed trust list, a file or an http(s):// URL.
trust_list = {}
status_lists = {}  # files or http(s):// URLs
refresh_seconds = {}  # refresh of both lists; 0 = load once
http_timeout_seconds = {}  # one fetch, first to last byte
http_tls_ca = {}  # https: CA(s) of the list servers; "": the system's
http_tls_cert = {}  # https: client certificate, for list servers asking one
http_tls_key = {}  # https: its key (with http_tls_cert)
expired_grace_seconds = {}  # held trust list past exp: then refused

[policy]
allow_test_identities = {}  # INS test/demo OIDs: never in production
clock_skew_seconds = {}  # tolerated phone clock difference
status_grace_seconds = {}  # use a status list this long past exp

[replay]
backend = {}  # "redis" for several replicas or workers
max_entries = {}  # memory store bound (full: REPLAY_UNAVAILABLE)
# redis (>= 7): redis://[[user]:password@]host:port/db, rediss:// (TLS) or unix:///path;
# Sentinel: redis+sentinel://[[user]:password@]host:port[,host:port...]/<master name>[/db];
# Cluster: redis+cluster://[[user]:password@]host:port[,host:port...] (rediss+...: TLS).
# Pass a password through APCV_REPLAY_REDIS_URL rather than this file.
redis_url = {}
# Sentinels with their own requirepass: their password (APCV_REPLAY_REDIS_SENTINEL_PASSWORD).
redis_sentinel_password = {}
redis_sentinel_username = {}  # the sentinels' ACL user of that password; "": default
redis_tls_ca = {}  # rediss: CA(s) of the Redis certificates; "": the system's
redis_tls_cert = {}  # rediss: client certificate, for tls-auth-clients yes
redis_tls_key = {}  # rediss: its key (with redis_tls_cert)
redis_tls_check_hostname = {}  # false: chain to redis_tls_ca, any name
key_prefix = {}  # keys are prefix + hex(cti)
timeout_seconds = {}  # one Redis round trip (a whole batch)
on_store_error = {}  # Redis down: "reject" (fail closed), "accept"
answer_retention_seconds = {}  # a resend gets the kept answer; 0 = off
answer_max_entries = {}  # memory: bound of the answers kept (full: oldest go)
# Key of the hashes answers are kept under; "": random (memory) or kept in Redis.
# Pass it through APCV_REPLAY_ANSWER_SECRET rather than this file.
answer_secret = {}

[fhir]
# Base URL of the project's own FHIR extensions and naming systems (docs/fhir.md).
canonical_base = {}

[metrics]
listen = {}  # Prometheus GET /metrics; "" = off

[audit]
# HMAC key of the audit records' holder_ref, at least 16 characters (`openssl rand -hex 32`),
# the same on every replica; pass it through APCV_AUDIT_HOLDER_REF_SECRET. Empty: a random
# key per process (references then change at each restart).
holder_ref_secret = {}
# Audit records apart from the logs: a file of JSON lines, rotated by size (relative to this
# file); "" = stdout with the logs ("kind": "audit"). Several workers: one file each.
path = {}
max_bytes = {}  # rotate past this size; 0 = never
backup_count = {}  # rotated files kept (path.1 newest)

[tracing]
# OpenTelemetry spans and trace ids in the logs; the exporter, sampler and resource come from
# the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT...). Needs apcv-verify[tracing].
enabled = {}

[tls]
# TLS is on when server_cert and server_key are set (PEM files); mTLS with client_ca.
server_cert = {}
server_key = {}
client_ca = {}  # mTLS: clients need a certificate from it
require_client_auth = {}  # false: no client certificates (all "anonymous")
# CRLs of the client CAs (PEM or DER): files, read again when they change, or http(s):// URLs
# fetched every trust.refresh_seconds. A certificate its CA's CRL lists is refused, and so are
# all of a CA without a CRL here or past its CRL's nextUpdate.
client_crls = {}

# Callers (the client certificate CN with mTLS, else "anonymous"): without any [[callers]]
# entry every caller may use all four uses with the default disclosure. One entry per caller;
# the keys and their defaults:
# [[callers]]
# id = "*"  # a CN, "anonymous", or "*" for anyone not listed
# uses = ["care", "dmp", "dp", "auth"]
# may_send_scanned_at = false
# max_scan_delay_seconds = 0
# readers = []  # reader ids it may send ("ward-7-*": a prefix, "{caller}": its CN); empty: any
# [callers.disclose]  # per use; a use not listed gets its default:
# care = ["ins", "identity", "amo", "amc"]
# dmp = ["ins", "identity"]
# dp = ["ins", "identity"]
# auth = ["ins"]
"""

#: Where end-of-line comments start, so that they line up whatever the defaults' lengths.
_COMMENT_COLUMN = 40
_SECTION = re.compile(r"^\[(\w+)\]$")
_SETTING = re.compile(r"^(\w+) = \{\}(?:  # (.*))?$")


def config_template() -> str:
    """The template, each ``key = {}`` given the default of that key of its section."""
    defaults = Config()
    section = ""
    lines = []
    for line in _TEMPLATE.splitlines():
        if heading := _SECTION.match(line):
            section = heading.group(1)
        elif setting := _SETTING.match(line):
            key, comment = setting.groups()
            line = f"{key} = {toml_value(getattr(getattr(defaults, section), key))}"
            if comment:
                line = f"{line:<{_COMMENT_COLUMN - 1}} # {comment}"
        lines.append(line)
    return "\n".join(lines) + "\n"
