"""Column layout that fits the terminal: whole words, never a cell broken mid-word.

On a terminal (a width is given) columns marked optional are dropped, least useful first, until
the row fits; a free-text NOTE goes in the last column when it fits there, else on its own
indented line(s) under its row, wrapped at word boundaries. Piped (no width), every column is
kept and each row is one full line, so grep and cut see whole records.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.text import Text

GAP = "  "


@dataclass(frozen=True)
class Column:
    header: str
    optional: int = 0
    """0: always shown; higher numbers are dropped first when the terminal is too narrow."""


Cell = str | Text


def _len(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else len(cell)


def layout(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int | None,
           notes: Sequence[str] | None = None, note_header: str = "NOTE") -> Group:
    """Rows of cells under headers; `notes` (one per row, may be empty) as described above."""
    keep = list(range(len(columns)))
    widths = [max([len(c.header)] + [_len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def total(idx: list[int]) -> int:
        return sum(widths[i] for i in idx) + len(GAP) * (len(idx) - 1)

    if width is not None:
        for level in sorted({c.optional for c in columns if c.optional}, reverse=True):
            if total(keep) <= width:
                break
            keep = [i for i in keep if columns[i].optional != level]
    has_notes = notes is not None and any(notes)
    note_width = max([len(note_header)] + [len(n) for n in notes or []])
    inline = has_notes and (width is None or total(keep) + len(GAP) + note_width <= width)
    lines: list[Text] = []

    def row_text(cells: Sequence[Cell], note: str | None, bold: bool = False) -> Text:
        text = Text(style="bold" if bold else "")
        for n, i in enumerate(keep):
            cell = cells[i]
            piece = cell if isinstance(cell, Text) else Text(cell)
            last = n == len(keep) - 1 and note is None
            text.append_text(piece)
            if not last:
                text.append(" " * (widths[i] - _len(cell)) + GAP)
        if note is not None:
            text.append(note)
        return text

    headers = [c.header for c in columns]
    lines.append(row_text(headers, note_header if inline else None, bold=True))
    for r, cells in enumerate(rows):
        note = notes[r] if notes is not None else ""
        lines.append(row_text(cells, note if inline else None))
        if has_notes and not inline and note:
            indent = " " * 4
            assert width is not None
            for part in textwrap.wrap(note, max(width - len(indent), 20),
                                      break_on_hyphens=False):
                lines.append(Text(indent + part, style="dim"))
    return Group(*lines)
