"""Day-one gallery: the new_individual threshold tuned within the catalogue itself (no folds, no training).

Each photo is a query against all the others (never itself): a photo whose individual has no other photo
is a real new one, and about new_share of the queries are made new by leaving their individual out
(retrieval.scoring.simulate_new), as predict's OOF tuning does. Too few known or new queries to place a
threshold: a fixed value measured on real photos is used instead, and the policy says so.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.retrieval import knn
from tfwhale.retrieval.ranking import Ranked
from tfwhale.retrieval.scoring import RANK_DEPTH, simulate_new
from tfwhale.retrieval.threshold import MIN_GROUP_QUERIES, ThresholdResult, tune_threshold

logger = logging.getLogger(__name__)

SOURCE = "auto (leave-one-out within the catalogue, simulated new individuals)"
# Used when the catalogue is too small to tune: ImageNet Lite0 day-one galleries of the nyala photos
# (224 px) tuned 0.78-0.87 leave-one-out (mean 0.815 over 5 splits) and their queries were answered
# best at 0.73-0.81 (BENCHMARKS.md, "Day-one gallery"). Lions tuned ~0.96 ("everything is new").
FALLBACK_THRESHOLD = 0.80
_ROWS = 1024  # queries per similarity block


@dataclass(frozen=True)
class CatalogueTuning:
    policy: ThresholdPolicy
    tuned: ThresholdResult  # what leave-one-out tuning found (also when its value was not used)
    map5: float  # leave-one-out MAP@5 at the tuned threshold (optimistic: tuned on the same queries)


def leave_one_out(embeddings: np.ndarray, ids: Sequence[str], k: int = 200) -> Ranked:
    """Each photo's best individuals among all the other photos (max cosine per individual)."""
    n = len(embeddings)
    k = max(1, min(k, n - 1))
    labels, scores = [], []
    for start in range(0, n, _ROWS):
        sims = embeddings[start : start + _ROWS] @ embeddings.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # never itself
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        block_labels, block_scores = knn.top_individuals(
            np.take_along_axis(sims, idx, axis=1), idx, np.asarray(ids), n=RANK_DEPTH
        )
        labels += block_labels
        scores += block_scores
    return Ranked(labels, scores)


def tune_on_catalogue(
    embeddings: np.ndarray, ids: Sequence[str], new_share: float, seed: int = 0
) -> CatalogueTuning:
    """The gallery's threshold policy, with its source, separation AUC and warnings."""
    return tune_ranked(leave_one_out(embeddings, ids), ids, new_share, seed, FALLBACK_THRESHOLD, "")


def tune_ranked(
    ranked: Ranked, ids: Sequence[str], new_share: float, seed: int, fallback: float, score: str
) -> CatalogueTuning:
    """The policy from each photo's leave-one-out ranking (never itself); score names what the
    threshold is on when it is not the embedding's similarity (e.g. "fused P(same)")."""
    counts = Counter(ids)
    truths = [i if counts[i] > 1 else NEW_INDIVIDUAL for i in ids]  # alone: nothing else to match
    scored = simulate_new(ranked, truths, new_share, seed)
    tuned = tune_threshold(
        scored.ranked.labels, scored.ranked.scores, scored.truths, n_simulated=int(scored.simulated.sum())
    )
    on = f", on the {score}" if score else ""
    if min(tuned.n_known, tuned.n_new) >= MIN_GROUP_QUERIES:
        policy = ThresholdPolicy(
            tuned.threshold, {}, SOURCE + on, tuned.separation_auc, tuple(tuned.warnings)
        )
        return CatalogueTuning(policy, tuned, tuned.best_map)
    why = (
        f"the catalogue is too small to tune the new_individual threshold: {tuned.n_known} known and "
        f"{tuned.n_new} new leave-one-out queries (< {MIN_GROUP_QUERIES} of a kind); using the fixed "
        f"{fallback}{on} instead (tuning would have said {tuned.threshold:.3f})"
    )
    logger.warning("%s", why)
    source = f"fixed {fallback} (catalogue too small to tune){on}"
    policy = ThresholdPolicy(fallback, {}, source, tuned.separation_auc, (why, *tuned.warnings))
    return CatalogueTuning(policy, tuned, tuned.best_map)
