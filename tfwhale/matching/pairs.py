"""Score one (query, gallery photo) pair: ratio test, mutual check, then geometric verification.

The inlier count of the verified model is the pair's score; the inlier matches are kept (as positions
in each photo's matching image) so that people can see them drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.matching.features import ROOTSIFT_SCALE

GEOMETRIES = ("homography", "affine", "similarity", "fundamental")
logger = logging.getLogger(__name__)

MIN_MODEL_POINTS = {"homography": 4, "affine": 3, "similarity": 2, "fundamental": 8}


@dataclass(frozen=True)
class PairSettings:
    """ratio: Lowe's ratio test on the two nearest neighbours; mutual: keep only matches that are also
    the gallery keypoint's nearest in the query; geometry: the model verified by RANSAC (USAC MAGSAC for
    homography and fundamental), within reprojection_px pixels of the matching image. On nyala-dev
    (5 seeds; BENCHMARKS.md) ratio 0.8 beat 0.7 and 0.9, the mutual check helped, and homography,
    affine and similarity tied within noise, ahead of fundamental; affine tied on the lions too."""

    ratio: float = 0.8
    mutual: bool = True
    geometry: str = "homography"
    reprojection_px: float = 8.0
    max_iterations: int = 2000

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")


@dataclass(frozen=True)
class PairMatch:
    """A verified pair: inliers (the score), tentative (matches before verification), and the inlier
    positions in the query's and the gallery photo's matching images, float32 (inliers, 2) each."""

    inliers: int
    tentative: int
    query_xy: np.ndarray
    gallery_xy: np.ndarray


NO_MATCH = PairMatch(0, 0, np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
# dot products held at once (16 MB of float32, ~4 photos of 1000 keypoints): 1 to 4 photos a chunk timed
# alike on 65 nyala-dev photos, 16 and 32 slower (out of cache)
CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Candidates:
    """Every query keypoint's nearest gallery keypoint, before any test: rows (query), best (gallery),
    ratio (nearest / second-nearest distance) and mutual (the query keypoint is also the gallery
    keypoint's nearest). Kept apart so that a benchmark can try several ratios on one computation."""

    rows: np.ndarray
    best: np.ndarray
    ratio: np.ndarray
    mutual: np.ndarray

    def passing(self, settings: PairSettings) -> np.ndarray:
        """(query row, gallery row) int pairs that pass settings' ratio test (and mutual check)."""
        keep = self.ratio < settings.ratio
        if settings.mutual:
            keep &= self.mutual
        return np.stack([self.rows[keep], self.best[keep]], axis=1).astype(np.int64)


NO_CANDIDATES = Candidates(
    np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)
)


def nearest_candidates(query: LocalFeatures, gallery: LocalFeatures) -> Candidates:
    """Every query keypoint's nearest keypoint in one gallery photo (see nearest_candidates_many)."""
    return nearest_candidates_many(query, [gallery])[0]


def nearest_candidates_many(query: LocalFeatures, galleries: Sequence[LocalFeatures]) -> list[Candidates]:
    """Candidates of a query against each of several gallery photos, exact, from a few matrix products.

    RootSIFT has unit norm, so the squared distance is 2 - 2 x the dot product. The photos are stacked
    (padded to the longest) and multiplied in chunks of about CHUNK_ELEMENTS dot products, and every
    reduction runs along a contiguous axis: the per-photo column argmax of the mutual check copied its
    matrix, a column max does not (most of the gain; BENCHMARKS.md). The products are of the stored
    uint8 values as float32: integers below 2^24, so exact, and a tie is a true tie. A query keypoint is
    the mutual nearest of its gallery keypoint when no query keypoint is strictly nearer to it."""
    out: list[Candidates | None] = [None] * len(galleries)
    usable = [i for i, gallery in enumerate(galleries) if len(query) >= 2 and len(gallery) >= 2]
    for i in set(range(len(galleries))) - set(usable):
        out[i] = NO_CANDIDATES
    if not usable:
        return out  # type: ignore[return-value]
    stored = query.descriptors.astype(np.float32)
    for chunk in _chunks([len(galleries[i]) for i in usable], len(query)):
        photos = [usable[c] for c in chunk]
        for i, found in zip(photos, _chunk_candidates(stored, [galleries[i] for i in photos]), strict=True):
            out[i] = found
    return out  # type: ignore[return-value]


def _chunks(lengths: Sequence[int], query_length: int) -> list[list[int]]:
    """Consecutive positions of `lengths` grouped so that each group's padded product stays small."""
    groups: list[list[int]] = [[]]
    longest = 0
    for position, length in enumerate(lengths):
        longest_with = max(longest, length)
        if groups[-1] and query_length * longest_with * (len(groups[-1]) + 1) > CHUNK_ELEMENTS:
            groups.append([])
            longest_with = length
        groups[-1].append(position)
        longest = longest_with
    return groups


def _chunk_candidates(query: np.ndarray, galleries: Sequence[LocalFeatures]) -> list[Candidates]:
    """query: float32 (n, 128) of the stored uint8 values; galleries: each with >= 2 keypoints."""
    longest = max(len(g) for g in galleries)
    stacked = np.zeros((len(galleries), longest, query.shape[1]), np.float32)
    for p, gallery in enumerate(galleries):
        stacked[p, : len(gallery)] = gallery.descriptors
    dots = (query @ stacked.reshape(-1, query.shape[1]).T).reshape(len(query), len(galleries), longest)
    for p, gallery in enumerate(galleries):
        dots[:, p, len(gallery) :] = -np.inf  # padding is nobody's neighbour
    rows = np.arange(len(query))[:, None]
    photo = np.arange(len(galleries))[None, :]
    best = dots.argmax(axis=2)
    first = dots[rows, photo, best]
    mutual = first >= dots.max(axis=0)[photo, best]
    dots[rows, photo, best] = -np.inf  # the second nearest is the best of the rest
    second = dots.max(axis=2)
    unit = np.stack([first, second]).astype(np.float64) / ROOTSIFT_SCALE**2
    distance = np.sqrt(np.maximum(2.0 - 2.0 * unit, 0.0))
    ratio = (distance[0] / np.maximum(distance[1], 1e-12)).astype(np.float32)
    indices = np.arange(len(query))
    return [Candidates(indices, best[:, p], ratio[:, p], mutual[:, p]) for p in range(len(galleries))]


def tentative_matches(query: LocalFeatures, gallery: LocalFeatures, settings: PairSettings) -> np.ndarray:
    """(query row, gallery row) int pairs that pass the ratio test (and the mutual check)."""
    return nearest_candidates(query, gallery).passing(settings)


def verify(query_xy: np.ndarray, gallery_xy: np.ndarray, settings: PairSettings) -> np.ndarray:
    """Boolean inlier mask of the matched positions under settings.geometry (all False when too few)."""
    if len(query_xy) < MIN_MODEL_POINTS[settings.geometry]:
        return np.zeros(len(query_xy), bool)
    try:
        mask = _model_inliers(query_xy, gallery_xy, settings)
    except cv2.error as error:  # USAC asserts on some degenerate samples (all points on a line)
        logger.debug("%s verification failed on %d matches: %s", settings.geometry, len(query_xy), error)
        mask = None
    return np.zeros(len(query_xy), bool) if mask is None else mask.ravel().astype(bool)


def _model_inliers(query_xy: np.ndarray, gallery_xy: np.ndarray, settings: PairSettings) -> np.ndarray | None:
    threshold, iterations = settings.reprojection_px, settings.max_iterations
    if settings.geometry == "homography":
        _, mask = cv2.findHomography(query_xy, gallery_xy, cv2.USAC_MAGSAC, threshold, maxIters=iterations)
    elif settings.geometry == "fundamental":
        _, mask = cv2.findFundamentalMat(query_xy, gallery_xy, cv2.USAC_MAGSAC, threshold, 0.999, iterations)
    else:
        estimate = cv2.estimateAffine2D if settings.geometry == "affine" else cv2.estimateAffinePartial2D
        _, mask = estimate(
            query_xy, gallery_xy, method=cv2.RANSAC, ransacReprojThreshold=threshold, maxIters=iterations
        )
    return mask


def match_pair(
    query: LocalFeatures, gallery: LocalFeatures, settings: PairSettings | None = None
) -> PairMatch:
    """The verified matches of a query photo's features against one gallery photo's."""
    settings = settings or PairSettings()
    return verified_match(query, gallery, tentative_matches(query, gallery, settings), settings)


def match_pairs(
    query: LocalFeatures, galleries: Sequence[LocalFeatures], settings: PairSettings | None = None
) -> list[PairMatch]:
    """match_pair of the query against each gallery photo, the nearest neighbours found in one go."""
    settings = settings or PairSettings()
    return [
        verified_match(query, gallery, found.passing(settings), settings)
        for gallery, found in zip(galleries, nearest_candidates_many(query, galleries), strict=True)
    ]


def verified_match(
    query: LocalFeatures, gallery: LocalFeatures, found: np.ndarray, settings: PairSettings
) -> PairMatch:
    """Geometric verification of tentative (query row, gallery row) matches."""
    if not len(found):
        return NO_MATCH
    query_xy, gallery_xy = query.xy[found[:, 0]], gallery.xy[found[:, 1]]
    inlier = verify(query_xy, gallery_xy, settings)
    return PairMatch(int(inlier.sum()), len(found), query_xy[inlier], gallery_xy[inlier])
