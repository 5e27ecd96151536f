"""From photos to individuals: shortlists of what to verify, and per-individual scores of photo scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGGREGATIONS = ("max", "sum")


@dataclass(frozen=True)
class RerankSettings:
    """What a query verifies and how photo scores become individual scores. Chosen on nyala-dev (5
    split seeds, BENCHMARKS.md "Local-feature matching"): max beat sum by ~0.1 MAP@5 (sum favours
    individuals with many photos); K >= 10 and any M in 10..60 scored alike there, so K=10 (half the
    pairs of K=20) and M=30 (an LNBNN shortlist found animals the embedding missed on a larger set).
    Verifying only each top-K individual's 3 best-voted photos scored like verifying all of them
    (1 and 2 within noise too) at ~40% of the pairs. None or 0: all photos."""

    aggregation: str = "max"
    shortlist_k: int = 10  # the global embedding's top-K individuals are verified
    shortlist_m: int = 30  # LNBNN's top-M photos over the whole gallery, verified too
    lnbnn_k: int = 1  # neighbours that vote per query descriptor
    photos_per_individual: int | None = 3  # of each top-K individual, verify only its best-voted photos

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if min(self.shortlist_k, self.shortlist_m, self.lnbnn_k) < 1:
            raise ValueError(f"shortlist_k, shortlist_m and lnbnn_k must be >= 1, got {self}")
        if (self.photos_per_individual or 0) < 0:
            raise ValueError(f"photos_per_individual must be >= 0 (0 or None: all), got {self}")


def per_individual(photo_scores: np.ndarray, photo_individual: np.ndarray, n_individuals: int,
                   how: str = "max") -> np.ndarray:  # fmt: skip
    """float64 (queries, n_individuals) of photo_scores (queries, photos): each individual's best photo
    ("max") or the total over its photos ("sum"). photo_individual: int (photos,) in [0, n_individuals).
    Individuals with no photo score 0."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    scores = np.atleast_2d(np.asarray(photo_scores, np.float64))
    out = np.zeros((len(scores), n_individuals), np.float64)
    if how == "sum":
        np.add.at(out.T, photo_individual, scores.T)
    else:
        out[:] = -np.inf
        np.maximum.at(out.T, photo_individual, scores.T)
        out[np.isinf(out)] = 0.0
    return out


def top_individual_photos(individual_scores: np.ndarray, photo_individual: np.ndarray, k: int) -> np.ndarray:
    """bool (photos,): the photos of the k best-scoring individuals of one query (a global shortlist)."""
    best = np.argsort(-np.asarray(individual_scores), kind="stable")[:k]
    return np.isin(photo_individual, best)


def top_photos(photo_scores: np.ndarray, m: int) -> np.ndarray:
    """bool (photos,): one query's m best-scoring photos (an LNBNN shortlist)."""
    chosen = np.zeros(len(photo_scores), bool)
    chosen[np.argsort(-np.asarray(photo_scores), kind="stable")[:m]] = True
    return chosen


def best_photos_of_each(photo_scores: np.ndarray, photo_individual: np.ndarray, n: int) -> np.ndarray:
    """bool (photos,): each individual's n best-scoring photos for one query (ties: the earlier photo)."""
    order = np.lexsort((-np.asarray(photo_scores, np.float64), photo_individual))
    sorted_owner = photo_individual[order]
    starts = np.flatnonzero(np.r_[True, sorted_owner[1:] != sorted_owner[:-1]])
    rank_in_owner = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    chosen = np.zeros(len(order), bool)
    chosen[order[rank_in_owner < n]] = True
    return chosen
