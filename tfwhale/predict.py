"""Stage 3: fold-averaged embeddings, kNN over the training gallery, new_individual threshold, submission.

python -m tfwhale.predict --runs runs/b6 [runs/b7 ...] --records records/ --out predictions/ [--tta flip]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

try:  # one line naming the extra instead of a traceback
    import tensorflow as tf
except ModuleNotFoundError as _missing:
    from tfwhale.core.extras import exit_for_missing

    exit_for_missing(_missing, "python -m tfwhale.predict")

from tfwhale.contracts.records import ManifestError, load_manifest, records_error_message
from tfwhale.contracts.run_folder import RunError
from tfwhale.core import files
from tfwhale.core.config import RERANK_MODES, ConfigError
from tfwhale.inference import local_rerank, report
from tfwhale.inference.gallery import check_oof_files, embed_runs
from tfwhale.inference.outputs import remove_old_outputs, write_outputs
from tfwhale.inference.prediction import (
    Prediction,
    fixed_policy,
    fused_outcome,
    out_of_fold,
    rank_test,
    species_by_individual,
)
from tfwhale.inference.settings import check_flip_tta, check_records, load_runs, resolve_settings
from tfwhale.inference.submission import PredictError, read_solution, submission_order
from tfwhale.query.answers import answer_labels

__all__ = ["check_flip_tta", "main", "parse_args", "run"]  # check_flip_tta: tests/test_gallery.py

logger = logging.getLogger("tfwhale.predict")

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
    add(
        "--rerank-oof-queries",
        metavar="N|all",
        help="--rerank local: how many out-of-fold queries are re-ranked to fit the calibrations and tune "
        "the threshold, a seeded sample with each validation fold's share (~1 s a query); 'all': every "
        "one. Test queries are always all re-ranked. Default: the run config's predict.rerank_oof_queries, "
        "2000",
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
