"""Out-of-fold scoring shared by training validation and predict: rank held-out queries, name their truths.

Stratified folds put almost every held-out photo's individual in the other folds too, so out-of-fold
queries are nearly all "known" and a threshold tuned on them learns never to say new_individual. A share
of them is therefore made new on purpose: their individual is left out of the gallery they are ranked
against (simulate_new), so tuning sees known and new queries in the proportion a real batch brings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfwhale.core.labels import NEW_INDIVIDUAL, check_new_share
from tfwhale.retrieval.ranking import ClassHeads, Ranked, RankOptions, prepare_gallery, rank

TOP_N = 5
# One label more than the top-5: a query whose own individual is dropped still has 5 candidates.
RANK_DEPTH = TOP_N + 1


@dataclass(frozen=True)
class OOFScored:
    """Out-of-fold queries as threshold tuning sees them."""

    ranked: Ranked  # per query, individuals best first; a simulated-new query's own individual removed
    truths: list[str]  # individual_id, or new_individual (absent from the gallery, really or simulated)
    simulated: np.ndarray  # bool per query: made new by leaving its individual out


def oof_truths(query_ids: Sequence[str], gallery_ids: Sequence[str]) -> list[str]:
    """A held-out individual never seen in the gallery is, for scoring, a new individual."""
    known = set(gallery_ids)
    return [i if i in known else NEW_INDIVIDUAL for i in query_ids]


def rank_out_of_fold(
    queries: np.ndarray,
    query_ids: Sequence[str],
    gallery: np.ndarray,
    gallery_ids: Sequence[str],
    options: RankOptions | None = None,
    heads: ClassHeads | None = None,
) -> tuple[Ranked, list[str]]:
    """(ranked individuals, truths) of held-out queries against the other folds' gallery.

    The trainer's per-epoch validation and predict's OOF tuning both come here, so the training log's
    MAP@5 and predict's OOF MAP@5 are computed the same way. Each query gets RANK_DEPTH individuals
    (when the gallery has them), so that simulate_new can leave one out.
    """
    options = options or RankOptions()
    ids = list(gallery_ids)
    ranked = rank(queries, prepare_gallery(gallery, options), ids, options, heads, n=RANK_DEPTH)
    return ranked, oof_truths(query_ids, ids)


def choose_simulated(truths: Sequence[str], new_share: float, seed: int = 0) -> set[str]:
    """Known individuals to leave out so that about `new_share` of all queries are new (real ones count).

    Individuals are drawn whole (all their queries turn new), in a seeded random order, until the share
    is reached; none is drawn when the real new queries already make it.
    """
    check_new_share(new_share)
    truths = list(truths)
    wanted = round(new_share * len(truths)) - sum(t == NEW_INDIVIDUAL for t in truths)
    known, counts = np.unique([t for t in truths if t != NEW_INDIVIDUAL], return_counts=True)
    order = np.random.default_rng(seed).permutation(len(known))
    chosen: set[str] = set()
    for i in order:
        if wanted <= 0:
            break
        # Keep at least one known individual: a threshold needs both kinds.
        if len(chosen) + 1 >= len(known):
            break
        chosen.add(str(known[i]))
        wanted -= int(counts[i])
    return chosen


def simulate_new(ranked: Ranked, truths: Sequence[str], new_share: float, seed: int = 0) -> OOFScored:
    """Leave-individual-out: the chosen individuals' queries lose their own individual and count as new.

    Dropping an individual from a query's ranked list equals ranking it against a gallery without that
    individual for kNN and the classifier blend; whitening and DBA fitted on the full gallery are kept.
    """
    chosen = choose_simulated(truths, new_share, seed) if new_share > 0 else set()
    labels, scores, out_truths, simulated = [], [], [], []
    for row_labels, row_scores, truth in zip(ranked.labels, ranked.scores, truths, strict=True):
        made_new = truth in chosen
        if made_new:
            kept = [i for i, label in enumerate(row_labels) if label != truth]
            row_labels = [row_labels[i] for i in kept]
            row_scores = [row_scores[i] for i in kept]
        labels.append(list(row_labels[:TOP_N]))
        scores.append(list(row_scores[:TOP_N]))
        out_truths.append(NEW_INDIVIDUAL if made_new else truth)
        simulated.append(made_new)
    return OOFScored(Ranked(labels, scores), out_truths, np.asarray(simulated, dtype=bool))
