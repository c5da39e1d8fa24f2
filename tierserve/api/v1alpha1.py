"""The ModelTier API, `tierserve.io/v1alpha1`: the single source of truth for the CRD.

The CRD's OpenAPI schema (types, enums, ranges, defaults, descriptions) and its CEL rules are
generated from these models by `tierserve crds`; the operator parses objects with the same
models. Rules that span fields live in `CEL` annotations so the API server refuses bad input at
admission, naming the field, before the operator ever sees it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from tierserve.names import RAY_VERSION

GROUP = "tierserve.io"
VERSION = "v1alpha1"
KIND = "ModelTier"
PLURAL = "modeltiers"
SINGULAR = "modeltier"
SHORT_NAMES = ["mt"]

MAX_TIERS = 8
MAX_RULES = 16
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry; `field_path` makes the API server name the field."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused, not dropped."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True
    )


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ModelSource(_Model):
    source: str = Field(
        min_length=1,
        description=(
            "Where the weights come from: hf://org/name, s3://bucket/path, gs://bucket/path, "
            "or a local path inside the serving image or a mounted volume."
        ),
    )
    id: str | None = Field(
        default=None,
        description="Model id served by this tier's engine; defaults to the tier's name.",
    )


class ReplicaBounds(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.min <= self.max", "replicas.min must be <= replicas.max", ".min"),
                cel(
                    "!has(self.maxOngoingRequests) || "
                    "self.targetOngoingRequests <= self.maxOngoingRequests",
                    "replicas.targetOngoingRequests must be <= replicas.maxOngoingRequests",
                    ".targetOngoingRequests",
                ),
            ]
        }
    )

    min: int = Field(default=1, ge=0, le=1000, description="Fewest replicas Serve keeps running.")
    max: int = Field(default=1, ge=1, le=1000, description="Most replicas Serve scales up to.")
    target_ongoing_requests: float = Field(
        default=16.0,
        gt=0,
        description="Serve autoscaling target: in-flight requests per replica before scaling up.",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description=(
            "Most requests one replica works on at once (Serve's max_ongoing_requests); more "
            "wait in the router's queue. Unset: no limit (vLLM's scheduler queues them)."
        ),
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description=(
            "Most requests each router replica queues for this tier once every replica is at "
            "maxOngoingRequests; beyond it the tier counts as overloaded: the request falls "
            "back to another tier, or gets 429 with Retry-After. Unset: unbounded queue."
        ),
    )


DEFAULT_TOKENS_PER_SECOND = 1000.0


class TokenPrice(_Model):
    prompt_per_million: float = Field(
        ge=0, le=1e9, description="Price of a million prompt tokens, in costPerHour's currency."
    )
    completion_per_million: float = Field(
        ge=0,
        le=1e9,
        description="Price of a million completion tokens, in costPerHour's currency.",
    )


# --- The shape of the Ray pods (kuberay backend) --------------------------------------------

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes' resource.Quantity, unsigned: 4, 500m, 1.5, 64Gi, 1e9. Written as strings.
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_CACHE_VOLUME = "model-cache"
HF_HOME = "HF_HOME"
HF_TOKEN = "HF_TOKEN"
MAX_POD_ITEMS = 32
# Volume sources a Pod's volume may name (core/v1 Volume, one per volume).
VOLUME_SOURCES = frozenset(
    {
        "awsElasticBlockStore",
        "azureDisk",
        "azureFile",
        "cephfs",
        "cinder",
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "fc",
        "flexVolume",
        "flocker",
        "gcePersistentDisk",
        "gitRepo",
        "glusterfs",
        "hostPath",
        "image",
        "iscsi",
        "nfs",
        "persistentVolumeClaim",
        "photonPersistentDisk",
        "portworxVolume",
        "projected",
        "quobyte",
        "rbd",
        "scaleIO",
        "secret",
        "storageos",
        "vsphereVolume",
    }
)

Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
Quantity = Annotated[str, Field(min_length=1, max_length=64, pattern=QUANTITY)]
_RESOURCE_NAME_CEL = (
    "k in ['cpu', 'memory', 'ephemeral-storage'] || k.startsWith('hugepages-') || k.contains('/')"
)
_SUFFIXES = {"n": "1e-9", "u": "1e-6", "m": "1e-3", "": "1", "k": "1e3", "M": "1e6", "G": "1e9"}
_SUFFIXES |= {"T": "1e12", "P": "1e15", "E": "1e18"}
_SUFFIXES |= {s + "i": str(1024**p) for p, s in enumerate("KMGTPE", start=1)}


def quantity(text: str) -> Decimal:
    """A Kubernetes quantity's value, so requests and limits written differently compare."""
    match = re.fullmatch(r"([0-9.]+)(.*)", text)
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    if suffix in _SUFFIXES:  # E alone is exa, Ei exbi; otherwise e/E starts an exponent
        return Decimal(number) * Decimal(_SUFFIXES[suffix])
    return Decimal(number + suffix)


def _resource_name_ok(name: str) -> bool:
    return (
        name in ("cpu", "memory", "ephemeral-storage")
        or name.startswith("hugepages-")
        or ("/" in name)
    )


def _gpu_cel(resources: str, allowed: str | None) -> str:
    """CEL: the Resources at `resources` name nvidia.com/gpu only as `allowed` (None: never)."""

    def side(name: str) -> str:
        has_gpu = f"'{GPU_RESOURCE}' in {resources}.{name}"
        ok = (
            f"!({has_gpu})"
            if allowed is None
            else f"(!({has_gpu}) || {resources}.{name}['{GPU_RESOURCE}'] == {allowed})"
        )
        return f"(!has({resources}.{name}) || {ok})"

    return f"{side('requests')} && {side('limits')}"


def _every_pod(condition: str) -> str:
    """CEL, at spec: `condition` holds with `$p` as spec.ray.head and as every tier's pod.

    Spelled out per pod rather than bound with `[pod].all(p, ...)`: the API server cannot bound
    the cost of a list literal, and refuses the CRD."""
    head = condition.replace("$p", "self.ray.head")
    tier = condition.replace("$p", "t.pod")
    return f"((!has(self.ray.head) || {head}) && self.tiers.all(t, !has(t.pod) || {tier}))"


class Resources(_Model):
    """Requests and limits on top of the ones tierserve derives; a resource given on one side only
    is set on both (tierserve's pods are Guaranteed: requests equal limits)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"(!has(self.requests) || self.requests.all(k, {_RESOURCE_NAME_CEL})) && "
                    f"(!has(self.limits) || self.limits.all(k, {_RESOURCE_NAME_CEL}))",
                    "resource names are cpu, memory, ephemeral-storage, hugepages-<size> or a "
                    "domain-qualified extended resource such as nvidia.com/gpu",
                )
            ]
        }
    )

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "Resource requests, e.g. {cpu: '8', memory: 64Gi}: Kubernetes quantities, as "
            "strings ('8', '500m', '64Gi'). Override "
            "tierserve's (worker: cpusPerReplica x GPUs CPUs, 8Gi per GPU; head: 2 CPUs, 8Gi); "
            "nvidia.com/gpu is derived from gpusPerReplica and may only repeat it."
        ),
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Resource limits, as requests."
    )

    @model_validator(mode="after")
    def _names_and_order(self) -> Resources:
        for side, values in (("requests", self.requests), ("limits", self.limits)):
            for name in values:
                if not _resource_name_ok(name):
                    raise ValueError(
                        f"{side}.{name}: not a resource name (cpu, memory, ephemeral-storage, "
                        "hugepages-<size>, or domain-qualified such as nvidia.com/gpu)"
                    )
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is not None and quantity(request) > quantity(limit):
                raise ValueError(f"requests.{name}: {request} is more than limits.{name} {limit}")
        return self

    def gpu_conflict(self, gpus: int) -> str | None:
        """The field that asks for a GPU count other than `gpus`, if any."""
        for side, values in (("requests", self.requests), ("limits", self.limits)):
            if GPU_RESOURCE in values and values[GPU_RESOURCE] != str(gpus):
                return f"resources.{side}['{GPU_RESOURCE}']"
        return None


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(_Model):
    """A core/v1 Toleration: lets the pods onto nodes with a matching taint (e.g. GPU pools)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.operator != 'Exists' || !has(self.value)",
                    "tolerations[].value must be empty when operator is Exists",
                    ".value",
                ),
                cel(
                    "self.operator == 'Exists' || has(self.key)",
                    "tolerations[].key is required unless operator is Exists",
                    ".key",
                ),
                cel(
                    "!has(self.tolerationSeconds) || "
                    "(has(self.effect) && self.effect == 'NoExecute')",
                    "tolerations[].tolerationSeconds needs effect NoExecute",
                    ".tolerationSeconds",
                ),
            ]
        }
    )

    key: str | None = Field(
        default=None, min_length=1, max_length=316, description="Taint key, e.g. nvidia.com/gpu."
    )
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL,
        description="Equal: the taint's value must be value; Exists: any value (leave value out).",
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal).")
    effect: TaintEffect | None = Field(
        default=None, description="Taint effect to tolerate; unset: all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="NoExecute only: how long the pod stays once tainted."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == TolerationOperator.EXISTS and self.value is not None:
            raise ValueError("value: must be empty when operator is Exists")
        if self.operator != TolerationOperator.EXISTS and self.key is None:
            raise ValueError("key: required unless operator is Exists")
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            raise ValueError("tolerationSeconds: needs effect NoExecute")
        return self


class KeyRef(_Model):
    name: Name = Field(
        description="The Secret's or ConfigMap's name, in the ModelTier's namespace."
    )
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key within it."
    )
    optional: bool | None = Field(default=None, description="Start the pod even if it is missing.")


class FieldRef(_Model):
    field_path: str = Field(
        min_length=1, max_length=256, description="A pod field, e.g. status.podIP, spec.nodeName."
    )


class EnvVarSource(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) + "
                    "(has(self.fieldRef) ? 1 : 0) == 1",
                    "env[].valueFrom needs exactly one of secretKeyRef, configMapKeyRef, fieldRef",
                )
            ]
        }
    )

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(default=None, description="A field of the pod.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (
            sum(
                x is not None
                for x in (self.secret_key_ref, self.config_map_key_ref, self.field_ref)
            )
            != 1
        ):
            raise ValueError("needs exactly one of secretKeyRef, configMapKeyRef, fieldRef")
        return self


class EnvVar(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.value) && has(self.valueFrom))",
                    "env[]: value and valueFrom are exclusive",
                    ".valueFrom",
                )
            ]
        }
    )

    name: str = Field(max_length=256, pattern=ENV_NAME, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="A literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Or the value from a Secret, a ConfigMap or the pod."
    )

    @model_validator(mode="after")
    def _one_value(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("value and valueFrom are exclusive")
        return self


class LocalRef(_Model):
    name: Name = Field(
        description="The Secret's or ConfigMap's name, in the ModelTier's namespace."
    )
    optional: bool | None = Field(default=None, description="Start the pod even if it is missing.")


class EnvFromSource(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.secretRef) != has(self.configMapRef)",
                    "envFrom[] needs exactly one of secretRef and configMapRef",
                )
            ]
        }
    )

    prefix: str | None = Field(
        default=None, max_length=256, pattern=ENV_NAME, description="Prepended to every key."
    )
    secret_ref: LocalRef | None = Field(default=None, description="Every key of a Secret.")
    config_map_ref: LocalRef | None = Field(default=None, description="Every key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("needs exactly one of secretRef and configMapRef")
        return self


class Volume(_Model):
    """A core/v1 Volume: its name and one volume source (persistentVolumeClaim, emptyDir,
    secret, configMap, csi, ...), passed through to the pod unchanged."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        max_length=63,
        pattern=DNS_LABEL,
        description=f"Volume name, unique in the pod; `{MODEL_CACHE_VOLUME}` is tierserve's.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = sorted(self.model_extra or {})
        if len(sources) != 1 or sources[0] not in VOLUME_SOURCES:
            raise ValueError(
                f"volume {self.name!r} needs exactly one volume source (e.g. "
                f"persistentVolumeClaim, emptyDir, secret), got {sources or 'none'}"
            )
        if not isinstance((self.model_extra or {})[sources[0]], dict):
            raise ValueError(f"volume {self.name!r}: {sources[0]} must be an object")
        return self


class VolumeMount(_Model):
    name: str = Field(
        max_length=63,
        pattern=DNS_LABEL,
        description=f"One of the pod's volumes, or `{MODEL_CACHE_VOLUME}` (spec.ray.modelCache).",
    )
    mount_path: str = Field(
        min_length=2, max_length=1024, pattern=r"^/", description="Where, in the Ray container."
    )
    sub_path: str | None = Field(default=None, max_length=1024, description="A path in the volume.")
    read_only: bool | None = Field(default=None, description="Mount it read-only.")


def _list_map(key: str) -> JsonDict:
    """A list the API server keeps unique by `key` (and merges by it on server-side apply)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class RayPod(_Model):
    """What users shape in a Ray pod; tierserve's own container, resources, env and volumes stay,
    these are added on top (collisions are refused, never overwritten)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"!has(self.volumes) || self.volumes.all(v, v.name != '{MODEL_CACHE_VOLUME}')",
                    f"volumes[].name {MODEL_CACHE_VOLUME} is reserved for spec.ray.modelCache",
                    ".volumes",
                ),
                cel(
                    f"!has(self.volumeMounts) || self.volumeMounts.all(m, m.name == "
                    f"'{MODEL_CACHE_VOLUME}' || (has(self.volumes) && "
                    "self.volumes.exists(v, v.name == m.name)))",
                    "volumeMounts[].name must name one of volumes[] "
                    f"(or {MODEL_CACHE_VOLUME}, spec.ray.modelCache's volume)",
                    ".volumeMounts",
                ),
                cel(
                    "!has(self.labels) || self.labels.all(k, !k.startsWith('ray.io/'))",
                    "labels under ray.io/ are KubeRay's",
                    ".labels",
                ),
            ]
        }
    )

    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=MAX_POD_ITEMS,
        description="Node labels the pods must land on, e.g. a GPU node pool's.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_POD_ITEMS,
        description="Taints the pods tolerate, e.g. nvidia.com/gpu on GPU nodes.",
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        description="A core/v1 Affinity (nodeAffinity, podAffinity, podAntiAffinity), unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: Name | None = Field(default=None, description="The pods' PriorityClass.")
    service_account_name: Name | None = Field(
        default=None, description="ServiceAccount the pods run as (a DNS-1123 subdomain)."
    )
    image_pull_secrets: list[Name] = Field(
        default_factory=list,
        max_length=16,
        description="Names of docker-registry Secrets for a private spec.ray.image.",
    )
    labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=MAX_POD_ITEMS, description="Extra pod labels."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_POD_ITEMS, description="Extra pod annotations."
    )
    resources: Resources | None = Field(
        default=None, description="The Ray container's requests and limits, over tierserve's."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Environment of the Ray container (every Ray process in the pod), after tierserve's "
            f"({HF_HOME}, {HF_TOKEN}); a tier's env is per replica, this is per pod."
        ),
        json_schema_extra=_list_map("name"),
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets and ConfigMaps whose every key becomes a variable.",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=MAX_POD_ITEMS,
        description="Extra volumes of the pod, after tierserve's (the model cache).",
        json_schema_extra=_list_map("name"),
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=MAX_POD_ITEMS,
        description="Where the Ray container mounts volumes (these or the model cache).",
        json_schema_extra=_list_map("mountPath"),
    )

    @model_validator(mode="after")
    def _consistent(self) -> RayPod:
        for field, names in (
            ("volumes", [v.name for v in self.volumes]),
            ("env", [e.name for e in self.env]),
            ("volumeMounts", [m.mount_path for m in self.volume_mounts]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{field}: {', '.join(dupes)} given more than once")
        volumes = {v.name for v in self.volumes}
        if MODEL_CACHE_VOLUME in volumes:
            raise ValueError(
                f"volumes: {MODEL_CACHE_VOLUME} is reserved for spec.ray.modelCache's volume"
            )
        for i, mount in enumerate(self.volume_mounts):
            if mount.name not in volumes | {MODEL_CACHE_VOLUME}:
                raise ValueError(
                    f"volumeMounts[{i}].name: {mount.name!r} is neither one of volumes[] nor "
                    f"{MODEL_CACHE_VOLUME} (spec.ray.modelCache)"
                )
        for key in self.labels:
            if key.startswith("ray.io/"):
                raise ValueError(f"labels: {key} is KubeRay's (ray.io/ labels are reserved)")
        return self


class ModelCache(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.claimName) != has(self.hostPath)",
                    "modelCache needs exactly one of claimName and hostPath",
                    ".claimName",
                )
            ]
        }
    )

    claim_name: Name | None = Field(
        default=None,
        description=(
            "A PersistentVolumeClaim in the ModelTier's namespace; ReadWriteMany (or "
            "ReadOnlyMany, pre-filled, with readOnly) when pods span nodes."
        ),
    )
    host_path: str | None = Field(
        default=None,
        min_length=2,
        max_length=1024,
        pattern=r"^/",
        description="Or a directory on each node (created if missing), e.g. a local NVMe.",
    )
    mount_path: str = Field(
        default="/models",
        min_length=2,
        max_length=1024,
        pattern=r"^/",
        description=f"Where every Ray container mounts it; {HF_HOME} points here.",
    )
    read_only: bool = Field(
        default=False, description="Mount read-only: weights are pre-loaded, nothing downloads."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelCache:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError("needs exactly one of claimName and hostPath")
        return self


class SecretKey(_Model):
    name: Name = Field(description="The Secret, in the ModelTier's namespace.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The key holding the token.",
    )


class Tier(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.gpusPerReplica == 0 ? "
                    "self.tensorParallelSize * self.pipelineParallelSize == 1 : "
                    "self.tensorParallelSize * self.pipelineParallelSize == self.gpusPerReplica",
                    "gpusPerReplica must equal tensorParallelSize x pipelineParallelSize "
                    "(or be 0 with both sizes 1 for a CPU tier)",
                    ".gpusPerReplica",
                ),
                cel(
                    "!has(self.pod) || !has(self.pod.resources) || "
                    + _gpu_cel("self.pod.resources", "string(self.gpusPerReplica)"),
                    f"pod.resources may name {GPU_RESOURCE} only as gpusPerReplica, from which "
                    "tierserve derives it",
                    ".pod.resources",
                ),
            ]
        }
    )

    name: str = Field(
        pattern=DNS_LABEL,
        max_length=40,
        description="Tier name, unique in the ladder (a DNS label); `<modeltier>:<name>` pins it.",
    )
    model: ModelSource = Field(description="The model this tier serves.")
    gpus_per_replica: int = Field(
        default=1, ge=0, le=64, description="GPUs per replica (0 for a CPU tier)."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="vLLM tensor parallel.")
    pipeline_parallel_size: int = Field(
        default=1, ge=1, le=64, description="vLLM pipeline parallel size."
    )
    cpus_per_replica: float = Field(
        default=1.0, gt=0, le=256, description="CPUs reserved per replica (per GPU bundle)."
    )
    replicas: ReplicaBounds = Field(
        default_factory=ReplicaBounds, description="Serve autoscaling bounds for this tier."
    )
    accelerator_type: str | None = Field(
        default=None,
        max_length=64,
        description="Ray accelerator type the replicas must land on, e.g. L4, A100, H100.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments, passed through unchanged (e.g. max_model_len).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    cost_per_hour: float | None = Field(
        default=None,
        ge=0,
        description="Cost of one replica per hour, in any currency; drives the cost model.",
    )
    tokens_per_second: float = Field(
        default=DEFAULT_TOKENS_PER_SECOND,
        gt=0,
        le=1e7,
        description=(
            "Tokens (prompt and completion together) one replica processes per second at its "
            "usual load, as measured from vLLM's token counters: turns costPerHour into the "
            "per-token price the router's cost ledger charges (costPerHour / 3600 / "
            "tokensPerSecond per token). The default is the same for every tier, so prices "
            "keep the ratio of hourly costs that `tierserve plan` assumes."
        ),
    )
    price: TokenPrice | None = Field(
        default=None,
        description=(
            "An explicit per-token price (a provider's list price, or your own figure) that "
            "the cost ledger charges instead of the one derived from costPerHour and "
            "tokensPerSecond. Use costPerHour's currency."
        ),
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables of the replicas (e.g. VLLM_CPU_KVCACHE_SPACE).",
    )
    pod: RayPod | None = Field(
        default=None,
        description=(
            "kuberay backend: the shape of the pods of the worker group this tier renders to "
            "(node selector, tolerations, volumes, env, resources, ...). Tiers with the same "
            "gpusPerReplica and acceleratorType share a worker group, so their pods must be "
            "equal; give a tier its own acceleratorType to shape its pods apart."
        ),
    )

    @model_validator(mode="after")
    def _gpus_stay_derived(self) -> Tier:
        conflict = (
            self.pod
            and self.pod.resources
            and self.pod.resources.gpu_conflict(self.gpus_per_replica)
        )
        if conflict:
            raise ValueError(
                f"pod.{conflict}: tierserve derives {GPU_RESOURCE} from gpusPerReplica "
                f"({self.gpus_per_replica}); drop it or set it to {self.gpus_per_replica}"
            )
        return self


class RoutingMode(StrEnum):
    NONE = "none"
    UPFRONT = "upfront"
    CASCADE = "cascade"
    HYBRID = "hybrid"


class Fallback(StrEnum):
    NEXT_TIER = "nextTier"
    PREVIOUS_TIER = "previousTier"
    NONE = "none"


class ConfidenceMetric(StrEnum):
    MIN_TOKEN_PROB = "minTokenProb"
    MEAN_LOGPROB = "meanLogprob"
    QUANTILE = "quantile"
    SELF_CHECK = "selfCheck"


class CascadeScore(StrEnum):
    UNCERTAINTY = "uncertainty"
    RANK = "rank"


class Bounds(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.min <= self.max", "bounds.min must be <= bounds.max", ".min")
            ]
        }
    )

    min: Fraction = Field(default=0.0, description="Lowest threshold the autoscaler may set.")
    max: Fraction = Field(default=1.0, description="Highest threshold the autoscaler may set.")


class AutoscaleMode(StrEnum):
    APPLY = "apply"
    OBSERVE = "observe"


class Autoscale(_Model):
    mode: AutoscaleMode = Field(
        default=AutoscaleMode.APPLY,
        description=(
            "apply: the operator moves the router's threshold. observe: it computes and "
            "reports the threshold it would set (status.escalation.proposedThreshold, history, "
            "Events, metrics) and moves nothing, so a reviewer can read the policy's decisions "
            "before trusting it with the router."
        ),
    )
    prometheus_url: str = Field(
        pattern=r"^https?://",
        description="Prometheus HTTP API base URL the operator queries for signals.",
        alias="prometheusURL",
    )
    interval: str = Field(
        default="30s", pattern=DURATION, description="How often the threshold is re-evaluated."
    )
    max_escalation_rate: Fraction = Field(
        default=0.25, description="Budget: the share of requests the top tier may receive."
    )
    top_tier_queue_target: float = Field(
        default=5.0, ge=0, description="Waiting requests per top-tier replica before backing off."
    )
    max_step: Fraction = Field(
        default=0.05, description="Largest change of the threshold per interval."
    )
    signal_grace_period: str = Field(
        default="5m",
        pattern=DURATION,
        description=(
            "How long the threshold holds while signals are missing (Prometheus unreachable, "
            "no samples) before it walks back to `threshold`, at most maxStep per interval."
        ),
    )
    top_tier_latency_target: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description=(
            "Seconds of the top tier's p95 time to first token (vLLM's "
            "time_to_first_token_seconds histogram over one interval) beyond which to escalate "
            "less; from 80% of it up the threshold holds. Unset: latency is not a constraint."
        ),
    )
    rate_tolerance: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        description=(
            "Deadband around maxEscalationRate, as a share of requests: a realized rate this "
            "close to the budget (or within its sampling noise, if wider) holds the threshold."
        ),
    )
    agreement_target: Fraction | None = Field(
        default=None,
        description=(
            "Share of shadow-sampled lower-tier answers the top tier should agree with (needs "
            "routing.shadow.sampleRate > 0): above it the lower tier is good enough and the "
            "threshold rises (fewer escalations, below the budget). Unset: spend the budget."
        ),
    )


class Escalation(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.bounds.min <= self.threshold && self.threshold <= self.bounds.max",
                    "threshold must lie within bounds (bounds.min <= threshold <= bounds.max)",
                    ".threshold",
                )
            ]
        }
    )

    threshold: Fraction = Field(
        default=0.5,
        description=(
            "The bar a request's escalation score must clear to go up a tier: higher means "
            "fewer escalations in every mode (in cascade mode the score is the lower tier's "
            "uncertainty, 1 - confidence)."
        ),
    )
    bounds: Bounds = Field(default_factory=Bounds, description="Where the autoscaler may move it.")
    autoscale: Autoscale | None = Field(
        default=None, description="Move the threshold from Prometheus signals; off when absent."
    )


class CascadeRank(_Model):
    window: int = Field(
        default=1000,
        ge=10,
        le=100000,
        description=(
            "Reference confidences each router replica ranks against, per lower tier: the "
            "latest this many answers (seeded from referencePath when given)."
        ),
    )
    reference_path: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "A CascadeReference JSON file (`tierserve calibrate cascade --out`), as the router "
            "replicas see it: the confidences of your own traffic, so the ranks mean shares "
            "from the first request. Unset: the window starts empty and scores are "
            "1 - confidence until it holds a tenth of its size."
        ),
    )


DEFAULT_SELF_CHECK_PROMPT = "Is the answer above correct? Answer yes or no."


class SelfCheck(_Model):
    prompt: str = Field(
        default=DEFAULT_SELF_CHECK_PROMPT,
        min_length=1,
        max_length=2048,
        description=(
            "The question put to the lower tier after its answer: a new user message in chat, "
            "a new line after the answer for completions."
        ),
    )
    yes_tokens: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=lambda: ["yes"],
        min_length=1,
        max_length=16,
        description=(
            "Tokens that mean yes, compared case-insensitively and without surrounding "
            "spaces; P(yes) is the sum of their probabilities among the first token's top 20."
        ),
    )


class Cascade(_Model):
    confidence: ConfidenceMetric = Field(
        default=ConfidenceMetric.MIN_TOKEN_PROB,
        description=(
            "How the lower tier's answer becomes a confidence. minTokenProb, meanLogprob, "
            "quantile: from its token logprobs. selfCheck: one more call to the same tier "
            "(selfCheck.prompt, max_tokens 1) and the probability it answers yes; when "
            "streaming, asked about the first earlyDecisionTokens tokens."
        ),
    )
    self_check: SelfCheck = Field(
        default_factory=SelfCheck, description="The selfCheck confidence's question."
    )
    score: CascadeScore = Field(
        default=CascadeScore.UNCERTAINTY,
        description=(
            "The escalation score compared with the threshold. uncertainty: 1 - confidence (an "
            "absolute bar; when many answers tie at confidence 1.0 some shares are "
            "unreachable). rank: 1 - the answer's rank among reference confidences, ties "
            "split by a stable hash of the prompt, so threshold t escalates about 1 - t of "
            "traffic like the reference and every share from 0 to 1 is reachable."
        ),
    )
    rank: CascadeRank = Field(
        default_factory=CascadeRank, description="The reference of the rank score."
    )
    early_decision_tokens: int = Field(
        default=8,
        ge=1,
        le=256,
        description="For streaming: decide after this many tokens of the lower tier.",
    )


class ScorerType(StrEnum):
    HEURISTIC = "heuristic"
    LINEAR = "linear"


class ScorerRef(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'linear' || has(self.path)",
                    "a linear scorer needs path (the JSON file `tierserve calibrate` writes)",
                    ".path",
                )
            ]
        }
    )

    type: ScorerType = Field(
        default=ScorerType.HEURISTIC,
        description="heuristic: no training needed; linear: trained by `tierserve calibrate`.",
    )
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="The linear scorer's JSON file, as the router replicas see it.",
    )


class Upfront(_Model):
    scorer: ScorerRef = Field(
        default_factory=ScorerRef,
        description=(
            "Scores a prompt before generation: its rank in [0, 1] among reference prompts (the "
            "linear scorer's training prompts, the heuristic's RouteLLM prompts), so on traffic "
            "like them threshold t escalates about the top 1 - t share."
        ),
    )
    hybrid_margin: Fraction = Field(
        default=0.15,
        description=(
            "hybrid mode: scores within this distance of the threshold go to cascade, the rest "
            "straight to their tier; about 2 x margin of traffic (0.15: ~30%), less where "
            "threshold +- margin passes 0 or 1."
        ),
    )


class ForceRule(_Model):
    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Category name, for metrics.")
    patterns: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list, max_length=64, description="Regular expressions (case-insensitive)."
    )
    keywords: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=256, description="Words or phrases (case-insensitive)."
    )


class ShadowJudge(StrEnum):
    EXACT_MATCH = "exactMatch"
    PAIRWISE = "pairwise"


DEFAULT_JUDGE_PROMPT = (
    "Two answers to the same request follow. Reply with one word: A if answer A is better, "
    "B if answer B is better, TIE if they are equally good.\n\n"
    "Request:\n{request}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\nVerdict:"
)


class Shadow(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.judgePrompt.contains('{request}') && self.judgePrompt.contains('{a}') "
                    "&& self.judgePrompt.contains('{b}')",
                    "judgePrompt must contain {request}, {a} and {b}",
                    ".judgePrompt",
                )
            ]
        }
    )

    sample_rate: Fraction = Field(
        default=0.0,
        description=(
            "Share of lower-tier answers the router keeps that are also answered by the top "
            "tier and judged against it, off the request path."
        ),
    )
    max_concurrent: int = Field(
        default=2,
        ge=1,
        le=1000,
        description=(
            "Most shadow evaluations in flight per router replica; samples beyond it are "
            "dropped (counted), so shadow traffic never queues behind or ahead of users."
        ),
    )
    max_per_hour: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Most shadow evaluations per router replica per hour. Unset: no budget.",
    )
    max_user_in_flight: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description=(
            "Shadow evaluations start only while the router replica is working on at most "
            "this many user requests; beyond it samples are dropped (reason `load`), so under "
            "load shadow traffic goes first. Unset: no load bound (maxConcurrent still holds)."
        ),
    )
    max_top_tier_in_flight: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description=(
            "Shadow evaluations start, and a started one asks its judge, only while the router "
            "replica has at most this many user calls in flight on the top tier (and on the "
            "judge tier); beyond it samples are dropped (reason `top-tier-busy`). Shadows then "
            "use the top tier's idle capacity and yield as soon as users need it; 0: only "
            "while no user request is on it. Unset: no bound."
        ),
    )
    judge: ShadowJudge = Field(
        default=ShadowJudge.EXACT_MATCH,
        description=(
            "exactMatch: the answers agree when their normalised text is equal (short "
            "answers: numbers, labels). pairwise: a judge tier is asked, blind and in random "
            "order, which answer is better or whether they tie (free text)."
        ),
    )
    judge_tier: str | None = Field(
        default=None,
        max_length=40,
        description="pairwise: the tier that judges. Unset: the top tier.",
    )
    judge_prompt: str = Field(
        default=DEFAULT_JUDGE_PROMPT,
        min_length=1,
        max_length=8192,
        description=(
            "pairwise: the judge's prompt, with {request}, {a} and {b}. The verdict must be "
            "exactly A, B or TIE (case and a trailing period aside); anything else is counted "
            "as unparseable, never as agreement."
        ),
    )


class Limits(_Model):
    max_rungs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TIERS - 1,
        description=(
            "Most rungs one cascaded request may climb above the tier it starts on (0: none). "
            "When an answer is unsure and the cap is reached, it is kept with reason "
            "cap:rungs. Unset: no cap."
        ),
    )
    max_cost: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Most one request may spend, in the tiers' price currency (the cost ledger, "
            "docs/operations.md): no climb, upfront jump, fallback or spill-over sends it to a "
            "tier whose estimated cost would take its spend past this; a stopped climb keeps "
            "the answer so far with reason cap:cost. The first tier always answers; pinned "
            "requests and forceTopTier rules are exempt. Unset: no cap."
        ),
    )


class Routing(_Model):
    mode: RoutingMode = Field(
        default=RoutingMode.CASCADE,
        description=(
            "none: the first tier answers everything; upfront: a prompt scorer picks the tier "
            "before generation; cascade: the lower tier answers first and escalates when unsure; "
            "hybrid: upfront for clear cases, cascade for the rest."
        ),
    )
    escalation: Escalation = Field(default_factory=Escalation, description="Escalation policy.")
    cascade: Cascade = Field(default_factory=Cascade, description="Cascade-mode settings.")
    upfront: Upfront = Field(
        default_factory=Upfront, description="Upfront- and hybrid-mode settings."
    )
    force_top_tier: list[ForceRule] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description="High-risk categories that always go to the top tier, whatever the scores.",
    )
    fallback: Fallback = Field(
        default=Fallback.NEXT_TIER,
        description=(
            "Where a request goes when its tier errors, times out or is unavailable (and, "
            "unless spillover says otherwise, when it is saturated)."
        ),
    )
    spillover: Fallback | None = Field(
        default=None,
        description=(
            "Where a request goes when its tier is saturated (its replicas' queues are full: "
            "Serve's backpressure, see replicas.maxQueuedRequests): nextTier, previousTier, or "
            "none (the client gets 429 with Retry-After). Counted as fallbacks with reason "
            "overloaded. Unset: the same as fallback."
        ),
    )
    limits: Limits = Field(default_factory=Limits, description="Per-request caps.")
    shadow: Shadow = Field(default_factory=Shadow, description="Shadow evaluation.")
    request_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description=(
            "How long one tier may take to answer (in streaming: to produce its "
            "early-decision tokens) before the request falls back. The whole request, "
            "fallbacks and a streamed answer's tail included, is bounded by this times the "
            "number of tiers; past that the answer is 504, or an error event mid-stream."
        ),
    )


class Backend(StrEnum):
    KUBERAY = "kuberay"
    EXTERNAL = "external"


class RayConfig(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.backend != 'kuberay' || has(self.image)",
                    "image is required when backend is kuberay",
                    ".image",
                ),
                cel(
                    "self.backend != 'external' || has(self.dashboardURL)",
                    "dashboardURL is required when backend is external",
                    ".dashboardURL",
                ),
                cel(
                    "!has(self.head) || !has(self.head.resources) || "
                    + _gpu_cel("self.head.resources", None),
                    f"head.resources may not name {GPU_RESOURCE}: the head runs no replicas",
                    ".head.resources",
                ),
            ]
        }
    )

    backend: Backend = Field(
        default=Backend.KUBERAY,
        description="kuberay: a KubeRay RayService owned by this object; external: an existing "
        "Ray cluster, through its dashboard's Serve REST API.",
    )
    image: str | None = Field(
        default=None, max_length=512, description="Serving image with tierserve and vLLM."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None,
        description=(
            "kuberay backend: the Ray containers' imagePullPolicy (Kubernetes' default when "
            "unset: Always for a :latest or untagged image, else IfNotPresent). Never for an "
            "image imported into the nodes' runtime rather than pulled from a registry."
        ),
    )
    ray_version: str = Field(
        default=RAY_VERSION, max_length=32, description="Ray version of image."
    )
    dashboard_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="External backend: the Ray dashboard URL (Serve REST API).",
        alias="dashboardURL",
    )
    route_prefix: str = Field(
        default="/", pattern=r"^/", description="HTTP route prefix of the Serve application."
    )
    head: RayPod | None = Field(
        default=None,
        description=(
            "kuberay backend: the Ray head pod's size and shape. Its resources override "
            "tierserve's 2 CPUs and 8Gi (the head runs the GCS, the dashboard, the Serve "
            "controller and the router, never a tier replica, so no GPUs)."
        ),
    )
    model_cache: ModelCache | None = Field(
        default=None,
        description=(
            f"kuberay backend: a volume for model weights, mounted as `{MODEL_CACHE_VOLUME}` "
            f"into every Ray container at mountPath with {HF_HOME} pointing at it, so vLLM "
            "downloads each model once instead of once per pod start."
        ),
    )
    hub_token_secret: SecretKey | None = Field(
        default=None,
        description=(
            f"kuberay backend: a Secret key holding a Hugging Face token (gated weights), "
            f"given to every Ray container as {HF_TOKEN} (valueFrom secretKeyRef)."
        ),
    )

    @model_validator(mode="after")
    def _head_has_no_gpus(self) -> RayConfig:
        if self.head and self.head.resources:
            conflict = self.head.resources.gpu_conflict(0)
            if conflict or GPU_RESOURCE in self.head.resources.requests:
                side = conflict or f"resources.requests['{GPU_RESOURCE}']"
                raise ValueError(f"head.{side}: the head runs no replicas, so no GPUs")
        return self

    def pods(self, tiers: list[Tier]) -> list[tuple[str, RayPod]]:
        """Every pod section of a spec with the path users wrote it at, head first."""
        found = [("ray.head", self.head)] + [
            (f"tiers[{i}].pod", t.pod) for i, t in enumerate(tiers)
        ]
        return [(path, pod) for path, pod in found if pod is not None]


class ModelTierSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.tiers.all(a, self.tiers.exists_one(b, b.name == a.name))",
                    "tier names must be unique",
                    ".tiers",
                ),
                cel(
                    "self.routing.mode == 'none' || size(self.tiers) >= 2",
                    "routing.mode upfront, cascade and hybrid need at least two tiers",
                    ".routing.mode",
                ),
                cel(
                    "!has(self.routing.shadow) || !has(self.routing.shadow.judgeTier) || "
                    "self.tiers.exists(t, t.name == self.routing.shadow.judgeTier)",
                    "routing.shadow.judgeTier must name a tier in spec.tiers",
                    ".routing.shadow.judgeTier",
                ),
                cel(
                    "has(self.ray.modelCache) || "
                    + _every_pod(
                        "!has($p.volumeMounts) || "
                        f"$p.volumeMounts.all(m, m.name != '{MODEL_CACHE_VOLUME}')"
                    ),
                    f"a volumeMount names {MODEL_CACHE_VOLUME} but spec.ray.modelCache is unset",
                    ".ray",
                ),
                cel(
                    "!has(self.ray.modelCache) || "
                    + _every_pod(
                        "!has($p.volumeMounts) || "
                        "$p.volumeMounts.all(m, m.mountPath != self.ray.modelCache.mountPath)"
                    ),
                    "volumeMounts[].mountPath may not be spec.ray.modelCache.mountPath, where "
                    "tierserve mounts the model cache",
                    ".ray.modelCache.mountPath",
                ),
                cel(
                    "!has(self.ray.modelCache) || "
                    + _every_pod(f"!has($p.env) || $p.env.all(e, e.name != '{HF_HOME}')"),
                    f"env[].name {HF_HOME} is set by spec.ray.modelCache",
                    ".ray.modelCache",
                ),
                cel(
                    "!has(self.ray.hubTokenSecret) || "
                    + _every_pod(f"!has($p.env) || $p.env.all(e, e.name != '{HF_TOKEN}')"),
                    f"env[].name {HF_TOKEN} is set by spec.ray.hubTokenSecret",
                    ".ray.hubTokenSecret",
                ),
            ]
        }
    )

    tiers: list[Tier] = Field(
        min_length=1, max_length=MAX_TIERS, description="The ladder of tiers, cheapest first."
    )
    routing: Routing = Field(default_factory=Routing, description="The router in front of them.")
    ray: RayConfig = Field(description="Where the tiers run.")

    @model_validator(mode="after")
    def _pods_fit_what_tierserve_renders(self) -> ModelTierSpec:
        cache, token = self.ray.model_cache, self.ray.hub_token_secret
        rendered_env = {HF_HOME: cache, HF_TOKEN: token}
        for path, pod in self.ray.pods(self.tiers):
            for i, mount in enumerate(pod.volume_mounts):
                if mount.name == MODEL_CACHE_VOLUME and cache is None:
                    raise ValueError(
                        f"{path}.volumeMounts[{i}].name: {MODEL_CACHE_VOLUME} needs "
                        "spec.ray.modelCache"
                    )
                if cache is not None and mount.mount_path == cache.mount_path:
                    raise ValueError(
                        f"{path}.volumeMounts[{i}].mountPath: {mount.mount_path} is where "
                        "spec.ray.modelCache is mounted"
                    )
            for i, var in enumerate(pod.env):
                if rendered_env.get(var.name) is not None:
                    source = "modelCache" if var.name == HF_HOME else "hubTokenSecret"
                    raise ValueError(
                        f"{path}.env[{i}].name: {var.name} is set by spec.ray.{source}"
                    )
        groups: dict[tuple[int, str], Tier] = {}
        for i, tier in enumerate(self.tiers):
            first = groups.setdefault((tier.gpus_per_replica, tier.accelerator_type or ""), tier)
            if first.pod != tier.pod:
                raise ValueError(
                    f"tiers[{i}].pod: differs from tier {first.name}'s, and both render to one "
                    "worker group (same gpusPerReplica and acceleratorType), where Ray may place "
                    "either tier's replicas: make the pods equal, or give the tiers different "
                    "acceleratorTypes"
                )
        return self


class ConditionType(StrEnum):
    """The conditions of a ModelTier (one of each; MetricsAvailable only with autoscale)."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    METRICS_AVAILABLE = "MetricsAvailable"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionReason(StrEnum):
    """Every reason a condition can give: a closed set, so tools can match on them."""

    SERVING = "Serving"
    DEPLOYING = "Deploying"
    DEPLOYED = "Deployed"
    BLOCKED = "Blocked"
    AS_EXPECTED = "AsExpected"
    APPLICATION_FAILED = "ApplicationFailed"
    PODS_FAILING = "PodsFailing"
    REPLICAS_FAILING = "ReplicasFailing"
    INVALID_SPEC = "InvalidSpec"
    RAY_SERVICE_CRD_MISSING = "RayServiceCRDMissing"
    RAY_SERVICE_REJECTED = "RayServiceRejected"
    DASHBOARD_UNREACHABLE = "DashboardUnreachable"
    SERVE_CONFIG_REJECTED = "ServeConfigRejected"
    SIGNALS_READ = "SignalsRead"
    SIGNALS_UNAVAILABLE = "SignalsUnavailable"


class _Status(_Model):
    """Status is parsed back from the API server: fields an older or newer operator wrote are
    ignored rather than refused, so the status can always be rebuilt."""

    model_config = ConfigDict(extra="ignore")


class Condition(_Status):
    type: ConditionType = Field(description="What the condition is about.")
    status: ConditionStatus = Field(description="Whether it holds.")
    reason: ConditionReason = Field(description="Why, as a code (docs/operations.md says each).")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time.")
    observed_generation: int | None = Field(default=None, description="Generation it is about.")


class TierStatus(_Status):
    name: str = Field(description="The tier's name in spec.tiers.")
    ready: bool = Field(default=False, description="Its Serve deployment is HEALTHY.")
    replicas: int = Field(default=0, description="Running replicas, as Serve reports them.")
    message: str = Field(default="", description="Serve's message when it is not ready.")


class ThresholdMove(_Status):
    """One decision that moved the threshold (or, in observe mode, would have)."""

    time: str = Field(description="When it was decided (RFC 3339).")
    from_: float = Field(alias="from", description="The threshold before.")
    to: float = Field(description="The threshold after (observe mode: that would have been).")
    applied: bool = Field(description="False in observe mode: the router kept `from`.")
    constraint: str = Field(description="What set it, e.g. EscalationBudget, TopTierQueue.")
    reason: str = Field(default="", description="The policy's one-line reason.")
    signals: dict[str, float] = Field(default_factory=dict, description="The inputs it used.")


HISTORY_LENGTH = 10


class EscalationStatus(_Status):
    threshold: float | None = Field(default=None, description="Threshold the router uses now.")
    desired_threshold: float | None = Field(default=None, description="What the policy wants.")
    proposed_threshold: float | None = Field(
        default=None,
        description=(
            "The threshold the policy chose at its last decision, after maxStep and bounds: "
            "equal to threshold in apply mode, the would-be value in observe mode."
        ),
    )
    mode: str | None = Field(default=None, description="The autoscaler's mode: apply or observe.")
    history: list[ThresholdMove] = Field(
        default_factory=list,
        description=f"The last {HISTORY_LENGTH} moves (observe mode: would-be ones), oldest first.",
    )
    reason: str = Field(default="", description="Why it has its current value.")
    last_change_time: str | None = Field(
        default=None, description="When the threshold last moved (RFC 3339)."
    )
    signals: dict[str, float] = Field(default_factory=dict, description="Inputs last used.")


QUALITY_WINDOW = "1h"


class TierQuality(_Status):
    """Shadow evaluation of one lower tier's kept answers against the top tier's."""

    tier: str = Field(description="The lower tier whose kept answers were judged.")
    samples: int = Field(default=0, description=f"Judged answers in the last {QUALITY_WINDOW}.")
    win_or_tie_rate: float | None = Field(
        default=None, description="Share judged at least as good as the top tier's answer."
    )
    low: float | None = Field(default=None, description="95% Wilson interval, lower end.")
    high: float | None = Field(default=None, description="95% Wilson interval, upper end.")
    window: str = Field(default=QUALITY_WINDOW, description="The window it was measured over.")


class RouterQuality(_Status):
    """The router's answers against always sending to the top tier, estimated from shadow
    verdicts: escalated answers are the top tier's own; kept ones win or tie at their rate."""

    not_worse_rate: float | None = Field(
        default=None, description="Estimated share of answers at least as good as all-top."
    )
    low: float | None = Field(default=None, description="95% interval, lower end.")
    high: float | None = Field(default=None, description="95% interval, upper end.")
    samples: int = Field(default=0, description="Judged answers behind the estimate.")


class QualityStatus(_Status):
    tiers: list[TierQuality] = Field(default_factory=list, description="Per lower tier.")
    router_vs_top_tier: RouterQuality | None = Field(
        default=None, description="The router's answers against always-top (all tiers pooled)."
    )


class ModelTierStatus(_Status):
    observed_generation: int | None = Field(
        default=None, description="The spec generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded and MetricsAvailable."
    )
    tiers: list[TierStatus] = Field(default_factory=list, description="Readiness per tier.")
    escalation: EscalationStatus = Field(
        default_factory=EscalationStatus,
        description="The live threshold and, with autoscale, the policy's last decision.",
    )
    ready: str = Field(default="", description="Ready tiers over all tiers, e.g. 2/2.")
    tier_names: str = Field(default="", description="The ladder, cheapest first, e.g. small,large.")
    application: str = Field(default="", description="Name of the Serve application.")
    modelled_cost_factor: float | None = Field(
        default=None, description="All-top-tier cost divided by the modelled cost."
    )
    quality: QualityStatus | None = Field(
        default=None,
        description=(
            "Shadow evaluation from Prometheus (with autoscale and shadow.sampleRate > 0): "
            "per lower tier, the win+tie rate of its kept answers with its interval."
        ),
    )
    kopf: dict[str, Any] = Field(
        default_factory=dict,
        description="Kopf's bookkeeping (kept in status so the operator never writes metadata).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    def condition(self, type_: ConditionType) -> Condition | None:
        """The condition of `type_`, if the status has one."""
        return next((c for c in self.conditions if c.type == type_), None)


class ModelTier(_Model):
    """A ladder of model tiers and the router in front of them."""

    api_version: str = Field(default=f"{GROUP}/{VERSION}", alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelTierSpec
    status: ModelTierStatus | None = None
