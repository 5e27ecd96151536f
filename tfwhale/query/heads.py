"""Query path: fold models' ArcFace heads, for blending class cosines into the ranking (--blend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfwhale.contracts.gallery_arrays import FoldCentres
from tfwhale.retrieval.ranking import ClassHeads


def class_heads(
    query_embeddings: Sequence[np.ndarray],
    centres: Sequence[FoldCentres],
    val_folds: Sequence[int | None],
    class_names: Sequence[str],
    train_ids: Sequence[str],
    train_folds: np.ndarray,
) -> ClassHeads:
    """Heads of fold models (their centres) on queries embedded by each; a fold model trained the
    classes of every train record outside its validation fold (val_fold None: all of them)."""
    ids, names = np.asarray(train_ids), np.asarray(class_names)
    trained = []
    for val_fold in val_folds:
        seen = ids if val_fold is None else ids[np.asarray(train_folds) != val_fold]
        trained.append(np.isin(names, seen))
    return ClassHeads(
        embeddings=tuple(query_embeddings),
        centres=tuple(c.centres for c in centres),
        subcenters=tuple(c.subcenters for c in centres),
        trained=tuple(trained),
        class_names=tuple(class_names),
    )
