"""build-tfrecords detector boxes: parse Detic / YOLOv5 / x1..y2 box formats and turn a box into a crop."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tfrecords_builder.errors import BuildInputError

if TYPE_CHECKING:  # pandas stays out of the image workers, which import crop_region from here
    import pandas as pd

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in source-image pixels
Candidate = tuple[Box, float | None]  # a box and its detector confidence, when known

CORNER_COLUMNS = ("x1", "y1", "x2", "y2")
ACCEPTED_FORMATS = (
    "a 'box' column with 'x1 y1 x2 y2' (Detic; spaces or commas)",
    "a 'bbox' column with '[[x1 y1 x2 y2]]' and an optional 'conf' column ('[0.88]' or '0.88') (YOLOv5)",
    "columns 'x1', 'y1', 'x2', 'y2' and an optional 'conf' column",
)
_EMPTY_TEXTS = {"", "nan", "none", "[]", "[[]]"}
_SEPARATORS = re.compile(r"[\s,\[\]]+")


def _numbers(text: str) -> list[float]:
    """Every number in a box or confidence cell; ValueError when something else is there."""
    if text.count("[") != text.count("]"):
        raise ValueError(f"unbalanced brackets in {text!r}")
    tokens = [token for token in _SEPARATORS.split(text) if token]
    try:
        return [float(token) for token in tokens]
    except ValueError:
        raise ValueError(f"not a list of numbers: {text!r}") from None


def parse_box_list(text: str) -> list[Box]:
    """All boxes in a cell: 'x1 y1 x2 y2', 'x1,y1,x2,y2', '[[x1 y1 x2 y2]]' or '[[..] [..]]'; empty -> []."""
    if text.strip().lower() in _EMPTY_TEXTS:
        return []
    values = _numbers(text.strip())
    if not values or len(values) % 4:
        raise ValueError(f"malformed box {text!r}: expected groups of 4 numbers x1 y1 x2 y2")
    return [tuple(values[i : i + 4]) for i in range(0, len(values), 4)]  # type: ignore[misc]


def parse_conf_list(text: str) -> list[float]:
    """Detector confidences: '0.88', '[0.88]', '[0.88 0.4]'; empty -> []."""
    if text.strip().lower() in _EMPTY_TEXTS:
        return []
    return _numbers(text.strip())


def box_area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def parse_box_text(text: str) -> Box | None:
    """One box from a cell ("" / "nan" / "[]" -> None); of several, the largest. Malformed -> ValueError."""
    boxes = parse_box_list(text)
    return max(boxes, key=box_area) if boxes else None


def format_box(box: Box | None) -> str:
    """Text that parse_box_text reads back to the same box; "" for no box."""
    if box is None:
        return ""
    return " ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in box)


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


def read_boxes_csv(csv_path: str, min_conf: float = 0.0) -> dict[str, Box | None]:
    """image -> box from a detector CSV in any accepted format; rows of the same image pool their boxes."""
    # tables imports this module for box_column_text, so its CSV reader is fetched at call time.
    from tfrecords_builder.tables import read_csv_table

    table = read_csv_table(csv_path, ("image",))
    if box_format(list(table.columns)) is None:
        formats = "; ".join(ACCEPTED_FORMATS)
        found = [name for name in table.columns if name != "row"]
        raise BuildInputError(f"{csv_path}: no box columns; found {found}. Accepted formats: {formats}")
    candidates = table_candidates(table, csv_path, min_conf)
    pooled: dict[str, list[Candidate]] = {}
    for image, cands in zip(table["image"].tolist(), candidates, strict=True):
        if image:
            pooled.setdefault(image, []).extend(cands)
    boxes = {image: choose_box(cands, min_conf) for image, cands in pooled.items()}
    with_box = sum(box is not None for box in boxes.values())
    logger.info("%s: boxes for %d of %d images (min_conf=%g)", csv_path, with_box, len(boxes), min_conf)
    return boxes


def crop_region(
    box: Box | None, width: int, height: int, enlarge: float = 1.2
) -> tuple[tuple[int, int, int, int], str | None]:
    """Integer (left, top, right, bottom) crop: the box grown about its centre by `enlarge`, clamped.

    No box -> whole image, reason None. A box that cannot be used (non-finite, zero or negative area, entirely
    outside the image) -> whole image and the reason, for the caller to count. Never an empty region.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not enlarge > 0:
        raise ValueError(f"enlarge must be positive, got {enlarge}")
    whole = (0, 0, int(width), int(height))
    if box is None:
        return whole, None
    reason = _unusable_reason(box, width, height)
    if reason:
        return whole, reason
    x1, y1, x2, y2 = box
    half_w, half_h = (x2 - x1) * enlarge / 2, (y2 - y1) * enlarge / 2
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    # Rounding first keeps float noise (7.9999999) from costing a pixel on exact hand-checkable edges.
    left = max(0, math.floor(round(centre_x - half_w, 6)))
    top = max(0, math.floor(round(centre_y - half_h, 6)))
    right = min(int(width), math.ceil(round(centre_x + half_w, 6)))
    bottom = min(int(height), math.ceil(round(centre_y + half_h, 6)))
    if right <= left or bottom <= top:  # only a shrinking `enlarge` can move the crop off the image
        return whole, "box outside image"
    return (left, top, right, bottom), None


def _unusable_reason(box: Box, width: int, height: int) -> str | None:
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return "box has non-finite coordinates"
    if x2 == x1 or y2 == y1:
        return "box has zero area"
    if x2 < x1 or y2 < y1:
        return "box corners are inverted (x2 < x1 or y2 < y1)"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return "box outside image"
    return None
