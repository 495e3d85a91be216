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
    assert rows == ["Throughput", "Latency", "Tiers and actions", "Intent quality", "Errors"]


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


def test_k8s_manifests_match_the_settings() -> None:
    docs = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert {"Deployment", "ConfigMap", "Service"} <= set(docs)
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    fields = {f"INTENT_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(env["INTENT_METRICS_PORT"]["value"]) == 9108
    assert ports["web"] == int(env["INTENT_WEB_PORT"]["value"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service_ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert service_ports == {"metrics": 9108, "web": ports["web"]}
    # The rules ConfigMap is the built-in playbook, and valid.
    from stream.rulesfile import check_text, default_rules_text

    rules_text = docs["ConfigMap"]["data"]["rules.yaml"]
    assert check_text(rules_text)[0] is not None
    assert yaml.safe_load(rules_text) == yaml.safe_load(default_rules_text())
    mount = container["volumeMounts"][0]["mountPath"]
    assert env["INTENT_RULES"]["value"].startswith(mount)
