"""Nearest-neighbour search for the predict stage: top-k gallery rows per query by cosine similarity."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Backend = Literal["exact", "sklearn", "faiss"]
# bytes of similarities the exact search holds at once: at 51,033 gallery rows, chunks of 2,629
# queries, 1,315 per worker on 2 cores (with half that, GEMMs were measurably slower per flop)
DEFAULT_MEMORY_BUDGET = 512 << 20
MAX_GALLERY_BLOCK = 1 << 16  # gallery rows per GEMM; larger galleries are searched block by block
_NORM_TOLERANCE = 1e-3
_MIN_ROWS_PER_WORKER = 512  # GEMMs of fewer query rows lose efficiency to packing the gallery


def check_embeddings(name: str, x: np.ndarray) -> np.ndarray:
    """`x` as a C-contiguous float32 [n, d] array of L2-normalised rows, or a ValueError naming the row."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a 2-D [n, dim] array, got shape {x.shape}")
    squared_norms = np.einsum("ij,ij->i", x, x)  # one pass, no temporary the size of x
    bad = np.flatnonzero(~(np.abs(squared_norms - 1.0) <= 2 * _NORM_TOLERANCE))  # also catches NaN/inf
    if bad.size:
        raise ValueError(
            f"{name}: row {bad[0]} has L2 norm {np.sqrt(squared_norms[bad[0]]):.6g} "
            f"({bad.size} rows not unit length); "
            "embeddings must be L2-normalised (renormalise after averaging folds)"
        )
    return x


def search(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int = 50,
    chunk: int = 4096,
    backend: Backend = "exact",
    faiss_index: Any = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar gallery rows per query: (sims [Q, k] float32, idx [Q, k] int64), best first.

    Inputs are L2-normalised, so cosine similarity is the inner product. k above the gallery size
    is clamped to it (the result then has G columns). Equal similarities are ordered by gallery
    index, except that a tie straddling the k-th place may keep either row.

    backend:
      "exact"   chunked float32 GEMM + top-k selection on every core; holds at most
                ~memory_budget bytes of similarities (and `chunk` queries) at a time, and limits
                BLAS threads (threadpoolctl) while it runs.
      "sklearn" NearestNeighbors(metric="cosine", algorithm="brute"); sims = 1 - distance.
      "faiss"   faiss_index None: exact IndexFlatIP; a factory string ("IVF1024,Flat", "HNSW32")
                builds that index on the gallery; or an index from build_faiss_index() that already
                holds the gallery. Approximate indexes may return fewer than k hits: idx -1, sims -inf.
    """
    queries = check_embeddings("queries", queries)
    gallery = check_embeddings("gallery", gallery)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dim {queries.shape[1]} but gallery has dim {gallery.shape[1]}")
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be positive, got k={k}, chunk={chunk}")
    if k > len(gallery):
        logger.info(
            "k=%d exceeds the gallery size %d; returning %d neighbours", k, len(gallery), len(gallery)
        )
        k = len(gallery)
    if backend == "exact":
        return _exact_search(queries, gallery, k, chunk, memory_budget)
    if backend == "sklearn":
        return _sklearn_search(queries, gallery, k, memory_budget)
    if backend == "faiss":
        return _faiss_search(queries, gallery, k, faiss_index)
    raise ValueError(f"unknown backend {backend!r}; expected 'exact', 'sklearn' or 'faiss'")


def _exact_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int, memory_budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of queries, each split into row slices that the cores search side by side.

    Each worker runs its own GEMM (BLAS limited to cores // workers threads), then its own
    top-k, so the top-k runs on every core. Measured on 2 cores: as fast as a 2-thread GEMM
    followed by a 2-thread top-k on an idle machine and steadier on a busy one (a multi-thread
    GEMM waits for its slowest thread); faster than splitting the gallery between the workers,
    which doubles the per-query top-k work.
    """
    n_queries, n_gallery = len(queries), len(gallery)
    block, rows, workers = _plan(n_gallery, chunk, memory_budget, _n_threads())
    searchers = [
        _BlockSearcher(gallery[start : start + block], start, k) for start in range(0, n_gallery, block)
    ]
    # one similarity buffer for the chunk: the workers take row slices of it
    buffer = np.empty((min(rows, n_queries), searchers[0].n_cols), np.float32)
    sims = np.empty((n_queries, k), np.float32)
    idx = np.empty((n_queries, k), np.int64)

    def search_slice(chunk_start: int, a: int, b: int) -> None:
        if b > a:
            rows_buffer = buffer[a - chunk_start : b - chunk_start].reshape(-1)
            found = [searcher.top_k(queries[a:b], rows_buffer) for searcher in searchers]
            sims[a:b], idx[a:b] = _merge_top_k(found, k)

    with _blas_threads(_n_threads() // workers if workers > 1 else None), ThreadPoolExecutor(workers) as pool:
        for q0 in range(0, n_queries, rows):
            bounds = np.linspace(q0, min(q0 + rows, n_queries), workers + 1).astype(int)
            list(pool.map(search_slice, itertools.repeat(q0), bounds[:-1], bounds[1:]))
    return sims, idx


def _plan(n_gallery: int, chunk: int, memory_budget: int, n_threads: int) -> tuple[int, int, int]:
    """(gallery rows per block, query rows per chunk, workers sharing a chunk)."""
    block = min(n_gallery, MAX_GALLERY_BLOCK)
    rows = int(np.clip(memory_budget // (4 * block), 1, chunk))
    return block, rows, max(1, min(n_threads, rows // _MIN_ROWS_PER_WORKER))


def _blas_threads(limit: int | None):
    """A context limiting BLAS to `limit` threads (threadpoolctl ships with scikit-learn)."""
    if limit is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limit, user_api="blas")


def _n_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _BlockSearcher:
    """Top-k of one gallery block for a slice of queries; the similarities go into the caller's buffer."""

    def __init__(self, gallery_block: np.ndarray, offset: int, k: int):
        self.gallery_t = gallery_block.T  # a transposed view: BLAS reads it without copying
        self.offset, self.k, self.n_cols = offset, k, len(gallery_block)

    def top_k(self, q_rows: np.ndarray, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from tfwhale.retrieval.topk import top_k_rows  # imports numba: only exact searches pay for it

        sims = buffer[: len(q_rows) * self.n_cols].reshape(len(q_rows), self.n_cols)
        np.matmul(q_rows, self.gallery_t, out=sims)
        values, cols = top_k_rows(sims, self.k)
        return values, cols + self.offset


def _sort_desc(values: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by similarity descending, equal similarities by gallery index ascending.

    One argsort of an int64 key (float32 bits made order-preserving, then the inverted column)
    instead of a two-key lexsort, which costs several times more.
    """
    plus_zero = np.asarray(values, dtype=np.float32) + np.float32(0)  # -0.0 + 0.0 = +0.0: one key for zero
    bits = plus_zero.view(np.int32).astype(np.int64)
    ordered_bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip all but the sign bit
    key = (ordered_bits << 32) | (0xFFFFFFFF - cols)
    order = np.argsort(key, axis=1)[:, ::-1]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(cols, order, axis=1)


def _merge_top_k(found: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The overall top k of several blocks' sorted top-k lists."""
    if len(found) == 1:
        return found[0]
    values = np.concatenate([f[0] for f in found], axis=1)
    cols = np.concatenate([f[1] for f in found], axis=1)
    pick = np.argpartition(values, -k, axis=1)[:, -k:]
    return _sort_desc(np.take_along_axis(values, pick, axis=1), np.take_along_axis(cols, pick, axis=1))


def _sklearn_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, memory_budget: int
) -> tuple[np.ndarray, np.ndarray]:
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    finder = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(gallery)
    with sklearn.config_context(working_memory=max(1, memory_budget >> 20)):
        distances, idx = finder.kneighbors(queries)
    return (1.0 - distances).astype(np.float32), idx.astype(np.int64)


def _import_faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("backend='faiss' needs faiss: pip install tfwhale[faiss] (or faiss-cpu)") from err
    return faiss


def build_faiss_index(
    gallery: np.ndarray,
    spec: str = "Flat",
    params: str | None = None,
    train_size: int | None = None,
    seed: int = 0,
):
    """A faiss inner-product index holding `gallery`, built from a factory string.

    spec: "Flat" (exact), "IVF1024,Flat", "IVF1024,PQ64x4fs,RFlat" (IVF + fast-scan PQ, re-ranked
    exactly), "HNSW32", ... (faiss.index_factory syntax). params: search-time settings in
    faiss.ParameterSpace syntax, e.g. "nprobe=32,k_factor_rf=2". train_size: train on that many
    random gallery rows (faiss otherwise samples up to 256 per IVF list); smaller trains faster.
    """
    faiss = _import_faiss()
    gallery = check_embeddings("gallery", gallery)
    index = faiss.index_factory(gallery.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = gallery
        if train_size is not None and train_size < len(gallery):
            rows = np.random.default_rng(seed).choice(len(gallery), train_size, replace=False)
            sample = gallery[np.sort(rows)]
        index.train(sample)
    index.add(gallery)
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    return index


def _faiss_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, faiss_index: Any
) -> tuple[np.ndarray, np.ndarray]:
    if faiss_index is None or isinstance(faiss_index, str):
        faiss_index = build_faiss_index(gallery, faiss_index or "Flat")
    elif faiss_index.ntotal != len(gallery):
        raise ValueError(f"faiss_index holds {faiss_index.ntotal} vectors but the gallery has {len(gallery)}")
    sims, idx = faiss_index.search(queries, k)
    sims = sims.astype(np.float32)
    sims[idx < 0] = -np.inf
    return sims, idx.astype(np.int64)


def top_individuals(
    sims: np.ndarray, idx: np.ndarray, gallery_labels: np.ndarray, n: int = 5
) -> tuple[list[list[str]], list[list[float]]]:
    """Per query, the n best distinct individuals among its neighbours, and their scores.

    An individual's score is its best similarity over its gallery rows among the k neighbours;
    individuals are ordered by score, equal scores by the lower gallery index. When the k
    neighbours hold fewer than n distinct individuals, fewer are returned, so search with a k
    well above n (predict uses k >= 50). Neighbours with idx -1 (faiss found none) are skipped.
    """
    sims, idx = np.asarray(sims), np.asarray(idx)
    gallery_labels = np.asarray(gallery_labels)
    if sims.shape != idx.shape or sims.ndim != 2:
        raise ValueError(f"sims {sims.shape} and idx {idx.shape} must be matching [Q, k] arrays")
    if idx.size and idx.max() >= len(gallery_labels):
        raise ValueError(f"idx refers to gallery row {idx.max()} but there are {len(gallery_labels)} labels")
    order = np.lexsort((idx, -sims), axis=1)
    sims, idx = np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1)
    names, codes = np.unique(gallery_labels, return_inverse=True)
    label_codes = np.where(idx >= 0, codes[np.maximum(idx, 0)], -1)
    keep = _first_occurrences(label_codes) & (idx >= 0)
    keep &= np.cumsum(keep, axis=1) <= n
    labels_out, scores_out = [], []
    for row_keep, row_codes, row_sims in zip(keep, label_codes, sims, strict=True):
        labels_out.append(names[row_codes[row_keep]].tolist())
        scores_out.append(row_sims[row_keep].astype(float).tolist())
    return labels_out, scores_out


def _first_occurrences(codes: np.ndarray) -> np.ndarray:
    """Mask of the first position of each distinct value in every row."""
    order = np.argsort(codes, axis=1, kind="stable")
    sorted_codes = np.take_along_axis(codes, order, axis=1)
    starts = np.ones_like(sorted_codes, dtype=bool)
    starts[:, 1:] = sorted_codes[:, 1:] != sorted_codes[:, :-1]
    first = np.zeros_like(starts)
    np.put_along_axis(first, order, starts, axis=1)
    return first
