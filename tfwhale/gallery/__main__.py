"""python -m tfwhale.gallery --photos DIR --out GALLERY: a day-one gallery from a photo folder, no training.

Exit codes: 0 built; 3 built, but some photos could not be read (listed, and in GALLERY/rejects.csv);
1 nothing built (the message says why); 2 bad command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

EXAMPLES = """\
examples:
  # one folder per individual: photos/ID1/a.jpg, photos/ID1/b.jpg, photos/ID2/c.jpg, ...
  python -m tfwhale.gallery --photos photos --out day1
  python -m tfwhale.identify new.jpg --gallery day1
  python -m tfwhale.serve --gallery day1 --catalogue catalogue

  # the Kaggle layout: DIR/train.csv (image, species, individual_id [, box]) + DIR/train_images/
  python -m tfwhale.gallery --photos happywhale --out day1 --boxes fullbody.csv

What it makes, in GALLERY: records/ (build-tfrecords' training records of the photos, cropped to their
boxes when given), run/full/ (the untrained embedding model: ImageNet EfficientNet-Lite0 -> average
pooling -> L2 normalisation, no neck), embeddings.npz and gallery.json, with the new_individual
threshold tuned by leaving individuals out within the catalogue itself. Run it again to resume.
Next step, once the catalogue holds decisions: export it, build-tfrecords, train --config lite0_224,
predict, and serve the same catalogue on the trained gallery (README: "A catalogue from day one").
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from tfwhale.gallery.build import GallerySettings

    defaults = GallerySettings(photos="", out="")
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.gallery",
        description="Turn a folder of photos sorted by individual into a gallery that "
        "`python -m tfwhale.identify --gallery` and `python -m tfwhale.serve --gallery` answer from, "
        "with a pretrained backbone and no training (a day-one gallery).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--photos",
        required=True,
        metavar="DIR",
        help="ID/photo folders (one folder per individual), or the Kaggle layout: train.csv + train_images/",
    )
    add("--out", required=True, metavar="GALLERY", help="the gallery folder to write (local or gs://)")
    add(
        "--backbone",
        default=defaults.backbone,
        help=f"pretrained backbone: EfficientNetLite0/1/2 (ImageNet, the `lite` extra) or hub:PRESET "
        f"(keras-hub, where installed) ({defaults.backbone})",
    )
    add("--size", type=int, default=defaults.size, metavar="PX", help=f"crop size ({defaults.size})")
    add("--boxes", metavar="CSV", help="detector boxes to crop to (build-tfrecords --boxes formats)")
    add(
        "--species",
        default=defaults.species,
        help=f"species written for ID/photo folders ({defaults.species})",
    )
    add(
        "--tta",
        choices=("none", "flip"),
        default="none",
        help="flip: embed each photo with its mirror image too (none: left and right flanks differ)",
    )
    add(
        "--new-share",
        type=float,
        default=defaults.new_share,
        metavar="F",
        help=f"share of leave-one-out queries made new to tune the threshold ({defaults.new_share})",
    )
    add("--batch-size", type=int, default=defaults.batch, help=f"photos per batch ({defaults.batch})")
    add("--workers", type=int, metavar="N", help="image worker processes (default: every CPU)")
    add(
        "--no-local-features",
        action="store_true",
        help="embedding only: no SIFT features, no re-rank (default: SIFT features of every photo at 512 px, "
        "re-ranked and fused with the embedding; not yet for galleries cropped to boxes)",
    )
    add("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from tfwhale.core.labels import check_new_share

    try:
        check_new_share(args.new_share, "--new-share")
    except ValueError as err:
        parser.error(str(err))
    if args.size < 32 or args.batch_size < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--size must be >= 32, --batch-size and --workers >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    args = parse_args(argv)
    start = time.perf_counter()
    from tfwhale.contracts.records import ManifestError
    from tfwhale.gallery.backbone import BackboneError
    from tfwhale.gallery.build import GallerySettings, make_gallery
    from tfwhale.gallery.photos import GalleryInputError

    settings = GallerySettings(
        photos=args.photos, out=args.out, backbone=args.backbone, size=args.size,
        flip_tta=args.tta == "flip", species=args.species, boxes=args.boxes, batch=args.batch_size,
        workers=args.workers, new_share=args.new_share, progress=not args.quiet,
        local_features=not args.no_local_features,
    )  # fmt: skip
    try:
        outcome = make_gallery(settings)
    except (GalleryInputError, BackboneError, ManifestError) as err:
        logging.getLogger("tfwhale.gallery").error("%s", err)
        return 1
    print(summary(outcome, time.perf_counter() - start))
    return 3 if outcome.rejects else 0


def summary(outcome, seconds: float) -> str:
    policy = outcome.tuning.policy
    auc = "n/a" if policy.separation_auc is None else f"{policy.separation_auc:.3f}"
    lines = [
        f"\n{outcome.out}: {outcome.label}, {outcome.photos} photos of {outcome.individuals} individuals",
        f"new_individual threshold {policy.value:.3f} ({policy.source}; known/new separation AUC {auc}; "
        f"leave-one-out MAP@5 {outcome.tuning.map5:.3f})",
        *[f"warning: {w}" for w in policy.warnings],
    ]
    if outcome.rejects:
        lines.append(f"{len(outcome.rejects)} photo(s) left out (also in {outcome.out}/rejects.csv):")
        lines += [f"  {r.image}: {r.reason}" for r in outcome.rejects]
    lines += [
        f"made in {seconds:.1f} s. Next:",
        f"  python -m tfwhale.identify PHOTO --gallery {outcome.out}",
        f"  python -m tfwhale.serve --gallery {outcome.out} --catalogue CATALOGUE",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
