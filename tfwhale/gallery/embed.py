"""Day-one gallery: every record of the build embedded by the untrained model, with a progress bar.

The records pass predict uses (feed.data.embed, the query path's TTAModel for flip TTA), fold by fold so
each row keeps its fold; the vectors are combined as the query path combines one fold (L2-normalised).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tfwhale.contracts.records import Manifest
from tfwhale.feed import data
from tfwhale.query.combine import check_finite, combine
from tfwhale.query.embedder import TTAModel


@dataclass(frozen=True)
class EmbeddedPhotos:
    embeddings: np.ndarray  # [N, D] unit rows, in the gallery's space
    names: list[str]
    ids: list[str]
    species: list[str]
    folds: np.ndarray  # int [N]


class _Progress:
    """Stands in for the Keras model in feed.data.embed: the same batches, one bar tick per batch."""

    def __init__(self, model, bar: tqdm) -> None:
        self.model, self.bar = model, bar

    def predict(self, batches, verbose: int = 0) -> np.ndarray:
        outputs = []
        for batch in batches:
            # predict_on_batch reuses one compiled step; Model.predict sets up each call (query.embedder)
            outputs.append(np.asarray(self.model.predict_on_batch(batch)))
            self.bar.update(1)
        return np.concatenate(outputs)


def embed_records(model, records: Manifest, flip: bool, batch: int, progress: bool = True) -> EmbeddedPhotos:
    """The build's training photos embedded fold by fold (a build made for the gallery has no test split)."""
    folds = [f for f in range(records.n_folds) if records.count("train", [f])]
    total = sum(-(-records.count("train", [f]) // batch) for f in folds)
    parts = []
    with tqdm(total=total, desc=f"embedding {records.count('train')} photos", unit="batch",
              disable=not progress) as bar:  # fmt: skip
        tta = TTAModel(_Progress(model, bar), flip, batch)
        for fold in folds:
            parts.append((fold, data.embed(tta, records, "train", [fold], batch)))
    names = [n for _, e in parts for n in e.names]
    embeddings = combine([[np.concatenate([e.embeddings for _, e in parts])]], [1.0])
    check_finite(embeddings, names, "the pretrained backbone")
    return EmbeddedPhotos(
        embeddings=embeddings,
        names=names,
        ids=[i for _, e in parts for i in e.ids],
        species=[s for _, e in parts for s in e.species],
        folds=np.concatenate([np.full(len(e.names), fold) for fold, e in parts]).astype(np.int64),
    )
