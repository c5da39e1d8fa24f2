"""Operator benchmark against the real local control plane (not a test: it prints figures).

Measures, with the operator running as its own process:
- apply-to-RayService latency: from `create` of a ModelTier to its RayService existing (p50, p95);
- the time for N ModelTiers created at once to converge (RayService present and status written
  for the current generation);
- the operator's resident memory after convergence.

Run: `.venv/bin/python bench/operator_bench.py [--count 100] [--out bench/results/operator.json]`
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from tierserve.api.crd import CRD_FILE
from tierserve.dev import controlplane
from tierserve.dev.controlplane.components import rss_mib
from tierserve.dev.operator_run import start_operator
from tierserve.dev.proc import logs_dir, wait_until

ROOT = Path(__file__).resolve().parents[1]
NS = "bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "operator.json"))
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="tierserve-bench-"))
    info = controlplane.up(state, ports=controlplane.Ports.free())
    operator = None
    try:
        kubectl = controlplane.ensure_binaries() / "kubectl"
        env = info.env()
        controlplane.kuberay_crds_apply(info)
        import subprocess

        def k(*a: str) -> None:
            subprocess.run(
                [str(kubectl), *a], env={**os.environ, **env}, check=True, capture_output=True
            )

        k("apply", "--server-side", "-f", str(ROOT / "crds" / CRD_FILE))
        wait_until(
            lambda: (
                subprocess.run(
                    [str(kubectl), "get", "modeltiers", "-A"],
                    env={**os.environ, **env},
                    capture_output=True,
                ).returncode
                == 0
            ),
            timeout=60,
            component="ModelTier CRD",
            what="served",
            log=None,
        )
        k("create", "namespace", NS)
        api_client = config.new_client_from_config(config_file=str(info.kubeconfig))
        custom = client.CustomObjectsApi(api_client)

        log = logs_dir() / f"operator-{NS}.log"
        operator = start_operator(env, NS, resync=30.0)
        base = yaml.safe_load((ROOT / "examples" / "support-assistant.yaml").read_text())

        def body(name: str) -> dict[str, Any]:
            doc = copy.deepcopy(base)
            doc["metadata"] = {"name": name, "namespace": NS}
            return doc

        def rayservice_exists(name: str) -> bool:
            try:
                custom.get_namespaced_custom_object("ray.io", "v1", NS, "rayservices", name)
                return True
            except client.ApiException:
                return False

        # 1. Latency, one at a time.
        latencies = []
        for i in range(args.latency_samples):
            name = f"lat-{i}"
            t0 = time.perf_counter()
            custom.create_namespaced_custom_object(
                "tierserve.io", "v1alpha1", NS, "modeltiers", body(name)
            )
            wait_until(
                functools.partial(rayservice_exists, name),
                timeout=30,
                component="operator",
                what=f"creating RayService {name}",
                log=log,
                interval=0.005,
                retry=(),
            )
            latencies.append(time.perf_counter() - t0)

        # 2. Convergence of N created at once.
        t0 = time.perf_counter()
        for i in range(args.count):
            custom.create_namespaced_custom_object(
                "tierserve.io", "v1alpha1", NS, "modeltiers", body(f"many-{i}")
            )
        created = time.perf_counter() - t0

        def converged() -> int:
            mts: Any = custom.list_namespaced_custom_object(
                "tierserve.io", "v1alpha1", NS, "modeltiers"
            )
            rss: Any = custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayservices")
            items, rs = mts["items"], rss["items"]
            have = {r["metadata"]["name"] for r in rs}
            return sum(
                1
                for m in items
                if m["metadata"]["name"].startswith("many-")
                and m["metadata"]["name"] in have
                and (m.get("status") or {}).get("observedGeneration") == m["metadata"]["generation"]
            )

        wait_until(
            lambda: converged() >= args.count,
            timeout=600,
            component="operator",
            what=f"converged on {args.count} ModelTiers created at once",
            log=log,
            interval=0.2,
            retry=(),
        )
        converge = time.perf_counter() - t0
        time.sleep(2)  # settle before reading memory
        memory = rss_mib(operator.popen.pid) or float("nan")

        results = {
            "apply_to_rayservice_seconds": {
                "samples": len(latencies),
                "p50": round(statistics.median(latencies), 4),
                "p95": round(percentile(latencies, 0.95), 4),
                "max": round(max(latencies), 4),
            },
            "converge": {
                "modeltiers": args.count,
                "create_calls_seconds": round(created, 2),
                "all_converged_seconds": round(converge, 2),
            },
            "operator_rss_mib": round(memory, 1),
            "machine": "2 cores, 24 GiB; control plane, operator and client on one machine",
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        print(f"wrote {out}")
    finally:
        if operator is not None:
            operator.stop()
        controlplane.down(state)


if __name__ == "__main__":
    main()
