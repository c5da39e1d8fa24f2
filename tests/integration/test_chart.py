"""The Helm chart (charts/tierserve) with the real helm, promtool and control plane.

- `helm lint` and `helm template` with the defaults and with every documented option;
  bad values are refused by values.schema.json (and, without the schema, by the templates).
- The PrometheusRule's alerts fire on synthetic series (`promtool test rules`), and every
  dashboard query parses.
- `helm install` with every option is accepted by the API server, the monitoring objects by the
  Prometheus Operator's own CRDs (pinned in e2e/monitoring/go.mod).
- `helm install` creates the CRDs, the operator's Deployment (whose pod the ReplicaSet controller
  creates under the `restricted` Pod Security level), ServiceAccount and RBAC.
- Then the RBAC is proven sufficient and minimal: the operator runs here with exactly the
  Deployment's command, arguments and environment, but authenticated as the chart's
  ServiceAccount (a TokenRequest token). It reconciles ModelTiers; the ServiceAccount's
  permissions are exactly the derived rules (SelfSubjectRulesReview against a ServiceAccount
  with no bindings); it cannot do what it should not; and its writes leave no drift on the
  ModelTier (spec, labels and annotations as applied, `kubectl diff` clean, managedFields
  showing it owns status and Kopf's finalizer only). Namespaced RBAC reaches only the watched
  namespaces; two peered replicas run one active operator and fail over.

There is no kubelet: the operator's pod never runs, which is why the operator runs locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import waiting
from tierserve.dev.controlplane import ControlPlaneInfo, module_version
from tierserve.dev.proc import Process, free_port, logs_dir, start, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tierserve"
EXAMPLE = ROOT / "examples" / "support-assistant.yaml"
VENV_BIN = Path(sys.executable).parent
Run = Callable[..., subprocess.CompletedProcess[str]]
Docs = list[dict[str, Any]]

MONITORING = "monitoring.coreos.com/v1"
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator"
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """tests.waiting.eventually, with errors in `check` counted as "not yet" (reads racing a
    helm install or an operator start)."""
    return waiting.eventually(check, what, timeout, retry=(Exception,))


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(
    helm: Run, tmp_path: Path, values: dict[str, Any], release: str = "ts", ns: str = "ops"
) -> Docs:
    out = helm("template", release, str(CHART), "-n", ns, "-f", str(values_file(tmp_path, values)))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: Docs, kind: str) -> Docs:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Docs, kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: Docs) -> dict[str, Any]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    result: dict[str, Any] = spec["containers"][0]
    return result


def get(kubectl: Run, *args: str) -> dict[str, Any] | None:
    out = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def create_namespace(
    kubectl: Run,
    stem: str,
    labels: dict[str, str] | None = None,
    cleanup: list[Callable[[], Any]] | None = None,
) -> str:
    """A fresh namespace; with `cleanup`, its deletion is registered there."""
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    if cleanup is not None:
        cleanup.append(lambda: kubectl("delete", "namespace", name, "--wait=false"))
    if labels:
        kubectl("label", "namespace", name, *[f"{k}={v}" for k, v in labels.items()])
    return name


def write_sa_kubeconfig(
    kubectl: Run, control_plane: ControlPlaneInfo, sa: str, ns: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `sa` with a TokenRequest token."""
    token = kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    assert token.count(".") == 2, "not a JWT"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": control_plane.server_url,
                    "certificate-authority": str(control_plane.ca_file),
                },
            }
        ],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "local", "user": sa, "namespace": ns}}],
        "current-context": sa,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def as_user(control_plane: ControlPlaneInfo, kubeconfig: Path) -> Run:
    """kubectl with another kubeconfig, same calling convention as the `kubectl` fixture."""

    def run(*args: str, check: bool = True, timeout: float = 60.0) -> Any:
        result = subprocess.run(
            [str(control_plane.kubectl), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"`kubectl {' '.join(args)}` failed: {result.stderr.strip()}")
        return result

    return run


def run_deployed_operator(
    kubectl: Run,
    deployment: str,
    ns: str,
    kubeconfig: Path,
    pod_name: str,
    health_port: int,
    metrics_port: int,
) -> Process:
    """Runs the Deployment's container here: its command, args and env, as its ServiceAccount.

    Only what a pod gets from the kubelet is supplied: the ServiceAccount's credentials (a
    kubeconfig instead of the mounted token) and the downward API's pod name. The health and
    metrics ports are rewritten only when two replicas share this host's network.
    """
    dep = get(kubectl, "deployment", deployment, "-n", ns)
    assert dep is not None, f"deployment {deployment} not found"
    spec = dep["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        else:
            raise AssertionError(f"cannot supply env {var} outside a pod")
    rendered_health = next(p["containerPort"] for p in spec["ports"] if p["name"] == "health")
    rendered_metrics = next(p["containerPort"] for p in spec["ports"] if p["name"] == "metrics")
    argv = [*spec["command"], *spec["args"]]
    argv = [
        a.replace(f":{rendered_health}/", f":{health_port}/").replace(
            f"--metrics-port={rendered_metrics}", f"--metrics-port={metrics_port}"
        )
        for a in argv
    ]
    if env.get("TIERSERVE_OPERATOR_METRICS_PORT"):
        env["TIERSERVE_OPERATOR_METRICS_PORT"] = str(metrics_port)
    env.update(KUBECONFIG=str(kubeconfig), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    log = logs_dir() / f"chart-operator-{pod_name}.log"
    log.unlink(missing_ok=True)
    proc = start("operator", argv, log=log, env=env)
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=2).status_code == 200,
        timeout=90,
        component="operator (chart's command, ServiceAccount credentials)",
        what="healthy",
        log=log,
        proc=proc.popen,
    )
    return proc


def granted_rules(kubeconfig: Path, namespace: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the kubeconfig's user may use in `namespace`."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        review = client.AuthorizationV1Api(api).create_self_subject_rules_review(
            client.V1SelfSubjectRulesReview(
                spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace)
            )
        )
    finally:
        api.close()
    status = review.status
    assert status is not None and not status.incomplete, status
    return {
        (group, resource, verb)
        for rule in status.resource_rules
        for group in rule.api_groups or [""]
        for resource in rule.resources or []
        for verb in rule.verbs
    }


def expected_rules(peering: str | None = None) -> set[tuple[str, str, str]]:
    """The rules derived from the operator's code (see templates/rbac.yaml)."""
    rules = {
        ("tierserve.io", "modeltiers", "list"),
        ("tierserve.io", "modeltiers", "watch"),
        ("tierserve.io", "modeltiers", "patch"),
        ("tierserve.io", "modeltiers/status", "patch"),
        ("tierserve.io", "modeltiers/finalizers", "update"),
        ("ray.io", "rayservices", "get"),
        ("ray.io", "rayservices", "create"),
        ("ray.io", "rayservices", "patch"),
        ("ray.io", "rayclusters", "get"),
        ("ray.io", "rayclusters", "patch"),
        ("", "events", "create"),
        ("", "pods", "list"),
    }
    if peering:
        rules |= {("kopf.dev", peering, v) for v in ("list", "watch", "patch")}
    return rules


def patch_as(kubeconfig: Path, ns: str, name: str, body: dict[str, Any]) -> tuple[int, str]:
    """Merge-patches a ModelTier with the kubeconfig's credentials: (HTTP status, message)."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "tierserve.io", "v1alpha1", ns, "modeltiers", name, body
        )
    except client.ApiException as exc:
        return int(exc.status), str(json.loads(exc.body or "{}").get("message", exc.reason))
    finally:
        api.close()
    return 200, "patched"


def applied(kubectl: Run, path: Path, ns: str) -> dict[str, Any]:
    """`kubectl apply` (client-side, like most GitOps tools) and the object as stored."""
    out = kubectl("apply", "-n", ns, "-f", str(path), "-o", "json")
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def wait_reconciled(kubectl: Run, name: str, ns: str, timeout: float = 60) -> dict[str, Any]:
    def status_written() -> dict[str, Any] | None:
        live = get(kubectl, "modeltier", name, "-n", ns) or {"metadata": {}}
        status = live.get("status") or {}
        ok = status.get("observedGeneration") == live["metadata"].get("generation")
        types = {c["type"] for c in status.get("conditions") or []}
        return live if ok and {"Ready", "Progressing", "Degraded"} <= types else None

    result: dict[str, Any] = eventually(status_written, f"status of {ns}/{name}", timeout)
    return result


def delete_modeltiers(kubectl: Run, ns: str) -> None:
    kubectl("delete", "modeltiers", "--all", "-n", ns, "--wait=true", "--timeout=30s", timeout=60)


def remove_unused_crd(kubectl: Run, name: str) -> bool:
    """Deletes CRD `name` unless objects of it exist; True when it is now absent.

    So that `helm install` is what creates it (helm skips CRDs that exist). A CRD still in use
    (objects left by other tests, possibly held by Kopf's finalizer) is left alone: deleting it
    would wait on those objects.
    """
    if get(kubectl, "crd", name) is None:
        return True
    objects = get(kubectl, name, "-A")
    if objects is None or objects["items"]:
        return False
    kubectl("delete", "crd", name, "--wait=true", "--timeout=30s", timeout=60)
    return True


def helm_install(helm: Run, release: str, ns: str, tmp_path: Path, values: dict[str, Any]) -> None:
    # No --wait: without a kubelet the operator's pod never becomes ready.
    helm(
        "install",
        release,
        str(CHART),
        "-n",
        ns,
        "-f",
        str(values_file(tmp_path, values)),
        "--timeout",
        "120s",
        timeout=180,
    )


def local_values(health: int, metrics: int, **extra: Any) -> dict[str, Any]:
    """Chart values for an operator that will run on this host: loopback, free ports, 1 s resync."""
    values: dict[str, Any] = {
        "operator": {
            "bindAddress": "127.0.0.1",
            "healthPort": health,
            "metricsPort": metrics,
            "resyncSeconds": 1,
        }
    }
    values.update(extra)
    return values


class FakeServeDashboard:
    """Just enough of the Ray dashboard's Serve REST API for the external backend's finalizer.

    The chart test is about Kubernetes permissions; the external backend is used only because
    its ModelTiers get Kopf's finalizer (a write to the main resource). A real Ray dashboard is
    exercised by test_external_backend.py.
    """

    def __init__(self) -> None:
        self.apps: dict[str, dict[str, Any]] = {}
        apps = self.apps

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(
                    {
                        "applications": {
                            name: {
                                "status": "DEPLOYING",
                                "message": "",
                                "deployed_app_config": app,
                                "deployments": {},
                            }
                            for name, app in apps.items()
                        }
                    }
                )

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                apps.clear()
                apps.update({a["name"]: a for a in body.get("applications", [])})
                self._reply({})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cleanup(kubectl: Run, helm: Run) -> Iterator[list[Callable[[], Any]]]:
    """Undo actions, run in reverse order even when the test fails."""
    actions: list[Callable[[], Any]] = []
    yield actions
    for action in reversed(actions):
        with contextlib.suppress(Exception):
            action()


# ------------------------------------------------------------------------------------------
# lint and template
# ------------------------------------------------------------------------------------------

OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced-rbac": {"watchNamespaces": ["team-a", "team-b"], "rbac": {"namespaced": True}},
    "watch-namespaces-cluster-rbac": {"watchNamespaces": ["team-a"]},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "router-pod-monitor": {"routerPodMonitor": {"enabled": True}},
    "prometheus-rule": {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}},
    "dashboard": {"dashboard": {"enabled": True, "namespace": "monitoring"}},
    "replicas-peering": {"replicas": 3, "peering": {"enabled": True}},
    "replicas-peering-namespaced": {
        "replicas": 2,
        "peering": {"enabled": True, "name": "tierserve-peers"},
        "watchNamespaces": ["team-a", "team-b"],
        "rbac": {"namespaced": True},
    },
    "image-digest": {"image": {"digest": "sha256:" + "a" * 64}},
    "no-admission-guard": {"admissionGuard": {"enabled": False}},
    "bring-your-own-rbac": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "platform-operator"},
    },
}


def test_helm_lint_passes_with_defaults_and_every_option(helm: Run, tmp_path: Path) -> None:
    out = helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout
    for name, values in OPTIONS.items():
        out = helm("lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, values)))
        assert "0 chart(s) failed" in out.stdout, name


def check_common(docs: Docs, release_ns: str) -> None:
    """What every rendering must satisfy."""
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {v["name"]: v for v in pod["volumes"]}["tmp"]["emptyDir"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = " ".join(c["args"])
    assert f":{ports['health']}/healthz" in args
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TIERSERVE_OPERATOR_METRICS_PORT"] == str(ports["metrics"])
    assert "POD_ID" in env
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        if doc["kind"] in ("Deployment", "ServiceAccount", "Service", "ServiceMonitor"):
            assert ns == release_ns, doc["kind"]


def _check_defaults(docs: Docs) -> None:
    c = container(docs)
    assert c["command"] == ["tierserve", "operator"]
    assert "--standalone" in c["args"] and "--all-namespaces" in c["args"]
    assert not any(a.startswith("--namespace") for a in c["args"])
    assert c["image"] == "ghcr.io/tierserve/operator:0.1.0"
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    role = one(docs, "ClusterRole")
    assert role["metadata"]["name"] == "ops-ts-tierserve"
    assert rule_set(role["rules"]) == expected_rules()
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ts-tierserve", "namespace": "ops"}
    ]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    policy = one(docs, "ValidatingAdmissionPolicy")
    assert (
        "system:serviceaccount:ops:ts-tierserve"
        in policy["spec"]["matchConditions"][0]["expression"]
    )
    assert (
        one(docs, "ValidatingAdmissionPolicyBinding")["spec"]["policyName"]
        == policy["metadata"]["name"]
    )
    for kind in (
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "KopfPeering",
        "ClusterKopfPeering",
    ):
        assert not by_kind(docs, kind), kind


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _check_namespaced(docs: Docs) -> None:
    c = container(docs)
    assert [a for a in c["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert "--all-namespaces" not in c["args"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for b in bindings.values():
        assert b["subjects"][0]["namespace"] == "ops"
    for role in roles.values():
        assert rule_set(role["rules"]) == expected_rules()


def _check_watch_cluster_rbac(docs: Docs) -> None:
    assert "--namespace=team-a" in container(docs)["args"]
    assert one(docs, "ClusterRole")


def _check_service_monitor(docs: Docs) -> None:
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == MONITORING
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True


def _check_pod_monitor(docs: Docs) -> None:
    pm = one(docs, "PodMonitor")
    assert pm["apiVersion"] == MONITORING
    assert pm["spec"]["selector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["namespaceSelector"] == {"any": True}


def _check_prometheus_rule(docs: Docs) -> None:
    rule = one(docs, "PrometheusRule")
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert names == {
        "TierserveTopTierSaturated",
        "TierserveThresholdPinnedAtBound",
        "TierserveMetricsUnavailable",
        "TierserveShadowAgreementDropping",
        "TierserveFallbacksFiring",
        "TierserveOperatorDown",
    }


def _check_dashboard(docs: Docs) -> None:
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["tierserve.json"])
    assert dash == json.loads((CHART / "dashboards" / "tierserve.json").read_text())


def _check_peering(docs: Docs) -> None:
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    c = container(docs)
    # The same `tierserve operator` as standalone, so the autoscaler and metrics run too.
    assert c["command"][:2] == ["/bin/sh", "-c"]
    assert c["command"][2].startswith("exec tierserve operator --priority=")
    assert "--standalone" not in c["args"]
    assert "--peering=tierserve" in c["args"] and "--all-namespaces" in c["args"]
    assert any(a.startswith("--metrics-port=") for a in c["args"])
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "tierserve"
    rules = one(docs, "ClusterRole")["rules"]
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["list", "watch", "patch"],
    } in rules


def _check_peering_namespaced(docs: Docs) -> None:
    peerings = by_kind(docs, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"team-a", "team-b"}
    assert {p["metadata"]["name"] for p in peerings} == {"tierserve-peers"}
    for role in by_kind(docs, "Role"):
        assert {
            "apiGroups": ["kopf.dev"],
            "resources": ["kopfpeerings"],
            "verbs": ["list", "watch", "patch"],
        } in role["rules"]


def _check_digest(docs: Docs) -> None:
    assert container(docs)["image"] == "ghcr.io/tierserve/operator@sha256:" + "a" * 64


def _check_no_guard(docs: Docs) -> None:
    assert not by_kind(docs, "ValidatingAdmissionPolicy")


def _check_byo_rbac(docs: Docs) -> None:
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ServiceAccount")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"


CHECKS: dict[str, Callable[[Docs], None]] = {
    "defaults": _check_defaults,
    "namespaced-rbac": _check_namespaced,
    "watch-namespaces-cluster-rbac": _check_watch_cluster_rbac,
    "service-monitor": _check_service_monitor,
    "router-pod-monitor": _check_pod_monitor,
    "prometheus-rule": _check_prometheus_rule,
    "dashboard": _check_dashboard,
    "replicas-peering": _check_peering,
    "replicas-peering-namespaced": _check_peering_namespaced,
    "image-digest": _check_digest,
    "no-admission-guard": _check_no_guard,
    "bring-your-own-rbac": _check_byo_rbac,
}


def test_template_renders_defaults_and_every_option(helm: Run, tmp_path: Path) -> None:
    assert set(CHECKS) == set(OPTIONS)
    for name, values in OPTIONS.items():
        docs = render(helm, tmp_path, values)
        check_common(docs, "ops")
        CHECKS[name](docs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": "two"}, "replicas"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"rbac": {"namespacd": True}}, "namespacd"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"prometheusRule": {"topTierSaturated": {"for": "ten minutes"}}}, "for"),
        ({"image": {"digest": "latest"}}, "digest"),
        # Cross-field rules: the schema names the value that has to change.
        ({"replicas": 2}, "at '/peering/enabled': value must be true"),
        ({"rbac": {"namespaced": True}}, "at '/watchNamespaces': minItems: got 0, want 1"),
        (
            {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
            "at '/metrics/service/enabled': value must be true",
        ),
    ],
    ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None,
)
def test_invalid_values_are_refused_with_a_clear_message(
    helm: Run, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = values_file(tmp_path, values)
    for command in (("template", "ts"), ("lint",)):
        out = helm(*command, str(CHART), "-f", str(path), check=False)
        assert out.returncode != 0, f"helm {command[0]} accepted {values}"
        err = out.stderr + out.stdout
        assert message in err, err
        assert "values don't meet the specifications of the schema" in err, err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "replicas > 1 needs peering.enabled=true: Kopf has no leader election"),
        ({"rbac": {"namespaced": True}}, "rbac.namespaced=true needs watchNamespaces"),
        (
            {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
            "serviceMonitor.enabled=true needs metrics.service.enabled=true",
        ),
    ],
    ids=["replicas", "namespaced", "servicemonitor"],
)
def test_cross_field_rules_explain_themselves_without_the_schema(
    helm: Run, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    """--skip-schema-validation skips the schema; the templates still refuse, and say why."""
    path = values_file(tmp_path, values)
    out = helm(
        "template", "ts", str(CHART), "-f", str(path), "--skip-schema-validation", check=False
    )
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_install_with_invalid_values_changes_nothing(
    helm: Run, kubectl: Run, namespace: str, tmp_path: Path
) -> None:
    path = values_file(tmp_path, {"replicas": -1})
    out = helm("install", "bad", str(CHART), "-n", namespace, "-f", str(path), check=False)
    assert out.returncode != 0 and "replicas" in out.stderr
    assert "bad" not in helm("list", "-n", namespace, "-q").stdout.split()
    assert get(kubectl, "deployment", "bad-tierserve", "-n", namespace) is None


# ------------------------------------------------------------------------------------------
# alerts and dashboard queries (promtool)
# ------------------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: apt-get install prometheus", pytrace=False)
    return path


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


MT = {"namespace": "llm", "modeltier": "support"}


def _alert(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": {"severity": "warning", **e}} for e in expected],
    }


def alert_tests() -> list[dict[str, Any]]:
    """One promtool test per alert: it fires on the bad case and stays quiet on the good one."""
    esc = "ray_tierserve_escalations_total"
    shadow = "ray_tierserve_shadow_evaluations_total"
    day = 60 * 26  # minutes of history for the day-over-day comparison
    return [
        {  # three tiers: only `large` is the top tier, though `medium` is busier
            "interval": "1m",
            "input_series": [
                series(
                    esc, {**MT, "from_tier": "small", "to_tier": "medium", "reason": "x"}, "0+5x40"
                ),
                series(
                    esc, {**MT, "from_tier": "medium", "to_tier": "large", "reason": "x"}, "0+2x40"
                ),
                series("ray_tierserve_in_flight_requests", {**MT, "tier": "small"}, "90x40"),
                series("ray_tierserve_in_flight_requests", {**MT, "tier": "medium"}, "60x40"),
                series(
                    "ray_tierserve_in_flight_requests",
                    {**MT, "tier": "large", "replica": "a"},
                    "20x40",
                ),
                series(
                    "ray_tierserve_in_flight_requests",
                    {**MT, "tier": "large", "replica": "b"},
                    "20x40",
                ),
            ],
            "alert_rule_test": [
                _alert("TierserveTopTierSaturated", "5m"),  # pending: `for` is 10m
                _alert("TierserveTopTierSaturated", "15m", {**MT, "tier": "large"}),
            ],
        },
        {  # the policy wants 0.95; the threshold sits at 0.9 (bounds.max); another one moves
            "interval": "1m",
            "input_series": [
                series("tierserve_operator_desired_threshold", MT, "0.95x90"),
                series("tierserve_operator_threshold", MT, "0.9x90"),
                series(
                    "tierserve_operator_desired_threshold", {**MT, "modeltier": "moving"}, "0.8x90"
                ),
                series(
                    "tierserve_operator_threshold", {**MT, "modeltier": "moving"}, "0.5+0.01x90"
                ),
            ],
            "alert_rule_test": [
                _alert("TierserveThresholdPinnedAtBound", "10m"),  # pending: `for` is 15m
                _alert("TierserveThresholdPinnedAtBound", "50m", MT),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series("tierserve_operator_metrics_available", MT, "0x30"),
                series("tierserve_operator_metrics_available", {**MT, "modeltier": "ok"}, "1x30"),
            ],
            "alert_rule_test": [_alert("TierserveMetricsUnavailable", "15m", MT)],
        },
        {  # `small` agrees 70% (below the floor); `medium` fell from 98% to 85% (a drop)
            "interval": "1m",
            "input_series": [
                series(shadow, {**MT, "tier": "small", "agreed": "true"}, f"0+7x{day}"),
                series(shadow, {**MT, "tier": "small", "agreed": "false"}, f"0+3x{day}"),
                series(
                    shadow,
                    {**MT, "tier": "medium", "agreed": "true"},
                    f"0+98x{day - 120} {98 * (day - 120)}+85x120",
                ),
                series(
                    shadow,
                    {**MT, "tier": "medium", "agreed": "false"},
                    f"0+2x{day - 120} {2 * (day - 120)}+15x120",
                ),
                series(shadow, {**MT, "tier": "fine", "agreed": "true"}, f"0+97x{day}"),
                series(shadow, {**MT, "tier": "fine", "agreed": "false"}, f"0+3x{day}"),
            ],
            "alert_rule_test": [
                _alert(
                    "TierserveShadowAgreementDropping",
                    f"{day}m",
                    {**MT, "tier": "small"},
                    {**MT, "tier": "medium"},
                )
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series(
                    "ray_tierserve_fallbacks_total",
                    {**MT, "from_tier": "small", "to_tier": "large", "reason": "error"},
                    "0+3x20",
                ),
                series(
                    "ray_tierserve_fallbacks_total",
                    {**MT, "from_tier": "medium", "to_tier": "large", "reason": "error"},
                    "5x20",
                ),
            ],
            "alert_rule_test": [
                _alert(
                    "TierserveFallbacksFiring",
                    "10m",
                    {**MT, "from_tier": "small", "to_tier": "large", "reason": "error"},
                )
            ],
        },
        {
            "interval": "1m",
            "input_series": [series("up", {"job": "ts-tierserve-metrics"}, "1x5 0x20")],
            "alert_rule_test": [
                _alert("TierserveOperatorDown", "5m"),
                _alert("TierserveOperatorDown", "20m", {"job": "ts-tierserve-metrics"}),
            ],
        },
    ]


def _promtool_test(
    tmp_path: Path, groups: list[dict[str, Any]], tests: list[dict[str, Any]]
) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    check = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    spec = tmp_path / "tests.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests})
    )
    out = subprocess.run(
        [promtool(), "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def rendered_rule_groups(helm: Run, tmp_path: Path) -> list[dict[str, Any]]:
    values = {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}}
    groups: list[dict[str, Any]] = one(render(helm, tmp_path, values), "PrometheusRule")["spec"][
        "groups"
    ]
    return groups


def test_alerts_fire_on_synthetic_series(helm: Run, tmp_path: Path) -> None:
    """Each alert's logic: fires on the bad series, not on the good ones, not before `for`."""
    groups = rendered_rule_groups(helm, tmp_path)
    for group in groups:  # wording is checked separately below; promtool compares it exactly
        for rule in group["rules"]:
            rule.pop("annotations", None)
    _promtool_test(tmp_path, groups, alert_tests())


def test_alert_annotations_reach_prometheus_as_templates(helm: Run, tmp_path: Path) -> None:
    """Helm must pass Prometheus' own {{ $labels }} / {{ $value }} templates through intact."""
    fallbacks = alert_tests()[4]
    labels = fallbacks["alert_rule_test"][0]["exp_alerts"][0]["exp_labels"]
    fallbacks["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"] = {
        "summary": "Requests of llm/support fall back from tier small",
        "description": "0.05 requests/s move from small to large (error): the tier is failing. "
        "Check its Serve deployment in the ModelTier's status.tiers.",
    }
    assert labels["from_tier"] == "small"
    _promtool_test(tmp_path, rendered_rule_groups(helm, tmp_path), [fallbacks])


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    dash = json.loads((CHART / "dashboards" / "tierserve.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 10
    substitutions = {"$__rate_interval": "5m", "$namespace": ".*", "$modeltier": ".*"}
    rules = []
    for i, expr in enumerate(exprs):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr.replace('"$1"', ""), f"unsubstituted variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------
# install, and the operator running with the chart's ServiceAccount
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def monitoring_crds(kubectl: Run) -> list[str]:
    """The Prometheus Operator CRDs, at the version e2e/monitoring/go.mod pins."""
    module_dir = ROOT / "e2e" / "monitoring"
    version = module_version(module_dir / "go.mod", PROMETHEUS_OPERATOR)
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Go toolchain is not on PATH (needed for e2e/ modules)", pytrace=False)
    out = subprocess.run(
        [go, "mod", "download", "-json", f"{PROMETHEUS_OPERATOR}@{version}"],
        cwd=module_dir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, f"go mod download {PROMETHEUS_OPERATOR}@{version}: {out.stderr}"
    source = Path(json.loads(out.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    kinds = ["servicemonitors", "podmonitors", "prometheusrules"]
    for kind in kinds:
        kubectl("apply", "--server-side", "-f", str(source / f"monitoring.coreos.com_{kind}.yaml"))

    def served() -> bool:
        return all(
            kubectl("get", f"{kind}.monitoring.coreos.com", "-A", check=False).returncode == 0
            for kind in kinds
        )

    eventually(served, "the Prometheus Operator CRDs to be served", timeout=60)
    return kinds


def test_install_with_every_option_is_accepted_by_the_api_server(
    helm: Run,
    kubectl: Run,
    kuberay_crds: list[Path],
    monitoring_crds: list[str],
    tmp_path: Path,
    cleanup: list[Callable[[], Any]],
) -> None:
    """Every object the chart can render, validated by the API server against its schema
    (the Prometheus Operator's own CRDs for the monitoring objects)."""
    release_ns = create_namespace(kubectl, "tierserve-all", cleanup=cleanup)
    watched = [create_namespace(kubectl, "team", cleanup=cleanup) for _ in range(2)]
    values = {
        "replicas": 2,
        "peering": {"enabled": True},
        "watchNamespaces": watched,
        "rbac": {"namespaced": True},
        "serviceMonitor": {"enabled": True},
        "routerPodMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
    helm_install(helm, "tsall", release_ns, tmp_path, values)
    cleanup.append(
        lambda: helm("uninstall", "tsall", "-n", release_ns, "--timeout", "60s", timeout=90)
    )
    manifest = [
        d
        for d in yaml.safe_load_all(helm("get", "manifest", "tsall", "-n", release_ns).stdout)
        if d
    ]
    assert {d["kind"] for d in manifest} >= {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "KopfPeering",
        "Role",
        "RoleBinding",
    }
    for doc in manifest:
        ns = doc["metadata"].get("namespace")
        args = [doc["kind"], doc["metadata"]["name"], *(["-n", ns] if ns else [])]
        assert get(kubectl, *args) is not None, f"{doc['kind']} {doc['metadata']['name']}"
    rule = get(kubectl, "prometheusrule", "tsall-tierserve", "-n", release_ns)
    assert rule is not None and len(rule["spec"]["groups"][0]["rules"]) == 6
    out = helm("uninstall", "tsall", "-n", release_ns, "--timeout", "60s", timeout=90)
    assert "uninstalled" in out.stdout
    for ns in watched:
        assert get(kubectl, "kopfpeering", "tierserve", "-n", ns) is None


CAN_I: list[tuple[str, bool]] = [
    # (`kubectl auth can-i` arguments, expected) for the cluster-wide release, in the workload ns
    ("list modeltiers.tierserve.io", True),
    ("watch modeltiers.tierserve.io", True),
    ("patch modeltiers.tierserve.io --subresource=status", True),
    ("create rayservices.ray.io", True),
    ("patch rayservices.ray.io", True),
    ("create events", True),
    ("get modeltiers.tierserve.io", False),  # Kopf lists and watches; nothing GETs one
    ("create modeltiers.tierserve.io", False),
    ("update modeltiers.tierserve.io", False),  # no PUT of a whole ModelTier
    ("delete modeltiers.tierserve.io", False),
    ("update modeltiers.tierserve.io --subresource=status", False),  # patch only
    ("delete rayservices.ray.io", False),  # garbage collection removes them
    ("list rayservices.ray.io", False),
    ("get rayclusters.ray.io", True),  # worker-group bounds KubeRay does not copy
    ("patch rayclusters.ray.io", True),
    ("list rayclusters.ray.io", False),
    ("delete rayclusters.ray.io", False),
    ("get secrets", False),
    ("list configmaps", False),
    ("list pods", True),  # read only: pods that cannot run show as Degraded
    ("delete pods", False),
    ("create pods", False),
    ("create pods --subresource=exec", False),
    ("list namespaces", False),
    ("create customresourcedefinitions.apiextensions.k8s.io", False),
    ("create clusterrolebindings.rbac.authorization.k8s.io", False),
    ("impersonate serviceaccounts", False),
    ("create serviceaccounts --subresource=token", False),
    ("patch validatingadmissionpolicies.admissionregistration.k8s.io", False),
    ("patch kopfpeerings.kopf.dev", False),  # no peering in this release
]


def assert_can_i(sa_kubectl: Run, ns: str, checks: list[tuple[str, bool]]) -> None:
    wrong = []
    for args, expected in checks:
        out = sa_kubectl("auth", "can-i", *args.split(), "-n", ns, check=False)
        allowed = out.stdout.strip() == "yes"
        if allowed != expected:
            wrong.append(f"can-i {args}: {out.stdout.strip()} (expected {expected})")
    assert not wrong, "\n".join(wrong)


def test_install_then_operator_as_its_service_account_reconciles_without_drift(
    helm: Run,
    kubectl: Run,
    control_plane: ControlPlaneInfo,
    kuberay_crds: list[Path],
    tmp_path: Path,
    cleanup: list[Callable[[], Any]],
) -> None:
    # The release namespace enforces the `restricted` Pod Security Standard.
    release_ns = create_namespace(
        kubectl,
        "tierserve-system",
        {"pod-security.kubernetes.io/enforce": "restricted"},
        cleanup=cleanup,
    )
    apps = create_namespace(kubectl, "apps", cleanup=cleanup)
    crds = ("modeltiers.tierserve.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")
    absent = {crd for crd in crds if remove_unused_crd(kubectl, crd)}

    health, metrics = free_port(), free_port()
    helm_install(helm, "ts", release_ns, tmp_path, local_values(health, metrics))
    cleanup.append(
        lambda: helm("uninstall", "ts", "-n", release_ns, "--timeout", "60s", timeout=90)
    )

    # --- what helm created ---------------------------------------------------------------
    for crd in crds:  # those in `absent` were created by this install
        assert get(kubectl, "crd", crd) is not None, crd
    if "modeltiers.tierserve.io" in absent:
        live_crd = get(kubectl, "crd", "modeltiers.tierserve.io")
        chart_crd = yaml.safe_load((CHART / "crds" / "modeltiers.tierserve.io.yaml").read_text())
        assert live_crd is not None
        assert live_crd["spec"]["versions"] == chart_crd["spec"]["versions"]
    assert get(kubectl, "serviceaccount", "ts-tierserve", "-n", release_ns)
    assert get(kubectl, "service", "ts-tierserve-metrics", "-n", release_ns)
    cluster_name = f"{release_ns}-ts-tierserve"
    role = get(kubectl, "clusterrole", cluster_name)
    assert role is not None
    assert get(kubectl, "clusterrolebinding", cluster_name)
    assert get(kubectl, "validatingadmissionpolicy", f"{cluster_name}-status-only")
    assert get(kubectl, "validatingadmissionpolicybinding", f"{cluster_name}-status-only")
    dep = get(kubectl, "deployment", "ts-tierserve", "-n", release_ns)
    assert dep is not None and dep["spec"]["template"]["spec"]["serviceAccountName"] == (
        "ts-tierserve"
    )
    # The ReplicaSet controller created the pod: it passed `restricted` Pod Security admission.
    # (No kubelet or scheduler here, so it stays Pending.)
    pods = eventually(
        lambda: (
            get(kubectl, "pods", "-n", release_ns, "-l", "app.kubernetes.io/instance=ts") or {}
        ).get("items"),
        "the operator's pod to be created under the restricted Pod Security level",
        timeout=60,
    )
    assert pods[0]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    # --- the ServiceAccount's permissions are exactly the derived rules --------------------
    sa_config = write_sa_kubeconfig(
        kubectl, control_plane, "ts-tierserve", release_ns, tmp_path / "sa.kubeconfig"
    )
    kubectl("create", "serviceaccount", "nobody", "-n", release_ns)
    baseline_config = write_sa_kubeconfig(
        kubectl, control_plane, "nobody", release_ns, tmp_path / "nobody.kubeconfig"
    )
    baseline = granted_rules(baseline_config, apps)
    granted = granted_rules(sa_config, apps) - baseline
    assert granted == expected_rules(), (
        f"extra: {granted - expected_rules()}; missing: {expected_rules() - granted}"
    )
    sa_kubectl = as_user(control_plane, sa_config)
    assert_can_i(sa_kubectl, apps, CAN_I)
    who = sa_kubectl("auth", "whoami", "-o", "json").stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{release_ns}:ts-tierserve"
    )

    # --- the operator, run as the Deployment would run it, as that ServiceAccount ----------
    operator = run_deployed_operator(
        kubectl, "ts-tierserve", release_ns, sa_config, "ts-tierserve-0", health, metrics
    )
    cleanup.append(operator.stop)
    # Kopf's finalizer is on every ModelTier: delete them while the operator still runs.
    cleanup.append(lambda: delete_modeltiers(kubectl, apps))
    mt = applied(kubectl, EXAMPLE, apps)
    name = mt["metadata"]["name"]
    rs = eventually(lambda: get(kubectl, "rayservice", name, "-n", apps), "the RayService")
    assert rs["metadata"]["ownerReferences"][0]["uid"] == mt["metadata"]["uid"]
    live = wait_reconciled(kubectl, name, apps)
    conditions = {c["type"]: c["status"] for c in live["status"]["conditions"]}
    assert {t: conditions[t] for t in ("Ready", "Progressing", "Degraded")} == {
        "Ready": "False",  # no kubelet: no Ray pods
        "Progressing": "True",
        "Degraded": "False",
    }
    # Events are posted as the ServiceAccount (Kopf's reporting component).
    events = eventually(
        lambda: [
            e
            for e in (get(kubectl, "events", "-n", apps) or {"items": []})["items"]
            if e["involvedObject"].get("name") == name and e["reason"] == "Created"
        ],
        "the Created event",
    )
    assert "RayService" in events[0]["message"]
    metrics_text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
    assert 'tierserve_operator_reconciles_total{outcome="created"} 1.0' in metrics_text

    # --- no drift: the operator's writes touched status only -------------------------------
    time.sleep(4)  # several 1 s resyncs
    after = get(kubectl, "modeltier", name, "-n", apps, "--show-managed-fields")
    assert after is not None
    assert after["spec"] == mt["spec"]
    assert after["metadata"]["generation"] == mt["metadata"]["generation"]
    assert after["metadata"].get("labels") == mt["metadata"].get("labels")
    assert after["metadata"].get("annotations") == mt["metadata"].get("annotations")
    # Kopf's finalizer (its resync timer must be stopped before a ModelTier goes) is the one
    # write outside status; it is not part of what was applied, so no tool sees it as drift.
    assert after["metadata"].get("finalizers") == [KOPF_FINALIZER]
    diff = kubectl("diff", "-n", apps, "-f", str(EXAMPLE), check=False)
    assert diff.returncode == 0, f"kubectl diff reports drift:\n{diff.stdout}{diff.stderr}"
    operator_writes = [
        f for f in after["metadata"]["managedFields"] if not f["manager"].startswith("kubectl")
    ]
    assert {f.get("subresource") for f in operator_writes} == {"status", None}, operator_writes
    for entry in operator_writes:
        if entry.get("subresource") == "status":
            assert set(entry["fieldsV1"]) == {"f:status"}, entry
        else:
            assert entry["fieldsV1"] == {
                "f:metadata": {"f:finalizers": {".": {}, f'v:"{KOPF_FINALIZER}"': {}}}
            }, entry

    # --- what the ServiceAccount may not do on a ModelTier ---------------------------------
    # RBAC allows `patch` (Kopf's finalizer); the admission guard refuses any other change.
    # (Straight to the API: kubectl patch/label GET first, which RBAC refuses before admission.)
    refused: dict[str, dict[str, Any]] = {
        "spec": {"spec": {"routing": {"escalation": {"threshold": 0.55}}}},
        "labels": {"metadata": {"labels": {"team": "x"}}},
        "annotations": {"metadata": {"annotations": {"note": "x"}}},
    }
    for what, body in refused.items():
        status, message = patch_as(sa_config, apps, name, body)
        assert status == 403, f"the ServiceAccount changed the ModelTier's {what}: {message}"
        assert f"may not change a ModelTier's {what}" in message, message
    out = sa_kubectl("delete", "mt", name, "-n", apps, "--wait=false", check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr
    out = sa_kubectl("get", "secrets", "-n", apps, check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr
    # The user's own edits are not affected by the admission guard.
    kubectl("annotate", "mt", name, "-n", apps, "owner=team-llm")
    kubectl("annotate", "mt", name, "-n", apps, "owner-")

    # --- deletion: Kopf's delete handler (external backend) runs, then its finalizer goes ---
    dashboard = FakeServeDashboard()
    cleanup.append(dashboard.close)
    external = tmp_path / "external.yaml"
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = "external-assistant"
    doc["spec"]["ray"] = {"backend": "external", "dashboardURL": dashboard.url}
    external.write_text(yaml.safe_dump(doc))
    ext = applied(kubectl, external, apps)
    ext_live = wait_reconciled(kubectl, "external-assistant", apps)
    assert ext_live["metadata"].get("finalizers") == [KOPF_FINALIZER]
    assert ext_live["spec"] == ext["spec"]
    assert f"{apps}-external-assistant" in dashboard.apps
    kubectl(
        "delete", "mt", "external-assistant", "-n", apps, "--wait=true", "--timeout=60s", timeout=90
    )
    assert f"{apps}-external-assistant" not in dashboard.apps  # the delete handler ran

    delete_modeltiers(kubectl, apps)  # while the operator runs: it removes Kopf's finalizers
    operator.stop()
    assert "Traceback" not in operator.log.read_text(), operator.log


def test_namespaced_rbac_reaches_only_the_watched_namespaces(
    helm: Run,
    kubectl: Run,
    control_plane: ControlPlaneInfo,
    kuberay_crds: list[Path],
    tmp_path: Path,
    cleanup: list[Callable[[], Any]],
) -> None:
    release_ns = create_namespace(kubectl, "tierserve-ns", cleanup=cleanup)
    watched = create_namespace(kubectl, "team-a", cleanup=cleanup)
    other = create_namespace(kubectl, "team-b", cleanup=cleanup)

    health, metrics = free_port(), free_port()
    values = local_values(health, metrics, watchNamespaces=[watched], rbac={"namespaced": True})
    helm_install(helm, "tsn", release_ns, tmp_path, values)
    cleanup.append(
        lambda: helm("uninstall", "tsn", "-n", release_ns, "--timeout", "60s", timeout=90)
    )
    assert get(kubectl, "role", "tsn-tierserve", "-n", watched)
    assert get(kubectl, "rolebinding", "tsn-tierserve", "-n", watched)
    assert get(kubectl, "role", "tsn-tierserve", "-n", other) is None
    cluster_roles = get(kubectl, "clusterroles", "-l", "app.kubernetes.io/instance=tsn")
    assert cluster_roles is not None and cluster_roles["items"] == []

    sa_config = write_sa_kubeconfig(
        kubectl, control_plane, "tsn-tierserve", release_ns, tmp_path / "sa.kubeconfig"
    )
    kubectl("create", "serviceaccount", "nobody", "-n", release_ns)
    baseline_config = write_sa_kubeconfig(
        kubectl, control_plane, "nobody", release_ns, tmp_path / "nobody.kubeconfig"
    )
    assert granted_rules(sa_config, watched) - granted_rules(baseline_config, watched) == (
        expected_rules()
    )
    assert granted_rules(sa_config, other) == granted_rules(baseline_config, other)
    sa_kubectl = as_user(control_plane, sa_config)
    assert_can_i(
        sa_kubectl,
        watched,
        [("list modeltiers.tierserve.io", True), ("create rayservices.ray.io", True)],
    )
    assert_can_i(
        sa_kubectl,
        other,
        [
            ("list modeltiers.tierserve.io", False),
            ("create rayservices.ray.io", False),
            ("create events", False),
        ],
    )
    out = sa_kubectl("auth", "can-i", "list", "modeltiers.tierserve.io", "-A", check=False)
    assert out.stdout.strip() == "no"

    operator = run_deployed_operator(
        kubectl, "tsn-tierserve", release_ns, sa_config, "tsn-tierserve-0", health, metrics
    )
    cleanup.append(operator.stop)
    cleanup.append(lambda: delete_modeltiers(kubectl, watched))
    applied(kubectl, EXAMPLE, other)
    mt = applied(kubectl, EXAMPLE, watched)
    name = mt["metadata"]["name"]
    # Kopf first tries to list namespaces (to match patterns); forbidden, it retries with its
    # error backoffs (about 55 s) before using the given names. settings.scanning.disabled in
    # the operator's startup would skip that; until then a namespaced operator starts late.
    eventually(
        lambda: get(kubectl, "rayservice", name, "-n", watched), "the RayService", timeout=150
    )
    wait_reconciled(kubectl, name, watched)
    time.sleep(2)
    unwatched = get(kubectl, "modeltier", name, "-n", other)
    assert unwatched is not None and "status" not in unwatched
    assert get(kubectl, "rayservice", name, "-n", other) is None
    delete_modeltiers(kubectl, watched)
    operator.stop()
    log = operator.log.read_text()
    assert "Traceback" not in log, operator.log


def peering_state(proc: Process) -> str:
    """What Kopf last logged about peering. With a peering name it starts paused and says
    nothing until its first transition, so no message means paused."""
    state = "paused"
    for line in proc.log.read_text().splitlines():
        if "Pausing operations in favour of" in line:
            state = "paused"
        elif "Resuming operations after the pause" in line:
            state = "active"
    return state


def peers(kubectl: Run, name: str) -> dict[str, dict[str, Any]]:
    obj = get(kubectl, "clusterkopfpeering", name) or {}
    return {k: v for k, v in (obj.get("status") or {}).items() if v}


def test_replicas_with_peering_run_one_active_operator_and_fail_over(
    helm: Run,
    kubectl: Run,
    control_plane: ControlPlaneInfo,
    kuberay_crds: list[Path],
    tmp_path: Path,
    cleanup: list[Callable[[], Any]],
) -> None:
    """Two replicas of the chart's peering command: one works, the other takes over on exit."""
    release_ns = create_namespace(kubectl, "tierserve-ha", cleanup=cleanup)
    apps = create_namespace(kubectl, "apps-ha", cleanup=cleanup)
    peering = f"tierserve-{uuid.uuid4().hex[:6]}"
    health, metrics = free_port(), free_port()
    values = local_values(health, metrics, replicas=2, peering={"enabled": True, "name": peering})
    helm_install(helm, "tsha", release_ns, tmp_path, values)
    cleanup.append(
        lambda: helm("uninstall", "tsha", "-n", release_ns, "--timeout", "60s", timeout=90)
    )
    assert get(kubectl, "clusterkopfpeering", peering) is not None
    sa_config = write_sa_kubeconfig(
        kubectl, control_plane, "tsha-tierserve", release_ns, tmp_path / "sa.kubeconfig"
    )
    kubectl("create", "serviceaccount", "nobody", "-n", release_ns)
    baseline = granted_rules(
        write_sa_kubeconfig(kubectl, control_plane, "nobody", release_ns, tmp_path / "n.kc"), apps
    )
    assert granted_rules(sa_config, apps) - baseline == expected_rules("clusterkopfpeerings")

    replicas = {}
    for pod in ("tsha-tierserve-a", "tsha-tierserve-b"):
        replicas[pod] = run_deployed_operator(
            kubectl, "tsha-tierserve", release_ns, sa_config, pod, free_port(), free_port()
        )
        cleanup.append(replicas[pod].stop)
    cleanup.append(lambda: delete_modeltiers(kubectl, apps))
    records = eventually(
        lambda: (p := peers(kubectl, peering)) and set(p) == set(replicas) and p,
        "both replicas' keep-alives in the peering object",
    )
    priorities = {pod: int(r["priority"]) for pod, r in records.items()}
    assert len(set(priorities.values())) == 2, f"equal priorities would pause both: {priorities}"
    active = max(priorities, key=lambda p: priorities[p])
    standby = min(priorities, key=lambda p: priorities[p])
    eventually(
        lambda: (
            peering_state(replicas[standby]) == "paused"
            and peering_state(replicas[active]) == "active"
        ),
        "one active replica, the other paused",
    )

    first = applied(kubectl, EXAMPLE, apps)["metadata"]["name"]
    eventually(lambda: get(kubectl, "rayservice", first, "-n", apps), "the RayService")
    wait_reconciled(kubectl, first, apps)
    assert f"created RayService {first}" in replicas[active].log.read_text()
    assert f"created RayService {first}" not in replicas[standby].log.read_text()

    # A graceful stop removes the active replica's record: the standby resumes at once.
    replicas[active].stop()
    eventually(
        lambda: peering_state(replicas[standby]) == "active",
        "the standby replica to take over",
        timeout=60,
    )
    second_doc = yaml.safe_load(EXAMPLE.read_text())
    second_doc["metadata"]["name"] = "second-assistant"
    second_path = tmp_path / "second.yaml"
    second_path.write_text(yaml.safe_dump(second_doc))
    applied(kubectl, second_path, apps)
    eventually(lambda: get(kubectl, "rayservice", "second-assistant", "-n", apps), "the takeover")
    wait_reconciled(kubectl, "second-assistant", apps)
    assert "created RayService second-assistant" in replicas[standby].log.read_text()
    delete_modeltiers(kubectl, apps)  # the standby, now active, removes Kopf's finalizers
    replicas[standby].stop()
    for proc in replicas.values():
        assert "Traceback" not in proc.log.read_text(), proc.log
