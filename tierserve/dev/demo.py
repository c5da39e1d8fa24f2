"""`make demo` / `tierserve demo`: the whole product on this machine, nothing faked.

A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager built from Go
modules), the ModelTier CRD, a local Ray head, Prometheus scraping Ray's metrics exporter (the
router's and vLLM's series), and `tierserve operator` as its own process. Then a ModelTier is
applied with `kubectl`, exactly as a user would: the operator deploys it through the external
backend (Serve REST API) and its threshold autoscaler reads Prometheus. Traffic flows, the
autoscaler moves the threshold towards its escalation budget, and the summary prints who served
what, the live threshold and why, the modelled cost, and `kubectl`/`curl` lines that work.
Ctrl-C (or SIGTERM) deletes the ModelTier and stops everything this started.

`tierserve up` is the cluster-free variant (Ray only) for people without any Kubernetes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tierserve import cost
from tierserve.api.crd import render_yaml
from tierserve.api.v1alpha1 import ModelTier
from tierserve.controller.status import find_condition
from tierserve.dev import controlplane
from tierserve.dev.local import interrupt_on_sigterm, uninterrupted
from tierserve.dev.local_models import ServeError
from tierserve.dev.operator_run import start_operator
from tierserve.dev.proc import ComponentError, Process, cache_dir, require_free_port, wait_until
from tierserve.dev.prometheus import Prometheus, start_prometheus
from tierserve.dev.ray_local import RayHead, start_ray_head
from tierserve.dev.tiered import serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import TinyModels, ensure_models, read_heldout

NAMESPACE = "demo"
NAME = "tiny-sums"
READY_TIMEOUT_S = 900.0
BUDGET = 0.3  # the demo's escalation budget: rank threshold 0.5 escalates ~50%, 0.7 ~30%
SHADOW_RATE = 0.25  # share of kept answers also answered by 'large' and compared (exact match)
MIN_JUDGED = 20  # shadow verdicts in status before the summary (within the traffic's bound)


def say(msg: str) -> None:
    print(msg, flush=True)


def demo_routing(prometheus_url: str) -> dict[str, Any]:
    """The sample routing: small -> large cascade, threshold autoscaled towards a budget.

    The cascade's score is the rank (`cascade.score: rank`): threshold t escalates about 1 - t
    of the traffic, so the autoscaler's moves read as shares (0.5 -> 0.7: 50% -> 30%)."""
    return {
        "mode": "cascade",
        "escalation": {
            "threshold": 0.5,
            "bounds": {"min": 0.3, "max": 0.95},
            "autoscale": {
                "prometheusURL": prometheus_url,
                "interval": "10s",
                "maxEscalationRate": BUDGET,
                "topTierQueueTarget": 4,
                "maxStep": 0.1,
            },
        },
        "cascade": {"earlyDecisionTokens": 2, "score": "rank", "rank": {"window": 200}},
        "forceTopTier": [{"name": "finance", "keywords": ["invoice", "refund"]}],
        "shadow": {"sampleRate": SHADOW_RATE, "maxConcurrent": 2},
    }


def demo_modeltier(models: TinyModels, dashboard_url: str, prometheus_url: str) -> dict[str, Any]:
    """The sample ModelTier on the external backend (the local Ray head)."""
    doc = tiny_modeltier(
        NAME,
        {"small": str(models.small), "large": str(models.large)},
        dashboard_url=dashboard_url,
        route_prefix="/",
        namespace=NAMESPACE,
        routing=demo_routing(prometheus_url),
    )
    ModelTier.model_validate(doc)  # fail here, with the field named, not at the API server
    return doc


class Kubectl:
    def __init__(self, cp: controlplane.ControlPlaneInfo):
        self.binary, self.env = str(cp.kubectl), {"PATH": "/usr/bin:/bin", **cp.env()}

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out = subprocess.run(
            [self.binary, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if check and out.returncode != 0:
            raise ComponentError("kubectl", f"{' '.join(args)}: {out.stderr.strip()[:400]}")
        return out.stdout

    def status(self) -> dict[str, Any]:
        out = self("get", "mt", NAME, "-n", NAMESPACE, "-o", "json", check=False)
        try:
            return dict(json.loads(out).get("status") or {})
        except json.JSONDecodeError:
            return {}


def install_crd(kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", "-f", "-", input=render_yaml())

    def served() -> bool:
        kubectl("get", "modeltiers", "-A")  # fails until discovery serves the new type
        return True

    wait_until(
        served,
        timeout=60,
        component="kubectl",
        what="serving modeltiers (the CRD is Established a moment after the apply)",
        interval=0.5,
        retry=(ComponentError,),
    )
    kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace_doc()))


def namespace_doc() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def wait_ready(kubectl: Kubectl, operator: Process | None) -> dict[str, Any]:
    """Until Ready, printing the operator's own progress messages; Degraded fails at once.
    `operator`: the host process to watch (None: it runs as a pod, which Kubernetes restarts)."""
    last = ""

    def ready() -> dict[str, Any]:
        """The status once Ready; {} (not yet) otherwise."""
        nonlocal last
        if operator is not None and not operator.alive():
            raise ComponentError("operator", "exited", operator.log)
        status = kubectl.status()
        degraded = find_condition(status, "Degraded")
        if degraded.get("status") == "True":
            raise ComponentError(
                "ModelTier", f"Degraded: {degraded.get('reason')}: {degraded.get('message')}"
            )
        if find_condition(status, "Ready").get("status") == "True":
            return status
        progress = (
            find_condition(status, "Progressing").get("message") or "waiting for the operator"
        )
        line = f"    {status.get('ready', '0/2')} tiers ready: {progress}"
        if line != last:
            say(line)
            last = line
        return {}

    return wait_until(
        ready,
        timeout=READY_TIMEOUT_S,
        component="ModelTier",
        what="Ready",
        log=operator.log if operator else None,
        interval=2,
        retry=(),
    )


MIN_REQUESTS = 40  # enough answers for the escalation share and the summary to mean something
MAX_TRAFFIC_S = 300.0  # the bound on waiting for the autoscaler to act, printed with the traffic


def traffic(
    base_url: str,
    prompts: list[dict[str, str]],
    done: Callable[[float, int], bool],
    on_tick: Callable[[], None],
) -> dict[str, Any]:
    """Two clients loop over held-out sums until `done(elapsed, requests)` says stop (checked,
    with `on_tick`, every 2 s). The caller bounds `done`; a request is at most 120 s more."""
    served: dict[str, int] = {}
    tally: dict[str, float] = {
        "requests": 0,
        "correct": 0,
        "escalated": 0,
        "errors": 0,
        "kept": 0,
        "kept_ok": 0,
        "cost": 0.0,  # the ledger's per-request costs, summed
        "top_alone": 0.0,  # what the same answers would have cost from 'large' alone
    }
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()

    def client(offset: int) -> None:
        i = offset
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                example = prompts[i % len(prompts)]
                i += 2
                r = http.post(
                    f"{base_url}/completions",
                    json={"model": NAME, "prompt": example["prompt"], "max_tokens": 4},
                )
                with lock:
                    tally["requests"] += 1
                    if r.status_code != 200:
                        tally["errors"] += 1
                        continue
                    body = r.json()
                    tier = body["tierserve"]["tier"]
                    served[tier] = served.get(tier, 0) + 1
                    right = body["choices"][0]["text"].strip() == example["answer"]
                    bill = body["tierserve"].get("cost") or {}
                    tally["cost"] += float(bill.get("total") or 0.0)
                    tally["top_alone"] += float(bill.get("topTierAlone") or 0.0)
                    tally["escalated"] += bool(body["tierserve"]["escalated"])
                    tally["correct"] += right
                    if tier != "large":  # kept on the lower tier: what shadow evaluation judges
                        tally["kept"] += 1
                        tally["kept_ok"] += right

    with futures.ThreadPoolExecutor(2) as pool:
        running = [pool.submit(client, k) for k in range(2)]
        try:
            while not all(f.done() for f in running):
                on_tick()
                with lock:
                    requests = int(tally["requests"])
                if done(time.monotonic() - started, requests):
                    stop.set()
                time.sleep(2)
        finally:
            stop.set()
        for f in running:
            f.result()
    return {**tally, "served": served, "seconds": round(time.monotonic() - started)}


@dataclass
class Deployed:
    """What a backend's set-up leaves for the traffic and the summary."""

    kubectl: Kubectl
    doc: dict[str, Any]
    base: str  # the OpenAI base URL on 127.0.0.1
    prometheus_url: str
    hints: list[str]  # extra "try this" lines
    watch: list[tuple[str, Callable[[], bool], Path | None]]  # (name, alive, log) to watch
    operator: Process | None = None  # a host process to watch while waiting for Ready
    expose: Callable[[], Process] | None = None  # after Ready: what serves `base` (port-forward)


def _external(
    port: int, models: TinyModels, stops: list[tuple[str, Callable[[], Any]]]
) -> Deployed:
    """Control plane + a local Ray head + Prometheus + `tierserve operator` as a host process;
    the ModelTier deployed through the Serve REST API (backend: external)."""
    say("==> kubernetes: local control plane on 127.0.0.1 (a cold run builds it from Go)")
    state = cache_dir() / "demo" / "controlplane"
    cp = controlplane.up(state)
    stops.append(("control plane", lambda: controlplane.down(state)))
    kubectl = Kubectl(cp)
    install_crd(kubectl)
    say(f"    API server {cp.server_url}; ModelTier CRD installed; namespace {NAMESPACE}")

    say("==> ray: a local head node on 127.0.0.1")
    head: RayHead = start_ray_head()
    stops.append(("ray", head.stop))
    serve_on_loopback(head.dashboard_url, port)
    say(f"    dashboard {head.dashboard_url}; logs {head.session_logs}")

    say("==> prometheus: scraping Ray's metrics exporter (router and vLLM series)")
    prom: Prometheus = start_prometheus(
        {"ray": [f"127.0.0.1:{head.metrics_export_port}"]}, interval="2s"
    )
    stops.append(("prometheus", prom.stop))
    say(f"    {prom.url}")

    say(f"==> operator: `tierserve operator -n {NAMESPACE}`")
    operator = start_operator(cp.env(), NAMESPACE, resync=10.0)
    stops.append(("operator", operator.stop))
    say(f"    log {operator.log}")
    return Deployed(
        kubectl=kubectl,
        doc=demo_modeltier(models, head.dashboard_url, prom.url),
        base=f"http://127.0.0.1:{port}/v1",
        prometheus_url=prom.url,
        hints=[
            f"  KUBECONFIG={cp.kubeconfig} {cp.kubectl} get mt -n {NAMESPACE}",
            f"  Prometheus {prom.url}   Ray dashboard {head.dashboard_url}",
        ],
        watch=[("ray head", head.alive, head.log), ("operator", operator.alive, operator.log)],
        operator=operator,
    )


def _kuberay(port: int, models: TinyModels, stops: list[tuple[str, Callable[[], Any]]]) -> Deployed:
    """Control plane + a real node (containerd, kubelet, kube-proxy, CoreDNS) + the KubeRay
    operator + `helm install` of the tierserve chart (the operator as a pod from its image);
    the ModelTier becomes a RayService whose pods run the serving image (backend: kuberay).
    Prometheus scrapes the Ray pods (listed through the API server) and listens on the node's
    bridge, where the operator's pod reaches it."""
    from tierserve.dev import images, kuberay_node
    from tierserve.dev.controlplane.node import BRIDGE_IP

    say("==> images: the operator and serving images of this tree (cold: buildah, ~12 min)")
    archives = [images.ensure_image(kind) for kind in images.KINDS]
    say("==> kubernetes: control plane + a node (kubelet, containerd), KubeRay, the operator")
    say("    (cold: builds them from Go; each step prints its time)")
    stack = kuberay_node.up(images=archives, operator_namespace=NAMESPACE)
    stops.append(("kuberay stack", kuberay_node.down))
    kubectl = Kubectl(stack.cp)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace_doc()))

    say("==> prometheus: scraping the Ray pods (router and vLLM series), listed by kubectl")
    targets_file = stack.state_dir / "ray-pods.json"
    discovery = RayPodTargets(kubectl, targets_file)
    stops.append(("pod discovery", discovery.stop))
    prom = start_prometheus(host=BRIDGE_IP, interval="2s", jobs=[ray_pods_job(targets_file)])
    stops.append(("prometheus", prom.stop))
    say(f"    {prom.url}")

    doc = kuberay_node.tiny_kuberay_modeltier(
        NAME, NAMESPACE, routing=demo_routing(prom.url), route_prefix="/"
    )
    ModelTier.model_validate(doc)
    return Deployed(
        kubectl=kubectl,
        doc=doc,
        base=f"http://127.0.0.1:{port}/v1",
        prometheus_url=prom.url,
        hints=[
            f"  KUBECONFIG={stack.cp.kubeconfig} {stack.cp.kubectl} get mt,rayservice,pods "
            f"-n {NAMESPACE}",
            f"  Prometheus {prom.url}",
        ],
        watch=[],
        expose=lambda: kuberay_node.port_forward(
            stack.cp,
            NAMESPACE,
            f"svc/{NAME}-serve-svc",
            port,
            8000,
            stack.state_dir / "logs" / "demo-port-forward.log",
        ),
    )


RAY_METRICS_PORT = 8080  # KubeRay's default metrics-export-port on every Ray pod


def ray_pods_job(targets_file: Path) -> dict[str, Any]:
    """A Prometheus job scraping the targets `RayPodTargets` writes (file_sd: Debian's
    Prometheus is built without kubernetes_sd, so the demo discovers the pods itself)."""
    return {
        "job_name": "ray",
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
    }


def ray_pod_targets(pods: dict[str, Any]) -> list[dict[str, Any]]:
    """file_sd target groups for the running Ray pods in a `kubectl get pods -o json` list."""
    groups = []
    for pod in pods.get("items", []):
        labels = pod["metadata"].get("labels") or {}
        ip = (pod.get("status") or {}).get("podIP")
        if "ray.io/node-type" in labels and ip and pod["status"].get("phase") == "Running":
            groups.append(
                {
                    "targets": [f"{ip}:{RAY_METRICS_PORT}"],
                    "labels": {"pod": pod["metadata"]["name"]},
                }
            )
    return groups


class RayPodTargets:
    """Keeps `path` (Prometheus file_sd) listing the Ray pods of NAMESPACE, every 5 s, on a
    daemon thread until `stop()`."""

    def __init__(self, kubectl: Kubectl, path: Path):
        self.kubectl, self.path = kubectl, path
        self.path.write_text("[]")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-pod-targets", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            out = self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", check=False)
            try:
                groups = ray_pod_targets(json.loads(out))
            except (json.JSONDecodeError, KeyError):
                groups = None
            if groups is not None:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(groups))
                tmp.replace(self.path)  # Prometheus never reads half a file
            self._stop.wait(5.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=130)


def demo(port: int = 8000, seconds: float = 60.0, backend: str = "external") -> int:
    """Runs the whole stack until Ctrl-C; returns the process exit code."""
    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    stops: list[tuple[str, Callable[[], Any]]] = []
    try:
        require_free_port("tierserve demo", port)
        say("==> tiny models: checking the cache (a cold run trains them on CPU: a few minutes)")
        models = ensure_models(progress=say)
        up = _kuberay if backend == "kuberay" else _external
        deployed = up(port, models, stops)
        kubectl = k = deployed.kubectl
        doc = deployed.doc
        manifest = cache_dir() / "demo" / f"{NAME}.yaml"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
        say(f"==> kubectl apply -f {manifest}")
        kubectl("apply", "-f", str(manifest))
        # Stopped first (stops run in reverse), while the operator can still remove its finalizer.
        stops.append(("ModelTier", lambda: k("delete", "-f", str(manifest), check=False)))
        if backend == "kuberay":
            say("    the operator creates a RayService; KubeRay starts its pods and deploys the "
                "application (both engines load in a few minutes on 2 cores)")  # fmt: skip
        else:
            say("    the operator deploys it on Ray (vLLM on CPU loads both engines in a minute "
                "or two)")  # fmt: skip
        wait_ready(kubectl, deployed.operator)
        if deployed.expose is not None:
            forward = deployed.expose()
            stops.append(("port-forward", forward.stop))
            deployed.watch.append(("port-forward", forward.alive, forward.log))
            say(f"    kubectl port-forward svc/{NAME}-serve-svc {port}:8000 (127.0.0.1)")

        base = deployed.base
        prompts = read_heldout(models.heldout)
        spec_threshold = ModelTier.model_validate(doc).spec.routing.escalation.threshold
        say(
            f"==> traffic: held-out sums from 2 clients; budget {BUDGET:.0%}. It runs at least "
            f"{seconds:.0f}s and {MIN_REQUESTS} requests, then until the operator has moved the "
            f"threshold and {MIN_JUDGED} shadow verdicts are in status, at most "
            f"{max(seconds, MAX_TRAFFIC_S):.0f}s"
        )
        moves: list[str] = []
        seen = {"threshold": spec_threshold, "judged": 0.0}

        def show_moves() -> None:
            status = k.status()
            seen["judged"] = float(sum(t.get("samples", 0) for t in judged_tiers(status)))
            esc = status.get("escalation") or {}
            threshold = esc.get("threshold")
            if threshold is not None and threshold != seen["threshold"]:
                move = f"{seen['threshold']:g} -> {threshold:g}: {esc.get('reason')}"
                say(f"    threshold {move}")
                moves.append(move)
                seen["threshold"] = threshold

        def done(elapsed: float, requests: int) -> bool:
            acted = bool(moves) and seen["judged"] >= MIN_JUDGED
            enough = elapsed >= seconds and requests >= MIN_REQUESTS and acted
            return enough or elapsed >= max(seconds, MAX_TRAFFIC_S)

        tally = traffic(base, prompts, done, show_moves)
        show_moves()
        summary(kubectl, ModelTier.model_validate(doc), {**tally, "moves": moves})
        say("")
        say(f"Serving ModelTier '{NAME}' at {base} (OpenAI API). Try:")
        say(
            f"  curl -s {base}/completions -H 'Content-Type: application/json' "
            """-d '{"model":"tiny-sums","prompt":"37+48=","max_tokens":4,"temperature":0}'"""
        )
        for hint in deployed.hints:
            say(hint)
        say("Ctrl-C to stop.")
        while all(alive() for _, alive, _ in deployed.watch):
            time.sleep(1.0)
        name, _, log = next(w for w in deployed.watch if not w[1]())
        print(f"{name}: exited unexpectedly; see {log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("\n==> stopping")
        return 0
    except (ComponentError, ServeError) as exc:
        print(f"tierserve demo: {exc}", file=sys.stderr)
        return 1
    finally:
        with uninterrupted(previous):
            for what, stop in reversed(stops):
                try:
                    stop()
                except Exception as exc:  # keep stopping the rest
                    print(f"stopping {what}: {exc}", file=sys.stderr)
            if stops:
                say("==> stopped")


def judged_tiers(status: dict[str, Any]) -> list[dict[str, Any]]:
    """status.quality.tiers: the operator's reading of the shadow verdicts, per lower tier."""
    return list((status.get("quality") or {}).get("tiers") or [])


def summary(kubectl: Kubectl, mt: ModelTier, tally: dict[str, Any]) -> None:
    status = kubectl.status()
    esc = status.get("escalation") or {}
    n = max(tally["requests"], 1)
    say(
        f"==> summary ({tally['requests']} requests, {tally['errors']} errors, "
        f"{tally['seconds']}s of traffic)"
    )
    say(f"    served by tier: {tally['served']}")
    say(f"    escalated: {tally['escalated'] / n:.0%}   accuracy: {tally['correct'] / n:.0%}")
    say(
        f"    live threshold: {esc.get('threshold', mt.spec.routing.escalation.threshold)} "
        f"(spec {mt.spec.routing.escalation.threshold}); last change: {esc.get('reason', '-')}"
    )
    moves = tally.get("moves") or []
    say(f"    threshold moves during the traffic: {len(moves)}")
    for move in moves:
        say(f"      {move}")
    for q in judged_tiers(status):
        rate, low, high = q.get("winOrTieRate"), q.get("low"), q.get("high")
        direct = tally["kept_ok"] / max(tally["kept"], 1)
        if rate is None:
            say(f"    quality: no shadow verdicts for '{q.get('tier')}' yet")
            continue
        say(
            f"    quality (shadow, exact match): '{q['tier']}' kept answers win or tie "
            f"{rate:.0%} ({low:.0%}-{high:.0%}, {q.get('samples')} judged) against 'large'; "
            f"measured directly: {direct:.0%} of {tally['kept']} kept answers correct"
        )
    metrics = find_condition(status, "MetricsAvailable")
    say(f"    MetricsAvailable={metrics.get('status', '?')}: {metrics.get('message', '')}")
    share = tally["served"].get(mt.spec.tiers[-1].name, 0) / n
    planned = cost.reduction(cost.request_costs(mt.spec), [1 - share, share], "cascade")
    say(
        f"    modelled cost (`tierserve plan` at {share:.0%} escalated): {planned:.2f}x cheaper "
        "than sending everything to 'large'"
    )
    if tally["cost"] > 0:
        measured = tally["top_alone"] / tally["cost"]
        say(
            f"    measured cost (sum of the {tally['requests']} answers' x-tierserve-cost): "
            f"{tally['cost']:.4g} against {tally['top_alone']:.4g} from 'large' alone: "
            f"{measured:.2f}x cheaper"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """`tierserve demo [--port 8000] [--seconds 60]`."""
    parser = argparse.ArgumentParser(prog="tierserve demo", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="OpenAI endpoint port (127.0.0.1)")
    parser.add_argument("--seconds", type=float, default=60.0, help="least traffic time")
    parser.add_argument(
        "--backend",
        choices=("external", "kuberay"),
        default="external",
        help="external: a Ray head on this host (fast); kuberay: a real node running the "
        "images, the operator installed by helm, KubeRay (see the README for timings)",
    )
    args = parser.parse_args(argv)
    return demo(args.port, args.seconds, args.backend)


if __name__ == "__main__":
    sys.exit(main())
