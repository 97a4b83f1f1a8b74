"""The Helm chart, rendered by a real helm and checked on the parsed manifests.

helm comes from $HELM or .tools/helm (`make helm` fetches it); without it these
tests skip. Core kinds are validated against the Kubernetes API schemas
(kubernetes-validate); the CRDs it has no schema for (ExternalSecret,
ServiceMonitor) are checked field by field here.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import REPO, find_helm

ROOT = REPO
CHART = ROOT / "deploy" / "charts" / "contexis-app"
RELEASE = "demo"
K8S_VERSION = "1.30.0"
CORE_KINDS = {
    "Deployment",
    "Service",
    "Secret",
    "Ingress",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ConfigMap",
    "Job",
}

# The guide's Helm values (docs: Hugging Face integration, "Kubernetes (Helm)").
GUIDE_SECRETS = {"HF_TOKEN": "", "HF_MODEL_ID": "", "HF_ENDPOINT": ""}
GUIDE_EXTERNAL_SECRETS = {
    "enabled": False,
    "secretStoreRef": {"kind": "ClusterSecretStore", "name": "vault"},
    "data": [
        {"secretKey": key, "remoteRef": {"key": "kv/data/contexis", "property": key}}
        for key in ("HF_TOKEN", "HF_MODEL_ID", "HF_ENDPOINT")
    ],
}

SENTINELS = {
    "HF_TOKEN": "hf_SENTINEL_TOKEN",
    "HF_MODEL_ID": "sentinel-org/SENTINEL-MODEL",
    "HF_ENDPOINT": "https://sentinel-endpoint.invalid/models",
}

MEMORY_URL = "postgresql://contexis:SENTINEL_DB_PASSWORD@db.internal:5432/memory"
POSTGRES = ["--set", "memory.backend=postgresql", "--set", f"memory.url={MEMORY_URL}"]
USAGE_URL = "postgresql://contexis:SENTINEL_USAGE_PASSWORD@db.internal:5432/usage"

VALUE_SETS = {
    "defaults": [],
    "postgresql": POSTGRES,
    "postgresql-external-secrets": ["--set", "memory.backend=postgresql", "--set", "externalSecrets.enabled=true"],
    "external-secrets": ["--set", "externalSecrets.enabled=true"],
    "ingress-hpa-servicemonitor": [
        "--set", "ingress.enabled=true",
        "--set", "autoscaling.enabled=true",
        "--set", "serviceMonitor.enabled=true",
    ],
    "usage-postgresql": [
        "--set", "usage.backend=postgresql", "--set", f"usage.url={USAGE_URL}",
        "--set", "usage.budgets.default.usd_per_month=50", "--set", "usage.prices.my-model.input=0.2",
        "--set", "usage.prices.my-model.output=0.6",
    ],
    "operations": [
        "--set", "serviceMonitor.enabled=true",
        "--set", "prometheusRule.enabled=true",
        "--set", "grafanaDashboard.enabled=true",
    ],
}  # fmt: skip
# Lists, not sets: the PostgreSQL backend adds a second Secret (or ExternalSecret) for its migration hook.
EXPECTED_KINDS = {
    "defaults": ["Deployment", "Service", "Secret", "PodDisruptionBudget"],
    "postgresql": ["Deployment", "Service", "Secret", "PodDisruptionBudget", "Secret", "Job"],
    "postgresql-external-secrets": [
        "Deployment",
        "Service",
        "ExternalSecret",
        "PodDisruptionBudget",
        "ExternalSecret",
        "Job",
    ],
    "external-secrets": ["Deployment", "Service", "ExternalSecret", "PodDisruptionBudget"],
    "usage-postgresql": ["Deployment", "Service", "Secret", "PodDisruptionBudget", "Secret", "Job", "ConfigMap"],
    "ingress-hpa-servicemonitor": [
        "Deployment",
        "Service",
        "Secret",
        "PodDisruptionBudget",
        "Ingress",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    ],
    "operations": [
        "Deployment",
        "Service",
        "Secret",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    ],
}


HELM = find_helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not found: set HELM or run `make helm` to fetch .tools/helm")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False, cwd=ROOT)


def render(*args: str) -> list[dict[str, Any]]:
    result = helm("template", RELEASE, str(CHART), *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def values_file(tmp_path: Path, values: dict[str, Any]) -> list[str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (app,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return app


def env_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container(docs)["env"]}


def checksum(docs: list[dict[str, Any]]) -> str:
    return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture
def sentinel_values(tmp_path: Path) -> list[str]:
    return values_file(tmp_path, {"secrets": SENTINELS})


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(name: str) -> None:
    result = helm("lint", "--strict", str(CHART), *VALUE_SETS[name])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_renders_the_expected_objects(name: str) -> None:
    docs = render(*VALUE_SETS[name])
    kinds = [doc["kind"] for doc in docs]
    assert sorted(kinds) == sorted(EXPECTED_KINDS[name])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_core_kinds_match_the_kubernetes_schema(name: str) -> None:
    docs = render(*VALUE_SETS[name])
    validated = set()
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            validated.add(doc["kind"])
    assert validated == set(EXPECTED_KINDS[name]) & CORE_KINDS


def test_values_hold_the_guide_blocks(chart_values: dict[str, Any]) -> None:
    assert chart_values["secrets"] == GUIDE_SECRETS
    external = dict(chart_values["externalSecrets"])
    assert external.pop("refreshInterval") == "1h"
    assert external == GUIDE_EXTERNAL_SECRETS


def test_hf_variables_come_from_the_secret(sentinel_values: list[str]) -> None:
    docs = render(*sentinel_values)
    secret = one(docs, "Secret")
    assert secret["type"] == "Opaque"
    stored = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert stored == SENTINELS
    env = env_of(docs)
    for key in SENTINELS:
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
        assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key
    # Without a token the runtime has no provider: the pod waits for the Secret.
    assert "optional" not in env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]


def test_empty_hf_endpoint_is_left_unset() -> None:
    docs = render()
    # Wired from the Secret, but the key is absent and the reference optional: the variable stays unset.
    assert env_of(docs)["HF_ENDPOINT"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "HF_ENDPOINT" not in one(docs, "Secret")["data"]
    assert {"HF_TOKEN", "HF_MODEL_ID"} <= set(env_of(docs))


def test_hf_endpoint_set_when_given() -> None:
    docs = render("--set", f"secrets.HF_ENDPOINT={SENTINELS['HF_ENDPOINT']}")
    ref = env_of(docs)["HF_ENDPOINT"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "HF_ENDPOINT"
    assert base64.b64decode(one(docs, "Secret")["data"]["HF_ENDPOINT"]).decode() == SENTINELS["HF_ENDPOINT"]


def test_external_secret_fills_the_secret_the_deployment_reads(chart_values: dict[str, Any]) -> None:
    docs = render(*VALUE_SETS["external-secrets"])
    assert not [doc for doc in docs if doc["kind"] == "Secret"], "two owners of one Secret"
    external = one(docs, "ExternalSecret")
    assert external["apiVersion"] == "external-secrets.io/v1"
    spec = external["spec"]
    assert spec["refreshInterval"] == chart_values["externalSecrets"]["refreshInterval"]
    assert spec["secretStoreRef"] == chart_values["externalSecrets"]["secretStoreRef"]
    assert spec["data"] == chart_values["externalSecrets"]["data"]
    assert spec["target"]["creationPolicy"] == "Owner"
    env = env_of(docs)
    referenced = {env[key]["valueFrom"]["secretKeyRef"]["name"] for key in GUIDE_SECRETS}
    assert referenced == {spec["target"]["name"]}
    # The store may hold no HF_ENDPOINT (or an empty one, which the runtime treats as unset).
    assert env["HF_ENDPOINT"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_external_secret_follows_its_values(tmp_path: Path) -> None:
    custom = {
        "externalSecrets": {
            "enabled": True,
            "refreshInterval": "15m",
            "secretStoreRef": {"kind": "SecretStore", "name": "team-store"},
            "data": [
                {"secretKey": "HF_TOKEN", "remoteRef": {"key": "apps/contexis", "property": "token"}},
            ],
        }
    }
    spec = one(render(*values_file(tmp_path, custom)), "ExternalSecret")["spec"]
    assert spec["refreshInterval"] == "15m"
    assert spec["secretStoreRef"] == {"kind": "SecretStore", "name": "team-store"}
    assert spec["data"] == custom["externalSecrets"]["data"]


def test_checksum_rolls_pods_when_a_secret_value_changes() -> None:
    base = checksum(render("--set", "secrets.HF_TOKEN=hf_one"))
    assert checksum(render("--set", "secrets.HF_TOKEN=hf_one")) == base
    assert checksum(render("--set", "secrets.HF_TOKEN=hf_two")) != base
    assert checksum(render("--set", "secrets.HF_TOKEN=hf_one", "--set", "secrets.HF_MODEL_ID=m")) != base


def test_checksum_follows_the_external_secret_spec(tmp_path: Path, chart_values: dict[str, Any]) -> None:
    on = VALUE_SETS["external-secrets"]
    base = checksum(render(*on))
    data = chart_values["externalSecrets"]["data"][:2]
    assert checksum(render(*on, *values_file(tmp_path, {"externalSecrets": {"data": data}}))) != base
    assert checksum(render(*on, "--set", "externalSecrets.secretStoreRef.name=other")) != base


def test_secret_values_never_reach_the_deployment(sentinel_values: list[str]) -> None:
    docs = render(*sentinel_values)
    deployment = yaml.safe_dump(one(docs, "Deployment"))
    for value in SENTINELS.values():
        assert value not in deployment
        assert base64.b64encode(value.encode()).decode() not in deployment
    # The sentinels did reach the Secret, so their absence above means something.
    assert base64.b64encode(SENTINELS["HF_TOKEN"].encode()).decode() in yaml.safe_dump(one(docs, "Secret"))


def test_security_contexts_and_writable_paths() -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    app = container(docs)
    context = app["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 1000
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in app["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/tmp/metrics"]]
    assert env_of(docs)["PROMETHEUS_MULTIPROC_DIR"]["value"] == "/tmp/metrics"
    # Stored responses go to a writable state directory of the pod, not under the read-only project root.
    assert "emptyDir" in volumes[mounts["/var/lib/contexis"]]
    assert env_of(docs)["CMP_STATE_DIR"]["value"] == "/var/lib/contexis"


def test_probes_hit_health_endpoints_on_the_app_port() -> None:
    app = container(render())
    (port,) = app["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8000)
    assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert app["startupProbe"]["httpGet"]["port"] == "http"
    assert app["startupProbe"]["failureThreshold"] * app["startupProbe"]["periodSeconds"] >= 30


@pytest.mark.parametrize(
    "typo",
    [
        "replicaCont=2",
        "secrets.HF_TOKN=x",
        "externalSecrets.refreshIntervall=1h",
        "ingress.hostname=x",
        "prometheusRule.thresholds.api5xxRatoi=0.1",
        "grafanaDashboard.enabeld=true",
    ],
)
@pytest.mark.parametrize("command", ["lint", "template"])
def test_a_typo_in_values_fails(command: str, typo: str) -> None:
    args = ["lint", "--strict", str(CHART)] if command == "lint" else ["template", RELEASE, str(CHART)]
    result = helm(*args, "--set", typo)
    assert result.returncode != 0
    assert typo.split("=")[0].split(".")[-1] in result.stdout + result.stderr


def test_autoscaling_owns_the_replica_count() -> None:
    docs = render(*VALUE_SETS["ingress-hpa-servicemonitor"])
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert one(render("--set", "replicaCount=3"), "Deployment")["spec"]["replicas"] == 3


def test_service_monitor_scrapes_the_service() -> None:
    docs = render(*VALUE_SETS["ingress-hpa-servicemonitor"], "--set", "serviceMonitor.labels.release=prom")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


def test_service_and_ingress_reach_the_pods(tmp_path: Path) -> None:
    ingress_values = {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "chat.example.org", "paths": [{"path": "/api", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "chat-tls", "hosts": ["chat.example.org"]}],
        }
    }
    docs = render(*values_file(tmp_path, ingress_values))
    service = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = one(docs, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == ingress_values["ingress"]["tls"]
    (rule,) = ingress["rules"]
    assert rule["host"] == "chat.example.org"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": service["metadata"]["name"], "port": {"name": "http"}}


def test_the_default_ingress_routes_both_apis_and_not_the_metrics() -> None:
    (rule,) = one(render("--set", "ingress.enabled=true"), "Ingress")["spec"]["rules"]
    assert [path["path"] for path in rule["http"]["paths"]] == ["/api", "/v1"]


def test_pdb_uses_min_available_when_set() -> None:
    assert one(render(), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    spec = one(render("--set", "podDisruptionBudget.minAvailable=50%"), "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == "50%"
    assert "maxUnavailable" not in spec


def test_project_from_the_image_by_default(chart_values: dict[str, Any]) -> None:
    docs = render()
    assert env_of(docs)["CMP_PROJECT_ROOT"]["value"] == "/srv/contexis/project"
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert "project" not in {volume["name"] for volume in volumes}


def test_project_from_a_config_map(tmp_path: Path) -> None:
    items = [{"key": "contexts_SupportBot.yaml", "path": "contexts/SupportBot.yaml"}]
    project = {"project": {"source": "configMap", "path": "/srv/project", "configMap": {"name": "bot", "items": items}}}
    docs = render(*values_file(tmp_path, project))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(volume for volume in pod["volumes"] if volume["name"] == "project")
    assert volume["configMap"] == {"name": "bot", "items": items}
    mount = next(mount for mount in container(docs)["volumeMounts"] if mount["name"] == "project")
    assert mount == {"name": "project", "mountPath": "/srv/project", "readOnly": True}
    assert env_of(docs)["CMP_PROJECT_ROOT"]["value"] == "/srv/project"


def test_project_from_a_claim_is_writable() -> None:
    docs = render(
        "--set", "project.source=persistentVolumeClaim",
        "--set", "project.persistentVolumeClaim.claimName=data",
    )  # fmt: skip
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(volume for volume in pod["volumes"] if volume["name"] == "project")
    assert volume["persistentVolumeClaim"] == {"claimName": "data", "readOnly": False}
    mount = next(mount for mount in container(docs)["volumeMounts"] if mount["name"] == "project")
    assert mount["readOnly"] is False


def test_project_source_needs_its_name() -> None:
    result = helm("template", RELEASE, str(CHART), "--set", "project.source=configMap")
    assert result.returncode != 0
    assert "project.configMap.name is required" in result.stderr


def test_runtime_settings_reach_the_environment(tmp_path: Path) -> None:
    settings = {
        "gunicorn": {"workers": 3, "threads": 8},
        "otel": {"endpoint": "http://otel-collector:4317", "serviceName": "contexis-prod"},
        "env": [{"name": "HF_TIMEOUT", "value": "30"}],
    }
    env = env_of(render(*values_file(tmp_path, settings)))
    assert env["WEB_CONCURRENCY"]["value"] == "3"
    assert env["GUNICORN_THREADS"]["value"] == "8"
    assert env["OTEL_TRACES_EXPORTER"]["value"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector:4317"
    assert env["OTEL_SERVICE_NAME"]["value"] == "contexis-prod"
    assert env["HF_TIMEOUT"]["value"] == "30"


def test_tracing_off_without_an_endpoint() -> None:
    env = env_of(render())
    assert "OTEL_TRACES_EXPORTER" not in env
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


def test_prometheus_rule_watches_what_the_service_monitor_scrapes() -> None:
    docs = render(*VALUE_SETS["operations"], "--namespace", "prod", "--set", "prometheusRule.labels.release=prom")
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    groups = rule["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    rules = [r for group in groups for r in group["rules"]]
    assert all(("alert" in r) != ("record" in r) and r["expr"] for r in rules)
    alerts = [r for r in rules if "alert" in r]
    assert len(alerts) >= 13
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys()
        assert "docs/operations.md#" in alert["annotations"]["runbook_url"]
    # Prometheus Operator names a ServiceMonitor's job after the Service: the rules select that job here.
    service = one(docs, "Service")["metadata"]["name"]
    selector = f'job="{service}",namespace="prod"'
    raw = [r["expr"] for r in rules if "{" in r["expr"] and "contexis:" not in r["expr"].split("(")[-1]]
    assert raw and all(selector in expr for expr in raw)


def test_dashboard_config_map_carries_the_sidecar_label(tmp_path: Path) -> None:
    docs = render(*VALUE_SETS["operations"])
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = config_map["data"]
    assert key.endswith(".json")
    # Another sidecar label: add it, and drop the default with null (Helm merges maps).
    labels = {"dashboards": "contexis", "grafana_dashboard": None}
    custom = {"grafanaDashboard": {"enabled": True, "labels": labels, "namespace": "monitoring"}}
    config_map = one(render(*values_file(tmp_path, custom)), "ConfigMap")
    assert config_map["metadata"]["labels"]["dashboards"] == "contexis"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert config_map["metadata"]["namespace"] == "monitoring"


def test_operations_kit_off_by_default() -> None:
    kinds = {doc["kind"] for doc in render()}
    assert not kinds & {"PrometheusRule", "ConfigMap", "ServiceMonitor"}


def test_the_chart_offers_a_redis_for_one_rate_limit_budget() -> None:
    values = ["--set", "rateLimit.limit=60/minute", "--set", "rateLimit.redis.enabled=true"]
    assert helm("lint", "--strict", str(CHART), *values).returncode == 0
    docs = render(*values)
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    redis = by_name[("Deployment", f"{RELEASE}-contexis-app-ratelimit")]
    service = by_name[("Service", f"{RELEASE}-contexis-app-ratelimit")]
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    app = by_name[("Deployment", f"{RELEASE}-contexis-app")]
    env = {e["name"]: e for e in app["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CMP_RATE_LIMIT"]["value"] == "60/minute"
    assert env["CMP_RATE_LIMIT_STORAGE_URI"]["value"] == f"redis://{RELEASE}-contexis-app-ratelimit:6379/0"
    # The app's Service must not send API traffic to the Redis pod.
    app_selector = by_name[("Service", f"{RELEASE}-contexis-app")]["spec"]["selector"].items()
    assert not app_selector <= redis["spec"]["template"]["metadata"]["labels"].items()


def test_no_rate_limit_and_no_redis_by_default() -> None:
    docs = render()
    assert "CMP_RATE_LIMIT" not in env_of(docs)
    assert "CMP_RATE_LIMIT_STORAGE_URI" not in env_of(docs)


# -- memory backends ----------------------------------------------------------------------


def hooks(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The hook objects by kind and name."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for doc in docs
        if "helm.sh/hook" in doc["metadata"].get("annotations", {})
    }


def test_sqlite_by_default_has_no_database_url_and_no_jobs() -> None:
    docs = render()
    assert "CMP_MEMORY_URL" not in env_of(docs)
    assert not hooks(docs)


def test_postgresql_url_lives_in_the_secret_only() -> None:
    docs = render(*POSTGRES)
    secret = next(d for d in docs if d["kind"] == "Secret" and not d["metadata"].get("annotations"))
    assert base64.b64decode(secret["data"]["CMP_MEMORY_URL"]).decode() == MEMORY_URL
    env = env_of(docs)
    reference = {"name": secret["metadata"]["name"], "key": "CMP_MEMORY_URL"}
    assert env["CMP_MEMORY_URL"]["valueFrom"]["secretKeyRef"] == reference
    assert env["CMP_MEMORY_TIMEOUT"]["value"] == "2"
    for doc in docs:
        if doc["kind"] not in ("Secret",):
            assert "SENTINEL_DB_PASSWORD" not in yaml.safe_dump(doc)


def test_migration_hook_runs_before_install_and_upgrade_with_its_own_secret() -> None:
    found = hooks(render(*POSTGRES))
    job = found["Job/demo-contexis-app-memory-migrate"]
    secret = found["Secret/demo-contexis-app-memory-migrate"]
    for doc in (job, secret):
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    pod = job["spec"]["template"]["spec"]
    (migrate,) = pod["containers"]
    assert migrate["args"] == ["memory", "migrate"]
    env = {var["name"]: var for var in migrate["env"]}
    assert env["CMP_MEMORY_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert pod["restartPolicy"] == "Never" and migrate["securityContext"]["readOnlyRootFilesystem"] is True
    # The Service and the PDB select the Deployment's pods only, never a Job's.
    assert "app.kubernetes.io/name" not in job["spec"]["template"]["metadata"]["labels"]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_external_secrets_carry_the_database_url(chart_values: dict[str, Any]) -> None:
    docs = render(*VALUE_SETS["postgresql-external-secrets"])
    main = next(d for d in docs if d["kind"] == "ExternalSecret" and not d["metadata"].get("annotations"))
    ref = chart_values["memory"]["remoteRef"]
    assert {"secretKey": "CMP_MEMORY_URL", "remoteRef": ref} in main["spec"]["data"]
    hook = hooks(docs)["ExternalSecret/demo-contexis-app-memory-migrate"]
    assert hook["spec"]["data"] == [{"secretKey": "CMP_MEMORY_URL", "remoteRef": ref}]
    assert hook["spec"]["target"]["name"] == "demo-contexis-app-memory-migrate"


def test_postgresql_needs_a_postgresql_url() -> None:
    missing = helm("template", RELEASE, str(CHART), "--set", "memory.backend=postgresql")
    assert missing.returncode != 0 and "memory.url is required" in missing.stderr
    wrong = helm("template", RELEASE, str(CHART), "--set", "memory.backend=postgresql", "--set", "memory.url=mysql://x")
    assert wrong.returncode != 0


@pytest.mark.parametrize(
    ("documents", "volume"),
    [
        ({"image": "registry/docs:7", "imagePath": "/srv/docs"}, {"emptyDir": {}}),
        ({"volume": {"persistentVolumeClaim": {"claimName": "d"}}}, {"persistentVolumeClaim": {"claimName": "d"}}),
    ],
)
def test_ingest_job_reads_documents_from_an_image_or_a_volume(
    tmp_path: Path, documents: dict[str, Any], volume: dict[str, Any]
) -> None:
    ingest = {"enabled": True, "component": "CustomerDocs", "tenant": "acme", "paths": ["faq", "policies/"]}
    ingest.update(documents)
    embedding = [{"name": "HF_EMBED_MODEL_ID", "value": "BAAI/bge-small-en-v1.5"}]
    values = {"memory": {"backend": "postgresql", "url": MEMORY_URL, "ingest": ingest}, "env": embedding}
    result = helm("lint", "--strict", str(CHART), *values_file(tmp_path, values))
    assert result.returncode == 0, result.stdout + result.stderr
    job = hooks(render(*values_file(tmp_path, values)))["Job/demo-contexis-app-memory-ingest"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    (app,) = pod["containers"]
    assert app["args"] == [
        "memory", "ingest", "--component", "CustomerDocs", "--tenant", "acme", "/documents/faq", "/documents/policies",
    ]  # fmt: skip
    assert {k: v for k, v in pod["volumes"][0].items() if k != "name"} == volume
    # The pods' embedding model and its token: the Job stores the vectors the pods search.
    env = {var["name"]: var for var in app["env"]}
    assert env["HF_EMBED_MODEL_ID"] == embedding[0]
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "demo-contexis-app-hf", "key": "HF_TOKEN"}
    if "image" in documents:
        (init,) = pod["initContainers"]
        assert init["image"] == "registry/docs:7" and init["command"] == ["cp", "-R", "/srv/docs/.", "/copy/"]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


# -- the usage ledger ---------------------------------------------------------------------------------


def test_the_sqlite_ledger_lives_in_a_state_volume_of_the_pod() -> None:
    docs = render()
    env = env_of(docs)
    assert env["CMP_STATE_DIR"]["value"] == "/var/lib/contexis"
    assert "CMP_USAGE_URL" not in env and "CMP_BUDGETS" not in env
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container(docs)["volumeMounts"]}
    assert volumes[mounts["/var/lib/contexis"]]["emptyDir"] == {"sizeLimit": "1Gi"}


def test_a_postgresql_ledger_is_migrated_by_the_hook_job_after_memory() -> None:
    docs = render(*POSTGRES, *VALUE_SETS["usage-postgresql"])
    secret = next(d for d in docs if d["kind"] == "Secret" and not d["metadata"].get("annotations"))
    assert base64.b64decode(secret["data"]["CMP_USAGE_URL"]).decode() == USAGE_URL
    env = env_of(docs)
    assert env["CMP_USAGE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "CMP_USAGE_URL"
    found = hooks(docs)
    pod = found["Job/demo-contexis-app-memory-migrate"]["spec"]["template"]["spec"]
    assert [c["args"] for c in pod["initContainers"]] == [["memory", "migrate"]]
    (usage,) = pod["containers"]
    assert usage["args"] == ["usage", "migrate"]
    assert {var["name"] for var in usage["env"]} == {"CMP_USAGE_URL", "CMP_USAGE_TIMEOUT"}
    hook_secret = found["Secret/demo-contexis-app-memory-migrate"]
    assert set(hook_secret["data"]) == {"CMP_MEMORY_URL", "CMP_USAGE_URL"}
    kubernetes_validate.validate(found["Job/demo-contexis-app-memory-migrate"], K8S_VERSION, strict=True)
    for doc in docs:
        if doc["kind"] != "Secret":
            assert "SENTINEL_USAGE_PASSWORD" not in yaml.safe_dump(doc)


def test_budgets_prices_and_billing_are_files_of_a_config_map() -> None:
    docs = render("--set", "usage.budgets.tenants.acme.usd_per_month=500", "--set", "usage.billTo.acme=acme-corp")
    config_map = one(docs, "ConfigMap")
    assert yaml.safe_load(config_map["data"]["budgets.yaml"]) == {"tenants": {"acme": {"usd_per_month": 500}}}
    assert yaml.safe_load(config_map["data"]["bill-to.yaml"]) == {"acme": "acme-corp"}
    assert "prices.yaml" not in config_map["data"]
    env = env_of(docs)
    assert env["CMP_BUDGETS"]["value"] == "/etc/contexis/usage/budgets.yaml"
    assert env["CMP_BILL_TO_BY_TENANT"]["value"] == "/etc/contexis/usage/bill-to.yaml"
    assert "CMP_MODEL_PRICES" not in env
    mounts = {mount["mountPath"]: mount for mount in container(docs)["volumeMounts"]}
    assert mounts["/etc/contexis/usage"]["readOnly"] is True


def test_the_ledger_can_be_turned_off() -> None:
    env = env_of(render("--set", "usage.backend=off"))
    assert env["CMP_USAGE_URL"]["value"] == "off"
