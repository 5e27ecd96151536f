"""build-tfrecords command line arguments: the build's and `verify`'s parsers, help text and examples."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tfwhale.imaging.photo_crop import RESIZE_MODES, ImageSettings

# Light on purpose, like cli.py: spawned image workers re-import the console script's modules (the crop
# engine's module they import anyway: its ImageSettings is the one source of the crop defaults).
_IMAGE_DEFAULTS = ImageSettings(size=1)
# The default of --local-features (BENCHMARKS.md "Local features in the builder"): see LOCAL_FEATURES_HELP.
LOCAL_FEATURES_DEFAULT = True
LOCAL_FEATURES_HELP = (
    "take each photo's local features (SIFT of its crop at --match-size, the function identify uses for "
    "new photos) in the image workers, into one .features.npz beside each shard, listed in manifest.json "
    "with its sha256; predict --rerank local needs them. Default on: the fused re-rank beat the embedding "
    "alone on nyala-dev (MAP@5 0.641 vs 0.566) and did not lose on the lions; it costs ~3.8x the build "
    "time on nyala-dev's 800 px photos (less on large photos, whose decoding dominates) and ~131 KB a "
    "photo (~9.8 GiB for Happywhale's 79k photos; BENCHMARKS.md). --no-local-features: the records "
    "alone (they still train; `build-tfrecords add-local-features` adds the features later without "
    "rebuilding the images)"
)

EXAMPLES = """\
examples:
  # Kaggle layout: DIR/train.csv, DIR/train_images/, DIR/test_images/ (+ DIR/sample_submission.csv)
  build-tfrecords --data happywhale --out records768 --size 768

  # crop with YOLOv5 boxes for train and test, keep only confident ones, 512 px letterboxed
  build-tfrecords --data happywhale --out gs://bucket/rec512 --size 512 \\
      --boxes fullbody_charm.csv --min-conf 0.5 --resize letterbox

  # explicit files instead of the Kaggle layout (a 'box' column in the CSV is used for cropping)
  build-tfrecords --train-csv train2.csv --train-images photos/ --no-test --out rec --size 384

  # the same build on Apache Beam (pip install 'tfwhale[beam]'): here on 2 processes, or on Dataflow
  build-tfrecords --runner beam --data happywhale --out records768 --size 768 \
      --beam-options "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
  build-tfrecords --runner beam --data gs://bucket/happywhale --out gs://bucket/rec768 --size 768 \
      --beam-options "--runner=DataflowRunner --project P --region europe-west1 \
                      --temp_location gs://bucket/tmp --setup_file ./setup.py"

  # check a finished build: every shard's sha256 and every image decoded
  build-tfrecords verify records768

An interrupted build resumes when run again with the same command: finished shards are kept (each
checked against its sha256; a changed one is rebuilt). A storage error (e.g. a gs:// outage) ends the
build with one line naming the object; the same command then resumes.
One build at a time per --out: a build holds OUT/.build.lock (host, pid, start, a heartbeat every
minute) and a second build stops at once naming the holder. The lock of a killed build is stale, and
taken over, once its pid is gone (same host) or its heartbeat is 15 minutes old; or delete the file.
exit codes: 0 all built; 1 fatal error (nothing usable); 3 built, but some images rejected
(listed in OUT/rejects.csv); 2 bad command line.
"""


def _at_least(kind: type, minimum: float):
    """An argparse type: `kind`(text), refused below `minimum`."""

    def parse(text: str):
        value = kind(text)
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def attach_beam_options(argv: Sequence[str]) -> list[str]:
    """`--beam-options "--runner=X ..."` as one argument: argparse alone would read the value as options of
    its own (its `--runner=X` is build-tfrecords' --runner), or refuse it ("expected one argument")."""
    joined, rest = [], iter(argv)
    for arg in rest:
        value = next(rest, None) if arg == "--beam-options" else None
        joined.append(arg if value is None else f"{arg}={value}")
    return joined


class _BuildParser(argparse.ArgumentParser):
    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(attach_beam_options(args), namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = _BuildParser(
        prog="build-tfrecords",
        description="Crop photos to their detector boxes, resize them, and write sharded TFRecords:\n"
        "training records split into folds, test records, manifest.json and rejects.csv.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = parser.add_argument_group("input (Kaggle layout under --data, or explicit files)")
    inputs.add_argument("--data", metavar="DIR", help="folder with train.csv, train_images/, test_images/")
    inputs.add_argument(
        "--train-csv", metavar="CSV", help="training CSV: image, species, individual_id [, box]"
    )
    inputs.add_argument("--train-images", metavar="DIR", help="folder of training photos")
    inputs.add_argument("--test-images", metavar="DIR", help="folder of test photos")
    inputs.add_argument(
        "--test-csv",
        metavar="CSV",
        help="test images to build (default: every image in "
        "--test-images, or DIR/sample_submission.csv when there is one)",
    )
    inputs.add_argument("--no-test", action="store_true", help="build training records only")
    crop = parser.add_argument_group("cropping and images")
    crop.add_argument(
        "--boxes",
        metavar="CSV",
        help="detector boxes for train and test: Detic 'box', "
        "YOLOv5 'bbox' + 'conf', or x1,y1,x2,y2 (default: the input CSVs' own box column)",
    )
    crop.add_argument(
        "--min-conf",
        metavar="C",
        type=_at_least(float, 0.0),
        default=0.0,
        help="ignore --boxes boxes with confidence below C (0)",
    )
    crop.add_argument(
        "--enlarge",
        metavar="F",
        type=_at_least(float, 0.01),
        default=_IMAGE_DEFAULTS.enlarge,
        help=f"grow each box about its centre by F before cropping ({_IMAGE_DEFAULTS.enlarge})",
    )
    crop.add_argument(
        "--size", metavar="PX", type=_at_least(int, 1), required=True, help="output images are PX x PX"
    )
    crop.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default=_IMAGE_DEFAULTS.resize_mode,
        help="square: stretch the crop (default); letterbox: keep aspect, pad with grey",
    )
    crop.add_argument(
        "--quality",
        type=int,
        default=_IMAGE_DEFAULTS.quality,
        choices=range(1, 101),
        metavar="1-100",
        help=f"JPEG quality of the stored images ({_IMAGE_DEFAULTS.quality})",
    )
    crop.add_argument(
        "--max-pixels",
        metavar="N",
        type=_at_least(int, 1),
        help="refuse photos with more than N pixels before decoding them, a guard against decompression "
        f"bombs (default {_IMAGE_DEFAULTS.max_pixels}, PIL's limit: a 20000x10000 photo is refused)",
    )
    local = parser.add_argument_group("local features")
    local.add_argument(
        "--local-features",
        action=argparse.BooleanOptionalAction,
        default=LOCAL_FEATURES_DEFAULT,
        help=LOCAL_FEATURES_HELP,
    )
    _add_match_size(local)
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", required=True, help="output folder, local or gs://")
    out.add_argument("--folds", metavar="K", type=_at_least(int, 2), default=5, help="number of folds (5)")
    out.add_argument("--seed", metavar="N", type=int, default=0, help="seed of folds and shard order (0)")
    out.add_argument(
        "--images-per-shard",
        metavar="N",
        type=_at_least(int, 1),
        default=1000,
        help="at most N images per shard (1000)",
    )
    out.add_argument(
        "--workers",
        metavar="N",
        type=_at_least(int, 1),
        help="image worker processes (default: every CPU this process may use); --runner local only",
    )
    out.add_argument("--overwrite", action="store_true", help="discard an earlier build in --out first")
    engine = parser.add_argument_group("where the photos are processed")
    engine.add_argument(
        "--runner",
        choices=("local", "beam"),
        default="local",
        help="local: worker processes on this machine (default); beam: an Apache Beam pipeline "
        "(DirectRunner, Dataflow, Flink, Spark), same shards byte for byte; needs tfwhale[beam]",
    )
    engine.add_argument(
        "--beam-options",
        metavar="'...'",
        default="",
        help="with --runner beam: options handed to Beam's PipelineOptions unchanged, in one quoted "
        "string, e.g. '--runner=DataflowRunner --project P --region R --temp_location gs://B/tmp' "
        "(default: DirectRunner, in this process)",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    return parser


def verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build-tfrecords verify",
        description="Re-read every shard of a finished build: sha256 and counts against manifest.json, "
        "every image decoded and checked to be SIZE x SIZE x 3, missing or unlisted shards reported. "
        "Exit code 0 when all is well, 1 otherwise.",
    )
    parser.add_argument("out", help="the build folder (local or gs://)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only the result")
    return parser


def _add_match_size(parser) -> None:
    parser.add_argument(
        "--match-size",
        metavar="PX",
        type=_at_least(int, 32),
        help="long side of the crop local features are taken from, apart from --size: markings need "
        "more pixels than the model (default: the matching library's, 512 px; never enlarged)",
    )


def add_features_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build-tfrecords add-local-features",
        description="Add local features to records built with --no-local-features (or before the flag "
        "existed), without rebuilding the images: each shard's photos are read again from their "
        "folders, cropped as the build cropped them (its boxes, enlarge, resize mode) at the match "
        "size, and their SIFT written beside the shard; then manifest.json lists the files. Resumable: "
        "feature files already written whole are kept, so an interrupted run continues when run again.",
        epilog="example:\n  build-tfrecords add-local-features --out records384 \\\n"
        "      --images happywhale/train_images --test-images happywhale/test_images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="the finished build (local or gs://)")
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="the training photos (default: the folder the build read, from manifest.json)",
    )
    parser.add_argument(
        "--test-images",
        metavar="DIR",
        help="the test photos (default: the folder the build read, from manifest.json)",
    )
    _add_match_size(parser)
    parser.add_argument(
        "--workers", metavar="N", type=_at_least(int, 1), help="worker processes (default: every CPU)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")
    return parser


def image_settings(args: argparse.Namespace) -> ImageSettings:
    """The crop flags as the one settings object the workers, the manifest and identify use."""
    settings = ImageSettings(args.size, args.enlarge, args.resize, args.quality)
    return (
        settings
        if not args.max_pixels
        else ImageSettings(**{**vars(settings), "max_pixels": args.max_pixels})
    )
