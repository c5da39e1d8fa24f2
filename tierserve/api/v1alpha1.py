"""The ModelTier API, `tierserve.io/v1alpha1`: the single source of truth for the CRD.

The CRD's OpenAPI schema (types, enums, ranges, defaults, descriptions) and its CEL rules are
generated from these models by `tierserve crds`; the operator parses objects with the same
models. Rules that span fields live in `CEL` annotations so the API server refuses bad input at
admission, naming the field, before the operator ever sees it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
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
                )
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
            ]
        }
    )

    tiers: list[Tier] = Field(
        min_length=1, max_length=MAX_TIERS, description="The ladder of tiers, cheapest first."
    )
    routing: Routing = Field(default_factory=Routing, description="The router in front of them.")
    ray: RayConfig = Field(description="Where the tiers run.")


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
