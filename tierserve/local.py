"""The cluster-free local stack (`make demo`, `tierserve up` for now).

Trains (or reuses) the two tiny models, starts a local Ray head on loopback, deploys both models
("small", "large") behind one OpenAI-compatible endpoint on 127.0.0.1:<port> with Ray Serve LLM +
vLLM on CPU, sends one sanity request, prints a curl line that works, then blocks until Ctrl-C
(or SIGTERM) and stops everything it started. A failure prints one line: what failed, its log.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import httpx

from tierserve.serving.local_models import ServeError, deploy
from tierserve.testing.proc import ComponentError, require_free_port
from tierserve.testing.ray_local import RayHead, start_ray_head
from tierserve.testing.tinymodels import ensure_models, read_heldout

DEPLOY_TIMEOUT_S = 900.0


def _say(msg: str) -> None:
    print(msg, flush=True)


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def up(port: int = 8000) -> int:
    """Runs the local stack until Ctrl-C; returns the process exit code."""
    previous = signal.signal(signal.SIGTERM, _sigterm)
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
        _say(
            "==> serving: deploying 'small' and 'large' (vLLM on CPU: loading takes a few minutes)"
        )
        base = deploy(
            head.dashboard_url,
            {"small": models.small, "large": models.large},
            http_port=port,
            timeout=DEPLOY_TIMEOUT_S,
            progress=lambda m: _say(f"    {m}"),
        )
        example = read_heldout(models.heldout)[0]
        _say(f"==> sanity request: {example['prompt']!r} to both models")
        for name in ("small", "large"):
            t0 = time.monotonic()
            r = httpx.post(
                f"{base}/completions",
                json={
                    "model": name,
                    "prompt": example["prompt"],
                    "max_tokens": 4,
                    "temperature": 0,
                    "logprobs": 1,  # also warms up vLLM's logprobs path (slow on first use)
                },
                timeout=120.0,
            )
            if r.status_code != 200:
                raise ServeError(
                    f"sanity request to {name!r} returned {r.status_code}: {r.text[:200]}"
                )
            text = r.json()["choices"][0]["text"]
            _say(
                f"    {name}: {example['prompt']}{text.strip()} (expected {example['answer']}; "
                f"{(time.monotonic() - t0) * 1000:.0f} ms)"
            )
        _say("")
        _say(f"Serving 'small' and 'large' at {base} (OpenAI API). Try:")
        _say(
            f"  curl -s {base}/completions -H 'Content-Type: application/json' "
            """-d '{"model":"large","prompt":"37+48=","max_tokens":4,"temperature":0}'"""
        )
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
        # A second Ctrl-C must not cut the cleanup short (and leak the head's processes).
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if head is not None:  # ours alone: stopping it ends Serve and the engines with it
                head.stop()
                _say("==> stopped")
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)


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
