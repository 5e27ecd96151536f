"""Stage 3: fold-averaged embeddings, kNN over the training gallery, new_individual threshold, submission.

python -m tfwhale.predict --runs runs/b6 [runs/b7 ...] --records records/ --out predictions/ [--tta flip]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

try:  # one line naming the extra instead of a traceback
    import tensorflow as tf
except ModuleNotFoundError as _missing:
    from tfwhale.core.extras import exit_for_missing

    exit_for_missing(_missing, "python -m tfwhale.predict")

from tfwhale.contracts.gallery_arrays import EMBEDDINGS_NAME, write_gallery_arrays
from tfwhale.contracts.gallery_manifest import (
    GalleryManifest,
    GalleryRun,
    remove_gallery_manifest,
    write_gallery_manifest,
)
from tfwhale.contracts.records import Manifest, ManifestError, load_manifest, records_error_message
from tfwhale.contracts.run_folder import Run, RunError, load_run
from tfwhale.core import files
from tfwhale.core.config import RERANK_MODES, ConfigError, PredictConfig, flip_tta_refusal
from tfwhale.core.labels import check_new_share
from tfwhale.core.metrics import map_at_k
from tfwhale.inference import examples, local_rerank, oof, report
from tfwhale.inference.gallery import check_oof_files, embed_runs
from tfwhale.inference.prediction import (
    Prediction,
    Settings,
    fixed_policy,
    fused_outcome,
    out_of_fold,
    rank_test,
    species_by_individual,
)
from tfwhale.inference.submission import (
    SUBMISSION_NAME,
    PredictError,
    gallery_arrays,
    read_solution,
    submission_order,
    write_submission,
)
from tfwhale.inference.threshold_plot import plot_threshold_curve
from tfwhale.query.answers import answer_labels
from tfwhale.retrieval.ranking import RankOptions

logger = logging.getLogger("tfwhale.predict")

CURVE_NAME = "threshold_curve.png"
EXAMPLES_NAME = "examples.png"

EXAMPLES = """examples:
  python -m tfwhale.predict --runs runs/tiny --records out/records --out out/predict
  python -m tfwhale.predict --runs gs://b/runs/b6 gs://b/runs/b7 --weights 1 1 --records gs://b/rec \\
      --out gs://b/predict --tta flip --blend 0.5 --new-share 0.1
  python -m tfwhale.predict --runs runs/tiny --records out/records --out out/predict --threshold 0.45
  python -m tfwhale.predict --runs runs/tiny --records out/records --out out/predict --rerank none
Embeddings are cached in OUT_DIR/cache: a second run with another threshold, k or option loads no model.
A rerun first removes the previous outputs (gallery.json first; the cache stays), so an interrupted
rerun never leaves old outputs that look current. Storage errors end in one line; rerun to resume.
--knn exact (default) is a chunked float32 GEMM and a compiled top-k: the same neighbours as sklearn's
brute-force cosine search, 3.6x faster (28k queries x 51k gallery x 512 dims: 4.4 s vs 15.8 s, 2 cores).
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.predict",
        description="Embed gallery (train) and query (test) records with every fold model, rank the "
        "gallery's individuals per query, insert new_individual, write submission.csv and a report.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--runs", nargs="+", required=True, metavar="RUN_DIR", help="tfwhale.train run folders")
    add("--weights", nargs="+", type=float, metavar="W", help="one weight per run (default 1 each)")
    add("--records", required=True, help="the build-tfrecords folder the runs were trained on")
    add("--out", required=True, help="output folder (local or gs://)")
    add("--tta", choices=("none", "flip"), help="flip: mean of original and mirrored (default: run config)")
    add("--threshold", help="new_individual threshold: auto (tuned on OOF, default) or a value")
    add("--knn", choices=("exact", "sklearn", "faiss"), default="exact", help="kNN backend (exact)")
    add("--k", type=int, help="neighbours searched per query (default: run config, 50)")
    add(
        "--new-share",
        type=float,
        metavar="F",
        help="expected share of new individuals among the photos to identify; that share of the OOF "
        "queries is made new (their individual left out of the gallery) to tune the threshold "
        "(default: run config predict.new_share, 0.2; 0: only the really new ones)",
    )
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument(
        "--calibrate",
        action="store_true",
        help="carry the OOF-tuned threshold onto the fold-averaged test similarities by quantile "
        "mapping (default: run config predict.calibrate_threshold, false: it cost 0.009-0.014 MAP@5 in "
        "benchmarks/new_individual.py)",
    )
    calibration.add_argument(
        "--no-calibrate",
        action="store_true",
        help="use the OOF-tuned threshold as is on the test similarities (the default, unless the run's "
        "config.yaml sets predict.calibrate_threshold, as runs trained before it became opt-in do)",
    )
    add(
        "--rerank",
        choices=RERANK_MODES,
        help="local: re-rank each query's individuals by local features (SIFT inliers and LNBNN votes "
        "from the records' feature files) fused with the embedding: isotonic P(same individual) of each, "
        "fitted on out-of-fold pairs, averaged; the threshold is tuned on that fused P, and gallery.json "
        "makes identify and serve answer the same way. none: the embedding alone. Default: the run "
        "config's predict.rerank, local: on nyala-dev MAP@5 0.641 vs 0.566 for the embedding alone "
        "(benchmarks/predict_rerank.py: 0.586 vs 0.393 over 3 seeds, lions 0.52 vs 0.23) for ~3.3x "
        "predict's time (~1 s a query on a busy core: slow at Kaggle's scale, BENCHMARKS.md). Records "
        "built without local features: --rerank local "
        "stops naming `build-tfrecords add-local-features`; the default then ranks by the embedding "
        "alone, with a warning",
    )
    add("--per-species", action="store_true", help="also tune one threshold per species")
    add("--blend", type=float, default=0.0, metavar="W", help="weight of ArcFace cosines (0.5: 1st place)")
    add("--dba", type=int, default=0, metavar="K", help="database-side augmentation over K neighbours")
    add("--qe", type=int, default=0, metavar="K", help="query expansion over K neighbours")
    add("--whiten", action="store_true", help="PCA whitening fitted on the gallery")
    add("--sample-submission", help="Kaggle sample_submission.csv: every image must be answered once")
    add("--solution", help="CSV image,individual_id of the test set: also report test MAP@5")
    add("--batch-size", type=int, help="images per embedding batch (default: run config)")
    add("--examples", type=int, default=8, metavar="N", help="example queries in examples.png (0: none)")
    add(
        "--examples-seed",
        type=int,
        default=None,
        metavar="S",
        help="which test queries examples.png shows, drawn at random (default: a new draw each run, "
        "its seed in report.json)",
    )
    add("--recompute", action="store_true", help="ignore cached embeddings")
    return parser.parse_args(argv)


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
        rerank=_rerank(cfg.rerank, args, manifest),
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


def run(args: argparse.Namespace) -> dict:
    manifest = load_manifest(args.records)
    check_records(manifest)
    runs = load_runs(args, manifest)
    settings = resolve_settings(args, runs, manifest)
    files.makedirs(args.out)
    remove_old_outputs(args.out)
    need_centres = settings.options.blend > 0
    emb = embed_runs(runs, manifest, args.out, settings.batch, settings.flip, need_centres, args.recompute)
    check_oof_files(emb)
    order = submission_order(emb.index.test_names, args.sample_submission)
    solution = read_solution(args.solution, emb.index.test_names)
    gallery, ranked = rank_test(emb, settings.options, manifest.individuals)
    outcome = out_of_fold(emb, settings, manifest.individuals, ranked)
    policy = fixed_policy(settings.threshold) if outcome is None else outcome.policy
    embedding_policy, local = None, None
    if settings.rerank == "local":
        if settings.calibrate:
            logger.info("--rerank local: the threshold is on the fused P, which needs no calibration")
        every = local_rerank.every_individual(emb.index)
        _, ranked_every = rank_test(emb, settings.options, manifest.individuals, n=every)
        local = local_rerank.rerank_local(args.out, manifest, emb, ranked_every, settings)
        embedding_policy, outcome = policy, fused_outcome(local, settings, species_by_individual(emb))
        policy, ranked = outcome.policy, local.ranked
    labels = answer_labels(ranked, policy, species_by_individual(emb))
    answers = dict(zip(emb.index.test_names, labels, strict=True))
    prediction = Prediction(
        emb, settings, outcome, policy, gallery, ranked, answers, order, solution, local, embedding_policy
    )
    return write_outputs(args, manifest, prediction)


def _verified_photos(p: Prediction, count: int, seed: int) -> dict | None:
    """examples.png's answers' verified photos and matches, when the test queries were re-ranked by local
    features (only for the queries it shows)."""
    if p.local is None or p.local.path is None:
        return None
    shown = set(examples.pick_queries(p.order, count, seed))
    rows = [i for i, name in enumerate(p.emb.index.test_names) if name in shown]
    return examples.verified_photos(
        p.local.path,
        [p.emb.index.test_names[i] for i in rows],
        [p.local.test_features[i] for i in rows],
        [p.local.evidence[i] for i in rows],
        p.answers,
    )


def remove_old_outputs(out_dir: str) -> None:
    """A rerun first removes the previous outputs, so that an interrupted rerun never leaves a mix of old
    and new files that looks current. gallery.json goes first: identify and serve read only folders that
    have it. The embedding cache stays (its entries are keyed by model and checked on reuse)."""
    remove_gallery_manifest(out_dir)
    for name in (report.REPORT_NAME, SUBMISSION_NAME, EMBEDDINGS_NAME, CURVE_NAME, EXAMPLES_NAME,
                 local_rerank.FEATURES_NAME):  # fmt: skip
        files.remove(files.join(out_dir, name))


def write_outputs(args: argparse.Namespace, manifest: Manifest, p: Prediction) -> dict:
    """Every output, each written atomically; report.json last."""
    write_submission(files.join(args.out, SUBMISSION_NAME), p.order, p.answers)
    write_gallery_arrays(args.out, gallery_arrays(p.emb, p.gallery, manifest.individuals))
    if p.outcome is not None:
        plot_threshold_curve(p.outcome.tuned, files.join(args.out, CURVE_NAME), p.policy.value)
    seed = examples.new_seed() if args.examples_seed is None else args.examples_seed
    verified = _verified_photos(p, args.examples, seed)
    rows = examples.example_rows(p, manifest, args.examples, seed, verified)
    if rows:
        examples.plot_examples(files.join(args.out, EXAMPLES_NAME), rows)
    outputs = {
        "submission": SUBMISSION_NAME,
        "embeddings": EMBEDDINGS_NAME,
        "threshold_curve": CURVE_NAME if p.outcome else None,
        "examples": EXAMPLES_NAME if rows else None,
    }
    body = report.build_report(args.out, args.solution, manifest, p, measure_variants(p, manifest), outputs)
    missed = [r.name for r in rows if r.missed]
    body["examples"] = {"seed": seed, "queries": [r.name for r in rows], "missed": missed,
                        "verified_answers": sum(v is not None for r in rows for v in r.verified)}  # fmt: skip
    body["rerank"] = p.local.report if p.local is not None else {"mode": "none"}
    report.write_report(args.out, body)
    write_gallery_manifest(args.out, gallery_manifest(args.out, manifest, p))
    return body


def gallery_manifest(out_dir: str, manifest: Manifest, p: Prediction) -> GalleryManifest:
    """What identify and the catalogue app need to answer new photos as predict answered the test set."""
    runs = tuple(
        GalleryRun(
            r.run.run_dir, r.run.weight, r.dim, {f.model.name: f.model.run_json_sha256 for f in r.folds}
        )
        for r in p.emb.runs
    )
    local = {} if p.local is None else {
        "rerank": "local", "local": p.local.local, "embedding_threshold": p.embedding_policy,
    }  # fmt: skip
    return GalleryManifest(
        **local,
        runs=runs,
        flip_tta=p.settings.flip,
        options=dataclasses.asdict(p.settings.options),
        threshold=p.policy,
        image=manifest.image_settings,
        records_root=manifest.root,
        records_manifest_sha256=manifest.sha256,
        embeddings_file=EMBEDDINGS_NAME,
        embeddings_sha256=files.sha256(files.join(out_dir, EMBEDDINGS_NAME)),
    )


def measure_variants(p: Prediction, manifest: Manifest) -> list[dict]:
    """OOF MAP@5 of plain kNN and of each requested option alone, next to the options used, each at the
    threshold it would be used with (its own tuned one, or the fixed --threshold)."""
    if p.outcome is None:
        return []
    s = p.settings
    measured = [
        oof.measure(p.emb, variant, manifest.individuals, s.new_share, s.seed, s.threshold)
        for variant in oof.variants_to_measure(s.options)
    ]
    predictions, answers = p.outcome.predictions, p.outcome.answers
    on_oof = p.outcome.tuned.threshold if s.threshold is None else s.threshold
    chosen = oof.variant_summary(
        s.options, on_oof, map_at_k(predictions.truths, answers), report.new_rate(answers)
    )
    if p.local is not None:  # the answers above are the fused ones: say so beside the embedding variants
        chosen["name"] += " + local re-rank (fused P)"
    return [m for m in measured if m] + [{**chosen, "chosen": True}]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        body = run(args)
    except (RunError, ManifestError, PredictError, ConfigError) as err:
        logger.error("%s", err)
        return 1
    except (tf.errors.OpError, OSError) as err:
        if files.is_unwritable_error(err):
            logger.error("%s", files.unwritable_message(err, "--out", args.out))
            return 1
        if (
            not isinstance(err, tf.errors.OpError)
            or (message := records_error_message(args.records, err)) is None
        ):
            raise
        logger.error("%s", message)
        return 1
    print(report.format_table(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
