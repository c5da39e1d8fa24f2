"""The cluster-free local stack (`make demo`, `tierserve up`).

Trains (or reuses) the two tiny models, starts a local Ray head on loopback, deploys a two-tier
ModelTier (small -> large cascade behind the router, vLLM on CPU through Ray Serve LLM) exactly as
the operator's external backend would, sends held-out traffic and prints who served what and the
modelled cost, prints a curl line that works, then blocks until Ctrl-C (or SIGTERM) and stops
everything it started. A failure prints one line: what failed and where its log is.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from tierserve import cost
from tierserve.dev.local_models import ServeError
from tierserve.dev.proc import ComponentError, require_free_port
from tierserve.dev.ray_local import RayHead, start_ray_head
from tierserve.dev.tiered import TieredApp, serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import ensure_models, read_heldout

DEPLOY_TIMEOUT_S = 900.0


def _say(msg: str) -> None:
    print(msg, flush=True)


def interrupt_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def uninterrupted(restore_sigterm: Any) -> Iterator[None]:
    """Cleanup that a second Ctrl-C (or SIGTERM) cannot cut short and leak processes; SIGTERM
    goes back to `restore_sigterm` afterwards."""
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, restore_sigterm)


def _summary(app: TieredApp, heldout: Path, n: int = 40) -> None:
    """Sends held-out sums through the router and prints who served what, and what it cost."""
    _say(f"==> traffic: {n} held-out sums through the cascade (threshold 0.5)")
    served: dict[str, int] = {}
    correct = 0
    examples = read_heldout(heldout)[:n]
    for example in examples:
        r = httpx.post(
            f"{app.base_url}/completions",
            json={
                "model": app.model,
                "prompt": example["prompt"],
                "max_tokens": 4,
                "temperature": 0,
            },
            timeout=120.0,
        )
        if r.status_code != 200:
            raise ServeError(f"request through the router returned {r.status_code}: {r.text[:200]}")
        body = r.json()
        tier = body["tierserve"]["tier"]
        served[tier] = served.get(tier, 0) + 1
        correct += body["choices"][0]["text"].strip() == example["answer"]
    share = served.get("large", 0) / n
    costs = cost.request_costs(app.mt.spec)
    reduction = cost.reduction(costs, [1 - share, share], "cascade")
    _say(f"    served: {served}; escalated {share:.0%}; accuracy {correct / n:.0%}")
    _say(f"    live threshold: {app.mt.spec.routing.escalation.threshold}")
    _say(
        f"    modelled cost: {reduction:.1f}x cheaper than sending everything to 'large' "
        f"(large costs {costs[-1] / costs[0]:.1f}x small per request)"
    )


def up(port: int = 8000) -> int:
    """Runs the local stack until Ctrl-C; returns the process exit code."""
    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    head: RayHead | None = None
    try:
        require_free_port("tierserve up", port)
        _say("==> tiny models: checking the cache (a cold run trains them on CPU: a few minutes)")
        models = ensure_models(progress=_say)
        for name in ("small", "large"):
            acc = models.meta["models"][name]["heldout_accuracy"]
            _say(f"    {name}: {models.path(name)} (held-out accuracy {acc:.0%})")
        _say("==> ray: starting a local head node on 127.0.0.1")
        head = start_ray_head()
        _say(f"    dashboard {head.dashboard_url}; logs {head.session_logs}")
        _say("==> serving: deploying the ModelTier 'tiny-sums' (small -> large cascade, router)")
        _say("    vLLM on CPU: loading both engines takes a minute or two")
        serve_on_loopback(head.dashboard_url, port)
        doc = tiny_modeltier(
            "tiny-sums",
            {"small": str(models.small), "large": str(models.large)},
            dashboard_url=head.dashboard_url,
            route_prefix="/",
            routing={"mode": "cascade", "escalation": {"threshold": 0.5}},
        )
        app = TieredApp(doc, f"http://127.0.0.1:{port}")
        app.deploy(timeout=DEPLOY_TIMEOUT_S, progress=lambda m: _say(f"    {m}"))
        base = app.base_url
        _summary(app, models.heldout)
        _say("")
        _say(f"Serving the ModelTier 'tiny-sums' at {base} (OpenAI API). Try:")
        _say(
            f"  curl -s {base}/completions -H 'Content-Type: application/json' "
            """-d '{"model":"tiny-sums","prompt":"37+48=","max_tokens":4,"temperature":0}'"""
        )
        _say("  ('tiny-sums:large' pins a tier; the 'tierserve' field says who answered and why)")
        _say("Ctrl-C to stop.")
        while head.alive():
            time.sleep(1.0)
        print(f"ray head: exited unexpectedly; see {head.log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _say("\n==> stopping")
        return 0
    except (ComponentError, ServeError) as exc:
        where = f"; ray logs: {head.session_logs}" if head and isinstance(exc, ServeError) else ""
        print(f"tierserve up: {exc}{where}", file=sys.stderr)
        return 1
    finally:
        with uninterrupted(previous):
            if head is not None:  # ours alone: stopping it ends Serve and the engines with it
                head.stop()
                _say("==> stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """`tierserve up [--port 8000]`."""
    parser = argparse.ArgumentParser(
        prog="tierserve up",
        description="Serve the two tiny models ('small', 'large') locally on Ray (no Kubernetes).",
    )
    parser.add_argument("--port", type=int, default=8000, help="OpenAI endpoint port (127.0.0.1)")
    args = parser.parse_args(argv)
    return up(args.port)


if __name__ == "__main__":
    sys.exit(main())
