"""`tierserve simulate`: replay a request trace through a queueing model of the tiers, with the
escalation threshold driven every interval by the same `tierserve.autoscale.policy.decide` the
operator runs, and compare it with a static threshold calibrated offline for the same average
escalation rate.

The model (cascade mode, non-streaming, as the router does it today):

- each tier is one FIFO queue in front of `replicas x slots` servers (a slot is one sequence of
  a continuously batched engine); a request's service time is prompt/prefill + output/decode;
- every request is answered by the small tier; when it finishes, its escalation score is compared
  with the threshold in force and, if above it, the request joins the top tier's queue;
- a top-tier call that takes longer than `timeout_seconds` (waiting included) fails: the router's
  default `fallback: nextTier` has nowhere to go from the top, so the user gets an error (counted
  as a wrong answer and an SLO violation); a timed-out request frees its slot at the timeout;
- a share `shadow_rate` of the answers kept on the small tier is also sent to the top tier
  (shadow evaluation): it loads the top tier's queue like any request and yields agreement;
- the policy sees what Prometheus would: the interval's escalation rate and request rate, the
  time-averaged top-tier queue per replica, the p95 top-tier time to first token of requests whose
  first token came in the interval, shadow agreement over the last 5 intervals, and the small
  tier's utilization.

Quality is the share of correct answers delivered; cost is `tierserve.cost.cascade_cost` per
request (plus the shadow calls at the top tier's price); an SLO violation is a delivered answer
Modules: `traces` (generated, RouteLLM and CSV traces), `queueing` (the tiers as queues, the
small tier's pass), `replay` (the interval loop with the policy in it), `evaluation` (static
baselines and figures), `report` (plots and tables), `cli` (scenarios and `main`).
"""

from tierserve.tools.simulate.cli import SCENARIOS, main, run_scenarios, scenario
from tierserve.tools.simulate.evaluation import (
    budget_figures,
    calibrate_static,
    compare,
    safe_static,
    settling,
    summary,
)
from tierserve.tools.simulate.queueing import LARGE, SMALL, Setup, TierModel, sized, small_tier
from tierserve.tools.simulate.replay import Run, simulate
from tierserve.tools.simulate.traces import (
    ROUTELLM,
    Trace,
    mmlu,
    ranked,
    read_trace,
    synthetic,
)

__all__ = [
    "LARGE",
    "ROUTELLM",
    "SCENARIOS",
    "SMALL",
    "Run",
    "Setup",
    "TierModel",
    "Trace",
    "budget_figures",
    "calibrate_static",
    "compare",
    "main",
    "mmlu",
    "ranked",
    "read_trace",
    "run_scenarios",
    "safe_static",
    "scenario",
    "settling",
    "simulate",
    "sized",
    "small_tier",
    "summary",
    "synthetic",
]
