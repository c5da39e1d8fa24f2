"""The Helm chart's values (charts/tierserve/values.yaml) as typed models: values.schema.json is
generated from them by `tierserve crds`, as the CRD is from the ModelTier models, so the schema
helm validates with has one source.

Helm validates the merged values (values.yaml, then the user's) against JSON Schema draft-07.
The defaults stay in values.yaml, next to their comments: every field here is optional, and the
schema only says what a value may be. The chart owns most keys and refuses unknown ones (a typo
fails `helm install` with its path); Kubernetes types (`resources`, security contexts, affinity)
stay open, with the few settings the operator relies on pinned.
"""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict, JsonValue

from tierserve.api.v1alpha1 import DNS_LABEL

SCHEMA_FILE = "values.schema.json"

DnsLabel = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
Port = Annotated[int, Field(ge=1, le=65535)]
PromDuration = Annotated[
    str,
    Field(
        pattern=r"^([0-9]+(ms|s|m|h|d|w|y))+$",
        description="A Prometheus duration, e.g. 30s, 10m, 1h.",
    ),
]
Share = Annotated[float, Field(ge=0, le=1)]
Strings = dict[str, str]  # labels, annotations, nodeSelector
Object = dict[str, Any]  # a Kubernetes object the chart passes through as it is


class _Values(BaseModel):
    """camelCase keys; a key the chart does not know is refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class _Open(_Values):
    """A Kubernetes type: any of its fields passes; the ones declared here are constrained."""

    model_config = ConfigDict(extra="allow")


class Image(_Values):
    repository: str = Field(min_length=1, description="Operator image repository.")
    tag: str | None = Field(None, description="Image tag; empty means the chart's appVersion.")
    digest: str | None = Field(
        None, pattern=r"^(sha256:[a-f0-9]{64})?$", description="sha256:<64 hex>; overrides tag."
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None


class ImagePullSecret(_Values):
    name: str = Field(min_length=1)


class Peering(_Values):
    enabled: bool | None = None
    name: DnsLabel | None = None


class Rbac(_Values):
    create: bool | None = None
    namespaced: bool | None = Field(
        None, description="Roles in watchNamespaces only (needs watchNamespaces)."
    )


class ServiceAccount(_Values):
    create: bool | None = None
    name: str | None = None
    annotations: Strings | None = None


class AdmissionGuard(_Values):
    enabled: bool | None = None


class EnvVar(_Open):
    name: str


class Operator(_Values):
    resync_seconds: float | None = Field(None, gt=0)
    bind_address: str | None = Field(
        None, min_length=1, description="Listen address of the health and metrics endpoints."
    )
    health_port: Port | None = None
    metrics_port: Port | None = None
    extra_args: list[str] | None = None
    extra_env: list[EnvVar] | None = None


class Resources(_Values):
    requests: Object | None = None
    limits: Object | None = None
    claims: list[Any] | None = None


class PodSecurityContext(_Open):
    run_as_non_root: Literal[True] | None = Field(
        None, description="The operator never runs as root."
    )


class SecurityContext(_Open):
    allow_privilege_escalation: Literal[False] | None = None
    privileged: Literal[False] | None = None
    run_as_non_root: Literal[True] | None = None


class Probe(_Values):
    initial_delay_seconds: int | None = Field(None, ge=0)
    period_seconds: int | None = Field(None, ge=1)
    timeout_seconds: int | None = Field(None, ge=1)
    failure_threshold: int | None = Field(None, ge=1)
    success_threshold: int | None = Field(None, ge=1)


class MetricsService(_Values):
    enabled: bool | None = None
    port: Port | None = None
    annotations: Strings | None = None


class Metrics(_Values):
    service: MetricsService | None = None


class ServiceMonitor(_Values):
    enabled: bool | None = None
    interval: PromDuration | None = None
    labels: Strings | None = None


class NamespaceSelector(_Values):
    any: bool | None = None
    match_names: list[DnsLabel] | None = None


class RouterPodMonitor(ServiceMonitor):
    namespace_selector: NamespaceSelector | None = None
    selector: Object | None = None


class Alert(_Values):
    """One alert of the PrometheusRule: how long its condition must hold before it fires."""

    for_: PromDuration | None = Field(None, alias="for")


class TopTierSaturated(Alert):
    in_flight_requests: float | None = Field(None, ge=0)


class ThresholdPinned(Alert):
    window: PromDuration | None = None


class ShadowAgreementDropping(Alert):
    min_agreement: Share | None = None
    max_drop: Share | None = None


class FallbacksFiring(Alert):
    rate_per_second: float | None = Field(None, ge=0)


class PrometheusRule(_Values):
    enabled: bool | None = None
    labels: Strings | None = None
    severity: Literal["info", "warning", "critical"] | None = None
    top_tier_saturated: TopTierSaturated | None = None
    threshold_pinned: ThresholdPinned | None = None
    metrics_unavailable: Alert | None = None
    shadow_agreement_dropping: ShadowAgreementDropping | None = None
    fallbacks_firing: FallbacksFiring | None = None


class Dashboard(_Values):
    enabled: bool | None = None
    namespace: Literal[""] | DnsLabel | None = None
    labels: Strings | None = None
    annotations: Strings | None = None


def _requires(when: JsonDict, then: JsonDict) -> JsonDict:
    """A cross-field rule: values matching `when` must also match `then`. Helm's error names
    the value in `then` that has to change (the templates refuse too, and say why)."""
    return {"if": when, "then": then}


def _is(path: list[str], value: JsonDict) -> JsonDict:
    """Schema matching values where `path` is present and matches `value`."""
    schema: JsonDict = value
    for key in reversed(path):
        schema = {"properties": {key: schema}, "required": [key]}
    return schema


def _must(path: list[str], value: JsonDict) -> JsonDict:
    """Schema requiring `path`, where present, to match `value`."""
    schema: JsonDict = value
    for key in reversed(path):
        schema = {"properties": {key: schema}}
    return schema


RULES: list[JsonValue] = [
    # Kopf has no leader election: more than one replica needs peering.
    _requires(_is(["replicas"], {"minimum": 2}), _must(["peering", "enabled"], {"const": True})),
    _requires(
        _is(["rbac", "namespaced"], {"const": True}), _must(["watchNamespaces"], {"minItems": 1})
    ),
    _requires(
        _is(["serviceMonitor", "enabled"], {"const": True}),
        _must(["metrics", "service", "enabled"], {"const": True}),
    ),
]


class ChartValues(_Values):
    """Everything charts/tierserve/values.yaml may set."""

    model_config = ConfigDict(json_schema_extra={"allOf": RULES})

    global_: Object | None = Field(None, alias="global")  # helm passes `global` to every chart
    image: Image | None = None
    image_pull_secrets: list[ImagePullSecret] | None = None
    name_override: str | None = None
    fullname_override: str | None = None
    watch_namespaces: list[DnsLabel] | None = Field(
        None,
        description="Namespaces to watch; empty means all namespaces.",
        json_schema_extra={"uniqueItems": True},
    )
    replicas: int | None = Field(
        None, ge=1, description="Operator replicas; more than 1 needs peering.enabled."
    )
    peering: Peering | None = None
    rbac: Rbac | None = None
    service_account: ServiceAccount | None = None
    admission_guard: AdmissionGuard | None = None
    operator: Operator | None = None
    resources: Resources | None = None
    pod_annotations: Strings | None = None
    pod_labels: Strings | None = None
    node_selector: Strings | None = None
    tolerations: list[Object] | None = None
    affinity: Object | None = None
    priority_class_name: str | None = None
    pod_security_context: PodSecurityContext | None = None
    security_context: SecurityContext | None = None
    startup_probe: Probe | None = None
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    metrics: Metrics | None = None
    service_monitor: ServiceMonitor | None = None
    router_pod_monitor: RouterPodMonitor | None = None
    prometheus_rule: PrometheusRule | None = None
    dashboard: Dashboard | None = None


def _draft7(node: Any, defs: dict[str, Any]) -> Any:
    """Pydantic's JSON Schema as plain draft-07 for helm: definitions inlined, optional fields
    as their type (absent when unset, never null), no titles, open objects without the
    redundant `additionalProperties: true`, constants without their (implied) type."""
    if isinstance(node, list):
        return [_draft7(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        target.pop("description", None)  # a model's docstring is for Python readers
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _draft7({**target, **extra}, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
        if len(options) == 1:
            return _draft7({**options[0], **rest}, defs)
        return {**_draft7(rest, defs), "anyOf": _draft7(options, defs)}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {k: _draft7(v, defs) for k, v in value.items()}
        elif key == "items" and value == {}:
            continue  # any item
        else:
            out[key] = _draft7(value, defs)
    if out.get("additionalProperties") is True:
        out.pop("additionalProperties")
    if "const" in out:
        out.pop("type", None)  # the constant fixes the type too
    order = ("type", "description")
    return {k: out[k] for k in order if k in out} | {k: v for k, v in out.items() if k not in order}


def values_schema() -> dict[str, Any]:
    raw = ChartValues.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _draft7(raw, raw.get("$defs", {}))
    schema.pop("description", None)
    rules = schema.pop("allOf")  # after the properties they relate
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "tierserve chart values",
        **schema,
        "allOf": rules,
    }


def render_json() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"
