"""The Helm chart helm/apcv-verify, offline: lint, rendering, Kubernetes schemas, its config.

Every rendered manifest (defaults and each ci/*-values.yaml) is validated against the
Kubernetes API schemas bundled by kubernetes-validate; the conditional parts are checked by
rendering assertions; the ConfigMap's config.toml is loaded by the server's own loader with
the files and environment the pod would have.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate  # type: ignore[import-untyped]  # no stubs or py.typed upstream
import pytest
import yaml
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import Config, ConfigError, load_config
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import (
    REPO,
    SERVER_LOGS,
    free_port,
    scrape_text,
    start_server,
    stop_server,
    wait_serving,
)
from .test_client_crl import crl
from .test_tls import CertificateAuthority, serve_tls

CHART = REPO / "helm" / "apcv-verify"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native gRPC probes).
KUBE_VERSIONS = ("1.27", str(kubernetes_validate.latest_version()))
#: Kinds of the prometheus-operator CRDs: not in the Kubernetes schemas, checked by hand.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
#: Keys of config.toml that the chart writes itself (from containerPorts, trust, redis, tls,
#: audit and metrics values); every other key of the server's Config is under `config`.
CHART_MANAGED = {
    "server.listen",
    "server.health_listen",
    "trust.anchors",
    "trust.trust_list",
    "trust.status_lists",
    "trust.http_tls_ca",
    "trust.http_tls_cert",
    "trust.http_tls_key",
    "replay.redis_url",
    "replay.redis_sentinel_password",
    "replay.redis_sentinel_username",
    "replay.redis_tls_ca",
    "replay.redis_tls_cert",
    "replay.redis_tls_key",
    "replay.redis_tls_check_hostname",
    "metrics.listen",
    "audit.holder_ref_secret",
    "replay.answer_secret",
    "tls.server_cert",
    "tls.server_key",
    "tls.client_ca",
    "tls.require_client_auth",
    "tls.client_crls",
}
#: Where the pod mounts `audit.volume` (templates/_helpers.tpl apcv-verify.auditDir).
AUDIT_DIR = "/var/log/apcv-verify"
#: The Grafana dashboard shipped in the chart (metrics.grafanaDashboard).
DASHBOARD_FILE = "apcv-verify.json"
DASHBOARD = CHART / "dashboards" / DASHBOARD_FILE
#: Where the pod mounts the TLS Secret (templates/_helpers.tpl apcv-verify.tlsDir).
TLS_DIR = "/etc/apcv-verify-tls"
REDIS_TLS_DIR = "/etc/apcv-verify-redis-tls"
TRUST_TLS_DIR = "/etc/apcv-verify-trust-tls"
CLIENT_CRL_DIR = "/etc/apcv-verify-client-crls"


@pytest.fixture(scope="session")
def helm() -> str:
    local = REPO / ".tools" / "bin" / "helm"
    found = str(local) if local.exists() else shutil.which("helm")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("helm is missing: `make helm` installs it")
        pytest.skip("helm not installed; run `make helm`")
    return found


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def render(
    helm: str, values: Path | None = None, *sets: str, kube_version: str = KUBE_VERSIONS[-1]
) -> list[dict[str, Any]]:
    # helm template assumes Kubernetes 1.20 offline; the chart needs 1.27 (gRPC probes).
    args = ["template", "apcv", str(CHART), "--namespace", "verify", "--kube-version", kube_version]
    if values is not None:
        args += ["-f", str(values)]
    for item in sets:
        args += ["--set", item]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_error(helm: str, *sets: str) -> str:
    args = ["template", "apcv", str(CHART), "--kube-version", KUBE_VERSIONS[-1]]
    for item in sets:
        args += ["--set", item]
    done = run_helm(helm, *args)
    assert done.returncode != 0, f"rendered with {sets}"
    return done.stderr


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rendered objects by kind (the chart makes at most one of each, plus a test Pod)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        kind = doc["kind"]
        if kind == "ConfigMap" and DASHBOARD_FILE in doc.get("data", {}):
            kind = "GrafanaDashboard"  # the second ConfigMap, metrics.grafanaDashboard
        assert kind not in by_kind, f"two {kind} objects"
        by_kind[kind] = doc
    return by_kind


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = kinds(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(found)


def values_id(values: Path | None) -> str:
    return "defaults" if values is None else values.name


ALL_VALUES = [None, *CI_VALUES]


def test_there_are_ci_values_files() -> None:
    assert len(CI_VALUES) >= 3


def test_kubernetes_older_than_the_grpc_probes_is_refused(helm: str) -> None:
    done = run_helm(helm, "template", "apcv", str(CHART), "--kube-version", "1.26")
    assert done.returncode != 0
    assert "kubeVersion" in done.stderr


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values is not None:
        args += ["-f", str(values)]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_matches_the_kubernetes_schemas(
    helm: str, values: Path | None, kube_version: str
) -> None:
    docs = render(helm, values, kube_version=kube_version)
    assert docs
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
            continue
        # strict: unknown fields are errors, as `kubectl apply --validate=strict` says.
        kubernetes_validate.validate(doc, kube_version, strict=True)


def test_defaults_render_the_hardened_deployment(helm: str) -> None:
    docs = render(helm)
    by_kind = kinds(docs)
    assert set(by_kind) == {
        "ConfigMap", "Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy", "Pod",
    }  # fmt: skip
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    main = container(docs)
    # Restricted Pod Security Standard.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # /tmp is the one writable path.
    writable = [m for m in main["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    # Native gRPC probes on the plaintext health port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"] == {"port": 50052}
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "grpc": 50051, "health": 50052, "metrics": 9464,
    }  # fmt: skip
    # The HPA owns the replica count.
    assert "replicas" not in by_kind["Deployment"]["spec"]
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2
    # Spread over zones and nodes.
    keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    # Longer than the server's grace and the preStop sleep.
    config = tomllib.loads(by_kind["ConfigMap"]["data"]["config.toml"])
    assert pod["terminationGracePeriodSeconds"] > config["server"]["grace_seconds"] + 5
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    # Redis without a password; the NetworkPolicy lets any pod call, egress is open.
    env = {e["name"]: e for e in main["env"]}
    assert env["APCV_REPLAY_REDIS_URL"]["value"] == "redis://apcv-redis-master:6379/0"
    policy = by_kind["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert "from" not in policy["ingress"][0]
    service_ports = {p["name"]: p["port"] for p in by_kind["Service"]["spec"]["ports"]}
    assert service_ports == {"grpc": 50051, "health": 50052, "metrics": 9464}
    assert by_kind["Pod"]["metadata"]["annotations"]["helm.sh/hook"] == "test"


def test_production_values_use_mtls_secrets_and_a_closed_network(helm: str) -> None:
    docs = render(helm, CHART / "ci" / "mtls-redis-values.yaml")
    by_kind = kinds(docs)
    main = container(docs)
    assert main["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    env = {e["name"]: e for e in main["env"]}
    assert env["APCV_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "apcv-redis", "key": "redis-password",
    }  # fmt: skip
    # Kubernetes expands $(VAR) from the variables defined before it.
    names = [e["name"] for e in main["env"]]
    assert names.index("APCV_REDIS_PASSWORD") < names.index("APCV_REPLAY_REDIS_URL")
    assert (
        env["APCV_REPLAY_REDIS_URL"]["value"]
        == "rediss://apcv-verify:$(APCV_REDIS_PASSWORD)@redis-master.redis.svc:6380/2"
    )
    assert env["APCV_AUDIT_HOLDER_REF_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "apcv-audit"
    volumes = {v["name"]: v for v in by_kind["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "apcv-verify-tls"
    assert volumes["redis-tls"]["secret"]["secretName"] == "apcv-redis-tls"
    assert volumes["trust-tls"]["secret"]["secretName"] == "apcv-lists-tls"
    assert volumes["client-crls"]["configMap"]["name"] == "apcv-client-crls"
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts["redis-tls"] == REDIS_TLS_DIR
    assert mounts["trust-tls"] == TRUST_TLS_DIR
    assert mounts["client-crls"] == CLIENT_CRL_DIR
    config = tomllib.loads(by_kind["ConfigMap"]["data"]["config.toml"])
    assert {k: v for k, v in config["replay"].items() if k.startswith("redis_tls_")} == {
        "redis_tls_ca": f"{REDIS_TLS_DIR}/ca.crt",
        "redis_tls_cert": f"{REDIS_TLS_DIR}/tls.crt",
        "redis_tls_key": f"{REDIS_TLS_DIR}/tls.key",
    }
    assert {k: v for k, v in config["trust"].items() if k.startswith("http_tls_")} == {
        "http_tls_ca": f"{TRUST_TLS_DIR}/ca.crt",
        "http_tls_cert": f"{TRUST_TLS_DIR}/tls.crt",
        "http_tls_key": f"{TRUST_TLS_DIR}/tls.key",
    }
    assert config["tls"] == {
        "server_cert": f"{TLS_DIR}/tls.crt",
        "server_key": f"{TLS_DIR}/tls.key",
        "client_ca": f"{TLS_DIR}/ca.crt",
        "client_crls": [
            f"{CLIENT_CRL_DIR}/clients-ca.crl",
            f"{CLIENT_CRL_DIR}/readers-ca.crl",
            "http://pki.chu-nord.example:8080/crl/readers-ca.crl",
        ],
    }
    assert [c["id"] for c in config["callers"]] == ["his-chu-nord", "edge-reader-ward-7", "*"]
    assert config["callers"][0]["disclose"]["dmp"] == ["ins", "identity"]
    assert config["callers"][1]["readers"] == ["ward-7-*"]
    policy = by_kind["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    callers = policy["ingress"][0]["from"]
    assert callers[0] == {"podSelector": {"matchLabels": {"apcv-apcv-verify-client": "true"}}}
    assert callers[1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "his"}
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6380, 8080}  # 8080: the CRL distribution point
    # The helm test pod carries the client label, so it gets through the policy.
    assert by_kind["Pod"]["metadata"]["labels"]["apcv-apcv-verify-client"] == "true"


def test_a_single_memory_replica_has_no_hpa_pdb_metrics_or_probes_turned_off(helm: str) -> None:
    docs = render(helm, CHART / "ci" / "single-memory-values.yaml")
    by_kind = kinds(docs)
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount"} & set(by_kind)
    deployment = by_kind["Deployment"]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["template"]["spec"]["serviceAccountName"] == "apcv-verifier"
    assert "topologySpreadConstraints" not in deployment["template"]["spec"]
    main = container(docs)
    assert "startupProbe" not in main and "livenessProbe" not in main
    assert main["readinessProbe"]["grpc"]["port"] == 50052
    assert "lifecycle" not in main
    assert "metrics" not in {p["name"] for p in main["ports"]}
    assert not any(e["name"].startswith("APCV_REPLAY") for e in main.get("env") or [])
    config = tomllib.loads(by_kind["ConfigMap"]["data"]["config.toml"])
    assert config["metrics"]["listen"] == ""
    assert config["tls"]["require_client_auth"] is False
    assert "client_ca" not in config["tls"]


def test_monitoring_objects_only_when_enabled(helm: str) -> None:
    assert not OPERATOR_KINDS & set(kinds(render(helm)))
    docs = render(helm, CHART / "ci" / "monitoring-values.yaml")
    by_kind = kinds(docs)
    monitor = by_kind["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    rules = by_kind["PrometheusRule"]["spec"]["groups"][0]["rules"]
    assert {
        "ApcvStatusListStale", "ApcvNotServing", "ApcvCallErrorRatio", "ApcvLatencySLO",
        "ApcvCallsRefusedByLimits", "ApcvReplayStoreErrors", "ApcvReplayStoreLost",
        "ApcvReplayStoreFilling", "ApcvCallsNotTaken", "ApcvCallerRefused",
    } <= {r["alert"] for r in rules}  # fmt: skip
    not_taken = next(r for r in rules if r["alert"] == "ApcvCallsNotTaken")
    assert not_taken["expr"].endswith("> 0.01")
    filling = next(r for r in rules if r["alert"] == "ApcvReplayStoreFilling")
    assert filling["expr"].endswith("> 0.8")
    assert rules[-1]["alert"] == "ApcvNoReplicaReady"
    # Thresholds from the values, and every expression scoped to the release's job.
    slo = next(r for r in rules if r["alert"] == "ApcvLatencySLO")
    assert slo["expr"].endswith("> 0.25")
    assert all('job="apcv-apcv-verify"' in r["expr"] for r in rules[:-1])
    dashboard = by_kind["GrafanaDashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Verification"}
    assert json.loads(dashboard["data"][DASHBOARD_FILE]) == json.loads(DASHBOARD.read_text())
    assert by_kind["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,
        "selector": by_kind["PodDisruptionBudget"]["spec"]["selector"],
    }
    constraints = by_kind["Deployment"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["whenUnsatisfiable"] for c in constraints] == ["DoNotSchedule"]
    # Metrics off: no ServiceMonitor even when asked for.
    off = kinds(render(helm, None, "metrics.enabled=false", "metrics.serviceMonitor.enabled=true"))
    assert "ServiceMonitor" not in off


def test_an_audit_file_gets_its_volume(helm: str) -> None:
    """config.audit.path: the audit file on `audit.volume`, mounted at /var/log/apcv-verify;
    stdout (the default) mounts nothing. A path elsewhere is refused (read-only root)."""
    assert "audit" not in {m["name"] for m in container(render(helm))["volumeMounts"]}
    path = "config.audit.path=/var/log/apcv-verify/audit.jsonl"
    docs = render(helm, None, path, "audit.volume.persistentVolumeClaim.claimName=audit")
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["audit"]["mountPath"] == "/var/log/apcv-verify"
    volumes = {
        v["name"]: v for v in kinds(docs)["Deployment"]["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["audit"]["persistentVolumeClaim"] == {"claimName": "audit"}
    config = tomllib.loads(kinds(docs)["ConfigMap"]["data"]["config.toml"])
    assert config["audit"] == {
        "path": "/var/log/apcv-verify/audit.jsonl", "max_bytes": 104857600, "backup_count": 10,
    }  # fmt: skip
    assert config["tracing"] == {"enabled": False}
    assert re.search(r"/config/audit/path", render_error(helm, "config.audit.path=/tmp/a.jsonl"))


def test_a_changed_config_rolls_the_pods(helm: str) -> None:
    def checksum(*sets: str) -> str:
        deployment = kinds(render(helm, None, *sets))["Deployment"]
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("config.policy.clock_skew_seconds=30")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("unknown=1",), r"additional properties 'unknown' not allowed"),
        (("config.server.listen=0.0.0.0:1",), r"additional properties 'listen' not allowed"),
        (("config.replay.backend=disk",), r"/config/replay/backend': value must be one of"),
        (("config.replay.backend=memory",), r"\"memory\" is per process"),
        (("terminationGracePeriodSeconds=12",), r"terminationGracePeriodSeconds \(12\)"),
        (("tls.enabled=true",), r"tls\.existingSecret: required"),
        (("trust.trustListUrl=ftp://lists/x",), r"/trust/trustListUrl'"),
        (("redis.url=redis://user:pw@redis:6379",), r"/redis/url'"),
        (("redis.username=apcv",), r"redis\.username: needs its password"),
        (("redis.sentinelAuth=true",), r"redis\.sentinelAuth: needs a redis\+sentinel://"),
        (("redis.sentinelUsername=apcv",), r"redis\.sentinelUsername: needs redis\.sentinelAuth"),
        (("redis.tls.checkHostname=false",), r"redis\.tls\.checkHostname: false needs"),
        (
            ("redis.tls.existingSecret=redis-tls",),
            r"redis\.tls\.existingSecret: needs a TLS redis\.url",
        ),
        (
            (
                "trust.tls.existingSecret=lists-tls",
                "trust.trustListUrl=http://lists/trust-list.cose",
                "trust.statusListUrls={http://lists/amo-1.cwt}",
            ),
            r"trust\.tls\.existingSecret: needs an https://",
        ),
        (("trust.tls.clientCertificate=true",), r"trust\.tls\.clientCertificate: needs"),
        (
            (
                "tls.enabled=true",
                "tls.existingSecret=tls",
                "tls.clientCrls.configMap=crls",
                "tls.clientAuth=false",
            ),
            r"tls\.clientCrls: needs mTLS",
        ),
        (
            ("config.callers[0].id=edge", "config.callers[0].readers={ward-*-1}"),
            r"/config/callers/0/readers/0': '.*' does not match",
        ),
    ],
)
def test_bad_values_are_refused(helm: str, sets: tuple[str, ...], message: str) -> None:
    assert re.search(message, render_error(helm, *sets), re.IGNORECASE)


def test_reader_ids_may_name_the_caller_and_nothing_else(helm: str, tmp_path: Path) -> None:
    """``{caller}`` in a caller's readers reaches the server's config; another name in
    braces is refused at render, as the server would refuse it at start."""
    values = tmp_path / "fleet.yaml"
    fleet = {"id": "*", "readers": ["{caller}", "{caller}/*"]}
    values.write_text(yaml.safe_dump({"config": {"callers": [fleet]}}))
    config = tomllib.loads(kinds(render(helm, values))["ConfigMap"]["data"]["config.toml"])
    assert config["callers"] == [fleet]
    fleet["readers"] = ["{cn}/*"]
    values.write_text(yaml.safe_dump({"config": {"callers": [fleet]}}))
    args = ["template", "apcv", str(CHART), "--kube-version", KUBE_VERSIONS[-1], "-f", str(values)]
    done = run_helm(helm, *args)
    assert done.returncode != 0
    assert re.search(r"/config/callers/0/readers/0': '.*' does not match", done.stderr)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://sentinel-0.redis:26379,sentinel-1.redis:26379/apcv/2",
        "rediss+cluster://redis-0.redis:6379,redis-1.redis:6379",
    ],
)
def test_redis_sentinel_and_cluster_urls_take_the_password(helm: str, url: str) -> None:
    """docs/operations.md "Redis topologies": the chart passes the URL with the password from
    the Secret (tests/test_config.py: the server accepts these URLs)."""
    sets = (f"redis.url={url.replace(',', chr(92) + ',')}", "redis.existingSecret=apcv-redis")
    env = {e["name"]: e for e in container(render(helm, None, *sets))["env"]}
    scheme, rest = url.split("://")
    rendered = env["APCV_REPLAY_REDIS_URL"]["value"]
    assert rendered == f"{scheme}://:$(APCV_REDIS_PASSWORD)@{rest}"


def test_memory_backend_is_allowed_for_one_replica_only(helm: str) -> None:
    sets = ("config.replay.backend=memory", "autoscaling.enabled=false", "replicaCount=1")
    assert kinds(render(helm, None, *sets))["Deployment"]["spec"]["replicas"] == 1
    render_error(helm, *sets[:2], "replicaCount=2")


def test_values_cover_every_server_config_key() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    covered = {
        f"{section}.{key}"
        for section, keys in values["config"].items()
        if section != "callers"
        for key in keys
    } | CHART_MANAGED
    defaults = Config()
    expected = {
        f"{section.name}.{item.name}"
        for section in dataclasses.fields(Config)
        if section.name != "callers"
        for item in dataclasses.fields(getattr(defaults, section.name))
    }
    assert covered == expected


def pod_environment(main: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: Secret references resolved and
    $(VAR) references expanded from the variables defined before."""
    environ: dict[str, str] = {}
    for item in main.get("env") or []:
        if "valueFrom" in item:
            value = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
        else:
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda ref: environ.get(ref[1], ref[0]),
                item["value"],
            )
        environ[item["name"]] = value
    return environ


def mount_config(docs: list[dict[str, Any]], root: Path) -> Path:
    """Write the ConfigMap, the TLS Secrets' files and the client CRLs as the pod mounts
    them, under root."""
    config_map = kinds(docs)["ConfigMap"]["data"]
    config_dir = root / "etc" / "apcv-verify"
    config_dir.mkdir(parents=True)
    for name, text in config_map.items():
        (config_dir / name).write_text(text)
    tls_dir = root / TLS_DIR.lstrip("/")
    redis_tls_dir = root / REDIS_TLS_DIR.lstrip("/")
    trust_tls_dir = root / TRUST_TLS_DIR.lstrip("/")
    for directory in (tls_dir, redis_tls_dir, trust_tls_dir):
        directory.mkdir(parents=True)
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (directory / name).write_text("mounted from a TLS Secret\n")
    audit_dir = root / AUDIT_DIR.lstrip("/")
    audit_dir.mkdir(parents=True)  # the audit volume
    config = config_dir / "config.toml"
    crl_dir = root / CLIENT_CRL_DIR.lstrip("/")
    crl_dir.mkdir(parents=True)
    for name in re.findall(rf'"{CLIENT_CRL_DIR}/([^"]+)"', config.read_text()):
        (crl_dir / name).write_text("mounted from the CRLs' ConfigMap\n")
    # The mount points, under root.
    text = config.read_text().replace(f'"{TLS_DIR}/', f'"{tls_dir}/')
    text = text.replace(f'"{CLIENT_CRL_DIR}/', f'"{crl_dir}/')
    text = text.replace(f'"{REDIS_TLS_DIR}/', f'"{redis_tls_dir}/')
    text = text.replace(f'"{TRUST_TLS_DIR}/', f'"{trust_tls_dir}/')
    config.write_text(text.replace(f'"{AUDIT_DIR}/', f'"{audit_dir}/'))
    return config


SECRETS = {"redis-password": "s3cret-Pw", "holder-ref-secret": "0123456789abcdef0123456789abcdef"}


@pytest.mark.parametrize("values", CI_VALUES, ids=values_id)
def test_the_rendered_config_loads_in_the_server(helm: str, values: Path, tmp_path: Path) -> None:
    docs = render(helm, values)
    main = container(docs)
    config_path = mount_config(docs, tmp_path)
    assert main["args"] == ["--config", "/etc/apcv-verify/config.toml"]
    chart_values = yaml.safe_load(values.read_text())
    config = load_config(config_path, environ=pod_environment(main, SECRETS))
    assert config.server.listen == "0.0.0.0:50051"
    assert config.server.health_listen == "0.0.0.0:50052"
    assert len(config.trust.anchors) == 1
    assert Path(config.trust.anchors[0]).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert config.trust.trust_list.startswith("https://")
    assert all(url.startswith("https://") for url in config.trust.status_lists)
    if config.replay.backend == "redis":
        secret = chart_values.get("redis", {}).get("existingSecret")
        assert (":s3cret-Pw@" in config.replay.redis_url) == bool(secret)
        user = chart_values.get("redis", {}).get("username", "")
        assert (f"://{user}:s3cret-Pw@" in config.replay.redis_url) == bool(secret)
        redis_tls = chart_values.get("redis", {}).get("tls", {}).get("existingSecret")
        assert config.replay.redis_tls_ca.endswith("/ca.crt") == bool(redis_tls)
    trust_tls = chart_values.get("trust", {}).get("tls", {})
    assert config.trust.http_tls_ca.endswith("/ca.crt") == bool(trust_tls.get("existingSecret"))
    assert config.trust.http_tls_cert.endswith("/tls.crt") == bool(
        trust_tls.get("clientCertificate")
    )
    if chart_values.get("audit", {}).get("existingSecret"):
        assert config.audit.holder_ref_secret == SECRETS["holder-ref-secret"]
    for section, keys in chart_values.get("config", {}).items():
        if section == "callers":
            assert [c.id for c in config.callers] == [c["id"] for c in keys]
            continue
        for key, value in keys.items():
            found = getattr(getattr(config, section), key)
            if (section, key) == ("audit", "path"):  # mounted under tmp_path here
                found = AUDIT_DIR + found.rpartition(AUDIT_DIR)[2]
            assert found == value, f"{section}.{key}"
    assert config.tls.enabled == chart_values.get("tls", {}).get("enabled", False)
    crls = chart_values.get("tls", {}).get("clientCrls", {})
    assert [Path(path).name for path in config.tls.client_crls] == (
        crls.get("keys", ["ca.crl"]) if crls.get("configMap") else []
    ) + [Path(url).name for url in crls.get("urls", [])]


def test_the_default_config_asks_for_a_trust_anchor(helm: str, tmp_path: Path) -> None:
    """Without trust.anchors the server stops at start naming the key (NOTES.txt warns too)."""
    docs = render(helm)
    config_path = mount_config(docs, tmp_path)
    environ = pod_environment(container(docs), SECRETS)
    with pytest.raises(ConfigError, match=r"trust\.anchors: at least one trust anchor"):
        load_config(config_path, environ=environ)
    anchored = render(helm, None, "trust.anchors[0]=-----BEGIN PUBLIC KEY-----\nAAAA\n")
    (tmp_path / "anchored").mkdir()
    config = load_config(mount_config(anchored, tmp_path / "anchored"), environ=environ)
    assert config.replay.backend == "redis"
    assert config.server.max_message_bytes == 2 * 1024 * 1024
    assert config.replay.timeout_seconds == 0.5


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


def test_a_server_started_from_the_rendered_chart_verifies(
    helm: str, pki: DemoPKI, tmp_path: Path
) -> None:
    """The whole path: the chart's ConfigMap and environment, the lists fetched from URLs as in
    a cluster (here from loopback), the probes' health port, then a verification."""
    lists = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(pki.directory))
    )
    threading.Thread(target=lists.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{lists.server_address[1]}"
    status_urls = ",".join(
        f"{base}/{path.relative_to(pki.directory)}" for path in pki.status_list_paths.values()
    )
    grpc_port, health_port = free_port(), free_port()
    args = ["template", "apcv", str(CHART), "--kube-version", KUBE_VERSIONS[-1]]
    for item in (
        f"containerPorts.grpc={grpc_port}",
        f"containerPorts.health={health_port}",
        "metrics.enabled=false",
        "autoscaling.enabled=false",
        "replicaCount=1",
        "config.replay.backend=memory",
        "config.policy.allow_test_identities=true",
        f"trust.trustListUrl={base}/{pki.trust_list_path.relative_to(pki.directory)}",
        f"trust.statusListUrls={{{status_urls}}}",
    ):
        args += ["--set", item]
    args += ["--set-file", f"trust.anchors[0]={pki.directory / 'anchor.pem'}"]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    config_path = mount_config(docs, tmp_path / "pod")
    log_path = tmp_path / "server.log"
    SERVER_LOGS.append(log_path)
    # The container's arguments, with the pod's mount point replaced by the test's copy.
    serve_args = [
        str(config_path) if arg == "/etc/apcv-verify/config.toml" else arg
        for arg in container(docs)["args"]
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "apcv_verify.cli", "serve", *serve_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **pod_environment(container(docs), SECRETS)},
        )
    try:
        wait_serving(f"127.0.0.1:{health_port}", process)
        scan = verifier_pb2.Scan(request_id="c-1", qr_text=qr_text(pki.present("alice")))
        scan.reader.reader_id = "desk-1"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            verdict = stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10).verdict
        assert verifier_pb2.Decision.Name(verdict.decision) == "DECISION_ACCEPTED"
    finally:
        process.terminate()
        process.wait(timeout=30)
        lists.shutdown()
        lists.server_close()


#: Metric names in PromQL expressions: this service's, gRPC's and the process/Python ones.
METRIC_NAME = re.compile(r"\b(?:apcv|grpc_server|process|python)_[a-z0-9_]+\b")
#: The series names a metric family of each type exposes.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
    "summary": ("", "_sum", "_count"),
}


def served_names(text: str) -> set[str]:
    """Every series name of an exposition, those of families without any series yet included
    (a labelled counter before its first increment shows only its HELP and TYPE lines)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names |= {family + suffix for suffix in SUFFIXES.get(kind, ("",))}
            if kind == "counter" and family.endswith("_total"):
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_and_alert_metrics(helm: str) -> dict[str, set[str]]:
    """The metric names each panel of the dashboard and each alert of the chart reads."""
    used: dict[str, set[str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            used.setdefault(f"panel {panel['title']!r}", set()).update(
                METRIC_NAME.findall(target["expr"])
            )
    docs = render(helm, None, "metrics.prometheusRule.enabled=true")
    for rule in kinds(docs)["PrometheusRule"]["spec"]["groups"][0]["rules"]:
        used[f"alert {rule['alert']}"] = set(METRIC_NAME.findall(rule["expr"]))
    return used


@pytest.mark.slow
def test_every_metric_of_the_dashboard_and_the_alerts_is_served(
    helm: str, pki: DemoPKI, tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real servers, each call kind made once, /metrics scraped: every name a panel or an alert
    uses must be there, or it would show nothing and never fire. With the Redis replay store,
    as the chart deploys several replicas, and with the in-process one, as it may deploy one
    (its gauges are that backend's)."""
    used = dashboard_and_alert_metrics(helm)
    assert all(used.values()), [what for what, names in used.items() if not names]
    served: set[str] = set()

    def metrics_port() -> int:
        # Drawn just before each start: a port drawn once and left unbound between servers
        # may be handed to the next server's gRPC port (seen in a CI run: /metrics answered
        # in HTTP/2).
        port = free_port()
        monkeypatch.setenv("APCV_METRICS_LISTEN", f"127.0.0.1:{port}")
        return port

    for backend in ("redis", "memory"):
        port = metrics_port()
        monkeypatch.setenv("APCV_REPLAY_BACKEND", backend)
        monkeypatch.setenv("APCV_REPLAY_REDIS_URL", redis_server.url if backend == "redis" else "")
        log = tmp_path / f"server-{backend}.log"
        server = start_server(pki.directory, log, "--allow-test-identities")
        try:
            scans = [
                verifier_pb2.Scan(
                    request_id=f"d-{index}",
                    qr_text=qr_text(pki.present("alice")),
                    reader=verifier_pb2.ReaderContext(reader_id="desk-1"),
                )
                for index in range(3)
            ]
            with server.channel() as channel:
                stub = verifier_pb2_grpc.VerifierServiceStub(channel)
                stub.Verify(verifier_pb2.VerifyRequest(scan=scans[0]), timeout=10)
                stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(scans=scans[1:2]), timeout=10)
                requests = iter([verifier_pb2.VerifyStreamRequest(scan=scans[2])])
                assert len(list(stub.VerifyStream(requests, timeout=10))) == 1
            served |= served_names(scrape_text(port))
        finally:
            stop_server(server)
    # With mTLS on the gRPC port, as the production values have it: its certificate's expiry
    # and its client CRLs' next update.
    (tmp_path / "tls").mkdir()
    ca = CertificateAuthority()
    (tmp_path / "tls" / "ca.crl").write_bytes(crl(ca))
    port = metrics_port()
    server = serve_tls(pki, tmp_path / "tls", ca, tls='client_crls = ["ca.crl"]')
    try:
        served |= served_names(scrape_text(port))
    finally:
        stop_server(server)
    missing = {what: sorted(names - served) for what, names in used.items() if names - served}
    assert not missing


def test_sentinels_asking_for_the_password_get_it_from_the_same_secret(helm: str) -> None:
    url = "redis+sentinel://sentinel-0.redis:26379\\,sentinel-1.redis:26379/mymaster"
    sets = (f"redis.url={url}", "redis.existingSecret=apcv-redis", "redis.sentinelAuth=true")
    env = {e["name"]: e for e in container(render(helm, None, *sets))["env"]}
    assert env["APCV_REPLAY_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "apcv-redis",
        "key": "redis-password",
    }
    without = {e["name"] for e in container(render(helm, None, *sets[:2]))["env"]}
    assert "APCV_REPLAY_REDIS_SENTINEL_PASSWORD" not in without
    assert "APCV_REPLAY_REDIS_SENTINEL_USERNAME" not in env
    as_user = container(render(helm, None, *sets, "redis.sentinelUsername=apcv-sentinel"))
    variables = {e["name"]: e for e in as_user["env"]}
    assert variables["APCV_REPLAY_REDIS_SENTINEL_USERNAME"]["value"] == "apcv-sentinel"


def test_ipv6_clusters_bind_every_port_to_any_ipv6_address(helm: str, tmp_path: Path) -> None:
    """``listenAddress: "::"``: the ports of an IPv6-only or dual-stack pod, as the server
    reads them (tests/test_listen.py: such a server answers on both families)."""
    docs = render(helm, CHART / "ci" / "monitoring-values.yaml", "listenAddress=::")
    config = load_config(
        mount_config(docs, tmp_path), environ=pod_environment(container(docs), SECRETS)
    )
    assert (config.server.listen, config.server.health_listen, config.metrics.listen) == (
        "[::]:50051",
        "[::]:50052",
        "[::]:9464",
    )
    assert re.search(
        r"/listenAddress': value must be one of", render_error(helm, "listenAddress=::1")
    )


def test_redis_cluster_nodes_announcing_ips_can_skip_the_name_check(
    helm: str, tmp_path: Path
) -> None:
    """``redis.tls.checkHostname: false`` (Redis Cluster nodes reached at pod IPs): the
    certificates are still checked against the Secret's CA, which the server requires then."""
    values = CHART / "ci" / "mtls-redis-values.yaml"
    docs = render(helm, values, "redis.tls.checkHostname=false")
    config = load_config(
        mount_config(docs, tmp_path), environ=pod_environment(container(docs), SECRETS)
    )
    assert config.replay.redis_tls_check_hostname is False
    assert config.replay.redis_tls_ca.endswith("/ca.crt")
    default = tomllib.loads(kinds(render(helm, values))["ConfigMap"]["data"]["config.toml"])
    assert "redis_tls_check_hostname" not in default["replay"]


def test_a_closed_egress_lets_through_the_ports_of_the_list_and_redis_urls(helm: str) -> None:
    """With ``allowExternalEgress: false``, a list mirror on another port than 443 (or on
    http://) and the sentinels of a Sentinel URL are reached: their ports are let through."""
    sets = (
        "networkPolicy.allowExternalEgress=false",
        "trust.trustListUrl=http://mirror.internal/trust-list.cose",
        "trust.statusListUrls={https://mirror.internal:8443/amo-1.cwt}",
        "redis.url=redis+sentinel://s1.redis:26380\\,s2.redis/apcv",
    )
    policy = kinds(render(helm, None, *sets))["NetworkPolicy"]["spec"]
    lists, replay = ({p["port"] for p in rule["ports"]} for rule in policy["egress"][1:3])
    assert lists == {80, 8443}
    assert replay == {6379, 26380, 26379}  # redisPort, then each sentinel's (default 26379)


def test_a_headless_service_gives_clients_every_ready_pod(helm: str) -> None:
    """``service.headless``: ``<fullname>-headless``, without a cluster IP, on the gRPC port,
    selecting the pods (tests/test_listen.py: a client's round_robin over such a name)."""
    services = [d for d in render(helm, None, "service.headless=true") if d["kind"] == "Service"]
    headless = next(s for s in services if s["metadata"]["name"] == "apcv-apcv-verify-headless")
    main = next(s for s in services if s["metadata"]["name"] == "apcv-apcv-verify")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == main["spec"]["selector"]
    assert [(p["name"], p["port"]) for p in headless["spec"]["ports"]] == [("grpc", 50051)]
    assert [d["kind"] for d in render(helm)].count("Service") == 1
    kubernetes_validate.validate(headless, KUBE_VERSIONS[-1], strict=True)
