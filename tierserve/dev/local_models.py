"""Ray Serve LLM configuration for local model directories on a CPU-only machine.

Two equivalent forms of the same thing:

- `llm_config()` / `build_app()`: `ray.serve.llm.LLMConfig` objects and the
  `build_openai_app({"llm_configs": [...]})` application, for `serve.run` from a driver;
- `serve_config()`: the declarative Serve config (what `serve deploy`, the dashboard's
  `PUT /api/serve/applications/` and a RayService's serveConfigV2 take), with
  `import_path: ray.serve.llm:build_openai_app`.

`deploy()` PUTs the declarative form to a Ray dashboard (keeping the cluster's other declarative
applications: a PUT replaces them all) and waits, bounded, until every model answers on one
OpenAI-compatible endpoint; `undeploy()` removes just that application.

Engine arguments are the ones vLLM needs on CPU (see /work/shared/ENVIRONMENT.md): eager mode, a
small memory fraction, float32, a short context, and `VLLM_CPU_KVCACHE_SPACE` in the replica's
runtime_env.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tierserve.controller.serve_client import ApplicationConfig, ServeAPIError, ServeClient

if TYPE_CHECKING:
    from ray.serve.deployment import Application
    from ray.serve.llm import LLMConfig

COMPONENT = "ray serve llm"
APP_NAME = "tierserve-llm"
BUILDER = "ray.serve.llm:build_openai_app"

CPU_ENGINE_KWARGS: dict[str, Any] = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.2,
    "dtype": "float32",
    "max_model_len": 256,
}

CPU_ENV_VARS: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache per engine
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
}


class ServeError(RuntimeError):
    """Deploying or reaching the Serve application failed; the message is one line."""


def llm_config_dict(model_id: str, path: Path | str, *, max_model_len: int = 256) -> dict[str, Any]:
    """The JSON form of one model's LLMConfig (valid in a Serve config's `args.llm_configs`)."""
    return {
        "model_loading_config": {"model_id": model_id, "model_source": str(path)},
        "engine_kwargs": {**CPU_ENGINE_KWARGS, "max_model_len": max_model_len},
        "placement_group_config": {"bundles": [{"CPU": 1}]},
        "deployment_config": {"num_replicas": 1},
        "runtime_env": {"env_vars": dict(CPU_ENV_VARS)},
        "log_engine_metrics": False,
    }


def llm_config(model_id: str, path: Path | str, *, max_model_len: int = 256) -> LLMConfig:
    from ray.serve.llm import LLMConfig

    return LLMConfig.model_validate(llm_config_dict(model_id, path, max_model_len=max_model_len))


def build_app(models: Mapping[str, Path | str]) -> Application:
    """One OpenAI-compatible application serving every model; `models` maps model id -> dir."""
    from ray.serve.llm import build_openai_app

    return build_openai_app({"llm_configs": [llm_config(m, p) for m, p in models.items()]})


def serve_config(
    models: Mapping[str, Path | str] | list[dict[str, Any]],
    *,
    http_port: int = 8000,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
) -> dict[str, Any]:
    """The declarative Serve config deploying `build_app(models)`, proxy on 127.0.0.1.

    `models` maps model id -> directory, or is a list of ready LLMConfig dicts."""
    configs = (
        models if isinstance(models, list) else [llm_config_dict(m, p) for m, p in models.items()]
    )
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [
            {
                "name": app_name,
                "route_prefix": route_prefix,
                "import_path": BUILDER,
                "args": {"llm_configs": configs},
            }
        ],
    }


def application_details(dashboard_url: str, app_name: str = APP_NAME) -> dict[str, Any]:
    """The application's entry in the Serve REST API ({} when it is not listed)."""
    app = ServeClient(dashboard_url).details().applications.get(app_name)
    return app.model_dump(mode="json") if app else {}


def _summary(app: dict[str, Any]) -> str:
    """ "DEPLOYING (LLMServer:small UPDATING, ...)": the application and its deployments."""
    deployments = app.get("deployments") or {}
    parts = [f"{name} {d.get('status', '?')}" for name, d in sorted(deployments.items())]
    status = str(app.get("status") or "NOT_STARTED")
    return f"{status} ({', '.join(parts)})" if parts else status


def served_models(base_url: str) -> set[str]:
    r = httpx.get(f"{base_url}/v1/models", timeout=10.0)
    r.raise_for_status()
    return {m["id"] for m in r.json().get("data", [])}


def deploy(
    dashboard_url: str,
    models: Mapping[str, Path | str] | list[dict[str, Any]],
    *,
    http_port: int,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
    timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Deploys `build_app(models)` as application `app_name` through the dashboard's Serve REST
    API, keeping the cluster's other (declaratively deployed) applications, and waits until it is
    RUNNING and /v1/models lists every model. Returns the OpenAI base URL
    ("http://127.0.0.1:<port><route_prefix>/v1"). `http_port` is used when this starts Serve; a
    running Serve keeps its proxy port, which is then the one returned."""
    if isinstance(models, list):  # ready LLMConfig dicts (e.g. rendered from a ModelTier)
        model_ids = {str(c["model_loading_config"]["model_id"]) for c in models}
        local: dict[str, Path | str] = {}
    else:
        model_ids, local = set(models), dict(models)
    for model_id, path in local.items():
        if not (Path(path) / "config.json").is_file():
            raise ServeError(
                f"{COMPONENT}: model {model_id!r}: no model at {path} (no config.json)"
            )
    config = serve_config(models, http_port=http_port, app_name=app_name, route_prefix=route_prefix)
    serve = ServeClient(dashboard_url, timeout=120.0)
    try:  # keeps the cluster's other declarative applications (a PUT replaces them all)
        serve.deploy(
            ApplicationConfig.model_validate(config["applications"][0]),
            http_options=config["http_options"],
            proxy_location=config["proxy_location"],
        )
    except ServeAPIError as exc:
        raise ServeError(f"{COMPONENT}: {exc}") from exc
    try:
        running_port = int((serve.details().http_options or {})["port"])
    except (ServeAPIError, KeyError, TypeError, ValueError):
        running_port = http_port
    base = f"http://127.0.0.1:{running_port}{route_prefix.rstrip('/')}"
    say = progress or (lambda _msg: None)
    start = time.monotonic()
    deadline = start + timeout
    last, last_said = "", 0.0
    while True:
        app: dict[str, Any] = {}
        try:
            app = application_details(dashboard_url, app_name)
        except ServeAPIError as exc:
            app = {"status": "UNKNOWN", "message": str(exc)}
        status = str(app.get("status") or "")
        if status == "DEPLOY_FAILED":
            raise ServeError(f"{COMPONENT}: application {app_name} failed: {_failure(app)}")
        if status == "RUNNING":
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if model_ids <= served_models(base):
                    say(f"{COMPONENT}: {app_name} ready ({time.monotonic() - start:.0f}s)")
                    return f"{base}/v1"
        summary = _summary(app)
        now = time.monotonic()
        if summary != last or now - last_said >= 30:
            say(f"{COMPONENT}: {app_name} {summary} ({now - start:.0f}s)")
            last, last_said = summary, now
        if now > deadline:
            raise ServeError(
                f"{COMPONENT}: application {app_name} not ready after {timeout:.0f}s "
                f"({summary}: {_one_line(str(app.get('message') or ''))})"
            )
        time.sleep(2.0)


def undeploy(dashboard_url: str, app_name: str = APP_NAME, timeout: float = 120.0) -> None:
    """Removes application `app_name`, keeping the cluster's other declaratively deployed
    applications; when none is left, shuts Serve down (the REST API's DELETE)."""
    serve = ServeClient(dashboard_url, timeout=timeout)
    try:
        details = serve.details()
        if app_name not in details.applications:
            return
        if details.configs().keys() - {app_name}:
            serve.remove(app_name, details)
        else:
            serve.shutdown()
    except ServeAPIError as exc:
        raise ServeError(f"{COMPONENT}: {exc}") from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b.*")


def _failure(app: dict[str, Any]) -> str:
    """The failed deployment and the last exception line of its error (not the whole traceback)."""
    for name, dep in sorted((app.get("deployments") or {}).items()):
        if dep.get("status") in ("DEPLOY_FAILED", "UNHEALTHY") and dep.get("message"):
            lines = [ln.strip() for ln in _ANSI.sub("", str(dep["message"])).splitlines()]
            causes = [
                ln
                for ln in lines
                if _EXCEPTION_LINE.match(ln) and not ln.endswith("(most recent call last):")
            ]
            return f"{name}: {_one_line(causes[-1] if causes else lines[0])}"
    return _one_line(str(app.get("message") or "no message"))


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."
