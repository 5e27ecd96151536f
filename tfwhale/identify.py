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
import io
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

try:  # one line naming the extra instead of a traceback
    import tensorflow as tf
except ModuleNotFoundError as _missing:
    from tfwhale.core.extras import exit_for_missing

    exit_for_missing(_missing, "python -m tfwhale.identify")

from tfwhale.contracts import records
from tfwhale.contracts.gallery_manifest import GalleryError, GalleryManifest, load_gallery_manifest
from tfwhale.contracts.run_folder import FoldModel, RunError, load_embedding_model, recorded_fold
from tfwhale.core import files
from tfwhale.inference.class_heads import class_heads
from tfwhale.inference.gallery import FoldEmbeddings, average_folds, cache_path, check_finite, concat_runs
from tfwhale.inference.identify_output import (
    EXIT_ALL_FAILED,
    Answer,
    answers_json,
    exit_code,
    format_answers,
)
from tfwhale.inference.submission import EMBEDDINGS_NAME
from tfwhale.retrieval import ranking
from tfwhale.retrieval.postprocess import Whitening, l2_normalise
from tfwhale.retrieval.threshold import insert_new_individual

logger = logging.getLogger("tfwhale.identify")


class IdentifyError(ValueError):
    """A photo, box or gallery folder identify cannot use."""


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
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Gallery:
    """What identify reuses from a predict output folder."""

    out_dir: str
    manifest: GalleryManifest
    embeddings: np.ndarray  # the gallery as ranked (post-processed when predict was asked to)
    ids: list[str]
    species: list[str]
    train_folds: np.ndarray
    class_names: list[str]
    whitening: Whitening | None


def load_gallery(out_dir: str) -> Gallery:
    try:
        manifest = load_gallery_manifest(out_dir)
    except GalleryError as err:
        raise IdentifyError(str(err)) from None
    data = np.load(io.BytesIO(files.read_bytes(files.join(out_dir, EMBEDDINGS_NAME))), allow_pickle=False)
    whitening = None
    if "whiten_mean" in data.files:
        whitening = Whitening(data["whiten_mean"], data["whiten_projection"], data["whiten_eigenvalues"])
    return Gallery(
        out_dir=out_dir,
        manifest=manifest,
        embeddings=data["gallery"] if "gallery" in data.files else data["train"],
        ids=data["train_ids"].tolist(),
        species=data["train_species"].tolist(),
        train_folds=data["train_folds"],
        class_names=data["class_names"].tolist(),
        whitening=whitening,
    )


def recorded_runs(gallery: Gallery, run_dirs: Sequence[str] | None) -> list[list[FoldModel]]:
    """The fold models the gallery was made with; given run folders must hold those very folds."""
    recorded = gallery.manifest.runs
    run_dirs = list(run_dirs) if run_dirs else [r.run_dir for r in recorded]
    if len(run_dirs) != len(recorded):
        made_with = [r.run_dir for r in recorded]
        raise IdentifyError(
            f"{gallery.out_dir} was made with {len(recorded)} run(s) {made_with}, not {run_dirs}"
        )
    runs = []
    for run_dir, entry in zip(run_dirs, recorded, strict=True):
        try:
            runs.append(
                [recorded_fold(run_dir, n, sha, entry.embedding_dim) for n, sha in entry.folds.items()]
            )
        except RunError as err:
            raise IdentifyError(
                f"{err} in {gallery.out_dir} ({entry.run_dir}); pass the same --runs, or run predict again"
            ) from None
    return runs


def parse_boxes(boxes: Sequence[str] | None, n_photos: int) -> list[tuple | None]:
    from tfwhale.contracts.crop_box import parse_box_text

    if not boxes:
        return [None] * n_photos
    if len(boxes) != n_photos:
        raise IdentifyError(
            f"--box given {len(boxes)} times for {n_photos} photos: give one per photo, in order"
        )
    parsed = []
    for text in boxes:
        try:
            parsed.append(parse_box_text(text))
        except ValueError as err:
            raise IdentifyError(f"--box {text!r}: {err}") from None
    return parsed


def image_settings(gallery: Gallery):
    """The records' crop settings: new photos are cropped exactly as build-tfrecords cropped the gallery."""
    from tfwhale.contracts.photo_crop import ImageSettings

    crop, size = gallery.manifest.crop, gallery.manifest.image_size
    if not crop:
        raise IdentifyError(
            f"{gallery.out_dir}: the records' manifest has no crop settings (not made by build-tfrecords?)"
        )
    return ImageSettings(size, float(crop["enlarge"]), crop["resize_mode"], int(crop["jpeg_quality"]))


def prepare_photo_bytes(data: bytes, box: tuple | None, settings, name: str) -> tuple[bytes, np.ndarray]:
    """(the crop's JPEG, uint8 [S, S, 3]) of one photo's bytes: cropped, resized and encoded as the builder
    did, then decoded. IdentifyError naming the photo when it is not an image."""
    from tfwhale.contracts.photo_crop import ImageError, process_image

    try:
        jpeg, _ = process_image(data, box, settings)
    except ImageError as err:
        raise IdentifyError(f"{name}: {err}") from None
    return jpeg, records.decode_image(jpeg, settings.size).numpy()


def prepare_each(
    photos: Sequence[str], boxes: Sequence[tuple | None], gallery: Gallery
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Per photo: uint8 [S, S, 3] cropped, resized and JPEG-encoded as the builder did, then decoded; or,
    for a photo that cannot be read or decoded, its own error (the other photos are still answered)."""
    settings = image_settings(gallery)
    images: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for photo, box in zip(photos, boxes, strict=True):
        image, error = None, None
        try:
            if not files.exists(photo):
                raise IdentifyError(f"{photo}: file not found")
            image = prepare_photo_bytes(files.read_bytes(photo), box, settings, photo)[1]
        except IdentifyError as err:
            error = str(err)
        except tf.errors.OpError as err:  # storage errors while reading a gs:// photo
            error = files.storage_error_message(err) if files.is_storage_error(err) else f"{photo}: {err}"
        if error:
            logger.error("%s", error)
        images.append(image)
        errors.append(error)
    return images, errors


def load_models(runs: list[list[FoldModel]]) -> list[list]:
    """The fold embedding models, per run: load once, embed many times (the catalogue app keeps them)."""
    return [[load_embedding_model(fold) for fold in folds] for folds in runs]


def embed_loaded(images: np.ndarray, models: list[list], flip: bool, batch: int) -> list[list[np.ndarray]]:
    """Per run, per fold model: the photos' L2-normalised embeddings (with flip TTA when predict used it)."""

    def run_model(model, x: np.ndarray) -> np.ndarray:
        # predict_on_batch reuses the compiled predict step: Model.predict sets up ~200 ms per call
        # and an eager model(x) runs op by op (measured in benchmarks/serve_latency.py)
        parts = [np.asarray(model.predict_on_batch(x[i : i + batch])) for i in range(0, len(x), batch)]
        return np.concatenate(parts)

    per_run = []
    for run_models in models:
        per_fold = []
        for model in run_models:
            embeddings = run_model(model, images)
            if flip:
                embeddings = embeddings + run_model(model, np.ascontiguousarray(images[:, :, ::-1]))
            per_fold.append(l2_normalise(embeddings))
        per_run.append(per_fold)
    return per_run


def embed_photos(
    images: np.ndarray, runs: list[list[FoldModel]], flip: bool, batch: int
) -> list[list[np.ndarray]]:
    """Per run, per fold model: the photos' L2-normalised embeddings (with flip TTA when predict used it)."""
    return embed_loaded(images, load_models(runs), flip, batch)


def combine(per_run: list[list[np.ndarray]], gallery: Gallery) -> np.ndarray:
    """Fold average per run, runs concatenated with predict's weights: the space of the gallery."""
    weights = [r.weight for r in gallery.manifest.runs]
    return concat_runs([average_folds(folds) for folds in per_run], weights)


def options_of(gallery: Gallery) -> ranking.RankOptions:
    return ranking.RankOptions(**gallery.manifest.options)


def heads_for(per_run, runs, gallery: Gallery) -> ranking.ClassHeads:
    """The blend's classifier heads: class centres from predict's cache, the photos' per-fold embeddings."""
    flip = gallery.manifest.flip_tta
    folds, query_embeddings = [], []
    recorded = [entry.run_dir for entry in gallery.manifest.runs]
    for run_dir, fold_models, fold_embeddings in zip(recorded, runs, per_run, strict=True):
        for fold, embeddings in zip(fold_models, fold_embeddings, strict=True):
            # the cache is named after the run folder predict was given
            path = cache_path(gallery.out_dir, replace(fold, run_dir=run_dir), flip)
            data = np.load(io.BytesIO(files.read_bytes(path))) if files.exists(path) else {}
            if "centres" not in data:
                raise IdentifyError(f"{path}: no class centres cached; run predict --blend again")
            empty = np.zeros((0, 0), np.float32)
            folds.append(FoldEmbeddings(fold, empty, empty, data["centres"], int(data["subcenters"])))
            query_embeddings.append(embeddings)
    return class_heads(query_embeddings, folds, gallery.class_names, gallery.ids, gallery.train_folds)


def identify(args: argparse.Namespace) -> list[Answer]:
    """One Answer per photo, in order: its 5 labels, or the error that photo alone met."""
    gallery = load_gallery(args.gallery)
    runs = recorded_runs(gallery, args.runs)
    boxes = parse_boxes(args.box, len(args.photos))
    images, errors = prepare_each(args.photos, boxes, gallery)
    good = [i for i, error in enumerate(errors) if error is None]
    answered = {}
    if good:
        photos = [args.photos[i] for i in good]
        ranked = rank_photos(np.stack([images[i] for i in good]), photos, runs, gallery, args.batch_size)
        found = answers(args.threshold, gallery, photos, [boxes[i] for i in good], ranked)
        answered = dict(zip(good, found, strict=True))
    return [answered.get(i) or Answer(p, boxes[i], error=errors[i]) for i, p in enumerate(args.photos)]


def rank_photos(images: np.ndarray, photos, runs, gallery: Gallery, batch: int) -> ranking.Ranked:
    """Embed the photos as predict embedded the test set, then rank the gallery with predict's options."""
    per_run = embed_photos(images, runs, gallery.manifest.flip_tta, batch)
    queries = combine(per_run, gallery)
    check_finite(queries, photos, "the fold models")
    options = options_of(gallery)
    heads = heads_for(per_run, runs, gallery) if options.blend else None
    prepared = ranking.PreparedGallery(gallery.embeddings, gallery.whitening)
    return ranking.rank(queries, prepared, gallery.ids, options, heads)


def answers(threshold: float | None, gallery: Gallery, photos, boxes, ranked: ranking.Ranked) -> list[Answer]:
    species_of = dict(zip(gallery.ids, gallery.species, strict=True))
    per_species = {} if threshold is not None else gallery.manifest.per_species_thresholds
    default = threshold if threshold is not None else gallery.manifest.threshold
    results = []
    for photo, box, labels, scores in zip(photos, boxes, ranked.labels, ranked.scores, strict=True):
        used = per_species.get(species_of.get(labels[0]) if labels else None, default)
        top = insert_new_individual([labels], [scores], used)[0]
        score_of = dict(zip(labels, scores, strict=True))
        similarities = [score_of.get(label) for label in top]
        results.append(Answer(photo, box, top, similarities, [species_of.get(x) for x in top], used))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        results = identify(args)
    except (IdentifyError, RunError) as err:
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
