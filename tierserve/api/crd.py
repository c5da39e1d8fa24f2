"""Generates the ModelTier CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: no $ref, no anyOf for optional fields, no
titles, OpenAPI-3.0 style exclusive bounds. Pydantic emits JSON Schema 2020-12, so this module
translates; everything the API server enforces (types, enums, ranges, defaults, CEL rules)
still comes from the models.
"""

from __future__ import annotations

import copy
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from tierserve.api import v1alpha1 as api

DROP = {"title", "$defs"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    if "anyOf" in node:  # Optional[X]: X, absent when unset
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            rest.pop("default")
        return _resolve({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP:
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        else:
            out[key] = _resolve(value, defs)
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out["minimum" if bound == "exclusiveMinimum" else "maximum"] = out[bound]
            out[bound] = True
    if out.get("additionalProperties") is False:  # not structural; kubectl refuses unknown fields
        out.pop("additionalProperties")
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out.setdefault("type", "object")
    elif out.get("additionalProperties") is True:
        out.pop("additionalProperties")
        out["x-kubernetes-preserve-unknown-fields"] = True
    order = ("type", "description")
    return {k: out[k] for k in order if k in out} | {k: v for k, v in out.items() if k not in order}


def _model_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Object fields built by a default factory get that object, fully defaulted, as `default`.

    The API server then fills nested defaults in, and validates the default against the CEL
    rules, so it must be the complete object rather than `{}`.
    """
    for name, info in model.model_fields.items():
        prop = schema.get("properties", {}).get(info.alias or name)
        if prop is None:
            continue
        nested = _model_type(info.annotation)
        if nested is None:
            continue
        target = prop["items"] if prop.get("type") == "array" else prop
        _model_defaults(nested, target)
        built_by_factory = id(info.default_factory) == id(nested)
        if prop.get("type") == "object" and built_by_factory:
            prop["default"] = nested().model_dump(by_alias=True, mode="json", exclude_none=True)


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in `X`, `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    _model_defaults(model, schema)
    return schema


def _list_map(schema: dict[str, Any], key: str) -> None:
    schema["x-kubernetes-list-type"] = "map"
    schema["x-kubernetes-list-map-keys"] = [key]


def crd() -> dict[str, Any]:
    spec = openapi_schema(api.ModelTierSpec)
    spec["description"] = "A ladder of model tiers, cheapest first, and the router in front."
    _list_map(spec["properties"]["tiers"], "name")
    status = openapi_schema(api.ModelTierStatus)
    status["description"] = "Observed state, written only by the operator."
    _list_map(status["properties"]["conditions"], "type")
    _list_map(status["properties"]["tiers"], "name")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["all", "tierserve"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _column("Tiers", "string", ".status.tierNames"),
                        _column("Mode", "string", ".spec.routing.mode"),
                        _column("Threshold", "number", ".status.escalation.threshold"),
                        _column("Ready", "string", ".status.ready"),
                        _column("Age", "date", ".metadata.creationTimestamp"),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": api.ModelTier.__doc__,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


def _column(name: str, type_: str, path: str) -> dict[str, str]:
    return {"name": name, "type": type_, "jsonPath": path}


HEADER = "# Generated by `tierserve crds` from tierserve/api/v1alpha1.py. Do not edit.\n"


def render_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)


CRD_FILE = "modeltiers.tierserve.io.yaml"


def main(argv: list[str] | None = None) -> None:
    """`tierserve crds [--out DIR ...] [--docs FILE] [--check]`: write the CRD (and the ModelTier
    reference), or fail if a file is stale. An --out that is a Helm chart's crds/ directory
    also gets the chart's values.schema.json, generated from tierserve.api.chart."""
    import argparse
    import sys
    from pathlib import Path

    from tierserve.api import chart, reference

    parser = argparse.ArgumentParser(prog="tierserve crds", description=main.__doc__)
    parser.add_argument("--out", action="append", help="directory (repeatable); default crds/")
    parser.add_argument("--docs", help=f"also the Markdown reference, e.g. {reference.DOC_FILE}")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    args = parser.parse_args(argv)
    text = render_yaml()
    files = {Path(out) / CRD_FILE: text for out in args.out or ["crds"]}
    for out in args.out or []:
        if (Path(out).parent / "Chart.yaml").is_file():
            files[Path(out).parent / chart.SCHEMA_FILE] = chart.render_json()
    if args.docs:
        files[Path(args.docs)] = reference.render(crd(), Path(__file__).resolve().parents[2])
    stale = []
    for path, content in files.items():
        if args.check:
            if not path.exists() or path.read_text() != content:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            print(f"wrote {path}")
    if stale:
        print(f"stale generated file: {', '.join(stale)}; run `make crds`", file=sys.stderr)
        sys.exit(1)
