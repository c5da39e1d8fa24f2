"""Rendering a ModelTier into Serve / RayService objects (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierserve import names
from tierserve.api.v1alpha1 import ModelTier
from tierserve.build import render

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str, **meta: Any) -> ModelTier:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    doc["metadata"] = {"namespace": "ml", "uid": "u-1", **doc["metadata"], **meta}
    return ModelTier.model_validate(doc)


def test_each_tier_becomes_an_llm_config_with_its_gpus_parallelism_and_bounds() -> None:
    mt = load("three-tier-upfront.yaml")
    app = render.serve_application(mt)
    large = app["args"]["tiers"][2]["llmConfig"]
    assert large["model_loading_config"] == {
        "model_id": "large",
        "model_source": {"bucket_uri": "s3://models/qwen2.5-coder-32b"},
    }
    assert large["engine_kwargs"]["tensor_parallel_size"] == 2
    assert large["engine_kwargs"]["pipeline_parallel_size"] == 2
    assert large["placement_group_config"]["bundles"] == [{"GPU": 1, "CPU": 1.0}] * 4
    assert large["accelerator_type"] == "A100"
    overrides = {d["name"]: d for d in app["deployments"]}
    scaling = overrides["tier-large"]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (0, 2)
    tiny = app["args"]["tiers"][0]["llmConfig"]
    assert tiny["model_loading_config"]["model_source"] == "Qwen/Qwen2.5-Coder-1.5B-Instruct"


def test_engine_args_pass_through_and_cpu_tiers_get_a_cpu_bundle() -> None:
    doc = yaml.safe_load((EXAMPLES / "support-assistant.yaml").read_text())
    doc["spec"]["tiers"][0].update(gpusPerReplica=0, engineArgs={"max_model_len": 256})
    doc["metadata"]["namespace"] = "ml"
    small = render.llm_config(ModelTier.model_validate(doc).spec.tiers[0])
    assert small["engine_kwargs"]["max_model_len"] == 256
    assert small["placement_group_config"]["bundles"] == [{"CPU": 1.0}]


def test_load_shedding_limits_reach_serve_only_when_set() -> None:
    doc = yaml.safe_load((EXAMPLES / "support-assistant.yaml").read_text())
    doc["metadata"]["namespace"] = "ml"
    doc["spec"]["tiers"][1]["replicas"] = {
        "targetOngoingRequests": 2,
        "maxOngoingRequests": 4,
        "maxQueuedRequests": 16,
    }
    tiers = ModelTier.model_validate(doc).spec.tiers
    small, large = (render.tier_deployment_options(t) for t in tiers)
    assert large["max_ongoing_requests"] == 4
    assert large["max_queued_requests"] == 16
    # unset: ray.serve.llm's defaults (no per-replica cap, unbounded queue) stay in charge
    assert "max_ongoing_requests" not in small
    assert "max_queued_requests" not in small


def test_a_replicas_change_on_one_tier_leaves_the_application_code_alone() -> None:
    """Serve redeploys every deployment of an application whose args change: a replicas change
    on one tier must reach Serve as that tier's override only, not as new args (found on the
    node: it restarted every tier and the router)."""
    doc = yaml.safe_load((EXAMPLES / "support-assistant.yaml").read_text())
    doc["metadata"]["namespace"] = "ml"
    before = render.serve_application(ModelTier.model_validate(doc))
    doc["spec"]["tiers"][0]["replicas"] = {"min": 2, "max": 5, "maxQueuedRequests": 8}
    after = render.serve_application(ModelTier.model_validate(doc))
    assert after["args"] == before["args"]
    changed = [
        d["name"]
        for d, was in zip(after["deployments"], before["deployments"], strict=True)
        if d != was
    ]
    assert changed == ["tier-small"]
    small = after["deployments"][1]
    assert small["autoscaling_config"]["min_replicas"] == 2
    assert small["autoscaling_config"]["max_replicas"] == 5
    assert small["max_queued_requests"] == 8


def test_threshold_travels_only_in_the_router_user_config() -> None:
    mt = load("support-assistant.yaml")
    base = render.serve_application(mt)
    moved = render.serve_application(mt, threshold=0.42)
    assert base["deployments"][0]["user_config"]["threshold"] == 0.6
    assert moved["deployments"][0]["user_config"]["threshold"] == 0.42
    # Nothing that would restart tier replicas changes.
    assert {k: v for k, v in base.items() if k != "deployments"} == {
        k: v for k, v in moved.items() if k != "deployments"
    }
    router = moved["deployments"][0]
    assert router["name"] == names.INGRESS_DEPLOYMENT
    assert router["user_config"]["mode"] == "cascade"
    assert [t["name"] for t in router["user_config"]["tiers"]] == ["small", "frontier"]
    assert router["user_config"]["forceTopTier"][0]["keywords"] == [
        "diagnosis",
        "dosage",
        "overdose",
    ]


def test_rayservice_has_one_worker_group_per_gpu_shape_and_is_owned() -> None:
    mt = load("three-tier-upfront.yaml")
    rs = render.ray_service(mt)
    assert rs["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu1", "gpu2", "gpu4-a100"}
    assert (groups["gpu4-a100"]["minReplicas"], groups["gpu4-a100"]["maxReplicas"]) == (0, 2)
    limits = groups["gpu2"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert serve["applications"][0]["import_path"] == render.APP_IMPORT_PATH
    assert serve["applications"][0]["name"] == "code-helper"


def test_render_is_deterministic() -> None:
    """Byte for byte, key order included: a reconcile that renders the same writes nothing."""
    first, again = (load("support-assistant.yaml") for _ in range(2))
    assert render.dump_yaml(render.render(first)) == render.dump_yaml(render.render(again))


def test_every_replica_fits_a_pod_of_its_worker_group_and_the_router_fits_the_head() -> None:
    """Ray Serve LLM puts the replica actor's CPU into the first placement bundle: a worker
    pod advertising only the engine's bundles would leave the replica pending forever."""
    mt = load("three-tier-upfront.yaml")
    rs = render.ray_service(mt)
    cluster = rs["spec"]["rayClusterConfig"]
    pods = {
        g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]
    }
    app = render.serve_application(mt)
    for tier, spec in zip(app["args"]["tiers"], mt.spec.tiers, strict=True):
        bundles = tier["llmConfig"]["placement_group_config"]["bundles"]
        needed = sum(b.get("CPU", 0) for b in bundles) + names.LLM_REPLICA_CPUS
        group = f"gpu{spec.gpus_per_replica}" if spec.gpus_per_replica else "cpu"
        group += f"-{spec.accelerator_type.lower()}" if spec.accelerator_type else ""
        cpu = pods[group]["resources"]["limits"]["cpu"]
        assert float(cpu.removesuffix("m")) / (1000 if cpu.endswith("m") else 1) >= needed
    head_cpus = float(cluster["headGroupSpec"]["rayStartParams"]["num-cpus"])
    assert (
        names.ROUTER_CPUS
        <= head_cpus
        < names.LLM_REPLICA_CPUS + min(s.cpus_per_replica for s in mt.spec.tiers)
    )


def test_the_router_is_pinned_to_the_head_on_kuberay_only() -> None:
    """Only the head advertises the router's custom resource and only the router asks for it:
    Serve cannot put the router on a tier's worker (whose loss would take the router along).
    The external backend's cluster has no such resource, so its router asks for none."""
    mt = load("three-tier-upfront.yaml")
    rs = render.ray_service(mt)
    cluster = rs["spec"]["rayClusterConfig"]
    params = cluster["headGroupSpec"]["rayStartParams"]
    # KubeRay passes it to `ray start --resources=` through a shell: single-quoted JSON
    resources = params["resources"]
    assert resources[0] == resources[-1] == "'" and " " not in resources
    assert json.loads(resources[1:-1]) == {names.ROUTER_RESOURCE: 1}
    assert all("resources" not in g["rayStartParams"] for g in cluster["workerGroupSpecs"])
    deployments = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    options = {d["name"]: d.get("ray_actor_options") for d in deployments}
    assert options.pop(names.INGRESS_DEPLOYMENT) == {
        "num_cpus": names.ROUTER_CPUS,
        "resources": {names.ROUTER_RESOURCE: 1},
    }
    assert set(options.values()) == {None}  # the tiers keep ray.serve.llm's placement
    external = render.serve_application(mt)["deployments"]
    assert all("ray_actor_options" not in d for d in external)
