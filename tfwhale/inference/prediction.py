"""Stage 3 (predict): what predict works out before it writes anything: OOF outcome, test ranking."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.contracts.run_folder import RunError, fold_dir_name
from tfwhale.inference import oof
from tfwhale.inference.gallery import PredictEmbeddings
from tfwhale.inference.local_rerank import LocalOutcome
from tfwhale.query.answers import answer_labels, top1
from tfwhale.query.combine import concat_runs
from tfwhale.retrieval.calibration import calibrate
from tfwhale.retrieval.ranking import PreparedGallery, Ranked, RankOptions, prepare_gallery, rank
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
    rerank: str = "none"  # "local": fused with the records' local features (inference.local_rerank)
    rerank_oof_queries: int | None = None  # --rerank local: OOF queries sampled for calibration (None: all)


@dataclass(frozen=True)
class OOFOutcome:
    predictions: oof.OOFPredictions
    tuned: ThresholdResult  # on the OOF (single fold model) similarity scale
    answers: list[list[str]]  # OOF queries with new_individual, at the threshold(s) used on OOF
    policy: ThresholdPolicy  # what the test queries get: calibrated, tuned or fixed
    calibration: dict | None = None  # how the tuned threshold was carried onto the test scale


AUTO_SOURCE = "auto (OOF MAP@5 grid search, simulated new individuals)"


def tuned_policy(
    tuned: ThresholdResult, value: float | None = None, source: str = AUTO_SOURCE
) -> ThresholdPolicy:
    """The policy made from OOF tuning (value: the tuned threshold moved, by calibration)."""
    return ThresholdPolicy(
        value=float(tuned.threshold if value is None else value),
        per_species=dict(tuned.per_species),
        source=source,
        separation_auc=tuned.separation_auc,
        warnings=tuple(tuned.warnings),
    )


def fixed_policy(value: float, tuned: ThresholdResult | None = None) -> ThresholdPolicy:
    auc = None if tuned is None else tuned.separation_auc
    return ThresholdPolicy(float(value), {}, "fixed", auc, () if tuned is None else tuple(tuned.warnings))


def out_of_fold(
    emb: PredictEmbeddings, settings: Settings, class_names: list[str], test_ranked: Ranked
) -> OOFOutcome | None:
    """OOF predictions with the chosen options, the tuned threshold, the OOF answers at the threshold used,
    and the threshold policy for the test queries (test_ranked: their ranking, for the calibration)."""
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
    on_oof = tuned_policy(tuned) if settings.threshold is None else fixed_policy(settings.threshold, tuned)
    answers = answer_labels(predictions.ranked, on_oof, species_by_individual(emb))
    if settings.threshold is not None:
        return OOFOutcome(predictions, tuned, answers, on_oof)
    for warning in tuned.warnings:
        logger.warning("threshold: %s", warning)
    if not settings.calibrate:
        return OOFOutcome(predictions, tuned, answers, on_oof)
    averaged = np.asarray(top1(test_ranked), np.float64)
    calibrated, calibration = _calibrated(emb, settings, class_names, tuned, averaged)
    return OOFOutcome(predictions, tuned, answers, calibrated, calibration)


def _calibrated(
    emb: PredictEmbeddings, settings: Settings, class_names: list[str], tuned: ThresholdResult, averaged
):
    """The tuned threshold moved onto the fold-averaged scale, and what was measured to move it."""
    single = single_fold_test_top1(emb, settings.options, class_names)
    result = calibrate(tuned, single, averaged)
    policy = tuned_policy(result, source=AUTO_SOURCE + ", calibrated onto the fold-averaged scale")
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
    return policy, calibration


def single_fold_test_top1(emb: PredictEmbeddings, options: RankOptions, class_names: list[str]) -> np.ndarray:
    """Test queries' top-1 similarity as one fold model sees them (the OOF scale), pooled over the folds."""
    pooled = []
    for k in oof.oof_folds(emb):
        folds = [r.fold(fold_dir_name(k)) for r in emb.runs]
        gallery = concat_runs([f.train for f in folds], emb.weights)
        queries = concat_runs([f.test for f in folds], emb.weights)
        heads = oof.heads_of([f.test for f in folds], folds, emb, class_names) if options.blend else None
        ranked = rank(queries, prepare_gallery(gallery, options), emb.index.train_ids, options, heads)
        pooled.append(np.asarray(top1(ranked), np.float64))
    return np.concatenate(pooled) if pooled else np.zeros(0)


def species_by_individual(emb: PredictEmbeddings) -> dict[str, str]:
    return dict(zip(emb.index.train_ids, emb.index.train_species, strict=True))


def rank_test(emb: PredictEmbeddings, options: RankOptions, class_names: list[str], n: int = 5):
    """(prepared gallery, ranked test queries, their n best individuals): every fold model of every run
    takes part."""
    gallery = prepare_gallery(emb.combined("train"), options)
    heads = None
    if options.blend:
        folds = [f for r in emb.runs for f in r.folds]
        heads = oof.heads_of([f.test for f in folds], folds, emb, class_names)
    return gallery, rank(emb.combined("test"), gallery, emb.index.train_ids, options, heads, n=n)


@dataclass(frozen=True)
class Prediction:
    """Everything predict worked out, before it is written."""

    emb: PredictEmbeddings
    settings: Settings
    outcome: OOFOutcome | None
    policy: ThresholdPolicy  # where new_individual goes in the test answers (and in identify's, serve's)
    gallery: PreparedGallery
    ranked: Ranked  # test queries, in emb.index.test_names order
    answers: dict[str, list[str]]  # test image -> its 5 labels with new_individual
    order: list[str]  # submission row order
    solution: dict[str, str] | None
    local: LocalOutcome | None = None  # --rerank local: ranked, outcome and policy above are the fused ones
    embedding_policy: ThresholdPolicy | None = None  # then: the threshold on the embedding similarity alone


def fused_outcome(local: LocalOutcome, settings: Settings, species_of: dict[str, str]) -> OOFOutcome:
    """The OOF outcome of --rerank local: the fused ranking, its tuned (or the fixed) threshold on the
    fused P, and the OOF answers at it."""
    tuned = local.fused.tuned
    if settings.threshold is None:
        policy = tuned_policy(tuned, source=AUTO_SOURCE + ", on the fused P(same individual)")
    else:
        policy = fixed_policy(settings.threshold, tuned)
    answers = answer_labels(local.fused.predictions.ranked, policy, species_of)
    return OOFOutcome(local.fused.predictions, tuned, answers, policy)
