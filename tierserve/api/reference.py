"""Renders the ModelTier reference (Markdown) from the CRD that `tierserve crds` generates.

It reads the CRD's OpenAPI schema, not the pydantic models, so the page documents exactly what
the API server enforces (types, defaults, enums, ranges, CEL rules) and cannot drift from the
CRD: both are written by the same command and `tierserve crds --check` fails when either is
stale. Everything here is a pure function of the CRD object and the example's text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOC_FILE = "docs/reference/modeltier.md"
EXAMPLE = "examples/support-assistant.yaml"


@dataclass(frozen=True)
class Row:
    """One field of an object, as a table row: `path` is the full dotted path from the root."""

    path: str
    name: str
    schema: dict[str, Any]
    required: bool


@dataclass(frozen=True)
class Section:
    """An object users write (or read) as a unit; the page gets one heading and table per one."""

    path: str
    schema: dict[str, Any]
    rows: tuple[Row, ...]
    description: str


def _is_object(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" and "properties" in schema


def _object_of(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema a field opens a section for: itself, or its items for a list."""
    if _is_object(schema):
        return schema
    if schema.get("type") == "array" and _is_object(schema.get("items", {})):
        items: dict[str, Any] = schema["items"]
        return items
    return None


def _child_path(path: str, schema: dict[str, Any]) -> str:
    return f"{path}[]" if schema.get("type") == "array" else path


def sections(path: str, schema: dict[str, Any], description: str = "") -> list[Section]:
    """Depth first, in declaration order, so each object is followed by the objects inside it.

    A list's items carry no description of their own; they get the list field's.
    """
    required = set(schema.get("required", []))
    rows = tuple(
        Row(f"{path}.{name}", name, prop, name in required)
        for name, prop in schema.get("properties", {}).items()
    )
    found = [Section(path, schema, rows, schema.get("description", description))]
    for row in rows:
        inner = _object_of(row.schema)
        if inner is not None:
            child = _child_path(row.path, row.schema)
            found += sections(child, inner, row.schema.get("description", ""))
    return found


def leaves(path: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field that is a value rather than an object with its own section."""
    for section in sections(path, schema):
        for row in section.rows:
            if _object_of(row.schema) is None:
                yield row.path, row.schema


def anchor(path: str) -> str:
    """GitHub's heading slug for a heading that is the path in backticks."""
    return re.sub(r"[^a-z0-9 _-]", "", path.lower()).replace(" ", "-")


def _link(path: str) -> str:
    return f"[`{path}`](#{anchor(path)})"


def value(v: Any) -> str:
    """A value as a user would write it in YAML: strings bare unless empty or on several lines
    (quoted, with \\n, as one table cell must be one line), the rest as JSON."""
    if isinstance(v, str) and v and "\n" not in v:
        return f"`{v}`"
    return f"`{json.dumps(v, separators=(', ', ': '))}`"


def type_name(row: Row) -> str:
    schema = row.schema
    kind = schema.get("type", "any")
    if _is_object(schema):
        return f"object, see {_link(row.path)}"
    if kind == "array":
        items = schema.get("items", {})
        if _is_object(items):
            return f"list of objects, see {_link(row.path + '[]')}"
        return f"list of {items.get('type', 'any')}"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (any fields)"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of string to {schema['additionalProperties'].get('type', 'any')}"
    return str(kind)


def _bounds(schema: dict[str, Any], low: str, high: str, unit: str) -> str | None:
    lo, hi = schema.get(low), schema.get(high)
    if lo is None and hi is None:
        return None
    lo_op = "<" if schema.get("exclusiveMinimum") is True and low == "minimum" else "≤"
    hi_op = "<" if schema.get("exclusiveMaximum") is True and high == "maximum" else "≤"
    if lo is not None and hi is not None:
        return f"{json.dumps(lo)} {lo_op} {unit} {hi_op} {json.dumps(hi)}"
    if lo is not None:
        return f"{unit} {'>' if lo_op == '<' else '≥'} {json.dumps(lo)}"
    return f"{unit} {hi_op} {json.dumps(hi)}"


def constraints(schema: dict[str, Any]) -> list[str]:
    """What the API server refuses, in words: enums, ranges, lengths, patterns, list keys."""
    out = []
    if "enum" in schema:
        out.append("one of " + ", ".join(value(v) for v in schema["enum"]))
    for low, high, unit in (
        ("minimum", "maximum", "x"),
        ("minLength", "maxLength", "length"),
        ("minItems", "maxItems", "items"),
        ("minProperties", "maxProperties", "entries"),
    ):
        text = _bounds(schema, low, high, unit)
        if text:
            out.append(text)
    if "pattern" in schema:
        out.append(f"matches `{schema['pattern']}`")
    items = schema.get("items", {})
    if items and not _is_object(items):
        out += [f"each item: {rule}" for rule in constraints(items)]
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(f"`{k}`" for k in schema.get("x-kubernetes-list-map-keys", []))
        out.append(f"unique by {keys}")
    return out


def default_text(schema: dict[str, Any]) -> str:
    if "default" not in schema:
        return ""
    default = schema["default"]
    if isinstance(default, dict) and default and _is_object(schema):
        return "all fields at their defaults"
    return value(default)


def _cell(text: str) -> str:
    """Table cells are one line, and `|` ends a cell even inside code spans unless escaped."""
    return " ".join(text.split()).replace("|", "\\|") or "—"


def _table(rows: tuple[Row, ...]) -> list[str]:
    lines = [
        "| Field | Type | Default | Allowed values | Required | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = [
            f"`{row.path}`",
            type_name(row),
            default_text(row.schema),
            "; ".join(constraints(row.schema)),
            "**required**" if row.required else "optional",
            row.schema.get("description", ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _resolve_field_path(section: str, field_path: str) -> str:
    return section + field_path if field_path.startswith(".") else f"{section}.{field_path}"


def _rules(section: Section) -> list[str]:
    rules = section.schema.get("x-kubernetes-validations", [])
    if not rules:
        return []
    lines = [
        "Validation rules (CEL, checked by the API server when the object is written):",
        "",
        "| Message | Reported on | Rule |",
        "| --- | --- | --- |",
    ]
    for rule in rules:
        on = _resolve_field_path(section.path, rule.get("fieldPath", ""))
        cells = [rule["message"], f"`{on}`", f"`{rule['rule']}`"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return [*lines, ""]


def _section(section: Section, level: int) -> list[str]:
    lines = ["#" * level + f" `{section.path}`", ""]
    if section.description:
        lines += [" ".join(section.description.split()), ""]
    return [*lines, *_rules(section), *_table(section.rows), ""]


def _printer_columns(version: dict[str, Any]) -> list[str]:
    columns = version.get("additionalPrinterColumns", [])
    if not columns:
        return []
    lines = [
        "`kubectl get modeltiers` shows:",
        "",
        "| Column | From |",
        "| --- | --- |",
    ]
    lines += [f"| {c['name']} | `{c['jsonPath']}` |" for c in columns]
    return [*lines, ""]


def render_markdown(crd: dict[str, Any], example: str, example_path: str) -> str:
    """The whole page: intro, the example, a contents list, then spec and status, object by object.

    `example` is a ModelTier manifest's text, shown verbatim so the page opens with something a
    reader can copy; `example_path` says where it lives in the repository.
    """
    spec = crd["spec"]
    names = spec["names"]
    version = spec["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    api_version = f"{spec['group']}/{version['name']}"
    groups = [(p, sections(p, root["properties"][p])) for p in ("spec", "status")]
    short = ", ".join(f"`{n}`" for n in names.get("shortNames", []))
    lines = [
        f"# {names['kind']} reference",
        "",
        f"<!-- Generated by `tierserve crds --docs {DOC_FILE}` from tierserve/api/v1alpha1.py."
        " Do not edit; run `make crds`. -->",
        "",
        f"`{names['kind']}` (`{api_version}`, {spec['scope'].lower()}; plural "
        f"`{names['plural']}`, short name {short}): {' '.join(root['description'].split())}",
        "",
        "This page is generated from the same OpenAPI schema as the CRD "
        f"(`crds/{crd['metadata']['name']}.yaml`), so the two always agree. The API server "
        "fills in the defaults and refuses, at `kubectl apply`, a ModelTier whose fields have "
        "the wrong type or lie outside the allowed values, naming the field; the validation "
        "rules' messages below are what it prints. Fields are listed per object, in the order "
        "they are declared; paths use `[]` for the items of a list. `kubectl explain "
        f"{names['singular']}.spec` shows the same descriptions from a cluster.",
        "",
        "The operator alone writes `status`; it is documented here for readers of "
        "`kubectl get -o yaml`, dashboards and health checks.",
        "",
        *_printer_columns(version),
        "## Example",
        "",
        f"From [`{example_path}`](../../{example_path}):",
        "",
        "```yaml",
        example.rstrip("\n"),
        "```",
        "",
        "## Contents",
        "",
    ]
    for _, group in groups:
        for section in group:
            depth = section.path.count(".")
            lines.append("  " * depth + f"- {_link(section.path)}")
    lines.append("")
    for _, group in groups:
        for i, section in enumerate(group):
            lines += _section(section, 2 if i == 0 else 3)
    return "\n".join(lines).rstrip("\n") + "\n"


def render(crd: dict[str, Any], root: Path) -> str:
    """The page for a checkout at `root`, whose example file it shows."""
    return render_markdown(crd, (root / EXAMPLE).read_text(), EXAMPLE)
