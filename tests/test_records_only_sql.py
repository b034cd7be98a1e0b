"""SQL lives in the records layer (kiln.state.records) and the store (kiln.state.store) only.

Anywhere else under src/ fails: a string (plain, f-string, triple-quoted) shaped like an SQL
statement, a `.execute(` / `.executemany(` / `.executescript(` call, or SQL handed to the
store's funnels (`store.query(...)`, `store.one(...)`) whatever the argument is. Docstrings are
not looked at: they are never executed (board.py's module docstring explains `PRAGMA
data_version` in prose); a comment is not a string, so `ast` never sees it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
LAYER = ("kiln/state/records/", "kiln/state/store.py")

_STATEMENT = (
    r"SELECT\b.*\bFROM\b|SELECT\s+([\d(*'?]|\w+\()|INSERT\s+(OR\s+\w+\s+)?INTO\b"
    r"|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX|UNIQUE|TRIGGER|VIEW|TEMP)\b"
    r"|REPLACE\s+INTO\b|WITH\s+(RECURSIVE\s+)?\w+\s*(\([^)]*\))?\s*AS\s*\("
    r"|PRAGMA\s+\w+|DROP\s+(TABLE|INDEX|TRIGGER|VIEW)\b|ALTER\s+TABLE\b"
    r"|BEGIN\s+(IMMEDIATE|EXCLUSIVE|DEFERRED)\b")
# A string that starts like a statement, in any case ("select x from t")...
SQL_START = re.compile(r"\s*(" + _STATEMENT + ")", re.IGNORECASE | re.DOTALL)
# ...or holds one in SQL's capitals anywhere (after a comment, a newline, an f-string field).
# Prose rarely starts like a statement and never shouts one: "update the spec", "select a
# service from the list", "Selected items from ..." and an HTTP "DELETE" are not statements.
SQL_ANYWHERE = re.compile(_STATEMENT, re.DOTALL)
# The cursor calls of sqlite3, and the store's funnels that take SQL as their first argument.
CURSOR_CALLS = frozenset({"execute", "executemany", "executescript"})
STORE_FUNNELS = frozenset({"query", "one"})


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant) \
                and isinstance(node.body[0].value.value, str):
            out.add(id(node.body[0].value))
    return out


def _receiver(node: ast.expr) -> str:
    """The last name of a call's receiver: `store` for `self.env.store.query`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def sql_uses(path: Path) -> list[tuple[int, str]]:
    """(line, what) of every SQL string and SQL call in the module (an f-string is read with
    its fields as `{}`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    skip = parts | _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in CURSOR_CALLS or (name in STORE_FUNNELS and _receiver(
                    node.func.value).lower().endswith("store")):
                out.append((node.lineno, f"{ast.unparse(node.func)}(...)"))
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in skip:
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str)
                           else "{}" for v in node.values)
        else:
            continue
        if SQL_START.match(text) or SQL_ANYWHERE.search(text):
            out.append((node.lineno, text.strip()[:40]))
    return sorted(out)


def offenders() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(LAYER):
            continue
        hits = sql_uses(path)
        if hits:
            found[rel] = hits
    return found


def test_no_sql_outside_the_records_layer() -> None:
    found = offenders()
    assert found == {}, "SQL outside kiln.state.records (move it there): " + "; ".join(
        f"{f}:{line}: {text!r}" for f, hits in found.items() for line, text in hits)


def test_the_check_sees_sql(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text(
        '"""A docstring may say SELECT * FROM t: it never runs."""\n'          # 1 docstring
        'A = "select x from t"\n'                                              # 2
        'B = f"DELETE FROM {t} WHERE 1"\n'                                     # 3 f-string
        'C = ("WITH q AS (SELECT 1) "\n     "SELECT * FROM q")\n'               # 4 joined
        'D = "Selected items from the list"\n'                                 # 6 prose
        'E = "update the spec"\n'                                              # 7 prose
        'F = "SELECT COUNT(*) AS n FROM t"\n'                                  # 8
        'G = "delete from t"\n'                                                # 9
        'H = """\n    -- the newest first\n    SELECT id\n    FROM t\n"""\n'     # 10 triple
        'I = f"{head} UPDATE t SET x = 1"\n'                                   # 15 in f-string
        'def f(conn, store, sql):\n'                                           # 16
        '    """Reads: SELECT x FROM y."""\n'                                  # 17 docstring
        '    conn.execute(sql)\n'                                              # 18 any argument
        '    store.query(sql)\n'                                               # 19 store funnel
        '    store.one(sql)\n'                                                 # 20
        '    self.env.store.query(sql)\n'                                      # 21
        '    source.query(promql)\n'                                           # 22 not a store
        '    J = "PRAGMA data_version"\n'                                      # 23
        '    K = ("DELETE", url)\n'                                            # 24 an HTTP verb
        '    # SELECT x FROM y in a comment is not a string\n')
    assert [line for line, _ in sql_uses(mod)] == [2, 3, 4, 8, 9, 10, 15, 18, 19, 20, 21, 23]


def test_the_layer_is_where_the_sql_is() -> None:
    """The detector is not blind: inside the layer it finds the statements that moved there."""
    layer = [p for p in sorted((SRC / "kiln" / "state" / "records").glob("*.py"))
             if sql_uses(p)]
    assert len(layer) >= 10, [p.name for p in layer]
