"""Stage 0 command line: `python -m tfwhale.synthetic OUT_DIR [options]` (the data set is dataset.py's)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from tfwhale.synthetic.dataset import generate

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.synthetic",
        description="Write a synthetic whale and dolphin photo-ID data set in the Kaggle Happywhale layout: "
        "train.csv, train_images/, test_images/, boxes.csv, test_solution.csv, test_full.csv and "
        "sample_submission.csv. Each animal keeps its own outline notches and marks; colour, light, pose, "
        "water and background change from photo to photo.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("out_dir", metavar="OUT_DIR", help="folder to write (local path or gs://bucket/prefix)")
    add("--individuals", type=int, default=60, metavar="N", help="number of animals, new ones included")
    add("--seed", type=int, default=0, metavar="N", help="random seed; the same seed gives the same bytes")
    add("--image-size", type=int, default=384, metavar="PX", help="long side of every photo, in pixels")
    add(
        "--test-fraction", type=float, default=0.2, metavar="F", help="share of known animals' photos in test"
    )
    add("--new-fraction", type=float, default=0.1, metavar="F", help="share of animals seen only in test")
    add("--missing-box-fraction", type=float, default=0.03, metavar="F", help="share of photos with no box")
    add(
        "--min-photos",
        type=int,
        default=1,
        metavar="N",
        help="photos per animal, at least (singletons excepted unless --no-singletons)",
    )
    add(
        "--no-singletons",
        action="store_true",
        help="give every animal at least --min-photos photos (a curated catalogue, like most photo-ID "
        "sets) instead of Happywhale's long tail, where ~60%% of animals have one photo",
    )
    add("--overwrite", action="store_true", help="replace a data set already in OUT_DIR")
    add("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        generate(
            args.out_dir,
            individuals=args.individuals,
            seed=args.seed,
            image_size=args.image_size,
            test_fraction=args.test_fraction,
            new_fraction=args.new_fraction,
            missing_box_fraction=args.missing_box_fraction,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            min_photos=args.min_photos,
            singletons=not args.no_singletons,
        )
    except (ValueError, FileExistsError) as error:
        logger.error("%s", error)
        return 2
    return 0
