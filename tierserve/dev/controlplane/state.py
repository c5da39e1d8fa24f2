"""What a running control plane is, as the state file records it: ports, pids, kubeconfig. `down`
and `status` read it from any process, so the processes `up` started can be found and stopped."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tierserve.dev.proc import cache_dir, free_port

STATE_FILE = "controlplane.json"
# Stop order: dependents first, etcd last.
COMPONENTS = ("kuberay-operator", "kube-controller-manager", "kube-apiserver", "etcd")


@dataclass
class Ports:
    """Loopback ports. Fixed defaults for the CLI (a stable kubeconfig); `free()` for tests."""

    etcd_client: int = 18379
    etcd_peer: int = 18380
    apiserver: int = 18443
    controller_manager: int = 18257
    kuberay_metrics: int = 18080
    kuberay_probe: int = 18082

    @classmethod
    def free(cls) -> Ports:
        picked: set[int] = set()
        values = []
        for _ in range(6):
            port = free_port()
            while port in picked:
                port = free_port()
            picked.add(port)
            values.append(port)
        return cls(*values)


@dataclass
class ControlPlaneInfo:
    """What a client needs; also the JSON state file `down`/`status` read from another process."""

    state_dir: Path
    kubeconfig: Path
    server_url: str
    bin_dir: Path
    ca_file: Path
    ports: Ports
    pids: dict[str, int] = field(default_factory=dict)
    start_times: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    kubernetes_version: str = ""

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def save(self) -> None:
        data = asdict(self)
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> ControlPlaneInfo | None:
        path = Path(state_dir) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        for key in ("state_dir", "kubeconfig", "bin_dir", "ca_file"):
            data[key] = Path(data[key])
        data["ports"] = Ports(**data["ports"])
        return cls(**data)


def default_state_dir() -> Path:
    return cache_dir() / "controlplane"
