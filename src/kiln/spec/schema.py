"""JSON Schema of kiln.yaml, generated from the models so editors and kiln never disagree."""

from __future__ import annotations

from typing import Any

from kiln.spec.models import Spec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The schema by YAML key (aliases such as `copy` and `json`), ready for `kiln schema`."""
    body = Spec.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        **{k: v for k, v in body.items() if k != "title"},
        "title": "kiln.yaml",
        "description": "kiln project spec (v1): images to bake and services to roll out.",
    }
