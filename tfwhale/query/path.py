"""The query path itself: a photo (bytes + box) or a crop -> the gallery's answer, for identify and serve.

Crop as the records were cropped (the gallery's image settings), embed with the gallery's fold models and
TTA, combine as predict combined, rank with the gallery's options (against the gallery predict wrote, or
a grown one the caller holds), and answer with the gallery's threshold policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tfwhale.contracts import records
from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.contracts.run_folder import load_embedding_model
from tfwhale.imaging.photo_crop import ImageError, process_image
from tfwhale.query.answers import QueryAnswer, answer_rows
from tfwhale.query.combine import check_finite, combine
from tfwhale.query.embedder import TTAModel
from tfwhale.query.gallery import Gallery, QueryError, load_gallery
from tfwhale.query.heads import class_heads
from tfwhale.query.local import LocalRerankPath, Reranked
from tfwhale.retrieval import ranking


@dataclass(frozen=True)
class Embedded:
    combined: np.ndarray  # [n, D] in the gallery's space, before whitening (what a catalogue stores)
    # per run, per fold model: [n, D_run] (for --blend); None for stored combined embeddings
    per_fold: tuple[tuple[np.ndarray, ...], ...] | None


class QueryPath:
    """One gallery's fold models loaded once; answers photos as predict answered the test records."""

    def __init__(
        self, gallery: Gallery, models: Sequence[Sequence], batch: int = 16, threshold: float | None = None
    ) -> None:
        """From parts already loaded (see load); the latency benchmark builds them in memory. threshold:
        a user's fixed new_individual threshold instead of the gallery's policy."""
        self.gallery = gallery
        self.options = gallery.options
        policy = gallery.manifest.threshold
        self.policy = policy if threshold is None else policy.fixed(threshold)
        # a gallery that re-ranks: `policy` is on the fused P, this one on the embedding similarity alone
        on_embedding = gallery.manifest.embedding_threshold or policy
        self.embedding_policy = on_embedding if threshold is None else on_embedding.fixed(threshold)
        flip = gallery.manifest.flip_tta
        self.models = tuple(tuple(TTAModel(m, flip, batch) for m in run) for run in models)
        self.local = None  # the local re-rank, for galleries made with local features (rerank "local")
        if gallery.manifest.rerank == "local":
            try:
                self.local = LocalRerankPath(
                    gallery.out_dir, gallery.manifest, gallery.arrays.train_names, gallery.arrays.train_ids
                )
            except ValueError as err:
                raise QueryError(str(err)) from None

    @classmethod
    def load(
        cls,
        gallery_dir: str,
        run_dirs: Sequence[str] | None = None,
        batch: int = 16,
        threshold: float | None = None,
    ) -> QueryPath:
        gallery = load_gallery(gallery_dir, run_dirs)
        models = [[load_embedding_model(f) for f in run] for run in gallery.runs]
        return cls(gallery, models, batch, threshold)

    def crop(self, data: bytes, box: tuple | None, name: str) -> tuple[bytes, np.ndarray]:
        """(the crop's JPEG, uint8 [S, S, 3]) of one photo's bytes, cropped, resized and encoded as the
        builder did, then decoded as the trainer decodes; QueryError naming the photo if unusable."""
        settings = self.gallery.manifest.image
        try:
            jpeg, _ = process_image(data, box, settings)
        except ImageError as err:
            raise QueryError(f"{name}: {err}") from None
        return jpeg, records.decode_image(jpeg, settings.size).numpy()

    def local_features(self, data: bytes, box: tuple | None, name: str) -> LocalFeatures | None:
        """The photo's local features from its match-size crop (None when the gallery does not re-rank);
        QueryError naming the photo if unusable."""
        if self.local is None:
            return None
        try:
            return self.local.features(data, box)
        except ImageError as err:
            raise QueryError(f"{name}: {err}") from None

    def embed(self, images: np.ndarray, names: Sequence[str]) -> Embedded:
        per_fold = tuple(tuple(model.embed(images) for model in run) for run in self.models)
        combined = combine(per_fold, self.gallery.weights)
        check_finite(combined, names, "the fold models")
        return Embedded(combined, per_fold)

    def rank(
        self,
        embedded: Embedded,
        searched: ranking.PreparedGallery | None = None,
        labels: Sequence | None = None,
        n: int = 5,
    ) -> ranking.Ranked:
        """Rank against the gallery predict wrote, or `searched` rows labelled `labels` (a grown one)."""
        gallery = self.gallery
        if searched is None:
            searched, labels = (
                ranking.PreparedGallery(gallery.arrays.gallery, gallery.whitening),
                gallery.arrays.train_ids,
            )
        if not self.blends(embedded):
            options = replace(self.options, blend=0.0)
            return ranking.rank(embedded.combined, searched, labels, options, n=n)
        return ranking.rank(embedded.combined, searched, labels, self.options, self._heads(embedded), n=n)

    def blends(self, embedded: Embedded) -> bool:
        """Class cosines are blended in when the gallery asks and the per-fold embeddings are at hand."""
        return bool(self.options.blend) and embedded.per_fold is not None

    def answer(
        self, ranked: ranking.Ranked, species_of: dict[str, str] | None = None, fused: bool = False
    ) -> list[QueryAnswer]:
        """Answers of a ranking by the embedding (its similarity held to the embedding's threshold), or
        fused: by the local re-rank's P (held to the gallery's policy on it)."""
        species_of = self.gallery.species_of if species_of is None else species_of
        return answer_rows(ranked, self.policy if fused else self.embedding_policy, species_of)

    def identify(
        self, images: np.ndarray, names: Sequence[str], features: Sequence[LocalFeatures] | None = None
    ) -> list[QueryAnswer]:
        """features: the photos' local_features, needed when the gallery re-ranks by them."""
        embedded = self.embed(images, names)
        if self.local is None:
            return self.answer(self.rank(embedded))
        return self.answer(self.rerank(embedded, names, features).ranked, fused=True)

    def rerank(
        self, embedded: Embedded, names: Sequence[str], features: Sequence[LocalFeatures] | None
    ) -> Reranked:
        """The gallery's every individual by fused P(same) of the embedding and the local evidence."""
        if self.local is None:
            raise QueryError(f"{self.gallery.out_dir}: made without local features; it cannot re-rank")
        if features is None or len(features) != len(names):
            raise QueryError(f"{self.gallery.out_dir} re-ranks by local features: each photo needs its own")
        every = len(self.local.individuals)
        return self.local.rerank(self.rank(embedded, n=every), features)

    def _heads(self, embedded: Embedded) -> ranking.ClassHeads:
        arrays, centres, val_folds, queries = self.gallery.arrays, [], [], []
        for r, (folds, fold_embeddings) in enumerate(zip(self.gallery.runs, embedded.per_fold, strict=True)):
            for fold, embeddings in zip(folds, fold_embeddings, strict=True):
                found = arrays.centres_of(r, fold.name)
                if found is None:
                    raise QueryError(
                        f"{self.gallery.out_dir}: no class centres for {fold.path}; run predict again"
                    )
                centres.append(found)
                val_folds.append(fold.val_fold)
                queries.append(embeddings)
        return class_heads(
            queries, centres, val_folds, arrays.class_names, arrays.train_ids, arrays.train_folds
        )
