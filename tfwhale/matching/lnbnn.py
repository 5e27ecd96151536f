"""One index over a whole gallery's descriptors and LNBNN voting (HotSpotter): no model needed.

Each query descriptor finds its nearest gallery descriptors in one approximate index (FLANN kd-trees).
Local naive-Bayes nearest neighbour (McCann & Lowe 2012; Crall et al. 2013, HotSpotter): the k nearest
vote for their photos with the margin by which they beat the (k+1)-th, the normaliser, so that a
descriptor common to many photos (grass, bark) votes little and a distinctive marking votes a lot.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tfwhale.contracts.local_features import FeatureSet, LocalFeatures
from tfwhale.matching import threads
from tfwhale.matching.features import dequantise

FLANN_KDTREE = 1
SEARCH_ROWS_PER_THREAD = 128  # query descriptors searched by one thread at least (fewer: not worth one)


@dataclass(frozen=True)
class Neighbours:
    """Per query descriptor, its nearest gallery descriptors: photo index and distance, (n, k) each,
    nearest first."""

    photo: np.ndarray
    distance: np.ndarray


class LnbnnIndex:
    """Approximate nearest-neighbour index over every descriptor of a FeatureSet."""

    def __init__(self, gallery: FeatureSet, trees: int = 4, checks: int = 64) -> None:
        if not len(gallery.descriptors):
            raise ValueError("the gallery has no local features to index")
        self.n_photos = len(gallery)
        self.photo_of_row = gallery.photo_of_row
        self.checks = checks
        # FLANN draws its random kd-trees from OpenCV's RNG, whose state is whatever earlier calls left:
        # seeded, the same gallery gives the same index, so predict and identify vote alike
        cv2.setRNGSeed(0)
        self._index = cv2.flann_Index(
            dequantise(gallery.descriptors), {"algorithm": FLANN_KDTREE, "trees": trees}
        )

    def neighbours(self, query: LocalFeatures, k: int) -> Neighbours:
        """The k nearest gallery descriptors of each query descriptor. Each descriptor's search is its own
        (the same alone or among others), so the query's descriptors are shared out among OpenCV's
        threads (matching.threads)."""
        if not len(query):
            return Neighbours(np.zeros((0, k), np.int32), np.zeros((0, k), np.float32))
        k = min(k, len(self.photo_of_row))

        def search(descriptors: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            return [self._index.knnSearch(descriptors, k, params={"checks": self.checks})]

        parts = min(threads.opencv_threads(), len(query) // SEARCH_ROWS_PER_THREAD)
        found = threads.in_parts(search, dequantise(query.descriptors), parts)
        rows = np.concatenate([part.reshape(-1, k) for part, _ in found])
        squared = np.concatenate([part.reshape(-1, k) for _, part in found])
        distance = np.sqrt(np.maximum(squared.reshape(len(query), k), 0.0)).astype(np.float32)
        return Neighbours(self.photo_of_row[rows], distance)


def lnbnn_votes(
    found: Neighbours, n_photos: int, k: int = 1, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Votes per gallery photo, float64 (n_photos,): each query descriptor's k nearest neighbours among
    `allowed` photos (bool (n_photos,); None: all) vote normaliser distance - their distance, the
    normaliser being the (k+1)-th allowed neighbour. Found neighbours must reach past k allowed ones
    (a descriptor with fewer gives no vote). A photo gets one vote per query descriptor at most."""
    photo, distance = found.photo, found.distance
    usable = np.ones(photo.shape, bool) if allowed is None else allowed[photo]
    rank = np.cumsum(usable, axis=1) - 1  # rank among allowed neighbours
    has_normaliser = (usable & (rank == k)).any(axis=1)
    normaliser = np.where(usable & (rank == k), distance, np.inf).min(axis=1)
    voting = usable & (rank < k) & has_normaliser[:, None]
    votes = np.zeros(n_photos, np.float64)
    if not voting.any():
        return votes
    margin = np.maximum(normaliser[:, None] - distance, 0.0)
    rows, cols = np.nonzero(voting)
    # one vote per (descriptor, photo): keep the nearest (first) of a photo's neighbours
    key = rows.astype(np.int64) * n_photos + photo[rows, cols]
    _, first = np.unique(key, return_index=True)
    np.add.at(votes, photo[rows[first], cols[first]], margin[rows[first], cols[first]])
    return votes
