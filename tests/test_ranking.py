"""Predict stage ranking: kNN individuals widened to 5, the ArcFace blend, per-species new_individual."""

from __future__ import annotations

import numpy as np
import pytest

from tfwhale.contracts.gallery_arrays import FoldCentres
from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.query.answers import answer_labels, answer_rows, best_species
from tfwhale.query.heads import class_heads
from tfwhale.retrieval.ranking import (
    PreparedGallery,
    Ranked,
    RankOptions,
    rank,
)
from tfwhale.retrieval.threshold import NEW

QUERY = np.array([[5, 4, 3, 2, 1, 0, 0, 0]], np.float32) / np.sqrt(55)  # sims 5..0 / sqrt(55) with e0..e5
IDS = ["A", "B", "C", "D", "E", "F"]


def _gallery() -> PreparedGallery:
    return PreparedGallery(np.eye(8, dtype=np.float32)[:6], None)  # individual i is the basis vector e_i


def _centres(val_fold: int | None, centres: np.ndarray) -> FoldCentres:
    return FoldCentres(0, "full" if val_fold is None else f"fold{val_fold}", centres)


def test_knn_alone_ranks_individuals_by_similarity():
    ranked = rank(QUERY, _gallery(), IDS, RankOptions(k=5))
    assert ranked.labels == [["A", "B", "C", "D", "E"]]
    np.testing.assert_allclose(ranked.scores[0], np.array([5, 4, 3, 2, 1]) / np.sqrt(55), atol=1e-6)


def test_queries_whose_neighbours_hold_one_individual_are_searched_wider():
    # ten photos of A right by the query, then B..E: 5 neighbours are all A, the answer still has 5
    near = QUERY + 0.01 * np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    rows = np.vstack([near / np.linalg.norm(near, axis=1, keepdims=True), np.eye(8, dtype=np.float32)[1:5]])
    ranked = rank(QUERY, PreparedGallery(rows, None), ["A"] * 10 + IDS[1:5], RankOptions(k=5))
    assert ranked.labels == [["A", "B", "C", "D", "E"]]


def test_blend_mixes_knn_and_class_cosines_with_hand_worked_scores():
    # class centres: A..E at their gallery photo (class cosine = kNN similarity), F at the query
    # itself (cosine 1), G too but G has no gallery photo; E's centre points away (-1) but only the
    # head's validation fold holds E's photos, so that head never trained E.
    centres = np.eye(8, dtype=np.float32)[:, :7].copy()
    centres[:, 5] = centres[:, 6] = QUERY[0]
    centres[:, 4] = -QUERY[0]
    names = ["A", "B", "C", "D", "E", "F", "G"]
    heads = class_heads([QUERY], [_centres(1, centres)], [1], names, IDS, np.array([0, 0, 0, 0, 1, 0]))
    ranked = rank(QUERY, _gallery(), IDS, RankOptions(k=5, blend=0.5), heads)
    s = np.array([5, 4, 3, 2, 1]) / np.sqrt(55)
    # F is outside the 5 neighbours: it gets the lowest neighbour similarity (E's), blended with 1.0
    assert ranked.labels == [["A", "F", "B", "C", "D", "E"]]
    np.testing.assert_allclose(ranked.scores[0], [s[0], (s[4] + 1) / 2, s[1], s[2], s[3], s[4]], atol=1e-6)


def test_blend_without_heads_is_refused():
    with pytest.raises(ValueError, match="needs the classifier heads"):
        rank(QUERY, _gallery(), IDS, RankOptions(blend=0.5))


def test_per_species_thresholds_follow_the_best_individuals_species():
    ranked = Ranked([["A", "B"], ["C", "D"]], [[0.6, 0.2], [0.6, 0.2]])
    species_of = {"A": "orca", "C": "beluga"}
    assert best_species(ranked, species_of) == ["orca", "beluga"]
    policy = ThresholdPolicy(0.5, {"beluga": 0.7})
    assert answer_labels(ranked, policy, species_of) == [["A", NEW, "B"], [NEW, "C", "D"]]
    assert answer_labels(ranked, policy.fixed(0.1), species_of) == [["A", "B", NEW], ["C", "D", NEW]]
    rows = answer_rows(ranked, policy, species_of)
    assert [r.threshold for r in rows] == [0.5, 0.7]
    assert rows[0].similarities == [0.6, None, 0.2] and rows[1].species == [None, "beluga", None]
