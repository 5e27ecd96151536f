"""CSV text for every CSV tfwhale writes: a real csv writer, and rows with carriage returns quoted whole."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

# Spreadsheets run a cell starting with these as a formula (tab and CR too: some strip them first).
FORMULA_STARTS = ("=", "+", "-", "@", "|", "\t", "\r")


def csv_text(rows: Iterable[Sequence[object]]) -> str:
    """Rows as CSV text, lines ending in '\\n'. csv's minimal quoting leaves a lone '\\r' bare when
    lines end in '\\n' (readers then split the row there): a row holding one has every cell quoted."""
    out = io.StringIO()
    minimal = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        cells = ["" if cell is None else str(cell) for cell in row]
        (quoted if any("\r" in cell for cell in cells) else minimal).writerow(cells)
    return out.getvalue()


def spreadsheet_safe(value: object) -> str:
    """A cell from user text that a spreadsheet shows as text: formula starts get a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text
