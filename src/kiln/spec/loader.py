"""Load kiln.yaml into a typed `Spec`, reporting every problem as `file:line:col: path: message`.

How positions are tracked: ruamel.yaml's round-trip loader keeps, on every mapping and
sequence it builds, the 0-based line/column of each key (`lc.key(k)`), each value
(`lc.value(k)`) and each list item (`lc.item(i)`). `_Converter` walks that tree once, turning
it into plain dicts/lists/scalars for pydantic and recording a 1-based position per field path
(a tuple like `("services", "web", "rollout", "steps", 0, "weight")`). pydantic's error `loc`
is then cleaned of union tags by walking the model types (`_resolve`) and looked up in that
table: scalar problems point at the value, container/unknown-key problems at the key, and a
missing field at its nearest existing parent. YAML syntax errors carry the parser's own mark.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from kiln.errors import SpecError
from kiln.spec.models import CHECK_KEYS, NAME_RE, STEP_KEYS, Spec

__all__ = ["SPEC_FILENAME", "LoadedSpec", "find_spec", "load_spec", "parse_spec"]

SPEC_FILENAME = "kiln.yaml"
MAX_VALUES = 50_000  # aliases can make a tiny file expand exponentially ("billion laughs")
MAX_DEPTH = 64
_STD_TAGS = {None, "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"}

Loc = tuple[str | int, ...]
Pos = tuple[int, int]


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec and where it came from (steps' paths are relative to `base_dir`)."""

    spec: Spec
    path: Path  # as given (messages use it)
    base_dir: Path  # absolute folder of the file
    text: str


def find_spec(start: Path | None = None, explicit: Path | None = None) -> Path:
    """The spec to use: `explicit` (-f) as given, else kiln.yaml in `start` (default: cwd).

    In the cwd the path stays relative, so messages read `kiln.yaml:3:5: ...`.
    """
    if explicit is not None:
        return explicit
    here = start is None or start.resolve() == Path.cwd().resolve()
    path = Path(SPEC_FILENAME) if here or start is None else start / SPEC_FILENAME
    if not path.is_file():
        err = SpecError([f"{path}: file not found"])
        err.hint = "run `kiln init` to create one, or pass -f FILE"
        raise err
    return path


def load_spec(path: Path) -> LoadedSpec:
    """Read, parse and validate `path`; raise SpecError listing every problem found."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _offset_pos(raw[: exc.start].decode("utf-8", "replace"), exc.start)
        raise SpecError([f"{path}:{line}:{col}: not UTF-8 text"]) from exc
    spec = parse_spec(text, str(path))
    return LoadedSpec(spec=spec, path=path, base_dir=path.parent.resolve(), text=text)


def parse_spec(text: str, filename: str = SPEC_FILENAME) -> Spec:
    """Parse and validate spec text; `filename` is only used in messages."""
    data, root_pos = _parse_yaml(text, filename)
    if data is None:
        raise SpecError([f"{filename}:1:1: the file is empty; expected a mapping with "
                         "project, images and services"])
    if not isinstance(data, CommentedMap):
        line, col = root_pos
        raise SpecError([f"{filename}:{line}:{col}: expected a mapping at the top level, "
                         f"got {_describe(_plain_preview(data))}"])
    conv = _Converter()
    try:
        plain = conv.convert(data, (), 0)
    except _TooBig as exc:
        raise SpecError([f"{filename}:1:1: {exc}"]) from None
    problems = [(pos, _fmt_path(loc), msg) for loc, pos, msg in conv.problems]
    try:
        spec = Spec.model_validate(plain, strict=True)  # YAML has real types: no "3" -> 3
    except ValidationError as exc:
        problems += _translate(exc, conv, plain)
    else:
        if not problems:
            return spec
    lines = sorted(set(problems), key=lambda p: (p[0], p[1], p[2]))
    raise SpecError([_line(filename, pos, path, msg) for pos, path, msg in lines])


# ---------------------------------------------------------------- YAML -> plain data


def _parse_yaml(text: str, filename: str) -> tuple[Any, Pos]:
    yaml = YAML(typ="rt")  # round-trip: keeps positions; never builds arbitrary Python objects
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = _one_line(exc.problem or exc.context or "cannot parse")
        if exc.context and exc.problem:
            what = f"{what} ({_one_line(exc.context)})"
        raise SpecError([f"{filename}:{line}:{col}: invalid YAML: {what}"]) from exc
    except ReaderError as exc:
        line, col = _offset_pos(text, exc.position)
        raise SpecError([f"{filename}:{line}:{col}: invalid YAML: special character "
                         f"#x{exc.character if isinstance(exc.character, int) else 0:04x} "
                         "is not allowed"]) from exc
    except RecursionError:
        raise SpecError([f"{filename}:1:1: invalid YAML: nested too deeply"]) from None
    except (YAMLError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # ruamel raises plain Python errors for a few odd inputs (complex keys, bad escapes).
        raise SpecError([f"{filename}:1:1: invalid YAML: {_one_line(str(exc))}"]) from exc
    return data, _node_pos(data)


class _TooBig(Exception):
    pass


class _Converter:
    """Plain data for pydantic + a position for every path; odd YAML becomes a problem."""

    def __init__(self) -> None:
        self.key_pos: dict[Loc, Pos] = {}
        self.value_pos: dict[Loc, Pos] = {}
        self.scalar: set[Loc] = set()
        self.problems: list[tuple[Loc, Pos, str]] = []
        self.bad: set[Loc] = set()  # paths already reported; pydantic errors below them are noise
        self._count = 0
        self._active: set[int] = set()

    def convert(self, node: Any, loc: Loc, depth: int) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            raise _TooBig(f"too many values (more than {MAX_VALUES}; aliases expand too much)")
        if not loc:
            self.key_pos[loc] = self.value_pos[loc] = _node_pos(node)
        if depth > MAX_DEPTH:
            return self._problem(loc, "nested too deeply")
        if isinstance(node, CommentedMap | CommentedSeq):
            tag = getattr(getattr(node, "tag", None), "value", None)
            if tag not in _STD_TAGS:
                return self._problem(loc, f"unsupported YAML tag {tag}")
            if id(node) in self._active:
                return self._problem(loc, "recursive alias")
            self._active.add(id(node))
            try:
                if isinstance(node, CommentedMap):
                    return self._mapping(node, loc, depth)
                return self._sequence(node, loc, depth)
            finally:
                self._active.discard(id(node))
        self.scalar.add(loc)
        if isinstance(node, TaggedScalar):
            return self._problem(loc, f"unsupported YAML tag {node.tag.value}")
        if node is None or isinstance(node, bool):
            return node
        if type(node).__name__ == "ScalarBoolean":  # an anchored bool: an int subclass
            return bool(node)
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            return str(node)
        if isinstance(node, _dt.date):  # unquoted 2024-01-01: keep it as the text it was
            return node.isoformat()
        return self._problem(loc, f"unsupported YAML value ({type(node).__name__})")

    def _mapping(self, node: CommentedMap, loc: Loc, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        parent = self.key_pos.get(loc, (1, 1))
        for key, value in node.items():
            try:
                kpos = _pos(node.lc.key(key))
                vpos = _pos(node.lc.value(key))
            except (KeyError, TypeError, AttributeError):  # merged (<<) keys have no position
                kpos = vpos = parent
            if not isinstance(key, str):
                self.problems.append((loc, kpos, f"keys must be text, got {_describe(key)}"))
                continue
            child = (*loc, key)
            self.key_pos[child], self.value_pos[child] = kpos, vpos
            out[str(key)] = self.convert(value, child, depth + 1)
        return out

    def _sequence(self, node: CommentedSeq, loc: Loc, depth: int) -> list[Any]:
        out: list[Any] = []
        parent = self.key_pos.get(loc, (1, 1))
        for i, value in enumerate(node):
            try:
                ipos = _pos(node.lc.item(i))
            except (KeyError, TypeError, AttributeError):
                ipos = parent
            child = (*loc, i)
            self.key_pos[child] = self.value_pos[child] = ipos
            out.append(self.convert(value, child, depth + 1))
        return out

    def _problem(self, loc: Loc, message: str) -> None:
        self.problems.append((loc, self.value_pos.get(loc, (1, 1)), message))
        self.bad.add(loc)
        return None

    def position(self, loc: Loc, *, at_key: bool = False) -> Pos:
        """Scalars: the value; containers and keys: the key; missing: nearest parent's key."""
        if loc in self.key_pos:
            if not at_key and loc in self.scalar:
                return self.value_pos[loc]
            return self.key_pos[loc]
        while loc and loc not in self.key_pos:
            loc = loc[:-1]
        return self.key_pos.get(loc, (1, 1))


def _pos(lc: Any) -> Pos:
    line, col = lc
    return int(line) + 1, int(col) + 1


def _node_pos(node: Any) -> Pos:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return int(lc.line) + 1, int(lc.col) + 1
    return 1, 1


def _offset_pos(text: str, offset: int) -> Pos:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _plain_preview(node: Any) -> Any:
    if isinstance(node, CommentedSeq):
        return []
    return node if isinstance(node, str | int | float | bool) else str(node)


# ---------------------------------------------------------------- pydantic errors -> lines


def _translate(exc: ValidationError, conv: _Converter, plain: Any) -> list[tuple[Pos, str, str]]:
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
        elif etype.endswith("_type") and loc in conv.value_pos:  # a list where a string goes
            pos = conv.value_pos[loc]
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


def _line(filename: str, pos: Pos, path: str, message: str) -> str:
    where = f"{filename}:{pos[0]}:{pos[1]}"
    message = _one_line(message)  # user text (keys, values) can hold newlines
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) or hasattr(value, "keys"):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
