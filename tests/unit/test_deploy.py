"""Dashboards, alerts, docker-compose and Kubernetes manifests agree with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream.metrics import Metrics
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\b(intent_[a-z0-9_]+)\b")


def exported() -> set[str]:
    metrics = Metrics(CollectorRegistry())
    # Labelled metrics export nothing until used; touch one child of each.
    for attr in vars(metrics).values():
        labels = getattr(attr, "_labelnames", None)
        if labels:
            attr.labels(*["x"] * len(labels))
    return metrics.names()


def panel_exprs() -> list[tuple[str, int, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["id"], target["expr"]))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_there_is_a_dashboard_with_the_promised_rows() -> None:
    (path,) = DASHBOARDS
    rows = [p["title"] for p in json.loads(path.read_text())["panels"] if p["type"] == "row"]
    assert rows == [
        "Throughput", "Latency", "Tiers and actions", "Intent quality", "Errors", "Identity"
    ]  # fmt: skip


def test_every_metric_in_dashboards_and_alerts_is_exported() -> None:
    names = exported()
    used = {m for _, _, expr in panel_exprs() for m in METRIC.findall(expr)}
    used |= {m for rule in alert_rules() for m in METRIC.findall(rule["expr"])}
    assert used, "no metric found in the dashboards"
    assert used <= names, f"not exported: {sorted(used - names)}"


def test_panel_ids_are_unique_and_every_panel_has_a_query() -> None:
    for path in DASHBOARDS:
        panels = json.loads(path.read_text())["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), path.name
        for panel in panels:
            if panel["type"] != "row":
                assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_for_severity_summary_and_a_runbook(rule: dict[str, Any]) -> None:
    assert rule["for"]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]
    url = rule["annotations"]["runbook_url"]
    assert url.startswith("docs/operations.md#")
    anchor = url.split("#", 1)[1]
    text = (ROOT / "docs" / "operations.md").read_text()
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    assert anchor in anchors, f"docs/operations.md has no section for #{anchor}"


def _env_names(values: Any) -> set[str]:
    if isinstance(values, dict):
        return set(values)
    return {item["name"] for item in values}


def test_compose_matches_the_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "demo", "prometheus", "grafana"} <= set(services)
    fields = {f"INTENT_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "demo"):
        env = services[name]["environment"]
        assert _env_names(env) <= fields
        host, port = env["INTENT_KAFKA_BOOTSTRAP"].split(":")
        assert host == "kafka" and port == "9092"
        assert env["INTENT_REDIS_URL"].startswith("redis://redis:6379")
        assert int(env["INTENT_METRICS_PORT"]) == Settings.model_fields["metrics_port"].default
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == Settings.model_fields["metrics_port"].default
    grafana_volumes = " ".join(services["grafana"]["volumes"])
    assert "deploy/grafana/dashboards" in grafana_volumes and "provisioning" in grafana_volumes


def redis_flags(argv: list[str]) -> dict[str, str]:
    """`redis-server --name value ...` as {name: value}; a flag given twice fails."""
    assert len(argv) % 2 == 0 and all(a.startswith("--") for a in argv[::2]), argv
    names, values = argv[::2], argv[1::2]
    pairs = [(name.removeprefix("--"), value) for name, value in zip(names, values, strict=True)]
    flags = dict(pairs)
    assert len(flags) == len(pairs), f"a flag given twice: {argv}"
    return flags


DURABLE = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}


def test_compose_redis_keeps_an_append_only_file_on_a_named_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    binary, *argv = redis["command"]
    assert binary == "redis-server"
    flags = redis_flags(argv)
    assert DURABLE.items() <= flags.items()
    assert flags["save"] == ""  # the AOF alone: no snapshot fork besides its rewrite
    volumes = dict(v.split(":", 1) for v in redis["volumes"])
    (volume,) = [name for name, target in volumes.items() if target == flags["dir"]]
    assert volume in compose["volumes"], "a named volume, not a folder of the host"


def k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} twice"
            docs[key] = doc
    return docs


def _quantity(text: str) -> int:
    """Bytes of a Kubernetes memory quantity (2Gi) or a Redis one (1536mb)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", text)
    assert match, text
    number, unit = match.groups()
    return int(number) * units[unit] if unit else int(number)


def test_k8s_redis_is_a_durable_statefulset_the_worker_points_at() -> None:
    docs = k8s_docs()
    redis = docs[("StatefulSet", "intent-redis")]
    service = docs[("Service", redis["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"  # headless: the pod's stable name
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["replicas"] == 1  # one primary; a second pod would be another
    pod = redis["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["redis-server"]
    flags = redis_flags(container["args"])
    assert DURABLE.items() <= flags.items()
    assert flags["save"] == ""
    # The file is on the claimed volume, a ReadWriteOnce claim of 10Gi.
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == flags["dir"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "volumes" not in pod  # the data is never on an emptyDir
    # Ready when it answers PONG (not while loading its file); requests and limits.
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "redis-cli" in probe and "ping" in probe and "PONG" in probe
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    limit = _quantity(resources["limits"]["memory"])
    assert _quantity(flags["maxmemory"]) <= 0.75 * limit  # room for the rewrite's fork
    # The password from the Secret, to Redis and to the probe's redis-cli.
    env = {item["name"]: item for item in container["env"]}
    assert flags["requirepass"] == "$(REDIS_PASSWORD)"
    secret = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == secret
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == container["ports"][0]["name"]

    # The worker's Redis URL names the pod through the Service, with the same password.
    (worker,) = docs[("Deployment", "intent-worker")]["spec"]["template"]["spec"]["containers"]
    names = [item["name"] for item in worker["env"]]
    worker_env = {item["name"]: item for item in worker["env"]}
    url = worker_env["INTENT_REDIS_URL"]["value"]
    host = f"{redis['metadata']['name']}-0.{service['metadata']['name']}"
    assert url == f"redis://:$(REDIS_PASSWORD)@{host}:{port['port']}/0"
    assert worker_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == secret
    # Kubernetes expands $(NAME) only from variables defined before it.
    assert names.index("REDIS_PASSWORD") < names.index("INTENT_REDIS_URL")


def test_k8s_manifests_match_the_settings() -> None:
    docs = k8s_docs()
    assert {("Deployment", "intent-worker"), ("Service", "intent-worker")} <= set(docs)
    assert ("ConfigMap", "intent-rules") in docs
    (container,) = docs[("Deployment", "intent-worker")]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    fields = {f"INTENT_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("INTENT_")} <= fields
    assert {name for name in env if not name.startswith("INTENT_")} == {"REDIS_PASSWORD"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(env["INTENT_METRICS_PORT"]["value"]) == 9108
    assert ports["web"] == int(env["INTENT_WEB_PORT"]["value"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = docs[("Service", "intent-worker")]
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert service_ports == {"metrics": 9108, "web": ports["web"]}
    # The rules ConfigMap is the built-in playbook, and valid.
    from stream.rulesfile import check_text, default_rules_text

    rules_text = docs[("ConfigMap", "intent-rules")]["data"]["rules.yaml"]
    assert check_text(rules_text)[0] is not None
    assert yaml.safe_load(rules_text) == yaml.safe_load(default_rules_text())
    mount = container["volumeMounts"][0]["mountPath"]
    assert env["INTENT_RULES"]["value"].startswith(mount)
