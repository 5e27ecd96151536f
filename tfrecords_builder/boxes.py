"""build-tfrecords detector boxes: the Detic / YOLOv5 / x1..y2 table formats; one box per photo."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tfrecords_builder.errors import BuildInputError
from tfwhale.imaging.crop_box import Box, box_area, format_box, parse_box_list, parse_conf_list

if TYPE_CHECKING:
    import pandas as pd

Candidate = tuple[Box, float | None]  # a box and its detector confidence, when known

CORNER_COLUMNS = ("x1", "y1", "x2", "y2")
ACCEPTED_FORMATS = (
    "a 'box' column with 'x1 y1 x2 y2' (Detic; spaces or commas)",
    "a 'bbox' column with '[[x1 y1 x2 y2]]' and an optional 'conf' column ('[0.88]' or '0.88') (YOLOv5)",
    "columns 'x1', 'y1', 'x2', 'y2' and an optional 'conf' column",
)


def choose_box(candidates: Sequence[Candidate], min_conf: float = 0.0) -> Box | None:
    """The most confident box when every candidate has a confidence, else the largest.

    Candidates below `min_conf` never win; a box without a confidence is kept (nothing says it is weak).
    """
    kept = [(box, conf) for box, conf in candidates if conf is None or conf >= min_conf]
    if not kept:
        return None
    if all(conf is not None for _, conf in kept):
        return max(kept, key=lambda cand: cand[1])[0]
    return max(kept, key=lambda cand: box_area(cand[0]))[0]


def box_format(columns: Sequence[str]) -> str | None:
    """Which box format a table's columns hold: 'box', 'bbox', 'corners', or None for no boxes."""
    if "box" in columns:
        return "box"
    if "bbox" in columns:
        return "bbox"
    if all(name in columns for name in CORNER_COLUMNS):
        return "corners"
    return None


def _pair(boxes: list[Box], confs: list[float], min_conf: float) -> list[Candidate]:
    if len(confs) == len(boxes):
        return list(zip(boxes, confs, strict=True))
    # Confidences that do not pair up with the boxes cannot rank them, but still say when all are weak.
    if confs and max(confs) < min_conf:
        return []
    return [(box, None) for box in boxes]


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
