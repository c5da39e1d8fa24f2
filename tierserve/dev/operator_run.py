"""Runs `tierserve operator` as its own process against a control plane (tests, benchmarks)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import httpx

from tierserve.dev.proc import Process, free_port, logs_dir, start, wait_until


def start_operator(env: Mapping[str, str], namespace: str, resync: float = 1.0) -> Process:
    """Watches one namespace; `env` carries KUBECONFIG. Returns once /healthz answers.

    The process ends with the caller, however the caller ends (`tierserve.dev.proc.start`)."""
    health = free_port()
    log = logs_dir() / f"operator-{namespace}.log"
    argv = [sys.executable, "-m", "tierserve.cli", "operator", "-n", namespace, "--standalone"]
    argv += ["--metrics-port", "0", "--health", f"http://127.0.0.1:{health}/healthz"]
    proc = start("operator", argv, log=log, env={**env, "TIERSERVE_RESYNC_SECONDS": str(resync)})
    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200,
            timeout=60,
            component="operator",
            what="healthy",
            log=log,
            proc=proc.popen,
        )
    except BaseException:
        proc.stop()
        raise
    return proc
