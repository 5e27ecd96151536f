"""Stage 3 (predict, identify): fold models' ArcFace heads, for blending class cosines into the ranking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfwhale.contracts.run_folder import RunError
from tfwhale.inference.gallery import FoldEmbeddings
from tfwhale.retrieval.ranking import ClassHeads


def class_heads(
    query_embeddings: Sequence[np.ndarray],
    folds: Sequence[FoldEmbeddings],
    class_names: Sequence[str],
    train_ids: Sequence[str],
    train_folds: np.ndarray,
) -> ClassHeads:
    """Heads of fold models (their centres) on queries embedded by each; a fold model trained the
    classes of every train record outside its validation fold."""
    ids, names = np.asarray(train_ids), np.asarray(class_names)
    trained = []
    for fold in folds:
        if fold.centres is None:
            raise RunError(f"{fold.model.path}: no class centres loaded; the blend needs them")
        seen = ids if fold.model.val_fold is None else ids[np.asarray(train_folds) != fold.model.val_fold]
        trained.append(np.isin(names, seen))
    return ClassHeads(
        embeddings=tuple(query_embeddings),
        centres=tuple(f.centres for f in folds),
        subcenters=tuple(f.subcenters for f in folds),
        trained=tuple(trained),
        class_names=tuple(class_names),
    )
