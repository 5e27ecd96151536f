"""Score one (query, gallery photo) pair: ratio test, mutual check, then geometric verification.

The inlier count of the verified model is the pair's score; the inlier matches are kept (as positions
in each photo's matching image) so that people can see them drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.matching import threads
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
# query keypoints multiplied at once with one photo's: their dot products (256 x ~1000 float32, 1 MB) stay
# in cache through the three reductions that read them (argmax, column max, second max); BENCHMARKS.md
ROWS_PER_BLOCK = 256


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
    """Candidates of a query against each of several gallery photos, exact, from matrix products.

    RootSIFT has unit norm, so the squared distance is 2 - 2 x the dot product. Each photo is multiplied
    with blocks of ROWS_PER_BLOCK query keypoints into one reused buffer, every reduction of a block runs
    while it is in cache, and the photos are shared out among BLAS's threads, one product each
    (matching.threads; BENCHMARKS.md). The products are of the stored uint8 values as float32:
    integers below 2^24, so exact, and a tie is a true tie. A query keypoint is the mutual nearest of
    its gallery keypoint when no query keypoint is strictly nearer to it."""
    return _each_photo(query, galleries, lambda gallery, found: found)


def _each_photo(
    query: LocalFeatures, galleries: Sequence[LocalFeatures], then: Callable[[LocalFeatures, Candidates], Any]
) -> list:
    """then(gallery, its candidates) of each gallery photo, in order, the photos shared out among threads."""
    stored = query.descriptors.astype(np.float32)

    def some_photos(part: Sequence[LocalFeatures]) -> list:
        buffer = np.empty(
            min(ROWS_PER_BLOCK, len(query)) * max((len(g) for g in part), default=0), np.float32
        )
        usable = len(query) >= 2
        return [then(g, _photo_candidates(stored, g, buffer) if usable and len(g) >= 2 else NO_CANDIDATES)
                for g in part]  # fmt: skip

    parts = min(threads.blas_threads(), len(galleries))
    with threads.one_blas_thread_each(parts):
        return threads.in_parts(some_photos, list(galleries), parts)


def _photo_candidates(query: np.ndarray, gallery: LocalFeatures, buffer: np.ndarray) -> Candidates:
    """query: float32 (n, 128) of the stored uint8 values; gallery: >= 2 keypoints; buffer: float32 of at
    least min(ROWS_PER_BLOCK, n) x len(gallery) elements, overwritten."""
    n, m = len(query), len(gallery)
    gallery_t = gallery.descriptors.astype(np.float32).T
    best = np.empty(n, np.int64)
    first, second = np.empty(n, np.float32), np.empty(n, np.float32)
    column_best = np.full(m, -np.inf, np.float32)  # each gallery keypoint's best product with the query
    for start in range(0, n, ROWS_PER_BLOCK):
        stop = min(n, start + ROWS_PER_BLOCK)
        dots = np.matmul(query[start:stop], gallery_t, out=buffer[: (stop - start) * m].reshape(-1, m))
        rows, nearest = np.arange(stop - start), dots.argmax(axis=1)
        best[start:stop], first[start:stop] = nearest, dots[rows, nearest]
        np.maximum(column_best, dots.max(axis=0), out=column_best)
        dots[rows, nearest] = -np.inf  # the second nearest is the best of the rest
        second[start:stop] = dots.max(axis=1)
    unit = np.stack([first, second]).astype(np.float64) / ROOTSIFT_SCALE**2
    distance = np.sqrt(np.maximum(2.0 - 2.0 * unit, 0.0))
    ratio = (distance[0] / np.maximum(distance[1], 1e-12)).astype(np.float32)
    return Candidates(np.arange(n), best, ratio, first >= column_best[best])


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
    """match_pair of the query against each gallery photo, the photos shared out among threads (their
    nearest neighbours and verification: see nearest_candidates_many)."""
    settings = settings or PairSettings()
    return _each_photo(
        query,
        galleries,
        lambda gallery, found: verified_match(query, gallery, found.passing(settings), settings),
    )


def verified_match(
    query: LocalFeatures, gallery: LocalFeatures, found: np.ndarray, settings: PairSettings
) -> PairMatch:
    """Geometric verification of tentative (query row, gallery row) matches."""
    if not len(found):
        return NO_MATCH
    query_xy, gallery_xy = query.xy[found[:, 0]], gallery.xy[found[:, 1]]
    inlier = verify(query_xy, gallery_xy, settings)
    return PairMatch(int(inlier.sum()), len(found), query_xy[inlier], gallery_xy[inlier])
