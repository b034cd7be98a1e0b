"""The --json schemas forbid unknown fields: a field the code adds must be documented first."""

from __future__ import annotations

import json
from typing import Any

import pytest

from json_contract import SCHEMAS


def _objects(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((where, node))
        for key, value in node.items():
            found += _objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _objects(value, f"{where}/{i}")
    return found


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.schema.json")), ids=lambda p: p.name)
def test_every_object_in_a_schema_forbids_unknown_fields(path: Any) -> None:
    objects = _objects(json.loads(path.read_text()), "")
    assert objects
    loose = [where or "(root)" for where, obj in objects if obj.get("additionalProperties") is not False]
    assert not loose, f"{path.name}: objects that allow unknown fields: {loose}"
