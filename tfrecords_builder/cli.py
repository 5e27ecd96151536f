"""build-tfrecords command line: photos + CSV (+ boxes) -> TFRecords + manifest; `verify OUT` checks one."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Only light imports up here: spawned image workers re-import the main module (the console script, which
# imports this one), and TensorFlow must not load in them. The build modules are imported in main().
from tfrecords_builder.arguments import add_features_parser, build_parser, verify_parser
from tfrecords_builder.errors import BuildInputError, BuildRunError

logger = logging.getLogger("build-tfrecords")

EXIT_OK, EXIT_FATAL, EXIT_REJECTS = 0, 1, 3


@dataclass(frozen=True)
class Inputs:
    train_csv: str
    train_images: str
    test_images: str | None
    test_csv: str | None


def resolve_inputs(args: argparse.Namespace) -> Inputs:
    """Explicit flags win over the Kaggle layout under --data."""
    from tfwhale.core import files

    def pick(explicit: str | None, layout_name: str, flag: str) -> str:
        if explicit:
            return explicit
        if not args.data:
            raise BuildInputError(f"pass --data DIR (Kaggle layout) or {flag}")
        return files.join(args.data, layout_name)

    train_csv = pick(args.train_csv, "train.csv", "--train-csv")
    train_images = pick(args.train_images, "train_images", "--train-images")
    if args.no_test:
        return Inputs(train_csv, train_images, None, None)
    test_images = pick(args.test_images, "test_images", "--test-images (or --no-test)")
    if not files.isdir(test_images):
        raise BuildInputError(
            f"{test_images}: test images folder not found; pass --test-images, or --no-test"
        )
    test_csv = args.test_csv
    if test_csv is None and args.data and files.exists(files.join(args.data, "sample_submission.csv")):
        test_csv = files.join(args.data, "sample_submission.csv")
    return Inputs(train_csv, train_images, test_images, test_csv)


def _table_boxes(table) -> dict[str, Any]:
    from tfwhale.imaging.crop_box import parse_box_text

    return {
        image: parse_box_text(text) for image, text in zip(table["image"], table["box_text"], strict=True)
    }


def resolve_boxes(args: argparse.Namespace, train, test) -> tuple[dict, dict, str]:
    """Boxes per image for train and test, and where they came from: --boxes, else the CSVs' own column."""
    from tfrecords_builder.tables import read_boxes_csv
    from tfwhale.core import files

    if args.boxes:
        boxes = read_boxes_csv(args.boxes, args.min_conf)
        return boxes, boxes, f"--boxes {files.basename(args.boxes)}"
    if args.min_conf:
        logger.warning("--min-conf applies to --boxes only; ignored")
    train_boxes = _table_boxes(train)
    test_boxes = _table_boxes(test) if test is not None else {}
    has_boxes = any(box is not None for box in (*train_boxes.values(), *test_boxes.values()))
    return train_boxes, test_boxes, "box column of the input CSVs" if has_boxes else "none"


def build_settings(args: argparse.Namespace, box_source: str) -> dict[str, Any]:
    """Everything that decides the output; a resumed build must match these exactly."""
    from tfrecords_builder.arguments import image_settings
    from tfwhale.contracts import records
    from tfwhale.imaging.photo_crop import IMAGING_VERSION

    image = image_settings(args)
    return {
        "schema_version": records.SCHEMA_VERSION,
        "imaging_version": IMAGING_VERSION,
        "image_size": image.size,
        "enlarge": image.enlarge,
        "resize_mode": image.resize_mode,
        "jpeg_quality": image.quality,
        "n_folds": args.folds,
        "seed": args.seed,
        "images_per_shard": args.images_per_shard,
        "box_source": box_source,
        "min_conf": args.min_conf if args.boxes else None,
        "test": not args.no_test,
        # only when given: builds made before the flag existed resume unchanged
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
        **({"local_features": _sift_entry(args)} if args.local_features else {}),
    }


def _sift_entry(args: argparse.Namespace) -> dict[str, Any]:
    from tfrecords_builder import local_features

    return local_features.settings_entry(local_features.sift_settings(args.match_size))


def sift_of(settings: dict[str, Any]):
    """The SiftSettings the workers take features with (None: the build takes none)."""
    if not settings.get("local_features"):
        return None
    from tfwhale.matching.features import SiftSettings

    return SiftSettings.from_stored(settings["local_features"])


def _sources(inputs: Inputs, args: argparse.Namespace) -> dict[str, Any]:
    from tfwhale.core import files

    inputs_by_key = {"train_csv": inputs.train_csv, "test_csv": inputs.test_csv, "boxes": args.boxes}
    sources: dict[str, Any] = {
        key: {"path": path, "sha256": files.sha256(path)} for key, path in inputs_by_key.items() if path
    }
    sources["train_images"] = {"path": inputs.train_images}
    if inputs.test_images:
        sources["test_images"] = {"path": inputs.test_images}
    return sources


def plan_build(args: argparse.Namespace, inputs: Inputs):
    """Read the inputs and plan every shard: (plan, settings, train table, label lists, table rejects)."""
    from tfrecords_builder import plan
    from tfrecords_builder.folds import assign_folds, check_fold_count
    from tfrecords_builder.tables import label_maps, load_test_table, load_train_table

    train, rejects = load_train_table(inputs.train_csv, inputs.train_images)
    test = None
    if inputs.test_images:
        test, test_rejects = load_test_table(inputs.test_images, inputs.test_csv)
        rejects += test_rejects
    train_boxes, test_boxes, box_source = resolve_boxes(args, train, test)
    settings = build_settings(args, box_source)
    individuals, species = label_maps(train)
    names = list(train["image"])
    check_fold_count(len(names), args.folds)
    folds = assign_folds(list(train["individual_id"]), args.folds, args.seed, image_names=names)
    shards = plan.plan_shards(
        plan.train_items(train, folds, individuals, species, train_boxes),
        plan.test_items(test, test_boxes) if test is not None else [],
        args.folds,
        args.seed,
        args.images_per_shard,
        settings,
    )
    return shards, settings, train, (individuals, species), rejects


def run_build(args: argparse.Namespace) -> int:
    """The whole build under the lock on --out; the exit code (BuildInputError propagates to main)."""
    if args.runner == "beam":
        return _run_beam_build(args)
    if args.beam_options:
        raise BuildInputError("--beam-options needs --runner beam")
    from tfrecords_builder import imaging

    workers = args.workers or imaging.default_workers()
    # First, even before the lock (lock.py imports core/files, which loads TensorFlow: seconds of CPU): the
    # workers start while TensorFlow loads and the tables are read. A refused lock just stops them again.
    pool = imaging.start_pool(workers)
    try:
        from tfrecords_builder import writer
        from tfrecords_builder.lock import build_lock

        def write(shards, out, image_settings, reusable, sift):
            return writer.write_shards(
                shards, out, image_settings, workers, reusable, not args.quiet, pool=pool, sift=sift
            )

        with build_lock(args.out):
            return _run_build(args, write)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_beam_build(args: argparse.Namespace) -> int:
    """The same plan and manifest as a local build; the photos and shards go through Apache Beam."""
    from tfrecords_builder import beam_pipeline

    beam_pipeline.import_beam()  # before any work: one line naming the extra when it is missing
    if args.workers:
        logger.warning("--workers applies to --runner local; Beam's workers come from --beam-options")
    options = beam_pipeline.pipeline_options(args.beam_options)
    inputs = resolve_inputs(args)
    beam_pipeline.check_reachable(
        options, (args.out, inputs.train_csv, inputs.train_images, inputs.test_images, inputs.test_csv)
    )
    from tfrecords_builder.lock import build_lock

    def write(shards, out, image_settings, reusable, sift):
        try:
            return beam_pipeline.write_shards(shards, out, image_settings, reusable, args.beam_options, sift)
        except Exception as error:
            from tfwhale.core import files

            if files.is_storage_error(error):
                raise
            logger.debug("the Beam pipeline failed", exc_info=True)
            last_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            raise BuildRunError(
                f"the Beam pipeline failed: {last_line[:500]}; finished shards are kept: run the same "
                "command again to resume"
            ) from error

    with build_lock(args.out):
        return _run_build(args, write)


def _run_build(args: argparse.Namespace, write: Callable) -> int:
    """Plan, write the shards with `write` (local workers or Beam), then rejects.csv and manifest.json."""
    from tfrecords_builder import arguments, manifest, resume
    from tfrecords_builder.tables import photo_counts

    inputs = resolve_inputs(args)
    shards, settings, train, (individuals, species), rejects = plan_build(args, inputs)
    reusable = resume.prepare_output(args.out, settings, shards, args.overwrite)
    image_settings = arguments.image_settings(args)
    outcome = write(shards, args.out, image_settings, reusable, sift_of(settings))
    image_rejects = [reject for shard in outcome.shards for reject in shard.rejects]
    counts = photo_counts(train[~train["image"].isin({reject.image for reject in image_rejects})])
    rejects += image_rejects
    sources = _sources(inputs, args)
    data = manifest.manifest_data(
        outcome.shards, settings, image_settings, individuals, species, counts, rejects, sources
    )
    manifest.write_rejects(args.out, rejects)
    manifest_path = manifest.write_manifest(args.out, data)  # last: its presence means "finished"
    print(manifest.summary(data, len(outcome.reused), manifest_path))
    if rejects:
        logger.warning("%d image(s) rejected, the rest built: see rejects.csv", len(rejects))
        return EXIT_REJECTS
    return EXIT_OK


def _setup_logging(quiet: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def verify_main(argv: list[str]) -> int:
    args = verify_parser().parse_args(argv)
    _setup_logging(args.quiet)
    from tfrecords_builder import local_features
    from tfrecords_builder.verify import verify_build
    from tfwhale.contracts import records

    no_keypoints: list[int] = []
    problems = verify_build(args.out, no_keypoints)
    if problems:
        print(f"{args.out}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return EXIT_FATAL
    manifest = records.load_manifest(args.out)
    print(
        f"{args.out}: OK, {len(manifest.data['shards'])} shard(s), {manifest.count('train')} train and "
        f"{manifest.count('test')} test images checked"
    )
    if manifest.data.get("local_features"):
        print(f"  local features: {local_features.no_keypoints_note(sum(no_keypoints))}")
    return EXIT_OK


def add_features_main(argv: list[str]) -> int:
    args = add_features_parser().parse_args(argv)
    _setup_logging(args.quiet)
    from tfrecords_builder.add_features import add_local_features
    from tfrecords_builder.lock import build_lock
    from tfwhale.contracts.records import ManifestError

    try:
        with build_lock(args.out):
            print(add_local_features(args))
    except (BuildInputError, ManifestError) as error:
        logger.error("%s", error)
        return EXIT_FATAL
    except KeyboardInterrupt:
        logger.error("interrupted: finished feature files are kept; run the same command again to resume")
        return 130
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `build-tfrecords`; `build-tfrecords verify OUT` checks a finished build;
    `build-tfrecords add-local-features --out OUT` adds local features to one built without them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["verify"]:
        return verify_main(argv[1:])
    if argv[:1] == ["add-local-features"]:
        return add_features_main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        return run_build(args)
    except (BuildInputError, BuildRunError) as error:
        logger.error("%s", error)
        return EXIT_FATAL
    except ModuleNotFoundError as error:
        from tfwhale.core.extras import missing_extra_message

        if (message := missing_extra_message(error, "build-tfrecords")) is None:
            raise
        logger.error("%s", message)
        return EXIT_FATAL
    except KeyboardInterrupt:
        logger.error("interrupted: finished shards are kept; run the same command again to resume")
        return 130
    except Exception as error:
        from tfwhale.core import files  # TensorFlow is loaded by now: run_build imported it

        if files.is_unwritable_error(error):
            logger.error("%s", files.unwritable_message(error, "--out", args.out))
            return EXIT_FATAL
        if not files.is_storage_error(error):
            raise
        logger.error("%s", files.storage_error_message(error))
        return EXIT_FATAL
