"""The Ray pods' shape (spec.tiers[].pod, spec.ray.head, modelCache, hubTokenSecret): where each
field lands in the RayService, and that every invalid spec is refused naming the field, by the
pydantic models and by the rules the generated CRD carries for the API server."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tierserve.api import crd
from tierserve.api.v1alpha1 import ModelTier, quantity
from tierserve.build import render

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpu-ladder.yaml"
DOC: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
Doc = dict[str, Any]


def ladder(edit: Callable[[Doc], object] | None = None) -> Doc:
    doc = copy.deepcopy(DOC)
    doc["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    if edit:
        edit(doc)
    return doc


def rayservice(doc: Doc) -> dict[str, Any]:
    return render.ray_service(ModelTier.model_validate(doc))


def pods(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod templates by group name, the head as `head`."""
    cluster = rs["spec"]["rayClusterConfig"]
    found = {"head": cluster["headGroupSpec"]["template"]}
    return found | {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}


def tier_pod(doc: Doc, i: int = 0) -> Doc:
    pod: Doc = doc["spec"]["tiers"][i]["pod"]
    return pod


def head(doc: Doc) -> Doc:
    pod: Doc = doc["spec"]["ray"]["head"]
    return pod


# --- rendering ---------------------------------------------------------------------------


def test_each_worker_group_gets_its_tiers_pod_shape_where_kuberay_reads_it() -> None:
    templates = pods(rayservice(ladder()))
    small, large = templates["gpu1-l4"]["spec"], templates["gpu4-h100"]["spec"]
    assert small["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert large["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    for spec in (small, large):
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["serviceAccountName"] == "tierserve-ray"
    assert large["priorityClassName"] == "serving-high"
    assert "priorityClassName" not in small
    worker = large["containers"][0]
    assert {"name": "vllm-cache", "emptyDir": {"sizeLimit": "50Gi"}} in large["volumes"]
    assert {"name": "vllm-cache", "mountPath": "/home/ray/.cache/vllm"} in worker["volumeMounts"]
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in worker["env"]


def test_resources_override_cpu_and_memory_on_both_sides_and_gpus_stay_derived() -> None:
    templates = pods(rayservice(ladder()))
    small = templates["gpu1-l4"]["spec"]["containers"][0]["resources"]
    want = {"cpu": "6", "memory": "28Gi", "nvidia.com/gpu": "1"}
    assert small == {"requests": want, "limits": want}
    large = templates["gpu4-h100"]["spec"]["containers"][0]["resources"]
    # cpu stays derived (cpusPerReplica 4 x 4 GPUs + the replica actor's 1), memory is the
    # user's, GPUs from the tier
    assert large["limits"] == {"cpu": "17", "memory": "320Gi", "nvidia.com/gpu": "4"}


def test_limits_above_requests_stay_apart() -> None:
    def edit(doc: Doc) -> None:
        tier_pod(doc)["resources"] = {
            "requests": {"memory": "24Gi"},
            "limits": {"memory": "32Gi", "ephemeral-storage": "100Gi"},
        }

    resources = pods(rayservice(ladder(edit)))["gpu1-l4"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == "24Gi"
    assert resources["limits"]["memory"] == "32Gi"
    # a resource on one side only is set on both: requests never exceed limits
    assert resources["requests"]["ephemeral-storage"] == "100Gi"
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"


def test_head_is_sized_and_shaped_and_still_schedules_no_replicas() -> None:
    def edit(doc: Doc) -> None:
        head(doc).update(
            nodeSelector={"pool": "cpu"},
            tolerations=[{"key": "dedicated", "value": "ray", "effect": "NoSchedule"}],
            affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            labels={"team": "ml"},
            annotations={"prometheus.io/scrape": "true"},
        )

    rs = rayservice(ladder(edit))
    template = pods(rs)["head"]
    container = template["spec"]["containers"][0]
    want = {"cpu": "4", "memory": "16Gi"}
    assert container["resources"] == {"requests": want, "limits": want}
    assert [p["name"] for p in container["ports"]] == ["gcs-server", "dashboard", "client", "serve"]
    assert template["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert template["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ray", "effect": "NoSchedule"}
    ]
    assert template["spec"]["affinity"] == {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
    }
    assert template["metadata"] == {
        "labels": {"team": "ml"},
        "annotations": {"prometheus.io/scrape": "true"},
    }
    head_group = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head_group["rayStartParams"]["num-cpus"] == "1"  # the router's 0.5, no tier's


def test_model_cache_and_hub_token_reach_every_ray_container() -> None:
    templates = pods(rayservice(ladder()))
    assert set(templates) == {"head", "gpu1-l4", "gpu4-h100"}
    for name, template in templates.items():
        spec = template["spec"]
        (container,) = spec["containers"]
        token = {"secretKeyRef": {"name": "hf-token", "key": "token"}}
        assert container["env"][:2] == [
            {"name": "HF_HOME", "value": "/models"},
            {"name": "HF_TOKEN", "valueFrom": token},
        ], name
        assert container["volumeMounts"][0] == {"name": "model-cache", "mountPath": "/models"}
        assert spec["volumes"][0] == {
            "name": "model-cache",
            "persistentVolumeClaim": {"claimName": "model-weights"},
        }, name


def test_a_host_path_cache_read_only_mounts_read_only() -> None:
    def edit(doc: Doc) -> None:
        doc["spec"]["ray"]["modelCache"] = {
            "hostPath": "/mnt/nvme/models",
            "mountPath": "/cache",
            "readOnly": True,
        }

    for template in pods(rayservice(ladder(edit))).values():
        assert template["spec"]["volumes"][0] == {
            "name": "model-cache",
            "hostPath": {"path": "/mnt/nvme/models", "type": "DirectoryOrCreate"},
        }
        container = template["spec"]["containers"][0]
        assert container["volumeMounts"][0] == {
            "name": "model-cache",
            "mountPath": "/cache",
            "readOnly": True,
        }
        assert container["env"][0] == {"name": "HF_HOME", "value": "/cache"}


def test_env_from_and_a_mount_of_the_cache_at_a_second_path_render() -> None:
    def edit(doc: Doc) -> None:
        tier_pod(doc, 1).update(
            envFrom=[{"secretRef": {"name": "s3-creds"}, "prefix": "AWS_"}],
            volumeMounts=[{"name": "model-cache", "mountPath": "/weights", "subPath": "70b"}],
            env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        )

    container = pods(rayservice(ladder(edit)))["gpu4-h100"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"prefix": "AWS_", "secretRef": {"name": "s3-creds"}}]
    assert container["volumeMounts"][1] == {
        "name": "model-cache",
        "mountPath": "/weights",
        "subPath": "70b",
    }
    assert container["env"][2] == {
        "name": "POD_IP",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }


def test_without_pod_sections_the_rayservice_is_what_it_was() -> None:
    """No pod, head, cache or token: containers carry only name, image, resources (and ports)."""
    plain = ladder()
    for tier in plain["spec"]["tiers"]:
        del tier["pod"]
    for key in ("head", "modelCache", "hubTokenSecret"):
        del plain["spec"]["ray"][key]
    for template in pods(rayservice(plain)).values():
        assert set(template) == {"spec"}
        assert set(template["spec"]) == {"containers"}
        assert set(template["spec"]["containers"][0]) <= {"name", "image", "resources", "ports"}


def test_the_cli_prints_what_the_cluster_gets(capsys: pytest.CaptureFixture[str]) -> None:
    render.main(["-f", str(EXAMPLE), "-n", "ml"])
    (printed,) = yaml.safe_load_all(capsys.readouterr().out)
    doc = ladder()
    del doc["metadata"]["uid"]
    assert printed == rayservice(doc)


def test_quantities_compare_across_units() -> None:
    assert quantity("1Gi") == Decimal(1024**3)
    assert quantity("500m") == Decimal("0.5")
    assert quantity("1e3") == quantity("1k") == Decimal(1000)
    assert quantity("1.5G") < quantity("1536Mi")
    assert quantity("2E") == Decimal(2 * 10**18) and quantity("1Ei") == Decimal(2**60)
    assert quantity("5") == Decimal(5)


# --- refusals ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """An invalid edit of the example, and what the refusal must name."""

    name: str
    edit: Callable[[Doc], object]
    names: tuple[str, ...]  # in the pydantic error (its location and message together)
    cel: str | None  # a CEL message (or OpenAPI keyword) of the CRD that refuses it too


def _mount(name: str, path: str = "/data") -> Callable[[Doc], object]:
    return lambda d: tier_pod(d).update(volumeMounts=[{"name": name, "mountPath": path}])


def _two_tiers_one_group(doc: Doc) -> None:
    doc["spec"]["tiers"][1].update(gpusPerReplica=1, tensorParallelSize=1, acceleratorType="L4")


BAD: list[Bad] = [
    Bad(
        "duplicate-volume",
        lambda d: tier_pod(d).update(
            volumes=[{"name": "scratch", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}]
        ),
        ("tiers.0.pod", "volumes", "scratch"),
        "x-kubernetes-list-type",
    ),
    Bad(
        "mount-of-an-unknown-volume",
        _mount("weights"),
        ("tiers.0.pod", "volumeMounts[0].name", "weights"),
        "volumeMounts[].name must name one of volumes[]",
    ),
    Bad(
        "toleration-exists-with-a-value",
        lambda d: tier_pod(d)["tolerations"][0].update(value="present"),
        ("tiers.0.pod.tolerations.0", "value", "Exists"),
        "tolerations[].value must be empty when operator is Exists",
    ),
    Bad(
        "toleration-equal-without-a-key",
        lambda d: tier_pod(d).update(tolerations=[{"operator": "Equal", "value": "x"}]),
        ("tiers.0.pod.tolerations.0", "key"),
        "tolerations[].key is required unless operator is Exists",
    ),
    Bad(
        "toleration-seconds-without-no-execute",
        lambda d: tier_pod(d)["tolerations"][0].update(tolerationSeconds=30),
        ("tiers.0.pod.tolerations.0", "tolerationSeconds", "NoExecute"),
        "tolerations[].tolerationSeconds needs effect NoExecute",
    ),
    Bad(
        "memory-in-words",
        lambda d: tier_pod(d)["resources"]["requests"].update(memory="12 gigs"),
        ("tiers.0.pod.resources.requests.memory", "pattern"),
        "pattern",
    ),
    Bad(
        "head-memory-in-words",
        lambda d: head(d)["resources"].update(limits={"memory": "lots"}),
        ("ray.head.resources.limits.memory", "pattern"),
        "pattern",
    ),
    Bad(
        "unknown-resource-name",
        lambda d: tier_pod(d)["resources"]["requests"].update(memroy="8Gi"),
        ("tiers.0.pod.resources", "requests.memroy"),
        "resource names are cpu, memory",
    ),
    Bad(
        "requests-above-limits",
        lambda d: tier_pod(d)["resources"].update(limits={"memory": "16Gi"}),
        ("tiers.0.pod.resources", "requests.memory", "limits.memory"),
        None,  # the operator (InvalidSpec) and Kubernetes' pod validation refuse it
    ),
    Bad(
        "service-account-with-uppercase",
        lambda d: tier_pod(d).update(serviceAccountName="Tierserve-Ray"),
        ("tiers.0.pod.serviceAccountName", "pattern"),
        "pattern",
    ),
    Bad(
        "image-pull-secret-not-a-name",
        lambda d: head(d).update(imagePullSecrets=["reg cred"]),
        ("ray.head.imagePullSecrets.0", "pattern"),
        "pattern",
    ),
    Bad(
        "gpu-override-contradicting-gpus-per-replica",
        lambda d: (
            tier_pod(d)["resources"]["limits"].update({"nvidia.com/gpu": "2"})
            if "limits" in tier_pod(d)["resources"]
            else tier_pod(d)["resources"].update(limits={"nvidia.com/gpu": "2"})
        ),
        ("tiers.0", "pod.resources.limits['nvidia.com/gpu']", "gpusPerReplica"),
        "pod.resources may name nvidia.com/gpu only as gpusPerReplica",
    ),
    Bad(
        "gpus-on-the-head",
        lambda d: head(d)["resources"]["requests"].update({"nvidia.com/gpu": "1"}),
        ("ray", "head.resources.requests['nvidia.com/gpu']"),
        "head.resources may not name nvidia.com/gpu",
    ),
    Bad(
        "a-volume-named-like-the-model-cache",
        lambda d: tier_pod(d).update(volumes=[{"name": "model-cache", "emptyDir": {}}]),
        ("tiers.0.pod", "volumes", "model-cache", "spec.ray.modelCache"),
        "volumes[].name model-cache is reserved for spec.ray.modelCache",
    ),
    Bad(
        "a-mount-of-the-model-cache-without-one",
        lambda d: (_mount("model-cache")(d), d["spec"]["ray"].pop("modelCache")),
        ("tiers[0].pod.volumeMounts[0].name", "spec.ray.modelCache"),
        "a volumeMount names model-cache but spec.ray.modelCache is unset",
    ),
    Bad(
        "a-mount-where-the-model-cache-is",
        lambda d: head(d).update(
            volumes=[{"name": "x", "emptyDir": {}}],
            volumeMounts=[{"name": "x", "mountPath": "/models"}],
        ),
        ("ray.head.volumeMounts[0].mountPath", "spec.ray.modelCache"),
        "volumeMounts[].mountPath may not be spec.ray.modelCache.mountPath",
    ),
    Bad(
        "two-mounts-at-one-path",
        lambda d: tier_pod(d).update(
            volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}],
            volumeMounts=[{"name": "a", "mountPath": "/x"}, {"name": "b", "mountPath": "/x"}],
        ),
        ("tiers.0.pod", "volumeMounts", "/x"),
        "x-kubernetes-list-type",
    ),
    Bad(
        "env-overriding-the-rendered-token",
        lambda d: tier_pod(d, 1).update(env=[{"name": "HF_TOKEN", "value": "hf_x"}]),
        ("tiers[1].pod.env[0].name", "HF_TOKEN", "spec.ray.hubTokenSecret"),
        "env[].name HF_TOKEN is set by spec.ray.hubTokenSecret",
    ),
    Bad(
        "env-overriding-the-rendered-hf-home",
        lambda d: head(d).update(env=[{"name": "HF_HOME", "value": "/tmp"}]),
        ("ray.head.env[0].name", "HF_HOME", "spec.ray.modelCache"),
        "env[].name HF_HOME is set by spec.ray.modelCache",
    ),
    Bad(
        "duplicate-env",
        lambda d: tier_pod(d).update(env=[{"name": "A", "value": "1"}, {"name": "A"}]),
        ("tiers.0.pod", "env", "A"),
        "x-kubernetes-list-type",
    ),
    Bad(
        "env-with-value-and-value-from",
        lambda d: tier_pod(d).update(
            env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]
        ),
        ("tiers.0.pod.env.0", "value and valueFrom"),
        "env[]: value and valueFrom are exclusive",
    ),
    Bad(
        "env-value-from-two-sources",
        lambda d: tier_pod(d).update(
            env=[
                {
                    "name": "A",
                    "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                }
            ]
        ),
        ("tiers.0.pod.env.0.valueFrom", "exactly one"),
        "env[].valueFrom needs exactly one of",
    ),
    Bad(
        "env-from-secret-and-config-map",
        lambda d: tier_pod(d).update(
            envFrom=[{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]
        ),
        ("tiers.0.pod.envFrom.0", "secretRef", "configMapRef"),
        "envFrom[] needs exactly one of secretRef and configMapRef",
    ),
    Bad(
        "model-cache-claim-and-host-path",
        lambda d: d["spec"]["ray"]["modelCache"].update(hostPath="/mnt/models"),
        ("ray.modelCache", "claimName", "hostPath"),
        "modelCache needs exactly one of claimName and hostPath",
    ),
    Bad(
        "model-cache-without-a-source",
        lambda d: d["spec"]["ray"]["modelCache"].pop("claimName"),
        ("ray.modelCache", "claimName", "hostPath"),
        "modelCache needs exactly one of claimName and hostPath",
    ),
    Bad(
        "hub-token-secret-not-a-name",
        lambda d: d["spec"]["ray"]["hubTokenSecret"].update(name="HF Token"),
        ("ray.hubTokenSecret.name", "pattern"),
        "pattern",
    ),
    Bad(
        "kuberay-labels",
        lambda d: tier_pod(d).update(labels={"ray.io/node-type": "worker"}),
        ("tiers.0.pod", "labels", "ray.io/"),
        "labels under ray.io/ are KubeRay's",
    ),
    Bad(
        "a-volume-without-a-source",
        lambda d: tier_pod(d).update(volumes=[{"name": "x"}]),
        ("tiers.0.pod.volumes.0", "volume source"),
        None,  # a pass-through object: Kubernetes would default it to an emptyDir silently
    ),
    Bad(
        "a-volume-with-a-misspelt-source",
        lambda d: tier_pod(d).update(volumes=[{"name": "x", "persistentVolumeClam": {}}]),
        ("tiers.0.pod.volumes.0", "persistentVolumeClam"),
        None,
    ),
    Bad(
        "two-tiers-one-worker-group-different-pods",
        _two_tiers_one_group,
        ("tiers[1].pod", "worker group", "acceleratorType"),
        None,  # comparing pass-through objects is beyond the API server's CEL cost budget
    ),
    Bad(
        "unknown-pod-field",
        lambda d: tier_pod(d).update(nodeSelectors={"a": "b"}),
        ("tiers.0.pod.nodeSelectors",),
        None,  # the API server prunes unknown fields (kubectl --validate=strict refuses them)
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=lambda b: b.name)
def test_invalid_pod_shapes_are_refused_naming_the_field(bad: Bad) -> None:
    doc = ladder(bad.edit)
    with pytest.raises(ValidationError) as refused:
        ModelTier.model_validate(doc)
    said = "\n".join(
        f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in refused.value.errors()
    )
    for name in bad.names:
        assert name in said, said


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _texts(node: Any) -> str:
    return yaml.safe_dump(node, width=10_000)


@pytest.mark.parametrize("bad", [b for b in BAD if b.cel], ids=lambda b: b.name)
def test_the_crd_carries_the_rule_that_refuses_it_at_admission(bad: Bad) -> None:
    assert bad.cel and bad.cel in _texts(_schema())


def test_the_crd_types_the_simple_fields_and_passes_through_the_large_ones() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    pod = spec["tiers"]["items"]["properties"]["pod"]["properties"]
    assert spec["ray"]["properties"]["head"]["properties"] == pod
    assert pod["nodeSelector"]["additionalProperties"]["type"] == "string"
    toleration = pod["tolerations"]["items"]["properties"]
    assert toleration["operator"]["enum"] == ["Exists", "Equal"]
    assert toleration["effect"]["enum"] == ["NoSchedule", "PreferNoSchedule", "NoExecute"]
    memory = pod["resources"]["properties"]["requests"]["additionalProperties"]
    assert memory["type"] == "string" and memory["pattern"].startswith("^([0-9]+")
    assert pod["serviceAccountName"]["pattern"].startswith("^[a-z0-9]")
    assert pod["imagePullSecrets"]["items"]["type"] == "string"
    assert pod["affinity"] == {
        "type": "object",
        "description": pod["affinity"]["description"],
        "x-kubernetes-preserve-unknown-fields": True,
    }
    volume = pod["volumes"]["items"]
    assert volume["x-kubernetes-preserve-unknown-fields"] is True
    assert volume["required"] == ["name"]
    assert pod["volumes"]["x-kubernetes-list-map-keys"] == ["name"]
    assert pod["volumeMounts"]["x-kubernetes-list-map-keys"] == ["mountPath"]
    assert pod["env"]["x-kubernetes-list-map-keys"] == ["name"]
    cache = spec["ray"]["properties"]["modelCache"]["properties"]
    assert cache["mountPath"]["default"] == "/models"
    assert spec["ray"]["properties"]["hubTokenSecret"]["properties"]["key"]["default"] == "token"


def test_cel_rules_over_every_pod_use_no_list_literals() -> None:
    """The API server cannot bound a list literal's cost and would refuse the whole CRD."""
    rules = [r["rule"] for r in _schema()["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("self.ray.head.volumeMounts" in r for r in rules)
    assert not any("[self." in r or "[t." in r for r in rules)
