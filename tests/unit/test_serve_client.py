"""The typed Serve REST client: its models against Ray's own schema, and its behaviour (and the
external backend's) against the in-memory dashboard of tierserve.controller.fakes.

The operator image has no Ray, so the client's models are ours; the dev venv has Ray, so these
tests hold them to `ray.serve.schema` (what the dashboard validates a PUT with and builds a GET
from), the way Ray's controller does it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierserve.api.v1alpha1 import ConditionReason, ModelTier
from tierserve.build import render
from tierserve.controller.backend import Action, BackendError
from tierserve.controller.external import External
from tierserve.controller.fakes import FakeDashboard
from tierserve.controller.serve_client import (
    ApplicationConfig,
    DeployConfig,
    ServeAPIError,
    ServeClient,
    ServeDetails,
)

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-assistant.yaml"
URL = "http://dashboard:8265"
OTHER_APP = {  # someone else's application on the shared cluster, with fields we do not model
    "name": "other",
    "route_prefix": "/other",
    "import_path": "other.app:build",
    "runtime_env": {"pip": ["numpy"]},
    "args": {"k": None, "n": 1.0},
    "deployments": [{"name": "Other", "num_replicas": 2, "max_ongoing_requests": 7}],
}


def external_mt(threshold: float = 0.6) -> ModelTier:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = "llm"
    doc["spec"]["ray"] = {"backend": "external", "dashboardURL": URL}
    doc["spec"]["routing"]["escalation"]["threshold"] = threshold
    return ModelTier.model_validate(doc)


def rendered(threshold: float | None = None) -> ApplicationConfig:
    app = render.serve_application(external_mt(), threshold=threshold)
    return ApplicationConfig.model_validate(app)


# --- our models against Ray's schema ---------------------------------------------------------


def ray_get(put: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard's GET returns after `put`, built the way Ray's controller builds it:
    the PUT validated as ServeDeploySchema, each app checkpointed with exclude_unset and read
    back into ServeApplicationSchema, the details dumped with exclude_unset."""
    schema = pytest.importorskip("ray.serve.schema")
    deploy = schema.ServeDeploySchema.model_validate(put)
    apps = {}
    for app in deploy.applications:
        checkpoint = app.model_dump(exclude_unset=True)
        deployments = {
            d.name: schema.DeploymentDetails(
                name=d.name,
                status="HEALTHY",
                status_trigger="CONFIG_UPDATE_COMPLETED",
                message="",
                deployment_config=schema.DeploymentSchema(name=d.name),
                target_num_replicas=1,
                required_resources={"CPU": 1},
                replicas=[
                    schema.ReplicaDetails(replica_id="r1", state="RUNNING", start_time_s=1.0)
                ],
            )
            for d in app.deployments
        }
        apps[app.name] = schema.ApplicationDetails(
            name=app.name,
            route_prefix=app.route_prefix,
            docs_path=None,
            status="RUNNING",
            message="",
            last_deployed_time_s=1.0,
            deployed_app_config=schema.ServeApplicationSchema.model_validate(checkpoint),
            source="declarative",
            deployments=deployments,
            external_scaler_enabled=False,
        )
    details = schema.ServeInstanceDetails(
        controller_info={},
        proxy_location=deploy.proxy_location,
        http_options=schema.HTTPOptionsSchema.model_validate(
            deploy.http_options.model_dump(exclude_unset=True)
        ),
        proxies={},
        applications=apps,
    )
    as_json = json.dumps(details._get_user_facing_json_serializable_dict(exclude_unset=True))
    return dict(json.loads(as_json))


def test_what_we_put_is_valid_for_ray_and_comes_back_equal() -> None:
    """A deployed app reads back equal to what we rendered: no redeploy on an unchanged spec."""
    schema = pytest.importorskip("ray.serve.schema")
    config = DeployConfig(applications=[rendered()], http_options={"host": "0.0.0.0"})
    put = config.model_dump(mode="json", exclude_unset=True)
    schema.ServeDeploySchema.model_validate(put)  # the dashboard accepts it
    details = ServeDetails.model_validate(ray_get(put))
    app = details.applications["llm-support-assistant"]
    assert app.status == "RUNNING" and app.route_prefix == "/"
    assert app.deployments["Ingress"].running_replicas() == 1
    assert app.deployed_app_config == rendered()
    assert app.deployed_app_config.user_config("Ingress")["threshold"] == 0.6  # type: ignore[index]
    assert details.http_options is not None and details.http_options["host"] == "0.0.0.0"


def test_a_put_keeps_other_apps_and_the_clusters_http_settings_exactly() -> None:
    schema = pytest.importorskip("ray.serve.schema")
    first = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8123},
        "applications": [OTHER_APP],
    }
    details = ServeDetails.model_validate(ray_get(first))
    put = details.deploy_config([*details.configs().values(), rendered()])
    body = put.model_dump(mode="json", exclude_unset=True)
    validated = schema.ServeDeploySchema.model_validate(body)
    assert validated.proxy_location == "HeadOnly" and validated.http_options.port == 8123
    assert body["applications"][0] == OTHER_APP  # unmodelled fields and nulls included
    after = ServeDetails.model_validate(ray_get(body))
    assert after.configs()["other"].model_dump(exclude_unset=True) == OTHER_APP


def test_an_empty_cluster_answers_ray_s_empty_details() -> None:
    schema = pytest.importorskip("ray.serve.schema")
    details = ServeDetails.model_validate(schema.ServeInstanceDetails.get_empty_schema_dict())
    assert details.applications == {} and details.configs() == {}
    put = details.deploy_config([rendered()], {"host": "127.0.0.1", "port": 8001}, "HeadOnly")
    body = put.model_dump(mode="json", exclude_unset=True)
    assert schema.ServeDeploySchema.model_validate(body).http_options.port == 8001


# --- the client against the fake dashboard -----------------------------------------------------


def client(dashboard: FakeDashboard) -> ServeClient:
    return ServeClient(URL, transport=dashboard.transport())


def test_deploy_creates_then_is_unchanged_then_updates_keeping_the_others() -> None:
    dashboard = FakeDashboard(http_options={"host": "0.0.0.0", "port": 8000})
    dashboard.configs["other"] = OTHER_APP
    serve = client(dashboard)
    assert serve.deploy(rendered()) == "created"
    assert serve.deploy(rendered()) == "unchanged"
    assert len(dashboard.puts) == 1
    assert serve.deploy(rendered(threshold=0.7)) == "updated"
    put = dashboard.puts[-1]
    assert put["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert [a["name"] for a in put["applications"]] == ["other", "llm-support-assistant"]
    assert put["applications"][0] == OTHER_APP
    assert serve.remove("llm-support-assistant") is True
    assert serve.remove("llm-support-assistant") is False
    assert list(dashboard.configs) == ["other"]


def test_http_settings_are_given_only_to_a_cluster_without_them() -> None:
    dashboard = FakeDashboard()
    client(dashboard).deploy(rendered(), http_options={"port": 8001}, proxy_location="HeadOnly")
    assert dashboard.puts[-1]["http_options"] == {"port": 8001}
    assert dashboard.puts[-1]["proxy_location"] == "HeadOnly"
    body = DeployConfig(applications=[]).model_dump(mode="json", exclude_unset=True)
    assert body == {"applications": []}  # unset, never null: Serve refuses null settings


def test_failures_say_whether_the_dashboard_was_reached() -> None:
    dashboard = FakeDashboard()
    dashboard.down = True
    with pytest.raises(ServeAPIError, match="unreachable") as unreachable:
        client(dashboard).details()
    assert unreachable.value.status is None
    dashboard.down, dashboard.refuse = False, 400
    with pytest.raises(ServeAPIError, match="400 ValidationError") as refused:
        client(dashboard).deploy(rendered())
    assert refused.value.status == 400


# --- the external backend on the fake dashboard -----------------------------------------------


def test_external_backend_reads_the_live_threshold_and_applies_only_changes() -> None:
    dashboard = FakeDashboard()
    backend = External(external_mt(), client(dashboard))

    async def run() -> None:
        seen = await backend.observe()
        assert seen.app is None and seen.threshold is None
        action, seen = await backend.apply(0.65)
        assert action == Action.CREATED and seen.threshold == 0.65
        assert seen.app is not None and seen.app.status == "RUNNING"
        assert seen.app.deployments["tier-small"].replicas == 1
        again = External(external_mt(), client(dashboard))
        assert (await again.observe()).threshold == 0.65  # what a restarted operator reads
        assert (await again.apply(0.65))[0] == Action.UNCHANGED
        # A hand edit of the deployed config on the cluster is put back.
        dashboard.configs["llm-support-assistant"]["route_prefix"] = "/elsewhere"
        fresh = External(external_mt(), client(dashboard))
        await fresh.observe()
        assert (await fresh.apply(0.65))[0] == Action.UPDATED
        assert await fresh.remove() is True

    asyncio.run(run())
    assert len(dashboard.puts) == 3


@pytest.mark.parametrize(
    ("down", "refuse", "reason"),
    [
        (True, 0, ConditionReason.DASHBOARD_UNREACHABLE),
        (False, 500, ConditionReason.SERVE_CONFIG_REJECTED),
    ],
)
def test_external_backend_errors_carry_the_condition_reason(
    down: bool, refuse: int, reason: ConditionReason
) -> None:
    dashboard = FakeDashboard()
    dashboard.down, dashboard.refuse = down, refuse
    backend = External(external_mt(), client(dashboard))

    async def run() -> None:
        await backend.observe()
        await backend.apply(0.6)

    with pytest.raises(BackendError) as err:
        asyncio.run(run())
    assert err.value.reason == reason and URL in str(err.value)
