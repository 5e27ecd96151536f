"""Retrieval: where new_individual goes in a top 5, and the threshold tuned on out-of-fold MAP@5 (training's
validation, predict's tuning; the query path applies it through the gallery's threshold policy)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tfwhale.core.labels import NEW_INDIVIDUAL as NEW
from tfwhale.core.labels import check_new_share
from tfwhale.core.metrics import map_at_k

logger = logging.getLogger(__name__)

DEFAULT_GRID = np.round(np.arange(0.0, 1.0 + 1e-9, 0.0025), 4)  # 401 thresholds, 0.0 .. 1.0
MIN_SPECIES_QUERIES = 100
# Below these, tuning is flagged unreliable: too few queries of a kind to place a threshold between them,
# or top-1 similarities of known and new queries that barely separate (ROC AUC, 0.5 = chance).
MIN_GROUP_QUERIES = 20
MIN_SEPARATION_AUC = 0.65


def insert_new_individual(
    labels: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    threshold: float,
    n: int = 5,
    max_rank: int | None = None,
) -> list[list[str]]:
    """Each query's top-n with new_individual placed before the first label scoring <= threshold.

    Labels scoring above the threshold keep their ranks; new_individual takes the next one
    (rank 1 when even the best score is at or below the threshold), and the list is cut to n.
    When every label scores above the threshold, new_individual appears only if there are fewer
    than n labels (it is then last), so a confident query keeps n real candidates.

    max_rank caps how far down new_individual may go. The public Happywhale TPU baseline is
    max_rank=2: it compared only the top-1 score, putting new_individual 1st when it was <= the
    threshold and 2nd otherwise, whatever the lower scores were. None (default) follows every score.
    """
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} label lists but {len(scores)} score lists")
    cap = n if max_rank is None else max(0, min(n, max_rank - 1))
    predictions = []
    for row, (row_labels, row_scores) in enumerate(zip(labels, scores, strict=True)):
        _check_row(row, row_labels, row_scores)
        # A cosine is at most 1; float noise above it must not escape a threshold of 1.0.
        kept = next((i for i, s in enumerate(row_scores) if min(s, 1.0) <= threshold), len(row_scores))
        kept = min(kept, cap)
        ranked = [*row_labels[:kept], NEW, *row_labels[kept:]]
        predictions.append(ranked[:n])
    return predictions


def _check_row(row: int, row_labels: Sequence[str], row_scores: Sequence[float]) -> None:
    if len(row_labels) != len(row_scores):
        raise ValueError(f"query {row}: {len(row_labels)} labels but {len(row_scores)} scores")
    if NEW in row_labels:
        raise ValueError(f"query {row}: labels already contain {NEW!r}")


@dataclass(frozen=True)
class ThresholdResult:
    """Outcome of tune_threshold; map values are the (new_share-weighted) OOF MAP@5."""

    threshold: float
    best_map: float
    new_rate: float  # share of OOF queries with new_individual ranked first at `threshold`
    grid: np.ndarray
    map_curve: np.ndarray
    per_species: dict[str, float] = field(default_factory=dict)  # only species tuned on their own
    per_species_map: float | None = None  # score with per-species thresholds (optimistic: same data)
    new_share: float | None = None
    max_rank: int | None = None
    n_queries: int = 0
    n_new: int = 0  # OOF queries whose truth is new_individual (real or simulated)
    n_simulated: int = 0  # of those, made new by leaving their individual out of the gallery
    separation_auc: float | None = None  # ROC AUC of top-1 similarity, known vs new (None: one kind only)
    warnings: tuple[str, ...] = ()
    top1: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per OOF query, its best similarity
    is_new: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def n_known(self) -> int:
        return self.n_queries - self.n_new


def tune_threshold(
    oof_labels: Sequence[Sequence[str]],
    oof_scores: Sequence[Sequence[float]],
    truths: Sequence[str],
    grid: np.ndarray | None = None,
    new_share: float | None = None,
    species: Sequence[str] | None = None,
    per_species: bool = False,
    n: int = 5,
    max_rank: int | None = None,
    min_species_queries: int = MIN_SPECIES_QUERIES,
    n_simulated: int = 0,
) -> ThresholdResult:
    """The new_individual threshold maximising MAP@5 over out-of-fold predictions.

    oof_labels/oof_scores: each OOF query's top individuals and scores (best first, without
    new_individual), as top_individuals returns them. truths: the query's individual id, or
    "new_individual" when that individual is absent from the training folds.

    new_share: expected share of new individuals in the test set; the score becomes
    (1 - new_share) * MAP@5(known queries) + new_share * MAP@5(new queries) (the public baseline
    used 0.1). None scores all OOF queries alike. per_species: also tune a threshold per species
    (needs `species`) for species with at least min_species_queries OOF queries; the others use
    the global one. Among equally good grid points the middle of the best run is taken, which
    keeps the threshold away from the OOF scores that bound it. n_simulated: how many of the new
    truths were simulated (retrieval.scoring.simulate_new), for the report.
    """
    grid = np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be a non-empty, strictly increasing 1-D array")
    if len(truths) != len(oof_labels):
        raise ValueError(f"{len(truths)} truths but {len(oof_labels)} OOF predictions")
    if new_share is not None:
        check_new_share(new_share)
    scores = _score_matrix(oof_labels, oof_scores, n)
    ap = _ap_table(oof_labels, truths, n)
    is_new = np.array([t == NEW for t in truths], dtype=bool)
    cap = n if max_rank is None else max(0, min(n, max_rank - 1))
    weights = _query_weights(is_new, new_share)
    curve = _map_curve(scores, ap, weights, grid, cap)
    threshold = float(grid[_best_index(curve)])
    best_map = _weighted_map(oof_labels, oof_scores, truths, is_new, new_share, threshold, n, max_rank)
    species_thresholds, species_map = {}, None
    if per_species:
        species_thresholds = _tune_per_species(
            scores, ap, is_new, species, new_share, grid, cap, min_species_queries
        )
        species_map = _per_species_score(scores, ap, weights, species, species_thresholds, threshold, cap)
    return ThresholdResult(
        threshold=threshold,
        best_map=best_map,
        new_rate=float(np.mean(_kept(scores, threshold, cap) == 0)) if len(scores) else 0.0,
        grid=grid,
        map_curve=curve,
        per_species=species_thresholds,
        per_species_map=species_map,
        new_share=new_share,
        max_rank=max_rank,
        n_queries=len(truths),
        n_new=int(is_new.sum()),
        n_simulated=n_simulated,
        separation_auc=separation_auc(scores[:, 0], is_new),
        warnings=reliability_warnings(scores[:, 0], is_new),
        top1=scores[:, 0].copy(),
        is_new=is_new,
    )


def separation_auc(top1: np.ndarray, is_new: np.ndarray) -> float | None:
    """P(a known query's top-1 similarity > a new query's), ties counting half; None without both kinds."""
    known, new = top1[~is_new], top1[is_new]
    if not len(known) or not len(new):
        return None
    values = np.concatenate([known, new])
    ranks = _average_ranks(values)
    known_rank_sum = ranks[: len(known)].sum()
    return float((known_rank_sum - len(known) * (len(known) + 1) / 2) / (len(known) * len(new)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank (the Mann-Whitney U convention)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def reliability_warnings(top1: np.ndarray, is_new: np.ndarray) -> tuple[str, ...]:
    """Why a threshold tuned on these OOF queries may not hold on new photos."""
    warnings = []
    n_new, n_known = int(is_new.sum()), int((~is_new).sum())
    for kind, count in (("new", n_new), ("known", n_known)):
        if count < MIN_GROUP_QUERIES:
            warnings.append(
                f"only {count} {kind} OOF queries (< {MIN_GROUP_QUERIES}): too few to place a threshold; "
                "more photos, or a larger --new-share, give it more to go on"
            )
    auc = separation_auc(top1, is_new)
    if auc is not None and auc < MIN_SEPARATION_AUC:
        warnings.append(
            f"known and new OOF queries barely separate by top-1 similarity (ROC AUC {auc:.3f} < "
            f"{MIN_SEPARATION_AUC}): new_individual answers will be close to guesses"
        )
    return tuple(warnings)


def _score_matrix(labels: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], n: int) -> np.ndarray:
    """[Q, n] scores, -inf where a query has fewer than n labels; rows must be sorted best first."""
    matrix = np.full((len(scores), n), -np.inf)
    for row, (row_labels, row_scores) in enumerate(zip(labels, scores, strict=True)):
        _check_row(row, row_labels, row_scores)
        top = np.asarray(row_scores[:n], dtype=np.float64)
        if np.any(np.diff(top) > 0) or np.any(np.isnan(top)):
            raise ValueError(f"query {row}: scores must be sorted best first, got {list(row_scores)}")
        matrix[row, : len(top)] = np.minimum(top, 1.0)
    return matrix


def _ap_table(labels: Sequence[Sequence[str]], truths: Sequence[str], n: int) -> np.ndarray:
    """[Q, n + 1] average precision when new_individual follows the first c labels (c = n: not shown)."""
    c = np.arange(n + 1)
    table = np.zeros((len(truths), n + 1))
    for row, (row_labels, truth) in enumerate(zip(labels, truths, strict=True)):
        if truth == NEW:
            table[row] = np.where(c < n, 1.0 / (c + 1), 0.0)
            continue
        top = list(row_labels[:n])
        if truth not in top:
            continue
        rank = top.index(truth) + 1
        pushed = np.where(rank + 1 <= n, 1.0 / (rank + 1), 0.0)  # new_individual lands above the truth
        table[row] = np.where(c >= rank, 1.0 / rank, pushed)
    return table


def _query_weights(is_new: np.ndarray, new_share: float | None) -> np.ndarray:
    """Per-query weights summing to 1; with new_share, the two groups get those shares of the total."""
    total = len(is_new)
    if total == 0:
        return np.zeros(0)
    n_new = int(is_new.sum())
    if new_share is None or n_new in (0, total):
        if new_share is not None:
            logger.warning(
                "new_share ignored: the OOF queries are all known or all new (%d of %d new)", n_new, total
            )
        return np.full(total, 1.0 / total)
    return np.where(is_new, new_share / n_new, (1.0 - new_share) / (total - n_new))


def _map_curve(
    scores: np.ndarray, ap: np.ndarray, weights: np.ndarray, grid: np.ndarray, cap: int
) -> np.ndarray:
    """Weighted MAP@n at every grid threshold, without re-ranking per threshold.

    With its scores sorted, a query keeps c(t) = #{i < cap: s_i > t} labels ahead of
    new_individual, so its AP is ap[c(t)] = ap[0] + sum over those i of (ap[i+1] - ap[i]).
    Label i stays ahead exactly for the grid points below `first_at_or_above[i]`, so each step
    is added into one bin and a reverse cumulative sum spreads it over the lower thresholds.
    """
    steps = (ap[:, 1 : cap + 1] - ap[:, :cap]) * weights[:, None]
    first_at_or_above = np.searchsorted(grid, scores[:, :cap], side="left")
    added = np.bincount(first_at_or_above.ravel(), weights=steps.ravel(), minlength=len(grid) + 1)
    from_above = np.cumsum(added[::-1])[::-1]  # from_above[j] = sum of added[j:]
    return float(weights @ ap[:, 0]) + from_above[1:]


def _best_index(curve: np.ndarray) -> int:
    """Middle of the first run of grid points where the curve is at its maximum (to 1e-12)."""
    is_best = curve >= curve.max() - 1e-12
    start = end = int(np.argmax(is_best))
    while end + 1 < len(curve) and is_best[end + 1]:
        end += 1
    return (start + end) // 2


def _weighted_map(
    labels, scores, truths, is_new: np.ndarray, new_share: float | None, threshold: float, n: int, max_rank
) -> float:
    """MAP@n of the inserted predictions as core.metrics scores them, weighted as in _query_weights."""
    predictions = insert_new_individual(labels, scores, threshold, n, max_rank)
    truths = list(truths)
    if new_share is None or is_new.all() or not is_new.any():
        return map_at_k(truths, predictions, n)

    def group_map(flag: bool) -> float:
        rows = np.flatnonzero(is_new == flag)
        return map_at_k([truths[i] for i in rows], [predictions[i] for i in rows], n)

    return (1.0 - new_share) * group_map(False) + new_share * group_map(True)


def _kept(scores: np.ndarray, thresholds: np.ndarray | float, cap: int) -> np.ndarray:
    """Per query, how many labels stay ahead of new_individual."""
    return np.minimum((scores > np.reshape(thresholds, (-1, 1))).sum(axis=1), cap)


def _tune_per_species(scores, ap, is_new, species, new_share, grid, cap, min_queries) -> dict[str, float]:
    if species is None or len(species) != len(scores):
        raise ValueError("per_species needs one species name per OOF query")
    species = np.asarray(species)
    thresholds = {}
    for name in np.unique(species):
        rows = species == name
        if rows.sum() < min_queries:
            logger.info(
                "species %s: %d OOF queries < %d, uses the global threshold", name, rows.sum(), min_queries
            )
            continue
        weights = _query_weights(is_new[rows], new_share)
        curve = _map_curve(scores[rows], ap[rows], weights, grid, cap)
        thresholds[str(name)] = float(grid[_best_index(curve)])
    return thresholds


def _per_species_score(
    scores, ap, weights, species, thresholds: dict[str, float], default: float, cap
) -> float:
    per_query = np.array([thresholds.get(str(name), default) for name in species])
    return float(weights @ ap[np.arange(len(ap)), _kept(scores, per_query, cap)])
