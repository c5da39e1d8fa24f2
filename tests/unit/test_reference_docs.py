"""The generated ModelTier reference says what the CRD enforces, and the checked-in copy is fresh.

The schema is walked here independently of tierserve/api/reference.py, so a field the generator
forgot to visit fails the test instead of silently missing from the page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierserve.api import crd, reference
from tierserve.api.v1alpha1 import ConditionReason, ConditionType, ModelTier

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / reference.DOC_FILE
SCHEMA = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
TEXT = reference.render(crd.crd(), ROOT)


def _walk(path: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field under `path`, objects and leaves alike, `[]` marking a list's items."""
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}.{name}", prop
        items = prop.get("items", {})
        if "properties" in prop:
            yield from _walk(f"{path}.{name}", prop)
        elif "properties" in items:
            yield from _walk(f"{path}.{name}[]", items)


FIELDS = dict(
    field for part in ("spec", "status") for field in _walk(part, SCHEMA["properties"][part])
)
LEAVES = {
    path: schema
    for path, schema in FIELDS.items()
    if "properties" not in schema and "properties" not in schema.get("items", {})
}


def _row(path: str) -> list[str]:
    """The table cells of a field's row; a `\\|` inside a cell is part of it, not a separator."""
    lines = [line for line in TEXT.splitlines() if line.startswith(f"| `{path}` |")]
    assert len(lines) == 1, f"{path} should have exactly one row, has {len(lines)}"
    return [c.strip() for c in re.split(r"(?<!\\)\|", lines[0])[1:-1]]


def test_checked_in_reference_is_what_generation_produces() -> None:
    fix = "tierserve crds --out crds --out charts/tierserve/crds --docs " + reference.DOC_FILE
    assert DOC.read_text() == TEXT, f"{reference.DOC_FILE} is stale: run `{fix}` (or make crds)"


def test_the_walk_sees_the_fields_users_write() -> None:
    assert "spec.routing.escalation.autoscale.maxStep" in LEAVES
    assert "spec.tiers[].replicas.min" in LEAVES
    assert "status.conditions[].reason" in LEAVES
    assert len(LEAVES) > 40


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_every_leaf_field_has_a_row_with_its_type_default_and_description(path: str) -> None:
    schema = LEAVES[path]
    cells = _row(path)
    assert len(cells) == 6, cells
    _, type_, default, _, required, description = cells
    if isinstance(schema.get("additionalProperties"), dict):
        assert type_ == f"map of string to {schema['additionalProperties']['type']}"
    elif schema["type"] == "array":
        assert type_ == f"list of {schema['items']['type']}"
    else:
        assert type_.startswith(schema["type"])
    if "default" in schema:
        d = schema["default"]
        bare = isinstance(d, str) and d and "\n" not in d
        shown = d if bare else json.dumps(d, separators=(", ", ": "))
        assert default == f"`{shown}`"
    else:
        assert default == "—"
    if schema.get("description"):
        assert description == " ".join(schema["description"].split())
    assert required in ("**required**", "optional")


def test_object_fields_link_to_their_own_section() -> None:
    for path, schema in FIELDS.items():
        if path in LEAVES:
            continue
        target = path + ("[]" if schema.get("type") == "array" else "")
        assert f"(#{reference.anchor(target)})" in " ".join(_row(path)), path
        assert f"`{target}`\n" in TEXT, f"no section for {target}"


def test_required_fields_are_marked_required() -> None:
    assert _row("spec.tiers")[4] == "**required**"
    assert _row("spec.ray")[4] == "**required**"
    assert _row("spec.routing.escalation.autoscale.prometheusURL")[4] == "**required**"
    assert _row("spec.routing.escalation.autoscale.maxStep")[4] == "optional"


def test_enum_values_and_ranges_are_listed() -> None:
    for path, schema in LEAVES.items():
        for option in schema.get("enum", []):
            assert f"`{option}`" in _row(path)[3], (path, option)
    assert _row("spec.routing.mode")[3] == "one of `none`, `upfront`, `cascade`, `hybrid`"
    assert _row("spec.routing.escalation.autoscale.maxStep")[3] == "0.0 ≤ x ≤ 1.0"
    assert _row("spec.tiers[].cpusPerReplica")[3] == "0 < x ≤ 256"
    assert "1 ≤ items ≤ 8" in _row("spec.tiers")[3]
    assert "unique by `name`" in _row("spec.tiers")[3]


def test_a_pattern_with_a_pipe_stays_in_its_cell() -> None:
    cells = _row("spec.routing.escalation.autoscale.interval")
    assert cells[3] == r"matches `^([0-9]+(\.[0-9]+)?(ms\|s\|m\|h))+$`"


def _rules(schema: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield from schema.get("x-kubernetes-validations", [])
    for prop in schema.get("properties", {}).values():
        yield from _rules(prop)
    if "items" in schema:
        yield from _rules(schema["items"])


def test_every_cel_rule_appears_with_its_message_and_field() -> None:
    rules = list(_rules(SCHEMA))
    assert len(rules) >= 7
    for rule in rules:
        assert rule["message"] in TEXT
        escaped = rule["rule"].replace("|", "\\|")
        assert f"`{escaped}`" in TEXT
    line = next(line for line in TEXT.splitlines() if "tier names must be unique" in line)
    assert "`spec.tiers`" in line
    line = next(line for line in TEXT.splitlines() if "image is required when backend" in line)
    assert "`spec.ray.image`" in line


def test_contents_links_resolve_to_headings() -> None:
    headings = {
        reference.anchor(m.group(1))
        for m in re.finditer(r"^#+ `([^`]+)`$", TEXT, flags=re.MULTILINE)
    }
    links = re.findall(r"\]\(#([^)]+)\)", TEXT)
    assert links and set(links) <= headings


def test_the_example_is_a_valid_modeltier() -> None:
    block = TEXT.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block == (ROOT / reference.EXAMPLE).read_text()
    ModelTier.model_validate(yaml.safe_load(block))


def test_crds_check_fails_when_the_reference_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "docs" / "modeltier.md"
    args = ["--out", str(tmp_path / "crds"), "--docs", str(doc)]
    crd.main(args)
    assert doc.read_text() == TEXT
    crd.main([*args, "--check"])
    doc.write_text(TEXT.replace("maxStep", "maxstep"))
    with pytest.raises(SystemExit) as exit_:
        crd.main([*args, "--check"])
    assert exit_.value.code == 1
    assert str(doc) in capsys.readouterr().err


# docs/operations.md is prose, but the names in it are facts the code owns: check them.
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
CHART = ROOT / "charts" / "tierserve"


def test_operations_guide_names_only_documented_metrics() -> None:
    listed = set(
        re.findall(r"`((?:ray_)?tierserve_\w+)", (ROOT / "docs" / "metrics.md").read_text())
    )
    used = set(re.findall(r"\b((?:ray_)?tierserve_[a-z_]+)", OPERATIONS))
    used = {name for name in used if not name.endswith("_")}  # `tierserve_operator_*` families
    assert used and used <= listed, f"not in docs/metrics.md: {used - listed}"


def test_operations_guide_has_a_runbook_section_per_alert() -> None:
    alerts = re.findall(
        r"- alert: (\w+)", (CHART / "templates" / "prometheusrule.yaml").read_text()
    )
    assert len(alerts) >= 6
    for alert in alerts:
        assert f"\n### {alert}\n" in OPERATIONS, alert


def test_operations_guide_lists_every_dashboard_panel() -> None:
    dashboard = json.loads((CHART / "dashboards" / "tierserve.json").read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(titles) > 10
    for title in titles:
        assert title in OPERATIONS, title


@pytest.mark.parametrize("reason", list(ConditionReason), ids=str)
def test_operations_guide_explains_every_condition_reason(reason: ConditionReason) -> None:
    assert f"`{reason}`" in OPERATIONS


def test_operations_guide_names_only_real_condition_types_and_reasons() -> None:
    section = OPERATIONS.split("## Status conditions and events", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| (?:True|False) \| `(\w+)` \|", section, re.MULTILINE)
    assert len(rows) >= len(ConditionReason)
    for type_, reason in rows:
        assert type_ in set(ConditionType), type_
        assert reason in set(ConditionReason), reason
