"""The libyaml-based loader: YAML 1.2 typing as ruamel gave it, size/node caps, positions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from kiln.errors import SpecError
from kiln.spec import loader, yaml_syntax
from kiln.spec.loader import load_spec
from kiln.spec.yaml_tree import FALLBACK, NodeTree, compose, fast_plain

SCALARS = ["yes", "no", "on", "off", "y", "true", "False", "TRUE", "null", "~", "", "Null", "1",
           "-1", "+1", "017", "0o17", "0x1F", "0b101", "1_000", "1.5", "1e3", "1.0e+3", ".5",
           "-.inf", ".NaN", "1:30", "127.0.0.1:8080", "2024-01-01", "0.1.2", "'3'", '"x"', "abc",
           "1e400", "0", "-0", "3.", "-3.e2", "=", "<<x", "[1, x]", "{a: 1}"]


def _norm(value: Any) -> Any:
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    if isinstance(value, int):
        return ("int", int(value))
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return ("str", value.isoformat())
    return ("str", str(value))


@pytest.mark.parametrize("scalar", SCALARS)
def test_values_typed_like_ruamel_yaml_1_2(scalar: str) -> None:
    text = f"k: {scalar}\n"
    expected = YAML(typ="rt").load(text)["k"]
    root = compose(text)
    assert root is not None
    assert _norm(NodeTree(root, 1000).plain()["k"]) == _norm(expected)
    fast = fast_plain(text, 1000)
    assert fast is not FALLBACK
    assert _norm(fast["k"]) == _norm(expected)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shop" / "kiln.yaml"
ANCHORS = "a: &x {p: 1, q: [1, 2, &y three]}\nb: *x\nc: [*y, *x]\nd: !!str 5\ne: ''\n"


@pytest.mark.parametrize("text", [EXAMPLE.read_text(), ANCHORS], ids=["example", "anchors"])
def test_fast_path_gives_what_the_node_tree_gives(text: str) -> None:
    root = compose(text)
    assert root is not None
    assert fast_plain(text, 1000) == NodeTree(root, 1000).plain()


@pytest.mark.parametrize("text", [
    "a: 1\na: 2\n", "a: !foo 1\n", "<<: {a: 1}\nb: 2\n", "1: x\n", "- a\n", "x\n", "",
    "a: &r [*r]\n", "a: 1\n---\nb: 2\n", "a: [\n", "a: 0b_\n",
    "a: " + "[" * 70 + "]" * 70 + "\n",
    "a: &a [1, 1, 1, 1]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n",
], ids=["duplicate", "tag", "merge", "int key", "list", "scalar", "empty", "recursive",
        "two documents", "syntax", "bad int", "deep", "bomb"])
def test_fast_path_leaves_odd_files_to_the_node_tree(text: str) -> None:
    assert fast_plain(text, 50) is FALLBACK


def test_merge_keys_lose_to_explicit_ones_and_earlier_merges_win() -> None:
    root = compose("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  x: 3\n")
    assert root is not None
    assert NodeTree(root, 1000).plain()["c"] == {"x": 3, "y": 1, "z": 2}


def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("kiln.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(Path("kiln.yaml"))
    return info.value.problems


def test_file_size_cap_is_checked_before_parsing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 1024 * 1024)
    text = "project: shop\n" + "# padding\n" * 120_000
    assert write(tmp_path, monkeypatch, text) == [
        "kiln.yaml: too large (over 1 MiB); a kiln.yaml is expected to be well under that"]


def test_node_cap_is_checked_before_composing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_NODES", 1000)
    calls: list[str] = []
    monkeypatch.setattr(loader, "compose", lambda text: calls.append(text))
    text = "project: shop\nimages:\n" + "".join(f"  k{i}: v\n" for i in range(600))
    assert write(tmp_path, monkeypatch, text) == [
        "kiln.yaml:1:1: too many YAML nodes (more than 1000); a kiln.yaml is expected to be far "
        "smaller"]
    assert calls == []


def test_nodes_under_the_cap_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_NODES", 1000)
    text = "project: shop\nimages: {}\nservices: {}\n# " + "-" * 3000 + "\n"
    monkeypatch.chdir(tmp_path)
    Path("kiln.yaml").write_text(text)
    assert load_spec(Path("kiln.yaml")).spec.project == "shop"


def test_duplicate_key_deep_in_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "project: shop\nimages:\n  web:\n    base: python\n    base: debian\n"
    assert write(tmp_path, monkeypatch, text) == [
        'kiln.yaml:5:5: invalid YAML: found duplicate key "base" with value "debian" '
        '(original value: "python") (while constructing a mapping)']


def test_large_file_syntax_error_keeps_libyaml_mark(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_syntax, "DIAGNOSE_BYTES", 0)
    problems = write(tmp_path, monkeypatch, "project: [shop\nimages: {}\n")
    assert len(problems) == 1
    assert problems[0].startswith("kiln.yaml:2:7: invalid YAML: ")
    assert "flow sequence" in problems[0]


def test_positions_through_anchors_and_merges(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    text = """\
project: shop
images:
  web: {steps: [{run: x}]}
services:
  web:
    <<: &base {image: web, command: run, replicas: 0}
    listen: 127.0.0.1:8080
  api:
    image: web
    command: run
    listen: 127.0.0.1:8081
    replicas: nope
"""
    assert write(tmp_path, monkeypatch, text) == [
        "kiln.yaml:5:3: services.web.replicas: expected at least 1, got 0",
        "kiln.yaml:12:15: services.api.replicas: expected an integer, got 'nope'"]


def test_a_stored_release_config_validates_again() -> None:
    """A release keeps its service config as JSON (model_dump); the rollout reads it back for the
    release's own health check. Refusing it silently checked the old release the new way."""
    import json

    from kiln.spec.models import ServiceSpec

    svc = ServiceSpec(image="web", command="x", listen="127.0.0.1:8080")
    stored = json.dumps(svc.model_dump(mode="json", by_alias=True))
    assert ServiceSpec.model_validate(json.loads(stored)) == svc
