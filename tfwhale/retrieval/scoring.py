"""Out-of-fold scoring shared by training validation and predict: rank held-out queries, name their truths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfwhale.contracts.records import NEW_INDIVIDUAL
from tfwhale.retrieval.ranking import ClassHeads, Ranked, RankOptions, prepare_gallery, rank


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
    MAP@5 and predict's OOF MAP@5 are computed the same way.
    """
    options = options or RankOptions()
    ids = list(gallery_ids)
    ranked = rank(queries, prepare_gallery(gallery, options), ids, options, heads)
    return ranked, oof_truths(query_ids, ids)
