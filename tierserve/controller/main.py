"""`tierserve operator`: runs the Kopf operator with health and metrics endpoints."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

import kopf


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierserve operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[], help="watch (repeat)")
    parser.add_argument("--all-namespaces", action="store_true", help="cluster-wide")
    parser.add_argument("--metrics-port", type=int, default=8080, help="0 disables /metrics")
    parser.add_argument("--metrics-addr", default="0.0.0.0")
    parser.add_argument("--health", default="http://0.0.0.0:8081/healthz", help="liveness URL")
    parser.add_argument("--standalone", action="store_true", help="no peering (single replica)")
    parser.add_argument("--peering", default=None, help="Kopf peering name (several replicas)")
    parser.add_argument("--priority", type=int, default=0, help="peering priority; highest works")
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser.error("give --namespace NS (repeatable) or --all-namespaces")
    os.environ["TIERSERVE_OPERATOR_METRICS_PORT"] = str(args.metrics_port)
    os.environ["TIERSERVE_OPERATOR_METRICS_ADDR"] = args.metrics_addr

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Importing it registers the handlers (the reconcile, its timer, deletion) with Kopf.
    import tierserve.controller.handlers  # noqa: F401

    asyncio.run(
        kopf.operator(
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            liveness_endpoint=args.health,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=args.priority,
        )
    )
