"""Fuzz: whatever the file holds, load_spec returns a Spec or raises SpecError — nothing else."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from kiln.errors import SpecError
from kiln.spec.loader import LoadedSpec, load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shop" / "kiln.yaml"
FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "kiln.yaml"


def check(path: Path, text: str | bytes) -> None:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        loaded = load_spec(path)
    except SpecError as exc:
        assert exc.problems, "a SpecError must carry at least one problem"
        for line in exc.problems:
            assert "\n" not in line and line.startswith(str(path)), line
    else:
        assert isinstance(loaded, LoadedSpec)


def base_data() -> dict[str, Any]:
    data = YAML(typ="safe", pure=True).load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def dump(data: Any) -> str:
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, out)
    return out.getvalue()


SPECIALS = ["500ms", "3s", "-1s", "1e400", "25%", "120%", "-5%", "nan", "127.0.0.1:8080",
            "0.0.0.0:1", ":", "", "web", "Web", "copy", "run", "http", "promote", "canary",
            "env:X", "python -m app"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2, max_value=2) ,
    st.integers(min_value=10**300, max_value=10**310),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIALS),
    st.text(max_size=12))
keys = st.one_of(st.sampled_from(["copy", "run", "to", "http", "command", "port", "weight",
                                  "pause", "image", "listen", "replicas", "analysis", "steps",
                                  "min_requests", "on_no_data", "project", "images"]),
                 st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    data: Any = base_data()
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(data)))
        kind = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        if not where:
            if kind == "replace":
                data = draw(values)
            continue
        parent = data
        for el in where[:-1]:
            parent = parent[el]
        last = where[-1]
        if kind == "replace":
            parent[last] = draw(values)
        elif kind == "delete":
            del parent[last]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif kind == "add":
            parent.append(copy.deepcopy(draw(values)))
        elif isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
    return data


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text(spec_file: Path, text: str) -> None:
    check(spec_file, text)


@FUZZ
@given(blob=st.binary(max_size=200))
def test_random_bytes(spec_file: Path, blob: bytes) -> None:
    check(spec_file, blob)


@FUZZ
@given(data=mutated())
def test_mutated_structure(spec_file: Path, data: Any) -> None:
    check(spec_file, dump(data))


@FUZZ
@given(cuts=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 6),
                               st.sampled_from(["", ":", "-", " ", "\t", "{", "[", "&a", "*a",
                                                "!", "'", '"', "\n", "#", "|", ">", "? "])),
                     max_size=4))
def test_mutated_text(spec_file: Path, cuts: list[tuple[int, int, str]]) -> None:
    text = EXAMPLE.read_text()
    for at, length, insert in cuts:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + length:]
    check(spec_file, text)
