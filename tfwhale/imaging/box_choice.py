"""Which detector box a photo is cropped by (imaging): the box-table formats and the one choice rule.

build-tfrecords chooses each photo's box with it; the catalogue app uses it to find the box a build cropped
a photo by when it exports that photo's original. One rule, so both always agree.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfwhale.imaging.crop_box import Box, box_area

Candidate = tuple[Box, float | None]  # a box and its detector confidence, when known

CORNER_COLUMNS = ("x1", "y1", "x2", "y2")


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


def pair(boxes: list[Box], confs: list[float], min_conf: float) -> list[Candidate]:
    """One row's boxes with their confidences, when the two lists pair up."""
    if len(confs) == len(boxes):
        return list(zip(boxes, confs, strict=True))
    # Confidences that do not pair up with the boxes cannot rank them, but still say when all are weak.
    if confs and max(confs) < min_conf:
        return []
    return [(box, None) for box in boxes]
