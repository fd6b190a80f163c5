"""deploy/monitoring/ uses only metrics a worker exports, with label values it really produces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tf_jupyter.metrics import JUPYTER_METRIC_NAMES
from tf_remoting.proto import pb
from tf_remoting.worker.metrics import METRIC_NAMES, Metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
METRIC = re.compile(r"\btf_vgpu_[a-z_]+")
# Suffixes Prometheus derives from a family: counters (_total, _created), histograms and summaries.
DERIVED = ("_total", "_created", "_bucket", "_count", "_sum")


def _exported(name: str) -> bool:
    if name in METRIC_NAMES or name in JUPYTER_METRIC_NAMES:
        return True
    return any(name.endswith(s) and (name.removesuffix(s) in METRIC_NAMES or name.removesuffix(s) + "_total"
                                     in METRIC_NAMES) for s in DERIVED)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
            for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return exprs


def _all_exprs() -> list[str]:
    return [r["expr"] for r in _rules()] + _dashboard_exprs()


def test_metric_names_match_what_the_worker_registers() -> None:
    """METRIC_NAMES itself is the worker's registry (so checking against it means something)."""
    registered = {family.name + ("_total" if family.type == "counter" else "")
                  for family in Metrics(version="t", backend="host").registry.collect()}
    assert registered == set(METRIC_NAMES)


def test_every_metric_used_is_exported() -> None:
    used = {name for expr in _all_exprs() for name in METRIC.findall(expr)}
    assert len(used) >= 10, used
    unknown = sorted(n for n in used if not _exported(n))
    assert not unknown, f"not exported by the worker: {unknown} (METRIC_NAMES: {sorted(METRIC_NAMES)})"


def test_dashboard_shows_every_exported_metric() -> None:
    """The workers' metrics and the Jupyter servers' (queue length, oldest wait, pool workers)."""
    used = {name for expr in _dashboard_exprs() for name in METRIC.findall(expr)}
    assert set(METRIC_NAMES) - used == set()
    assert set(JUPYTER_METRIC_NAMES) - used == set()


def test_scrape_config_has_a_jupyter_server_job() -> None:
    """The queue metrics live on jupyter_server's /metrics: a job scrapes them, with auth explained."""
    path = ROOT / "deploy" / "kubernetes" / "prometheus-scrape.yaml"
    text = path.read_text()
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    server = jobs["tf-jupyter-server"]
    # jupyter_server wants a token on /metrics: a bearer token, or authenticate_prometheus = False.
    assert "c.ServerApp.authenticate_prometheus = False" in text
    for job in jobs.values():
        if job["job_name"].startswith("tf-jupyter-server") and "authorization" in job:
            assert job["authorization"]["type"] == "Bearer"
            assert job["authorization"].get("credentials_file") or job["authorization"].get("credentials")
    # Z2JH single-user pods: KubeSpawner's labels and port name; each server under /user/NAME/.
    keep = next(r for r in server["relabel_configs"] if r.get("action") == "keep")
    assert keep["regex"] == "singleuser-server;notebook-port"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_label_component",
                                     "__meta_kubernetes_pod_container_port_name"]
    path_rule = next(r for r in server["relabel_configs"] if r.get("target_label") == "__metrics_path__")
    assert path_rule["replacement"] == "/user/$1/metrics"
    # Static Jupyter hosts end up with the same job label.
    hosts = [j for name, j in jobs.items() if name.startswith("tf-jupyter-server-")]
    assert all(any(r.get("target_label") == "job" and r.get("replacement") == "tf-jupyter-server"
                   for r in j["relabel_configs"]) for j in hosts)


def test_dashboard_has_queue_panels() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    by_metric: dict[str, list[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in METRIC.findall(target["expr"]):
                by_metric.setdefault(name, []).append(panel["title"])
    assert by_metric.get("tf_vgpu_queue_length"), "no panel shows the queue length"
    assert by_metric.get("tf_vgpu_queue_oldest_wait_seconds"), "no panel shows the oldest wait"


def test_event_kinds_in_expressions_are_real() -> None:
    kinds = {name.removeprefix("EVENT_KIND_").lower() for name in pb.EventKind.keys()}
    used = {k for expr in _all_exprs() for k in re.findall(r'kind="([^"]+)"', expr)}
    assert used, "the rules should alert on worker events"
    assert used <= kinds, sorted(used - kinds)


def test_rules_file_has_the_prometheus_rule_group_structure() -> None:
    data = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    assert set(data) == {"groups"}
    names = set()
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["name"] not in names
        names.add(group["name"])
        assert group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhdwy]", rule["for"]), rule["for"]
            assert all(isinstance(v, str) for v in rule.get("labels", {}).values())
            assert {"summary", "description"} <= set(rule["annotations"])


def test_the_issue_alerts_are_there() -> None:
    rules = {r["alert"]: r for r in _rules()}
    worker_down = next(r for r in rules.values() if 'up{job="tf-jupyter-worker"} == 0' in r["expr"])
    assert worker_down
    near = next(r for r in rules.values() if "tf_vgpu_lease_vram_used_bytes" in r["expr"])
    assert "tf_vgpu_lease_vram_limit_bytes" in near["expr"] and "0.9" in near["expr"] and near["for"] == "2m"
    assert any('tf_vgpu_events_total{kind="lease_expired"}' in r["expr"] and "increase(" in r["expr"]
               for r in rules.values())
    # The queue lives on the Jupyter side, which exports tf_vgpu_queue_* on jupyter_server's /metrics.
    assert any("tf_vgpu_queue_oldest_wait_seconds" in r["expr"] for r in rules.values())


def test_dashboard_structure() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in _dashboard_exprs():
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables, f"${var} in {expr!r} is not a dashboard variable"


# ------------------------------------------------------------------------------------------ docs

DOCS = sorted((ROOT / "docs").glob("*.md"))
ALERT = re.compile(r"\bTfVgpu[A-Z]\w*")  # alert names; `TfVgpu.` (the config class) does not match


def _alert_names() -> set[str]:
    return {r["alert"] for r in _rules()}


def test_docs_name_only_real_metrics_and_alerts() -> None:
    """Every tf_vgpu_ metric and TfVgpu* alert the docs mention is exported / defined."""
    exported = set(METRIC_NAMES) | set(JUPYTER_METRIC_NAMES)
    alerts = _alert_names()
    seen_metrics = seen_alerts = 0
    for path in [*DOCS, ROOT / "README.md"]:
        text = path.read_text()
        for name in METRIC.findall(text):
            if name.endswith("_"):  # a prefix, as in `tf_vgpu_queue_*`
                assert any(m.startswith(name) for m in exported), f"{path.name}: no metric starts with {name}"
            else:
                assert _exported(name), f"{path.name}: {name} is not a metric anyone exports"
                seen_metrics += 1
        for name in ALERT.findall(text):
            assert name in alerts, f"{path.name}: {name} is not an alert in alerts.yaml ({sorted(alerts)})"
            seen_alerts += 1
    assert seen_metrics >= 10 and seen_alerts >= 5


def test_admin_guide_lists_every_metric_and_alert() -> None:
    guide = (ROOT / "docs" / "admin-guide.md").read_text()
    mentioned = set(METRIC.findall(guide))
    missing = sorted((set(METRIC_NAMES) | set(JUPYTER_METRIC_NAMES)) - mentioned)
    assert not missing, f"docs/admin-guide.md's metric tables miss {missing}"
    missing_alerts = sorted(_alert_names() - set(ALERT.findall(guide)))
    assert not missing_alerts, f"docs/admin-guide.md's alert list misses {missing_alerts}"
    # The guide must not claim the queue has no alert, or that no setting verifies another TLS name.
    assert "no \"waiting too long\" alert" not in guide and "exports\nno Prometheus metrics" not in guide
    assert "tls_server_name" in guide and "no setting yet to verify" not in " ".join(guide.split())
