"""The `tierserve` command line: one entry point that delegates to each concern's own `main`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with main(argv), one-line help). Imports are lazy so that `tierserve
# controlplane down` does not pay for importing Ray or vLLM.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "tierserve.dev.demo",
        "the whole product locally: control plane, operator, Prometheus, Ray, a ModelTier",
    ),
    "up": ("tierserve.dev.local", "serve two generated tiny models locally on Ray (no Kubernetes)"),
    "controlplane": (
        "tierserve.dev.controlplane.cli",
        "build/start/stop the local Kubernetes control plane (up | down | status | build)",
    ),
    "calibrate": (
        "tierserve.tools.calibrate",
        "train the upfront prompt scorer and choose its threshold from labelled data; "
        "`calibrate cascade`: compare the lower tier's confidence metrics and write the "
        "cascade rank reference",
    ),
    "crds": ("tierserve.api.crd", "generate the ModelTier CRD YAML from the pydantic models"),
    "operator": (
        "tierserve.controller.main",
        "run the Kopf operator (health and metrics endpoints)",
    ),
    "plan": ("tierserve.cost", "cost per request of a routing share vs an all-top-tier fleet"),
    "simulate": (
        "tierserve.tools.simulate.cli",
        "replay a request trace through the tiers with the adaptive threshold policy",
    ),
    "render": (
        "tierserve.build.render",
        "print what the operator would create for a ModelTier file",
    ),
    "models": ("tierserve.dev.tinymodels", "generate (or reuse) the tiny test models"),
}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="tierserve",
        description="Tiered LLM serving: cheap models first, frontier when it matters.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not args or args[0] not in COMMANDS:
        parser.parse_args(args or ["--help"])
        return
    module = importlib.import_module(COMMANDS[args[0]][0])
    sys.exit(module.main(args[1:]))


if __name__ == "__main__":
    main()
