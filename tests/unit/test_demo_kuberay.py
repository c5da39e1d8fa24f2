"""The kuberay demo's pieces that need no cluster: which pods Prometheus scrapes (file_sd,
since Debian's Prometheus has no kubernetes_sd) and the ModelTier it applies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tierserve.api.v1alpha1 import ModelTier
from tierserve.dev import demo
from tierserve.dev.prometheus import scrape_config

pytestmark = pytest.mark.unit


def pod(name: str, ip: str | None, phase: str, ray: bool) -> dict[str, Any]:
    labels = {"ray.io/node-type": "worker"} if ray else {"app": "other"}
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }


def test_only_running_ray_pods_with_an_ip_are_scraped_on_the_metrics_port() -> None:
    pods = {
        "items": [
            pod("head", "10.244.0.3", "Running", True),
            pod("worker-pending", None, "Pending", True),
            pod("worker-done", "10.244.0.9", "Succeeded", True),
            pod("operator", "10.244.0.2", "Running", False),
        ]
    }
    assert demo.ray_pod_targets(pods) == [
        {"targets": ["10.244.0.3:8080"], "labels": {"pod": "head"}}
    ]
    assert demo.ray_pod_targets({"items": []}) == []


def test_the_scrape_config_reads_the_targets_file_and_listens_where_pods_reach_it(
    tmp_path: Path,
) -> None:
    targets = tmp_path / "ray-pods.json"
    cfg = scrape_config({}, self_port=9090, host="10.244.0.1", jobs=[demo.ray_pods_job(targets)])
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [str(targets)]
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["10.244.0.1:9090"]
    json.dumps(cfg)  # plain data, as Prometheus' YAML needs


def test_the_kuberay_demo_modeltier_is_valid_and_autoscaled_from_that_prometheus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from tierserve.dev import kuberay_node, tinymodels

    # No models or root needed: finding the models and copying them for the pods are the only
    # side effects.
    monkeypatch.setattr(tinymodels, "ensure_models", lambda: SimpleNamespace(root=tmp_path))
    monkeypatch.setattr(kuberay_node, "pod_models_dir", lambda root, state_dir=None: tmp_path)
    doc = kuberay_node.tiny_kuberay_modeltier(
        demo.NAME, demo.NAMESPACE, routing=demo.demo_routing("http://10.244.0.1:9090"),
        route_prefix="/",
    )  # fmt: skip
    mt = ModelTier.model_validate(doc)
    assert mt.spec.ray.backend == "kuberay" and mt.spec.ray.route_prefix == "/"
    autoscale = mt.spec.routing.escalation.autoscale
    assert autoscale is not None and autoscale.prometheus_url == "http://10.244.0.1:9090"


def test_the_kuberay_operator_pod_runs_under_kuberays_own_rules_and_rolls_with_its_image() -> None:
    from tierserve.dev import kuberay_node

    rules = [{"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["create", "get"]}]
    docs = kuberay_node.kuberay_manifests(rules, "localhost/kuberay/operator:v1", "k1")
    by_kind = {d["kind"]: d for d in docs}
    role, binding, deploy = (
        by_kind["ClusterRole"],
        by_kind["ClusterRoleBinding"],
        by_kind["Deployment"],
    )
    assert role["rules"] == rules and binding["roleRef"]["name"] == role["metadata"]["name"]
    pod = deploy["spec"]["template"]
    (subject,) = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == (
        pod["spec"]["serviceAccountName"],
        deploy["metadata"]["namespace"],
    )
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "localhost/kuberay/operator:v1"
    assert container["imagePullPolicy"] == "Never"  # never pulled: built here
    # One operator at a time: no leader election, and Recreate so two never overlap.
    assert "--enable-leader-election=false" in container["args"]
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # A rebuilt image under the same tag rolls the pod.
    again = kuberay_node.kuberay_manifests(rules, "localhost/kuberay/operator:v1", "k2")
    template = next(d for d in again if d["kind"] == "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"] != pod["metadata"]["annotations"]
