"""Parse YAML with libyaml (PyYAML's C parser) into plain data, keeping the node tree for positions.

Why: ruamel's round-trip loader is pure Python and needs ~2 s for a 200-service spec. libyaml
composes nodes in C, each with its start mark; this module turns them into plain dicts, lists and
scalars with YAML 1.2 core-schema typing (what ruamel gave: `yes` and `on` stay text, `1:30`
is not a number), and answers "where is this field path?" lazily from the node tree, so a valid
file pays nothing for positions.

Cyclic garbage collection is paused while nodes are built: hundreds of thousands of young
objects otherwise trigger it over and over (a 4 MB file: 2.7 s with it, 0.5 s without).
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["FALLBACK", "DuplicateKey", "Loc", "NodeTree", "Pos", "TooBig", "compose", "count_nodes",
           "fast_plain", "no_gc"]

Loc = tuple[str | int, ...]
Pos = tuple[int, int]

_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = _T + "str", _T + "int", _T + "float", _T + "bool", _T + "null"
_TIMESTAMP, _MERGE, _MAP, _SEQ = _T + "timestamp", _T + "merge", _T + "map", _T + "seq"
_CONTAINER_TAGS = {_MAP, _SEQ, _T + "omap"}

# YAML 1.2 core schema (the same patterns ruamel uses for version 1.2).
_RESOLVERS: list[tuple[str, re.Pattern[str], str]] = [
    (_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
    (_FLOAT, re.compile(r"""^(?:
         [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", re.X), "-+0123456789."),
    (_INT, re.compile(r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0o?[0-7_]+
        |[-+]?[0-9_]+
        |[-+]?0x[0-9a-fA-F_]+)$""", re.X), "-+0123456789"),
    (_MERGE, re.compile(r"^(?:<<)$"), "<"),
    (_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), "~nN"),
    (_TIMESTAMP, re.compile(r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
        |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
        (?:[Tt]|[ \t]+)[0-9][0-9]?
        :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
        (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""", re.X), "0123456789"),
]
_BY_FIRST: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
for _tag, _rx, _first in _RESOLVERS:
    for _ch in _first:
        _BY_FIRST.setdefault(_ch, []).append((_tag, _rx))


class _Loader(yaml.CSafeLoader):
    """libyaml's parser and composer with a fast YAML 1.2 resolver (no path resolvers)."""

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if not implicit[0]:  # quoted
                return _STR
            if not value:
                return _NULL
            for tag, rx in _BY_FIRST.get(value[0], ()):
                if rx.match(value):
                    return tag
            return _STR
        return _SEQ if kind is SequenceNode else _MAP


@contextmanager
def no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def count_nodes(text: str, limit: int) -> int:
    """Count nodes from libyaml's event stream (constant memory); stops past `limit`."""
    n = 0
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.NodeEvent):  # scalars, aliases, collection starts
                n += 1
                if n > limit:
                    break
    finally:
        loader.dispose()
    return n


def compose(text: str) -> Node | None:
    """The root node (None for an empty stream); raises yaml.YAMLError on bad syntax."""
    loader = _Loader(text)
    try:
        with no_gc():
            node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


_WORDS: dict[str, Any] = {
    **{w: True for w in ("true", "True", "TRUE")}, **{w: False for w in ("false", "False", "FALSE")},
    **{w: None for w in ("", "~", "null", "Null", "NULL")}}
"""Plain scalars that the core schema types by their exact text."""
_NUMERIC_FIRST = frozenset("-+.0123456789")
FALLBACK: Any = object()
_WORDS["<<"] = FALLBACK  # a merge key, or a merge tag where a value goes: the node tree decides
"""fast_plain's answer when the file needs the node tree (odd YAML, or to say what is wrong)."""
_SCALAR_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP}


def fast_plain(text: str, max_values: int, max_depth: int = 64) -> Any:
    """Plain data straight from libyaml's events, without building nodes: the fast path for
    ordinary files. Anything unusual (custom tags, merge keys, non-text or duplicate keys,
    recursive aliases, alias bombs, deep nesting, syntax errors, a non-mapping top level)
    returns FALLBACK, and the node tree then gives the same data or the exact problem."""
    loader = _Loader(text)
    get: Any = loader.get_event
    scalar_ev, alias_ev = yaml.ScalarEvent, yaml.AliasEvent
    map_start, seq_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
    map_end, seq_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
    anchors: dict[str, tuple[Any, int]] = {}
    # (container, is_map, pending key, anchor, count at start) per open collection
    stack: list[tuple[Any, bool, Any, str | None, int]] = []
    cur: Any = None
    is_map = False
    key: Any = None
    root: Any = FALLBACK
    count = 0
    try:
        with no_gc():
            get(), get()  # stream start, document start (or stream end: an empty file)
            while True:
                ev = get()
                cls = ev.__class__
                if cls is scalar_ev:
                    count += 1
                    tag = ev.tag
                    value: Any = ev.value
                    if tag is None or tag == "!":
                        if not ev.implicit[0]:  # quoted: text
                            pass
                        elif value in _WORDS:
                            value = _WORDS[value]
                        elif value.isdigit():
                            value = int(value)
                        elif value and value[0] in _NUMERIC_FIRST:
                            for rtag, rx in _BY_FIRST[value[0]]:
                                if rx.match(value):
                                    value = _typed(rtag, value)
                                    break
                    elif tag in _SCALAR_TAGS:
                        value = _typed(tag, value)
                    else:
                        return FALLBACK
                    if value is FALLBACK:
                        return FALLBACK
                    if ev.anchor is not None:
                        anchors[ev.anchor] = (value, 1)
                elif cls is alias_ev:
                    found = anchors.get(ev.anchor)
                    if found is None:  # undefined, or an ancestor still open: recursive
                        return FALLBACK
                    value, size = found
                    count += size
                elif cls is map_start or cls is seq_start:
                    count += 1
                    if ev.tag not in (None, "!", _MAP, _SEQ) or len(stack) >= max_depth:
                        return FALLBACK
                    new: Any = {} if cls is map_start else []
                    stack.append((cur, is_map, key, ev.anchor, count))
                    cur, is_map, key = new, cls is map_start, None
                    continue
                elif cls is map_end or cls is seq_end:
                    value = cur
                    cur, is_map, key, anchor, started = stack.pop()
                    if anchor is not None:
                        anchors[anchor] = (value, count - started + 1)
                    if not stack:
                        root = value
                        break
                else:  # document end of a scalar-only document, or anything unexpected
                    return FALLBACK
                if count > max_values:
                    return FALLBACK
                if cur is None:  # a scalar or alias at the top level
                    return FALLBACK
                if not is_map:
                    cur.append(value)
                elif key is None:
                    if value.__class__ is not str or value == "<<":
                        return FALLBACK  # non-text or merge key: the node tree says what to do
                    key = value
                else:
                    if key in cur:
                        return FALLBACK
                    cur[key] = value
                    key = None
            if not isinstance(get(), yaml.DocumentEndEvent) or \
                    not isinstance(get(), yaml.StreamEndEvent):
                return FALLBACK  # a second document: the composer words that error
    except (yaml.YAMLError, IndexError):
        return FALLBACK
    finally:
        loader.dispose()
    return root if isinstance(root, dict) else FALLBACK


def _typed(tag: str, text: str) -> Any:
    try:
        if tag == _INT:
            return _int(text)
        if tag == _FLOAT:
            return _float(text)
        if tag == _BOOL:
            return text.lower() == "true"
        if tag == _NULL:
            return None
        if tag == _MERGE:
            return "<<"
    except ValueError:
        return FALLBACK
    return text  # str, and a timestamp kept as the text it was


class TooBig(Exception):
    """More values than allowed (an alias bomb): reported as one line, nothing else."""


class DuplicateKey(Exception):
    def __init__(self, pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = pos


def pos_of(node: Node) -> Pos:
    mark = node.start_mark
    return mark.line + 1, mark.column + 1


@dataclass
class NodeTree:
    """Converts a node tree to plain data; problems found on the way are kept with positions."""

    root: Node
    max_values: int
    problems: list[tuple[Loc, Pos, str]] = field(default_factory=list)
    bad: set[Loc] = field(default_factory=set)  # already reported; pydantic noise below them
    max_depth: int = 64
    _count: int = 0
    _active: set[int] = field(default_factory=set)

    def plain(self) -> Any:
        with no_gc():
            return self._convert(self.root, (), 0)

    # ------------------------------------------------------------ conversion

    def _convert(self, node: Node, loc: Loc, depth: int) -> Any:
        self._count += 1
        if self._count > self.max_values:
            raise TooBig(f"too many values (more than {self.max_values}; aliases expand too much)")
        cls = node.__class__
        if cls is ScalarNode:
            tag = node.tag
            if tag == _STR:
                return node.value
            return self._scalar(node, loc)
        if depth > self.max_depth:
            return self._problem(loc, node, "nested too deeply")
        if node.tag not in _CONTAINER_TAGS:
            return self._problem(loc, node, f"unsupported YAML tag {node.tag}")
        key = id(node)
        if key in self._active:
            return self._problem(loc, node, "recursive alias")
        self._active.add(key)
        try:
            if cls is MappingNode:
                return self._mapping(node, loc, depth)
            return [self._convert(item, (*loc, i), depth + 1) for i, item in enumerate(node.value)]
        finally:
            self._active.discard(key)

    def _mapping(self, node: Node, loc: Loc, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges: list[Node] = []
        for knode, vnode in node.value:
            if knode.tag == _STR and knode.__class__ is ScalarNode:
                key = knode.value
            elif knode.tag == _MERGE:
                merges.append(vnode)
                continue
            else:
                found = self._convert(knode, (*loc, "[key]"), depth + 1)
                self.problems.append((loc, pos_of(knode), f"keys must be text, got {describe(found)}"))
                continue
            child = (*loc, key)
            value = self._convert(vnode, child, depth + 1)
            if key in out:
                raise DuplicateKey(pos_of(knode), f'found duplicate key "{key}" with value '
                                   f'"{_show(value)}" (original value: "{_show(out[key])}") '
                                   "(while constructing a mapping)")
            out[key] = value
        for merged in self._merge_sources(merges, loc):
            for key, value in self._convert(merged, loc, depth + 1).items():
                out.setdefault(key, value)
        return out

    def _merge_sources(self, merges: list[Node], loc: Loc) -> list[Node]:
        sources: list[Node] = []
        for m in merges:
            items = m.value if isinstance(m, SequenceNode) else [m]
            for item in items:
                if isinstance(item, MappingNode):
                    sources.append(item)
                else:
                    self._problem(loc, item, "a merge key (<<) needs a mapping or a list of mappings")
        return sources

    def _scalar(self, node: Node, loc: Loc) -> Any:
        tag, value = node.tag, node.value
        try:
            if tag == _INT:
                return _int(value)
            if tag == _FLOAT:
                return _float(value)
            if tag == _BOOL:
                return value.lower() == "true"
            if tag == _NULL:
                return None
            if tag == _TIMESTAMP:  # unquoted 2024-01-01: keep it as the text it was
                return value
        except ValueError:
            return self._problem(loc, node, f"invalid {tag.rsplit(':', 1)[-1]} {value!r}")
        return self._problem(loc, node, f"unsupported YAML tag {tag}")

    def _problem(self, loc: Loc, node: Node, message: str) -> None:
        self.problems.append((loc, pos_of(node), message))
        self.bad.add(loc)
        return None

    # ------------------------------------------------------------ positions (on demand)

    def find(self, loc: Loc) -> tuple[int, Pos, Pos, bool]:
        """How much of `loc` exists: (length found, key pos, value pos, is a scalar) of the deepest
        existing element. Keys reached through a merge (<<) get their mapping's key position."""
        node = self.root
        key_pos = value_pos = pos_of(node)
        for n, el in enumerate(loc):
            child: tuple[Node, Node] | None = None
            merged = False
            if isinstance(node, MappingNode):
                child = _lookup(node.value, el)
                if child is None:
                    for src in _merge_nodes(node):
                        child = _lookup(src.value, el)
                        if child is not None:
                            merged = True
                            break
            elif isinstance(node, SequenceNode) and isinstance(el, int) and 0 <= el < len(node.value):
                item = node.value[el]
                child = (item, item)
            if child is None:
                return n, key_pos, value_pos, isinstance(node, ScalarNode)
            if merged:
                value_pos = key_pos
            else:
                key_pos, value_pos = pos_of(child[0]), pos_of(child[1])
            node = child[1]
        return len(loc), key_pos, value_pos, isinstance(node, ScalarNode)

    def position(self, loc: Loc, *, at_key: bool = False) -> Pos:
        """Scalars: the value; containers and keys: the key; missing: nearest parent's key."""
        found, key_pos, value_pos, scalar = self.find(loc)
        if found == len(loc) and scalar and not at_key:
            return value_pos
        return key_pos

    def value_position(self, loc: Loc) -> Pos | None:
        found, _, value_pos, _ = self.find(loc)
        return value_pos if found == len(loc) else None


def _lookup(pairs: list[tuple[Node, Node]], key: str | int) -> tuple[Node, Node] | None:
    for knode, vnode in pairs:
        if knode.__class__ is ScalarNode and knode.tag == _STR and knode.value == key:
            return knode, vnode
    return None


def _merge_nodes(node: MappingNode) -> list[MappingNode]:
    out: list[MappingNode] = []
    for knode, vnode in node.value:
        if knode.tag == _MERGE:
            items = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
            out += [i for i in items if isinstance(i, MappingNode)]
    return out


def _int(text: str) -> int:
    s = text.replace("_", "")
    sign = -1 if s[:1] == "-" else 1
    s = s.lstrip("+-")
    for prefix, base in (("0b", 2), ("0x", 16), ("0o", 8)):
        if s.startswith(prefix):
            return sign * int(s[2:], base)
    return sign * int(s)


def _float(text: str) -> float:
    s = text.replace("_", "").lower()
    if s.endswith(".inf"):
        return -math.inf if s.startswith("-") else math.inf
    if s.endswith(".nan"):
        return math.nan
    return float(s)


def _show(value: Any) -> str:
    if value is None:
        return "None"
    return str(value)


def describe(value: Any) -> str:
    """A value as a message shows it: null, true, a mapping, a list, 'text', 42."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
