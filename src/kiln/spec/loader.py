"""Load kiln.yaml into a typed `Spec`, reporting every problem as `file:line:col: path: message`.

How positions are tracked: libyaml (PyYAML's C parser, `yaml_tree`) composes the file into
nodes that carry their start marks and converts them to plain dicts/lists/scalars for pydantic.
Positions are looked up only when there is an error: pydantic's error `loc` is cleaned of union
tags by walking the model types (`_resolve`) and then found in the node tree: scalar problems
point at the value, container/unknown-key problems at the key, and a missing field at its
nearest existing parent. YAML syntax errors carry the parser's own mark (`yaml_syntax`).

Limits, checked before the file is parsed: MAX_FILE_BYTES, and MAX_NODES (counted from
libyaml's event stream, in constant memory, for files large enough to hold that many).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic.fields import FieldInfo

from kiln.errors import SpecError
from kiln.spec.models import CHECK_KEYS, NAME_RE, STEP_KEYS, Spec
from kiln.spec.yaml_syntax import offset_pos, syntax_error
from kiln.spec.yaml_tree import (
    FALLBACK,
    DuplicateKey,
    Loc,
    NodeTree,
    Pos,
    TooBig,
    compose,
    count_nodes,
    fast_plain,
    no_gc,
)
from kiln.spec.yaml_tree import describe as _describe

__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "SPEC_FILENAME", "LoadedSpec", "find_spec", "found_above",
           "line_at", "load_spec", "parse_spec"]

SPEC_FILENAME = "kiln.yaml"
MAX_FILE_BYTES = 16 * 1024 * 1024  # a 4 MB spec (8,000 services) loads in about a second
MAX_NODES = 1_000_000  # about 300 MB of nodes; 8,000 services are ~370,000
MAX_VALUES = 50_000  # aliases can make a tiny file expand exponentially ("billion laughs")
_MIN_NODE_BYTES = 2  # a node takes at least this much text (the alias-expansion bound)
_DELIMITERS = ":-,[]{}?\n"  # every node but the first follows one of these


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec and where it came from (steps' paths are relative to `base_dir`)."""

    spec: Spec
    path: Path  # as given (messages use it)
    base_dir: Path  # absolute folder of the file
    text: str


def find_spec(start: Path | None = None, explicit: Path | None = None) -> Path:
    """The spec to use: `explicit` (-f) as given, else kiln.yaml in `start` (default: cwd) or the
    nearest folder above it that has one, as git finds its repository.

    The path stays relative to the cwd (`kiln.yaml`, `../../kiln.yaml`) so messages read
    `kiln.yaml:3:5: ...` in the project folder and still point at the right file from below it.
    """
    if explicit is not None:
        return explicit
    origin = (start or Path.cwd()).resolve()
    for folder in (origin, *origin.parents):
        candidate = folder / SPEC_FILENAME
        if candidate.is_file():
            return _relative(candidate)
    err = SpecError([f"{_relative(origin / SPEC_FILENAME)}: file not found (nor in any folder "
                     "above it)"])
    err.hint = "run `kiln init` to create one, or pass -f FILE"
    raise err


def _relative(path: Path) -> Path:
    """`path` relative to the cwd when it is below the cwd or in one of its parents, else as is."""
    try:
        rel = Path(os.path.relpath(path, Path.cwd()))
    except ValueError:
        return path
    ups = [part == ".." for part in rel.parts[:-1]]
    return rel if all(ups) or not any(ups) else path


def found_above(path: Path) -> bool:
    """Whether find_spec found `path` in a folder above the cwd (commands then say where)."""
    return path.parent != Path(".") and not path.is_absolute() and path.parts[0] == ".."


def load_spec(path: Path) -> LoadedSpec:
    """Read, parse and validate `path`; raise SpecError listing every problem found."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError([f"{path}: too large (over {MAX_FILE_BYTES // (1024 * 1024)} MiB); "
                         "a kiln.yaml is expected to be well under that"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = offset_pos(raw[: exc.start].decode("utf-8", "replace"), exc.start)
        raise SpecError([f"{path}:{line}:{col}: not UTF-8 text"]) from exc
    spec = parse_spec(text, str(path))
    return LoadedSpec(spec=spec, path=path, base_dir=path.parent.resolve(), text=text)


def parse_spec(text: str, filename: str = SPEC_FILENAME) -> Spec:
    """Parse and validate spec text; `filename` is only used in messages."""
    with no_gc():  # the node tree and plain data are freed on return, before collection resumes
        return _parse_spec(text, filename)


def _parse_spec(text: str, filename: str) -> Spec:
    _check_nodes(text, filename)
    plain = fast_plain(text, _max_values(text))
    if plain is not FALLBACK:
        try:
            return Spec.model_validate(plain, strict=True)  # YAML has real types: no "3" -> 3
        except ValidationError:
            pass  # the node tree below finds where each problem is
    tree = _parse_yaml(text, filename)
    if tree is None:
        raise SpecError([f"{filename}:1:1: the file is empty; expected a mapping with "
                         "project, images and services"])
    try:
        plain = tree.plain()
    except TooBig as exc:
        raise SpecError([f"{filename}:1:1: {exc}"]) from None
    except DuplicateKey as exc:
        raise SpecError([f"{filename}:{exc.pos[0]}:{exc.pos[1]}: invalid YAML: {exc}"]) from None
    if not isinstance(plain, dict):
        line, col = tree.position(())
        raise SpecError([f"{filename}:{line}:{col}: expected a mapping at the top level, "
                         f"got {_describe(plain)}"])
    problems = [(pos, _fmt_path(loc), msg) for loc, pos, msg in tree.problems]
    try:
        spec = Spec.model_validate(plain, strict=True)  # YAML has real types: no "3" -> 3
    except ValidationError as exc:
        problems += _translate(exc, tree, plain)
    else:
        if not problems:
            return spec
    lines = sorted(set(problems), key=lambda p: (p[0], p[1], p[2]))
    raise SpecError([_line(filename, pos, path, msg) for pos, path, msg in lines])


def _max_values(text: str) -> int:
    return max(MAX_VALUES, len(text) // _MIN_NODE_BYTES)


def _check_nodes(text: str, filename: str) -> None:
    if _node_bound(text) > MAX_NODES:
        try:
            nodes = count_nodes(text, MAX_NODES)
        except yaml.YAMLError as exc:
            raise SpecError([syntax_error(text, filename, exc)]) from None
        if nodes > MAX_NODES:
            raise SpecError([f"{filename}:1:1: too many YAML nodes (more than {MAX_NODES}); "
                             "a kiln.yaml is expected to be far smaller"])


def _parse_yaml(text: str, filename: str) -> NodeTree | None:
    try:
        root = compose(text)
    except yaml.YAMLError as exc:
        raise SpecError([syntax_error(text, filename, exc)]) from None
    if root is None:
        return None
    return NodeTree(root, max_values=_max_values(text))


def _node_bound(text: str) -> int:
    """A cheap upper bound of the node count (a collection may share its first entry's
    delimiter, hence 2x); only files that exceed it pay for the exact count."""
    return 2 * sum(text.count(c) for c in _DELIMITERS) + 1


# ---------------------------------------------------------------- pydantic errors -> lines


def _translate(exc: ValidationError, conv: NodeTree, plain: Any) -> list[tuple[Pos, str, str]]:
    out: list[tuple[Pos, str, str]] = []
    for err in exc.errors():
        loc, owner, key_error = _resolve(tuple(err["loc"]))
        if any(loc[: len(b)] == b for b in conv.bad):
            continue
        etype = err["type"]
        if not loc and etype == "value_error":  # Spec-level cross-reference checks
            for line in _strip_prefix(err["msg"]).splitlines():
                path, sep, rest = line.partition(": ")
                ref = _parse_path(path) if sep else None
                if ref is None:
                    out.append((conv.position(()), "", line))
                else:
                    out.append((conv.position(ref), path, rest))
            continue
        message = _message(err, loc, owner, key_error)
        if key_error or etype in ("extra_forbidden", "missing"):
            pos = conv.position(loc, at_key=True)
        elif etype.endswith("_type") and (vpos := conv.value_position(loc)) is not None:
            pos = vpos  # a list where a string goes
        else:
            pos = conv.position(loc)
        out.append((pos, _fmt_path(loc), message))
    if not any(not err["loc"] for err in exc.errors()):
        out += [(conv.position(loc), _fmt_path(loc), msg) for loc, msg in _raw_references(plain)]
    return out


def _raw_references(data: Any) -> list[tuple[Loc, str]]:
    """Unknown images, checked on the raw data when other errors stopped the model check."""
    images = data.get("images") if isinstance(data, dict) else None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(images, dict) or not isinstance(services, dict):
        return []
    known = ", ".join(sorted(images)) or "none defined"
    return [(("services", name, "image"), f"unknown image {svc['image']!r} (images: {known})")
            for name, svc in services.items()
            if isinstance(svc, dict) and isinstance(svc.get("image"), str)
            and svc["image"] not in images]


def _message(err: Any, loc: Loc, owner: type[BaseModel] | None, key_error: bool) -> str:
    etype: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    got = f", got {_describe(value)}"
    if key_error:
        return "invalid name: " + _pattern_message(ctx.get("pattern"), value, err["msg"])
    if etype == "missing":
        return "missing required field"
    if etype == "extra_forbidden":
        allowed = _field_names(owner) if owner else []
        match = difflib.get_close_matches(str(loc[-1]) if loc else "", allowed, n=1)
        if match:
            return f"unknown field; did you mean {match[0]!r}?"
        return "unknown field" + (f"; expected one of {', '.join(allowed)}" if allowed else "")
    if etype in ("unknown_step", "unknown_check"):
        keys = STEP_KEYS if etype == "unknown_step" else CHECK_KEYS
        kind = "step" if etype == "unknown_step" else "check"
        if not isinstance(value, dict):
            return f"expected a {kind}: a mapping with one of {', '.join(keys)}{got}"
        message = f"unknown {kind}; expected one of {', '.join(keys)}"
        hint = next((m for k in value for m in difflib.get_close_matches(str(k), keys, n=1)),
                    None)
        return message + (f"; did you mean {hint!r}?" if hint else "")
    simple = {
        ("int_type", "int_parsing", "int_from_float"): "expected an integer",
        ("float_type", "float_parsing", "finite_number"): "expected a number",
        ("string_type",): "expected a string",
        ("bool_type", "bool_parsing"): "expected true or false",
        ("dict_type", "model_type", "model_attributes_type", "mapping_type"): "expected a mapping",
        ("list_type", "iterable_type"): "expected a list",
    }
    for types_, text in simple.items():
        if etype in types_:
            return text + got
    if etype == "literal_error":
        return f"expected {ctx.get('expected', 'one of the allowed values')}{got}"
    bounds = {"greater_than_equal": ("ge", "at least"), "less_than_equal": ("le", "at most"),
              "greater_than": ("gt", "more than"), "less_than": ("lt", "less than")}
    if etype in bounds:
        key, words = bounds[etype]
        return f"expected {words} {ctx.get(key)}{got}"
    if etype == "string_too_short":
        return "expected a non-empty string"
    if etype == "string_pattern_mismatch":
        return _pattern_message(ctx.get("pattern"), value, err["msg"])
    if etype == "command_type":
        return str(err["msg"]) + got
    if etype in ("value_error", "assertion_error"):
        return _one_line(_strip_prefix(err["msg"]))
    msg = _one_line(str(err["msg"]))
    return msg[:1].lower() + msg[1:]


def _pattern_message(pattern: Any, value: Any, fallback: str) -> str:
    if pattern == NAME_RE:
        return ("expected a lowercase letter followed by up to 39 lowercase letters, digits or "
                f"dashes, got {_describe(value)}")
    if pattern is not None:
        return f"expected text matching {pattern}, got {_describe(value)}"
    return _one_line(fallback)


def _strip_prefix(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _resolve(loc: Loc) -> tuple[Loc, type[BaseModel] | None, bool]:
    """pydantic's loc -> (field path without union tags, model owning the last key, key error?).

    Walks the annotations from `Spec` down, so a discriminated union's tag (which pydantic puts
    in the loc) is recognised and dropped instead of looking like a field name.
    """
    tp: Any = Spec
    owner: type[BaseModel] | None = None
    out: list[str | int] = []
    key_error = False
    for el in loc:
        if el == "[key]":
            key_error = True
            continue
        tp, disc = _unwrap(tp)
        if disc:
            member = _tagged_member(tp, el)
            if member is not None:
                tp = member
                continue
        out.append(el)
        owner = None
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner = tp
            tp = _field_type(tp, el)
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            tp = Any
    return tuple(out), owner, key_error


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """Strip Annotated and Optional; report whether a Discriminator was attached."""
    disc = False
    while True:
        if get_origin(tp) is Annotated:
            args = get_args(tp)
            disc = disc or any(isinstance(m, Discriminator) for m in args[1:])
            tp = args[0]
            continue
        if get_origin(tp) in (Union, types.UnionType) and not disc:
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, disc


def _tagged_member(union: Any, tag: str | int) -> Any:
    for arg in get_args(union):
        if get_origin(arg) is Annotated:
            inner, *meta = get_args(arg)
            if any(isinstance(m, Tag) and m.tag == tag for m in meta):
                return inner
    return None


def _field_type(model: type[BaseModel], name: str | int) -> Any:
    field: FieldInfo | None = None
    for fname, f in model.model_fields.items():
        if name in (fname, f.alias):
            field = f
            break
    if field is None:
        return Any
    if field.metadata:
        return Annotated.__class_getitem__((field.annotation, *field.metadata))  # type: ignore[attr-defined]
    return field.annotation


# ---------------------------------------------------------------- formatting


_PATH_PART = re.compile(r"^([^.\[\]]+)((?:\[\d+\])*)$")


def _parse_path(text: str) -> Loc | None:
    """'services.web.rollout.steps[0]' -> ('services', 'web', 'rollout', 'steps', 0)."""
    out: list[str | int] = []
    for part in text.split("."):
        m = _PATH_PART.match(part)
        if not m:
            return None
        out.append(m.group(1))
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return tuple(out)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


def _fmt_path(loc: Loc) -> str:
    """('services', 'web', 'steps', 0) -> 'services.web.steps[0]'; odd keys are quoted."""
    text = ""
    for el in loc:
        if isinstance(el, int):
            text += f"[{el}]"
        elif not _PLAIN_KEY.match(el):
            text += f"[{json.dumps(el)}]"
        else:
            text += f".{el}" if text else el
    return text


def line_at(loaded: LoadedSpec, loc: Loc, message: str) -> str:
    """`file:line:col: path: message` for a problem found after loading (the node tree is only
    built here, when there is something to report)."""
    tree = _parse_yaml(loaded.text, str(loaded.path))
    pos = tree.position(loc) if tree is not None else (1, 1)
    return _line(str(loaded.path), pos, _fmt_path(loc), message)


def _line(filename: str, pos: Pos, path: str, message: str) -> str:
    where = f"{filename}:{pos[0]}:{pos[1]}"
    message = _one_line(message)  # user text (keys, values) can hold newlines
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
