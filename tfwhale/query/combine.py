"""Query path: how fold models' embeddings become one vector (fold mean per run, runs concatenated)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfwhale.contracts.run_folder import RunError
from tfwhale.retrieval.postprocess import l2_normalise


def average_folds(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the folds' embeddings, L2-normalised."""
    return l2_normalise(np.mean(np.stack(arrays), axis=0))


def concat_runs(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Concatenated unit embeddings scaled by sqrt(w / sum w): the result is unit length and its
    cosine similarity is the weighted mean of the runs' cosine similarities."""
    scales = np.sqrt(np.asarray(weights, np.float64) / np.sum(weights))
    return np.concatenate([a * np.float32(s) for a, s in zip(arrays, scales, strict=True)], axis=1)


def combine(per_run: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> np.ndarray:
    """Per run, per fold model embeddings -> the gallery's space."""
    return concat_runs([average_folds(folds) for folds in per_run], weights)


def check_finite(embeddings: np.ndarray, names: Sequence[str], source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if bad.size:
        raise RunError(
            f"{source}: NaN or infinite embeddings for {bad.size} image(s), first {names[bad[0]]!r}; "
            "the model's weights are probably broken (NaN during training?)"
        )
