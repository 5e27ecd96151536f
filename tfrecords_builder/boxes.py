"""build-tfrecords detector boxes: the Detic / YOLOv5 / x1..y2 table formats; one box per photo."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tfrecords_builder.errors import BuildInputError
from tfwhale.imaging.box_choice import CORNER_COLUMNS, Candidate, box_format, choose_box
from tfwhale.imaging.box_choice import pair as _pair
from tfwhale.imaging.crop_box import format_box, parse_box_list, parse_conf_list

if TYPE_CHECKING:
    import pandas as pd

ACCEPTED_FORMATS = (
    "a 'box' column with 'x1 y1 x2 y2' (Detic; spaces or commas)",
    "a 'bbox' column with '[[x1 y1 x2 y2]]' and an optional 'conf' column ('[0.88]' or '0.88') (YOLOv5)",
    "columns 'x1', 'y1', 'x2', 'y2' and an optional 'conf' column",
)


def _parse_cell(parse: Callable[[str], list], text: str, source: str, row: int, field: str) -> list:
    try:
        return parse(text)
    except ValueError as err:
        raise BuildInputError(f"{source}: row {row}, field '{field}': {err}") from None


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
        candidates.append(_pair(boxes, confs, min_conf))
    return candidates


def box_column_text(table: pd.DataFrame, source: str, min_conf: float = 0.0) -> pd.Series:
    """The chosen box of each row as 'x1 y1 x2 y2' text ("" for none), from the table's own box columns.

    Tables without box columns get "" everywhere. Bad cells -> BuildInputError naming source, row, field.
    """
    chosen = [format_box(choose_box(cands, min_conf)) for cands in table_candidates(table, source, min_conf)]
    import pandas as pd

    return pd.Series(chosen, index=table.index, dtype=object)
