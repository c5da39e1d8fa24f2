"""Router overhead benchmark on the live local stack (not a test: it prints figures).

What it compares, at client concurrency 1, 8 and 32:
- **router**: a one-tier ModelTier (mode `none`) deployed exactly as the operator deploys it:
  Serve's proxy -> the tierserve TierIngress -> the tier's `ray.serve.llm` LLMServer (vLLM);
- **direct**: the same LLMServer configuration (the very `llm_config` the renderer produced)
  behind Ray Serve LLM's own OpenAI ingress (`ray.serve.llm:build_openai_app`) — what a user of
  plain KubeRay + Ray Serve LLM would call instead of tierserve.

The router's added latency is the difference of client-side end-to-end percentiles (p50, p99)
and its throughput is completed requests per second through each path. The two paths are
measured in alternating rounds (ABBA) so slow drifts (CPU frequency, caches) hit both alike.
Everything runs on this machine: the client, Serve's proxy, the router and the vLLM engine
share its cores, which the output says.

Run: `.venv/bin/python bench/router_bench.py [--requests 200] [--out bench/results/router.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tierserve import names
from tierserve.api.v1alpha1 import ModelTier
from tierserve.build import render
from tierserve.dev import local_models
from tierserve.dev.ray_local import start_ray_head
from tierserve.dev.tiered import TieredApp, serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import ensure_models, read_heldout

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 8, 32)
ROUND_TIMEOUT_S = 180.0  # every round is bounded: a stuck stack fails the bench, not hangs it


def cpu_seconds(title: str) -> float:
    """User + system CPU time of the processes whose command line contains `title`.

    Ray names a replica's worker process `ray::ServeReplica:<app>:<deployment>`, so this is the
    CPU one ingress replica spent: a figure the other processes sharing the cores cannot skew.
    """
    out = subprocess.run(["pgrep", "-f", title], capture_output=True, text=True, check=False)
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in out.stdout.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_round(
    client: httpx.AsyncClient, url: str, model: str, prompts: list[str], concurrency: int
) -> tuple[list[float], float, int]:
    """Sends every prompt with `concurrency` in flight; returns latencies (s), wall time, errors."""
    latencies: list[float] = []
    errors = 0
    queue = list(prompts)

    async def worker() -> None:
        nonlocal errors
        while queue:
            prompt = queue.pop()
            body = {"model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0}
            started = time.perf_counter()
            r = await client.post(url, json=body)
            elapsed = time.perf_counter() - started
            if r.status_code == 200 and r.json().get("choices"):
                latencies.append(elapsed)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), timeout=ROUND_TIMEOUT_S
    )
    return latencies, time.perf_counter() - started, errors


async def measure(
    paths: dict[str, tuple[str, str, str]], prompts: list[str], requests: int
) -> dict[str, Any]:
    """`paths`: name -> (URL, model, the ingress replica's process title)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for url, model, _ in paths.values():  # warm both paths (first logprobs etc.)
            await run_round(client, url, model, prompts[:16], 4)
        for concurrency in LEVELS:
            n = max(requests, concurrency * 8)
            half = n // 2
            lat: dict[str, list[float]] = {p: [] for p in paths}
            wall: dict[str, float] = {p: 0.0 for p in paths}
            done: dict[str, int] = {p: 0 for p in paths}
            errs: dict[str, int] = {p: 0 for p in paths}
            cpu: dict[str, float] = {p: 0.0 for p in paths}
            order = [*paths, *reversed(list(paths))]  # ABBA
            for i, name in enumerate(order):
                url, model, title = paths[name]
                batch = [prompts[(i * half + j) % len(prompts)] for j in range(half)]
                cpu_before = cpu_seconds(title)
                got, seconds, errors = await run_round(client, url, model, batch, concurrency)
                cpu[name] += cpu_seconds(title) - cpu_before
                lat[name] += got
                wall[name] += seconds
                done[name] += len(got)
                errs[name] += errors
            level: dict[str, Any] = {}
            for name in paths:
                level[name] = {
                    "requests": done[name] + errs[name],
                    "errors": errs[name],
                    "p50_ms": round(1000 * percentile(lat[name], 0.50), 2),
                    "p99_ms": round(1000 * percentile(lat[name], 0.99), 2),
                    "mean_ms": round(1000 * statistics.fmean(lat[name]), 2),
                    "throughput_rps": round(done[name] / wall[name], 2),
                    "ingress_cpu_ms_per_request": round(1000 * cpu[name] / max(done[name], 1), 3),
                }
            r, d = level["router"], level["direct"]
            level["added_p50_ms"] = round(r["p50_ms"] - d["p50_ms"], 2)
            level["added_p99_ms"] = round(r["p99_ms"] - d["p99_ms"], 2)
            level["throughput_ratio"] = round(r["throughput_rps"] / d["throughput_rps"], 3)
            results[str(concurrency)] = level
            print(
                f"concurrency {concurrency:>2}: added p50 {level['added_p50_ms']:+.2f} ms, "
                f"p99 {level['added_p99_ms']:+.2f} ms; throughput router "
                f"{r['throughput_rps']:.1f}/s vs direct {d['throughput_rps']:.1f}/s "
                f"({100 * level['throughput_ratio']:.1f}%); direct p50 {d['p50_ms']:.1f} ms; "
                f"ingress CPU/request router {r['ingress_cpu_ms_per_request']:.2f} ms vs "
                f"direct {d['ingress_cpu_ms_per_request']:.2f} ms",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per path and level")
    parser.add_argument("--out", default=str(ROOT / "bench/results/router.json"))
    args = parser.parse_args(argv)

    models = ensure_models(progress=print)
    prompts = [h["prompt"] for h in read_heldout(models.heldout)]
    head = start_ray_head()
    try:
        serve_on_loopback(head.dashboard_url, head.serve_http_port)
        doc = tiny_modeltier(
            "bench",
            {"small": str(models.small)},
            dashboard_url=head.dashboard_url,
            routing={"mode": "none"},
        )
        tiered = TieredApp(doc, head.serve_url)
        print("deploying the router path (ModelTier bench, mode none) ...", flush=True)
        tiered.deploy(progress=print)
        tier = ModelTier.model_validate(doc).spec.tiers[0]
        direct_config = render.llm_config(tier)
        print("deploying the direct path (ray.serve.llm build_openai_app) ...", flush=True)
        base = local_models.deploy(
            head.dashboard_url,
            [direct_config],
            http_port=head.serve_http_port,
            app_name="bench-direct",
            route_prefix="/direct",
            progress=print,
        )
        paths = {
            "router": (
                f"{tiered.base_url}/completions",
                tiered.model,
                f"ServeReplica:{tiered.name}:{names.INGRESS_DEPLOYMENT}",
            ),
            "direct": (
                f"{base}/completions",
                direct_config["model_loading_config"]["model_id"],
                "ServeReplica:bench-direct:OpenAiIngress",
            ),
        }
        results = asyncio.run(measure(paths, prompts, args.requests))
    finally:
        head.stop()
    out = {
        "what": "router (proxy -> TierIngress -> LLMServer) vs direct (proxy -> ray.serve.llm "
        "OpenAI ingress -> LLMServer); one tiny model on vLLM CPU; max_tokens 4",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": {"added_p50_ms": 2.0, "added_p99_ms": 10.0, "throughput_ratio": 0.9},
        "levels": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
