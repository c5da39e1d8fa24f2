"""The operator's pure core: conditions, the status patch, and the kuberay backend's use of the
Kubernetes API (server-side apply, reading Serve's status and the live threshold back)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tierserve.api.v1alpha1 import ConditionReason, ConditionType, ModelTier, ModelTierStatus
from tierserve.build import render
from tierserve.controller import kuberay
from tierserve.controller import status as st
from tierserve.controller.backend import Action, AppState, BackendError, DeploymentState
from tierserve.controller.kuberay import APPLY, FIELD_MANAGER, KubeRay, bound_patch, observe

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-assistant.yaml"


def mt() -> ModelTier:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace="llm", uid="u1")
    return ModelTier.model_validate(doc)


def conditions(app: AppState | None, error: BackendError | None = None) -> dict[str, Any]:
    tiers = st.tier_statuses(mt(), app)
    return {t: (ok, r, m) for t, ok, r, m in st.serving_conditions(app, error, tiers, "a")}


def healthy(state: str = "RUNNING") -> AppState:
    names = ("tier-small", "tier-frontier", "Ingress")
    return AppState(status=state, deployments={n: DeploymentState("HEALTHY") for n in names})


def test_not_yet_deployed_is_progressing() -> None:
    got = conditions(None)
    assert got[ConditionType.READY] == (False, "Deploying", "0/2 tiers ready")
    assert got[ConditionType.PROGRESSING] == (
        True,
        "Deploying",
        "Serve application a is not yet reported",
    )
    assert got[ConditionType.DEGRADED] == (False, "AsExpected", "no errors")


def test_running_with_every_tier_and_the_router_healthy_is_ready() -> None:
    assert conditions(healthy())[ConditionType.READY] == (True, "Serving", "2/2 tiers ready")
    no_router = healthy()
    del no_router.deployments["Ingress"]
    assert conditions(no_router)[ConditionType.READY][0] is False


def test_one_unhealthy_tier_is_not_ready_and_says_why() -> None:
    app = healthy()
    app.deployments["tier-frontier"] = DeploymentState("UPDATING", "loading weights")
    assert conditions(app)[ConditionType.READY][0] is False
    tiers = st.tier_statuses(mt(), app)
    assert tiers[1].model_dump() == {
        "name": "frontier",
        "ready": False,
        "replicas": 0,
        "message": "loading weights",
    }
    assert st.tier_statuses(mt(), None)[0].message == "not deployed"


def test_a_replica_serve_retries_is_degraded_before_serve_gives_up() -> None:
    """Serve retries a replica whose constructor raised for minutes (each retry an engine
    start) with the application still DEPLOYING: Degraded says so then, with Serve's words,
    not only once the retries have run out."""
    app = healthy("DEPLOYING")
    retrying = (
        "A replica failed to start with exception. Retrying 2 more time(s). Error:\n"
        "ValueError: Invalid repository ID or local directory specified: '/models/small'"
    )
    app.deployments["tier-small"] = DeploymentState("UPDATING", retrying)
    got = conditions(app)
    reason, message = got[ConditionType.DEGRADED][1:]
    assert got[ConditionType.DEGRADED][0] is True and reason == "ReplicasFailing"
    assert message.startswith("tier-small: A replica failed to start") and "\n" not in message
    assert "/models/small" in message
    assert got[ConditionType.READY] == (False, "ReplicasFailing", message)
    # Still loading (no failure yet) is progress, not an error.
    app.deployments["tier-small"] = DeploymentState("UPDATING", "loading weights")
    assert conditions(app)[ConditionType.DEGRADED][0] is False


def test_errors_block_with_their_reason() -> None:
    error = BackendError(ConditionReason.RAY_SERVICE_REJECTED, "admission webhook said no")
    got = conditions(healthy(), error)
    assert got[ConditionType.DEGRADED] == (True, "RayServiceRejected", "admission webhook said no")
    assert got[ConditionType.READY] == (False, "RayServiceRejected", "admission webhook said no")
    assert got[ConditionType.PROGRESSING][1] == "Blocked"


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    previous = ModelTierStatus()
    first = st.condition(
        ConditionType.READY, False, ConditionReason.DEPLOYING, "0/2", generation=1,
        previous=previous, now="t1",
    )  # fmt: skip
    previous = ModelTierStatus(conditions=[first])
    same = st.condition(
        ConditionType.READY, False, ConditionReason.DEPLOYING, "1/2", generation=2,
        previous=previous, now="t2",
    )  # fmt: skip
    flipped = st.condition(
        ConditionType.READY, True, ConditionReason.SERVING, "2/2", generation=2,
        previous=previous, now="t3",
    )  # fmt: skip
    assert (same.last_transition_time, flipped.last_transition_time) == ("t1", "t3")


def test_merge_patch_is_empty_when_equal_and_nulls_what_went_away() -> None:
    old = {"a": 1, "esc": {"threshold": 0.6, "signals": {"x": 1.0, "y": 2.0}}, "gone": "v"}
    assert st.merge_patch(old, old) == {}
    new = {"a": 1, "esc": {"threshold": 0.65, "signals": {"x": 1.0}}, "list": [1]}
    assert st.merge_patch(old, new) == {
        "gone": None,
        "esc": {"threshold": 0.65, "signals": {"y": None}},
        "list": [1],
    }


def test_a_status_from_another_operator_version_is_rebuilt_not_refused() -> None:
    odd = {"conditions": [{"type": "Ready", "status": "True", "reason": "SomethingNew"}]}
    assert st.parse(odd) == ModelTierStatus()
    assert st.parse({"ready": "1/2", "unknownField": 3}).ready == "1/2"


def test_the_api_servers_numbers_read_back_equal() -> None:
    """Go writes 1.0 as 1: parsed through the models, it is the same status, not a change."""
    written = {"escalation": {"threshold": 1.0}, "modelledCostFactor": 2.0}
    read = json.loads(json.dumps(written).replace("1.0", "1").replace("2.0", "2"))
    assert st.dump(st.parse(read)) == st.dump(st.parse(written))


# --- the kuberay backend ----------------------------------------------------------------------


class FakeCustomObjects:
    """The calls the kuberay backend makes, against one stored RayService and the RayClusters
    KubeRay would have made for it (`clusters`, patched by JSON patch as the API server does)."""

    def __init__(self) -> None:
        self.live: dict[str, Any] | None = None
        self.applies: list[dict[str, Any]] = []
        self.fail: ApiException | None = None
        self.clusters: dict[str, dict[str, Any]] = {}
        self.cluster_patches: list[list[dict[str, Any]]] = []

    def get_namespaced_custom_object(self, *args: str, **kw: Any) -> dict[str, Any]:
        if args[3] == "rayclusters":
            if args[4] not in self.clusters:
                raise ApiException(status=404, reason="Not Found")
            return copy.deepcopy(self.clusters[args[4]])
        if self.live is None:
            raise ApiException(status=404, reason="Not Found")
        return self.live

    def _json_patch(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        assert name in self.clusters
        cluster = copy.deepcopy(self.clusters[name])
        for op in ops:
            *parents, key = op["path"].strip("/").split("/")
            at: Any = cluster
            for part in parents:
                at = at[int(part)] if isinstance(at, list) else at[part]
            if op["op"] == "test":
                if at.get(key) != op["value"]:
                    raise ApiException(status=422, reason="test failed")
            else:
                assert op["op"] == "add" or key in at, op
                at[key] = op["value"]
        self.clusters[name] = cluster
        self.cluster_patches.append(ops)
        return cluster

    def patch_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, name: str, body: Any, **kw: Any
    ) -> dict[str, Any]:
        if plural == "rayclusters":
            assert kw["_content_type"] == "application/json-patch+json"
            return self._json_patch(name, body)
        assert (kw["field_manager"], kw["force"], kw["_content_type"]) == (
            FIELD_MANAGER,
            True,
            APPLY,
        )
        if self.fail is not None:
            raise self.fail
        self.applies.append(body)
        old = self.live or {"metadata": {"generation": 0}}
        changed = old.get("spec") != body["spec"]
        meta = {**body["metadata"], "generation": old["metadata"]["generation"] + changed}
        self.live = {**body, "metadata": meta, "status": old.get("status", {})}
        return self.live


def run(backend: KubeRay, threshold: float) -> tuple[Action, Any]:
    async def go() -> tuple[Action, Any]:
        await backend.observe()
        return await backend.apply(threshold)

    return asyncio.run(go())


def test_kuberay_applies_server_side_and_reports_what_changed() -> None:
    api = FakeCustomObjects()
    assert run(KubeRay(mt(), api), 0.6)[0] == Action.CREATED  # type: ignore[arg-type]
    assert api.applies[0] == render.ray_service(mt(), threshold=0.6)
    assert run(KubeRay(mt(), api), 0.6)[0] == Action.UNCHANGED  # type: ignore[arg-type]
    action, seen = run(KubeRay(mt(), api), 0.65)  # type: ignore[arg-type]
    assert action == Action.UPDATED and seen.threshold == 0.65


def on_cluster(model: ModelTier, api: FakeCustomObjects) -> KubeRay:
    """The kuberay backend over the fake API, with no pods to list."""
    return KubeRay(model, api, FakeCore({}))  # type: ignore[arg-type]


def test_kuberay_gives_the_running_raycluster_new_worker_group_bounds() -> None:
    """KubeRay never copies a RayService's worker-group bounds to its RayCluster (they are
    outside its spec hash): the operator patches them, leaving everything else as KubeRay made
    it, and only when they differ."""
    api = FakeCustomObjects()
    run(on_cluster(mt(), api), 0.6)
    made = render.ray_service(mt(), threshold=0.6)["spec"]["rayClusterConfig"]
    group = made["workerGroupSpecs"][0]["groupName"]
    api.live["status"] = {"activeServiceStatus": {"rayClusterName": "c1"}}  # type: ignore[index]
    api.clusters["c1"] = {"spec": copy.deepcopy(made)}
    assert run(on_cluster(mt(), api), 0.6)[0] == Action.UNCHANGED and not api.cluster_patches
    wider = mt()
    wider.spec.tiers[0].replicas.max = 3
    wider.spec.tiers[0].replicas.min = 2
    api.clusters["c1"]["spec"]["workerGroupSpecs"][0]["replicas"] = 1  # the autoscaler's
    assert run(on_cluster(wider, api), 0.6)[0] == Action.UPDATED
    want = render.ray_service(wider)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    have = api.clusters["c1"]["spec"]["workerGroupSpecs"][0]
    assert (have["minReplicas"], have["maxReplicas"]) == (want["minReplicas"], want["maxReplicas"])
    assert have["replicas"] == want["minReplicas"]  # raised into the new bounds
    assert have["template"] == made["workerGroupSpecs"][0]["template"]
    assert api.cluster_patches[0][0] == {
        "op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": group
    }  # fmt: skip
    assert run(on_cluster(wider, api), 0.6)[0] == Action.UNCHANGED and len(api.cluster_patches) == 1
    # A cluster KubeRay has not made yet, or one that cannot be read: the RayService still is.
    api.live["status"] = {"pendingServiceStatus": {"rayClusterName": "c2"}}  # type: ignore[index]
    assert run(on_cluster(mt(), api), 0.6)[0] == Action.UPDATED  # the RayService's bounds back


def test_bound_patch_skips_groups_the_rayservice_does_not_have() -> None:
    desired = {"spec": {"rayClusterConfig": {"workerGroupSpecs": [
        {"groupName": "gpu1", "minReplicas": 1, "maxReplicas": 4}]}}}  # fmt: skip
    cluster = {"spec": {"workerGroupSpecs": [
        {"groupName": "old", "minReplicas": 0, "maxReplicas": 1},
        {"groupName": "gpu1", "minReplicas": 1, "maxReplicas": 2, "replicas": 3}]}}  # fmt: skip
    assert bound_patch(desired, cluster) == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "gpu1"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/1/maxReplicas", "value": 4},
    ]
    assert bound_patch(desired, {"spec": {}}) == []


def test_kuberay_reads_serves_status_and_the_threshold_from_the_rayservice() -> None:
    live = render.ray_service(mt(), threshold=0.7)
    live["status"] = {
        "activeServiceStatus": {
            "applicationStatuses": {
                "support-assistant": {
                    "status": "RUNNING",
                    "serveDeploymentStatuses": {
                        "Ingress": {"status": "HEALTHY"},
                        "tier-small": {"status": "UNHEALTHY", "message": "OOM"},
                    },
                }
            }
        }
    }
    seen = observe(live, "support-assistant")
    assert seen.threshold == 0.7
    assert seen.app is not None and seen.app.status == "RUNNING"
    assert seen.app.deployments["tier-small"] == DeploymentState("UNHEALTHY", "OOM")
    assert observe(live, "another-app").app is None
    assert observe(None, "support-assistant").threshold is None
    live["spec"]["serveConfigV2"] = "not: [valid"
    assert observe(live, "support-assistant").threshold is None


def test_kuberay_shows_the_pending_clusters_progress_until_one_is_active() -> None:
    """The first deployment: KubeRay reports the cluster it prepares as pending, and nothing as
    active, until the application is RUNNING; an upgrade's pending cluster never hides the
    active one's status."""

    def app(status: str, small: str) -> dict[str, Any]:
        return {"applicationStatuses": {"support-assistant": {
            "status": status,
            "serveDeploymentStatuses": {"tier-small": {"status": small, "message": "slow"}},
        }}}  # fmt: skip

    live = render.ray_service(mt(), threshold=0.7)
    live["status"] = {"pendingServiceStatus": app("DEPLOYING", "UPDATING")}
    seen = observe(live, "support-assistant")
    assert seen.app is not None and seen.app.status == "DEPLOYING"
    assert seen.app.deployments["tier-small"] == DeploymentState("UPDATING", "slow")
    live["status"]["activeServiceStatus"] = app("RUNNING", "HEALTHY")
    seen = observe(live, "support-assistant")
    assert seen.app is not None and seen.app.status == "RUNNING"
    assert seen.app.deployments["tier-small"].status == "HEALTHY"


@pytest.mark.parametrize(
    ("exc", "reason", "message"),
    [
        (ApiException(status=404, reason="Not Found"), "RayServiceCRDMissing", "install KubeRay"),
        (
            ApiException(status=422, reason="Unprocessable"),
            "RayServiceRejected",
            "422 Unprocessable",
        ),
    ],
)
def test_kuberay_api_errors_become_condition_reasons(
    exc: ApiException, reason: str, message: str
) -> None:
    api = FakeCustomObjects()
    api.fail = exc
    with pytest.raises(BackendError) as err:
        run(KubeRay(mt(), api), 0.6)  # type: ignore[arg-type]
    assert err.value.reason == reason and message in str(err.value)


def waiting_pod(name: str, reason: str, message: str = "") -> dict[str, Any]:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return {
        "metadata": {"name": name},
        "status": {"containerStatuses": [{"name": "ray", "state": {"waiting": waiting}}]},
    }


def test_pods_that_cannot_run_are_named_in_the_kubelets_words() -> None:
    pods = [
        waiting_pod(
            "w-1", "ErrImageNeverPull", 'image "x:1" is not present with pull policy Never'
        ),
        waiting_pod("w-2", "ContainerCreating"),  # on its way: not a problem
        waiting_pod("h", "CreateContainerConfigError", 'secret "hf-token" not found'),
        {
            "metadata": {"name": "w-3"},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes: Insufficient cpu",
                    }
                ]
            },
        },
        {"metadata": {"name": "ok"}, "status": {"phase": "Running"}},
    ]
    unschedulable = dict(pods[3], metadata={"name": "a-first-by-name"})
    # Stuck containers first (definite), then Unschedulable (may pass), each by name.
    assert kuberay.pod_problems([unschedulable, *pods]) == (
        'pod h: CreateContainerConfigError: secret "hf-token" not found',
        'pod w-1: ErrImageNeverPull: image "x:1" is not present with pull policy Never',
        "pod a-first-by-name: Unschedulable: 0/1 nodes: Insufficient cpu",
        "pod w-3: Unschedulable: 0/1 nodes: Insufficient cpu",
    )
    assert kuberay.pod_problems([]) == ()


def test_failing_pods_make_the_modeltier_degraded_without_hiding_a_serving_one() -> None:
    problems = tuple(f"pod w-{i}: CrashLoopBackOff: back-off" for i in range(5))
    tiers = st.tier_statuses(mt(), None)
    got = {t: (ok, r, m) for t, ok, r, m in st.serving_conditions(None, None, tiers, "a", problems)}
    ok, reason, message = got[ConditionType.DEGRADED]
    assert (ok, reason) == (True, ConditionReason.PODS_FAILING)
    assert message.startswith("pod w-0: CrashLoopBackOff") and "(and 2 more)" in message
    assert got[ConditionType.READY][:2] == (False, ConditionReason.PODS_FAILING)
    # The application serves (e.g. one extra worker crash-loops): Ready stays, Degraded says it.
    app = healthy()
    tiers = st.tier_statuses(mt(), app)
    got = {t: (ok, r, m) for t, ok, r, m in st.serving_conditions(app, None, tiers, "a", problems)}
    assert got[ConditionType.READY][0] is True and got[ConditionType.DEGRADED][0] is True


class FakeCore:
    """CoreV1Api's pod listing, with the label selector checked."""

    def __init__(self, pods: dict[str, list[dict[str, Any]]], fail: Exception | None = None):
        self.pods, self.fail = pods, fail

    def list_namespaced_pod(self, ns: str, label_selector: str, **kw: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        from types import SimpleNamespace

        cluster = label_selector.removeprefix("ray.io/cluster=")
        return SimpleNamespace(items=self.pods.get(cluster, []))


def test_kuberay_reads_pod_problems_of_the_rayservices_clusters() -> None:
    api = FakeCustomObjects()
    api.live = render.ray_service(mt(), threshold=0.7)
    api.live["status"] = {"pendingServiceStatus": {"rayClusterName": "c1"}}
    core = FakeCore({"c1": [waiting_pod("c1-head", "ErrImagePull", "not found")], "c2": []})
    seen = asyncio.run(KubeRay(mt(), api, core).observe())  # type: ignore[arg-type]
    assert seen.pod_problems == ("pod c1-head: ErrImagePull: not found",)
    # Listing refused (an older chart without `pods: list`): the rest of the status holds.
    refused = FakeCore({}, fail=ApiException(status=403))
    seen = asyncio.run(KubeRay(mt(), api, refused).observe())  # type: ignore[arg-type]
    assert seen.pod_problems == () and seen.threshold == 0.7
