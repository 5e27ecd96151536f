"""Stage 3 for everyday use: identify new photos against the gallery a predict run cached.

python -m tfwhale.identify PHOTO [PHOTO ...] --runs RUN_DIR --gallery OUT_DIR [--box "x1 y1 x2 y2"] [--json]

Each photo is cropped and resized exactly as build-tfrecords did (the crop settings come from the
manifest the gallery was built from, named in gallery.json), embedded with the same fold models, TTA
and run weights, and ranked against the cached gallery with the same options and threshold.
Each photo gets its own answer or its own error; exit code 0 all answered, 3 some failed, 1 all failed
(or the gallery or runs are unusable).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

try:  # one line naming the extra instead of a traceback
    import tensorflow as tf
except ModuleNotFoundError as _missing:
    from tfwhale.core.extras import exit_for_missing

    exit_for_missing(_missing, "python -m tfwhale.identify")

from tfwhale.contracts.run_folder import RunError
from tfwhale.core import files
from tfwhale.inference.identify_output import (
    EXIT_ALL_FAILED,
    Answer,
    answers_json,
    exit_code,
    format_answers,
)
from tfwhale.inference.match_pictures import explained_answers
from tfwhale.query.gallery import QueryError
from tfwhale.query.path import QueryPath

logger = logging.getLogger("tfwhale.identify")

IdentifyError = QueryError  # the name earlier versions raised


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.identify",
        description="Answer each photo with its 5 most likely individuals (or new_individual) from a gallery "
        "that tfwhale.predict embedded and cached. A photo that cannot be read gets its own error; exit "
        "code 0 all answered, 3 some failed, 1 all failed or the gallery is unusable.",
    )
    add = parser.add_argument
    add("photos", nargs="+", metavar="PHOTO", help="image files (local or gs://)")
    add("--gallery", required=True, metavar="OUT_DIR", help="the --out folder of a finished predict")
    add("--runs", nargs="+", metavar="RUN_DIR", help="the run folders of that predict (default: as recorded)")
    add(
        "--box", action="append", metavar='"x1 y1 x2 y2"',
        help="crop box in photo pixels, once per photo in order ('' for none); default: whole photos",
    )  # fmt: skip
    add("--threshold", type=float, help="new_individual threshold (default: the one predict used)")
    add("--batch-size", type=int, default=16, help="photos per embedding batch")
    add("--json", action="store_true", help="print JSON instead of a table")
    add(
        "--explain",
        metavar="DIR",
        help="write per photo a PNG of its crop beside each top candidate's best photo, with the verified "
        "local-feature matches drawn as lines (galleries made with local features)",
    )
    return parser.parse_args(argv)


def parse_boxes(boxes: Sequence[str] | None, n_photos: int) -> list[tuple | None]:
    from tfwhale.imaging.crop_box import parse_box_text

    if not boxes:
        return [None] * n_photos
    if len(boxes) != n_photos:
        raise QueryError(
            f"--box given {len(boxes)} times for {n_photos} photos: give one per photo, in order"
        )
    parsed = []
    for text in boxes:
        try:
            parsed.append(parse_box_text(text))
        except ValueError as err:
            raise QueryError(f"--box {text!r}: {err}") from None
    return parsed


@dataclass
class Prepared:
    """Per photo: its crop as the gallery's records were cropped, its local features where the gallery
    re-ranks by them, or the error that photo alone met."""

    images: list[np.ndarray | None] = field(default_factory=list)
    features: list = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)


def prepare_each(photos: Sequence[str], boxes: Sequence[tuple | None], path: QueryPath) -> Prepared:
    """Each photo prepared; one that cannot be read or decoded gets its own error (the others are still
    answered)."""
    prepared = Prepared()
    for photo, box in zip(photos, boxes, strict=True):
        image, features, error = None, None, None
        try:
            if not files.exists(photo):
                raise QueryError(f"{photo}: file not found")
            data = files.read_bytes(photo)
            image = path.crop(data, box, photo)[1]
            features = path.local_features(data, box, photo)
        except QueryError as err:
            error = str(err)
        except tf.errors.OpError as err:  # storage errors while reading a gs:// photo
            error = files.storage_error_message(err) if files.is_storage_error(err) else f"{photo}: {err}"
        if error:
            logger.error("%s", error)
            image, features = None, None
        prepared.images.append(image)
        prepared.features.append(features)
        prepared.errors.append(error)
    return prepared


def identify(args: argparse.Namespace) -> list[Answer]:
    """One Answer per photo, in order: its 5 labels, or the error that photo alone met."""
    path = QueryPath.load(args.gallery, args.runs, args.batch_size, args.threshold)
    boxes = parse_boxes(args.box, len(args.photos))
    prepared = prepare_each(args.photos, boxes, path)
    images, errors = prepared.images, prepared.errors
    good = [i for i, error in enumerate(errors) if error is None]
    answered = {}
    if good:
        names = [args.photos[i] for i in good]
        features = [prepared.features[i] for i in good] if path.local else None
        stacked = np.stack([images[i] for i in good])
        if args.explain:
            good_boxes = [boxes[i] for i in good]
            found = explained_answers(path, names, good_boxes, stacked, features, good, args.explain)
        else:
            found = path.identify(stacked, names, features)
        answered = {
            i: Answer(args.photos[i], boxes[i], a.labels, a.similarities, a.species, a.threshold)
            for i, a in zip(good, found, strict=True)
        }
    return [answered.get(i) or Answer(p, boxes[i], error=errors[i]) for i, p in enumerate(args.photos)]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        results = identify(args)
    except (QueryError, RunError) as err:
        logger.error("%s", err)
        return EXIT_ALL_FAILED
    except tf.errors.OpError as err:
        if not files.is_storage_error(err):
            raise
        logger.error("%s", files.storage_error_message(err))
        return EXIT_ALL_FAILED
    print(answers_json(results) if args.json else format_answers(results))
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
