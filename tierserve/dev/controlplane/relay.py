"""A TCP relay: `python -m tierserve.dev.controlplane.relay LISTEN_IP:PORT TARGET_IP:PORT`.

The local API server listens on 127.0.0.1 only, which pods cannot reach. The node runs this
relay on the bridge address (10.244.0.1, the node IP) so in-cluster clients (the Ray autoscaler
KubeRay adds to a head pod, anything using KUBERNETES_SERVICE_HOST) reach it through the
`kubernetes` Service: kube-proxy DNATs 10.96.0.1:443 to the EndpointSlice node.py writes, which
names this relay. TLS passes through untouched (the serving certificate already covers
10.96.0.1 and kubernetes.default.svc). Never bound to 0.0.0.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, listen[0], listen[1], reuse_address=True)
    print(f"relaying {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    listen, target = _addr(args[0]), _addr(args[1])
    if listen[0] in ("", "0.0.0.0", "::"):
        print("refusing to listen on every address", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(listen, target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
