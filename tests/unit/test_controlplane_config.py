"""How the control plane's binaries are pinned and cached, without starting anything."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tierserve.dev import controlplane

pytestmark = pytest.mark.unit


def test_versions_come_from_the_pinned_go_modules() -> None:
    assert controlplane.kube_build().version().startswith("v1.")
    assert controlplane.helm_build().version().startswith("v3.")
    assert controlplane.kuberay_version() == "v1.6.1"
    assert f"gitVersion={controlplane.kube_build().version()}" in controlplane.build._kube_ldflags()


def test_cache_dir_changes_when_the_pins_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERSERVE_CACHE", str(tmp_path / "cache"))
    spec = controlplane.helm_build()
    copy = tmp_path / "helm"
    shutil.copytree(spec.module_dir, copy)
    moved = dataclasses.replace(spec, module_dir=copy)
    before = moved.bin_dir()
    assert before == spec.bin_dir(), "same pins, same cache dir"
    assert before.parent.name.startswith(spec.version() + "-")
    with open(copy / "go.sum", "a") as fh:
        fh.write("example.com/x v1.0.0 h1:AAAA=\n")
    assert moved.bin_dir() != before
    assert not moved.built()


def test_down_and_status_without_a_control_plane(tmp_path: Path) -> None:
    assert controlplane.down(tmp_path) is False
    ready, lines = controlplane.status(tmp_path)
    assert not ready and "no control plane" in lines[0]


def test_free_ports_are_distinct() -> None:
    ports = controlplane.Ports.free()
    values = list(ports.__dict__.values())
    assert len(set(values)) == len(values)
