"""`tierserve controlplane` / `python -m tierserve.dev.controlplane build|up|down|status`.

`up` leaves the processes running (detached: the one caller of `up` whose processes outlive it)
and prints ``export KUBECONFIG=...`` on stdout (progress goes to stderr, so `eval "$(... up)"`
works); `down` stops them from any process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tierserve.dev.controlplane.build import (
    ensure_binaries,
    ensure_helm,
    ensure_kuberay_operator,
    say,
)
from tierserve.dev.controlplane.cluster import down, status, up
from tierserve.dev.controlplane.kuberay import kuberay_crds, kuberay_crds_apply
from tierserve.dev.controlplane.state import ControlPlaneInfo, default_state_dir
from tierserve.dev.proc import ComponentError


def _usage_lines(info: ControlPlaneInfo) -> list[str]:
    return [
        f"export KUBECONFIG={info.kubeconfig}",
        f'export PATH="{info.bin_dir}:$PATH"',
        f"# kubectl (Kubernetes {info.kubernetes_version}): {info.kubectl} get namespaces",
        "# no kubelet or scheduler: pods stay Pending; CRDs, RBAC, GC and namespaces all work",
        "# stop it with: python -m tierserve.dev.controlplane down",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tierserve.dev.controlplane",
        description="Local Kubernetes control plane from real upstream binaries.",
    )
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"default: {default_state_dir()}")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find cached) binaries")
    build.add_argument("--kuberay", action="store_true", help="also build the KubeRay operator")
    build.add_argument("--no-helm", action="store_true")
    start_cmd = sub.add_parser("up", help="start (detached) and print export KUBECONFIG=...")
    start_cmd.add_argument(
        "--kuberay", action="store_true", help="also install the KubeRay CRDs and run its operator"
    )
    start_cmd.add_argument("--crds", action="store_true", help="install the KubeRay CRDs")
    sub.add_parser("down", help="stop it")
    sub.add_parser("status", help="show processes, memory and readiness")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            say(f"k8s binaries: {ensure_binaries()}")
            if not args.no_helm:
                say(f"helm: {ensure_helm()}")
            say(f"KubeRay CRDs: {kuberay_crds()[0].parent}")
            if args.kuberay:
                operator = ensure_kuberay_operator()
                if operator is None:
                    return 1
                say(f"KubeRay operator: {operator}")
        elif args.command == "up":
            info = up(args.state_dir, kuberay=args.kuberay, detach=True)
            if args.crds and not args.kuberay:
                kuberay_crds_apply(info)
            print("\n".join(_usage_lines(info)))
        elif args.command == "down":
            stopped = down(args.state_dir)
            say("==> control plane stopped" if stopped else "==> no control plane was running")
        else:
            ready, lines = status(args.state_dir)
            print("\n".join(lines))
            return 0 if ready else 3
    except ComponentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
