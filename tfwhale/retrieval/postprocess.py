"""Optional embedding post-processing for the predict stage: DBA, query expansion, PCA whitening.

Each is a switch to measure on OOF MAP@5, not a known gain. All run in row chunks and find
neighbours through tfwhale.retrieval.knn, so they stay memory-bounded at gallery sizes in the millions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfwhale.retrieval import knn

_ROWS_PER_CHUNK = 16384


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero instead of turning NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def database_augment(gallery: np.ndarray, k: int = 3, weights: Sequence[float] | None = None) -> np.ndarray:
    """Database-side augmentation: each gallery row replaced by the weighted mean of its k nearest
    gallery rows (itself included, normally as the first), renormalised.

    weights: one per neighbour rank (rank 0 = the nearest, i.e. the row itself); None = equal
    weights (plain average DBA). k=1 returns the gallery unchanged.
    """
    rank_weights = _rank_weights(k, weights)
    gallery = knn.check_embeddings("gallery", gallery)
    _, idx = knn.search(gallery, gallery, k=k)
    return _weighted_neighbour_sum(
        np.zeros_like(gallery), gallery, idx, np.broadcast_to(rank_weights[: idx.shape[1]], idx.shape)
    )


def query_expansion(queries: np.ndarray, gallery: np.ndarray, k: int = 3, alpha: float = 3.0) -> np.ndarray:
    """alpha-query expansion: q' = normalise(q + sum_j max(sim_j, 0)^alpha * g_j) over the k nearest
    gallery rows. alpha=0 gives average query expansion (every neighbour weighted 1); larger alpha
    trusts only the closest neighbours.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    queries = knn.check_embeddings("queries", queries)
    gallery = knn.check_embeddings("gallery", gallery)
    sims, idx = knn.search(queries, gallery, k=k)
    weights = np.power(np.maximum(sims, 0.0), alpha)
    return _weighted_neighbour_sum(queries, gallery, idx, weights)


def _rank_weights(k: int, weights: Sequence[float] | None) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if weights is None:
        return np.ones(k, np.float32)
    rank_weights = np.asarray(weights, dtype=np.float32)
    if rank_weights.shape != (k,):
        raise ValueError(f"weights must hold one value per neighbour (k={k}), got shape {rank_weights.shape}")
    return rank_weights


def _weighted_neighbour_sum(
    base: np.ndarray, source: np.ndarray, idx: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """normalise(base[i] + sum_j weights[i, j] * source[idx[i, j]]), a chunk of rows at a time."""
    out = np.empty_like(base, dtype=np.float32)
    for start in range(0, len(base), _ROWS_PER_CHUNK):
        rows = slice(start, start + _ROWS_PER_CHUNK)
        total = base[rows].astype(np.float32, copy=True)
        for j in range(idx.shape[1]):
            total += weights[rows, j, None] * source[idx[rows, j]]
        out[rows] = l2_normalise(total)
    return out


@dataclass(frozen=True)
class Whitening:
    """PCA whitening fitted on a gallery: centre, rotate onto the principal axes, scale each to unit
    variance, keep the first `dim`, renormalise."""

    mean: np.ndarray  # [d]
    projection: np.ndarray  # [d, dim]: eigenvectors / sqrt(eigenvalue + eps)
    eigenvalues: np.ndarray  # [dim], descending

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"expected [n, {len(self.mean)}] embeddings, got shape {x.shape}")
        out = np.empty((len(x), self.projection.shape[1]), np.float32)
        for start in range(0, len(x), _ROWS_PER_CHUNK):
            rows = slice(start, start + _ROWS_PER_CHUNK)
            out[rows] = l2_normalise((x[rows] - self.mean) @ self.projection)
        return out


def fit_pca_whitening(gallery: np.ndarray, dim: int | None = None, eps: float = 1e-6) -> Whitening:
    """Fit PCA whitening on `gallery` rows; dim defaults to every direction with variance
    (at most n - 1). eps is added to each eigenvalue so near-empty directions are not blown up."""
    gallery = np.asarray(gallery, dtype=np.float32)
    if gallery.ndim != 2 or len(gallery) < 2:
        raise ValueError(f"need a [n >= 2, d] gallery to fit whitening, got shape {gallery.shape}")
    n, d = gallery.shape
    dim = min(d, n - 1) if dim is None else dim
    if not 1 <= dim <= d:
        raise ValueError(f"dim must be in 1..{d}, got {dim}")
    mean = gallery.mean(axis=0, dtype=np.float64)
    covariance = np.zeros((d, d))
    for start in range(0, n, _ROWS_PER_CHUNK):
        centred = gallery[start : start + _ROWS_PER_CHUNK] - mean
        covariance += centred.T @ centred
    eigenvalues, eigenvectors = np.linalg.eigh(covariance / (n - 1))
    order = np.argsort(eigenvalues)[::-1][:dim]
    kept = np.maximum(eigenvalues[order], 0.0)
    projection = eigenvectors[:, order] / np.sqrt(kept + eps)
    return Whitening(mean.astype(np.float32), projection.astype(np.float32), kept)
