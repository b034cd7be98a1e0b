"""A test that sends Ctrl-C (SIGINT) to a child must give that child the default SIGINT
disposition (`preexec_fn=default_sigint`, kiln.testing.project): a suite started in the
background (`./scripts/test &`) runs with SIGINT ignored, every child inherits that, and a Python
child then never raises KeyboardInterrupt (issue #19: the two Ctrl-C tests timed out there).

Static: for every `X.send_signal(signal.SIGINT)` / `os.kill(X.pid, signal.SIGINT)` under tests/
and src/kiln/testing/, the `subprocess.Popen` that made X (in the same function, or in the
context manager it came from, `with helper(...) as X`) passes `preexec_fn=default_sigint`. The
proof that it works at run time is running those tests with SIGINT ignored
(docs/decisions/sigint-in-background-runs.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACES = [ROOT / "tests", ROOT / "src" / "kiln" / "testing"]


def _is_sigint(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "SIGINT") or (
        isinstance(node, ast.Constant) and node.value == 2)


def _target(call: ast.Call) -> str | None:
    """The name of the process a call sends SIGINT to, if it does."""
    f = call.func
    if isinstance(f, ast.Attribute) and f.attr == "send_signal" and call.args \
            and _is_sigint(call.args[0]) and isinstance(f.value, ast.Name):
        return f.value.id
    if isinstance(f, ast.Attribute) and f.attr in ("kill", "killpg") and len(call.args) == 2 \
            and _is_sigint(call.args[1]):
        arg = call.args[0]
        if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
            return arg.value.id  # os.kill(proc.pid, SIGINT)
        if isinstance(arg, ast.Call) and ast.unparse(arg.func) == "os.getpid":
            return SELF  # the test's own process: it must restore the default handler itself
        return "?"
    return None


SELF = "<this process>"
DEFAULT_HANDLER = "signal.signal(signal.SIGINT, signal.default_int_handler)"


def _restores_handler(module: ast.Module, call: ast.Call) -> bool:
    """A function that holds `call` (itself or one it is nested in) sets the default SIGINT
    handler, so the ^C raises KeyboardInterrupt also when the run ignores SIGINT."""
    return any(isinstance(f, ast.FunctionDef) and call in list(ast.walk(f))
               and any(isinstance(c, ast.Call) and ast.unparse(c) == DEFAULT_HANDLER
                       for c in ast.walk(f))
               for f in ast.walk(module))


def _popens(node: ast.AST) -> list[ast.Call]:
    return [c for c in ast.walk(node) if isinstance(c, ast.Call)
            and ast.unparse(c.func) in ("subprocess.Popen", "Popen")]


def _defaults_sigint(popen: ast.Call) -> bool:
    return any(k.arg == "preexec_fn" and ast.unparse(k.value) == "default_sigint"
               for k in popen.keywords)


def _sources(func: ast.AST, name: str, module: ast.Module) -> list[ast.Call] | None:
    """The Popen calls that can have made `name` in `func` (None: not found)."""
    defs = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return _popens(node.value) or None
        if isinstance(node, ast.With):
            for item in node.items:
                var = item.optional_vars
                if isinstance(var, ast.Name) and var.id == name \
                        and isinstance(item.context_expr, ast.Call):
                    helper = defs.get(ast.unparse(item.context_expr.func))
                    return _popens(helper) or None if helper is not None else None
    return None


def undefaulted(path: Path) -> list[str]:
    module = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for func in ast.walk(module):
        if not isinstance(func, ast.FunctionDef):
            continue
        for call in ast.walk(func):
            if not isinstance(call, ast.Call):
                continue
            name = _target(call)
            if name is None:
                continue
            if name == SELF:
                if not _restores_handler(module, call):
                    out.append(f"{path.name}:{call.lineno}: {func.name} sends SIGINT to this "
                               f"process without setting `{DEFAULT_HANDLER}` first")
                continue
            made = _sources(func, name, module)
            if made is None or not all(_defaults_sigint(p) for p in made):
                out.append(f"{path.name}:{call.lineno}: {func.name} sends SIGINT to {name}, "
                           "whose Popen does not pass preexec_fn=default_sigint")
    return out


def sigint_senders() -> list[Path]:
    return [p for place in PLACES for p in sorted(place.rglob("*.py"))
            if p.name != Path(__file__).name and "SIGINT" in p.read_text(encoding="utf-8")]


def test_every_child_a_test_interrupts_gets_the_default_sigint() -> None:
    found = [line for p in sigint_senders() for line in undefaulted(p)]
    assert found == [], "\n".join(found)


def test_the_ctrl_c_tests_are_seen() -> None:
    assert {p.name for p in sigint_senders()} >= {"test_cli.py", "test_deploy_e2e.py"}


def test_the_check_sees_a_child_left_with_the_callers_disposition(tmp_path: Path) -> None:
    mod = tmp_path / "test_m.py"
    mod.write_text(
        "import os, signal, subprocess\n"
        "from contextlib import contextmanager\n"
        "@contextmanager\n"
        "def running():\n"
        "    yield subprocess.Popen(['kiln'])\n"
        "def test_a():\n"
        "    p = subprocess.Popen(['kiln'], preexec_fn=default_sigint)\n"
        "    p.send_signal(signal.SIGINT)\n"                                 # 8 fine
        "def test_b():\n"
        "    p = subprocess.Popen(['kiln'])\n"
        "    p.send_signal(signal.SIGINT)\n"                                 # 11
        "def test_c():\n"
        "    with running() as p:\n"
        "        os.kill(p.pid, signal.SIGINT)\n"                            # 14
        "def test_d(pid):\n"
        "    os.kill(pid, signal.SIGINT)\n")                                 # 16 unknown child
    assert [int(line.split(":")[1]) for line in undefaulted(mod)] == [11, 14, 16]
