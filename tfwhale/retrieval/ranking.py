"""Retrieval: rank the gallery's individuals for each query (test, out-of-fold, validation, identify, serve).

kNN (best similarity per individual), optional PCA whitening / DBA fitted on the gallery, query
expansion, and an optional blend with the ArcFace classifier's cosines. Where new_individual goes is
the query path's job (tfwhale.query.answers), with the gallery's threshold policy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfwhale.retrieval import knn, postprocess

logger = logging.getLogger(__name__)

_CLASS_CHUNK = 1024  # queries per classifier-cosine block: [chunk, n_classes] floats at a time
_BLEND_EXTRA = 10  # best classifier classes added to each query's kNN candidates


@dataclass(frozen=True)
class RankOptions:
    k: int = 50  # neighbours searched (more when a query's neighbours hold fewer than 5 individuals)
    backend: str = "exact"
    dba: int = 0  # database-side augmentation over this many neighbours (0: off)
    qe: int = 0  # alpha query expansion over this many neighbours (0: off)
    whiten: bool = False  # PCA whitening fitted on the gallery
    blend: float = 0.0  # weight of the classifier cosine next to the kNN similarity (0: off)

    @property
    def name(self) -> str:
        parts = ["knn"]
        parts += ["whiten"] if self.whiten else []
        parts += [f"dba{self.dba}"] if self.dba else []
        parts += [f"qe{self.qe}"] if self.qe else []
        parts += [f"blend{self.blend:g}"] if self.blend else []
        return "+".join(parts)


@dataclass(frozen=True)
class ClassHeads:
    """ArcFace heads for the blend: per fold model, the queries' embeddings in that model's space and
    its class centres; `trained` marks the classes that model saw photos of."""

    embeddings: tuple[np.ndarray, ...]  # [Q, D_h] per head
    centres: tuple[np.ndarray, ...]  # [D_h, C * k_h] per head
    subcenters: tuple[int, ...]
    trained: tuple[np.ndarray, ...]  # bool [C] per head
    class_names: tuple[str, ...]

    def cosines(self, rows: slice) -> np.ndarray:
        """Mean class cosine over the heads that trained each class: [rows, C], NaN where none did."""
        total, count = 0.0, 0
        for emb, centres, k, trained in zip(
            self.embeddings, self.centres, self.subcenters, self.trained, strict=True
        ):
            cos = emb[rows] @ centres
            if k > 1:
                cos = cos.reshape(len(cos), -1, k).max(axis=2)
            total = total + np.where(trained, cos, 0.0)
            count = count + trained
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


@dataclass(frozen=True)
class Ranked:
    labels: list[list[str]]  # per query, distinct individuals best first (no new_individual)
    scores: list[list[float]]


@dataclass(frozen=True)
class PreparedGallery:
    embeddings: np.ndarray
    whitening: postprocess.Whitening | None


def prepare_gallery(gallery: np.ndarray, options: RankOptions) -> PreparedGallery:
    """Whitening (fitted here) and DBA applied to the gallery, as the options ask."""
    whitening = postprocess.fit_pca_whitening(gallery) if options.whiten else None
    if whitening is not None:
        gallery = whitening.apply(gallery)
    if options.dba > 1:
        gallery = postprocess.database_augment(gallery, k=min(options.dba, len(gallery)))
    return PreparedGallery(gallery, whitening)


def prepare_queries(queries: np.ndarray, gallery: PreparedGallery, options: RankOptions) -> np.ndarray:
    if gallery.whitening is not None:
        queries = gallery.whitening.apply(queries)
    if options.qe > 0:
        queries = postprocess.query_expansion(
            queries, gallery.embeddings, k=min(options.qe, len(gallery.embeddings))
        )
    return queries


def rank(
    queries: np.ndarray,
    gallery: PreparedGallery,
    gallery_ids: Sequence[str],
    options: RankOptions,
    heads: ClassHeads | None = None,
    n: int = 5,
) -> Ranked:
    """Each query's individuals, best first, at least n of them when the gallery has n."""
    queries = prepare_queries(queries, gallery, options)
    ids = np.asarray(gallery_ids)
    labels, scores = _knn_individuals(
        queries, gallery.embeddings, ids, options, n, keep_all=bool(options.blend)
    )
    if options.blend:
        if heads is None:
            raise ValueError("blend > 0 needs the classifier heads")
        labels, scores = _blend(labels, scores, heads, set(gallery_ids), options.blend)
    return Ranked(labels, scores)


def _knn_individuals(queries, gallery, ids, options: RankOptions, n: int, keep_all: bool):
    """top_individuals of a k-search; queries whose k neighbours hold fewer than n individuals are
    searched again with more neighbours, up to the whole gallery."""
    wanted = min(n, len(set(ids.tolist())))
    k = min(options.k, len(gallery))
    labels, scores = _top(queries, gallery, ids, k, options.backend, n, keep_all)
    short = [i for i, row in enumerate(labels) if len(row) < wanted]
    while short and k < len(gallery):
        k = min(len(gallery), k * 4)
        more_labels, more_scores = _top(queries[short], gallery, ids, k, options.backend, n, keep_all)
        for row, row_labels, row_scores in zip(short, more_labels, more_scores, strict=True):
            labels[row], scores[row] = row_labels, row_scores
        short = [i for i in short if len(labels[i]) < wanted]
    return labels, scores


def _top(queries, gallery, ids, k: int, backend: str, n: int, keep_all: bool):
    sims, idx = knn.search(queries, gallery, k=k, backend=backend)
    return knn.top_individuals(sims, idx, ids, n=k if keep_all else n)


def _blend(labels, scores, heads: ClassHeads, allowed: set[str], weight: float):
    """(1 - w) * kNN similarity + w * class cosine per candidate individual.

    Candidates are the kNN individuals plus the classifier's best classes among the gallery's
    individuals. A candidate outside the query's neighbours gets the lowest neighbour similarity
    (its own best is at most that); one that no head trained keeps its kNN similarity alone.
    """
    names = np.asarray(heads.class_names)
    column = {name: i for i, name in enumerate(heads.class_names)}
    allowed_mask = np.isin(names, list(allowed))
    out_labels, out_scores = [], []
    for start in range(0, len(labels), _CLASS_CHUNK):
        cos = heads.cosines(slice(start, start + _CLASS_CHUNK))
        rankable = np.where(allowed_mask & np.isfinite(cos), cos, -np.inf)
        extra = min(_BLEND_EXTRA, rankable.shape[1])
        best = np.argpartition(-rankable, extra - 1, axis=1)[:, :extra]
        for offset, row_cos in enumerate(cos):
            row = start + offset
            classes = [names[c] for c in best[offset] if np.isfinite(rankable[offset, c])]
            knn_score = dict(zip(labels[row], scores[row], strict=True))
            class_score = {c: row_cos[column[c]] for c in set(knn_score) | set(classes) if c in column}
            row_labels, row_scores = _blend_row(knn_score, class_score, weight)
            out_labels.append(row_labels)
            out_scores.append(row_scores)
    return out_labels, out_scores


def _blend_row(knn_score: dict[str, float], class_score: dict[str, float], weight: float):
    floor = min(knn_score.values()) if knn_score else -1.0
    blended = {}
    for label in set(knn_score) | set(class_score):
        similarity = knn_score.get(label, floor)
        cos = class_score.get(label, np.nan)
        blended[label] = similarity if np.isnan(cos) else (1 - weight) * similarity + weight * float(cos)
    ordered = sorted(blended.items(), key=lambda item: (-item[1], item[0]))
    return [label for label, _ in ordered], [float(score) for _, score in ordered]
