"""Certificates and kubeconfigs for the local control plane: a CA, one loopback serving cert, the
admin and controller-manager client certs, the front-proxy pair and the service-account keys.
Made with the openssl CLI (present everywhere, and no extra Python dependency), kept across
restarts so kubeconfigs stay valid.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from pathlib import Path

import yaml

from tierserve.dev.proc import ComponentError


def _openssl(command: str, cwd: Path) -> None:
    """Runs `openssl <command>` in `cwd`; arguments are relative file names without spaces."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise ComponentError("certificates", "the openssl command is not on PATH")
    args = command.split()
    result = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        log = cwd / "openssl.log"
        log.write_text(f"$ openssl {command}\n{result.stdout}{result.stderr}")
        raise ComponentError("certificates", f"openssl {args[0]} failed", log)


def _new_key(pki: Path, name: str) -> None:
    # ECDSA P-256: generated instantly (RSA takes seconds each on a busy 2-core box).
    _openssl(f"genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}.key", pki)


def _sign(pki: Path, name: str, subject: str, extensions: str, ca: str = "ca") -> None:
    _new_key(pki, name)
    (pki / f"{name}.ext").write_text(f"[ext]\n{LEAF_EXTENSIONS}{extensions}\n")
    _openssl(f"req -new -key {name}.key -subj {subject} -out {name}.csr", pki)
    _openssl(
        f"x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -days 825 -sha256"
        f" -set_serial 0x{secrets.token_hex(16)} -extfile {name}.ext -extensions ext"
        f" -out {name}.crt",
        pki,
    )


LEAF_EXTENSIONS = (
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature, keyEncipherment\n"
)
CA_CONFIG = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
"""


PKI_FILES = [
    f"{name}.{ext}"
    for name in (
        "ca",
        "front-proxy-ca",
        "serving",
        "admin",
        "controller-manager",
        "front-proxy-client",
    )
    for ext in ("crt", "key")
] + ["sa.key", "sa.pub"]


def make_pki(pki: Path) -> None:
    """CA, loopback serving cert, client certs and the service-account key pair (idempotent).

    The front-proxy CA is what kube-apiserver publishes for request-header authentication; without
    it the controller manager's delegated authentication logs errors in a loop.
    """
    if all((pki / name).is_file() for name in PKI_FILES):
        return
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    for ca in ("ca", "front-proxy-ca"):
        _new_key(pki, ca)
        (pki / f"{ca}.cnf").write_text(CA_CONFIG.format(cn=f"tierserve-local-{ca}"))
        _openssl(
            f"req -x509 -new -key {ca}.key -config {ca}.cnf -extensions v3_ca -days 3650 -sha256"
            f" -out {ca}.crt",
            pki,
        )
    sans = ",".join(
        ["IP:127.0.0.1", "DNS:localhost", "IP:10.96.0.1", "DNS:kubernetes"]
        + [f"DNS:kubernetes.default{s}" for s in ("", ".svc", ".svc.cluster.local")]
    )
    # One loopback serving cert for both kube-apiserver and kube-controller-manager.
    _sign(pki, "serving", "/CN=tierserve-loopback",
          f"extendedKeyUsage = serverAuth\nsubjectAltName = {sans}")  # fmt: skip
    _sign(pki, "admin", "/O=system:masters/CN=tierserve-admin", "extendedKeyUsage = clientAuth")
    _sign(pki, "controller-manager", "/CN=system:kube-controller-manager",
          "extendedKeyUsage = clientAuth")  # fmt: skip
    client = "extendedKeyUsage = clientAuth"
    _sign(pki, "front-proxy-client", "/CN=front-proxy-client", client, ca="front-proxy-ca")
    _new_key(pki, "sa")
    _openssl("pkey -in sa.key -pubout -out sa.pub", pki)
    for path in pki.iterdir():
        if path.suffix in (".csr", ".ext", ".cnf"):
            path.unlink()


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tierserve-local",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "tierserve-local", "context": {"cluster": "tierserve-local", "user": user}}
        ],
        "current-context": "tierserve-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
