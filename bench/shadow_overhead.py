"""Shadow evaluation's cost to users, on the live local stack (not a test: it prints figures).

A two-tier tiny-model cascade. Rounds alternate (ABCDDCBA) between shadow off, shadow on with
`sampleRate: 1` and `maxConcurrent: 1`, the same guarded by `maxUserInFlight` (half the client's
concurrency: shadows are dropped first while users keep the router busy), and the same gated by
`maxTopTierInFlight: 0` (shadows only while no user call is on the top tier), at a client
concurrency that keeps the stack busy.

By default (`--pin-tiers`) each tier's engine is bound to its own core
(`VLLM_CPU_OMP_THREADS_BIND`): the stand-in, on a CPU box, for a GPU ladder where each tier has
its own accelerators and a shadow can only take the top tier's capacity. Without it both engines
share both cores and any shadow slows every user. `--threshold` (default 0.7) sets how much user
traffic escalates to the top tier, where users and shadows meet.

It prints the users' p50/p99 latency and errors in each (p99 with a 95% bootstrap interval and
per round, so a difference can be told from noise), and, with shadows on, the most shadow
evaluations ever seen in flight: `ray_tierserve_shadow_in_flight` read from Ray's metrics
exporter every 2 s in every round, shadows off included, so its own CPU weighs on every variant
alike (Ray exports every few seconds, so this samples the gauge; the bound itself is enforced
per replica by `ShadowGate`), with the verdicts and drops counted.

Run from the repository root: `.venv/bin/python -m bench.shadow_overhead [--requests 200]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.router_bench import percentile, run_round
from tierserve.dev.ray_local import RayHead, start_ray_head
from tierserve.dev.tiered import TieredApp, serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import ensure_models, read_heldout

ROOT = Path(__file__).resolve().parents[1]
# How often the in-flight gauge is read: Ray exports every few seconds, so faster polling sees
# nothing new and only adds the scrape's CPU (it was 0.5 s until 2026-12-03).
WATCH_INTERVAL_S = 2.0


def series(head: RayHead, name: str, model_tier: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(head.metrics_url, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("modeltier") == model_tier:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def watch_in_flight(head: RayHead, model_tier: str, stop: asyncio.Event) -> float:
    """The largest `ray_tierserve_shadow_in_flight` (summed over replicas) seen until `stop`."""
    most = 0.0
    while not stop.is_set():
        values = await asyncio.to_thread(series, head, "ray_tierserve_shadow_in_flight", model_tier)
        most = max(most, sum(values.values()))
        await asyncio.sleep(WATCH_INTERVAL_S)
    return most


async def one_round(
    app: TieredApp, head: RayHead, prompts: list[str], concurrency: int, shadow: bool
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    stop = asyncio.Event()
    # In every round, shadows off too: rendering and parsing Ray's metrics page costs CPU that
    # users on a 2-core box feel, so it must weigh on every variant alike.
    watcher = asyncio.create_task(watch_in_flight(head, app.model, stop))
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        url = f"{app.base_url}/completions"
        latencies, wall, errors = await run_round(client, url, app.model, prompts, concurrency)
    await asyncio.sleep(6 if shadow else 0)  # let the last shadows finish and be exported
    stop.set()
    most = await watcher
    return {"latencies": latencies, "wall": wall, "errors": errors, "max_in_flight": most}


def p99_interval(latencies: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of the p99 latency (ms): how far p99 moves by chance alone, to
    tell "within noise" from a real difference between variants."""
    rng = random.Random(0)
    p99s = sorted(percentile(rng.choices(latencies, k=len(latencies)), 0.99) for _ in range(draws))
    return round(1000 * p99s[int(0.025 * draws)], 1), round(1000 * p99s[int(0.975 * draws)], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA pairs")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.7, help="escalation threshold")
    parser.add_argument(
        "--pin-tiers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each tier's engine on its own core (a GPU ladder's separate accelerators)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench/results/shadow_overhead.json"))
    args = parser.parse_args(argv)

    models = ensure_models(progress=print)
    prompts = [h["prompt"] for h in read_heldout(models.heldout)]
    head = start_ray_head()
    try:
        serve_on_loopback(head.dashboard_url, head.serve_http_port)
        doc = tiny_modeltier(
            "shadowbench",
            {"small": str(models.small), "large": str(models.large)},
            dashboard_url=head.dashboard_url,
            routing={"mode": "cascade", "escalation": {"threshold": args.threshold}},
        )
        if args.pin_tiers:
            for core, tier in enumerate(doc["spec"]["tiers"]):
                tier["env"]["VLLM_CPU_OMP_THREADS_BIND"] = str(core % (os.cpu_count() or 1))
        app = TieredApp(doc, head.serve_url)
        app.deploy(progress=print)
        variants = {
            "off": {"sampleRate": 0.0},
            # maxUserInFlight None: route() merges into the previous shadow settings.
            "on": {
                "sampleRate": 1.0,
                "maxConcurrent": 1,
                "maxUserInFlight": None,
                "maxTopTierInFlight": None,
            },
            # Shadows only while the router replica has at most half the client's concurrency
            # of user requests in flight: dropped first under load (reason `load`).
            "on-guarded": {
                "sampleRate": 1.0,
                "maxConcurrent": 1,
                "maxUserInFlight": max(1, args.concurrency // 2),
                "maxTopTierInFlight": None,
            },
            # Shadows only while no user call is on the top tier (reason `top-tier-busy`).
            "on-top-gated": {
                "sampleRate": 1.0,
                "maxConcurrent": 1,
                "maxUserInFlight": None,
                "maxTopTierInFlight": 0,
            },
        }
        asyncio.run(one_round(app, head, prompts[:16], 4, False))  # warm up
        collected: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        before = series(head, "ray_tierserve_shadow_verdicts_total", app.model)
        requests_before = series(head, "ray_tierserve_requests_total", app.model)
        dropped_before = series(head, "ray_tierserve_shadow_dropped_total", app.model)
        for i in range(args.rounds):
            order = list(variants)
            for name in order + order[::-1]:  # ABCDDCBA
                app.route(shadow=variants[name])
                batch = [prompts[(i * 7 + j) % len(prompts)] for j in range(args.requests)]
                got = asyncio.run(one_round(app, head, batch, args.concurrency, name != "off"))
                collected[name].append(got)
                print(
                    f"round {i} shadow {name}: p50 {1000 * percentile(got['latencies'], 0.5):.0f}"
                    f" ms, p99 {1000 * percentile(got['latencies'], 0.99):.0f} ms, "
                    f"errors {got['errors']}, max shadows in flight {got['max_in_flight']:.0f}",
                    flush=True,
                )
        time.sleep(6)  # Ray exports every few seconds
        requests_after = series(head, "ray_tierserve_requests_total", app.model)
        verdicts = series(head, "ray_tierserve_shadow_verdicts_total", app.model)
        dropped = series(head, "ray_tierserve_shadow_dropped_total", app.model)
    finally:
        head.stop()
    summary: dict[str, Any] = {}
    for name, rounds in collected.items():
        lat = [x for r in rounds for x in r["latencies"]]
        summary[name] = {
            "requests": len(lat) + sum(r["errors"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
            "p50_ms": round(1000 * percentile(lat, 0.5), 1),
            "p99_ms": round(1000 * percentile(lat, 0.99), 1),
            "p99_ms_95ci": p99_interval(lat),
            "p99_ms_per_round": [round(1000 * percentile(r["latencies"], 0.99), 1) for r in rounds],
            "throughput_rps": round(len(lat) / sum(r["wall"] for r in rounds), 2),
            "max_shadows_in_flight_seen": max(r["max_in_flight"] for r in rounds),
        }

    def delta(now: dict[Any, float], then: dict[Any, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in now.items():
            label = dict(key).get("verdict") or dict(key).get("reason") or "?"
            out[label] = out.get(label, 0.0) + value - then.get(key, 0.0)
        return out

    answered: dict[str, float] = {}
    for key, value in requests_after.items():
        tier = dict(key).get("tier", "?")
        answered[tier] = answered.get(tier, 0.0) + value - requests_before.get(key, 0.0)
    summary["answered_by_tier"] = answered
    summary["shadow_verdicts"] = delta(verdicts, before)
    summary["shadow_dropped"] = delta(dropped, dropped_before)
    print(json.dumps(summary, indent=2))
    out = {
        "what": "users' latency with shadow evaluation off vs on (sampleRate 1, maxConcurrent 1)"
        " vs on-guarded (also maxUserInFlight concurrency/2) vs on-top-gated (maxTopTierInFlight"
        f" 0); tiny two-tier cascade, threshold {args.threshold}; max_tokens 4; tiers pinned to"
        f" their own cores: {args.pin_tiers}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "concurrency": args.concurrency,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
