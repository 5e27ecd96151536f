"""Box tables (imaging): a detector CSV, or a train/test CSV's own box columns -> each photo's chosen box.

One reader for build-tfrecords (strict: a bad table is an error naming its file, row and field) and for
the views of a build's originals (lenient: an unreadable table is logged and gives no boxes), so both find
the box a photo was cropped by the same way; the choice itself is box_choice's rule.
"""

from __future__ import annotations

import difflib
import io
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tfwhale.core import files
from tfwhale.imaging.box_choice import CORNER_COLUMNS, Candidate, box_format, choose_box, pair
from tfwhale.imaging.crop_box import Box, format_box, parse_box_list, parse_conf_list

if TYPE_CHECKING:  # pandas loads in about a second: only the readers that need it import it
    import pandas as pd

logger = logging.getLogger(__name__)

FIRST_DATA_LINE = 2  # line 1 is the header
ACCEPTED_FORMATS = (
    "a 'box' column with 'x1 y1 x2 y2' (Detic; spaces or commas)",
    "a 'bbox' column with '[[x1 y1 x2 y2]]' and an optional 'conf' column ('[0.88]' or '0.88') (YOLOv5)",
    "columns 'x1', 'y1', 'x2', 'y2' and an optional 'conf' column",
)


class TableError(ValueError):
    """A CSV table that cannot be read; the message names the file, and the row and field at fault."""


def read_csv_table(csv_path: str, required: Sequence[str]) -> pd.DataFrame:
    """All cells as stripped strings ("" when empty) plus a `row` column: the 1-based CSV line of each row.

    TableError when the file is missing, has no data rows, or lacks a required column.
    Row numbers assume one line per record (no quoted line breaks).
    """
    import pandas as pd

    if not files.exists(csv_path):
        raise TableError(f"{csv_path}: file not found")
    text = _decode_utf8(csv_path, files.read_bytes(csv_path))
    try:
        # Blank lines are read (as all-empty rows, dropped below) so that row numbers stay line numbers.
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise TableError(f"{csv_path}: file is empty (expected columns {list(required)})") from None
    except pd.errors.ParserError as err:
        raise TableError(f"{csv_path}: not a readable CSV: {err}") from None
    table.columns = [str(name).strip().lstrip("\ufeff") for name in table.columns]
    _check_columns(csv_path, list(table.columns), required)
    table = table.apply(lambda column: column.str.strip())
    table["row"] = range(FIRST_DATA_LINE, FIRST_DATA_LINE + len(table))
    table = table[table.drop(columns="row").ne("").any(axis=1)]
    if table.empty:
        raise TableError(f"{csv_path}: no data rows (only a header)")
    return table.reset_index(drop=True)


def _decode_utf8(csv_path: str, data: bytes) -> str:
    """The CSV as text; a non-UTF-8 file is refused naming the line and the bytes (not only an offset)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        bad = data[err.start : err.start + 4]
        raise TableError(
            f"{csv_path}: line {line}: not UTF-8 (bytes {bad!r} at byte {err.start}); save the file as "
            "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _check_columns(csv_path: str, found: list[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in found]
    if not missing:
        return
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, found, n=1, cutoff=0.6)
        if close:
            hints.append(f"column '{close[0]}' looks like a misspelling of '{name}'")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise TableError(
        f"{csv_path}: missing column(s) {missing}{hint}; expected columns {list(required)}, found {found}"
    )


def _parse_cell(parse: Callable[[str], list], text: str, source: str, row: int, field: str) -> list:
    try:
        return parse(text)
    except ValueError as err:
        raise TableError(f"{source}: row {row}, field '{field}': {err}") from None


def _cell_texts(table: pd.DataFrame, fmt: str) -> tuple[pd.Series, pd.Series, str]:
    """Per row: the box text, the confidence text, and the field name to blame in errors."""
    import pandas as pd

    conf = table["conf"] if "conf" in table.columns else pd.Series("", index=table.index)
    if fmt != "corners":
        return table[fmt], conf, fmt
    corners = table[list(CORNER_COLUMNS)]
    text = corners.agg(" ".join, axis=1).where(corners.ne("").any(axis=1), "")
    return text, conf, ",".join(CORNER_COLUMNS)


def table_candidates(table: pd.DataFrame, source: str, min_conf: float = 0.0) -> list[list[Candidate]]:
    """Candidate boxes for every row of a table read by read_csv_table (needs its `row` column)."""
    fmt = box_format(list(table.columns))
    if fmt is None:
        return [[] for _ in range(len(table))]
    box_texts, conf_texts, field = _cell_texts(table, fmt)
    candidates = []
    # Plain lists: iterating pandas string columns element by element is several times slower.
    cells = zip(box_texts.tolist(), conf_texts.tolist(), table["row"].tolist(), strict=True)
    for box_text, conf_text, row in cells:
        boxes = _parse_cell(parse_box_list, box_text, source, row, field)
        confs = _parse_cell(parse_conf_list, conf_text, source, row, "conf")
        candidates.append(pair(boxes, confs, min_conf))
    return candidates


def box_column_text(table: pd.DataFrame, source: str, min_conf: float = 0.0) -> pd.Series:
    """The chosen box of each row as 'x1 y1 x2 y2' text ("" for none), from the table's own box columns.

    Tables without box columns get "" everywhere. Bad cells -> TableError naming source, row, field.
    """
    import pandas as pd

    chosen = [format_box(choose_box(cands, min_conf)) for cands in table_candidates(table, source, min_conf)]
    return pd.Series(chosen, index=table.index, dtype=object)


def read_box_table(csv_path: str, min_conf: float = 0.0, *, strict: bool = True) -> dict[str, Box | None]:
    """image -> box from a CSV's box columns in any accepted format; rows of the same image pool their boxes.

    strict: a table that is unreadable, malformed or without box columns is a TableError (file, row, field).
    lenient: such a table gives {} (logged, except a table without box columns: nothing was boxed).
    """
    try:
        table = read_csv_table(csv_path, ("image",))
        if box_format(list(table.columns)) is None:
            formats = "; ".join(ACCEPTED_FORMATS)
            found = [name for name in table.columns if name != "row"]
            raise _NoBoxColumns(f"{csv_path}: no box columns; found {found}. Accepted formats: {formats}")
        candidates = table_candidates(table, csv_path, min_conf)
    except (TableError, OSError) as err:
        if strict:
            raise
        if not isinstance(err, _NoBoxColumns):
            logger.warning("%s: boxes not readable (%s): originals are shown without boxes", csv_path, err)
        return {}
    pooled: dict[str, list[Candidate]] = {}
    for image, cands in zip(table["image"].tolist(), candidates, strict=True):
        if image:
            pooled.setdefault(image, []).extend(cands)
    boxes = {image: choose_box(cands, min_conf) for image, cands in pooled.items()}
    with_box = sum(box is not None for box in boxes.values())
    logger.info("%s: boxes for %d of %d images (min_conf=%g)", csv_path, with_box, len(boxes), min_conf)
    return boxes


class _NoBoxColumns(TableError):
    """A table without box columns: an error for a --boxes table, no boxes for a train.csv."""
