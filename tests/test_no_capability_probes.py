"""No capability probes: the core asks a platform part what it can do with `isinstance` against
the Protocols of kiln.platforms.capabilities, never with `getattr`/`hasattr` (a misspelt name
there is a capability nobody has; docs/decisions/capabilities.md).

Every `getattr`/`hasattr` left under src/ reads something that is not a capability (a
third-party or stdlib object's optional attribute, a lazy export) and says so in a
`# not a capability probe: <why>` comment on its line or just above it. One that asks a
platform part, or asks for a name a capability Protocol defines, fails even with the comment."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Protocol

from kiln.platforms import capabilities

SRC = Path(__file__).resolve().parent.parent / "src"
MARK = "# not a capability probe:"
PROBES = frozenset({"getattr", "hasattr"})
PARTS = frozenset({"platform", "builder", "compute", "router", "metrics", "part", "source"})


def capability_members() -> set[str]:
    """Every name a capability Protocol defines (methods and attributes)."""
    names: set[str] = set()
    for _, cls in inspect.getmembers(capabilities, inspect.isclass):
        if issubclass(cls, Protocol) and cls.__module__ == capabilities.__name__:
            names |= {n for n in vars(cls) if not n.startswith("_")}
    return names


def _last_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _says_why(lines: list[str], first: int, last: int) -> bool:
    """The mark is on the call's lines or in the comment block right above it."""
    if any(MARK in line for line in lines[first - 1:last]):
        return True
    i = first - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        if MARK in lines[i]:
            return True
        i -= 1
    return False


def probes(path: Path, members: set[str]) -> list[tuple[int, str]]:
    """(line, why) of every getattr/hasattr call in the module that is a capability probe or
    does not say why it is not one."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = []
    for node in ast.walk(ast.parse(text)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in PROBES and node.args):
            continue
        call = ast.unparse(node)
        target = _last_name(node.args[0]).lower()
        name = node.args[1].value if len(node.args) > 1 and isinstance(
            node.args[1], ast.Constant) else None
        if target in PARTS or target.endswith(tuple(f"_{p}" for p in PARTS)):
            out.append((node.lineno, f"{call}: asks a platform part; use isinstance with a "
                                     "Protocol of kiln.platforms.capabilities"))
        elif name in members:
            out.append((node.lineno, f"{call}: {name!r} is a capability; use isinstance"))
        elif not _says_why(lines, node.lineno, node.end_lineno or node.lineno):
            out.append((node.lineno, f"{call}: say why it is not a capability probe "
                                     f"({MARK} ...), or use a Protocol"))
    return sorted(out)


def test_no_capability_probes_in_src() -> None:
    members = capability_members()
    found = [f"{p.relative_to(SRC)}:{line}: {why}" for p in sorted(SRC.rglob("*.py"))
             for line, why in probes(p, members)]
    assert found == [], "\n".join(found)


def test_the_capability_names_are_known() -> None:
    members = capability_members()
    assert {"is_running", "sweep", "verify", "resolve", "use_locator", "drift"} <= members


def test_the_check_sees_probes(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text(
        'import sys\n'                                                             # 1
        'def f(builder, router, exc, self, platform):\n'                            # 2
        '    if hasattr(builder, "locate"):\n'                                     # 3 a part
        '        pass\n'                                                           # 4
        '    # not a capability probe: it is, though\n'                           # 5
        '    getattr(router, "is_running", None)\n'                                # 6 a part
        '    getattr(exc, "sweep", None)  # not a capability probe: a name of one\n'  # 7
        '    getattr(exc, "reason", exc)\n'                                        # 8 no reason
        '    # not a capability probe: urllib errors may have no reason\n'         # 9
        '    getattr(exc, "reason", exc)\n'                                        # 10 fine
        '    getattr(sys, "_base_executable", None)  # not a capability probe: CPython\n'  # 11
        '    hasattr(self.platform, "drift")\n'                                    # 12 a part
        '    getattr(self._compute, "x")\n')                                       # 13 a part
    assert [line for line, _ in probes(mod, capability_members())] == [3, 6, 7, 8, 12, 13]
