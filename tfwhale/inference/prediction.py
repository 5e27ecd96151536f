"""Stage 3 (predict): what predict works out before it writes anything: OOF outcome, test ranking."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tfwhale.contracts.run_folder import RunError, fold_dir_name
from tfwhale.inference import oof
from tfwhale.inference.class_heads import class_heads
from tfwhale.inference.gallery import PredictEmbeddings, concat_runs
from tfwhale.retrieval.calibration import calibrate
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
    new_share: float  # share of OOF queries made new for tuning (0: only the really new ones)
    per_species: bool
    calibrate: bool = False  # carry the OOF-tuned threshold onto the fold-averaged test scale
    seed: int = 0  # which individuals the simulation leaves out


@dataclass(frozen=True)
class OOFOutcome:
    predictions: oof.OOFPredictions
    tuned: ThresholdResult  # on the OOF (single fold model) similarity scale
    answers: list[list[str]]  # OOF queries with new_individual, at the threshold(s) used on OOF
    test_threshold: ThresholdResult | float  # what the test queries get: calibrated, tuned or fixed
    calibration: dict | None = None  # how the tuned threshold was carried onto the test scale


def out_of_fold(
    emb: PredictEmbeddings, settings: Settings, class_names: list[str], test_ranked: Ranked
) -> OOFOutcome | None:
    """OOF predictions with the chosen options, the tuned threshold, the OOF answers at the threshold used,
    and the threshold for the test queries (test_ranked: their ranking, for the calibration)."""
    predictions = oof.oof_predictions(emb, settings.options, class_names, settings.new_share, settings.seed)
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
    tuned = oof.tune(predictions, settings.per_species)
    used = tuned if settings.threshold is None else settings.threshold
    species = predicted_species(predictions.ranked, species_by_individual(emb))
    answers = predictions_with_new(predictions.ranked, used, species)
    if settings.threshold is not None:
        return OOFOutcome(predictions, tuned, answers, settings.threshold)
    for warning in tuned.warnings:
        logger.warning("threshold: %s", warning)
    if not settings.calibrate:
        return OOFOutcome(predictions, tuned, answers, tuned)
    calibrated, calibration = _calibrated(emb, settings, class_names, tuned, top1(test_ranked))
    return OOFOutcome(predictions, tuned, answers, calibrated, calibration)


def _calibrated(
    emb: PredictEmbeddings, settings: Settings, class_names: list[str], tuned: ThresholdResult, averaged
):
    """The tuned threshold moved onto the fold-averaged scale, and what was measured to move it."""
    single = single_fold_test_top1(emb, settings.options, class_names)
    result = calibrate(tuned, single, averaged)
    calibration = {
        "method": "quantile mapping of test top-1 similarity, single fold model -> fold-averaged",
        "tuned_threshold": tuned.threshold,
        "test_threshold": result.threshold,
        "single_fold_top1_median": round(float(np.median(single)), 6) if len(single) else None,
        "averaged_top1_median": round(float(np.median(averaged)), 6) if len(averaged) else None,
    }
    logger.info(
        "threshold %.4f tuned on one-model similarities -> %.4f on fold-averaged ones (test top-1 median "
        "%s -> %s)", tuned.threshold, result.threshold,
        calibration["single_fold_top1_median"], calibration["averaged_top1_median"],
    )  # fmt: skip
    return result, calibration


def top1(ranked: Ranked) -> np.ndarray:
    return np.asarray([s[0] if s else -1.0 for s in ranked.scores], dtype=np.float64)


def single_fold_test_top1(emb: PredictEmbeddings, options: RankOptions, class_names: list[str]) -> np.ndarray:
    """Test queries' top-1 similarity as one fold model sees them (the OOF scale), pooled over the folds."""
    pooled = []
    for k in oof.oof_folds(emb):
        folds = [r.fold(fold_dir_name(k)) for r in emb.runs]
        gallery = concat_runs([f.train for f in folds], emb.weights)
        queries = concat_runs([f.test for f in folds], emb.weights)
        heads = None
        if options.blend:
            ids, train_folds = emb.index.train_ids, emb.index.train_folds
            heads = class_heads([f.test for f in folds], folds, class_names, ids, train_folds)
        ranked = rank(queries, prepare_gallery(gallery, options), emb.index.train_ids, options, heads)
        pooled.append(top1(ranked))
    return np.concatenate(pooled) if pooled else np.zeros(0)


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
