"""The crop contract shared by build-tfrecords and identify: box text, and a box -> crop region."""

from __future__ import annotations

import math
import re

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in source-image pixels


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
