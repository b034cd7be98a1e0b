"""The generated JSON Schema is well-formed and accepts the bundled example (checked by a tiny
validator for the keywords pydantic emits, since the jsonschema package is not a dependency)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from kiln.spec.schema import SCHEMA_DIALECT, json_schema

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shop" / "kiln.yaml"
KNOWN = {"$schema", "$defs", "$ref", "title", "description", "default", "type", "properties",
         "required", "additionalProperties", "patternProperties", "items", "oneOf", "anyOf",
         "enum", "const", "pattern", "minimum", "maximum", "minLength", "exclusiveMinimum",
         "exclusiveMaximum", "discriminator", "minItems"}
TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
    "array": list, "null": type(None)}


def errors(schema: dict[str, Any], node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Every violation of `node` by `value` (subset of draft 2020-12 that pydantic emits)."""
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        return errors(schema, schema["$defs"][name], value, path)
    out: list[str] = []
    if "type" in node:
        kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
        ok = any(isinstance(value, TYPES[k]) and not (k in ("integer", "number")
                                                      and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            return [f"{path}: {value!r} is not {kinds}"]
    if "enum" in node and value not in node["enum"]:
        out.append(f"{path}: {value!r} not in {node['enum']}")
    if "const" in node and value != node["const"]:
        out.append(f"{path}: {value!r} != {node['const']!r}")
    if isinstance(value, str) and "pattern" in node and not re.search(node["pattern"], value):
        out.append(f"{path}: {value!r} !~ {node['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            out.append(f"{path}: {value} < {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            out.append(f"{path}: {value} > {node['maximum']}")
    if isinstance(value, dict):
        props = node.get("properties", {})
        out += [f"{path}.{k}: required" for k in node.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                out += errors(schema, props[key], item, f"{path}.{key}")
                continue
            pattern = next((p for p in node.get("patternProperties", {}) if re.search(p, key)),
                           None)
            if pattern is not None:
                out += errors(schema, node["patternProperties"][pattern], item, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                out.append(f"{path}.{key}: not allowed")
            elif isinstance(node.get("additionalProperties"), dict):
                out += errors(schema, node["additionalProperties"], item, f"{path}.{key}")
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            out += errors(schema, node["items"], item, f"{path}[{i}]")
    for combo in ("oneOf", "anyOf"):
        if combo in node:
            passing = sum(not errors(schema, sub, value, path) for sub in node[combo])
            if passing == 0 or (combo == "oneOf" and passing > 1):
                out.append(f"{path}: {passing} of {combo} match")
    return out


def keywords(node: Any, where: str = "") -> list[str]:
    """Unknown keywords anywhere in the schema (a typo would silently validate nothing)."""
    bad: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in KNOWN:
                bad.append(f"{where}/{key}")
            if key in ("properties", "$defs", "patternProperties"):
                for name, sub in value.items():
                    bad += keywords(sub, f"{where}/{key}/{name}")
            elif key in ("items", "additionalProperties"):
                bad += keywords(value, f"{where}/{key}")
            elif key in ("oneOf", "anyOf"):
                for i, sub in enumerate(value):
                    bad += keywords(sub, f"{where}/{key}/{i}")
    return bad


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def example() -> Any:
    return YAML(typ="safe", pure=True).load(EXAMPLE.read_text())


def test_schema_structure() -> None:
    schema = json_schema()
    json.dumps(schema)  # serialisable
    assert schema["$schema"] == SCHEMA_DIALECT
    assert schema["title"] == "kiln.yaml"
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"project", "platform", "aws", "router", "sandbox",
                                         "router_admin", "images", "services", "prometheus",
                                         "notify"}
    assert schema["required"] == ["project"]
    assert keywords(schema) == []
    for ref in refs(schema):  # every $ref resolves
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref
    steps = schema["$defs"]["CopyStep"]["properties"]
    assert "copy" in steps and "source" not in steps  # YAML keys, not Python names
    http = schema["$defs"]["HttpCheck"]["properties"]["http"]["$ref"].removeprefix("#/$defs/")
    assert "json" in schema["$defs"][http]["properties"]


def test_example_validates_against_schema() -> None:
    assert errors(json_schema(), json_schema(), example()) == []


def test_schema_rejects_what_the_loader_rejects() -> None:
    schema = json_schema()
    broken = example()
    broken["services"]["web"]["replica"] = 3
    broken["images"]["web"]["steps"].append({"rum": "x"})
    broken["services"]["web"]["rollout"]["strategy"] = "yolo"
    found = errors(schema, schema, broken)
    assert ".services.web.replica: not allowed" in found
    assert ".images.web.steps[2]: 0 of oneOf match" in found
    assert any(".services.web.rollout.strategy" in line for line in found)
