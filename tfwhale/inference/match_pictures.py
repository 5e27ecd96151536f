"""identify --explain: per query, a picture of its crop beside each top candidate's best photo, with the
verified matches drawn as lines, so that a person can check a match by eye.

The crops are the match-size crops local features were taken from (query.local.match_crop); the matches'
positions are in each photo's matching image and are scaled to the drawn crop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.imaging.crop_box import parse_box_text
from tfwhale.imaging.photo_crop import ImageError
from tfwhale.matching.pairs import PairMatch
from tfwhale.matching.photo import match_crop
from tfwhale.query.answers import QueryAnswer
from tfwhale.query.gallery import QueryError
from tfwhale.query.local import LocalRerankPath
from tfwhale.query.path import QueryPath
from tfwhale.query.records_photos import RecordsPhotos

logger = logging.getLogger(__name__)

PANEL = 320  # px, the long side of each drawn crop
TITLE = 28  # px above each pair
GAP = 8
CANDIDATES = 3  # top candidates drawn per query
MAX_LINES = 100  # more lines hide the photos: an even sample of the inliers is drawn
COLOURS = ((0, 255, 0), (255, 200, 0), (0, 200, 255), (255, 0, 255), (255, 255, 0))


@dataclass(frozen=True)
class Candidate:
    label: str
    probability: float
    photo: str | None  # the gallery photo name of its best verified photo (None: no verified pair)
    match: PairMatch | None


def _panel(rgb: np.ndarray | None) -> np.ndarray:
    """The crop resized to PANEL on its long side, or a grey square."""
    if rgb is None:
        return np.full((PANEL, PANEL, 3), 96, np.uint8)
    scale = PANEL / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _pair_row(query_rgb, query_features: LocalFeatures, gallery_rgb, gallery_size, candidate: Candidate):
    """One row: title, query panel | gallery panel, the inlier matches as lines across."""
    left, right = _panel(query_rgb), _panel(gallery_rgb)
    match = None if gallery_rgb is None else candidate.match  # no photo: nothing to draw lines to
    pair = draw_matches(left, query_features.image_size, right, gallery_size, match)
    row = np.full((TITLE + pair.shape[0], pair.shape[1], 3), 255, np.uint8)
    row[TITLE:] = pair
    inliers = 0 if candidate.match is None else candidate.match.inliers
    title = f"{candidate.label}  P={candidate.probability:.2f}  {inliers} verified matches"
    cv2.putText(row, title, (4, TITLE - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return row


def draw_matches(
    left: np.ndarray,
    left_size: tuple[int, int],
    right: np.ndarray,
    right_size: tuple[int, int],
    match: PairMatch | None,
) -> np.ndarray:
    """RGB uint8: two pictures side by side (GAP px apart, white behind) and a match's inliers as lines
    across. left_size, right_size: (width, height) of the matching images the match's positions are in;
    each picture shows the same crop at any size or aspect (a square-stretched thumbnail included)."""
    height = max(left.shape[0], right.shape[0])
    pair = np.full((height, left.shape[1] + GAP + right.shape[1], 3), 255, np.uint8)
    pair[: left.shape[0], : left.shape[1]] = left
    offset = left.shape[1] + GAP
    pair[: right.shape[0], offset:] = right
    if match is None or not match.inliers:
        return pair
    left_scale = np.array([left.shape[1], left.shape[0]]) / np.maximum(left_size, 1)
    right_scale = np.array([right.shape[1], right.shape[0]]) / np.maximum(right_size, 1)
    drawn = np.unique(np.linspace(0, match.inliers - 1, min(match.inliers, MAX_LINES)).round().astype(int))
    starts = (match.query_xy[drawn] * left_scale).round().astype(int)
    ends = (match.gallery_xy[drawn] * right_scale).round().astype(int) + np.array([offset, 0])
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        cv2.line(pair, tuple(start), tuple(end), COLOURS[i % len(COLOURS)], 1, cv2.LINE_8)
    return pair


def draw_query(
    local: LocalRerankPath,
    query_rgb: np.ndarray,
    query_features: LocalFeatures,
    candidates: Sequence[Candidate],
    boxes: Mapping[str, str] | None = None,
) -> np.ndarray:
    """RGB picture of one query against its candidates, one row per candidate. boxes: gallery photo name
    -> the box text its features were cropped by (RecordsPhotos.boxes; absent: the whole photo)."""
    rows = []
    for candidate in candidates:
        gallery_rgb, size = None, (0, 0)
        if candidate.photo is not None:
            gallery_rgb = _gallery_crop(local, candidate.photo, (boxes or {}).get(candidate.photo, ""))
            index = local.gallery.features.names.index(candidate.photo)
            size = tuple(int(v) for v in local.gallery.features.image_sizes[index])
        rows.append(_pair_row(query_rgb, query_features, gallery_rgb, size, candidate))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, GAP), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded)


def _gallery_crop(local: LocalRerankPath, name: str, box: str) -> np.ndarray | None:
    """A gallery photo's match-size crop (by its box: its features' frame), from where the gallery was
    made from (None: not found)."""
    if not local.photos_root:
        return None
    path = files.join(local.photos_root, name)
    try:
        return match_crop(files.read_bytes(path), parse_box_text(box), local.image, local.settings.sift)
    except (ImageError, OSError, ValueError) as err:
        logger.warning("%s: cannot draw this gallery photo (%s)", path, err)
        return None


def write_picture(path: str, rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: could not encode the picture")
    files.write_bytes(path, png.tobytes())


def picture_name(index: int, photo: str) -> str:
    """A file name per query: its position (photos may share a base name) and its base name."""
    base = files.basename(photo).rsplit(".", 1)[0] or "photo"
    return f"{index:03d}_{base}.png"


def explained_answers(
    path: QueryPath,
    photos: Sequence[str],
    boxes: Sequence[tuple | None],
    images: np.ndarray,
    features: Sequence[LocalFeatures],
    positions: Sequence[int],
    out_dir: str,
) -> list[QueryAnswer]:
    """The fused answers of the photos (as QueryPath.identify gives them), and per photo a picture in
    out_dir named by picture_name(its position in the command line, the photo)."""
    local = path.local
    if local is None:
        raise QueryError(f"{path.gallery.out_dir}: made without local features, so there are no matches to "
                         "draw; make it with them (python -m tfwhale.gallery) for --explain")  # fmt: skip
    reranked = path.rerank(path.embed(images, photos), photos, features)
    answers = path.answer(reranked.ranked, fused=True)
    files.makedirs(out_dir)
    gallery_boxes = RecordsPhotos.of_records(path.gallery.manifest.records_root).boxes
    for photo, box, answer, evidence, found, position in zip(
        photos, boxes, answers, reranked.evidence, features, positions, strict=True
    ):
        candidates = []
        for label, probability in zip(answer.labels, answer.similarities, strict=True):
            if label == NEW_INDIVIDUAL or len(candidates) == CANDIDATES:
                continue
            best = local.best_photo(evidence, label)
            candidates.append(Candidate(label, float(probability), *(best or (None, None))))
        rgb = match_crop(files.read_bytes(photo), box, local.image, local.settings.sift)
        picture = draw_query(local, rgb, found, candidates, gallery_boxes)
        write_picture(files.join(out_dir, picture_name(position, photo)), picture)
    return answers
