"""The ModelTier API models and the CRD generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tierserve.api import crd
from tierserve.api.v1alpha1 import ModelTier

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_is_what_generation_produces() -> None:
    committed = (ROOT / "crds" / crd.CRD_FILE).read_text()
    assert committed == crd.render_yaml(), "crds/ is stale: run `tierserve crds`"


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=str)
def test_examples_parse(example: Path) -> None:
    mt = ModelTier.model_validate(yaml.safe_load(example.read_text()))
    assert len(mt.spec.tiers) >= 2


def test_schema_is_structural_and_teaches_the_api() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text and "title" not in text
    tier = schema["properties"]["spec"]["properties"]["tiers"]["items"]
    assert tier["properties"]["gpusPerReplica"]["description"]
    assert tier["properties"]["gpusPerReplica"]["minimum"] == 0
    mode = schema["properties"]["spec"]["properties"]["routing"]["properties"]["mode"]
    assert mode["enum"] == ["none", "upfront", "cascade", "hybrid"]
    assert mode["default"] == "cascade"
    engine_args = tier["properties"]["engineArgs"]
    assert engine_args.get("x-kubernetes-preserve-unknown-fields") is True


def test_unknown_fields_are_refused_not_dropped() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "support-assistant.yaml").read_text())
    doc["spec"]["tiers"][0]["gpuPerReplica"] = 2  # typo
    with pytest.raises(ValidationError, match="gpuPerReplica"):
        ModelTier.model_validate(doc)
