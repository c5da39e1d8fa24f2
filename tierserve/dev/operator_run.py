"""Runs `tierserve operator` as its own process against a control plane (tests, benchmarks)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from tierserve.dev.proc import Process, free_port, logs_dir, start, wait_until


def start_operator(
    env: Mapping[str, str],
    namespace: str | None,
    resync: float = 1.0,
    *,
    log: Path | None = None,
    bind: bool = True,
) -> Process:
    """Watches one namespace (all with None); `env` carries KUBECONFIG. Returns once /healthz
    answers.

    With `bind` (the default) the process ends with the caller, however the caller ends
    (`tierserve.dev.proc.start`); without it, it outlives the caller (a detached dev stack)."""
    health = free_port()
    log = log or logs_dir() / f"operator-{namespace or 'all-namespaces'}.log"
    argv = [sys.executable, "-m", "tierserve.cli", "operator", "--standalone"]
    argv += ["-n", namespace] if namespace else ["--all-namespaces"]
    argv += ["--metrics-port", "0", "--health", f"http://127.0.0.1:{health}/healthz"]
    env = {**env, "TIERSERVE_RESYNC_SECONDS": str(resync)}
    proc = start("operator", argv, log=log, env=env, bind=bind)
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
