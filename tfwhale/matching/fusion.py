"""Scores to P(same individual) by isotonic regression, and the fusion of global and local evidence.

WildFusion (Cermak et al. 2024): calibrate each matcher's score on pairs it was not fitted with, then
average the probabilities. The calibration is a monotone step function, stored as its knots (plain
arrays: it saves to JSON and applies with np.interp, no scikit-learn object to pickle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression

from tfwhale.matching.aggregate import per_individual


@dataclass(frozen=True)
class ScoreCalibration:
    """Monotone map of a score to P(same individual): knots x (increasing) -> y, flat beyond them."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, np.float64), self.x, self.y)

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data: dict) -> ScoreCalibration:
        return cls(tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"]))


def fit_calibration(scores: np.ndarray, same: np.ndarray) -> ScoreCalibration:
    """Isotonic fit of same (bool, one per (query, candidate) pair) on scores. The pairs must come from
    queries scored against galleries without them (leave_one_out_scores): a self-pair matches itself
    perfectly and would teach the fit that high scores are certain."""
    scores, same = np.asarray(scores, np.float64).ravel(), np.asarray(same, bool).ravel()
    if len(scores) != len(same) or not len(scores):
        raise ValueError(f"need as many scores as labels, at least one: got {len(scores)} and {len(same)}")
    if same.all() or not same.any():
        raise ValueError("calibration needs both same-individual and different-individual pairs")
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(scores, same)
    return ScoreCalibration(tuple(fit.X_thresholds_.tolist()), tuple(fit.y_thresholds_.tolist()))


def leave_one_out_scores(photo_scores: np.ndarray, photo_individual: np.ndarray, n_individuals: int,
                         how: str = "max") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each gallery photo as a query against the rest of the gallery: (scores, scored), both
    (photos, n_individuals). photo_scores: (photos, photos), row = query; its diagonal (the self-pair)
    is never used. scored is False for an individual with no photo left (the query's own, when it has
    one photo): such a pair says nothing about P(same) and is left out of the fit."""
    matrix = np.array(photo_scores, np.float64)
    n = len(matrix)
    if matrix.shape != (n, n) or len(photo_individual) != n:
        raise ValueError(f"photo_scores must be (photos, photos) for {len(photo_individual)} photos")
    np.fill_diagonal(matrix, -np.inf if how == "max" else 0.0)
    scores = per_individual(matrix, photo_individual, n_individuals, how)
    counts = np.bincount(photo_individual, minlength=n_individuals)
    others = np.tile(counts, (n, 1))
    others[np.arange(n), photo_individual] -= 1
    return scores, others > 0


def fuse(*probabilities: np.ndarray) -> np.ndarray:
    """The mean of calibrated probabilities of the same candidates (global, local, ...)."""
    if not probabilities:
        raise ValueError("fuse needs at least one probability array")
    return np.mean(np.stack([np.asarray(p, np.float64) for p in probabilities]), axis=0)
