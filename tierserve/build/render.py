"""Renders a ModelTier into what runs it: one Ray Serve application, and for the kuberay backend
the RayService that hosts it. Pure functions of the spec, so `tierserve render` shows exactly
what the operator creates and a reconcile that renders the same output writes nothing.

The Serve application is one vLLM deployment per tier (built by `ray.serve.llm` from the
LLMConfig dicts rendered here) plus the router ingress. Everything the threshold autoscaler moves
lives in the router's `user_config`, which Serve applies in place: no replica restarts.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from tierserve.api.v1alpha1 import (
    GROUP,
    HF_HOME,
    HF_TOKEN,
    KIND,
    MODEL_CACHE_VOLUME,
    VERSION,
    ModelCache,
    ModelTier,
    ModelTierSpec,
    RayConfig,
    RayPod,
    Tier,
)
from tierserve.cost import tier_prices
from tierserve.names import (
    APP_IMPORT_PATH,
    DASHBOARD_PORT,
    INGRESS_DEPLOYMENT,
    LLM_REPLICA_CPUS,
    MANAGED_BY,
    ROUTER_CPUS,
    ROUTER_RESOURCE,
    SERVE_PORT,
    app_name,
    tier_deployment_name,
)


def model_source(source: str) -> str | dict[str, str]:
    """ray.serve.llm takes a hub id, a local path, or a cloud mirror for object storage."""
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    if source.startswith(("s3://", "gs://", "abfss://")):
        return {"bucket_uri": source}
    return source


def placement_bundles(tier: Tier) -> list[dict[str, float]]:
    """One bundle per GPU (vLLM puts one TP/PP worker on each), or one CPU bundle."""
    if tier.gpus_per_replica == 0:
        return [{"CPU": tier.cpus_per_replica}]
    return [{"GPU": 1, "CPU": tier.cpus_per_replica} for _ in range(tier.gpus_per_replica)]


def llm_config(tier: Tier) -> dict[str, Any]:
    """The tier as a `ray.serve.llm.LLMConfig` (as a plain dict, so it travels in Serve args)."""
    engine_kwargs: dict[str, Any] = {
        "tensor_parallel_size": tier.tensor_parallel_size,
        "pipeline_parallel_size": tier.pipeline_parallel_size,
        **tier.engine_args,
    }
    config: dict[str, Any] = {
        "model_loading_config": {
            "model_id": tier.model.id or tier.name,
            "model_source": model_source(tier.model.source),
        },
        "engine_kwargs": engine_kwargs,
        "placement_group_config": {"bundles": placement_bundles(tier), "strategy": "PACK"},
        # vLLM's own metrics (queue, KV cache, time to first token), labelled with the model id:
        # the threshold autoscaler reads the top tier's queue and latency from them.
        "log_engine_metrics": True,
    }
    if tier.accelerator_type:
        config["accelerator_type"] = tier.accelerator_type
    if tier.env:
        config["runtime_env"] = {"env_vars": dict(tier.env)}
    return config


def tier_deployment_options(tier: Tier) -> dict[str, Any]:
    """The tier's replica bounds and load shedding, as a Serve config override of its deployment.

    Not in the application's `args`: Serve redeploys every deployment of an application whose
    args change, so a replicas change on one tier would restart all tiers and the router. As
    overrides in `deployments[]` they are reconfigured in place, on that tier only."""
    options: dict[str, Any] = {
        "name": tier_deployment_name(tier.name),
        "autoscaling_config": {
            "min_replicas": tier.replicas.min,
            "max_replicas": tier.replicas.max,
            "initial_replicas": max(tier.replicas.min, 1),
            "target_ongoing_requests": tier.replicas.target_ongoing_requests,
        },
    }
    # Load shedding is Serve's: a full queue makes the router's handle raise BackPressureError.
    if tier.replicas.max_ongoing_requests is not None:
        options["max_ongoing_requests"] = tier.replicas.max_ongoing_requests
    if tier.replicas.max_queued_requests is not None:
        options["max_queued_requests"] = tier.replicas.max_queued_requests
    return options


def router_user_config(spec: ModelTierSpec, name: str) -> dict[str, Any]:
    """Everything the router decides with; changes reconfigure it in place."""
    routing = spec.routing.model_dump(by_alias=True, mode="json")
    routing.pop("escalation")
    escalation = spec.routing.escalation
    prices = tier_prices(spec)  # the cost ledger's per-token prices (tierserve/cost.py)
    return {
        "modelTier": name,
        "tiers": [
            {
                "name": t.name,
                "modelId": t.model.id or t.name,
                "gpus": t.gpus_per_replica,
                "price": price.model_dump(by_alias=True, mode="json"),
            }
            for t, price in zip(spec.tiers, prices, strict=True)
        ],
        "threshold": escalation.threshold,
        "bounds": escalation.bounds.model_dump(mode="json"),
        **routing,
    }


def serve_application(mt: ModelTier, *, threshold: float | None = None) -> dict[str, Any]:
    """One Serve application (the REST API's and serveConfigV2's schema) for a ModelTier.

    `threshold` overrides the spec's value with the autoscaler's live one.
    """
    name, namespace = mt.metadata["name"], mt.metadata.get("namespace", "default")
    user_config = router_user_config(mt.spec, name)
    if threshold is not None:
        user_config["threshold"] = threshold
    return {
        "name": app_name(namespace, name),
        "route_prefix": mt.spec.ray.route_prefix,
        "import_path": APP_IMPORT_PATH,
        "args": {
            "modelTier": name,
            "tiers": [{"name": t.name, "llmConfig": llm_config(t)} for t in mt.spec.tiers],
        },
        "deployments": [
            {"name": INGRESS_DEPLOYMENT, "user_config": user_config},
            *(tier_deployment_options(t) for t in mt.spec.tiers),
        ],
    }


def serve_config(applications: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": applications,
    }


def owner_reference(mt: ModelTier) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": mt.metadata["name"],
        "uid": mt.metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _container(name: str, image: str, resources: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "resources": {"requests": resources, "limits": dict(resources)},
    }


def _resources(derived: dict[str, str], pod: RayPod | None) -> dict[str, dict[str, str]]:
    """tierserve's requests = limits, with the user's on top; a resource the user gives on one
    side only is set on both, so requests never exceed limits and the pod stays Guaranteed."""
    requests, limits = dict(derived), dict(derived)
    user = pod.resources if pod else None
    if user:
        for name in [*user.requests, *(k for k in user.limits if k not in user.requests)]:
            requests[name] = user.requests.get(name) or user.limits[name]
            limits[name] = user.limits.get(name) or user.requests[name]
    return {"requests": requests, "limits": limits}


def _dump(items: list[Any]) -> list[dict[str, Any]]:
    return [i.model_dump(by_alias=True, mode="json", exclude_none=True) for i in items]


def _model_cache(cache: ModelCache) -> tuple[dict[str, Any], dict[str, Any]]:
    """spec.ray.modelCache as the pod's volume and the container's mount."""
    if cache.claim_name:
        claim: dict[str, Any] = {"claimName": cache.claim_name}
        source: dict[str, Any] = {"persistentVolumeClaim": claim}
        if cache.read_only:
            claim["readOnly"] = True
    else:
        source = {"hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    mount: dict[str, Any] = {"name": MODEL_CACHE_VOLUME, "mountPath": cache.mount_path}
    if cache.read_only:
        mount["readOnly"] = True
    return {"name": MODEL_CACHE_VOLUME, **source}, mount


def pod_template(container: dict[str, Any], ray: RayConfig, pod: RayPod | None) -> dict[str, Any]:
    """A Ray pod template: tierserve's container (completed in place), the model cache and hub
    token every Ray pod gets, then the user's pod section on top. Validation has refused any
    collision, so nothing here overwrites; empty fields are left out."""
    env: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    if ray.model_cache:
        volume, mount = _model_cache(ray.model_cache)
        env.append({"name": HF_HOME, "value": ray.model_cache.mount_path})
        volumes.append(volume)
        mounts.append(mount)
    if ray.hub_token_secret:
        ref = ray.hub_token_secret.model_dump(mode="json")
        env.append({"name": HF_TOKEN, "valueFrom": {"secretKeyRef": ref}})
    if ray.image_pull_policy:
        container["imagePullPolicy"] = ray.image_pull_policy
    spec: dict[str, Any] = {"containers": [container]}
    metadata: dict[str, Any] = {}
    if pod:
        container["resources"] = _resources(container["resources"]["requests"], pod)
        env += _dump(pod.env)
        container["envFrom"] = _dump(pod.env_from)
        mounts += _dump(pod.volume_mounts)
        volumes += _dump(pod.volumes)
        metadata = {"labels": dict(pod.labels), "annotations": dict(pod.annotations)}
        spec |= {
            "nodeSelector": dict(pod.node_selector),
            "tolerations": _dump(pod.tolerations),
            "affinity": copy.deepcopy(pod.affinity),
            "serviceAccountName": pod.service_account_name,
            "priorityClassName": pod.priority_class_name,
            "imagePullSecrets": [{"name": n} for n in pod.image_pull_secrets],
        }
    container |= {"env": env, "volumeMounts": mounts}
    spec["volumes"] = volumes
    for obj in (container, spec, metadata):
        for key in [k for k, v in obj.items() if v in (None, [], {})]:
            del obj[key]
    return {"metadata": metadata, "spec": spec} if metadata else {"spec": spec}


def worker_groups(spec: ModelTierSpec, image: str) -> list[dict[str, Any]]:
    """One Ray worker group per replica shape (GPUs, accelerator); one pod per tier replica.
    Tiers sharing a group have equal pod sections (validation refuses otherwise)."""
    shapes: dict[tuple[int, str], list[Tier]] = defaultdict(list)
    for tier in spec.tiers:
        shapes[(tier.gpus_per_replica, tier.accelerator_type or "")].append(tier)
    groups = []
    for (gpus, accel), tiers in sorted(shapes.items()):
        # The engine's bundles plus the replica actor's CPU, which Ray Serve LLM merges into
        # the first bundle: without it a replica never fits its pod.
        cpus = max(t.cpus_per_replica * max(t.gpus_per_replica, 1) for t in tiers)
        cpus += LLM_REPLICA_CPUS
        resources = {"cpu": _quantity(cpus), "memory": f"{max(8, 8 * gpus)}Gi"}
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
        group_name = f"gpu{gpus}" if gpus else "cpu"
        if accel:
            group_name += f"-{accel.lower()}"
        container = _container("ray-worker", image, resources)
        groups.append(
            {
                "groupName": group_name,
                "replicas": sum(t.replicas.min for t in tiers),
                "minReplicas": sum(t.replicas.min for t in tiers),
                "maxReplicas": sum(t.replicas.max for t in tiers),
                "rayStartParams": {},
                "template": pod_template(container, spec.ray, tiers[0].pod),
            }
        )
    return groups


def _quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{int(cpus * 1000)}m"


# `ray start --resources` as KubeRay writes it itself (single-quoted compact JSON): it reaches
# the shell intact, and KubeRay's own parser reads it (the escaped double-quoted form of its
# older samples logs "failed to unmarshal resources" on every pod it builds).
RAY_START_RESOURCES = "'" + json.dumps({ROUTER_RESOURCE: 1}, separators=(",", ":")) + "'"


def ray_service(mt: ModelTier, *, threshold: float | None = None) -> dict[str, Any]:
    """The KubeRay RayService for the kuberay backend, owned by the ModelTier."""
    image = mt.spec.ray.image
    if not image:  # admission (CEL) already refuses this; keep the pure function total
        raise ValueError("spec.ray.image is required for the kuberay backend")
    name, namespace = mt.metadata["name"], mt.metadata.get("namespace", "default")
    app = serve_application(mt, threshold=threshold)
    app["name"] = name  # one app per RayService: no namespacing needed
    ingress = next(d for d in app["deployments"] if d["name"] == INGRESS_DEPLOYMENT)
    # Serve takes a config's ray_actor_options whole, so the CPUs are restated.
    ingress["ray_actor_options"] = {"num_cpus": ROUTER_CPUS, "resources": {ROUTER_RESOURCE: 1}}
    head_resources = {"cpu": "2", "memory": "8Gi"}
    head = _container("ray-head", image, head_resources)
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": SERVE_PORT, "name": "serve"},
    ]
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**MANAGED_BY, f"{GROUP}/modeltier": name},
    }
    if "uid" in mt.metadata:
        metadata["ownerReferences"] = [owner_reference(mt)]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config([app]), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": mt.spec.ray.ray_version,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # The head takes the router replica, no tier replica: GPUs stay for the
                    # tiers, a tier replica needs more than the router's CPUs, and the router
                    # needs the head's ROUTER_RESOURCE.
                    "rayStartParams": {
                        "num-cpus": str(math.ceil(ROUTER_CPUS)),
                        "resources": RAY_START_RESOURCES,
                        "dashboard-host": "0.0.0.0",
                    },
                    "template": pod_template(head, mt.spec.ray, mt.spec.ray.head),
                },
                "workerGroupSpecs": worker_groups(mt.spec, image),
            },
        },
    }


def render(mt: ModelTier, *, threshold: float | None = None) -> list[dict[str, Any]]:
    """What the operator would create, as Kubernetes-style objects for review."""
    if mt.spec.ray.backend == "kuberay":
        return [ray_service(mt, threshold=threshold)]
    name, namespace = mt.metadata["name"], mt.metadata.get("namespace", "default")
    return [
        {
            "apiVersion": "serve.ray.io/v1",  # not a Kubernetes object: the Serve REST payload
            "kind": "ServeApplication",
            "metadata": {
                "name": app_name(namespace, name),
                "dashboardURL": mt.spec.ray.dashboard_url,
            },
            "spec": serve_application(mt, threshold=threshold),
        }
    ]


def main(argv: list[str] | None = None) -> None:
    """`tierserve render -f modeltier.yaml`: print exactly what the operator would create."""
    import argparse
    import sys

    from pydantic import ValidationError

    parser = argparse.ArgumentParser(prog="tierserve render", description=main.__doc__)
    parser.add_argument("-f", "--filename", required=True, help="ModelTier manifest ('-': stdin)")
    parser.add_argument("-n", "--namespace", default=None, help="namespace if the file has none")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    out = []
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != KIND:
            continue
        doc.setdefault("metadata", {})
        if args.namespace or "namespace" not in doc["metadata"]:
            doc["metadata"]["namespace"] = args.namespace or "default"
        try:
            mt = ModelTier.model_validate(doc)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                print(
                    f"error: {doc['metadata'].get('name')}: {field}: {err['msg']}", file=sys.stderr
                )
            sys.exit(1)
        out.extend(render(mt))
    sys.stdout.write(dump_yaml(out))


class _ReviewDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as literal blocks, so a diff in review is readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReviewDumper.add_representer(str, _str)


def dump_yaml(objs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objs, Dumper=_ReviewDumper, sort_keys=False, width=100)
