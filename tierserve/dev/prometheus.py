"""A real Prometheus server (Debian's package) on loopback with a generated scrape configuration.

It ends with the process that started it, however that process ends (`tierserve.dev.proc.start`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tierserve.dev.proc import (
    ComponentError,
    Process,
    free_port,
    logs_dir,
    require_free_port,
    start,
    wait_until,
)

COMPONENT = "prometheus"


def find_binary() -> str:
    path = shutil.which("prometheus")
    if not path:
        raise ComponentError(
            COMPONENT, "binary not found; install Debian's package: apt-get install prometheus"
        )
    return path


def scrape_config(
    targets: Mapping[str, Sequence[str]],
    *,
    interval: str = "1s",
    self_port: int | None = None,
    host: str = "127.0.0.1",
    jobs: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One job per name, each with its host:port targets, then `jobs` as given (e.g. a
    kubernetes_sd_configs job); Prometheus scrapes itself too."""
    scrape = [
        {"job_name": name, "static_configs": [{"targets": list(addrs)}]}
        for name, addrs in sorted(targets.items())
    ]
    scrape += [dict(job) for job in jobs]
    if self_port is not None:
        scrape.append(
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{host}:{self_port}"]}]}
        )
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": scrape,
    }


@dataclass
class Prometheus:
    """A running Prometheus; `url` is its HTTP API base."""

    port: int
    workdir: Path
    process: Process
    targets: dict[str, list[str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def query(self, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Instant query through the HTTP API; returns the result vector."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=timeout)
        r.raise_for_status()
        body = r.json()
        if body.get("status") != "success":
            raise ComponentError(COMPONENT, f"query {promql!r} failed: {body}", self.process.log)
        return list(body["data"]["result"])

    def wait_for_series(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first non-empty result of `promql`, waited for (bounded)."""
        return wait_until(
            lambda: self.query(promql),
            timeout=timeout,
            component=COMPONENT,
            what=f"returning series for {promql!r}",
            log=self.process.log,
            proc=self.process.popen,
        )

    def set_targets(self, targets: Mapping[str, Sequence[str]], interval: str = "1s") -> None:
        """Rewrites the scrape config and reloads it (needs --web.enable-lifecycle)."""
        self.targets = {k: list(v) for k, v in targets.items()}
        cfg = scrape_config(
            self.targets, interval=interval, self_port=self.port, host=self.host, jobs=self.jobs
        )
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        r = httpx.post(f"{self.url}/-/reload", timeout=10)
        if r.status_code != 200:
            raise ComponentError(COMPONENT, f"config reload failed: {r.text}", self.process.log)

    def stop(self) -> None:
        self.process.stop()


def start_prometheus(
    targets: Mapping[str, Sequence[str]] | None = None,
    *,
    port: int | None = None,
    workdir: Path | None = None,
    interval: str = "1s",
    timeout: float = 60.0,
    host: str = "127.0.0.1",
    jobs: Sequence[Mapping[str, Any]] = (),
) -> Prometheus:
    """Starts Prometheus on `host`:`port` (loopback, or an address of a network the caller's
    stack created, such as the local node's bridge so that pods reach it)."""
    binary = find_binary()
    port = port or free_port()
    require_free_port(COMPONENT, port)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tierserve-prometheus-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = scrape_config(targets or {}, interval=interval, self_port=port, host=host, jobs=jobs)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = logs_dir() / f"prometheus-{port}.log"
    process = start(
        COMPONENT,
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={host}:{port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=2h",
        ],
        log=log,
    )
    prom = Prometheus(
        port=port,
        workdir=workdir,
        process=process,
        targets={k: list(v) for k, v in (targets or {}).items()},
        host=host,
        jobs=[dict(job) for job in jobs],
    )
    try:
        wait_until(
            lambda: httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200,
            timeout=timeout,
            component=COMPONENT,
            what=f"ready on {host}:{port}",
            log=log,
            proc=process.popen,
        )
    except BaseException:
        process.stop()
        raise
    return prom


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tierserve.dev.prometheus --target job=host:port ...` runs one until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--target", action="append", default=[], help="job=host:port")
    args = parser.parse_args(argv)
    targets: dict[str, list[str]] = {}
    for t in args.target:
        job, _, addr = t.partition("=")
        targets.setdefault(job, []).append(addr)
    prom = start_prometheus(targets, port=args.port)
    print(f"prometheus ready at {prom.url} (log: {prom.process.log}); Ctrl-C stops it")
    try:
        while prom.process.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        prom.stop()


if __name__ == "__main__":
    main()
