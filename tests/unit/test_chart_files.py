"""The Helm chart's static parts: the CRD copy, values against their schema, metric names.

Rendering, linting and installing the chart is tests/integration/test_chart.py (real helm).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from tierserve.api import chart, crd

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tierserve"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
METRIC = re.compile(r"\b((?:ray_)?tierserve_\w+|ray_vllm_\w+)")


def test_chart_crd_is_what_generation_produces() -> None:
    committed = (CHART / "crds" / crd.CRD_FILE).read_text()
    fix = "tierserve crds --out crds --out charts/tierserve/crds"
    assert committed == crd.render_yaml(), f"charts/tierserve/crds is stale: run `{fix}`"


def test_chart_crds_are_all_valid_crds() -> None:
    names = set()
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "CustomResourceDefinition", path
            names.add(doc["metadata"]["name"])
    assert names == {
        "modeltiers.tierserve.io",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    }


def test_values_schema_is_what_generation_produces() -> None:
    committed = (CHART / chart.SCHEMA_FILE).read_text()
    fix = "tierserve crds --out crds --out charts/tierserve/crds"
    assert committed == chart.render_json(), f"{chart.SCHEMA_FILE} is stale: run `{fix}`"


def test_schema_is_valid_and_default_values_satisfy_it() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA)
    chart.ChartValues.model_validate(VALUES)  # the typed model reads them as they are


@pytest.mark.parametrize(
    "bad", [{"replicas": -1}, {"replicaCount": 2}, {"image": {"repository": "r", "tag": 1}}]
)
def test_the_values_model_refuses_what_the_schema_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**VALUES, **bad}, SCHEMA)
    with pytest.raises(ValidationError):
        chart.ChartValues.model_validate({**VALUES, **bad})


def test_schema_covers_every_default_value() -> None:
    """additionalProperties: false everywhere the chart owns the keys, so typos fail."""

    def walk(values: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        props = schema.get("properties")
        if props is None or schema.get("additionalProperties") is not False:
            return  # a Kubernetes type (securityContext, resources): open on purpose
        for key, value in values.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(value, dict):
                walk(value, props[key], f"{path}{key}.")

    assert SCHEMA["additionalProperties"] is False
    walk(VALUES, SCHEMA, "")


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": "two"}, "replicas"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"rbac": {"namespaced": "yes"}}, "namespaced"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"prometheusRule": {"topTierSaturated": {"for": "ten minutes"}}}, "for"),
        ({"prometheusRule": {"shadowAgreementDropping": {"minAgreement": 1.5}}}, "minAgreement"),
        ({"replica": 2}, "replica"),
        ({"replicas": 2}, "peering"),  # cross-field rules name the value that has to change
        ({"rbac": {"namespaced": True}}, "watchNamespaces"),
        (
            {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
            "metrics",
        ),
    ],
)
def test_schema_refuses_bad_values(override: dict[str, Any], where: str) -> None:
    def merge(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in extra.items()}}
        return extra

    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(merge(VALUES, override), SCHEMA)
    assert where in (str(info.value.message) + "/".join(map(str, info.value.absolute_path)))


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"`((?:ray_)?tierserve_\w+)`", text))


def _base(name: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", name)


@pytest.mark.parametrize(
    "path",
    [CHART / "dashboards" / "tierserve.json", CHART / "templates" / "prometheusrule.yaml"],
    ids=lambda p: p.name,
)
def test_dashboards_and_alerts_use_documented_metric_names(path: Path) -> None:
    known = documented_metrics()
    assert "ray_tierserve_requests_total" in known and "tierserve_operator_threshold" in known
    used = {_base(m) for m in METRIC.findall(path.read_text())}
    assert used, f"{path.name} uses no tierserve metric"
    # vLLM's engine metrics are documented as the ray_vllm_* family.
    unknown = {m for m in used if m not in known and not m.startswith("ray_vllm_")}
    assert not unknown, f"{path.name} uses metrics docs/metrics.md does not list: {unknown}"


def test_dashboard_covers_what_operators_ask_for() -> None:
    dash = json.loads((CHART / "dashboards" / "tierserve.json").read_text())
    assert dash["uid"] and dash["title"]
    exprs = " ".join(
        t["expr"] for p in dash["panels"] if p["type"] != "row" for t in p.get("targets", [])
    )
    for metric in (
        "ray_tierserve_requests_total",  # per-tier traffic
        "ray_tierserve_escalations_total",  # escalation rate
        "tierserve_operator_threshold",  # threshold over time
        "ray_tierserve_escalation_threshold",
        "ray_tierserve_confidence_bucket",  # confidence distribution
        "ray_tierserve_routing_decision_seconds_bucket",  # latency
        "tierserve_operator_modelled_cost_factor",  # modelled cost reduction
    ):
        assert metric in exprs, metric
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "modeltier"} <= variables
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
