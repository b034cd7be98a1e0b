"""One line for a YAML syntax error: `file:line:col: invalid YAML: what (while doing what)`.

libyaml finds the error fast; ruamel.yaml's messages say more ("expected ',' or ']', but got
':'" where libyaml says "did not find expected ',' or ']'"), so a file libyaml refused is parsed
again by ruamel for its wording, when that is cheap (files up to DIAGNOSE_BYTES). Larger files,
or errors ruamel does not see, keep libyaml's own message and mark.
"""

from __future__ import annotations

import warnings
from typing import Any

import yaml

__all__ = ["DIAGNOSE_BYTES", "syntax_error"]

DIAGNOSE_BYTES = 512 * 1024


def syntax_error(text: str, filename: str, exc: yaml.YAMLError) -> str:
    """The problem line for `exc`, raised by libyaml on `text`."""
    if len(text) <= DIAGNOSE_BYTES:
        worded = _ruamel_line(text, filename)
        if worded is not None:
            return worded
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        what = _one_line(exc.problem or exc.context or "cannot parse")
        if exc.context and exc.problem:
            what = f"{what} ({_one_line(exc.context)})"
        return f"{filename}:{where}: invalid YAML: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        line, col = offset_pos(text, exc.position)
        return (f"{filename}:{line}:{col}: invalid YAML: special character "
                f"#x{exc.character if isinstance(exc.character, int) else 0:04x} is not allowed")
    return f"{filename}:1:1: invalid YAML: {_one_line(str(exc))}"


def _ruamel_line(text: str, filename: str) -> str | None:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

    parser: Any = YAML(typ="rt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = _one_line(exc.problem or exc.context or "cannot parse")
        if exc.context and exc.problem:
            what = f"{what} ({_one_line(exc.context)})"
        return f"{filename}:{line}:{col}: invalid YAML: {what}"
    except ReaderError as exc:
        line, col = offset_pos(text, exc.position)
        return (f"{filename}:{line}:{col}: invalid YAML: special character "
                f"#x{exc.character if isinstance(exc.character, int) else 0:04x} is not allowed")
    except RecursionError:
        return f"{filename}:1:1: invalid YAML: nested too deeply"
    except (YAMLError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        return f"{filename}:1:1: invalid YAML: {_one_line(str(exc))}"
    return None


def offset_pos(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
