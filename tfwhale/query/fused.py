"""Query path, fused ranking of leave-one-out or out-of-fold evidence: each query's individuals by the
calibrated fused P(same individual), as an answer ranks them (the day-one gallery and predict tune the
new_individual threshold on it)."""

from __future__ import annotations

import numpy as np

from tfwhale.matching.rerank import Calibrations, LeaveOneOut, fused_order
from tfwhale.retrieval.ranking import Ranked


def fused_ranking(loo: LeaveOneOut, calibrated: Calibrations, individuals: np.ndarray) -> Ranked:
    """Each query's individuals (those with a photo left) by fused P, as a query answer ranks them."""
    fused = calibrated.fused(loo.cosine, loo.inliers, loo.votes)
    return ranking_of(fused, loo.cosine, loo.scored, individuals)


def ranking_of(score: np.ndarray, cosine: np.ndarray, scored: np.ndarray, individuals: np.ndarray) -> Ranked:
    """Each row's scored individuals by `score` (ties broken by the cosine), best first."""
    labels, scores = [], []
    for row in range(len(score)):
        ranked, answered = fused_order(score[row], cosine[row])
        order = [i for i in ranked if scored[row, i]]
        labels.append(individuals[order].tolist())
        scores.append(answered[order].tolist())
    return Ranked(labels, scores)
