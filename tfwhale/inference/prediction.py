"""Stage 3 (predict): what predict works out before it writes anything: OOF outcome, test ranking."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tfwhale.contracts.run_folder import RunError, fold_dir_name
from tfwhale.inference import oof
from tfwhale.inference.class_heads import class_heads
from tfwhale.inference.gallery import PredictEmbeddings
from tfwhale.retrieval.ranking import (
    PreparedGallery,
    Ranked,
    RankOptions,
    predicted_species,
    predictions_with_new,
    prepare_gallery,
    rank,
)
from tfwhale.retrieval.threshold import ThresholdResult

logger = logging.getLogger("tfwhale.predict")


@dataclass(frozen=True)
class Settings:
    """The flags, with defaults filled in from the first run's config (predict section)."""

    flip: bool
    batch: int
    threshold: float | None  # None: tuned on OOF
    options: RankOptions
    new_share: float | None
    per_species: bool


@dataclass(frozen=True)
class OOFOutcome:
    predictions: oof.OOFPredictions
    tuned: ThresholdResult
    answers: list[list[str]]  # with new_individual, at the threshold(s) used for the test set


def out_of_fold(emb: PredictEmbeddings, settings: Settings, class_names: list[str]) -> OOFOutcome | None:
    """OOF predictions with the chosen options, the tuned threshold, the OOF answers at the threshold used."""
    predictions = oof.oof_predictions(emb, settings.options, class_names)
    if predictions is None:
        if settings.threshold is None:
            raise RunError(
                "no out-of-fold queries (the runs share no fold{k} folder: only full/?), so the threshold "
                "cannot be tuned; pass --threshold VALUE"
            )
        return None
    common = {fold_dir_name(k) for k in oof.oof_folds(emb)}
    for run in emb.runs:
        left_out = sorted({f.model.name for f in run.folds if f.model.val_fold is not None} - common)
        if left_out:
            logger.warning("%s: %s give no OOF queries (not every run has them)", run.run.run_dir, left_out)
    tuned = oof.tune(predictions, settings.new_share, settings.per_species)
    used = tuned if settings.threshold is None else settings.threshold
    species = predicted_species(predictions.ranked, species_by_individual(emb))
    answers = predictions_with_new(predictions.ranked, used, species)
    return OOFOutcome(predictions, tuned, answers)


def species_by_individual(emb: PredictEmbeddings) -> dict[str, str]:
    return dict(zip(emb.index.train_ids, emb.index.train_species, strict=True))


def rank_test(emb: PredictEmbeddings, options: RankOptions, class_names: list[str]):
    """(prepared gallery, ranked test queries): every fold model of every run takes part."""
    gallery = prepare_gallery(emb.combined("train"), options)
    heads = None
    if options.blend:
        folds = [f for r in emb.runs for f in r.folds]
        index = emb.index
        heads = class_heads([f.test for f in folds], folds, class_names, index.train_ids, index.train_folds)
    return gallery, rank(emb.combined("test"), gallery, emb.index.train_ids, options, heads)


@dataclass(frozen=True)
class Prediction:
    """Everything predict worked out, before it is written."""

    emb: PredictEmbeddings
    settings: Settings
    outcome: OOFOutcome | None
    gallery: PreparedGallery
    ranked: Ranked  # test queries, in emb.index.test_names order
    answers: dict[str, list[str]]  # test image -> its 5 labels with new_individual
    order: list[str]  # submission row order
    solution: dict[str, str] | None
