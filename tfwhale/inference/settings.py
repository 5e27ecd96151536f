"""Stage 3 (predict): its flags and the runs' predict config resolved into Settings; runs, records checked."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from tfwhale.contracts.records import Manifest, ManifestError
from tfwhale.contracts.run_folder import Run, load_run
from tfwhale.core.config import PredictConfig, flip_tta_refusal
from tfwhale.core.labels import check_new_share
from tfwhale.inference import local_rerank
from tfwhale.inference.prediction import Settings
from tfwhale.inference.submission import PredictError
from tfwhale.retrieval.ranking import RankOptions

logger = logging.getLogger("tfwhale.predict")


def resolve_settings(args: argparse.Namespace, runs: Sequence[Run], manifest: Manifest) -> Settings:
    cfg = _fold_predict_config(runs[0])
    threshold = cfg.new_individual_threshold if args.threshold is None else _threshold(args.threshold)
    k = cfg.knn_k if args.k is None else args.k
    batch = cfg.batch_size if args.batch_size is None else args.batch_size
    if k < 1 or batch < 1 or args.dba < 0 or args.qe < 0 or not 0 <= args.blend <= 1:
        raise PredictError("--k and --batch-size must be >= 1, --dba/--qe >= 0, --blend in [0, 1]")
    new_share = cfg.new_share if args.new_share is None else args.new_share
    try:
        check_new_share(new_share, "--new-share")
    except ValueError as err:
        raise PredictError(str(err)) from None
    if args.per_species and threshold is not None:
        raise PredictError("--per-species tunes thresholds on OOF: it needs --threshold auto")
    options = RankOptions(
        k=k, backend=args.knn, dba=args.dba, qe=args.qe, whiten=args.whiten, blend=args.blend
    )
    flip = cfg.tta_flip if args.tta is None else args.tta == "flip"
    if flip:
        check_flip_tta(runs)
    return Settings(
        flip, batch, threshold, options, new_share, args.per_species,
        calibrate=_calibrate(cfg.calibrate_threshold, args), seed=cfg.new_share_seed,
        rerank=_rerank(cfg.rerank, args, manifest), rerank_oof_queries=_oof_cap(cfg, args),
    )  # fmt: skip


def _rerank(configured: str, args: argparse.Namespace, manifest: Manifest) -> str:
    """--rerank, else the run config's predict.rerank; asked for by the flag on records without local
    features it stops (inference.local_rerank names the command), by the config it falls back to none."""
    if args.rerank is not None or configured != "local" or local_rerank.has_features(manifest):
        return configured if args.rerank is None else args.rerank
    logger.warning(
        "%s: built without local features: ranking by the embedding alone (predict.rerank local needs "
        "them: `%s`)", manifest.root, local_rerank.add_features_command(manifest),
    )  # fmt: skip
    return "none"


def _oof_cap(cfg: PredictConfig, args: argparse.Namespace) -> int | None:
    """--rerank-oof-queries (a count, or all), else the run config's predict.rerank_oof_queries."""
    text = args.rerank_oof_queries
    if text is None:
        return cfg.rerank_oof_queries
    if text == "all":
        return None
    try:
        cap = int(text)
    except ValueError:
        cap = 0
    if cap < 1:
        raise PredictError(f"--rerank-oof-queries must be a count >= 1 or 'all', got {text!r}")
    return cap


def _calibrate(configured: bool, args: argparse.Namespace) -> bool:
    if configured and not (args.calibrate or args.no_calibrate):
        # runs trained before calibration became opt-in carry predict.calibrate_threshold: true
        logger.info("calibrating the threshold: the run's config.yaml sets predict.calibrate_threshold "
                    "(--no-calibrate turns it off)")  # fmt: skip
    return (configured or args.calibrate) and not args.no_calibrate


def check_flip_tta(runs: Sequence[Run]) -> None:
    """Flip TTA only for folds trained with mirrored photos as the same individual (augment.flip=true); each
    fold's own config decides, since folds may come from separate train calls."""
    for run in runs:
        for fold in run.folds:
            flip = True if fold.config is None else fold.config.augment.flip
            if flip is not True:
                raise PredictError(f"{fold.path}: {flip_tta_refusal(flip)}")


def _threshold(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise PredictError(f"--threshold must be 'auto' or a number, got {text!r}") from None


def _fold_predict_config(run: Run) -> PredictConfig:
    """The predict section the run's folds were trained with (the first fold with a config.yaml)."""
    configs = [fold.config for fold in run.folds if fold.config is not None]
    return configs[0].predict if configs else PredictConfig()


def load_runs(args: argparse.Namespace, manifest: Manifest) -> list[Run]:
    weights = args.weights or [1.0] * len(args.runs)
    if len(weights) != len(args.runs):
        raise PredictError(f"--weights has {len(weights)} values for {len(args.runs)} runs")
    if len(set(args.runs)) != len(args.runs):
        raise PredictError("--runs names a run folder twice")
    return [load_run(run_dir, manifest, weight) for run_dir, weight in zip(args.runs, weights, strict=True)]


def check_records(manifest: Manifest) -> None:
    if not manifest.shards("test"):
        raise ManifestError(f"{manifest.root}: no test records (built with --no-test?); predict needs them")
